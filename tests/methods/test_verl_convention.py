"""The registry in verl's policy-loss calling convention, checked without installing verl (its
loss formulas of 0.9.1 are re-created below as reference loops)."""

import inspect
import warnings

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
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum-norm", "seq-mean-token-mean",
                                  "seq-mean-token-sum"])
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
        verl_style_call(fn, old, logp, adv, mask, "token_sum", None)
    with pytest.raises(MethodConfigError, match="bypass mode"):
        fn(old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode="token-mean",
           config=None, rollout_is_weights=torch.ones(B, T))


# --- verl 0.9.1's formulas, re-created as reference loops --------------------------------------------

def verl_agg_loss(loss_mat, loss_mask, mode, dp_size=1, batch_num_tokens=None, global_batch_size=None,
                  loss_scale_factor=None):
    """verl 0.9.1 ``core_algos.agg_loss``, one row per response."""
    rows = []
    for i in range(loss_mat.shape[0]):
        valid = [t for t in range(loss_mat.shape[1]) if loss_mask[i, t] > 0]
        rows.append((sum(loss_mat[i, t] for t in valid), len(valid)))
    if mode == "token-mean":
        tokens = batch_num_tokens if batch_num_tokens is not None else sum(n for _, n in rows)
        return sum(s for s, _ in rows) / tokens * dp_size
    if mode == "token-sum":
        return sum(s for s, _ in rows) * dp_size
    if mode == "seq-mean-token-mean":
        per_sequence = [s / (n + 1e-8) for s, n in rows if n > 0]
    else:
        per_sequence = [s for s, n in rows if n > 0]
    sequences = global_batch_size if global_batch_size is not None else len(per_sequence)
    loss = sum(per_sequence) / sequences * dp_size
    if mode == "seq-mean-token-sum-norm":
        loss = loss / (loss_scale_factor or loss_mat.shape[-1])
    return loss


def verl_token_loss(kind, old, logp, adv, low, high, clip_c=20.0):
    """verl 0.9.1's per-token policy losses: cispo, dppo_tv, dppo_kl (bypass mode: old = rollout)."""
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    if kind == "cispo":
        return -torch.clamp(ratio, 1 - low, 1 + high).detach() * adv * logp
    prob, old_prob = logp.exp(), old.exp()
    if kind == "dppo_tv":
        pos, neg = (prob - old_prob) <= high, (prob - old_prob) >= -low
    else:
        kl = old_prob * (old - logp) + (1 - old_prob) * torch.log((1.0 - old_prob + 1e-8) / (1.0 - prob + 1e-8))
        pos, neg = (kl <= high) | (prob <= old_prob), (kl <= low) | (prob >= old_prob)
    valid = torch.where(adv > 0, pos, neg).detach().float()
    return -adv * torch.clamp(ratio, max=clip_c).detach() * logp * valid


def gradient(fn):
    old, logp, adv, mask = tensors(2)
    x = logp.clone().requires_grad_(True)
    loss = fn(old, x, adv, mask)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("kind,name,params", [
    ("cispo", "cispo", {}), ("dppo_tv", "dppo", {"divergence": "binary_tv"}),
    ("dppo_kl", "dppo", {"divergence": "binary_kl"})])
@pytest.mark.parametrize("mode", ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                                  "seq-mean-token-sum-norm"])
def test_verl_clip_names_give_verls_own_loss(kind, name, params, mode):
    """verl's numbers passed in verl's convention (CISPO's relative bounds, DPPO's threshold) give
    verl's own loss and gradient, in every aggregation."""
    low, high = (0.2, 0.28) if kind == "cispo" else (0.05, 0.05)
    fn = verl_policy_loss(name, clip_ratio_low=low, clip_ratio_high=high, **params)
    info = {"global_batch_info": {"dp_size": 1, "loss_scale_factor": T}}
    ours = gradient(lambda o, x, a, m: verl_style_call(fn, o, x, a, m, mode, info)[0])
    theirs = gradient(lambda o, x, a, m: verl_agg_loss(verl_token_loss(kind, o, x, a, low, high), m, mode,
                                                       loss_scale_factor=T))
    assert theirs[1].abs().max() > 1e-3
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-5, atol=1e-7)
    if kind == "cispo":  # the registry's absolute bounds are what the relative ones mean
        direct = verl_policy_loss("cispo", lower=1 - low, cap=1 + high)
        torch.testing.assert_close(gradient(lambda o, x, a, m: verl_style_call(direct, o, x, a, m, mode, info)[0])[1],
                                   ours[1])


