"""engine=trl loss scale: for every aggregation and any (processes × gradient accumulation ×
steps_per_generation) geometry, the gradient of one optimiser step is the registry's gradient of the
whole minibatch, and equals TRL's own ``_compute_loss`` where the conventions match.

Processes are simulated: each holds its own generation batch, TRL's ``split_tensor_dict`` cuts it
into micro-batches, the step totals are summed over processes (what ``accelerator.reduce`` does),
and the processes' accumulated gradients are averaged (what DDP does).
"""

from types import SimpleNamespace

import re

import pytest
import torch
from trl import GRPOTrainer
from trl.trainer.utils import split_tensor_dict

from harness.rollout import positions
from harness.engines.trl_trainer import attach_step_totals, check_trl_options, step_totals
from methods import LossTotals, PolicyBatch, get_method, policy_logprobs_from_logits

from .trl_helpers import HORIZON, make_trainer

pytestmark = pytest.mark.xdist_group("trl")

ROWS = 2                      # per-device micro-batch rows
PROMPT = 5                    # equal prompt lengths: TRL passes no position ids, so no left padding
GEOMETRIES = [  # (processes, gradient accumulation, steps_per_generation)
    (1, 1, 1), (1, 2, 2), (1, 1, 4), (1, 2, 4), (2, 1, 2), (2, 2, 4), (3, 2, 2)]
# registry aggregation ↔ TRL loss_type (and the registry method) where the two losses mean the same
TRL_PEERS = [("grpo", "seq-mean-token-mean", "grpo"), ("dr_grpo", "seq-mean-token-sum-norm", "grpo"),
             ("dapo", "token-mean", "grpo"), ("cispo", "token-mean", "cispo"), ("luspo", "seq-mean-token-sum", "grpo")]


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    trainer = make_trainer(tmp_path_factory.mktemp("scale"), "grpo")
    trainer.model.train()
    return trainer


