"""Weight rules W_t (detached importance weights) of the one loss form −A·M·sg(W)·logp."""

from __future__ import annotations

from dataclasses import dataclass, field

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
