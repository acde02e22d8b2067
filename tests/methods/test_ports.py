"""DRPO, DRO, prime-rl's default loss and the CPPO presets against the code of the projects they come from.

None of those projects installs on CPU here (UniRL needs its distributed stack, verl PR #6731 is
unmerged, prime-rl pins CUDA kernels), so each reference below is a transcription of the named
function, reviewed line by line against the cited file and commit; the names of intermediate values
follow the source. Where ``TRH_UNIRL_SRC`` names a UniRL checkout, the real ``_drpo_loss`` and
``_cppo_mask`` are also run (taken out of their modules, which import UniRL's runtime).
"""

import ast
import math
import os
from pathlib import Path

import pytest
import torch

from methods import aggregate, get_method

ROWS, LENGTH = 5, 12


def tensors(seed: int, drift: float = 0.5, lengths=None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(ROWS, LENGTH, 6, generator=g)
    mu_logits = logits + drift * torch.randn(ROWS, LENGTH, 6, generator=g)
    ids = torch.randint(0, 6, (ROWS, LENGTH), generator=g)
    logp = logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    mu = mu_logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    if lengths is None:
        lengths = torch.randint(1, LENGTH + 1, (ROWS,), generator=g)
    mask = torch.arange(LENGTH)[None] < torch.as_tensor(lengths)[:, None]
    return logp, mu, mask, torch.randn(ROWS, generator=g)


def registry(name, logp, mu, mask, adv, horizon=LENGTH, **params):
    leaf = logp.clone().requires_grad_(True)
    out = get_method(name, horizon=horizon, **params)({"logp": leaf, "rollout_logp": mu, "advantages": adv,
                                                       "response_mask": mask})
    (grad,) = torch.autograd.grad(out.loss, leaf)
    return out, grad


def reference(per_token, logp, mask, aggregation, horizon=LENGTH):
    """Aggregate a reference's per-token loss (a function of the leaf log-probs); its loss and gradient."""
    leaf = logp.clone().requires_grad_(True)
    token_loss = torch.where(mask, per_token(leaf), torch.zeros_like(leaf))
    loss = aggregate(token_loss, mask, aggregation, horizon=horizon)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


# --- transcriptions ---------------------------------------------------------------------------------

def unirl_drpo_per_token(new_logp, old_logp, advantages, epsilon):
    """Tencent-Hunyuan/UniRL unirl/algorithms/drpo.py ``_drpo_loss`` (commit 1a7b501), mu_weighted=True."""
    log_diff = torch.clamp(new_logp - old_logp, min=-20.0, max=20.0)
    ratio = torch.exp(log_diff)
    adv = advantages.detach()
    old_prob = torch.exp(old_logp).detach()
    quadratic_penalty = adv.abs() * old_prob * (ratio - 1.0).square() / (2.0 * epsilon)
    return -adv * ratio + quadratic_penalty


def unirl_cppo_keep(new_logp, old_logp, advantages, lengths, delta, w_min, delta_b):
    """UniRL unirl/algorithms/cppo.py ``_cppo_mask`` (commit e1211ee, PR #58) on packed tokens."""
    ratio = torch.exp(torch.clamp(new_logp - old_logp, -20.0, 20.0))
    D_all = (torch.exp(new_logp) - torch.exp(old_logp)).abs()
    toward_mu = (advantages * (ratio - 1.0)) <= 0.0
    parts = []
    for D_t, toward_t in zip(torch.split(D_all, lengths), torch.split(toward_mu, lengths)):
        T = int(D_t.shape[0])
        pos = torch.arange(1, T + 1, dtype=D_t.dtype)
        w_t = 1.0 - (1.0 - w_min) * (pos - 1) / max(T - 1, 1)
        Z_t = w_t * D_t
        S_prev = torch.cat([Z_t.new_zeros(1), torch.cumsum(Z_t, dim=0)[:-1]])
        W_prev = torch.cat([w_t.new_zeros(1), torch.cumsum(w_t, dim=0)[:-1]])
        delta_b_seq = torch.quantile(D_t, q=0.9).clamp(min=delta_b, max=2.0 * delta_b)
        c_t = torch.minimum(torch.full_like(Z_t, delta), delta + delta_b_seq * W_prev - S_prev)
        parts.append(toward_t | (Z_t <= c_t))
    return torch.cat(parts).float()


def verl_pr6731_keep(old_log_prob, log_prob, advantages, response_mask, delta, w_min, delta_b,
                     delta_b_max_factor=5.0):
    """verl PR #6731 ``compute_policy_loss_cppo`` (verl/trainer/ppo/core_algos.py), the mask under no_grad,
    with the upper clamp of its commit "tune hyperparameter" (5·δ_b; the first version had 2·δ_b)."""
    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0))
    response_mask_f = response_mask.float()
    D_t = (torch.exp(log_prob) - torch.exp(old_log_prob)).abs() * response_mask_f
    bs, resp_len = response_mask_f.shape
    T_fixed = float(resp_len)
    pos = torch.arange(1, resp_len + 1).unsqueeze(0).expand(bs, -1).float()
    frac = ((T_fixed - pos) / max(T_fixed - 1.0, 1.0)).clamp(0.0, 1.0)
    w_t = (w_min + (1.0 - w_min) * frac) * response_mask_f
    Z_t = w_t * D_t
    S_cum, W_cum = torch.cumsum(Z_t, dim=-1), torch.cumsum(w_t, dim=-1)
    S_prev = torch.cat([torch.zeros_like(S_cum[:, :1]), S_cum[:, :-1]], dim=-1)
    W_prev = torch.cat([torch.zeros_like(W_cum[:, :1]), W_cum[:, :-1]], dim=-1)
    D_for_q = torch.where(response_mask_f.bool(), D_t, torch.full_like(D_t, float("nan")))
    q_seq = torch.nan_to_num(torch.nanquantile(D_for_q, q=0.9, dim=-1), nan=delta_b)
    delta_b_seq = q_seq.clamp(min=delta_b, max=delta_b_max_factor * delta_b).unsqueeze(-1)
    c_t = (delta + delta_b_seq * W_prev - S_prev).clamp(max=delta)
    toward_mu = (advantages * (ratio - 1.0)) <= 0.0
    return ((toward_mu | (Z_t <= c_t)).float() * response_mask_f), ratio


