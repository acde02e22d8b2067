"""``trh search``: an Optuna study over a declared space, each trial = one cell per listed seed, run
through the same executors as sweeps. The objective is the matched-window headline (mean over seeds).

The driver asks Optuna for parameters, submits the trial's cells, and while they train it reports
the best headline so far (all seeds' common eval steps) to the pruner; a pruned trial's jobs are
cancelled. Storage is a journal file (``results/searches/<name>/journal.log``) unless ``--storage``
names another (``sqlite:///x.db``, ``postgresql://…``, or a ``.log`` path). A killed driver leaves its
trials RUNNING; the next one re-attaches to them (their cells resume or are finished), so finished
trials are never re-run and running ones are not started again.

    name: search_cppo
    kind: search
    setting: base_s
    method: cppo
    seeds: [0]
    space:                                   # Hydra override key → a range or choices
      method.delta_b: {low: 0.0003, high: 0.003, log: true}
      method.w_min: {low: 0.5, high: 1.0}
    sampler: {name: tpe, seed: 0}            # tpe | random | gp | cmaes
    pruner: {name: median, n_startup_trials: 4, n_warmup_steps: 10}   # median | percentile | hyperband | threshold | none
    collapse_score: 0.0                      # a collapsed seed counts as this (null: its best score)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from harness.provenance import code_state
from harness.store import RunStore, atomic_write_text, runs_dir, search_dir, submitit_dir

from .driver import Progress, default_workers
from .executors import make_executor, resources
from .runner import CellRunner, Outcome
from .spec import Cell, SweepError, cell_configs, load_raw, split_overrides

# the default: CPPO's budget and weight floor at the paper's scale (real-model settings)
DEFAULT_SPACE = {"method.delta_b": {"low": 0.005, "high": 0.05, "log": True},
                 "method.w_min": {"low": 0.5, "high": 1.0}}


@dataclass
class SearchSpec:
    name: str
    setting: str
    method: str
    seeds: list[int]
    space: dict
    sampler: dict
    pruner: dict
    direction: str
    collapse_score: float | None
    overrides: list[str]
    resources: dict


def parse_search(raw: dict, axes: dict) -> SearchSpec:
    from harness.config import available

    where = f"search {raw['name']!r}"
    if raw.get("kind") != "search":
        raise SweepError(f"{raw['name']!r} is a grid spec: run it with `trh sweep {raw['name']}`")
    setting = (axes.get("setting") or [raw.get("setting")])[0]
    if setting not in available("setting"):
        raise SweepError(f"{where}: unknown setting {setting!r}; allowed: {', '.join(available('setting'))}")
    method = (axes.get("method") or [raw.get("method")])[0]
    if method not in available("method"):
        raise SweepError(f"{where}: unknown method {method!r}; allowed: {', '.join(available('method'))}")
    seeds = [int(s) for s in (axes.get("seed") or raw.get("seeds") or [])]
    if not seeds:
        raise SweepError(f"{where}: 'seeds' is empty; the objective is the mean over at least one seed")
    space = raw.get("space") or DEFAULT_SPACE
    if not isinstance(space, dict) or not space:
        raise SweepError(f"{where}: 'space' must map override keys to {{low, high[, log, step, int]}} or {{choices}}")
    for key, dim in space.items():
        _check_dim(where, key, dim)
    direction = raw.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise SweepError(f"{where}: direction must be 'maximize' or 'minimize', got {direction!r}")
    return SearchSpec(name=str(raw["name"]), setting=setting, method=method, seeds=seeds, space=space,
                      sampler=raw.get("sampler") or {"name": "tpe", "seed": 0},
                      pruner=raw.get("pruner") or {"name": "median"}, direction=direction,
                      collapse_score=raw.get("collapse_score", 0.0), overrides=list(raw.get("overrides") or []),
                      resources=raw.get("resources") or {})


def _check_dim(where: str, key: str, dim) -> None:
    if not isinstance(dim, dict):
        raise SweepError(f"{where}: space.{key} must be a mapping, got {dim!r}")
    if "choices" in dim:
        if not isinstance(dim["choices"], list) or not dim["choices"]:
            raise SweepError(f"{where}: space.{key}.choices must be a non-empty list")
        return
    unknown = sorted(set(dim) - {"low", "high", "log", "step", "int"})
    if unknown or "low" not in dim or "high" not in dim:
        raise SweepError(f"{where}: space.{key} needs low and high (optional log, step, int); got {sorted(dim)}")
    low, high = dim["low"], dim["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise SweepError(f"{where}: space.{key}: low and high must be numbers, got {low!r}, {high!r}")
    if low >= high:
        raise SweepError(f"{where}: space.{key}: low ({low}) must be < high ({high})")
    if dim.get("log") and low <= 0:
        raise SweepError(f"{where}: space.{key}: a log scale needs low > 0, got {low}")


def _suggest(trial, space: dict) -> dict:
    params = {}
    for key, dim in space.items():
        if "choices" in dim:
            params[key] = trial.suggest_categorical(key, dim["choices"])
        elif dim.get("int"):
            params[key] = trial.suggest_int(key, int(dim["low"]), int(dim["high"]), log=bool(dim.get("log")),
                                            step=int(dim.get("step", 1)))
        else:
            params[key] = trial.suggest_float(key, float(dim["low"]), float(dim["high"]), log=bool(dim.get("log")),
                                              step=dim.get("step"))
    return params


def open_storage(url: str | None, default_path: Path):
    """A journal file by default; an RDB URL or a journal path by option. Fails before any run."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    target = url or str(default_path)
    try:
        if "://" in target:
            return RDBStorage(target)
        path = Path(target.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except Exception as err:  # noqa: BLE001 - SQLAlchemy, OS and Optuna errors all mean "cannot open"
        raise SweepError(f"--storage {target!r} cannot be opened: {type(err).__name__}: {err}") from None
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sampler(cfg: dict):
    import optuna

    s = optuna.samplers
    return _build("sampler", {"tpe": s.TPESampler, "random": s.RandomSampler, "gp": s.GPSampler,
                              "cmaes": s.CmaEsSampler}, cfg, "tpe")


def _pruner(cfg: dict):
    import optuna

    p = optuna.pruners
    return _build("pruner", {"median": p.MedianPruner, "percentile": p.PercentilePruner,
                             "hyperband": p.HyperbandPruner, "threshold": p.ThresholdPruner,
                             "none": p.NopPruner}, cfg, "median")


def _build(kind: str, choices: dict, cfg: dict, default: str):
    """``{name: x, **kwargs}`` → choices[x](**kwargs), with errors naming the field."""
    cfg = dict(cfg)
    name = cfg.pop("name", default)
    if name not in choices:
        raise SweepError(f"{kind}.name must be one of {sorted(choices)}, got {name!r}")
    try:
        return choices[name](**cfg)
    except TypeError as err:
        raise SweepError(f"{kind} {name}: {err}") from None


def _alive(owner: str | None) -> bool:
    """Whether the driver that asked a trial (``host:pid``) is still running."""
    if not owner or ":" not in owner:
        return False
    host, pid = owner.rsplit(":", 1)
    if host != socket.gethostname():
        return True  # another machine's driver: leave its trials alone
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


class _Trial:
    def __init__(self, trial, cells: list[Cell]):
        self.trial, self.cells = trial, cells
        self.outcomes: dict[str, Outcome] = {}
        self.reported = set(trial.storage.get_trial(trial._trial_id).intermediate_values)


def search(name: str, trials: int, overrides=(), storage: str | None = None, executor: str = "local",
           workers: int | None = None, results_root="results", progress: bool = True, poll_s: float = 1.0,
           log=print) -> dict:
    from optuna.trial import Trial, TrialState

    raw, _ = load_raw(name)
    axes, hydra_overrides, resource_overrides = split_overrides(overrides)
    spec = parse_search(raw, axes)
    if trials < 1:
        raise SweepError(f"--trials must be >= 1, got {trials}")
    res = resources(spec.resources, resource_overrides)
    threads = res["slurm" if executor == "slurm" else "local"]["cpus_per_task"]
    root = Path(results_root)
    out_dir = search_dir(root, spec.name)
    # compose one cell up front: bad overrides or a bad space key fail here, before Optuna or any job
    probe = {k: (d["choices"][0] if "choices" in d else d["low"]) for k, d in spec.space.items()}
    _cells_for(spec, probe, hydra_overrides, root, threads)
    study = _open_study(spec, storage, out_dir)
    workers = workers or default_workers(executor, res)
    parallel_trials = 1 if executor == "debug" else max(1, workers // len(spec.seeds))
    ex = make_executor(executor, submitit_dir(out_dir), res, job_name=f"trh-search-{spec.name}")
    with open(out_dir / "invocations.jsonl", "a") as f:  # what ran when, from which commit
        f.write(json.dumps({"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                            "trials": trials, "executor": executor, "overrides": list(overrides),
                            "git": code_state(), "trials_before": len(study.trials)}) + "\n")
    runner = CellRunner(ex, executor, log=log)
    owner = f"{socket.gethostname()}:{os.getpid()}"

    active: list[_Trial] = []

    def launch(trial) -> None:
        """Start a trial's cells; for an adopted trial ``_suggest`` returns its stored values (a driver
        killed mid-ask samples the rest)."""
        trial.set_user_attr("driver", owner)
        cells = _cells_for(spec, _suggest(trial, spec.space), hydra_overrides, root, threads)
        trial.set_user_attr("cells", [str(c.run_dir) for c in cells])
        for cell in cells:  # and each cell names its trial
            RunStore(cell.run_dir).add_search_trial(spec.name, trial.number)
        active.append(_Trial(trial, cells))
        _start(runner, active[-1])

    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _alive(frozen.user_attrs.get("driver")):  # orphaned by a killed driver: adopt it
            launch(Trial(study, frozen._trial_id))
            log(f"trial {frozen.number}: re-attached (its cells resume or are finished)")

    def finished_count():
        return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))

    bar = Progress(trials, f"search {spec.name}") if progress else None
    started = time.time()
    while True:
        while len(active) < parallel_trials and finished_count() + len(active) < trials:
            launch(study.ask())
        if not active:
            break
        for outcome in runner.poll():
            for t in active:
                if outcome.cell.id in {c.id for c in t.cells}:
                    t.outcomes[outcome.cell.id] = outcome
        for t in list(active):
            state = _advance(study, t, spec, runner)
            if state is not None:
                active.remove(t)
                value = study.get_trials(deepcopy=False)[t.trial.number].value
                log(f"trial {t.trial.number} {state}: {t.trial.params}" + (f" → {value:.4f}" if value is not None else ""))
        if bar is not None:
            best = _best(study)
            bar.show(min(trials, finished_count()),
                     f"running {len(active)}, best {best.value:.4f}" if best else f"running {len(active)}")
        if active:
            time.sleep(poll_s)
    if bar is not None:
        bar.close()
    return _write_results(study, out_dir, spec, time.time() - started)