def generation_batch(model, seed: int, rows: int, full_length: bool) -> dict:
    """One process's generation batch: random prompts and completions, μ = π + noise so that clips bind,
    varied response lengths unless ``full_length``."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    prompt_ids = torch.randint(10, vocab, (rows, PROMPT), generator=g)
    completion_ids = torch.randint(10, vocab, (rows, HORIZON), generator=g)
    lengths = torch.full((rows,), HORIZON) if full_length else torch.randint(1, HORIZON + 1, (rows,), generator=g)
    completion_mask = (torch.arange(HORIZON)[None] < lengths[:, None]).long()
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt_ids, completion_ids], 1)).logits[:, PROMPT - 1:-1]
        logp = logits.float().log_softmax(-1).gather(-1, completion_ids[..., None])[..., 0]
    mu = logp + 0.3 * torch.randn(rows, HORIZON, generator=g)
    return {"prompt_ids": prompt_ids, "prompt_mask": torch.ones(rows, PROMPT, dtype=torch.long),
            "completion_ids": completion_ids, "completion_mask": completion_mask,
            "advantages": torch.randn(rows, generator=g), "sampling_per_token_logps": mu,
            "old_per_token_logps": mu, "sequence_ids": torch.arange(rows) + 1000 * seed}


def micro_batches(model, geometry, full_length: bool):
    """Per process: its micro-batches (in TRL's order) carrying the engine's step totals, plus
    TRL's ``num_items_in_batch`` (valid tokens of the generation batch over all processes)."""
    processes, accumulation, per_generation = geometry
    batches = [generation_batch(model, p, ROWS * per_generation, full_length) for p in range(processes)]
    items = sum(b["completion_mask"].sum() for b in batches).float()
    slices = []
    for batch in batches:
        batch["num_items_in_batch"] = items
        slices.append(split_tensor_dict(batch, per_generation))
    totals = sum(step_totals(s, accumulation) for s in slices)  # accelerator.reduce(..., "sum")
    for s in slices:
        attach_step_totals(s, accumulation, totals, processes)
    return slices


def step_gradient(model, loss_fn, slices, accumulation: int, step: int) -> torch.Tensor:
    """The gradient of optimiser step ``step``: accumulate each process's micro-batches, average processes."""
    grads = []
    for process in slices:
        model.zero_grad(set_to_none=True)
        for batch in process[step * accumulation:(step + 1) * accumulation]:
            loss_fn(batch).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    return torch.stack(grads).mean(0)


def registry_gradient(model, method, slices, accumulation: int, step: int) -> torch.Tensor:
    """The registry method applied once to the whole minibatch of optimiser step ``step``."""
    keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages",
            "sampling_per_token_logps", "sequence_ids")
    parts = [b for process in slices for b in process[step * accumulation:(step + 1) * accumulation]]
    whole = {k: torch.cat([b[k] for b in parts]) for k in keys}
    attention = torch.cat([whole["prompt_mask"], whole["completion_mask"]], 1)
    logits = model(input_ids=torch.cat([whole["prompt_ids"], whole["completion_ids"]], 1), attention_mask=attention,
                   position_ids=positions(attention)).logits[:, PROMPT - 1:-1]
    logp, _ = policy_logprobs_from_logits(logits, whole["completion_ids"])
    batch = PolicyBatch(logp=logp, rollout_logp=whole["sampling_per_token_logps"], advantages=whole["advantages"],
                        response_mask=whole["completion_mask"].bool(), sequence_ids=whole["sequence_ids"])
    model.zero_grad(set_to_none=True)
    method(batch, LossTotals(horizon=HORIZON)).loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return grad


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "P{}xGA{}xS{}".format(*g))
@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                         "seq-mean-token-sum-norm"])
def test_engine_step_gradient_is_the_registry_minibatch_gradient(trainer, geometry, aggregation):
    model, accumulation = trainer.model, geometry[1]
    trainer.method = get_method("grpo", aggregation=aggregation, horizon=HORIZON)
    slices = micro_batches(model, geometry, full_length=False)
    for step in range(geometry[2] // accumulation):  # every optimiser step of the generation
        engine = step_gradient(model, lambda b: trainer._compute_loss(model, b), slices, accumulation, step)
        reference = registry_gradient(model, trainer.method, slices, accumulation, step)
        assert reference.abs().max() > 1e-4
        torch.testing.assert_close(engine, reference, rtol=1e-4, atol=1e-7)


class ReportingAccelerator(SimpleNamespace):
    """What TRL's loss asks of the accelerator, for a simulated process: its count, and reductions
    that only feed metrics."""

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def gather(self, tensor):
        return tensor

    gather_for_metrics = gather

    def autocast(self):
        import contextlib
        return contextlib.nullcontext()


@pytest.mark.parametrize("geometry", [(1, 1, 1), (1, 2, 2), (1, 1, 2), (1, 2, 4), (2, 2, 4)],
                         ids=lambda g: "P{}xGA{}xS{}".format(*g))
@pytest.mark.parametrize("loss_type,aggregation,method", TRL_PEERS, ids=[p[0] for p in TRL_PEERS])
def test_engine_step_gradient_equals_trls_own_loss(trainer, geometry, loss_type, aggregation, method):
    """TRL's ``_compute_loss`` on identical tensors. Full-length responses: TRL's token-mean types
    divide by the generation batch's tokens / steps per generation, the exact minibatch count only
    when every optimiser step holds the same number of tokens."""
    processes, accumulation, per_generation = geometry
    model = trainer.model
    params = {"cap": 1.2} if method == "cispo" else {}
    trainer.method = get_method(method, aggregation=aggregation, horizon=HORIZON, **params)
    slices = micro_batches(model, geometry, full_length=True)
    accelerator, args = trainer.accelerator, trainer.args
    try:
        trainer.loss_type, trainer.epsilon_low, trainer.epsilon_high = loss_type, 0.2, 0.28
        if method == "cispo":
            trainer.epsilon_high = 1.2  # TRL's CISPO cap is absolute, as the registry's
        trainer.current_gradient_accumulation_steps = accumulation
        trainer.args = SimpleNamespace(**{**vars(args), "steps_per_generation": per_generation})
        trainer.accelerator = ReportingAccelerator(num_processes=processes, is_main_process=True)
        for step in range(per_generation // accumulation):
            theirs = step_gradient(model, lambda b: GRPOTrainer._compute_loss(trainer, model, b), slices,
                                   accumulation, step)
            trainer.accelerator = accelerator
            ours = step_gradient(model, lambda b: trainer._compute_loss(model, b), slices, accumulation, step)
            trainer.accelerator = ReportingAccelerator(num_processes=processes, is_main_process=True)
            assert theirs.abs().max() > 1e-4
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)
    finally:
        trainer.accelerator, trainer.args = accelerator, args


@pytest.mark.parametrize("option,value", [("beta", 0.04), ("loss_type", "grpo"), ("top_entropy_quantile", 0.2),
                                          ("entropy_coef", 0.01), ("off_policy_mask_threshold", 0.5),
                                          ("importance_sampling_level", "sequence"), ("delta", 2.0)])
def test_options_the_registry_loss_would_ignore_are_refused(option, value):
    from trl import GRPOConfig
    args = GRPOConfig(output_dir="unused", use_cpu=True, vllm_importance_sampling_correction=False,
                      **{option: value})
    with pytest.raises(ValueError, match=f"{option}={value!r}"):
        check_trl_options(args)
    check_trl_options(GRPOConfig(output_dir="unused", use_cpu=True, vllm_importance_sampling_correction=True))
    with pytest.raises(ValueError, match="vllm_importance_sampling_correction"):
        check_trl_options(SimpleNamespace(**{**vars(GRPOConfig(output_dir="unused", use_cpu=True)), "use_vllm": True}))


def tiny_moe(vocab_size: int):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=1, head_dim=16, intermediate_size=64, moe_intermediate_size=16,
                            num_experts=4, num_experts_per_tok=2, max_position_embeddings=512,
                            router_aux_loss_coef=0.01)
    return Qwen3MoeForCausalLM(config)


