"""Results folders → pandas. Reads what ``trh sweep`` wrote (``sweeps/<name>/manifest.json`` and the
run folders it names) through harness.store; a root without manifests is read run folder by run
folder (each run its own label)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.store import RunStore, manifest_path, read_manifest, run_folders, sweep_manifests

from .cells import cell_row
from .grouping import signature, split_pooled_labels


@dataclass
class Results:
    root: Path
    cells: pd.DataFrame          # one row per (sweep, cell): labels, verdict, matched-window score
    sweeps: dict                 # sweep name → manifest
    main_sweep: str | None = None  # the sweep Table 1 comes from (analysis.report.choose_table1)
    unlisted: list = field(default_factory=list)  # run folders of no sweep (trh train runs beside sweeps)
    _curves: dict = field(default_factory=dict)

    @property
    def avg_label(self) -> str:
        """``Avg@k`` of the validation scores (``Avg@k`` when cells differ or none says)."""
        ks = set(self.cells["eval_samples"].dropna().astype(int)) if "eval_samples" in self.cells else set()
        return f"Avg@{ks.pop()}" if len(ks) == 1 else "Avg@k"

    def sweep_cells(self, name: str) -> pd.DataFrame:
        return self.cells[self.cells["sweep"] == name]

    def has(self, name: str) -> bool:
        return name in self.sweeps and not self.sweep_cells(name).empty

    def config(self, run_dir: str) -> dict:
        """The run's config snapshot ({} before it has one)."""
        key = (run_dir, "config")
        if key not in self._curves:
            self._curves[key] = RunStore(run_dir).read_config() or {}
        return self._curves[key]

    def curves(self, run_dir: str, diagnostics: bool = False) -> pd.DataFrame:
        """The run's metrics rows (or its per-position diagnostics) as a frame."""
        key = (run_dir, diagnostics)
        if key not in self._curves:
            store = RunStore(run_dir)
            self._curves[key] = pd.DataFrame(store.read_diagnostics() if diagnostics else store.read_metrics())
        return self._curves[key]


def _resolve_run_dir(root: Path, run_dir: str) -> Path:
    path = Path(run_dir)
    return path if path.is_absolute() else root / path


def load_results(root) -> Results:
    """A results root (``results/``: every sweep under it) or one sweep folder (``results/sweeps/x``)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"results folder {root} does not exist")
    manifests = sweep_manifests(root)
    one_sweep = list(manifests.values()) == [manifest_path(root)]
    base = root.parent.parent if one_sweep else root  # cells are relative to the results root
    rows, sweeps = [], {}
    for name, path in manifests.items():
        manifest = read_manifest(path.parent)
        sweeps[name] = manifest
        for cell in manifest["cells"]:
            rows.append(score_cell(base, cell, name, manifest.get("feeds", "")))
    if not manifests:  # plain run folders (trh train, Hydra multirun)
        for folder in run_folders(root):
            cfg = RunStore(folder).read_config()
            cell = {"id": folder.name.rsplit("-", 1)[-1], "setting": cfg["setting"]["name"],
                    "label": cfg["method"]["name"], "method": cfg["method"]["name"], "seed": cfg["seed"],
                    "t_stop": cfg["setting"]["t_stop"], "run_dir": str(folder.resolve())}
            rows.append(score_cell(base, cell, "runs", ""))
    unlisted = []
    if manifests:  # run folders no sweep names (trh train runs, trials of a search) are not in these tables
        listed = {Path(r["run_dir"]).resolve() for r in rows}
        unlisted = [f.name for f in run_folders(base) if f.resolve() not in listed and not RunStore(f).search_trials()]
    cells = pd.DataFrame(rows)
    if cells.empty:
        raise FileNotFoundError(f"{root} holds no sweep (a trh sweep output) and no run folder (a trh train output)")
    return Results(root=root, cells=split_pooled_labels(cells), sweeps=sweeps, unlisted=unlisted)


def score_cell(base: Path, cell: dict, sweep: str, feeds: str = "") -> dict:
    """One manifest cell as found on disk: labels, verdict (incl. running / not started /
    interrupted, from the folder's lock) and the matched-window score."""
    run_dir = _resolve_run_dir(base, cell["run_dir"])
    store = RunStore(run_dir)
    status = store.read_status()
    if status is not None and status.get("config_hash") not in (None, cell["id"]):
        status = None  # a folder of another config: not this cell's result
    rows = store.read_metrics() if status else []
    damage = store.damage(status, rows)
    if damage:  # a finished run whose records were cut: reported, never scored as if whole
        score = {**cell_row(None, [], cell["t_stop"]), "verdict": "damaged", "state": "damaged",
                 "reason": f"{damage}; rerun the sweep with --repair (it moves the folder aside and retrains the cell)"}
    else:
        score = cell_row(status, rows, cell["t_stop"])
        busy = store.in_use()
        if status is None and busy:
            score["verdict"] = score["state"] = "running"  # (still in its warm-up: no status yet)
        elif status is None and store.has_config():
            score["verdict"] = score["state"] = "not started"  # submitted (config snapshotted), never ran
        elif status and status.get("state") == "running" and not busy:
            score["verdict"] = "interrupted"
    variant = " ".join([cell["method"], *sorted(cell.get("overrides") or [])])  # one colour per variant
    config = store.read_config() or {}
    return {"sweep": sweep, "feeds": feeds, "setting": cell["setting"], "label": cell["label"],
            "method": cell["method"], "variant": variant, "seed": cell["seed"], "id": cell["id"],
            "run_dir": str(run_dir), "eval_samples": (config.get("eval") or {}).get("samples"),
            "signature": signature(config),
            "search_trials": ", ".join(f"{t.get('search')}#{t.get('trial')}" for t in store.search_trials()) or None,
            "imported": ((status or {}).get("imported") or {}).get("format"),  # trh import: the log's format
            **score}