def prime_default_per_token(trainer_logprobs, inference_logprobs, advantages, mask_low, mask_high, kl_tau):
    """PrimeIntellect-ai/prime-rl src/prime_rl/trainer/rl/loss.py ``default_loss_fn`` (commit 559b447),
    adv_tau = 1, per token before its per-sample sum."""
    log_importance_ratio = trainer_logprobs - inference_logprobs
    importance_ratio = torch.exp(log_importance_ratio)
    probs_diff = torch.exp(trainer_logprobs) - torch.exp(inference_logprobs)
    invalid = torch.where(advantages > 0, probs_diff.detach() > mask_high, probs_diff.detach() < -mask_low)
    pg_loss = (~invalid) * advantages * importance_ratio
    return -pg_loss + kl_tau * log_importance_ratio ** 2


def dro_per_token(log_prob, old_log_prob, advantages, beta):
    """verl PR #7245 ``dro``: −(log π·A − ½β(log π − log μ)²)."""
    return -(log_prob * advantages - 0.5 * beta * (log_prob - old_log_prob) ** 2)


# --- tests ------------------------------------------------------------------------------------------

AGGREGATIONS = ["token-mean", "seq-mean-token-sum-norm", "seq-mean-token-mean", "seq-mean-token-sum"]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_drpo_equals_unirl(seed, aggregation):
    logp, mu, mask, adv = tensors(seed, drift=1.0)
    eps = 0.3  # small enough that the quadratic bends the gradient on these tensors
    adv_t = adv[:, None].expand_as(logp)
    want, want_grad = reference(lambda lp: unirl_drpo_per_token(lp, mu, adv_t, eps), logp, mask, aggregation)
    for loss_form in ("ratio", "reinforce"):
        out, grad = registry("drpo", logp, mu, mask, adv, aggregation=aggregation, eps=eps, loss_form=loss_form)
        torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-7)
        if loss_form == "ratio":
            torch.testing.assert_close(out.loss.detach(), want, rtol=1e-6, atol=1e-7)
    pg_only = registry("pg_is", logp, mu, mask, adv, aggregation=aggregation)[1]
    assert (want_grad - pg_only).abs().max() > 1e-3  # the penalty matters here


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_dro_equals_verl(seed, aggregation):
    logp, mu, mask, adv = tensors(seed)
    adv_t = adv[:, None].expand_as(logp)
    want, want_grad = reference(lambda lp: dro_per_token(lp, mu, adv_t, 0.7), logp, mask, aggregation)
    out, grad = registry("dro", logp, mu, mask, adv, aggregation=aggregation, beta=0.7)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.loss.detach(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_prime_dppo_equals_prime_rl(seed, aggregation):
    logp, mu, mask, adv = tensors(seed, drift=0.8)
    adv_t = adv[:, None].expand_as(logp)
    low, high, tau = 0.05, 0.1, 0.01
    want, want_grad = reference(lambda lp: prime_default_per_token(lp, mu, adv_t, low, high, tau), logp, mask,
                                aggregation)
    out, grad = registry("prime_dppo", logp, mu, mask, adv, aggregation=aggregation, delta=high, delta_low=low, tau=tau)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.loss.detach(), want, rtol=1e-5, atol=1e-6)
    assert 0 < out.metrics["mask_fraction"] < 1