@pytest.mark.parametrize("mode", ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                                  "seq-mean-token-sum-norm"])
def test_data_parallel_ranks_average_to_the_global_loss(mode):
    """Two ranks with verl's global counts: the mean of the ranks' losses (what DDP/FSDP average) is the
    loss of the whole batch, as verl's agg_loss makes it."""
    old, logp, adv, mask = tensors(3)
    fn = verl_policy_loss("cispo", clip_ratio_low=0.2, clip_ratio_high=0.28)
    info = {"global_batch_info": {"dp_size": 2, "batch_num_tokens": int(mask.sum()), "global_batch_size": B,
                                  "loss_scale_factor": T}}
    ranks = [verl_style_call(fn, old[s], logp[s], adv[s], mask[s], mode, info)[0] for s in (slice(0, 2), slice(2, 4))]
    whole = verl_style_call(fn, old, logp, adv, mask, mode, {"global_batch_info": {"dp_size": 1, "loss_scale_factor": T}})[0]
    torch.testing.assert_close(sum(ranks) / 2, whole)
    reference = verl_agg_loss(verl_token_loss("cispo", old, logp, adv, 0.2, 0.28), mask, mode, loss_scale_factor=T)
    torch.testing.assert_close(whole, reference, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode,needed", [("token-mean", "batch_num_tokens"), ("seq-mean-token-mean", "global_batch_size"),
                                         ("seq-mean-token-sum", "global_batch_size"),
                                         ("seq-mean-token-sum-norm", "global_batch_size")])
def test_data_parallel_without_global_counts_is_an_error(mode, needed):
    """verl 0.9.1 raises here; local counts would weight the ranks unequally."""
    old, logp, adv, mask = tensors()
    fn = verl_policy_loss("grpo")
    with pytest.raises(MethodConfigError, match=f"dp_size=2 needs the global {needed}"):
        verl_style_call(fn, old, logp, adv, mask, mode, {"global_batch_info": {"dp_size": 2}})
    verl_style_call(fn, old, logp, adv, mask, "token-sum", {"global_batch_info": {"dp_size": 2}})  # needs none


def test_local_response_count_leaves_out_empty_responses():
    old, logp, adv, mask = tensors()
    mask[3] = 0
    fn = verl_policy_loss("grpo")
    loss = verl_style_call(fn, old, logp, adv, mask, "seq-mean-token-sum", None)[0]
    reference = get_method("grpo", aggregation="seq-mean-token-sum")(
        PolicyBatch(logp=logp, rollout_logp=old, advantages=adv, response_mask=mask.bool()), LossTotals(num_sequences=3))
    torch.testing.assert_close(loss, reference.loss)


def test_verl_clip_names_map_or_are_refused():
    from methods.verl import registry_params
    assert registry_params("grpo", {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28}) == {"eps_low": 0.2, "eps_high": 0.28}
    assert registry_params("cispo", {"clip_ratio": 0.25}) == {"lower": 0.75, "cap": 1.25}
    assert registry_params("dppo", {"clip_ratio": 0.1, "clip_ratio_c": 10.0, "divergence": "binary_tv"}) == {
        "delta": 0.1, "truncation_cap": 10.0, "divergence": "binary_tv"}
    with pytest.raises(MethodConfigError, match="one threshold"):
        registry_params("dppo", {"clip_ratio_low": 0.1, "clip_ratio_high": 0.2})
    with pytest.raises(MethodConfigError, match="describe only"):
        registry_params("cppo", {"clip_ratio": 0.1})
    with pytest.raises(MethodConfigError, match="given both"):
        registry_params("cispo", {"clip_ratio_high": 0.28, "cap": 5.0})
    with pytest.raises(MethodConfigError, match="dual-clip"):
        registry_params("grpo", {"clip_ratio_c": 3.0})


def test_verl_corrections_the_loss_would_ignore_are_refused():
    old, logp, adv, mask = tensors()
    fn = verl_policy_loss("grpo")
    bypass = {"policy_loss": {"rollout_correction": {"rollout_is": "token", "rollout_rs": None, "bypass_mode": True}}}
    with pytest.raises(MethodConfigError, match="rollout_correction.rollout_is is set"):
        verl_style_call(fn, old, logp, adv, mask, "token-mean", OmegaConf.create(bypass))
    bypass["policy_loss"]["rollout_correction"]["rollout_is"] = None
    verl_style_call(fn, old, logp, adv, mask, "token-mean", OmegaConf.create(bypass))


def test_a_verl_config_with_other_clip_values_is_reported_once():
    old, logp, adv, mask = tensors()
    fn = verl_policy_loss("cispo", cap=5.0)
    config = OmegaConf.create({"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.28})
    with pytest.warns(UserWarning, match="cispo: verl's actor config"):
        verl_style_call(fn, old, logp, adv, mask, "token-mean", config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verl_style_call(fn, old, logp, adv, mask, "token-mean", config)  # once per loss
        agreeing = verl_policy_loss("cispo", clip_ratio_low=0.2, clip_ratio_high=0.28)
        verl_style_call(agreeing, old, logp, adv, mask, "token-mean", config)
