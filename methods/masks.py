"""Mask rules M_t ∈ [0, 1] — one short function per trust region (docs/methods.md).

Every rule reads a TokenContext and its typed params and returns a MaskResult: the detached mask
(0 on padding), its rule-specific metrics, and per-token details for diagnostics and figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .context import TokenContext
from .seeds import derive_seed

NAN = float("nan")


@dataclass
class MaskResult:
    mask: torch.Tensor
    metrics: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)


def _keep(ctx: TokenContext, keep: torch.Tensor) -> MaskResult:
    return MaskResult(mask=(keep & ctx.valid).float())


def no_mask(ctx: TokenContext, params) -> MaskResult:
    """M_t = 1: PG-IS, CISPO and MinPRO keep every token's gradient."""
    return _keep(ctx, ctx.valid)


def ppo_clip_mask(ctx: TokenContext, params) -> MaskResult:
    """GRPO with DAPO clip-higher (arXiv 2402.03300 Eq. 3; 2503.14476 §3.1), anchored to μ:
    keep if toward μ, or A>0 and ρ ≤ 1+ε_high, or A<0 and ρ ≥ 1−ε_low."""
    a, rho = ctx.advantages, ctx.ratio
    keep = ctx.toward_mu | ((a > 0) & (rho <= 1.0 + params.eps_high)) | ((a < 0) & (rho >= 1.0 - params.eps_low))
    return _keep(ctx, keep)


def divergence_threshold_mask(ctx: TokenContext, params) -> MaskResult:
    """DPPO (arXiv 2602.04879 Eq. 3): keep if toward μ or D_t ≤ δ."""
    return _keep(ctx, ctx.toward_mu | (ctx.divergence <= params.delta))


def trm_sequence_mask(ctx: TokenContext, params) -> MaskResult:
    """TRM (arXiv 2512.23075): keep a whole response iff max_t D_t ≤ δ_max and/or
    (1/T_i) Σ_t D_t ≤ δ_avg. No toward-μ exemption; empty responses are accepted."""
    d = ctx.divergence
    accept = torch.ones(d.shape[0], dtype=torch.bool, device=d.device)
    seq_max = d.amax(-1) if d.shape[-1] > 0 else torch.zeros_like(accept, dtype=d.dtype)
    seq_mean = d.sum(-1) / ctx.lengths.clamp_min(1)
    if params.delta_max is not None:
        accept &= seq_max <= params.delta_max
    if params.delta_avg is not None:
        accept &= seq_mean <= params.delta_avg
    result = _keep(ctx, accept[:, None].expand_as(ctx.valid))
    result.metrics["seq_acceptance_rate"] = accept.float().mean() if accept.numel() else torch.tensor(NAN)
    result.details.update(seq_max_divergence=seq_max, seq_mean_divergence=seq_mean)
    return result


# ---------------------------------------------------------------------------------------------
# CPPO (arXiv 2606.10968, Eq. 8–10, Algorithm 1, App. C)