def _open_study(spec: SearchSpec, storage, out_dir: Path):
    """The study in its storage (created or resumed); sampler and pruner are checked before the
    storage is touched."""
    import optuna

    store = open_storage(storage, out_dir / "journal.log")
    sampler_cfg = dict(spec.sampler)
    _sampler(sampler_cfg), _pruner(spec.pruner)
    study = optuna.create_study(study_name=spec.name, storage=store, direction=spec.direction,
                                sampler=_sampler(sampler_cfg), pruner=_pruner(spec.pruner), load_if_exists=True)
    if study.trials and sampler_cfg.get("seed") is not None:
        # a resumed study: a sampler re-seeded as at the start would propose the same points again
        sampler_cfg["seed"] = int(sampler_cfg["seed"]) + len(study.trials)
        study.sampler = _sampler(sampler_cfg)
    return study


def _cells_for(spec: SearchSpec, params: dict, hydra_overrides, root: Path, threads: int) -> list[Cell]:
    base = [f"setting={spec.setting}", f"method={spec.method}", *spec.overrides, *hydra_overrides,
            *[f"{k}={v}" for k, v in params.items()]]
    built = cell_configs({"trial": base}, {"trial": spec.seeds}, runs_dir(root), threads, f"search {spec.name!r}")
    cells = []
    for seed in spec.seeds:
        run, container = built[("trial", seed)]
        cells.append(Cell(id=run.config_hash, setting=spec.setting, label=spec.method, method=spec.method, seed=seed,
                          t_stop=run.t_stop, run_dir=run.run_dir, config=container, overrides=base[2:]))
    return cells


