"""The SLURM multi-GPU launch generated from config (printed by --dry-run; nothing submitted)."""

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
    assert "accelerate launch --config_file" in out and "--machine_rank $SLURM_NODEID" in out
    config = yaml.safe_load(out.split("### accelerate.yaml:")[1])
    assert config["num_machines"] == 4 and config["num_processes"] == 32
    assert config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == 3
    assert not any(tmp_path.rglob("*"))  # nothing written, nothing submitted


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


def test_paper_settings_express_table_3(tmp_path, capsys):
    from harness.config import compose, resolve

    expected = {"qwen3_1p7b": (64, 8, 2, 8192, 0.15, "fixed", 0.015, 1120),
                "qwen3_1p7b_base": (64, 8, 2, 8192, 0.15, "dynamic", 0.02, 680),
                "qwen3_8b_base": (128, 8, 4, 8192, 0.15, "dynamic", 0.02, 490),
                "qwen3_30b_a3b_base": (256, 16, 8, 16384, 0.20, "dynamic", 0.02, 560)}
    for setting, (prompts, n, updates, t_max, delta, budget, delta_b, t_stop) in expected.items():
        spec = resolve(compose([f"setting={setting}", "method=cppo"]))
        rl, s = spec.rl, spec.resolved["setting"]
        assert (rl["prompts_per_iter"], rl["samples_per_prompt"], rl["updates_per_iter"], rl["max_response_tokens"]) == \
            (prompts, n, updates, t_max)
        assert rl["minibatch_prompts"] == 32 and rl["lr"] == 1e-6 and rl["temperature"] == 1.0
        assert (s["delta"], s["budget"], s["delta_b"], s["w_min"], spec.t_stop) == (delta, budget, delta_b, 0.8, t_stop)
        assert spec.method_params["delta"] == delta and spec.engine["name"] == "trl"
        assert (spec.eval["samples"], spec.eval["temperature"], spec.eval["top_p"]) == (16, 0.7, 0.95)


def test_local_executor_refuses_multi_gpu_cells(capsys):
    code = main(["sweep", "paper_main", "setting=qwen3_8b_base", "method=cppo", "seed=0", "--executor", "local"])
    assert code == 2 and "--executor slurm" in capsys.readouterr().err


def test_ddp_config_without_deepspeed():
    cfg = accelerate_config({"nodes": 1, "gpus_per_node": 8, "deepspeed_zero_stage": None})
    assert cfg["distributed_type"] == "MULTI_GPU" and cfg["num_processes"] == 8 and "deepspeed_config" not in cfg
