"""The life of one run, written once for both engines.

    harness.train.run(cfg)
      resolve the config (every field checked, method parameters included)
      → the run folder and its lock (one process per folder)
      → a finished run returns its verdict, never trains again
      → the engine trains, reporting through a ``RunRecord``: resume point, one row per step,
        the running peak, the collapse verdict
      → status.json: the verdict and the matched-window best; a crash is recorded as ``failed``

An engine (``harness/engines/``) owns its model, optimiser and checkpoints; everything above is here.
"""

from __future__ import annotations

import datetime as dt

import math
from typing import Optional

from .config import ConfigError, RunSpec
from .provenance import code_state, provenance
from .store import FINISHED, RunStore, best_within_window


def finished(spec: RunSpec, store: RunStore) -> Optional[dict]:
    """The verdict of a finished run in the folder (never rerun a finished cell), else None; a folder
    holding another config's run is an error."""
    previous = store.read_status()
    if previous and previous.get("config_hash") != spec.config_hash:
        raise ConfigError(f"run folder {store.dir} holds a run of another config ({previous.get('config_hash')}, "
                          f"not {spec.config_hash}); choose another run_dir")
    if previous and previous.get("state") in FINISHED:
        return {**previous, "skipped": True}
    return None


def record_failure(spec: RunSpec, store: RunStore, err: BaseException) -> None:
    """A crash becomes the run's verdict (the caller re-raises)."""
    rows, previous = store.read_metrics(), store.read_status() or {}
    kept = {k: previous[k] for k in ("splits", "started_at", "code_log") if k in previous}
    store.write_status(state="failed", reason=f"{type(err).__name__}: {err}", config_hash=spec.config_hash,
                       step=rows[-1]["step"] if rows else 0, resumed_from=previous.get("resumed_from", []), **kept)


def headline_collapse(headline: float, peak: float, rule) -> Optional[str]:
    """The reason a headline counts as collapsed (fallen to ≈ 0 after a real peak), else None
    (``rule``: the run's ``collapse`` group)."""
    floor = max(rule.floor, rule.floor_fraction * peak)
    if peak >= rule.peak_at_least and headline <= floor:
        return f"headline {headline:.3f} ≤ {floor:.3f} after a peak of {peak:.3f}"
    return None


class RunRecord:
    """What an engine reports while it trains: where it starts, one row per step, the verdict."""

    def __init__(self, spec: RunSpec, store: RunStore):
        self.spec, self.store = spec, store
        previous = store.read_status() or {}
        self.resumed_from = list(previous.get("resumed_from", []))
        self.started_at = previous.get("started_at")  # the first start's (UTC), kept by every resume
        self.code_log = list(previous.get("code_log", []))  # the code's commit at every start and resume
        self.rows: list[dict] = []
        self.peak, self.start = 0.0, 0
        self.splits = None  # the task's split names, in every status write (analysis reads them there)
        self.verdict = {"state": "done", "reason": ""}

    def begin(self, start: int, **status) -> None:
        """Resume after step ``start`` (its checkpoint's; later rows are recomputed) or, at 0, start
        afresh; then the status says running."""
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        if start:
            self.resumed_from.append(start)
            self.store.truncate_records(start)
            self.started_at = self.started_at or "unknown"  # a run begun before runs recorded it
        else:
            self.store.clear_records()
            self.started_at, self.code_log = now, []
        self.code_log.append({"step": start, "at": now, **code_state()})
        self.start, self.splits = start, status.get("splits")
        self.rows = self.store.read_metrics() if start else []  # (another rank may be clearing the file)
        self.peak = max([r["headline"] for r in self.rows if "headline" in r], default=0.0)
        self.running(start, **status)

    def running(self, step: int, **status) -> None:
        if self.splits is not None:
            status.setdefault("splits", self.splits)
        self.store.write_status(state="running", step=step, config_hash=self.spec.config_hash,
                                resumed_from=self.resumed_from, started_at=self.started_at, code_log=self.code_log,
                                **status)

    def judge(self, row: dict, finite: bool = True) -> Optional[dict]:
        """The collapse verdict of a step's row (after its evaluation, if any), else None: non-finite
        loss or parameters, or a headline fallen to ≈ 0 after a real peak."""
        loss = row.get("policy_loss", row.get("loss", 0.0))
        if not finite or (loss is not None and not math.isfinite(loss)):
            return {"state": "collapsed", "reason": "non-finite loss or parameters", "collapse_step": row["step"]}
        if "headline" in row:
            reason = headline_collapse(row["headline"], max(self.peak, row["headline"]), self.spec.collapse)
            if reason:
                return {"state": "collapsed", "collapse_step": row["step"], "reason": reason}
        return None

    def record(self, row: dict) -> None:
        self.store.append_metrics(row)
        self.rows.append(row)
        if "headline" in row:
            self.peak = max(self.peak, row["headline"])

    def best(self) -> Optional[dict]:
        """The matched-window choice so far: the best validation row within [0, T_stop]."""
        return best_within_window(self.rows, self.spec.t_stop)

    def finish(self, **extra) -> dict:
        """Write and return the verdict with the matched-window best."""
        best = self.best()
        status = {**self.verdict, "step": self.rows[-1]["step"], "config_hash": self.spec.config_hash,
                  "t_stop": self.spec.t_stop, "run_dir": str(self.store.dir),
                  "best_headline": best["headline"] if best else None, "best_step": best["step"] if best else None,
                  "resumed_from": self.resumed_from, "started_at": self.started_at, "code_log": self.code_log,
                  "provenance": provenance(),
                  **extra}
        self.store.write_status(**status)
        return status


def held_out_of_row(row: Optional[dict], test_splits) -> Optional[dict]:
    """The held-out score of an eval row that carries the task's test splits, else None."""
    if not row or row.get("test_headline") is None:
        return None
    return {"step": row["step"], **{k: row[k] for k in (*test_splits, "test_headline") if k in row}}


def summary_line(status: dict) -> str:
    best = status.get("best_headline")
    best_text = "none" if best is None else f"{best:.4f} at step {status.get('best_step')}"
    verdict = status["state"] if status["state"] != "collapsed" else f"collapsed at step {status.get('collapse_step')}"
    return f"best headline within [0, {status.get('t_stop')}]: {best_text}; verdict: {verdict}"
