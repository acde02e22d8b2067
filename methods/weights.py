"""Weight rules W_t (detached importance weights) of the one loss form −A·M·sg(W)·logp, and the
differentiable surrogates s_t of its ratio form −A·s_t (``loss_form="ratio"``), whose gradient is
A·M·W·∇log π wherever no cap binds."""

from __future__ import annotations

from dataclasses import dataclass, field

import math

import torch

from .context import TokenContext


@dataclass
class WeightResult:
    weight: torch.Tensor
    metrics: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)


def _on_valid(ctx: TokenContext, weight: torch.Tensor) -> torch.Tensor:
    return torch.where(ctx.valid, weight, torch.zeros_like(weight))


def truncated_ratio(ctx: TokenContext, params) -> WeightResult:
    """W_t = min(ρ_t, C): truncated importance sampling (TIS); C = inf gives plain IS (PG-IS)."""
    cap = params.truncation_cap
    weight = ctx.ratio.clamp(max=cap)
    return WeightResult(_on_valid(ctx, weight), {"truncated_fraction": ctx.fraction(ctx.ratio > cap)})


def clipped_ratio(ctx: TokenContext, params) -> WeightResult:
    """CISPO (MiniMax-M1, arXiv 2506.13585 Eq. 4): W_t = clip(ρ_t, lower, cap), no mask."""
    return _clip(ctx, ctx.ratio, params)


def minpro_weight(ctx: TokenContext, params) -> WeightResult:
    """MinPRO (arXiv 2601.22718): W_t = clip(ρ̲_t · ρ_t, lower, cap) with the prefix minimum
    ρ̲_t = min_{j<t} ρ_j (strict; ρ̲_1 = 1) as a non-cumulative stand-in for Π_{j<t} ρ_j."""
    inf = torch.full_like(ctx.log_ratio, float("inf"))
    running_min = torch.where(ctx.valid, ctx.log_ratio, inf).cummin(-1).values
    if not params.inclusive_min:
        running_min = torch.cat([inf[:, :1], running_min[:, :-1]], dim=-1)
    log_prefix = torch.where(torch.isinf(running_min), torch.zeros_like(running_min), running_min)
    if params.cap_prefix_at_one:
        log_prefix = log_prefix.clamp(max=0.0)
    prefix_ratio = log_prefix.exp()
    result = _clip(ctx, (log_prefix + ctx.log_ratio).exp(), params)
    result.metrics["prefix_ratio_mean"] = ctx.mean(prefix_ratio)
    result.details["prefix_ratio"] = _on_valid(ctx, prefix_ratio)
    return result


def _clip(ctx: TokenContext, raw: torch.Tensor, params) -> WeightResult:
    weight = raw.clamp(min=params.lower, max=params.cap)
    metrics = {"cap_hit_fraction": ctx.fraction(raw > params.cap)}
    if params.lower is not None:
        metrics["lower_clip_fraction"] = ctx.fraction(raw < params.lower)
    return WeightResult(_on_valid(ctx, weight), metrics)


def plain_ratio(ctx: TokenContext, params) -> WeightResult:
    """W_t = ρ_t (SAPO: its soft gate is the mask)."""
    return WeightResult(_on_valid(ctx, ctx.ratio))


def unit_weight(ctx: TokenContext, params) -> WeightResult:
    """W_t = 1 (DRO: the policy term is A·log π, no importance weight)."""
    return WeightResult(ctx.valid.float())


def sequence_ratio(ctx: TokenContext, params) -> WeightResult:
    """GSPO: W_t = min(ρ_seq, C) on every token of the response. The aggregation weighs a response's
    tokens equally, so this equals the gradient of the sequence ratio spread over its tokens."""
    seq_ratio = ctx.sequence_ratio()
    cap = params.truncation_cap
    return WeightResult(_on_valid(ctx, seq_ratio.clamp(max=cap)), {"truncated_fraction": ctx.fraction(seq_ratio > cap)})


# VESPO's clamps, as TRL's ``get_gamma_weights`` sets them
VESPO_LOG_W_MIN = math.log(1e-8)
VESPO_LOG_W_MAX = 20.0
VESPO_LAMBDA_MIN = 1e-4


def gamma_weight(ctx: TokenContext, params) -> WeightResult:
    """VESPO (TRL ``get_gamma_weights``): W = φ(w) = exp(λ + k·log w − λ·w) per response, with
    log w = clamp(Σ_t log ρ_t, log 1e-8, 20) and (k, λ) by the sign of A (A ≥ 0: pos); φ(1) = 1."""
    log_w = ctx.log_ratio.sum(-1, keepdim=True).clamp(VESPO_LOG_W_MIN, VESPO_LOG_W_MAX)
    nonneg = ctx.advantages >= 0
    k = torch.where(nonneg, params.k_pos, params.k_neg)
    lam = torch.where(nonneg, params.lambda_pos, params.lambda_neg).clamp(min=VESPO_LAMBDA_MIN)
    phi = (lam + k * log_w - lam * log_w.exp()).exp().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    return WeightResult(_on_valid(ctx, phi), details={"sequence_log_ratio": log_w.squeeze(-1)})


def drpo_weight(ctx: TokenContext, params) -> WeightResult:
    """DRPO (arXiv 2606.09821 §3; UniRL ``_drpo_loss``): the gradient of −A·ρ + |A|·μ(ρ−1)²/(2ε) is
    −A·W·∇log π with W = ρ·(1 − sign(A)·μ·(ρ − 1)/ε), μ the sampled token's rollout probability: a
    smooth trust region that turns negative (corrective) beyond |π − μ| = ε."""
    weight = ctx.ratio * (1.0 - ctx.advantages.sign() * ctx.rollout_prob() * (ctx.ratio - 1.0) / params.eps)
    return WeightResult(_on_valid(ctx, weight))


# --- ratio-form surrogates: the whole term M·s_t, differentiable through ``log_ratio`` (clamped log ρ) ------

def sapo_surrogate(ctx: TokenContext, params, mask, log_ratio):
    """(4/τ)·σ(τ(ρ − 1)), TRL's SAPO loss; its gate M is its derivative over ρ (``masks.sigmoid_gate``)."""
    tau = ctx.extras["temperature"]
    return torch.sigmoid(tau * (log_ratio.exp() - 1.0)) * 4.0 / tau


def sequence_surrogate(ctx: TokenContext, params, mask, log_ratio):
    """M·min(ρ_seq, C) with ρ_seq = exp(mean_t log ρ_t) differentiable through every token (TRL's GSPO)."""
    log_seq = log_ratio.sum(-1, keepdim=True) / ctx.lengths.clamp_min(1)[:, None]
    return mask * log_seq.exp().clamp(max=params.truncation_cap)


def drpo_surrogate(ctx: TokenContext, params, mask, log_ratio):
    """ρ − sign(A)·μ·(ρ − 1)²/(2ε), so −A·s = −A·ρ + |A|·μ·(ρ − 1)²/(2ε) (UniRL ``_drpo_loss``)."""
    ratio = log_ratio.exp()
    return ratio - ctx.advantages.sign() * ctx.rollout_prob() * (ratio - 1.0).square() / (2.0 * params.eps)
