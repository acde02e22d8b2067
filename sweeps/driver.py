"""``trh sweep``: expand a spec into cells, run the missing ones, summarise with the matched-window rule.

    results/
      runs/<setting>-<method>-s<seed>-<hash>/     one folder per cell (shared by every sweep: a cell
                                                  that two sweeps name is trained once)
      sweeps/<name>/manifest.json                 the cells of the sweep, its spec, overrides, and one
                                                  entry per invocation (git commit, executor, time)
      sweeps/<name>/summary.csv                   one row per cell: verdict, best headline, best step
      sweeps/<name>/submitit/<job id>/            launcher logs
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
import sys
import time
from pathlib import Path

from harness.provenance import code_state
from harness.store import (RunStore, StoreError, atomic_write_text, read_manifest, submitit_dir, summary_path,
                           sweep_dir as sweep_folder, write_manifest as write_manifest_file)

from .executors import make_executor, resources
from .runner import CellRunner, Outcome
from .launch import launch_of
from .preregistration import launch_record
from .spec import Cell, SweepError, SweepSpec, expand, load_raw, parse, split_overrides


def prepare(name: str, overrides=(), results_root="results", executor="local"):
    """Everything that can fail on bad input, before anything runs: spec, grid, configs, resources."""
    raw, path = load_raw(name)
    if raw.get("kind") == "search":
        raise SweepError(f"{name!r} is a search spec: run it with `trh search {name}`")
    axes, hydra_overrides, resource_overrides = split_overrides(overrides)
    spec = parse(raw, path, axes)
    for note in spec.notes:
        print(f"note: {note}", file=sys.stderr)
    res = resources(spec.resources, resource_overrides)
    threads = res["slurm" if executor == "slurm" else "local"]["cpus_per_task"]
    cells = expand(spec, Path(results_root), hydra_overrides, threads=threads)
    wide = [c for c in cells if launch_of(c.config)]
    if wide and executor != "slurm":
        raise SweepError(f"{len(wide)} cell(s) (e.g. {wide[0].describe()}) ask engine.launch for several GPUs; run them "
                         "with --executor slurm, or set engine.launch.nodes=1 engine.launch.gpus_per_node=1 "
                         "engine.num_processes=1 for one process")
    return spec, cells, res, hydra_overrides


def dry_run(name: str, overrides=(), results_root="results", executor="slurm") -> str:
    """What ``--executor slurm`` would submit for each cell, without submitting: the sbatch script
    and, for multi-GPU cells, each node's ``accelerate launch`` command and its config."""
    from .launch import plan

    spec, cells, res, _ = prepare(name, overrides, results_root, "slurm")
    folder = submitit_dir(sweep_folder(results_root, spec.name))
    out, shown = [f"# trh sweep {spec.name} --executor slurm --dry-run: {len(cells)} cell(s); nothing submitted",
                  *slurm_notes(res["slurm"])], set()
    for cell in cells:
        key = cell.config["setting"]["name"]
        out.append(f"- {cell.describe()}  →  {cell.run_dir}")
        if key in shown:
            continue
        shown.add(key)
        wide = plan(cell, res, folder, job_name=f"trh-{cell.setting}-{cell.method}-s{cell.seed}")
        if wide is not None:
            out.append(wide.text(cell.describe()))
        else:
            ex = make_executor("slurm", folder, res, job_name=f"trh-{spec.name}", check=False)
            out.append(f"### {cell.describe()}: sbatch script (submitit array task; runs harness.train.run on the cell's "
                       f"config)\n{ex._make_submission_file_text(ex._submitit_command_str, 'dry-run').rstrip()}\n")
    return "\n".join(out)


def slurm_notes(slurm: dict) -> list[str]:
    """What a cluster user should look at before submitting: unset options, the environment setup."""
    unset = [k for k in ("partition", "account", "qos") if not slurm.get(k)]
    notes = []
    if unset:
        notes.append(f"# unset: {', '.join('slurm.' + k for k in unset)} — the cluster's defaults apply; many clusters "
                     "need slurm.partition=... slurm.account=... (on the command line or in the spec's resources)")
    if slurm.get("setup"):
        notes.append("# setup, run before each job: " + " && ".join(slurm["setup"]))
    else:
        notes.append(f"# slurm.setup is empty: jobs run {sys.executable} as it is on this machine; on a cluster "
                     "add e.g. slurm.setup='[\"module load cuda\", \"source /abs/path/venv/bin/activate\"]'")
    env = {k: v for k, v in (slurm.get("env") or {}).items() if v is not None}
    if env:
        notes.append("# exported in each job: " + " ".join(f"{k}={v}" for k, v in env.items()))
    return notes


