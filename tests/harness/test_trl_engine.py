"""engine=trl: TRL's GRPOTrainer with the registry loss, on a tiny random Qwen3 built in code."""

import inspect
import json
import math
import os

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import trl  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

from harness.lm import load_lm  # noqa: E402
from harness.rollout import positions, response_logits, sample  # noqa: E402
from harness.engines.trl_trainer import PINNED_TRL, TRL_INTERNALS  # noqa: E402
from methods import LossTotals, PolicyBatch, policy_logprobs_from_logits  # noqa: E402

from .trl_helpers import HORIZON, TINY, make_trainer  # noqa: E402

pytestmark = pytest.mark.xdist_group("trl")

SEVEN = ["grpo", "minpro", "cispo", "dppo", "trm_max", "trm_avg", "cppo"]


def test_pinned_trl_internals_are_unchanged():
    """The engine overrides these TRL internals; a TRL upgrade that changes them must fail here."""
    assert trl.__version__ == PINNED_TRL, (
        f"harness/engines/trl_trainer.py is written against TRL {PINNED_TRL}, found {trl.__version__}: re-check the "
        "overridden internals (TRL_INTERNALS), then update PINNED_TRL")
    for name, leading in TRL_INTERNALS.items():
        fn = getattr(GRPOTrainer, name, None)
        assert fn is not None, f"GRPOTrainer.{name} no longer exists"
        params = tuple(inspect.signature(fn).parameters)[:len(leading)]
        assert params == leading, f"GRPOTrainer.{name}{params} changed (expected {leading})"
    assert "rollout_func" in inspect.signature(GRPOTrainer.__init__).parameters
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    # the old-log-prob recompute the engine skips, and the route of rollout log-probs to the batch
    assert "old_per_token_logps, _, _ = self._get_per_token_logps_and_entropies(" in source
    assert 'output["sampling_per_token_logps"] = sampling_per_token_logps' in source
    assert GRPOTrainer.loss_is_scaled_for_ga is True
    # step totals: a generation is split into steps_per_generation micro-batches fed in order by _step
    prepare = inspect.getsource(GRPOTrainer._prepare_inputs)
    assert "split_tensor_dict(generation_batch, self.args.steps_per_generation)" in prepare
    assert "self._buffered_inputs[self._step % self.args.steps_per_generation]" in prepare
    # the MoE auxiliary loss the engine adds as TRL does
    assert "self.router_aux_loss_coef * aux_loss / normalizer" in inspect.getsource(GRPOTrainer._compute_loss)
    # the vLLM path: logprobs=K is read at generate time and token ids come back with the log-probs
    from trl.generation.vllm_generation import VLLMGeneration
    assert tuple(inspect.signature(VLLMGeneration.generate).parameters) == ("self", "prompts", "images",
                                                                            "num_generations", "profiler")
    generate = inspect.getsource(VLLMGeneration.generate)
    assert '"logprobs": self.logprobs' in generate and "logprob_token_ids" in generate
    assert "self._last_loaded_step" in inspect.getsource(GRPOTrainer.__init__)


@pytest.mark.parametrize("name", SEVEN)
def test_each_method_trains_anchored_on_mu(tmp_path, name):
    trainer = make_trainer(tmp_path, name, delta=0.05) if name in ("dppo", "cppo") else make_trainer(tmp_path, name)
    deviations = []
    compute = trainer._compute_loss

    def recording(model, inputs):
        loss = compute(model, inputs)
        deviations.append(trainer.last_ratio_deviation)
        return loss

    trainer._compute_loss = recording
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "policy_loss" in h]
    assert len(logs) == 4 and all(math.isfinite(h["policy_loss"]) for h in logs)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert changed == len(before)
    # two generations × two updates: the first update of a generation is on-policy (π = μ up to the
    # KV-cache numerics), the second sees the first's change through ratios anchored on μ
    assert len(deviations) == 4
    assert deviations[0] < 1e-4 and deviations[2] < 1e-4
    assert deviations[1] > 1e-3 and deviations[3] > 1e-3
    assert trainer.recomputes_skipped == 2  # TRL asked twice for an "old" recompute; never done
    for key in ("mask_fraction", "ratio_mean", "mismatch_abs_logp", "valid_tokens", "reward"):
        assert key in logs[0], key
    assert logs[1]["mismatch_abs_logp"] > 0


