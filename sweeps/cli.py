"""The `trh` command line. Subcommands are added as the layers below them land."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _format_default(value) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return repr(value)


def cmd_methods(args) -> int:
    from methods import list_methods

    rows = list_methods()
    if args.name:
        known = [r["name"] for r in rows]
        rows = [r for r in rows if r["name"] in args.name]
        missing = sorted(set(args.name) - set(known))
        if missing:
            print(f"trh methods: unknown method(s) {missing}; registered: {', '.join(known)}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(rows, indent=2, default=_format_default))
        return 0
    width = max(14, *(len(r["name"]) for r in rows)) if rows else 14
    for row in rows:
        print(f"{row['name']:<{width}} {row['description']}")
        print(f"{'':<{width}} ref: {row['reference']}")
        for p in row["params"]:
            fixed = ", fixed by the name" if p["name"] in row["fixed"] else ""
            line = f"{'':<{width + 2}}{p['name']} = {_format_default(p['default'])}  ({p['type']}{fixed})"
            print(line + (f"  — {p['doc']}" if args.verbose else ""))
        print()
    return 0


def cmd_tasks(args) -> int:
    from harness.schema import describe
    from harness.tasks import task_classes

    for name, cls in task_classes().items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:<14} engines: {', '.join(cls.engines)}; {doc}")
        print(f"{'':<14} from {cls.__module__}")
        for row in describe(cls.Config, "task"):
            print(f"{'':<16}{row['key']} = {row['default']!r}  ({row['type']})  — {row['doc']}")
        print()
    return 0


def cmd_config(args) -> int:
    from harness import runconfig as rc
    from harness.schema import describe

    groups = {"warmup": rc.Warmup, "rl": rc.RL, "eval": rc.Eval, "collapse": rc.Collapse, "setting": rc.Setting,
              "engine (local)": rc.LocalEngine, "engine (trl)": rc.TrlEngine, "model (local)": rc.ModelSize,
              "model (trl, hub)": rc.HubModel, "model (trl, package)": rc.PackageModel, "model (trl, tiny)": rc.TinyLM,
              "logging": rc.Logging}
    wanted = [g for g in groups if not args.group or g.split(" ")[0] in args.group]
    if not wanted:
        print(f"trh config: unknown group(s) {args.group}; groups: {', '.join(dict.fromkeys(g.split(' ')[0] for g in groups))}"
              " (trh tasks for task.*, trh methods -v for method.*)", file=sys.stderr)
        return 2
    for group in wanted:
        print(group)
        for row in describe(groups[group], group.split(" ")[0]):
            print(f"  {row['key']} = {_format_default(row['default'])}  ({row['type']})  — {row['doc']}")
        print()
    print("task.*: trh tasks; method.*: trh methods -v")
    return 0


def cmd_train(args) -> int:
    from harness.config import compose
    from harness.lifecycle import summary_line
    from harness.store import FINISHED, RunInUse
    from harness.train import run

    from .axes import GRID_KEYS, sweep_values
    try:
        swept = [o for o in args.overrides if "=" in o and (o.split("=", 1)[0] in GRID_KEYS and "," in o
                                                             or sweep_values(o) is not None)]
        if swept:
            print(f"trh train: {swept[0]} sweeps several values; trh train runs one config — "
                  "a grid is `trh sweep SPEC key=a,b` (or a spec file)", file=sys.stderr)
            return 2
        cfg = compose(args.overrides)
        status = run(cfg)
    except (*_user_errors(), RunInUse) as err:
        print(f"trh train: {_line(err)}", file=sys.stderr)
        return 2
    print(f"run folder: {status['run_dir']}")
    print(summary_line(status))
    print(f"its curves, scores and report.html: trh report {status['run_dir']}")
    return 0 if status["state"] in FINISHED else 1


def _line(err) -> str:
    """An error as one line (Hydra's messages list the search path after the first)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _user_errors():
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from harness.config import ConfigError
    from harness.store import StoreError
    from methods import MethodConfigError

    from .spec import SweepError
    return (SweepError, ConfigError, MethodConfigError, StoreError, HydraException, OmegaConfBaseException)


def cmd_sweep(args) -> int:
    from .driver import sweep
    from .spec import spec_names

    if args.list:
        from .spec import load_raw
        for name in spec_names():
            raw, _ = load_raw(name)
            print(f"{name:<24} {raw.get('kind', 'grid'):<7} {raw.get('feeds', '')}: {raw.get('description', '')}")
        return 0
    if not args.name:
        print("trh sweep: name a sweep (trh sweep --list shows them)", file=sys.stderr)
        return 2
    if args.status:
        return _print_status(args)
    if args.executor == "slurm":  # jobs run elsewhere, from another working directory: absolute run folders
        args.results = str(Path(args.results).resolve())
    if args.dry_run:
        from .driver import dry_run
        if args.executor != "slurm":
            print("trh sweep: --dry-run prints SLURM submissions; add --executor slurm", file=sys.stderr)
            return 2
        try:
            print(dry_run(args.name, args.overrides, results_root=args.results))
        except _user_errors() as err:
            print(f"trh sweep: {_line(err)}", file=sys.stderr)
            return 2
        return 0
    try:
        result = sweep(args.name, args.overrides, executor=args.executor, workers=args.workers,
                       results_root=args.results, progress=not args.no_progress, max_retries=args.retries,
                       repair_damaged=args.repair, preregistered=args.preregistered)
    except _user_errors() as err:
        print(f"trh sweep: {_line(err)}", file=sys.stderr)
        return 2
    _print_sweep_summary(result)
    trouble = _print_attention(result["rows"], args)
    failed = sum(o.state == "failed" for o in result["outcomes"])
    return 1 if failed or trouble else 0


def _print_attention(rows: list[dict], args) -> int:
    """Name every damaged, failed or collapsed cell with what to do; the count of those that need a
    rerun (damaged or failed)."""
    hints = {"damaged": f"rerun with --repair (trh sweep {args.name} ... --repair) to move its folder aside and "
                        "train it again",
             "failed": "fix the cause, then rerun the same command (a failed cell is retried)"}
    lines, trouble = [], 0
    for row in rows:
        state = row.get("state")
        where = f"{row['setting']}/{row['label']}/s{row['seed']} ({row['run_dir']})"
        if state in hints:
            trouble += 1
            lines.append(f"  {state}: {where}: {row.get('reason') or ''}; {hints[state]}")
        elif state == "collapsed":
            lines.append(f"  collapsed at step {row.get('collapse_step')}: {where}: a verdict, kept and scored "
                         "up to the collapse")
    if lines:
        print("cells to look at:\n" + "\n".join(lines))
    return trouble


def _print_status(args) -> int:
    import pandas as pd

    from .driver import cell_states
    try:
        rows = pd.DataFrame(cell_states(args.name, args.overrides, args.results))
    except _user_errors() as err:
        print(f"trh sweep: {_line(err)}", file=sys.stderr)
        return 2
    counts = rows["verdict"].str.replace(r" \(step \d+\)", "", regex=True).value_counts()
    print(f"{args.name}: {len(rows)} cells — " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    columns = ["setting", "label", "seed", "id", "verdict", "steps_run", "best_headline", "best_step",
               "heldout_headline"]
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(rows[columns].to_string(index=False))
    return 0


def _print_sweep_summary(result) -> None:
    import pandas as pd

    from harness.store import summary_path

    from analysis.compare import interval_text
    from analysis.tables import aggregate

    rows = pd.DataFrame(result["rows"])
    cells = result["outcomes"]
    trained = sum(o.seconds is not None for o in cells)
    print(f"sweep {result['spec'].name}: {len(cells)} cells ({trained} run now, {len(cells) - trained} finished "
          f"before), wall {result['wall_s']:.0f} s; per cell: {summary_path(result['sweep_dir'])}")
    table = aggregate(rows, "label")
    held = aggregate(rows, "label", "heldout_headline") if "heldout_headline" in rows else None
    out = pd.DataFrame({"setting": table["setting"], "label": table["label"], "seeds": table["finished"],
                        "best validation (95% CI)": [interval_text(m, lo, hi) for m, lo, hi in
                                                     zip(table["mean"], table["ci_low"], table["ci_high"])]})
    if held is not None and held["mean"].notna().any():
        out["held-out test (95% CI)"] = [interval_text(m, lo, hi) for m, lo, hi in
                                         zip(held["mean"], held["ci_low"], held["ci_high"])]
    out["collapsed"], out["failed"] = table["collapsed"], table["failed"]
    with pd.option_context("display.width", 180, "display.max_colwidth", 40):
        print("matched window (best validation headline within [0, T_stop], %; the held-out test splits at that "
              "step), mean over seeds with a 95 % interval (Student-t below 20 seeds) where a cell has ≥ 2 seeds "
              "(`trh report` for paired comparisons):")
        print(out.to_string(index=False))


def cmd_search(args) -> int:
    from .search import search

    if args.executor == "slurm":  # as for trh sweep: jobs run from another working directory
        args.results = str(Path(args.results).resolve())
    try:
        result = search(args.name, args.trials, args.overrides, storage=args.storage, executor=args.executor,
                        workers=args.workers, results_root=args.results, progress=not args.no_progress)
    except _user_errors() as err:
        print(f"trh search: {_line(err)}", file=sys.stderr)
        return 2
    summary = result["summary"]
    print(f"search {summary['study']}: trials {summary['trials']}, wall {result['wall_s']:.0f} s; "
          f"{result['out_dir'] / 'trials.csv'}, {result['out_dir'] / 'best.json'}")
    best = summary["best"]
    if best is None:
        print("no trial completed")
        return 1
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
    scores = best.get("seed_scores") or []
    spread = ""
    if len(scores) >= 2:
        from analysis.stats import mean_interval
        ci = mean_interval(scores, bounds=(0.0, 1.0))
        spread = f", 95 % t interval over {len(scores)} seeds [{ci.low:.4f}, {ci.high:.4f}]"
    print(f"best: trial {best['number']}, {best['value']:.4f}{spread} ({params}); the best of many trials is "
          "optimistic: rerun it with fresh seeds before comparing it")
    return 0


def cmd_report(args) -> int:
    from analysis.report import build_report

    split = lambda text: [x for x in text.split(",") if x]  # noqa: E731
    try:
        result = build_report(args.results_dir, args.out, split(args.format), split(args.figures), args.reference,
                              args.table1, args.style)
    except (FileNotFoundError, ValueError) as err:
        print(f"trh report: {err}", file=sys.stderr)
        return 2
    print(result["index"])
    print(f"written to {result['out']}")
    return 0


def cmd_import(args) -> int:
    from analysis.importer import MappingError, import_runs

    try:
        manifest = import_runs(args.mapping, args.results)
    except MappingError as err:
        print(f"trh import: {err}", file=sys.stderr)
        return 2
    print(f"imported {len(manifest['cells'])} run(s) as sweep {manifest['sweep']!r} into {args.results}; "
          f"next: trh report {args.results}")
    for run in manifest["incomplete"]:
        print(f"  {run}: its log's evaluations end before t_stop; reported as interrupted (left out of the means)")
    return 0


def cmd_theory(args) -> int:
    from harness.store import theory_dir
    from theory.run import TOLERANCE, adversarial_table, checks_table, run

    if args.instances < 1:
        print(f"trh theory: --instances must be >= 1, got {args.instances}", file=sys.stderr)
        return 2
    result = run(args.instances, args.seed, theory_dir(args.results), progress=not args.no_progress)
    print(checks_table(result["checks"]))
    print("\nadversarial search (worst-case reward, ξ = 1, w_min = 0.8):")
    print(adversarial_table(result["adversarial"]))
    print(f"\nwritten to {theory_dir(args.results)}")
    if not result["ok"]:
        print(f"trh theory: a statement is violated beyond {TOLERANCE:g} (see the table)", file=sys.stderr)
        return 1
    return 0


def cmd_verl_check(args) -> int:
    """Which policy loss a verl config makes verl call, and whether it is anchored on μ."""
    from methods.verl_config import check_config, load_config, verl_registry

    try:
        cfg = load_config(args.config, args.overrides)
        registry = verl_registry(cfg)
    except Exception as err:  # a missing or unreadable file, a bad override, an external_lib that fails to import
        print(f"trh verl-check: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 2
    check = check_config(cfg, registry)
    print(check)
    if registry is None:
        print("(verl is not installed here: losses judged by name, trh_<method> being the harness's)")
    return 0 if check.ok else 1


def _add_listings(sub) -> None:
    """The commands that only list what is registered: methods, tasks, config keys."""
    methods = sub.add_parser("methods", help="list the registered trust-region methods and their parameters")
    methods.add_argument("name", nargs="*", help="only these methods")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.add_argument("-v", "--verbose", action="store_true", help="also print each parameter's meaning")
    methods.set_defaults(func=cmd_methods)
    tasks = sub.add_parser("tasks", help="list the registered tasks and their config keys")
    tasks.set_defaults(func=cmd_tasks)
    config = sub.add_parser("config", help="list every run-config key: type, default, meaning")
    config.add_argument("group", nargs="*", help="only these groups (warmup, rl, eval, collapse, setting, engine, "
                                                 "model, logging)")
    config.set_defaults(func=cmd_config)
    vc = sub.add_parser("verl-check", help="which policy loss a verl config makes verl call, anchored on μ or not",
                        description="e.g. trh verl-check --config VERL_CONFIG.yaml; with verl installed, "
                                    "trh verl-check key=value ... checks verl's own ppo_trainer with overrides")
    vc.add_argument("--config", default=None, help="a verl config YAML (default: verl's ppo_trainer, if installed)")
    vc.add_argument("overrides", nargs="*", help="verl config overrides key=value")
    vc.set_defaults(func=cmd_verl_check)


def build_parser() -> argparse.ArgumentParser:
    from .executors import EXECUTORS

    parser = argparse.ArgumentParser(prog="trh", description="trust-region-harness")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_listings(sub)
    train = sub.add_parser("train", help="one training run on the embedded default (Hydra overrides allowed)",
                           description="e.g. trh train method=cppo setting=base_s seed=1 method.delta=0.2")
    train.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    train.set_defaults(func=cmd_train)
    writes = argparse.ArgumentParser(add_help=False)  # the options of everything that writes results
    writes.add_argument("--results", default="results", help="results root (default: results)")
    writes.add_argument("--no-progress", action="store_true")
    cells = argparse.ArgumentParser(add_help=False, parents=[writes])  # ... and runs cells
    cells.add_argument("--executor", default="local", choices=list(EXECUTORS))
    cells.add_argument("--workers", type=int, default=None,
                       help="cells running at once, a cap (default: cores / local.cpus_per_task here, with a "
                            "last partial round shared by all its cells; slurm.array_parallelism on SLURM)")
    sw = sub.add_parser("sweep", parents=[cells], help="run a sweep spec's grid (missing cells only) and summarise it",
                        description="e.g. trh sweep demo --workers 2; trh sweep paper_main seed=0,1 "
                                    "'setting=base_*' rl.lr=2e-4 --executor slurm slurm.partition=gpu")
    sw.add_argument("name", nargs="?", help="a spec under sweeps/specs/ (or a path to a .yaml)")
    sw.add_argument("overrides", nargs="*", help="grid axes (setting=, seed=, method=), Hydra overrides for every "
                                                  "cell, resources (slurm.*, local.*)")
    sw.add_argument("--retries", type=int, default=2, help="resubmissions of a job that dies without a verdict")
    sw.add_argument("--list", action="store_true", help="list the sweep and search specs")
    sw.add_argument("--status", action="store_true", help="show each cell's state on disk; run nothing")
    sw.add_argument("--repair", action="store_true",
                    help="move the folders of damaged cells aside (…damaged-<time>) and train them again")
    sw.add_argument("--dry-run", action="store_true",
                    help="with --executor slurm: print the sbatch script and launch command of each cell; submit nothing")
    sw.add_argument("--preregistered", action="store_true",
                    help="require the spec's declared test (its 'preregistration' block); a spec with one is always "
                         "checked: committed and unchanged, and every cell refuses a changed tree")
    sw.set_defaults(func=cmd_sweep)
    se = sub.add_parser("search", parents=[cells], help="an Optuna study over a search spec (resumes after a kill)",
                        description="e.g. trh search search_cppo --trials 20 --workers 2 "
                                    "[--storage sqlite:///results/searches/cppo.db]")
    se.add_argument("name", help="a search spec under sweeps/specs/ (kind: search)")
    se.add_argument("overrides", nargs="*", help="setting=, seed=, method=, Hydra overrides, slurm.*/local.*")
    se.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    se.add_argument("--storage", default=None,
                    help="Optuna storage: a journal file path (default results/searches/NAME/journal.log) or an RDB URL")
    se.set_defaults(func=cmd_search)
    th = sub.add_parser("theory", parents=[writes], help="check the CPPO paper's bounds exactly on enumerable toy models",
                        description="e.g. trh theory --instances 1000 (writes RESULTS/theory/)")
    th.add_argument("--instances", type=int, default=1000, help="random instances per statement")
    th.add_argument("--seed", type=int, default=0)
    th.set_defaults(func=cmd_theory)
    ip = sub.add_parser("import", help="runs trained elsewhere (verl, TRL, wandb, CSV/JSONL logs) into the results store",
                        description="e.g. trh import my_verl_runs.yaml && trh report (the mapping's format: "
                                    "docs/import.md)")
    ip.add_argument("mapping", help="a YAML mapping: setting, t_stop, validation (and test) metrics, runs")
    ip.add_argument("--results", default="results", help="results root to import into (default results)")
    ip.set_defaults(func=cmd_import)
    rp = sub.add_parser("report", help="tables and figures from a results folder (never trains)",
                        description="e.g. trh report results; trh report results/embedded --figures png,pdf")
    rp.add_argument("results_dir", nargs="?", default="results", help="a results root or one sweep folder")
    rp.add_argument("--out", default=None, help="output folder (default RESULTS_DIR/report)")
    rp.add_argument("--format", default="md,tex,csv", help="table formats: md, tex, csv")
    rp.add_argument("--figures", default="png", help="figure formats: png, pdf ('' for none)")
    rp.add_argument("--reference", default=None, help="the row every comparison is against (default cppo)")
    rp.add_argument("--table1", default=None,
                    help="the sweep Table 1 comes from (default paper_main, else demo, else the most finished)")
    rp.add_argument("--style", default="tested", choices=["tested", "paper"],
                    help="paper: also Table 1 in the paper's layout (table1_paper.*: best bold, second underlined, "
                         "descriptive) beside the tested view")
    rp.set_defaults(func=cmd_report)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    # overrides may come after options (trh sweep demo --workers 2 seed=0,1): collect the strays
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except OSError as err:  # permission, full disk, missing folder: one line, never a traceback
        print(f"trh {args.command}: {err.strerror or err} ({err.filename or 'no file named'}); "
              "finished results are kept, rerun once it is fixed", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