def default_workers(executor: str, res: dict) -> int:
    """SLURM: the array parallelism; locally: as many cells as the cores allow at cpus_per_task each."""
    import os

    if executor == "slurm":
        return res["slurm"]["array_parallelism"]
    return max(1, len(os.sched_getaffinity(0)) // res["local"]["cpus_per_task"])


def write_manifest(sweep_dir: Path, spec: SweepSpec, cells: list[Cell], root: Path, overrides, executor: str,
                   previous: dict | None = None, registration: dict | None = None) -> dict:
    """Record this invocation's cells in the sweep's manifest: the union with every earlier invocation's
    (a filtered rerun adds cells, never removes them), and a pre-registered sweep's record. Returns it."""
    previous = previous if previous is not None else (read_manifest(sweep_dir) or {})
    current = [c.manifest_row(root) for c in cells]
    ids = {row["id"] for row in current}
    invocation = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "executor": executor,
                  "overrides": list(overrides), "git": code_state(), "cells": len(cells)}
    union = lambda key, new: list(dict.fromkeys([*previous.get(key, []), *new]))  # noqa: E731
    manifest = {"sweep": spec.name, "feeds": spec.feeds, "description": spec.description, "spec": spec.raw,
                "settings": union("settings", spec.settings),
                "labels": union("labels", [v.label for v in spec.variants if v.label not in spec.aliases]),
                "aliases": {**previous.get("aliases", {}), **spec.aliases},
                "seeds": union("seeds", spec.seeds),
                "cells": [r for r in previous.get("cells", []) if r["id"] not in ids] + current,
                "invocations": previous.get("invocations", []) + [invocation]}
    if registration:
        manifest["preregistration"] = registration
    write_manifest_file(sweep_dir, manifest)
    for cell in cells:  # snapshot each cell's config now: later edits to the config files change nothing
        store = RunStore(cell.run_dir)
        if not store.has_config():
            from omegaconf import OmegaConf
            store.write_config(OmegaConf.to_yaml(OmegaConf.create(cell.config)))
    return manifest


def registered(spec: SweepSpec, cells: list[Cell], overrides, previous: dict | None) -> dict | None:
    """A pre-registered sweep's record (``sweeps.preregistration``), checked before anything runs: the
    spec and code committed, no override but resources, and on a rerun the very cells of the first launch."""
    if previous and not spec.preregistration:
        raise SweepError(f"sweep {spec.name!r} was launched pre-registered; its spec has lost its "
                         "'preregistration' block (a registered spec is not edited — declare a new sweep)")
    if not spec.preregistration:
        return None
    _, _, resources = split_overrides(overrides)
    declared_otherwise = [o for o in overrides if o not in resources]
    if declared_otherwise:
        raise SweepError(f"pre-registered sweep {spec.name!r}: run it as declared, without overrides "
                         f"{declared_otherwise}")
    record = launch_record(spec.path, previous)
    ids = sorted(c.id for c in cells)
    if previous and previous.get("cells") not in (None, ids):
        gone, new = sorted(set(previous["cells"]) - set(ids)), sorted(set(ids) - set(previous["cells"]))
        raise SweepError(f"pre-registered sweep {spec.name!r}: its cells changed since the launch (a tuned "
                         f"choice or a config default moved): {len(new)} new, {len(gone)} gone, e.g. "
                         f"{(new or gone)[0]}; the registered cells are fixed — declare a new sweep")
    return {**record, "cells": ids}


def room_for(workers: int, in_flight: int, pending: int, share_tail: bool = False) -> int:
    """How many more cells to start now. With ``share_tail``, once fewer than 2 × ``workers`` cells are
    left (running and pending) they all run at once: a last partial round would leave cores idle,
    time-sharing them ends the sweep up to half a cell sooner (7 cells on 2 cores: 3.5 cell-times, not
    4). Each cell keeps its own thread count, so its metrics are the same either way."""
    if share_tail and in_flight + pending < 2 * workers:
        return pending
    return max(0, workers - in_flight)


def run_cells(cells: list[Cell], runner: CellRunner, workers: int, progress: bool = True, poll_s: float = 1.0,
              label: str = "cells", share_tail: bool = False) -> list[Outcome]:
    pending = list(cells)
    outcomes: dict[str, Outcome] = {}
    durations: list[float] = []
    bar = Progress(len(cells), label) if progress else None
    while pending or runner.in_flight or runner.elsewhere:
        new = []
        while pending and (room := room_for(workers, runner.in_flight, len(pending), share_tail)):
            batch, pending = pending[:room], pending[room:]
            new += runner.start(batch)  # cells finished before come back at once and take no slot
        new += runner.poll()
        for outcome in new:
            outcomes[outcome.cell.id] = outcome
            if outcome.seconds is not None and outcome.state != "failed":
                durations.append(outcome.seconds)
            if outcome.state == "failed":
                runner.log(f"{outcome.cell.describe()} failed: {outcome.status.get('reason')}")
        if bar is not None:
            failed = sum(o.state == "failed" for o in outcomes.values())
            eta = _eta(durations, len(cells) - len(outcomes), workers, share_tail)
            bar.show(len(outcomes), f"running {runner.in_flight}, elsewhere {len(runner.elsewhere)}, "
                                    f"failed {failed}, ETA {eta}")
        if pending or runner.in_flight or runner.elsewhere:
            time.sleep(poll_s)
    if bar is not None:
        bar.close()
    return [outcomes[c.id] for c in cells]