def test_per_token_loss_equals_local_engine(tmp_path):
    """The TRL loss path (left-padded prompts, position ids, chunked log-probs) gives the local
    engine's log-probs, mask, weight and loss on the same tensors."""
    trainer = make_trainer(tmp_path, "cppo", steps=2, delta=0.002, delta_b=0.001)
    captured = []
    compute = trainer._compute_loss

    def capture(model, inputs):
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out = compute(model, inputs)
        captured.append(({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in inputs.items()},
                         out.detach(), weights))
        return out

    trainer._compute_loss = capture
    trainer.train()
    inputs, trl_loss, weights = captured[-1]  # the second update: π ≠ μ, so masks can bind
    model = trainer.model
    model.load_state_dict(weights)  # the weights this update's loss was computed with
    method = trainer.method
    rows = []
    for i in range(inputs["prompt_ids"].shape[0]):  # the local engine: one unpadded prompt per row
        prompt = inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()][None]
        with torch.no_grad():
            logits = response_logits(model, prompt, inputs["completion_ids"][i][None])
        rows.append(logits[0])
    logits = torch.stack(rows).requires_grad_(True)
    logp, pi_topk = policy_logprobs_from_logits(logits, inputs["completion_ids"], inputs["rollout_topk_ids"])
    mask = inputs["completion_mask"].bool()
    assert inputs["step_totals"].tolist() == [float(mask.sum()), 8.0]  # one process, no accumulation
    batch = PolicyBatch(logp=logp, rollout_logp=inputs["sampling_per_token_logps"], advantages=inputs["advantages"],
                        response_mask=mask, response_ids=inputs["completion_ids"],
                        rollout_topk_ids=inputs["rollout_topk_ids"], rollout_topk_logp=inputs["rollout_topk_logp"],
                        policy_topk_logp=pi_topk, sequence_ids=inputs["sequence_ids"])
    local = method(batch, LossTotals(num_sequences=8, horizon=HORIZON))
    # the TRL engine's own pieces on the same inputs
    with torch.no_grad():
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        full = model(input_ids=torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1), attention_mask=attention,
                     position_ids=positions(attention)).logits
        trl_logits = full[:, inputs["prompt_ids"].shape[1] - 1:-1]
    trl_logp, _ = policy_logprobs_from_logits(trl_logits, inputs["completion_ids"])
    torch.testing.assert_close(trl_logp[mask], logp.detach()[mask], atol=2e-5, rtol=0)
    torch.testing.assert_close(trl_loss, local.loss.detach(), atol=1e-6, rtol=1e-5)
    assert local.metrics["mask_fraction"] > 0  # the trust region binds on this update: a real comparison


def test_left_padded_rollout_records_mu_exactly():
    """μ's recorded log-probs (left-padded batch, KV cache) equal teacher forcing on each unpadded row."""
    model, tok = load_lm(TINY, seed=1)
    prompts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)["input_ids"]
               for t in ("What is 2+3?", "Compute $7 \\times 8$ please.", "1")]
    width = max(map(len, prompts))
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    gen = torch.Generator().manual_seed(0)
    roll = sample(model, ids, 12, tok.eos_token_id, tok.pad_token_id, gen, record_top_k=3, prompt_mask=mask)
    for i, p in enumerate(prompts):
        n = int(roll.response_mask[i].sum())
        with torch.no_grad():
            logits = response_logits(model, torch.tensor([p]), roll.response_ids[i, :n][None])[0]
        expected = logits.float().log_softmax(-1).gather(-1, roll.response_ids[i, :n, None]).squeeze(-1)
        torch.testing.assert_close(roll.rollout_logp[i, :n], expected, atol=1e-5, rtol=0)


