"""Multi-GPU, multi-node launch of ``engine=trl`` cells on SLURM, generated from the run config.

A cell whose ``engine.launch`` asks for more than one GPU becomes one submitit job with
``nodes`` × 1 task; on each node the task runs ``accelerate launch`` with ``gpus_per_node``
processes (DDP, or DeepSpeed ZeRO-2/3 from ``deepspeed_zero_stage``), node rank from SLURM and the
first node as the rendezvous host. The processes run ``python -m sweeps.launch CONFIG`` →
``harness.train.run``; rank 0 owns the run folder. ``plan(cell, resources)`` builds everything
without submitting; ``trh sweep ... --executor slurm --dry-run`` prints it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit

from harness.runconfig import Launch, TrlEngine
from harness.schema import build
from harness.store import FINISHED, RunStore


def launch_of(config: dict) -> Launch | None:
    """The cell's typed ``engine.launch`` when it needs more than one process, else None."""
    engine = config.get("engine", {})
    if engine.get("name") != "trl":
        return None
    launch = build(TrlEngine, engine, "engine").launch
    return launch if launch.nodes * launch.gpus_per_node > 1 else None


def accelerate_config(launch: Launch) -> dict:
    """accelerate's config file content (``accelerate launch --config_file``)."""
    nodes, gpus = launch.nodes, launch.gpus_per_node
    cfg = {"compute_environment": "LOCAL_MACHINE", "num_machines": nodes, "num_processes": nodes * gpus,
           "mixed_precision": launch.mixed_precision, "main_process_port": launch.main_port,
           "rdzv_backend": "static", "same_network": True, "use_cpu": False}
    stage = launch.deepspeed_zero_stage
    if launch.device == "cpu":  # processes without GPUs (gloo): tests and CPU-only clusters
        cfg.update(distributed_type="MULTI_CPU", use_cpu=True, mixed_precision="no")
    elif stage:
        cfg["distributed_type"] = "DEEPSPEED"
        cfg["deepspeed_config"] = {
            "zero_stage": stage, "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "offload_optimizer_device": "cpu" if launch.offload_optimizer else "none",
            "offload_param_device": "none", "zero3_init_flag": stage == 3, "zero3_save_16bit_model": stage == 3,
            "deepspeed_multinode_launcher": "standard"}
    else:
        cfg["distributed_type"] = "MULTI_GPU"
    return cfg


def accelerate_command(config_file: str, run_config: str, node_rank: str = "$SLURM_NODEID",
                       main_ip: str = "$MAIN_IP") -> list[str]:
    # accelerate's launcher through this interpreter: the job's PATH need not hold the venv's scripts
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file, "--machine_rank", node_rank,
            "--main_process_ip", main_ip, "-m", "sweeps.launch", run_config]


@dataclass
class LaunchPlan:
    sbatch: str                 # the script submitit submits
    command: list[str]          # what each node's task runs (node rank and rendezvous host from SLURM)
    accelerate_config: dict
    run_config: Path            # the cell's config, written next to its run folder at submit time

    def text(self, cell_name: str) -> str:
        import yaml

        return "\n".join([
            f"### {cell_name}: sbatch script (submitit)", self.sbatch.rstrip(), "",
            "### on each node, the submitit task (sweeps.launch.LaunchJob) runs, with the node rank and the first",
            "### node's host name ($MAIN_IP) taken from submitit's JobEnvironment:",
            " ".join(shlex.quote(c) if not c.startswith("$") else c for c in self.command), "",
            f"### {Path(self.command[self.command.index('--config_file') + 1]).name}:", yaml.safe_dump(self.accelerate_config, sort_keys=False).rstrip(), ""])


def slurm_parameters(res: dict, launch: Launch, job_name: str) -> dict:
    """The sweep's SLURM resources, with the node geometry of ``engine.launch``: one task per node."""
    from .executors import slurm_parameters as base

    s, gpus = res["slurm"], launch.gpus_per_node
    if launch.device == "cpu":
        geometry = dict(cpus_per_task=gpus)
    else:
        geometry = dict(cpus_per_task=max(s["cpus_per_task"], 8 * gpus), mem="0", gpus_per_node=gpus)
    return base(res, job_name, time=max(s["timeout_min"], launch.timeout_min), nodes=launch.nodes,
                ntasks_per_node=1, **geometry)


def multi_gpu_executor(folder: Path, res: dict, launch: Launch, job_name: str, print_only: bool = False):
    from .executors import slurm_executor

    executor = slurm_executor(Path(folder) / "%j", res["slurm"]["max_num_timeout"], print_only=print_only)
    executor.update_parameters(**slurm_parameters(res, launch, job_name))
    return executor


def plan(cell, res: dict, folder: Path, job_name: str = "trh") -> LaunchPlan | None:
    launch = launch_of(cell.config)
    if launch is None:
        return None
    executor = multi_gpu_executor(folder, res, launch, job_name, print_only=True)  # prints, never submits
    accelerate_file, config_file = RunStore(cell.run_dir).launch_files
    return LaunchPlan(sbatch=executor._make_submission_file_text(executor._submitit_command_str, "dry-run"),
                      command=accelerate_command(str(accelerate_file), str(config_file)),
                      accelerate_config=accelerate_config(launch), run_config=config_file)


def write_launch_files(cell) -> None:
    """The cell's config and accelerate config in its run folder, read by every node."""
    RunStore(cell.run_dir).write_launch_files(cell.config, accelerate_config(launch_of(cell.config)))


class LaunchJob(submitit.helpers.Checkpointable):
    """One node's share of a multi-GPU cell: ``accelerate launch`` its GPUs, then report the status
    that rank 0 wrote (a requeue after a timeout resumes from the TRL checkpoint)."""

    def __call__(self, run_dir: str, executor: str, require_clean: bool = False) -> dict:
        from .preregistration import refused

        refusal = refused(require_clean)
        if refusal:
            return refusal
        env = submitit.JobEnvironment()
        store = RunStore(run_dir)
        accelerate_file, config_file = store.launch_files
        command = accelerate_command(str(accelerate_file), str(config_file),
                                     node_rank=str(env.node), main_ip=env.hostnames[0])
        proc = subprocess.run(command)
        status = store.read_status() or {}
        if proc.returncode != 0 and status.get("state") not in (*FINISHED, "failed"):
            return {"state": "failed", "reason": f"accelerate launch exited with {proc.returncode} on node {env.node}"}
        return status


def main(argv=None) -> None:
    """Entry point of each accelerate process: ``python -m sweeps.launch CONFIG.json``."""
    from omegaconf import OmegaConf

    from harness.lifecycle import summary_line
    from harness.train import run

    path = (argv or sys.argv[1:])[0]
    status = run(OmegaConf.create(json.loads(Path(path).read_text())))
    print(summary_line(status) if "state" in status and "t_stop" in status else status)


if __name__ == "__main__":
    main()
