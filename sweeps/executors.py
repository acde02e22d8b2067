"""submitit executors for cells: ``local`` (a process per cell), ``slurm`` (a job per cell, submitted
as arrays) and ``debug`` (in-process, sequential; for tests and pdb). Resources come from
``sweeps/resources.yaml``, the spec's ``resources:`` and ``slurm.*``/``local.*`` overrides."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

from .spec import SweepError

EXECUTORS = ("local", "slurm", "debug")
RESOURCES_FILE = Path(__file__).parent / "resources.yaml"


def resources(spec_resources: dict | None, overrides=()) -> dict:
    base = OmegaConf.load(RESOURCES_FILE)
    try:
        merged = OmegaConf.merge(base, OmegaConf.create(spec_resources or {}), OmegaConf.from_dotlist(list(overrides)))
    except Exception as err:  # noqa: BLE001 - a typo'd or ill-typed resource key
        raise SweepError(f"resources: {err}") from None
    out = OmegaConf.to_container(merged, resolve=True)
    for kind in ("local", "slurm"):
        unknown = sorted(set(out[kind]) - set(OmegaConf.to_container(base)[kind]))
        if unknown:
            raise SweepError(f"resources.{kind}: unknown key(s) {unknown}; allowed: {sorted(base[kind])}")
        cpus = out[kind]["cpus_per_task"]
        if not isinstance(cpus, int) or cpus < 1:
            raise SweepError(f"resources.{kind}.cpus_per_task must be a positive integer, got {cpus!r}")
    if not isinstance(out["local"]["share_tail"], bool):
        raise SweepError(f"resources.local.share_tail must be true or false, got {out['local']['share_tail']!r}")
    return out


def check_slurm() -> None:
    """Fail before any submission when no SLURM controller answers."""
    missing = [tool for tool in ("sbatch", "scontrol", "srun") if shutil.which(tool) is None]
    if missing:
        raise SweepError(f"--executor slurm: {'/'.join(missing)} not on PATH (is SLURM installed here? "
                         "scripts/slurm_local.sh starts a one-node cluster on localhost; --dry-run needs none)")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise SweepError("--executor slurm: the SLURM controller is unreachable (`scontrol ping` timed out)") from None
    text = (ping.stdout + ping.stderr).strip()
    if ping.returncode != 0 or "UP" not in text:
        raise SweepError(f"--executor slurm: the SLURM controller is unreachable (`scontrol ping`: {text or ping.returncode})")


def make_executor(kind: str, folder: Path, res: dict, job_name: str, check: bool = True):
    import submitit

    if kind not in EXECUTORS:
        raise SweepError(f"--executor must be one of {list(EXECUTORS)}, got {kind!r}")
    folder = Path(folder) / "%j"
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=res["local"]["timeout_min"])
        return executor
    if check:  # a dry run builds the executor to print its script, without a controller
        check_slurm()
    _quiet_sacct()
    s = res["slurm"]
    executor = slurm_executor(folder, s["max_num_timeout"], print_only=not check)
    params = slurm_parameters(res, job_name, array_parallelism=s["array_parallelism"])
    if s["gpus_per_node"]:
        params["gpus_per_node"] = s["gpus_per_node"]
    executor.update_parameters(**params)
    return executor


def slurm_executor(folder: Path, max_num_timeout: int, print_only: bool = False):
    """submitit's SlurmExecutor. ``print_only`` (a dry run) builds one where SLURM is not installed, to
    print the sbatch script it would submit: submitit refuses to construct it when ``srun`` is missing."""
    import submitit

    cls = submitit.SlurmExecutor
    if print_only:
        cls = type("PrintOnlySlurmExecutor", (cls,), {"affinity": classmethod(lambda _cls: 1)})
    return cls(folder=folder, max_num_timeout=max_num_timeout)


def slurm_parameters(res: dict, job_name: str, **overrides) -> dict:
    """submitit SlurmExecutor parameters from ``resources.slurm`` (``overrides`` win)."""
    s = res["slurm"]
    exports = [f"export {k}={shlex.quote(str(v))}" for k, v in (s.get("env") or {}).items() if v is not None]
    params = dict(job_name=job_name, time=s["timeout_min"], cpus_per_task=s["cpus_per_task"], mem=f"{s['mem_gb']}G",
                  setup=exports + list(s["setup"]), additional_parameters=dict(s["additional"]))
    params.update({key: s[key] for key in ("partition", "account", "qos", "constraint") if s[key]})
    params.update(overrides)
    return params


class _NoSacctNoise:
    """Clusters without accounting make submitit warn on every status poll; the runner falls back
    on squeue for those, so the warning says nothing new."""

    def filter(self, record) -> bool:
        return "sacct" not in record.getMessage()


def _quiet_sacct() -> None:
    import logging

    logger = logging.getLogger("submitit")
    if not any(isinstance(f, _NoSacctNoise) for f in logger.filters):
        logger.addFilter(_NoSacctNoise())
    for handler in logger.handlers:
        if not any(isinstance(f, _NoSacctNoise) for f in handler.filters):
            handler.addFilter(_NoSacctNoise())