def test_trl_run_through_the_config(tmp_path):
    """trh train setting=lm_tiny: the results folder of an engine=trl run looks like a local run's."""
    from harness.config import compose
    from harness.train import run

    cfg = compose(["setting=lm_tiny", "method=cppo", f"results_root={tmp_path}", "logging=quiet"])
    status = run(cfg)
    assert status["state"] == "done" and status["engine"] == "trl" and status["trl_recomputes_skipped"] == 4
    folder = next(tmp_path.iterdir())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    evals = [r for r in rows if r["step"] % 2 == 0]
    assert all("headline" in r and set(r) >= {"aime24", "aime25", "aime26"} for r in evals)
    # the held-out split (task.test) is scored beside validation; the headline ignores it
    assert all(r["headline"] == pytest.approx((r["aime24"] + r["aime25"] + r["aime26"]) / 3) for r in evals)
    held = status["held_out"]
    assert held["step"] == status["best_step"] and held["test_headline"] == held["test_heldout"]
    assert status["provenance"]["trl"] == "1.16.0"
    assert all(r["updates"] == 2 and "mask_fraction" in r for r in rows[1:])
    assert not (folder / "trl_checkpoints").exists()
    assert run(cfg)["skipped"] is True  # a finished cell is never rerun
    # the final policy is kept in Hugging Face format, and loads
    from transformers import AutoModelForCausalLM
    kept = AutoModelForCausalLM.from_pretrained(folder / "policy")
    assert sum(p.numel() for p in kept.parameters()) > 0 and (folder / "policy" / "tokenizer_config.json").exists()
    # and the matched-window best step's policy, marked with its step
    best = json.loads((folder / "policy_best" / "best_step.json").read_text())["step"]
    assert best == status["best_step"] and status["weights"] == {"final": "policy",
                                                                 "best": {"dir": "policy_best", "step": best}}
    assert (folder / "policy_best" / "tokenizer_config.json").exists()
    assert not list(folder.glob("policy_best.*"))  # no partial or old folder left behind


def test_best_policy_holds_the_best_steps_weights(tmp_path, monkeypatch):
    """policy_best/ is the policy as it was at the matched-window best step: an eval row made to be the
    best at step 2 (and never bettered) leaves exactly the weights the policy had when it was scored,
    not step 0's or the final step's."""
    from harness.config import compose
    from harness.engines import trl as lm_train
    from harness.train import run

    evaluate, at_step = lm_train.LMRun.evaluate, {}

    def scripted(self, step):
        row = evaluate(self, step)
        with torch.no_grad():  # the tiny model may not move in a few steps; every eval step's weights must differ
            next(self.trainer.model.parameters()).add_(0.01)
        at_step[step] = {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}
        return {**row, "headline": 1.0 if step == 2 else 0.1}

    monkeypatch.setattr(lm_train.LMRun, "evaluate", scripted)
    status = run(compose(["setting=lm_tiny", "method=grpo", f"results_root={tmp_path}", "logging=quiet",
                          "engine.keep_weights=false"]))
    folder = next(tmp_path.iterdir())
    assert status["best_step"] == 2 and status["weights"]["best"]["step"] == 2 and status["weights"]["final"] is None
    assert not (folder / "policy").exists()
    from transformers import AutoModelForCausalLM
    kept = AutoModelForCausalLM.from_pretrained(folder / "policy_best").state_dict()
    for name, value in kept.items():
        torch.testing.assert_close(value, at_step[2][name], atol=0, rtol=0)
    assert any(not torch.equal(at_step[s][n], at_step[2][n]) for n in kept for s in (0, 4))  # not another step's


