"""The SLURM multi-GPU launch generated from config (printed by --dry-run; nothing submitted)."""

from pathlib import Path

import pytest
import yaml

from sweeps.cli import main
from sweeps.launch import accelerate_config


def test_dry_run_prints_the_30b_launch_without_submitting(tmp_path, capsys):
    code = main(["sweep", "paper_main", "setting=qwen3_30b_a3b_base", "method=cppo", "seed=0", "--executor", "slurm",
                 "--dry-run", "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "1 cell(s); nothing submitted" in out
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1", "#SBATCH --time=2880"):
        assert line in out
    assert "-m accelerate.commands.launch --config_file" in out and "--machine_rank $SLURM_NODEID" in out
    config = yaml.safe_load(out.split("### accelerate.yaml:")[1])
    assert config["num_machines"] == 4 and config["num_processes"] == 32
    assert config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == 3
    assert not any(tmp_path.rglob("*"))  # nothing written, nothing submitted


def test_dry_run_says_what_a_cluster_user_must_set_and_uses_absolute_paths(tmp_path, capsys, monkeypatch):
    """Run from a relative results root, as a user types it: every path in the jobs is absolute; unset
    partition/account and an empty setup are named; the NCCL environment is exported in the script."""
    monkeypatch.chdir(tmp_path)
    code = main(["sweep", "paper_main", "setting=qwen3_8b_base", "method=cppo", "seed=0", "--executor", "slurm",
                 "--dry-run", "--results", "results"])
    out = capsys.readouterr().out
    assert code == 0
    assert "# unset: slurm.partition, slurm.account, slurm.qos" in out and "# slurm.setup is empty" in out
    assert "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in out and "export NCCL_DEBUG=WARN" in out
    root = str(tmp_path / "results")
    launch = next(line for line in out.splitlines() if "accelerate.commands.launch" in line)
    assert f"--config_file {root}/runs/" in launch and f"sweeps.launch {root}/runs/" in launch
    assert f"→  {root}/runs/qwen3_8b_base-cppo-s0-" in out
    main(["sweep", "paper_main", "setting=qwen3_8b_base", "method=cppo", "seed=0", "--executor", "slurm", "--dry-run",
          "slurm.partition=gpu", "slurm.account=lab", "slurm.qos=normal", "slurm.setup=[\"source /opt/venv/bin/activate\"]"])
    out = capsys.readouterr().out
    assert "# unset" not in out and "# setup, run before each job: source /opt/venv/bin/activate" in out
    assert "#SBATCH --partition=gpu" in out and "#SBATCH --account=lab" in out


def test_dry_run_needs_no_slurm_tools(tmp_path, capsys, monkeypatch):
    """A laptop preparing jobs: srun/sbatch/scontrol are not on PATH, and --dry-run still prints both
    kinds of submission (a multi-node launch and a plain array task) without a traceback."""
    import shutil

    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    assert shutil.which("srun") is None and shutil.which("sbatch") is None
    for setting in ("qwen3_30b_a3b_base", "base_s"):
        code = main(["sweep", "paper_main", f"setting={setting}", "method=cppo", "seed=0", "--executor", "slurm",
                     "--dry-run", "--results", str(tmp_path / "results")])
        out = capsys.readouterr().out
        assert code == 0 and "nothing submitted" in out and "#SBATCH --job-name=trh-" in out, out[-2000:]
    assert not (tmp_path / "results").exists()


def fake_slurm(folder: Path, sbatch_error: str) -> Path:
    """A SLURM whose controller answers but whose sbatch refuses every job with ``sbatch_error``."""
    folder.mkdir(parents=True)
    scripts = {"scontrol": 'echo "Slurmctld(primary) at localhost is UP"', "srun": "exit 0", "squeue": "exit 0",
               "sacct": "exit 0", "sbatch": f'echo "{sbatch_error}" >&2; exit 1'}
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


@pytest.mark.parametrize("missing", [False, True])
def test_a_refused_submission_is_one_line(tmp_path, capsys, monkeypatch, missing):
    """sbatch's own error (or a missing SLURM) reaches the user as one line naming it, not a traceback,
    and nothing is left marked as running."""
    error = "sbatch: error: Batch job submission failed: Invalid partition name specified"
    bin_dir = fake_slurm(tmp_path / "bin", error)
    if missing:
        (bin_dir / "srun").unlink()
    monkeypatch.setenv("PATH", str(bin_dir))
    code = main(["sweep", "smoke", "method=grpo", "seed=0", "--executor", "slurm", "--results", str(tmp_path / "r"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("trh sweep: --executor slurm: "), err
    if missing:
        assert "srun not on PATH" in err
    else:
        assert "submitting 1 cell(s) failed: " + error in err and "rerun the same command" in err
        assert not list((tmp_path / "r").rglob("status.json"))


def test_paper_settings_express_table_3(tmp_path, capsys):
    from harness.config import compose, resolve

    expected = {"qwen3_1p7b": (64, 8, 2, 8192, 0.15, "fixed", 0.015, 1120),
                "qwen3_1p7b_base": (64, 8, 2, 8192, 0.15, "dynamic", 0.02, 680),
                "qwen3_8b_base": (128, 8, 4, 8192, 0.15, "dynamic", 0.02, 490),
                "qwen3_30b_a3b_base": (256, 16, 8, 16384, 0.20, "dynamic", 0.02, 560)}
    for setting, (prompts, n, updates, t_max, delta, budget, delta_b, t_stop) in expected.items():
        spec = resolve(compose([f"setting={setting}", "method=cppo"]))
        rl, s = spec.rl, spec.setting
        assert (rl.prompts_per_iter, rl.samples_per_prompt, rl.updates_per_iter, rl.max_response_tokens) == \
            (prompts, n, updates, t_max)
        assert rl.minibatch_prompts == 32 and rl.lr == 1e-6 and rl.temperature == 1.0
        assert (s.delta, s.budget, s.delta_b, s.w_min, spec.t_stop) == (delta, budget, delta_b, 0.8, t_stop)
        assert spec.method_params["delta"] == delta and spec.engine.name == "trl"
        assert (spec.eval.samples, spec.eval.temperature, spec.eval.top_p) == (16, 0.7, 0.95)


def test_local_executor_refuses_multi_gpu_cells(capsys):
    code = main(["sweep", "paper_main", "setting=qwen3_8b_base", "method=cppo", "seed=0", "--executor", "local"])
    assert code == 2 and "--executor slurm" in capsys.readouterr().err


def test_ddp_config_without_deepspeed():
    from harness.runconfig import Launch
    cfg = accelerate_config(Launch(nodes=1, gpus_per_node=8, deepspeed_zero_stage=None))
    assert cfg["distributed_type"] == "MULTI_GPU" and cfg["num_processes"] == 8 and "deepspeed_config" not in cfg
