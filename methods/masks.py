"""Mask rules M_t ∈ [0, 1] — one short function per trust region (docs/methods.md).

Every rule reads a TokenContext and its typed params and returns a MaskResult: the detached mask
(0 on padding), its rule-specific metrics, and per-token details for diagnostics and figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .batch import BatchError
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


def two_sided_divergence_mask(ctx: TokenContext, params) -> MaskResult:
    """prime-rl's default loss (``default_loss_fn``): DPPO's mask with a threshold per advantage sign,
    keep if toward μ or D_t ≤ (δ if A > 0 else δ_low)."""
    low = params.delta if params.delta_low is None else params.delta_low
    return _keep(ctx, ctx.toward_mu | (ctx.divergence <= _by_sign(ctx, params.delta, low)))


def sequence_clip_mask(ctx: TokenContext, params) -> MaskResult:
    """GSPO (arXiv 2507.18071 Eq. 5-7; TRL importance_sampling_level="sequence"): GRPO's clip applied to
    the sequence ratio ρ_seq = exp(mean_t log ρ_t), so a response is kept or dropped whole."""
    a = ctx.advantages
    if bool(_varies_within_rows(ctx)):
        raise BatchError("advantages: gspo's sequence ratio needs one advantage per response ([B], or [B, T] "
                         "constant along each response); these vary within a response")
    seq_ratio = ctx.sequence_ratio()
    keep = ((a * (seq_ratio - 1.0) <= 0) | ((a > 0) & (seq_ratio <= 1.0 + params.eps_high))
            | ((a < 0) & (seq_ratio >= 1.0 - params.eps_low)))
    result = _keep(ctx, keep)
    result.metrics["seq_acceptance_rate"] = _response_share(ctx, ((result.mask > 0) | ~ctx.valid).all(-1))
    result.details["sequence_ratio"] = seq_ratio
    return result


def opsm_mask(ctx: TokenContext, params) -> MaskResult:
    """GRPO's clip times DeepSeek-V3.2's off-policy sequence mask (arXiv 2512.02556 Eq. 9; TRL
    ``get_off_policy_mask``): a token is also dropped when A < 0 and its response's mean
    log μ − log π (a k1 estimate of KL(μ‖π)) exceeds δ — TRL multiplies it into the loss in use."""
    seq_kl = -ctx.sequence_log_ratio()
    off_policy = (ctx.advantages < 0) & (seq_kl[:, None] > params.delta)
    result = _keep(ctx, ppo_clip_mask(ctx, params).mask.bool() & ~off_policy)
    result.metrics["seq_acceptance_rate"] = _response_share(ctx, ~(off_policy & ctx.valid).any(-1))
    result.details["sequence_kl"] = seq_kl
    return result


def sigmoid_gate(ctx: TokenContext, params) -> MaskResult:
    """SAPO (arXiv 2511.20347; TRL loss_type="sapo"): the soft gate M_t = 4σ(x)(1 − σ(x)), x = τ(ρ_t − 1),
    τ by the sign of A — the derivative of (4/τ)σ(τ(ρ−1)) over ρ, so −A·M·ρ·∇log π is TRL's gradient.
    M = 1 at ρ = 1 and decays smoothly away from it in both directions (no toward-μ exemption)."""
    tau = _by_sign(ctx, params.temperature_pos, params.temperature_neg)
    s = torch.sigmoid(tau * (ctx.ratio - 1.0))
    gate = torch.where(ctx.valid, 4.0 * s * (1.0 - s), torch.zeros_like(s))
    ctx.extras["temperature"] = tau  # the ratio form's surrogate reads it
    return MaskResult(mask=gate, details={"temperature": tau})


def _varies_within_rows(ctx: TokenContext) -> torch.Tensor:
    """Whether any response's advantage differs between its valid tokens (padding may hold anything)."""
    big = torch.finfo(ctx.advantages.dtype).max
    high = torch.where(ctx.valid, ctx.advantages, torch.full_like(ctx.advantages, -big)).amax(-1)
    low = torch.where(ctx.valid, ctx.advantages, torch.full_like(ctx.advantages, big)).amin(-1)
    return ((high != low) & (ctx.lengths > 0)).any()


def _by_sign(ctx: TokenContext, if_positive: float, otherwise: float) -> torch.Tensor:
    """[B, T] ``if_positive`` where A > 0, else ``otherwise`` (the rules' per-sign parameters)."""
    return torch.where(ctx.advantages > 0, torch.full_like(ctx.ratio, if_positive), torch.full_like(ctx.ratio, otherwise))


def _response_share(ctx: TokenContext, accepted: torch.Tensor) -> torch.Tensor:
    """Share of the non-empty responses that ``accepted`` [B] marks (NaN without one)."""
    has_tokens = ctx.lengths > 0
    return accepted[has_tokens].float().mean() if bool(has_tokens.any()) else torch.tensor(NAN)


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
    """w_t = 1 − (1 − w_min)(t − 1)/max(T_i − 1, 1) per response (Eq. 9), or with T_i the padded length
    (``position_span="padded"``); 0 on padding.
    'uniform' gives w ≡ 1; 'shuffled' permutes each response's weights, keyed by
    (shuffle_seed, sequence id) so the permutation is independent of micro-batching."""
    valid = ctx.valid
    if params.position_weights == "uniform":
        return valid.to(dtype)
    t = ctx.position.to(dtype)
    if params.position_span == "padded":
        # verl PR #6731: t is the column (a masked gap still advances it), one span for every row — the
        # horizon, or the batch's width where none is set (verl pads every batch to max_response_length)
        t = torch.arange(1, valid.shape[-1] + 1, dtype=dtype, device=valid.device).expand_as(t)
        padded = params.horizon if params.horizon is not None else valid.shape[-1]
        w = 1.0 - (1.0 - params.w_min) * ((t - 1.0) / max(padded - 1, 1)).clamp(0.0, 1.0)
    else:
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