def test_trl_checkpoints_can_live_elsewhere_and_weights_need_not_be_kept(tmp_path, monkeypatch):
    """engine.checkpoint_dir (shared scratch): TRL writes its checkpoints under it, in a subfolder named as
    the run folder, and they are removed at the verdict; engine.keep_weights=false keeps no policy."""
    from harness.config import compose
    from harness.engines import trl as lm_train
    from harness.train import run

    scratch, seen = tmp_path / "scratch", []
    judge = lm_train.LMRun.judge

    def watching(self, row):
        seen.extend(p.relative_to(scratch) for p in scratch.glob("*/checkpoint-*"))
        return judge(self, row)

    monkeypatch.setattr(lm_train.LMRun, "judge", watching)
    results = tmp_path / "results"
    status = run(compose(["setting=lm_tiny", "method=grpo", f"results_root={results}", "logging=quiet",
                          f"engine.checkpoint_dir={scratch}", "engine.keep_weights=false",
                          "engine.keep_best_weights=false", "engine.checkpoint_every=2"]))
    folder = next(results.iterdir())
    assert status["state"] == "done" and seen and all(p.parts[0] == folder.name for p in seen)
    assert not any(scratch.glob("*/checkpoint-*")) and not (folder / "trl_checkpoints").exists()
    assert not (folder / "policy").exists() and not (folder / "policy_best").exists()
    assert status["weights"] == {"final": None, "best": None}
    # where files go is not part of the run: the same cell without those keys has the same id
    from harness.config import resolve
    assert resolve(compose(["setting=lm_tiny", "method=grpo", f"results_root={results}"])).run_dir.name == folder.name


def test_mu_from_vllm_logprobs():
    """vLLM (logprobs=K) returns up to K+1 entries per token by rank, the sampled token always among
    them; μ's set is the top K with the sampled token forced in, as the harness sampler records it."""
    from harness.engines.trl_trainer import mu_from_vllm

    completion = [[5, 7, 2]]
    token_ids = [[[5, 3, 9], [1, 2, 7], [2, 4, 6]]]
    logprobs = [[[-0.1, -2.5, -4.0], [-0.5, -1.5, -3.0], [-0.2, -2.0, -3.3]]]
    sampled, top_ids, top_logp = mu_from_vllm(completion, logprobs, token_ids, top_k=2)
    assert sampled == [[-0.1, -3.0, -0.2]]
    assert top_ids[0].tolist() == [[5, 3], [1, 7], [2, 4]]          # 7 was third: it replaces the K-th entry
    torch.testing.assert_close(top_logp[0], torch.tensor([[-0.1, -2.5], [-0.5, -3.0], [-0.2, -2.0]]))
    with pytest.raises(RuntimeError, match="no log-prob for the sampled token"):
        mu_from_vllm([[8]], [[[-0.1, -2.5]]], [[[5, 3]]], top_k=2)