def _start(runner: CellRunner, t: _Trial) -> None:
    for outcome in runner.start(t.cells):
        t.outcomes[outcome.cell.id] = outcome


def _seed_score(outcome: Outcome, spec: SearchSpec):
    from analysis.cells import cell_row

    row = cell_row(outcome.status, RunStore(outcome.cell.run_dir).read_metrics(), outcome.cell.t_stop)
    if outcome.state == "collapsed" and spec.collapse_score is not None:
        return float(spec.collapse_score)
    return row["best_headline"]


def _advance(study, t: _Trial, spec: SearchSpec, runner: CellRunner):
    """Report new intermediate values, prune, or tell the final value. Returns the final state or None."""
    from optuna.trial import TrialState

    if any(o.state == "failed" for o in t.outcomes.values()):
        for c in t.cells:
            runner.cancel(c.id)
        study.tell(t.trial, state=TrialState.FAIL, skip_if_finished=True)
        return "failed"
    complete = len(t.outcomes) == len(t.cells)
    # intermediate values: the best headline so far at eval steps every seed has reached (a finished
    # trial reports its whole curve too: the pruner compares later trials against it)
    curves = [[(r["step"], r["headline"]) for r in RunStore(c.run_dir).read_metrics() if "headline" in r] for c in t.cells]
    common = sorted(set.intersection(*[{s for s, _ in curve} for curve in curves])) if all(curves) else []
    for step in common:
        if step in t.reported:
            continue
        t.trial.report(statistics.fmean(max(h for s, h in curve if s <= step) for curve in curves), step)
        t.reported.add(step)
        if not complete and t.trial.should_prune():
            for c in t.cells:
                runner.cancel(c.id)
            study.tell(t.trial, state=TrialState.PRUNED, skip_if_finished=True)
            return "pruned"
    if complete:
        scores = [_seed_score(t.outcomes[c.id], spec) for c in t.cells]
        if any(s is None for s in scores):
            study.tell(t.trial, state=TrialState.FAIL, skip_if_finished=True)
            return "failed"
        t.trial.set_user_attr("seed_scores", scores)
        study.tell(t.trial, statistics.fmean(scores), skip_if_finished=True)
        return "complete"
    return None


def _best(study):
    try:
        return study.best_trial
    except ValueError:
        return None


def _write_results(study, out_dir: Path, spec: SearchSpec, wall_s: float) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))
    atomic_write_text(out_dir / "trials.csv", frame.to_csv(index=False))
    best = _best(study)
    summary = {"study": spec.name, "setting": spec.setting, "method": spec.method, "seeds": spec.seeds,
               "direction": spec.direction, "objective": "mean over seeds of the best headline within [0, T_stop]",
               "trials": {s.name.lower(): sum(t.state == s for t in study.trials) for s in
                          {t.state for t in study.trials}},
               "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params,
                                                  "seed_scores": best.user_attrs.get("seed_scores"),
                                                  "cells": best.user_attrs.get("cells")}}
    atomic_write_text(out_dir / "best.json", json.dumps(summary, indent=1))
    return {"summary": summary, "trials": frame, "out_dir": out_dir, "wall_s": wall_s}
