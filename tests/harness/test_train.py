"""End-to-end runs on the tiny smoke setting: verdicts, records, determinism, resume, bad input."""

import pytest
import torch

from harness.runconfig import Collapse
from harness.tasks import make_task
from harness.tasks.addition import ALPHABET as ADDITION
from harness import lifecycle
from harness import train as train_mod
from harness.engines import local as local_engine
from harness.config import ConfigError, compose
from harness.store import RunStore

SMOKE = ["setting=smoke", "logging=quiet", "engine.threads=1"]


def run(tmp_path, *overrides, name="run"):
    cfg = compose(SMOKE + [f"run_dir={tmp_path / name}", *overrides])
    return train_mod.run(cfg), RunStore(tmp_path / name)


def strip_times(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def test_smoke_run_records_a_verdict_metrics_and_diagnostics(tmp_path):
    status, store = run(tmp_path)
    assert status["state"] == "done" and status["step"] == 4
    rows = store.read_metrics()
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert {"val_a", "val_b", "val_c", "headline"} <= set(rows[0])
    assert rows[2]["headline"] == pytest.approx((rows[2]["val_a"] + rows[2]["val_b"] + rows[2]["val_c"]) / 3)
    trained = [r for r in rows[1:] if r["updates"] > 0]
    assert trained, "the smoke warm-up must give groups with reward variance"
    for key in ("mask_fraction", "budget_mask_share", "mismatch_abs_logp", "entropy", "grad_norm", "delta_b_mean"):
        assert key in trained[0]
    best = max((r for r in rows if "headline" in r), key=lambda r: (r["headline"], -r["step"]))
    assert status["best_headline"] == best["headline"] and status["best_step"] == best["step"]
    diag = store.read_diagnostics()
    assert diag and len(diag[0]["mean_dev"]) == 8
    assert not store.checkpoint_path.exists()
    assert (store.dir / "config.yaml").exists()


def test_held_out_test_splits_are_scored_once_at_the_validation_choice(tmp_path, monkeypatch):
    scored = []
    real = local_engine.held_out
    monkeypatch.setattr(local_engine, "held_out", lambda *a: scored.append(a[-1]) or real(*a))
    status, store = run(tmp_path)
    held = status["held_out"]
    assert scored == [status["best_step"]] == [held["step"]]  # once, on the chosen step's weights
    assert held["test_headline"] == pytest.approx((held["test_a"] + held["test_b"] + held["test_c"]) / 3)
    assert 0 <= held["greedy_accuracy"] <= 1
    assert not any(k.startswith("test_") for r in store.read_metrics() for k in r)  # never in the rows that choose
    assert not list(store.dir.glob("best-*.pt"))  # the kept weights go with the verdict
    prov = status["provenance"]
    assert set(prov) >= {"commit", "dirty", "torch", "transformers", "trl", "numpy", "cpu"}
    assert prov["torch"].startswith(torch.__version__.split("+")[0])


def test_held_out_weights_are_those_of_the_chosen_step(tmp_path):
    """Scoring the kept weights again reproduces the recorded held-out score exactly."""
    from harness.config import resolve
    from harness.evaluation import held_out
    from harness.model import CharTokenizer, build_model
    from harness.tasks import addition as tasks

    kept = {}
    real_remove = RunStore.remove_best_weights

    def keep(self, after_step=-1):
        kept.update({s: torch.load(p) for s, p in self._best_paths().items()})
        real_remove(self, after_step)

    RunStore.remove_best_weights = keep
    try:
        status, _ = run(tmp_path)
    finally:
        RunStore.remove_best_weights = real_remove
    spec = resolve(compose(SMOKE + [f"run_dir={tmp_path / 'run'}"]))
    model = build_model(spec.model, CharTokenizer(ADDITION).vocab_size, tasks.max_positions(2), seed=0)
    model.load_state_dict(kept[status["best_step"]])
    recorded = {k: v for k, v in status["held_out"].items() if k != "time_eval"}
    assert held_out(model, CharTokenizer(ADDITION), make_task(spec.task), spec, status["best_step"]) == recorded


def test_every_method_at_a_seed_shares_warm_start_problems_and_evaluation_noise(tmp_path, monkeypatch):
    """What makes seeds pair across methods: the same warm start, the same training-problem stream, and
    (common random numbers) the same evaluation problems and noise — so the step-0 rows agree exactly."""
    from harness.tasks import addition as tasks

    drawn = {}
    real = tasks.sample_problems
    for method in ("grpo", "cppo"):
        calls = drawn.setdefault(method, [])
        monkeypatch.setattr(tasks, "sample_problems", lambda *a, _c=calls, **k: _c.append((a, k)) or real(*a, **k))
        status, store = run(tmp_path, f"method={method}", name=method)
        drawn[method + "_status"], drawn[method + "_rows"] = status, store.read_metrics()
    batches = {m: [c for c in drawn[m] if c[0][:2] == ("train", 4)] for m in ("grpo", "cppo")}  # (not the warm-up's)
    assert batches["grpo"] == batches["cppo"] and len(batches["grpo"]) == 4  # one batch of 4 prompts per step
    assert drawn["grpo_status"]["warmup"] == drawn["cppo_status"]["warmup"]
    first = lambda rows: {k: v for k, v in rows[0].items() if not k.startswith("time_")}  # noqa: E731
    assert first(drawn["grpo_rows"]) == first(drawn["cppo_rows"])


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    _, a = run(tmp_path, name="a")
    _, b = run(tmp_path, name="b")
    assert strip_times(a.read_metrics()) == strip_times(b.read_metrics())
    _, c = run(tmp_path, "seed=1", name="c")
    assert strip_times(a.read_metrics()) != strip_times(c.read_metrics())


def test_a_finished_run_is_not_rerun(tmp_path):
    status, store = run(tmp_path)
    before = (store.dir / "metrics.jsonl").read_text()
    again, _ = run(tmp_path)
    assert again == {**status, "skipped": True}  # the stored verdict, marked as not trained now
    assert (store.dir / "metrics.jsonl").read_text() == before


def test_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    _, reference = run(tmp_path, name="reference")
    real_evaluate = local_engine.evaluate

    def crash_at_step_3(model, tokenizer, task, spec, step):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_evaluate(model, tokenizer, task, spec, step)

    monkeypatch.setattr(local_engine, "evaluate", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "eval.every=3", "engine.checkpoint_every=2", name="resumed")
    monkeypatch.setattr(local_engine, "evaluate", real_evaluate)
    store = RunStore(tmp_path / "resumed")
    assert store.checkpoint_path.exists()
    crashed = store.read_status()
    assert crashed["state"] in ("running", "failed")
    status, _ = run(tmp_path, "eval.every=3", "engine.checkpoint_every=2", name="resumed")
    assert status["state"] == "done"
    # the first start's time survives the crash and the resume; the code is logged at each of the two starts
    assert status["started_at"] == crashed["started_at"] and status["started_at"] <= status["code_log"][-1]["at"]
    assert [entry["step"] for entry in status["code_log"]] == [0, 2]
    assert all(set(entry) == {"step", "at", "commit", "dirty"} for entry in status["code_log"])
    _, uninterrupted = run(tmp_path, "eval.every=3", "engine.checkpoint_every=2", name="uninterrupted")
    assert strip_times(store.read_metrics()) == strip_times(uninterrupted.read_metrics())
    assert [r["step"] for r in store.read_metrics()] == [0, 1, 2, 3, 4]


def test_collapse_is_a_recorded_result_not_a_crash(tmp_path):
    # a floor above every possible headline: the first evaluation after a "peak" of ≥ 0 is a collapse
    status, store = run(tmp_path, "collapse.peak_at_least=0", "collapse.floor=1.0")
    assert status["state"] == "collapsed" and status["collapse_step"] == 2
    assert store.read_status()["state"] == "collapsed"
    assert store.read_metrics()[-1]["step"] == 2


def test_non_finite_parameters_are_a_collapse(tmp_path):
    status, _ = run(tmp_path, "method=pg_is", "rl.lr=1e30")
    assert status["state"] == "collapsed" and "non-finite" in status["reason"]


@pytest.mark.parametrize("override, message", [
    ("setting.steps=2", "setting.steps"),
    ("model.hidden=30", "model.hidden"),
    ("rl.samples_per_prompt=1", "samples_per_prompt"),
    ("method.delta=-1", "delta"),
    ("eval.top_p=1.5", "eval.top_p"),
    ("engine.fused_loss=yes", "engine.fused_loss"),
    ("warmup.shards=0", "warmup.shards"),
])
def test_bad_config_values_name_the_key(tmp_path, override, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        run(tmp_path, override)


def test_fused_loss_is_refused_with_zero3():
    from harness.config import resolve

    cfg = compose(["setting=smollm2_smoke", "engine.launch.deepspeed_zero_stage=3"])
    with pytest.raises(ConfigError, match="engine.fused_loss must be false"):
        resolve(cfg)
    resolve(compose(["setting=smollm2_smoke", "engine.launch.deepspeed_zero_stage=3", "engine.fused_loss=false"]))


def test_unknown_setting_or_method_lists_the_options(tmp_path):
    with pytest.raises(ConfigError, match=r"^setting=nope: no such setting; known: .*base_s"):
        compose(["setting=nope"])
    with pytest.raises(ConfigError, match=r"^method=nope: no such method; known: .*cppo"):
        compose(["method=nope"])
    with pytest.raises(ConfigError, match=r"^engine=vllm: no such engine; known: local, trl"):
        compose(["engine=vllm"])


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    store = RunStore(tmp_path / "run")
    store.dir.mkdir(parents=True)
    store.checkpoint_path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupted"):
        run(tmp_path)
    assert store.read_status()["state"] == "failed"
    assert not store.is_finished()


def test_trh_train_command(tmp_path, capsys):
    from sweeps.cli import main
    assert main(["train", *SMOKE, f"run_dir={tmp_path / 'cli'}"]) == 0
    out = capsys.readouterr().out
    assert "best headline within [0, 4]" in out and "verdict: done" in out
    assert main(["train", "setting=nope"]) == 2


def test_wandb_offline_run_in_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    status, store = run(tmp_path, "logging.wandb=true")
    assert status["state"] == "done"
    runs = list((store.dir / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())


@pytest.mark.parametrize("override", ["engine.mismatch.logit_noise=0.5", "engine.mismatch.bf16_rollout=true",
                                      "engine.mismatch.lag=2"])
def test_simulated_rollout_mismatch_moves_mu_away_from_the_trainer(tmp_path, override):
    """At a step's first update π has the trainer's current weights, so |log π − log μ| there is the
    engine mismatch alone: rounding (≈ 1e-7) without simulation, clearly more with it (measured:
    ≥ 1.3e-3 on every step with updates after the lag has filled)."""
    common = ["setting.steps=4", "setting.t_stop=4", "rl.prompts_per_iter=8"]
    _, clean = run(tmp_path, *common, name="clean")
    status, noisy = run(tmp_path, *common, override, name="noisy")
    assert status["state"] == "done"
    first = 2 if "lag" in override else 1  # lagging weights differ from the trainer's only after updates
    at = lambda store: [r["engine_mismatch_abs_logp"] for r in store.read_metrics()  # noqa: E731
                        if r["step"] >= first and r.get("updates")]
    assert at(clean) and max(at(clean)) < 1e-5
    assert at(noisy) and min(at(noisy)) > 1e-4


def test_unknown_override_is_a_clear_error(capsys):
    from sweeps.cli import main
    assert main(["train", "setting=smoke", "nosuchkey.value=1"]) == 2
    assert "nosuchkey" in capsys.readouterr().err


def test_a_run_folder_in_use_is_refused_without_touching_it(tmp_path):
    from harness.store import RunInUse
    store = RunStore(tmp_path / "run")
    with store.exclusive():
        with pytest.raises(RunInUse, match="in use"):
            run(tmp_path)
    assert store.read_status() is None and not (store.dir / "metrics.jsonl").exists()


@pytest.mark.parametrize("headline, peak, collapsed", [
    (0.05, 0.6, True),     # below 10% of the peak
    (0.07, 0.6, False),    # above it
    (0.02, 0.15, True),    # below the absolute floor
    (0.0, 0.05, False),    # never had a real peak: not a collapse, just no learning
    (0.06, 0.6, True),     # ties count
])
def test_collapse_rule_is_relative_to_the_peak(headline, peak, collapsed):
    rule = Collapse(peak_at_least=0.1, floor=0.02, floor_fraction=0.1)
    assert bool(lifecycle.headline_collapse(headline, peak, rule)) == collapsed


def test_a_run_folder_of_another_config_is_not_overwritten(tmp_path):
    status, store = run(tmp_path)
    before = (store.dir / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="another config"):
        run(tmp_path, "seed=5")
    assert (store.dir / "metrics.jsonl").read_text() == before and store.read_status() == status


def test_hydra_multirun(tmp_path):
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-m", "harness.train", "-m", "method=grpo,dppo", *SMOKE,
                          f"results_root={tmp_path / 'runs'}"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    folders = sorted(p.name.split("-")[1] for p in (tmp_path / "runs").iterdir())
    assert folders == ["dppo", "grpo"]
    for folder in (tmp_path / "runs").iterdir():
        assert RunStore(folder).read_status()["state"] == "done"


def test_fast_defaults_train_like_the_plain_path(tmp_path):
    """The defaults (one prompt pass per group, π from the hidden states tile by tile) give the first
    update of step 1 the loss and masks of the plain path (full forward, materialised logits) up to
    rounding; the plain path's id is the one it had before these options existed."""
    from harness.config import id_dict, resolve

    one_step = ["setting.steps=1", "setting.t_stop=1", "rl.prompts_per_iter=8"]  # 8 prompts: some groups vary
    plain_options = ["engine.share_prompt_prefix=false", "engine.fused_loss=false"]
    default, plain = (compose(SMOKE + [f"run_dir={tmp_path / n}", *one_step, *o])
                      for n, o in (("a", []), ("b", plain_options)))
    plain_spec = resolve(plain)
    hashed = id_dict(plain_spec.resolved)["engine"]  # at false, the id of the plain path is the one it had
    assert "share_prompt_prefix" not in hashed and "fused_loss" not in hashed  # before the options existed
    assert resolve(default).config_hash != plain_spec.config_hash
    train_mod.run(default), train_mod.run(plain)
    a, b = RunStore(tmp_path / "a").read_metrics()[1], RunStore(tmp_path / "b").read_metrics()[1]
    assert a["updates"] == b["updates"] > 0
    for key in ("policy_loss", "mask_fraction", "ratio_mean", "divergence_mean", "train_reward", "entropy"):
        assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), key


def test_on_smoke_bind_the_trust_region_binds_and_methods_differ(tmp_path):
    """The tiny setting where mechanisms can be told apart in seconds: CPPO masks a few percent of
    tokens, pg_is none, and their validation curves differ (their best scores may tie: on some CPUs both
    peak at the shared warm start)."""
    out = {}
    for method in ("pg_is", "cppo"):
        train_mod.run(compose(["setting=smoke_bind", f"method={method}", f"run_dir={tmp_path / method}",
                               "logging=quiet", "engine.threads=1"]))
        rows = RunStore(tmp_path / method).read_metrics()[1:]
        out[method] = ([r["headline"] for r in rows if "headline" in r],
                       max(r["mask_fraction"] for r in rows if r["mask_fraction"] == r["mask_fraction"]))
    assert out["pg_is"][1] == 0.0 and 0.01 < out["cppo"][1] < 0.5
    assert out["pg_is"][0] != out["cppo"][0]


def test_warmup_shards_give_the_same_gradient_in_parallel_or_in_turn():
    """The warm-up's gradient is summed over fixed row slices in slice order, so running the slices on
    a thread pool (several cores) or one after another (one core) gives the same bits; and the sum
    is the whole batch's gradient up to rounding."""
    from concurrent.futures import ThreadPoolExecutor

    from harness.tasks import addition as tasks
    from harness.model import CharTokenizer, ModelSize, build_model
    from harness.warmup import _sft_batch, _sharded_gradient

    tok = CharTokenizer(ADDITION)
    model = build_model(ModelSize(32, 2, 64, 2, 1), tok.vocab_size, tasks.max_positions(2), seed=0)
    params = list(model.parameters())
    batch = _sft_batch(tok, make_task(tasks.AdditionConfig(digits=2)), tasks.sample_problems("train", 12, 2, seed=0))
    results = []
    with ThreadPoolExecutor(3) as pool:
        for shards, executor in ((3, pool), (3, None), (1, None)):
            loss = _sharded_gradient(model, params, *batch, shards, executor)
            results.append((loss, [p.grad.clone() for p in params]))
    (loss_a, grads_a), (loss_b, grads_b), (loss_c, grads_c) = results
    assert torch.equal(loss_a, loss_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    torch.testing.assert_close(loss_a, loss_c)
    for a, c in zip(grads_a, grads_c):
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5)