def packed(x, mask):
    return x[mask]


@pytest.mark.parametrize("seed", range(4))
def test_cppo_unirl_preset_equals_unirl(seed):
    logp, mu, mask, adv = tensors(seed, drift=0.6)
    delta, w_min, delta_b = 0.05, 0.6, 0.01
    lengths = mask.sum(-1).tolist()
    adv_tokens = packed(adv[:, None].expand_as(logp), mask)
    keep = unirl_cppo_keep(packed(logp, mask), packed(mu, mask), adv_tokens, lengths, delta, w_min, delta_b)
    out, grad = registry("cppo@unirl", logp, mu, mask, adv, aggregation="token-mean", delta=delta, w_min=w_min,
                         delta_b=delta_b)
    assert packed(out.mask, mask).tolist() == keep.tolist()
    assert 0 < float(keep.mean()) < 1
    # the loss: UniRL's −A·ρ·keep, token-mean over the packed tokens
    leaf = logp.clone().requires_grad_(True)
    ratio = torch.exp(torch.clamp(packed(leaf, mask) - packed(mu, mask), -20.0, 20.0))
    want = (-adv_tokens * ratio * keep).mean()
    (want_grad,) = torch.autograd.grad(want, leaf)
    torch.testing.assert_close(out.loss.detach(), want.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("horizon", [LENGTH, LENGTH + 8])
def test_cppo_verl_preset_equals_verl_pr(seed, horizon):
    """verl pads every response to max_response_length: the registry's horizon is that padded length."""
    logp, mu, mask, adv = tensors(seed, drift=0.6)
    pad = horizon - LENGTH
    logp_p, mu_p = (torch.nn.functional.pad(x, (0, pad), value=0.0) for x in (logp, mu))
    mask_p = torch.nn.functional.pad(mask, (0, pad), value=False)
    delta, w_min, delta_b = 0.05, 0.5, 0.01
    keep, ratio = verl_pr6731_keep(mu_p, logp_p, adv[:, None], mask_p, delta, w_min, delta_b)
    out, grad = registry("cppo@verl-pr6731", logp, mu, mask, adv, horizon=horizon, aggregation="token-mean",
                         delta=delta, w_min=w_min, delta_b=delta_b)
    assert out.mask.tolist() == keep[:, :LENGTH].tolist()
    assert 0 < float(keep[mask_p].mean()) < 1
    leaf = logp_p.clone().requires_grad_(True)
    pg_losses = -adv[:, None] * ratio.clamp(max=20.0).detach() * leaf * keep
    want = (pg_losses * mask_p).sum() / mask_p.sum()  # verl agg_loss token-mean
    (want_grad,) = torch.autograd.grad(want, leaf)
    torch.testing.assert_close(out.loss.detach(), want.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, want_grad[:, :LENGTH], rtol=1e-5, atol=1e-8)


def test_the_position_span_changes_the_mask():
    """The span alone (everything else equal) changes CPPO's mask on responses shorter than the horizon."""
    logp, mu, mask, adv = tensors(3, drift=0.8, lengths=[12, 4, 9, 2, 7])
    params = dict(horizon=64, delta=0.1, w_min=0.5, delta_b=0.02, divergence="binary_tv")
    own = registry("cppo", logp, mu, mask, adv, position_span="response", **params)[0]
    padded = registry("cppo", logp, mu, mask, adv, position_span="padded", **params)[0]
    assert not torch.equal(own.mask, padded.mask)


@pytest.mark.parametrize("seed", range(3))
def test_cppo_verl_preset_numbers_positions_by_column_across_masked_gaps(seed):
    """verl masks tool output inside a response (multi-turn): its position index still advances there."""
    logp, mu, mask, adv = tensors(seed, drift=0.6, lengths=[LENGTH] * ROWS)
    mask[:, 2:5] = False  # a masked gap in every response
    keep, _ = verl_pr6731_keep(mu, logp, adv[:, None], mask, 0.05, 0.5, 0.01)
    out, _ = registry("cppo@verl-pr6731", logp, mu, mask, adv, horizon=LENGTH, delta=0.05, w_min=0.5, delta_b=0.01)
    assert out.mask.tolist() == keep.tolist()


def _peer_function(path: Path, name: str):
    """One top-level function of a source file, run without importing its module."""
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    module = ast.fix_missing_locations(ast.Module(
        body=[ast.ImportFrom("__future__", [ast.alias("annotations")], 0), node], type_ignores=[]))
    scope = {"torch": torch, "math": math}
    exec(compile(module, str(path), "exec"), scope)  # noqa: S102 - the peer's own code, named by the user
    return scope[name]


UNIRL = os.environ.get("TRH_UNIRL_SRC")


@pytest.mark.skipif(not UNIRL, reason="set TRH_UNIRL_SRC to a UniRL checkout to run its own code")
def test_transcriptions_equal_unirl_own_code():
    root = Path(UNIRL)
    drpo = _peer_function(root / "unirl/algorithms/drpo.py", "_drpo_loss")
    logp, mu, mask, adv = tensors(0, drift=1.0)
    adv_t = adv[:, None].expand_as(logp)
    theirs, _ = drpo(new_logp=logp[mask], old_logp=mu[mask], advantages=adv_t[mask], epsilon=0.3)
    torch.testing.assert_close(theirs, unirl_drpo_per_token(logp, mu, adv_t, 0.3)[mask], rtol=0, atol=0)
    cppo_file = root / "unirl/algorithms/cppo.py"
    if cppo_file.exists():
        cppo = _peer_function(cppo_file, "_cppo_mask")
        lengths = mask.sum(-1)
        ratio = torch.exp(torch.clamp(logp - mu, -20, 20))
        theirs = cppo(new_logp=logp[mask], old_logp=mu[mask], advantages=adv_t[mask], ratio=ratio[mask],
                      lengths=lengths, delta=0.05, w_min=0.6, delta_b=0.01)
        ours = unirl_cppo_keep(logp[mask], mu[mask], adv_t[mask], lengths.tolist(), 0.05, 0.6, 0.01)
        assert theirs.tolist() == ours.tolist()
