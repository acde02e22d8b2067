"""What a launched job runs: one cell, from the config snapshotted at submit time.

The run folder's lock makes a cell idempotent across drivers and requeues: a second process on the
same cell returns ``in_use`` at once, a finished cell returns its verdict without training, and an
interrupted one resumes from its checkpoint. On SLURM, a timeout or preemption calls ``checkpoint``,
which requeues the same call (training resumes from the run's last checkpoint).
"""

from __future__ import annotations

import os
import socket
import traceback

import submitit


def job_tags(executor: str) -> dict:
    try:
        job_id = submitit.JobEnvironment().job_id
    except RuntimeError:  # not inside a submitit job (the debug executor runs in-process)
        job_id = None
    return {"job": {"executor": executor, "job_id": job_id, "host": socket.gethostname(), "pid": os.getpid()}}


class CellJob(submitit.helpers.Checkpointable):
    """``CellJob()(config, executor)`` → the run's status dict (never raises: the status is the truth,
    and submitit's debug executor would open a debugger on an exception)."""

    def __call__(self, config: dict, executor: str, require_clean: bool = False) -> dict:
        from omegaconf import OmegaConf

        from harness.store import RunInUse
        from harness.train import run

        try:
            from .preregistration import refused

            refusal = refused(require_clean)
            if refusal:  # no training starts: a rerun from a clean tree trains the cell
                return refusal
            return run(OmegaConf.create(config), tags=job_tags(executor))
        except RunInUse as err:
            return {"state": "in_use", "reason": str(err)}
        except Exception as err:  # noqa: BLE001 - recorded in status.json by harness.train as well
            return {"state": "failed", "reason": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(limit=8)}
