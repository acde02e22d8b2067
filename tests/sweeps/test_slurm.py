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