def _eta(durations: list[float], remaining: int, workers: int, share_tail: bool = False) -> str:
    """Median cell time × rounds left (with a shared last round, its cells share the cores)."""
    if remaining == 0:
        return "0s"
    if not durations:
        return "?"
    rounds = remaining / workers if share_tail and remaining < 2 * workers else math.ceil(remaining / workers)
    seconds = statistics.median(durations) * rounds
    return f"{seconds / 60:.0f}m" if seconds >= 90 else f"{seconds:.0f}s"


LOG_REDRAW_S = 60  # seconds between redraws of an unchanged bar in a log file


class Progress:
    """A tqdm bar of finished cells or trials, shown every poll on a terminal; in a log file (stderr not
    a terminal) only when the count changes or once a minute, not a redraw per poll."""

    def __init__(self, total: int, label: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=label, unit="cell", dynamic_ncols=True)
        self.live, self.drawn_at, self.drawn_n = sys.stderr.isatty(), 0.0, -1

    def show(self, n: int, postfix: str) -> None:
        if self.live or n != self.drawn_n or time.time() - self.drawn_at >= LOG_REDRAW_S:
            self.bar.n = n
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.refresh()
            self.drawn_at, self.drawn_n = time.time(), n

    def close(self) -> None:
        self.bar.close()


def damaged(cells: list[Cell]) -> list[tuple[Cell, str]]:
    """The cells whose folder holds a finished run that cannot be trusted (a cut line, metrics that
    end early, an unreadable status or config), with why."""
    out = []
    for cell in cells:
        store = RunStore(cell.run_dir)
        try:
            reason = store.damage(store.read_status())
            store.read_config()
        except StoreError as err:
            reason = str(err).split("; delete")[0]
        if reason:
            out.append((cell, reason))
    return out


def repair(cells: list[Cell], log=print) -> list[Path]:
    """Move each damaged cell's folder aside (``<folder>.damaged-<UTC time>``, nothing deleted) so that
    the sweep trains it again; returns the new places."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for cell, reason in damaged(cells):
        aside = cell.run_dir.with_name(f"{cell.run_dir.name}.damaged-{stamp}")
        cell.run_dir.rename(aside)
        log(f"repair: {cell.describe()} was damaged ({reason}); its folder is now {aside}; training it again")
        moved.append(aside)
    return moved


def sweep(name: str, overrides=(), executor: str = "local", workers: int | None = None,
          results_root="results", progress: bool = True, max_retries: int = 2, poll_s: float = 1.0,
          log=print, repair_damaged: bool = False, preregistered: bool = False) -> dict:
    spec, cells, res, hydra_overrides = prepare(name, overrides, results_root, executor)
    if preregistered and not spec.preregistration:
        raise SweepError(f"--preregistered: sweep {spec.name!r} declares no test; add a 'preregistration' block "
                         "(hypotheses, score, reference, family, stopping) to its spec and commit it")
    root = Path(results_root)
    sweep_dir = sweep_folder(root, spec.name)
    previous = read_manifest(sweep_dir) or {}
    registration = registered(spec, cells, overrides, previous.get("preregistration"))
    if repair_damaged:
        repair(cells, log)
    # an explicit --workers is a cap (memory, a shared machine); the default may share the last round
    share_tail = workers is None and executor == "local" and res["local"]["share_tail"]
    if workers is None:
        workers = default_workers(executor, res)
    if workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    ex = make_executor(executor, submitit_dir(sweep_dir), res, job_name=f"trh-{spec.name}")
    manifest = write_manifest(sweep_dir, spec, cells, root, overrides, executor, previous, registration)
    runner = CellRunner(ex, executor, max_retries=max_retries, log=log, resources=res,
                        require_clean=bool(spec.preregistration))
    started = time.time()
    outcomes = run_cells(cells, runner, 1 if executor == "debug" else workers, progress, poll_s, label=spec.name,
                         share_tail=share_tail)
    table = summary_rows(root, manifest)
    write_summary(summary_path(sweep_dir), table)
    return {"spec": spec, "cells": cells, "outcomes": outcomes, "rows": table, "sweep_dir": sweep_dir,
            "wall_s": time.time() - started}


def cell_states(name: str, overrides=(), results_root="results") -> list[dict]:
    """``trh sweep NAME --status``: each cell's state on disk, without running anything."""
    from analysis.load import score_cell

    spec, cells, _, _ = prepare(name, overrides, results_root)
    root = Path(results_root)
    return [score_cell(root, cell.manifest_row(root), spec.name, spec.feeds) for cell in cells]


def summary_rows(root: Path, manifest: dict) -> list[dict]:
    """One row per cell of the sweep (every invocation's), as found on disk."""
    from analysis.load import score_cell
    return [score_cell(root, row, manifest["sweep"], manifest.get("feeds", "")) for row in manifest["cells"]]


def write_summary(path: Path, rows: list[dict]) -> None:
    import pandas as pd
    atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