def test_trl_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A crash after the step-2 checkpoint: the rerun resumes there, each step is recorded once."""
    from harness.engines import trl as lm_train
    from harness.config import compose
    from harness.train import run

    judge = lm_train.LMRun.judge
    crashed = []

    def crash_once(self, row):
        if row["step"] == 3 and not crashed:
            crashed.append(True)
            raise RuntimeError("simulated crash")
        return judge(self, row)

    monkeypatch.setattr(lm_train.LMRun, "judge", crash_once)
    cfg = compose(["setting=lm_tiny", "method=grpo", f"results_root={tmp_path}", "logging=quiet"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    folder = next(tmp_path.iterdir())
    assert json.loads((folder / "status.json").read_text())["state"] == "failed"
    assert (folder / "trl_checkpoints" / "checkpoint-4").is_dir()  # RL step 2 = 4 optimiser steps
    status = run(cfg)
    assert status["state"] == "done" and status["resumed_from"] == [2]
    assert status["weights"]["best"] == {"dir": "policy_best", "step": status["best_step"]}
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]


def test_fused_loss_gives_the_logits_path_gradients(tmp_path):
    """``fused_loss`` (the default): the same loss and parameter gradients as the materialised logits,
    on the inputs of a real training step (left-padded prompts, tied embeddings)."""
    trainer = make_trainer(tmp_path, "cppo", steps=2, delta=0.002, delta_b=0.001)
    captured = []
    compute = trainer._compute_loss

    def capture(model, inputs):
        captured.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in inputs.items()})
        return compute(model, inputs)

    trainer._compute_loss = capture
    trainer.train()
    model, inputs = trainer.model, captured[-1]
    assert trainer.fused_loss
    results = []
    for fused in (True, False):
        trainer.fused_loss = fused
        model.zero_grad()
        loss = compute(model, inputs)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (fused_loss, fused_grads), (plain_loss, plain_grads) = results
    torch.testing.assert_close(fused_loss, plain_loss, atol=1e-6, rtol=1e-5)
    for got, want in zip(fused_grads, plain_grads):
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max().clamp_min(1e-12))


def test_fused_loss_refuses_a_model_whose_logits_are_not_its_output_layer(tmp_path):
    trainer = make_trainer(tmp_path, "grpo", steps=1)
    trainer.model.lm_head.register_forward_hook(lambda _m, _i, out: 1.5 * out)  # a logit scale, as some models have
    with pytest.raises(RuntimeError, match="engine.fused_loss"):
        trainer.train()


def test_a_resume_keeps_the_best_policy_as_of_its_checkpoint(tmp_path, monkeypatch):
    """Checkpoints every 2 steps, evaluation every step. Step 3 is the best (its weights replace step 2's),
    then a crash at step 4: the rerun resumes from step 2 and, recomputed, step 3 is not the best any more
    (as on a GPU, where a recomputation need not be bitwise). The best is step 2, and policy_best/ holds
    step 2's weights, kept as the anchor while step 3's were the best."""
    from harness.config import compose
    from harness.engines import trl as lm_train
    from harness.train import run

    evaluate, judge, at_step, passes = lm_train.LMRun.evaluate, lm_train.LMRun.judge, {}, []

    def scripted(self, step):
        row = evaluate(self, step)
        with torch.no_grad():  # every evaluation's weights differ
            next(self.trainer.model.parameters()).add_(0.01)
        at_step[step] = {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}
        headline = {0: 0.1, 1: 0.2, 2: 0.5, 3: 0.9 if not passes else 0.3, 4: 0.2}[step]
        return {**row, "headline": headline}

    def crash_once(self, row):
        if row["step"] == 4 and not passes:
            passes.append(True)
            assert json.loads((self.record.store.dir / "policy_best" / "best_step.json").read_text())["step"] == 3
            assert json.loads((self.record.store.dir / "policy_best.anchor" / "best_step.json").read_text())["step"] == 2
            raise RuntimeError("simulated crash")
        return judge(self, row)

    monkeypatch.setattr(lm_train.LMRun, "evaluate", scripted)
    monkeypatch.setattr(lm_train.LMRun, "judge", crash_once)
    cfg = compose(["setting=lm_tiny", "method=grpo", f"results_root={tmp_path}", "logging=quiet", "eval.every=1",
                   "engine.keep_weights=false"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    step_2 = at_step[2]
    status = run(cfg)
    folder = next(tmp_path.iterdir())
    assert status["resumed_from"] == [2] and status["best_step"] == 2
    assert status["weights"]["best"] == {"dir": "policy_best", "step": 2}
    from transformers import AutoModelForCausalLM
    kept = AutoModelForCausalLM.from_pretrained(folder / "policy_best").state_dict()
    for name, value in kept.items():
        torch.testing.assert_close(value, step_2[name], atol=0, rtol=0)
    assert not list(folder.glob("policy_best.*"))


def test_the_checkpointing_keyword_follows_the_installed_transformers():
    """transformers 5.24 names it activation_checkpointing, 5.17 (the newest vLLM 0.31 allows) gradient_checkpointing."""
    import dataclasses

    from trl import GRPOConfig

    from harness.engines.trl_trainer import checkpointing_keyword

    old = dataclasses.make_dataclass("Old", [("gradient_checkpointing", bool, False)])
    new = dataclasses.make_dataclass("New", [("activation_checkpointing", bool, False)])
    assert checkpointing_keyword(old) == "gradient_checkpointing"
    assert checkpointing_keyword(new) == "activation_checkpointing"
    assert checkpointing_keyword(GRPOConfig) in {f.name for f in dataclasses.fields(GRPOConfig)}


def test_the_training_dataset_is_from_lists_without_its_pickled_fingerprint():
    from datasets import Dataset

    from harness.engines.trl import train_dataset

    rows = [{"prompt": [{"role": "user", "content": f"{i}+1="}], "problem_index": i} for i in range(5)]
    ours, reference = train_dataset(rows), Dataset.from_list(rows)
    assert ours.features == reference.features and ours.to_list() == reference.to_list()
    assert ours._fingerprint == train_dataset([dict(r) for r in rows])._fingerprint != train_dataset(rows[:4])._fingerprint