def test_moe_router_auxiliary_loss_is_kept(tmp_path):
    """Qwen3-MoE through the engine: TRL's load-balancing term is in the loss (as TRL adds it: coefficient
    × aux / accumulation), it is logged, and its gradient reaches the routers."""
    vocab = make_trainer(tmp_path / "probe", "grpo", steps=1).processing_class.vocab_size
    trainer = make_trainer(tmp_path, "grpo", steps=2, model=tiny_moe(vocab))
    assert trainer.aux_loss_enabled and trainer.router_aux_loss_coef == 0.01
    model = trainer.model
    model.train()
    batch = micro_batches(model, (1, 2, 2), full_length=False)[0][0]
    trainer.current_gradient_accumulation_steps = 2
    routers = [p for n, p in model.named_parameters() if n.endswith("mlp.gate.weight")]
    assert len(routers) == 2

    def loss_and_router_grads(with_aux: bool):
        trainer.aux_loss_enabled = with_aux
        model.zero_grad(set_to_none=True)
        loss = trainer._compute_loss(model, batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in routers]

    loss_with, grads_with = loss_and_router_grads(True)
    loss_without, grads_without = loss_and_router_grads(False)
    model.zero_grad(set_to_none=True)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    aux = model(input_ids=torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1), attention_mask=attention,
                position_ids=positions(attention), output_router_logits=True).aux_loss
    (0.01 * aux / 2).backward()
    torch.testing.assert_close(loss_with - loss_without, (0.01 * aux / 2).detach(), rtol=1e-5, atol=1e-8)
    for with_aux, without, aux_only in zip(grads_with, grads_without, [p.grad for p in routers]):
        assert aux_only.abs().max() > 0
        torch.testing.assert_close(with_aux - without, aux_only, rtol=1e-4, atol=1e-9)
    model.zero_grad(set_to_none=True)

    trainer.aux_loss_enabled = True
    trainer.train()
    logs = [h for h in trainer.state.log_history if "aux_loss" in h]
    assert len(logs) == 2 and all(h["aux_loss"] > 0 for h in logs)


@pytest.mark.parametrize("options, named", [
    ({"top_p": 0.8}, "top_p=0.8"), ({"top_k": 50}, "top_k=50"), ({"min_p": 0.05}, "min_p=0.05"),
    ({"repetition_penalty": 1.1}, "repetition_penalty=1.1"),
    ({"generation_kwargs": {"top_p": 0.9}}, "generation_kwargs['top_p']=0.9"),
    ({"generation_kwargs": {"presence_penalty": 0.5}}, "generation_kwargs['presence_penalty']=0.5"),
])
def test_sampling_that_biases_mu_is_refused(options, named):
    """μ must be the full softmax at the rollout temperature (TRL issue #6789 measured a mean ratio of
    0.896 at top_p 0.8): truncated or penalised sampling is refused, on TRL's and vLLM's paths alike."""
    from trl import GRPOConfig
    args = GRPOConfig(output_dir="unused", use_cpu=True, vllm_importance_sampling_correction=False, **options)
    with pytest.raises(ValueError, match=re.escape(named) + r".*full softmax at the rollout temperature"):
        check_trl_options(args)
    check_trl_options(GRPOConfig(output_dir="unused", use_cpu=True, generation_kwargs={"max_tokens": 8},
                                 vllm_importance_sampling_correction=False))


def test_the_sampler_refuses_a_nucleus_when_it_records_mu():
    from harness.model import CharTokenizer, ModelSize, build_model
    from harness.rollout import sample
    from harness.tasks.addition import ALPHABET

    tok = CharTokenizer(ALPHABET)
    model = build_model(ModelSize(32, 2, 64, 2, 1), tok.vocab_size, 64, seed=0)
    prompts = torch.tensor([[tok.bos_id] + tok.encode("1+2=")] * 2)
    with pytest.raises(ValueError, match="top_p=0.9 with record_top_k=3"):
        sample(model, prompts, 4, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(0), top_p=0.9, record_top_k=3)
    sample(model, prompts, 4, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(0), top_p=0.9)  # evaluation
