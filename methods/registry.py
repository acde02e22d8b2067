"""The registry: every method is data — (params, mask rule, weight rule) over one loss form.

    ℓ_t = −A_t · M_t · sg(W_t) · logp_t  [+ κ·(logp_t − log μ_t)²]     (REINFORCE form, docs/methods.md)

``loss_form="ratio"`` replaces M·sg(W)·logp by the method's differentiable surrogate (min(ρ, C)·M by
default; SAPO's sigmoid, GSPO's sequence ratio, DRPO's quadratic) — the same gradient, the source's value.
The bracketed penalty (DRO, prime-rl) is the one term not proportional to A; its κ is ``params.penalty_coef``.

A new method: its params class (if new) in ``params.py``, one mask rule in ``masks.py`` (or weight
rule in ``weights.py``), one ``MethodSpec`` below, one hand-computed test — nothing else (the
registry is the one list of names; docs/methods.md, "Adding a method").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import masks, weights
from .aggregation import aggregate
from .batch import LossTotals, PolicyBatch
from .context import TokenContext
from .divergence import log_ratio, token_divergence
from .params import (ClippedWeightParams, CppoParams, DivergenceParams, DppoParams, DroParams, DrpoParams,
                     GrpoParams, GspoParams, LossParams, MethodConfigError, MinproParams, OpsmParams,
                     PrimeDppoParams, SapoParams, TrmParams, TruncatedParams, VespoParams, describe_fields)

# Metric names are part of the interface (docs/methods.md, "Metrics"); NaN where a metric does not apply.
METRIC_NAMES = (
    "policy_loss",
    "valid_tokens",
    "mask_fraction",            # share of valid tokens masked (masked mass for soft gates)
    "mask_fraction_pos_adv",    # ... among tokens with A > 0
    "mask_fraction_neg_adv",    # ... among tokens with A < 0
    "budget_mask_share",        # CPPO: masked by the prefix budget alone, over all masked tokens
    "divergence_mean",
    "divergence_p90",
    "delta_b_mean",             # CPPO: mean effective δ_b over responses
    "ratio_mean", "ratio_min", "ratio_max",   # ρ before truncation, over valid tokens
    "truncated_fraction",       # share of valid tokens with ρ > C
    "mismatch_abs_logp",        # mean |logp − logp_mu|
    "seq_acceptance_rate",      # TRM, GSPO, OPSM: share of non-empty responses the sequence-level test keeps
    "prefix_ratio_mean",        # MinPRO: mean ρ̲
    "cap_hit_fraction",         # CISPO / MinPRO
    "lower_clip_fraction",      # CISPO / MinPRO with a lower bound
)


@dataclass
class LossOutput:
    loss: torch.Tensor           # scalar, differentiable w.r.t. batch.logp
    mask: torch.Tensor           # [B, T] M_t, detached, 0 on padding
    weight: torch.Tensor         # [B, T] W_t, detached, 0 on padding
    metrics: dict                # METRIC_NAMES → float
    details: dict = field(default_factory=dict)  # per-token tensors: divergence, thresholds, ...


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    params_cls: type
    mask_rule: Callable
    weight_rule: Callable
    defaults: dict = field(default_factory=dict)
    reference: str = ""
    surrogate: Optional[Callable] = None   # ratio form's M·s_t(log ρ); None: M·min(ρ, C)
    fixed: tuple = ()                      # defaults that name the method (a preset's conventions): not overridable


class Method:
    """A configured method: ``method(batch, totals=None) -> LossOutput``."""

    def __init__(self, spec: MethodSpec, params: LossParams):
        self.spec = spec
        self.params = params

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def divergence(self) -> Optional[str]:
        return self.params.divergence if isinstance(self.params, DivergenceParams) else None

    @property
    def needs_topk(self) -> bool:
        return isinstance(self.params, DivergenceParams) and self.params.needs_topk

    def __repr__(self) -> str:
        return f"Method({self.name!r}, {self.params})"

    def __call__(self, batch, totals: Optional[LossTotals] = None) -> LossOutput:
        batch = PolicyBatch.coerce(batch)
        top_k = self.params.top_k if self.needs_topk else None
        batch.validate(needs_topk=self.needs_topk, top_k=top_k)
        ctx = TokenContext.build(batch)
        with torch.no_grad():
            if self.divergence is not None:
                ctx.divergence = token_divergence(self.divergence, batch, self.params.top_k)
            mask_out = self.spec.mask_rule(ctx, self.params)
            weight_out = self.spec.weight_rule(ctx, self.params)

        # padding may hold NaN/inf log-probs: select before any arithmetic so no NaN reaches a gradient
        logp = torch.where(ctx.valid, batch.logp.float(), torch.zeros_like(ctx.ratio))
        ratio_form = getattr(self.params, "loss_form", "reinforce") == "ratio"
        if ratio_form and self.spec.surrogate is not None:
            token_loss = -ctx.advantages * self.spec.surrogate(ctx, self.params, mask_out.mask,
                                                               log_ratio(logp, ctx.rollout_logp))
        else:
            if ratio_form:
                surrogate = log_ratio(logp, ctx.rollout_logp).exp().clamp(max=self.params.truncation_cap)
            else:
                surrogate = weight_out.weight * logp
            token_loss = -ctx.advantages * mask_out.mask * surrogate
        penalty_coef = getattr(self.params, "penalty_coef", 0.0)
        if penalty_coef:  # on every valid token, masked or not, as DRO and prime-rl apply it
            token_loss = token_loss + penalty_coef * (logp - ctx.rollout_logp).square()
        token_loss = torch.where(ctx.valid, token_loss, torch.zeros_like(token_loss))
        loss = aggregate(token_loss, ctx.valid, self.params.aggregation, self.params.horizon, totals)

        metrics = _common_metrics(ctx, batch, mask_out.mask, loss)
        metrics.update(mask_out.metrics)
        metrics.update(weight_out.metrics)
        details = {**mask_out.details, **weight_out.details}
        if ctx.divergence is not None:
            details["divergence"] = ctx.divergence
        return LossOutput(loss=loss, mask=mask_out.mask, weight=weight_out.weight,
                          metrics=_to_floats(metrics), details=details)


@torch.no_grad()
def _common_metrics(ctx: TokenContext, batch: PolicyBatch, mask, loss) -> dict:
    nan = torch.tensor(float("nan"))
    valid = ctx.valid
    has_tokens = bool(valid.any())
    masked = 1.0 - mask
    metrics = {name: nan for name in METRIC_NAMES}
    metrics.update(
        policy_loss=loss.detach(),
        valid_tokens=valid.sum(),
        mask_fraction=ctx.fraction(masked),
        mask_fraction_pos_adv=ctx.fraction(masked, among=ctx.advantages > 0),
        mask_fraction_neg_adv=ctx.fraction(masked, among=ctx.advantages < 0),
        ratio_mean=ctx.mean(ctx.ratio),
        mismatch_abs_logp=ctx.mean((batch.logp.detach().float() - batch.rollout_logp.float()).abs()),
    )
    if has_tokens:
        metrics["ratio_min"] = ctx.ratio[valid].min()
        metrics["ratio_max"] = ctx.ratio[valid].max()
    if ctx.divergence is not None:
        metrics["divergence_mean"] = ctx.mean(ctx.divergence)
        if has_tokens:
            flat = ctx.divergence[valid][None, :]
            metrics["divergence_p90"] = masks.rowwise_quantile(flat, torch.ones_like(flat, dtype=torch.bool), 0.9)[0]
    return metrics


def _to_floats(metrics: dict) -> dict:
    names = list(metrics)
    values = torch.stack([torch.as_tensor(metrics[n]).detach().float().cpu().reshape(()) for n in names])
    return dict(zip(names, values.tolist()))  # one device sync for all metrics


# ---------------------------------------------------------------------------------------------
# The registry table

_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    unknown = set(spec.defaults) - {f for f in spec.params_cls.__dataclass_fields__}
    if unknown:
        raise ValueError(f"{spec.name}: defaults name unknown params {sorted(unknown)}")
    unknown_fixed = set(spec.fixed) - set(spec.params_cls.__dataclass_fields__)
    if unknown_fixed:
        raise ValueError(f"{spec.name}: fixed names unknown params {sorted(unknown_fixed)}")
    spec.params_cls(**spec.defaults)  # the registered defaults themselves must validate
    _REGISTRY[spec.name] = spec
    return spec


_CPPO_REF = "CPPO, arXiv 2606.10968 Eq. 8-10, Alg. 1"
# what a CPPO preset fixes; δ, w_min, δ_b, the quantile and top_k stay tunable
_CPPO_CONVENTIONS = ("divergence", "position_span", "delta_b_max_factor", "delta_b_max", "loss_form",
                     "truncation_cap", "budget", "position_weights", "prefix_budget", "gate")
for _spec in (
    MethodSpec("pg_is", "control without trust region: M = 1, W = ρ (no cap); shows what trust regions prevent",
               TruncatedParams, masks.no_mask, weights.truncated_ratio,
               {"truncation_cap": math.inf}, "DPPO, arXiv 2602.04879 §3 (PG-IS)"),
    MethodSpec("grpo", "PPO clip-higher mask (ε_low 0.2, ε_high 0.28) anchored to μ, W = min(ρ, C)",
               GrpoParams, masks.ppo_clip_mask, weights.truncated_ratio, {},
               "DeepSeekMath arXiv 2402.03300; DAPO arXiv 2503.14476"),
    MethodSpec("cispo", "no mask; clipped stop-gradient IS weight W = clip(ρ, lower, cap)",
               ClippedWeightParams, masks.no_mask, weights.clipped_ratio, {}, "MiniMax-M1, arXiv 2506.13585"),
    MethodSpec("minpro", "no mask; W = clip(ρ̲·ρ, lower, cap), ρ̲ = min of the ratios before t",
               MinproParams, masks.no_mask, weights.minpro_weight, {}, "MinPRO, arXiv 2601.22718"),
    MethodSpec("dppo", "divergence trust region: mask away-from-μ updates with D_t > δ (Top-K TV)",
               DppoParams, masks.divergence_threshold_mask, weights.truncated_ratio, {},
               "DPPO, arXiv 2602.04879 Eq. 3"),
    MethodSpec("trm_max", "sequence mask: keep a response iff max_t D_t ≤ δ_max (Top-K KL)",
               TrmParams, masks.trm_sequence_mask, weights.truncated_ratio,
               {"divergence": "topk_kl", "delta_max": 0.05, "delta_avg": None}, "TRM, arXiv 2512.23075"),
    MethodSpec("trm_avg", "sequence mask: keep a response iff mean_t D_t ≤ δ_avg (Top-K KL)",
               TrmParams, masks.trm_sequence_mask, weights.truncated_ratio,
               {"divergence": "topk_kl", "delta_max": None, "delta_avg": 0.001}, "TRM, arXiv 2512.23075"),
    MethodSpec("trm_max_avg", "sequence mask: both TRM conditions (δ_max 0.1, δ_avg 0.002)",
               TrmParams, masks.trm_sequence_mask, weights.truncated_ratio,
               {"divergence": "topk_kl", "delta_max": 0.1, "delta_avg": 0.002}, "TRM, arXiv 2512.23075"),
    MethodSpec("cppo", "position-weighted token test plus cumulative prefix budget (dynamic δ_b)",
               CppoParams, masks.cppo_mask, weights.truncated_ratio, {}, _CPPO_REF),
    MethodSpec("cppo_no_pw", "CPPO ablation: w_t ≡ 1, prefix budget kept",
               CppoParams, masks.cppo_mask, weights.truncated_ratio, {"position_weights": "uniform"},
               _CPPO_REF + ", Fig. 5a"),
    MethodSpec("cppo_no_pb", "CPPO ablation: position-weighted token test w_t D_t ≤ δ only",
               CppoParams, masks.cppo_mask, weights.truncated_ratio, {"prefix_budget": False},
               _CPPO_REF + ", Fig. 5a"),
    MethodSpec("cppo_shuffled", "CPPO ablation: like cppo_no_pb with each response's weights permuted",
               CppoParams, masks.cppo_mask, weights.truncated_ratio,
               {"prefix_budget": False, "position_weights": "shuffled"}, _CPPO_REF + ", Fig. 5b"),
    MethodSpec("cppo_soft", "CPPO with the soft gate M = min(1, 1/x_t) instead of the hard mask",
               CppoParams, masks.cppo_mask, weights.truncated_ratio, {"gate": "soft"},
               _CPPO_REF + ", App. C, Fig. 5c"),
    # CPPO as each port computes it: every convention fixed at once (docs/methods.md, "CPPO as each port computes it")
    MethodSpec("cppo@paper", "CPPO as the paper states it: Top-K TV (K 20), per-response T, δ_b in [δ_b, 2δ_b], "
               "ratio form −A·ρ·M without truncation", CppoParams, masks.cppo_mask, weights.truncated_ratio,
               {"divergence": "topk_tv", "top_k": 20, "position_span": "response", "delta_b_max_factor": 2.0,
                "loss_form": "ratio", "truncation_cap": math.inf, "budget": "dynamic", "position_weights": "linear",
                "prefix_budget": True, "gate": "hard"},
               _CPPO_REF + ", Eq. 11", fixed=_CPPO_CONVENTIONS),
    MethodSpec("cppo@unirl", "CPPO as Tencent-Hunyuan/UniRL computes it: Binary TV, per-response T, δ_b in "
               "[δ_b, 2δ_b], ratio form −A·ρ·M without truncation", CppoParams, masks.cppo_mask,
               weights.truncated_ratio,
               {"divergence": "binary_tv", "position_span": "response", "delta_b_max_factor": 2.0,
                "loss_form": "ratio", "truncation_cap": math.inf, "budget": "dynamic", "position_weights": "linear",
                "prefix_budget": True, "gate": "hard"},
               "UniRL unirl/algorithms/cppo.py (commit e1211ee)", fixed=_CPPO_CONVENTIONS),
    MethodSpec("cppo@verl-pr6731", "CPPO as verl PR #6731 computes it: Binary TV, padded T (the horizon), δ_b in "
               "[δ_b, 5δ_b], −A·sg(min(ρ, 20))·log π·M", CppoParams, masks.cppo_mask, weights.truncated_ratio,
               {"divergence": "binary_tv", "position_span": "padded", "delta_b_max_factor": 5.0,
                "loss_form": "reinforce", "truncation_cap": 20.0, "budget": "dynamic", "position_weights": "linear",
                "prefix_budget": True, "gate": "hard"},
               "verl PR #6731 compute_policy_loss_cppo (open)", fixed=_CPPO_CONVENTIONS),
    # rules users run elsewhere (docs/methods.md, "Where the newer rules come from, and how they are checked")
    MethodSpec("sapo", "soft sigmoid gate M = 4σ(x)(1−σ(x)), x = τ(ρ−1), τ by the sign of A; W = ρ",
               SapoParams, masks.sigmoid_gate, weights.plain_ratio, {},
               "SAPO arXiv 2511.20347; TRL 1.16 loss_type='sapo'", surrogate=weights.sapo_surrogate),
    MethodSpec("gspo", "GRPO's clip on the sequence ratio exp(mean_t log ρ_t); W = min(ρ_seq, C)",
               GspoParams, masks.sequence_clip_mask, weights.sequence_ratio, {"eps_low": 3e-4, "eps_high": 4e-4},
               "GSPO arXiv 2507.18071; TRL 1.16 importance_sampling_level='sequence'",
               surrogate=weights.sequence_surrogate),
    MethodSpec("vespo", "no mask; W = φ(w) = e^λ w^k e^(−λw) of the sequence ratio w = Π_t ρ_t (k, λ by the sign of A)",
               VespoParams, masks.no_mask, weights.gamma_weight, {}, "TRL 1.16 loss_type='vespo'"),
    MethodSpec("opsm", "GRPO's clip plus DeepSeek-V3.2's off-policy sequence mask: drop A < 0 responses whose "
               "mean log μ − log π exceeds δ", OpsmParams, masks.opsm_mask, weights.truncated_ratio, {},
               "DeepSeek-V3.2 arXiv 2512.02556 Eq. 9; TRL 1.16 off_policy_mask_threshold"),
    MethodSpec("drpo", "no mask; smooth μ-weighted trust region: −A·ρ + |A|·μ(ρ−1)²/(2ε)",
               DrpoParams, masks.no_mask, weights.drpo_weight, {},
               "DRPO arXiv 2606.09821 §3; UniRL unirl/algorithms/drpo.py", surrogate=weights.drpo_surrogate),
    MethodSpec("dro", "no mask, no importance weight: −A·log π + ½β(log π − log μ)²",
               DroParams, masks.no_mask, weights.unit_weight, {}, "verl PR #7245 (loss_mode='dro')"),
    MethodSpec("prime_dppo", "DPPO's Binary-TV mask with a threshold per advantage sign, −A·ρ·M, plus "
               "τ(log π − log μ)² on every token", PrimeDppoParams, masks.two_sided_divergence_mask,
               weights.truncated_ratio,
               {"divergence": "binary_tv", "delta": 0.2, "loss_form": "ratio", "truncation_cap": math.inf},
               "prime-rl src/prime_rl/trainer/rl/loss.py default_loss_fn"),
):
    register(_spec)


def list_methods() -> list[dict]:
    """Every registered method: name, description, reference and typed params with defaults."""
    return [{"name": s.name, "description": s.description, "reference": s.reference, "fixed": list(s.fixed),
             "params": describe_fields(s.params_cls, s.defaults)} for s in _REGISTRY.values()]


def method_names() -> list[str]:
    return list(_REGISTRY)


def get_method(name: str, **params) -> Method:
    """The registered method ``name`` configured with ``params`` (validated; errors name the field)."""
    if name not in _REGISTRY:
        raise MethodConfigError(f"unknown method {name!r}; registered: {', '.join(_REGISTRY)}")
    spec = _REGISTRY[name]
    allowed = list(spec.params_cls.__dataclass_fields__)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise MethodConfigError(f"{name}: unknown parameter(s) {unknown}; allowed: {', '.join(allowed)}")
    for key in (k for k in spec.fixed if k in params):
        fixed = spec.defaults.get(key, spec.params_cls.__dataclass_fields__[key].default)
        if params[key] != fixed:
            raise MethodConfigError(f"{name}: {key} is fixed at {fixed!r} (a convention the name "
                                    f"stands for); use cppo to change it, got {params[key]!r}")
    try:
        return Method(spec, spec.params_cls(**{**spec.defaults, **params}))
    except MethodConfigError as err:
        raise MethodConfigError(f"{name}: {err}") from None
