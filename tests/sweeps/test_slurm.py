"""A real one-node SLURM cluster (scripts/slurm_local.sh; .ci/run starts it and sets
TRH_REQUIRE_SLURM=1 so that these tests cannot silently skip there)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from .helpers import finish, metrics, statuses, trh


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and bool(re.search(r"idle|mixed|alloc", out.stdout))


if not _slurm_up():
    if os.environ.get("TRH_REQUIRE_SLURM"):
        raise RuntimeError("TRH_REQUIRE_SLURM is set but no SLURM node is up (run scripts/slurm_local.sh)")
    pytest.skip("no SLURM cluster here (scripts/slurm_local.sh starts one)", allow_module_level=True)


def test_smoke_sweep_on_slurm_equals_local(tmp_path):
    slurm_root, local_root = tmp_path / "slurm", tmp_path / "local"
    out = finish(trh("sweep", "smoke", "--executor", "slurm", "--results", slurm_root, "--no-progress",
                     "slurm.mem_gb=2", "slurm.timeout_min=20"))
    assert "4 run now" in out
    finish(trh("sweep", "smoke", "--workers", "2", "--results", local_root, "--no-progress"))
    on_slurm, on_local = statuses(slurm_root), statuses(local_root)
    assert sorted(on_slurm) == sorted(on_local) and len(on_slurm) == 4
    for name, status in on_slurm.items():
        assert status["state"] == "done"
        job = status["job"]
        assert job["executor"] == "slurm" and re.fullmatch(r"\d+(_\d+)?", job["job_id"]), job
        assert (slurm_root / "sweeps" / "smoke" / "submitit" / job["job_id"]).is_dir()
        assert on_local[name]["job"]["executor"] == "local"
        assert metrics(slurm_root / "runs" / name) == metrics(local_root / "runs" / name)
        assert status["best_headline"] == on_local[name]["best_headline"]


def test_hydra_native_submitit_slurm_launcher(tmp_path):
    cmd = [sys.executable, "-m", "harness.train", "-m", "hydra/launcher=submitit_slurm", "setting=smoke",
           "method=grpo,cppo", f"results_root={tmp_path}/runs", "logging=quiet", f"hydra.sweep.dir={tmp_path}/multirun",
           "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=20"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    final = statuses(tmp_path)
    assert sorted(n.split("-")[1] for n in final) == ["cppo", "grpo"]
    assert all(v["state"] == "done" for v in final.values())


def test_multi_process_trl_cell_through_slurm_and_accelerate(tmp_path):
    """A cell asking for 2 processes: one submitit job whose node task runs `accelerate launch`
    (gloo on CPU here, NCCL/DeepSpeed on GPUs); rank 0 writes the run folder, rank 1 trains along."""
    wide = ["engine.num_processes=2", "engine.launch.gpus_per_node=2", "engine.launch.device=cpu", "engine.threads=1"]
    out = finish(trh("sweep", "lm_smoke", "method=cppo", "seed=0", *wide, "--executor", "slurm", "--results", tmp_path,
                     "--no-progress", "slurm.mem_gb=4", "slurm.timeout_min=20"))
    assert "1 run now" in out
    (name, status), = statuses(tmp_path).items()
    assert status["state"] == "done" and status["engine"] == "trl" and status["step"] == 4
    rows = metrics(tmp_path / "runs" / name)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]  # written once (rank 0 only)
    launch = tmp_path / "runs" / name / "launch"
    assert "MULTI_CPU" in (launch / "accelerate.yaml").read_text()
