"""The registry in verl's policy-loss calling convention, checked without installing verl."""

import inspect

import pytest
import torch
from omegaconf import OmegaConf

from methods import LossTotals, MethodConfigError, PolicyBatch, get_method
from methods.verl import VERL_SIGNATURE, verl_policy_loss

B, T = 4, 6


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(B, T, generator=g).mul(0.5).sub(1.0)
    old = logp + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None].expand(B, T).clone()
    mask = torch.ones(B, T)
    mask[0, 4:] = 0
    mask[2, 2:] = 0
    return old, logp, adv, mask


def verl_style_call(fn, old, logp, adv, mask, mode, config):
    """As verl's ppo_loss calls a registered policy loss: keywords only."""
    return fn(old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode=mode,
              config=config, rollout_is_weights=None)


def test_signature_matches_verl_policy_loss_fn():
    fn = verl_policy_loss("dppo", divergence="binary_tv")
    assert tuple(inspect.signature(fn).parameters) == VERL_SIGNATURE
    registry = {}

    def register_policy_loss(name):  # verl's decorator, re-created: a name → function dict
        def deco(f):
            registry[name] = f
            return f
        return deco

    register_policy_loss("trh_dppo")(fn)
    assert registry["trh_dppo"] is fn


@pytest.mark.parametrize("name,params", [("grpo", {}), ("cispo", {}), ("minpro", {}),
                                         ("dppo", {"divergence": "binary_tv", "delta": 0.05}),
                                         ("cppo", {"divergence": "binary_tv", "delta": 0.05, "delta_b": 0.02}),
                                         ("trm_max", {"divergence": "k2"}), ("trm_avg", {"divergence": "k3"})])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum-norm", "seq-mean-token-mean"])
def test_equals_the_registry_on_the_same_tensors(name, params, mode):
    old, logp, adv, mask = tensors()
    fn = verl_policy_loss(name, **params)
    config = OmegaConf.create({"global_batch_info": {"dp_size": 1, "batch_num_tokens": int(mask.sum()),
                                                     "global_batch_size": B, "loss_scale_factor": T}})
    x = logp.clone().requires_grad_(True)
    loss, metrics = verl_style_call(fn, old, x, adv, mask, mode, config)
    loss.backward()
    y = logp.clone().requires_grad_(True)
    ref = get_method(name, horizon=T, **{**params, "aggregation": mode})(
        PolicyBatch(logp=y, rollout_logp=old, advantages=adv, response_mask=mask.bool()),
        LossTotals(num_sequences=B, num_tokens=float(mask.sum()), horizon=T))
    ref.loss.backward()
    torch.testing.assert_close(loss.detach(), ref.loss.detach())
    torch.testing.assert_close(x.grad, y.grad)
    assert metrics["actor/pg_clipfrac"] == ref.metrics["mask_fraction"]
    assert metrics["actor/ppo_kl"] == pytest.approx(float((old - logp)[mask.bool()].mean()), abs=1e-6)
    assert set(f"actor/trh/{k}" for k in ref.metrics) <= set(metrics)


def test_micro_batches_with_global_batch_info_sum_to_the_full_batch():
    """verl splits a minibatch into micro-batches and passes global totals; the losses must add up."""
    old, logp, adv, mask = tensors(1)
    fn = verl_policy_loss("cppo", divergence="binary_tv", delta=0.05, delta_b=0.02)
    info = {"global_batch_info": {"dp_size": 1, "batch_num_tokens": int(mask.sum()), "global_batch_size": B,
                                  "loss_scale_factor": T}}
    for mode in ("token-mean", "seq-mean-token-sum-norm"):
        full, _ = verl_style_call(fn, old, logp, adv, mask, mode, info)
        halves = sum(verl_style_call(fn, old[s], logp[s], adv[s], mask[s], mode, info)[0]
                     for s in (slice(0, 2), slice(2, 4)))
        torch.testing.assert_close(halves, full)


def test_clear_errors():
    with pytest.raises(MethodConfigError, match="binary"):
        verl_policy_loss("cppo")  # Top-K TV by default: verl has no top-K data
    fn = verl_policy_loss("grpo")
    old, logp, adv, mask = tensors()
    with pytest.raises(MethodConfigError, match="loss_agg_mode must be one of"):
        verl_style_call(fn, old, logp, adv, mask, "token-sum-typo", None)
    with pytest.raises(MethodConfigError, match="bypass mode"):
        fn(old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode="token-mean",
           config=None, rollout_is_weights=torch.ones(B, T))
