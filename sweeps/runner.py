"""Run cells through a submitit executor, idempotently.

A cell's run folder is the truth: ``status.json`` says finished or not, and the folder's lock says
whether some process (ours, another driver's, an orphan of a killed driver) is training it. So:
- a finished cell is never submitted again;
- a cell whose folder is locked is left to its owner and picked up again when the lock is released;
- a job that dies without a verdict (killed worker, node failure) is resubmitted up to
  ``max_retries`` times and resumes from the cell's checkpoint;
- a run that failed with an exception is reported failed (not retried within this invocation).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.store import FINISHED, RunStore

from .cell import CellJob
from .launch import LaunchJob, launch_of, multi_gpu_executor, write_launch_files
from .spec import Cell, SweepError


@dataclass
class Outcome:
    cell: Cell
    state: str                 # done | collapsed | failed
    status: dict
    seconds: float | None      # wall time of the job that finished it (None: finished before)
    attempts: int = 0


@dataclass
class _Active:
    cell: Cell
    job: object
    started: float
    attempt: int
    missing_since: float | None = field(default=None)


def finished_status(cell: Cell):
    status = RunStore(cell.run_dir).read_status()
    if status and status.get("state") in FINISHED and status.get("config_hash") == cell.id:
        return status
    return None


class CellRunner:
    def __init__(self, executor, kind: str, max_retries: int = 2, log=print, resources: dict | None = None,
                 require_clean: bool = False):
        self.executor, self.kind, self.max_retries, self.log = executor, kind, max_retries, log
        self.require_clean = require_clean  # a pre-registered sweep: each cell refuses a changed tree
        self.resources = resources
        self.active: dict[str, _Active] = {}
        self.elsewhere: dict[str, tuple[Cell, int]] = {}
        self.attempts: dict[str, int] = {}
        self._squeue_at, self._queued = 0.0, set()

    @property
    def in_flight(self) -> int:
        return len(self.active)

    def start(self, cells: list[Cell]) -> list[Outcome]:
        """Submit cells (one array on SLURM); those already finished come back as outcomes at once."""
        done, submit = [], []
        for cell in cells:
            status = finished_status(cell)
            if status is not None:
                done.append(Outcome(cell, status["state"], status, None))
            elif RunStore(cell.run_dir).in_use():
                self.elsewhere[cell.id] = (cell, self.attempts.get(cell.id, 0))
            else:
                submit.append(cell)
        self._submit(submit)
        return done

    def _submit(self, cells: list[Cell]) -> None:
        """Submit ``cells``; a refused submission (sbatch's error, a missing tool) is one SweepError line."""
        if not cells:
            return
        from submitit.core.utils import FailedSubmissionError, UncompletedJobError
        echoed = io.StringIO()  # submitit prints sbatch's stderr before raising it: say it once, below
        try:
            with contextlib.redirect_stderr(echoed):
                self._submit_jobs(cells)
        except (FailedSubmissionError, UncompletedJobError, OSError, subprocess.CalledProcessError) as err:
            lines = [line.strip() for line in (str(err) or echoed.getvalue()).splitlines() if line.strip()]
            reason = lines[-1] if lines else type(err).__name__
            raise SweepError(f"--executor {self.kind}: submitting {len(cells)} cell(s) failed: {reason} "
                             "(finished cells are kept; rerun the same command to resume)") from None
        sys.stderr.write(echoed.getvalue())

    def _submit_jobs(self, cells: list[Cell]) -> None:
        job_fn = CellJob()
        narrow = [c for c in cells if not launch_of(c.config)]
        wide = [c for c in cells if launch_of(c.config)]  # multi-GPU: SLURM only (driver.prepare checks)
        cells, jobs = narrow + wide, []
        if self.kind == "slurm":
            if narrow:
                with self.executor.batch():
                    jobs = [self.executor.submit(job_fn, c.config, self.kind, self.require_clean) for c in narrow]
        else:
            jobs = [self.executor.submit(job_fn, c.config, self.kind, self.require_clean) for c in narrow]
        jobs += [self._submit_wide(c) for c in wide]
        now = time.time()
        for cell, job in zip(cells, jobs):
            self.attempts[cell.id] = self.attempts.get(cell.id, 0) + 1
            self.active[cell.id] = _Active(cell, job, now, self.attempts[cell.id])

    def _submit_wide(self, cell: Cell):
        """A multi-GPU cell: its own job of ``nodes`` tasks, each running ``accelerate launch``."""
        write_launch_files(cell)
        folder = Path(str(self.executor.folder)).parent
        executor = multi_gpu_executor(folder, self.resources, launch_of(cell.config), job_name=f"trh-{cell.setting}-{cell.method}-s{cell.seed}")
        return executor.submit(LaunchJob(), str(cell.run_dir), self.kind, self.require_clean)

    def cancel(self, cell_id: str) -> None:
        act = self.active.pop(cell_id, None)
        if act is not None:
            act.job.cancel(check=False)
        self.elsewhere.pop(cell_id, None)

    def poll(self) -> list[Outcome]:
        outcomes, resubmit = [], []
        for cell_id, act in list(self.active.items()):
            if not self._job_ended(act):
                continue
            del self.active[cell_id]
            try:
                result = act.job.result()
                result = result if isinstance(result, dict) else {"state": "died", "reason": repr(result)}
            except Exception as err:  # noqa: BLE001 - killed, cancelled, timed out past requeues
                result = {"state": "died", "reason": f"{type(err).__name__}: {str(err)[-500:]}"}
            seconds = time.time() - act.started
            status = finished_status(act.cell)
            # a job that found the cell busy or finished by someone else trained nothing
            trained_here = result.get("state") in FINISHED and not result.get("skipped")
            if status is not None:
                outcomes.append(Outcome(act.cell, status["state"], status, seconds if trained_here else None,
                                        act.attempt))
            elif result.get("state") == "in_use":
                self.elsewhere[cell_id] = (act.cell, act.attempt)
            elif result.get("state") == "failed":
                on_disk = RunStore(act.cell.run_dir).read_status() or {}
                outcomes.append(Outcome(act.cell, "failed", {**on_disk, **result}, seconds, act.attempt))
            elif act.attempt <= self.max_retries:
                self.log(f"{act.cell.describe()}: the job ended without a verdict ({result.get('reason')}); "
                         f"resubmitting (attempt {act.attempt + 1}), it resumes from its checkpoint")
                resubmit.append(act.cell)
            else:
                outcomes.append(Outcome(act.cell, "failed", {"state": "failed", "reason": "the job died "
                                        f"{act.attempt} times; last: {result.get('reason')}"}, seconds, act.attempt))
        for cell_id, (cell, _) in list(self.elsewhere.items()):
            if RunStore(cell.run_dir).in_use():
                continue
            del self.elsewhere[cell_id]
            status = finished_status(cell)
            if status is not None:
                outcomes.append(Outcome(cell, status["state"], status, None))
            else:
                resubmit.append(cell)  # its owner died or stopped: take it over from the checkpoint
        self._submit(resubmit)
        return outcomes

    def _job_ended(self, act: _Active) -> bool:
        if act.job.done():
            return True
        if self.kind != "slurm":
            return False
        # without SLURM accounting (sacct) submitit cannot see a job that died without a result file;
        # a job that has left the queue for a minute has ended
        queued = self._squeue()
        if queued is None or str(act.job.job_id) in queued:
            act.missing_since = None
            return False
        act.missing_since = act.missing_since or time.time()
        return time.time() - act.missing_since > 60

    def _squeue(self):
        if time.time() - self._squeue_at > 15:
            try:
                out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=30)
                self._queued = set(out.stdout.split()) if out.returncode == 0 else None
            except (OSError, subprocess.TimeoutExpired):
                self._queued = None
            self._squeue_at = time.time()
        return self._queued