def rowwise_quantile(values: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile over the valid entries with linear interpolation, bit-identical to
    ``torch.quantile`` on each row's valid values; NaN for rows without valid entries."""
    rows, length = values.shape
    if length == 0:
        return values.new_full((rows,), NAN)
    count = valid.sum(-1)
    ordered = torch.where(valid, values, torch.full_like(values, float("inf"))).sort(-1).values
    rank = (count - 1).clamp_min(0).to(values.dtype) * q
    below = rank.long()
    above = rank.ceil().long()
    lo = ordered.gather(-1, below[:, None]).squeeze(-1)
    hi = ordered.gather(-1, above[:, None]).squeeze(-1)
    out = torch.lerp(lo, hi, rank - below.to(values.dtype))
    return torch.where(count > 0, out, torch.full_like(out, NAN))


def position_weights(ctx: TokenContext, params, dtype=torch.float64) -> torch.Tensor:
    """w_t = 1 − (1 − w_min)(t − 1)/max(T_i − 1, 1) per response (Eq. 9); 0 on padding.
    'uniform' gives w ≡ 1; 'shuffled' permutes each response's weights, keyed by
    (shuffle_seed, sequence id) so the permutation is independent of micro-batching."""
    valid = ctx.valid
    if params.position_weights == "uniform":
        return valid.to(dtype)
    t = ctx.position.to(dtype)
    span = (ctx.lengths - 1).clamp_min(1).to(dtype)[:, None]
    w = 1.0 - (1.0 - params.w_min) * (t - 1.0) / span
    w = torch.where(valid, w, torch.zeros_like(w))
    if params.position_weights == "shuffled":
        for row in range(w.shape[0]):
            idx = valid[row].nonzero().squeeze(-1)
            gen = torch.Generator().manual_seed(
                derive_seed("shuffled_weights", params.shuffle_seed, int(ctx.sequence_ids[row])))
            perm = torch.randperm(idx.numel(), generator=gen).to(idx.device)
            w[row, idx] = w[row, idx[perm]]
    return w


def effective_delta_b(ctx: TokenContext, params, dtype=torch.float64) -> torch.Tensor:
    """δ_b per response: fixed, or clamp(P90 of its D_t, δ_b_min, δ_b_max) recomputed at every call
    (Eq. 22); an empty response falls back to δ_b_min."""
    rows = ctx.valid.shape[0]
    if params.budget == "fixed":
        return torch.full((rows,), params.delta_b, dtype=dtype, device=ctx.valid.device)
    p90 = rowwise_quantile(ctx.divergence.to(dtype), ctx.valid, params.budget_quantile)
    clamped = p90.clamp(params.delta_b, params.delta_b_upper)
    return torch.where(torch.isnan(p90), torch.full_like(p90, params.delta_b), clamped)


def _exclusive(cumulative: torch.Tensor) -> torch.Tensor:
    """Shift a cumsum right by one position: the sum over j < t (0 at t = 1). Padding adds 0 to a
    cumsum, so a shifted value at a response's first token is still that response's empty prefix."""
    return torch.nn.functional.pad(cumulative, (1, 0))[..., :-1]


def cppo_mask(ctx: TokenContext, params) -> MaskResult:
    """CPPO: keep if toward μ or I_t, I_t = (Z_t ≤ c_t), Z_t = w_t D_t,
    c_t = min(δ, δ + δ_b W_{t−1} − S_{t−1}) with per-response prefix sums S, W (Eq. 8–10).
    The soft gate (App. C) uses M_t = min(1, 1/x_t), x_t = max(Z_t/δ, S_t/(δ + δ_b W_{t−1}))."""
    delta = params.delta
    valid = ctx.valid
    dtype = torch.float64  # prefix sums in fp64: exact ties with the per-response loop of Algorithm 1
    d = ctx.divergence.to(dtype)
    w = position_weights(ctx, params, dtype)
    z = w * d
    details = {"position_weight": w, "weighted_divergence": z}
    if params.prefix_budget:
        delta_b = effective_delta_b(ctx, params, dtype)
        s_incl = z.cumsum(-1)
        s_prev = _exclusive(s_incl)
        w_prev = _exclusive(w.cumsum(-1))
        # δ_b may be inf (no budget); W_0 = 0 must then give 0, not inf·0 = NaN
        budget = torch.where(w_prev > 0, delta_b[:, None] * w_prev, torch.zeros_like(w_prev))
        prefix_threshold = delta + budget - s_prev
        threshold = prefix_threshold.clamp(max=delta)
        details.update(prefix_threshold=prefix_threshold, delta_b=delta_b, prefix_sum=s_incl)
    else:
        delta_b = None
        threshold = torch.full_like(z, delta)
    details["threshold"] = threshold
    token_ok = z <= delta
    feasible = z <= threshold
    if params.gate == "hard":
        gate = feasible.to(dtype)
    else:
        x = z / delta
        if params.prefix_budget:
            x = torch.maximum(x, s_incl / (delta + budget))
        gate = x.reciprocal().clamp(max=1.0)  # x = 0 → inf → 1
    mask = torch.where(ctx.toward_mu, torch.ones_like(gate), gate)
    mask = torch.where(valid, mask, torch.zeros_like(mask)).float()

    masked = valid & (mask < 1)
    budget_only = masked & token_ok & ~feasible
    metrics = {"budget_mask_share": ctx.fraction(budget_only, among=masked)}
    if delta_b is not None:
        has_tokens = ctx.lengths > 0
        metrics["delta_b_mean"] = (delta_b[has_tokens].mean() if bool(has_tokens.any())
                                   else torch.tensor(NAN)).float()
    return MaskResult(mask=mask, metrics=metrics, details=details)
