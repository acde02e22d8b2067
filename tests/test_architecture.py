"""The layers hold: imports point down only, no import cycle anywhere, and only the results store
knows the file names of a run folder."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("methods", "harness", "sweeps", "analysis", "theory")
# what each package may import of ours (methods ← harness ← sweeps → results → analysis; theory ← methods)
ALLOWED = {"methods": {"methods"}, "harness": {"methods", "harness"},
           # analysis reads results through the store, and the run id's rule (what a configuration is) from the config
           # and the code's commit (git), to audit a pre-registered sweep
           "analysis": {"analysis", "harness.store", "harness.config", "harness.provenance"},
           "theory": {"methods", "theory"},
           "sweeps": {"methods", "harness", "analysis", "sweeps", "theory"}}
RUN_FOLDER_FILES = ("metrics.jsonl", "diagnostics.jsonl", "status.json", "config.yaml", "checkpoint.pt",
                    "manifest.json", "summary.csv", "trl_checkpoints")


def modules() -> dict:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: dict) -> set:
    """Every project module ``name`` imports, at any depth of the file (lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_no_import_cycle():
    edges = graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            # a package's __init__ importing its own submodules is not a cycle through them
            if node.startswith(nxt + ".") or nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_imports_point_down_only():
    wrong = []
    for name, targets in graph().items():
        allowed = ALLOWED[name.split(".")[0]]
        for target in targets:
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_only_the_store_names_the_files_of_a_run_folder():
    offenders = []
    for name, path in modules().items():
        if name == "harness.store":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                hits = [f for f in RUN_FOLDER_FILES if f in node.value]
                if hits:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {hits}")
    assert not offenders, "run-folder file names outside harness/store.py:\n" + "\n".join(offenders)


def test_no_private_name_is_imported_across_modules():
    wrong = []
    known = modules()
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in PACKAGES):
                wrong += [f"{name}: {a.name}" for a in node.names if a.name.startswith("_") and a.name != "__future__"]
    assert not wrong, "\n".join(wrong)
