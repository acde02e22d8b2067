"""SAPO, VESPO, GSPO and OPSM against the installed TRL's own ``GRPOTrainer._compute_loss`` on identical
tensors: loss and gradient with respect to π's log-probs, for every aggregation TRL offers each rule.

TRL's method runs on a stand-in trainer whose forward returns the test's log-probs, so nothing but the
loss code is TRL's choice; its anchor (``old_per_token_logps``) is μ, the rollout's log-probs, as the
registry's. Where TRL clips (GSPO, OPSM's GRPO clip) a clipped token keeps the gradient-free value
−A·clip(ρ) in TRL's loss and 0 in the registry's: the value check adds that constant back.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")
from trl import GRPOTrainer  # noqa: E402

from methods import aggregate, get_method  # noqa: E402

TOL = dict(rtol=0.0, atol=1e-6)
ROWS, LENGTH = 6, 9
# TRL loss_type → the registry aggregation it computes (one process, no gradient accumulation)
AGGREGATION = {"grpo": "seq-mean-token-mean", "sapo": "seq-mean-token-mean", "bnpo": "token-mean",
               "dapo": "token-mean", "vespo": "token-mean", "dr_grpo": "seq-mean-token-sum-norm",
               "luspo": "seq-mean-token-sum"}
PPO_LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"]


def tensors(seed: int, drift: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(ROWS, LENGTH, generator=g) * 3.0
    mu = logp + drift * torch.randn(ROWS, LENGTH, generator=g)
    lengths = torch.randint(1, LENGTH + 1, (ROWS,), generator=g)
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    adv = torch.randn(ROWS, generator=g)
    return logp, mu, mask, adv


def trl_loss(loss_type, logp, mu, mask, adv, *, level="token", eps=(0.2, 0.28), opsm=None, **args):
    """TRL's loss and its gradient over ``logp``, from ``GRPOTrainer._compute_loss`` itself."""
    leaf = logp.clone().requires_grad_(True)
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (leaf, torch.zeros_like(leaf), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=opsm, importance_sampling_level=level, beta=0.0,
        loss_type=loss_type, epsilon_low=eps[0], epsilon_high=eps[1], use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=LENGTH, aux_loss_enabled=False,
        _entropy_bonus_enabled=False, _metrics={"train": defaultdict(list)},
        accelerator=SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x),
        get_off_policy_mask=GRPOTrainer.get_off_policy_mask, get_gamma_weights=GRPOTrainer.get_gamma_weights,
        args=SimpleNamespace(delta=None, steps_per_generation=1, use_bias_correction_kl=False,
                             sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, vespo_k_pos=2.0,
                             vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0, **args))
    inputs = {"prompt_ids": torch.zeros(ROWS, 1, dtype=torch.long), "prompt_mask": torch.ones(ROWS, 1, dtype=torch.long),
              "completion_ids": torch.zeros(ROWS, LENGTH, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": mu, "num_items_in_batch": mask.sum().float()}
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def registry_loss(name, logp, mu, mask, adv, **params):
    leaf = logp.clone().requires_grad_(True)
    out = get_method(name, horizon=LENGTH, **params)({"logp": leaf, "rollout_logp": mu, "advantages": adv,
                                                      "response_mask": mask.bool()})
    (grad,) = torch.autograd.grad(out.loss, leaf)
    return out, grad


def clipped_constant(aggregation, out, logp, mu, mask, adv, eps, *, sequence, kept_by_opsm=None):
    """The registry-aggregated −A·clip(ρ) of the tokens the clip dropped (TRL's gradient-free remainder)."""
    lr = logp - mu
    if sequence:
        lr = ((lr * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)).expand_as(lr)
    clipped = (out.mask == 0) & mask.bool()
    if kept_by_opsm is not None:
        clipped &= kept_by_opsm.bool().expand_as(clipped)
    value = torch.where(clipped, -adv[:, None] * lr.exp().clamp(1 - eps[0], 1 + eps[1]), torch.zeros_like(lr))
    return aggregate(value, mask.bool(), aggregation, horizon=LENGTH)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("loss_form", ["ratio", "reinforce"])
def test_sapo_equals_trl(seed, loss_form):
    logp, mu, mask, adv = tensors(seed, drift=0.6)
    theirs, their_grad = trl_loss("sapo", logp, mu, mask, adv)
    out, grad = registry_loss("sapo", logp, mu, mask, adv, aggregation=AGGREGATION["sapo"], loss_form=loss_form)
    assert their_grad.abs().max() > 1e-3
    torch.testing.assert_close(grad, their_grad, **TOL)
    if loss_form == "ratio":  # the reinforce form has TRL's gradient, not its value
        torch.testing.assert_close(out.loss.detach(), theirs, **TOL)
    assert 0 < out.metrics["mask_fraction"] < 1  # the soft gate is off 1 on these tensors


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vespo_equals_trl(seed):
    logp, mu, mask, adv = tensors(seed, drift=0.1)
    theirs, their_grad = trl_loss("vespo", logp, mu, mask, adv)
    out, grad = registry_loss("vespo", logp, mu, mask, adv, aggregation=AGGREGATION["vespo"])
    torch.testing.assert_close(grad, their_grad, **TOL)
    torch.testing.assert_close(out.loss.detach(), theirs, **TOL)
    weights = out.weight[mask.bool()]
    assert (weights - 1).abs().max() > 1e-3  # φ departs from 1 off-policy


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("loss_form", ["ratio", "reinforce"])
@pytest.mark.parametrize("loss_type", PPO_LOSS_TYPES)
def test_gspo_equals_trl(seed, loss_form, loss_type):
    logp, mu, mask, adv = tensors(seed, drift=0.05)
    eps = (3e-3, 4e-3)
    theirs, their_grad = trl_loss(loss_type, logp, mu, mask, adv, level="sequence", eps=eps)
    aggregation = AGGREGATION[loss_type]
    out, grad = registry_loss("gspo", logp, mu, mask, adv, aggregation=aggregation, loss_form=loss_form,
                              eps_low=eps[0], eps_high=eps[1], truncation_cap=float("inf"))
    assert their_grad.abs().max() > 1e-3
    torch.testing.assert_close(grad, their_grad, **TOL)
    kept = out.mask[mask.bool()]
    assert bool((kept == 0).any()) and bool((kept == 1).any())  # some responses clipped, some not
    if loss_form == "ratio":
        constant = clipped_constant(aggregation, out, logp, mu, mask, adv, eps, sequence=True)
        torch.testing.assert_close(out.loss.detach() + constant, theirs, **TOL)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("loss_form", ["ratio", "reinforce"])
@pytest.mark.parametrize("loss_type", PPO_LOSS_TYPES)
def test_opsm_equals_trl(seed, loss_form, loss_type):
    logp, mu, mask, adv = tensors(seed, drift=0.4)
    mu = mu + 0.15 * (torch.arange(ROWS) % 2)[:, None]  # every other response further off-policy
    eps, delta = (0.2, 0.28), 0.1
    theirs, their_grad = trl_loss(loss_type, logp, mu, mask, adv, opsm=delta, eps=eps)
    aggregation = AGGREGATION[loss_type]
    out, grad = registry_loss("opsm", logp, mu, mask, adv, aggregation=aggregation, loss_form=loss_form,
                              delta=delta, truncation_cap=float("inf"))
    torch.testing.assert_close(grad, their_grad, **TOL)
    kept_by_opsm = GRPOTrainer.get_off_policy_mask(adv[:, None], logp, mu, mask.float(), delta)
    assert 0 < float(kept_by_opsm.mean()) < 1  # OPSM drops some responses and keeps others here
    if loss_form == "ratio":
        constant = clipped_constant(aggregation, out, logp, mu, mask, adv, eps, sequence=False,
                                    kept_by_opsm=kept_by_opsm)
        torch.testing.assert_close(out.loss.detach() + constant, theirs, **TOL)
