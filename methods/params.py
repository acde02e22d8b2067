"""Typed, validated parameters of every registry method.

Each method's parameters are a frozen dataclass. Fields carry their documentation in
``metadata["doc"]``; types are checked from the annotations (``Literal`` gives the allowed values),
ranges by each class's ``_check``. Every error names the offending field, so a bad sweep config
fails before any run starts.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional


class MethodConfigError(ValueError):
    """A method name or parameter is invalid. The message names the field and what is allowed."""


AGGREGATIONS = ("seq-mean-token-sum-norm", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
DIVERGENCES = ("topk_tv", "topk_kl", "binary_tv", "binary_kl", "k2", "k3")

Aggregation = Literal["seq-mean-token-sum-norm", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
Divergence = Literal["topk_tv", "topk_kl", "binary_tv", "binary_kl", "k2", "k3"]


def _doc(text: str, default):
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class LossParams:
    """Parameters every method shares: how token losses become one scalar."""

    aggregation: Aggregation = _doc(
        "how token losses are reduced (docs/methods.md); use one mode for a whole comparison",
        "seq-mean-token-sum-norm")
    horizon: Optional[int] = _doc(
        "H of seq-mean-token-sum-norm: the configured max response length (a constant, so the "
        "padded length of a batch never changes the step size); may also come in LossTotals", None)

    def __post_init__(self):
        _check_types(self)
        self._check()

    def _check(self):
        _positive(self, "horizon", allow_none=True)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


LossForm = Literal["reinforce", "ratio"]


def _loss_form(surrogate: str):
    return _doc(f"reinforce: −A·M·sg(W)·logp; ratio: −A·{surrogate} with ρ differentiable (same gradient "
                "where no cap binds; the value is the source's own surrogate)", "reinforce")


@dataclass(frozen=True)
class TruncatedParams(LossParams):
    """Methods whose importance weight is the truncated ratio W = min(ρ, C)."""

    truncation_cap: float = _doc("C in W = min(ρ, C); inf disables truncation", 20.0)
    loss_form: LossForm = _doc(
        "reinforce: −A·M·sg(min(ρ,C))·logp (keeps a gradient of weight C above C); "
        "ratio: −A·M·min(ρ,C) with ρ differentiable (zero gradient above C)", "reinforce")

    def _check(self):
        super()._check()
        _positive(self, "truncation_cap")


@dataclass(frozen=True)
class GrpoParams(TruncatedParams):
    eps_low: float = _doc("PPO clip below: A<0 tokens with ρ < 1−eps_low are masked", 0.2)
    eps_high: float = _doc("clip-higher: A>0 tokens with ρ > 1+eps_high are masked", 0.28)

    def _check(self):
        super()._check()
        _positive(self, "eps_low")
        _positive(self, "eps_high")


@dataclass(frozen=True)
class ClippedWeightParams(LossParams):
    """CISPO-style weights: W = clip(·, lower, cap), every token keeps its gradient."""

    cap: float = _doc("absolute upper bound of the weight (TRL/ScaleRL convention)", 5.0)
    lower: Optional[float] = _doc("absolute lower bound of the weight; None = no lower bound", None)

    def _check(self):
        super()._check()
        _positive(self, "cap")
        if self.lower is not None:
            if not self.lower >= 0:
                raise MethodConfigError(f"lower must be >= 0 or None, got {self.lower!r}")
            if self.lower > self.cap:
                raise MethodConfigError(f"lower ({self.lower}) must not exceed cap ({self.cap})")


@dataclass(frozen=True)
class MinproParams(ClippedWeightParams):
    inclusive_min: bool = _doc("ablation: take the prefix minimum over j ≤ t instead of j < t", False)
    cap_prefix_at_one: bool = _doc("ablation: use min(1, ρ̲_t), a pure down-weighting", False)


@dataclass(frozen=True)
class DivergenceParams(TruncatedParams):
    """Methods that score each token by a divergence D_t between μ(·|s_t) and π(·|s_t)."""

    divergence: Divergence = _doc(
        "per-token D_t: Top-K reduced TV/KL, Binary TV/KL, or sample estimators k2/k3", "topk_tv")
    top_k: int = _doc("K of the Top-K divergences (μ's top-K ids, sampled token forced in)", 20)

    def _check(self):
        super()._check()
        _positive(self, "top_k")

    @property
    def needs_topk(self) -> bool:
        return self.divergence.startswith("topk")


@dataclass(frozen=True)
class DppoParams(DivergenceParams):
    delta: float = _doc("token threshold δ: an away-from-μ update is masked when D_t > δ", 0.15)

    def _check(self):
        super()._check()
        _positive(self, "delta")


@dataclass(frozen=True)
class TrmParams(DivergenceParams):
    delta_max: Optional[float] = _doc("sequence kept iff max_t D_t ≤ delta_max (None: no max test)", 0.05)
    delta_avg: Optional[float] = _doc("sequence kept iff mean_t D_t ≤ delta_avg (None: no mean test)", None)

    def _check(self):
        super()._check()
        _positive(self, "delta_max", allow_none=True)
        _positive(self, "delta_avg", allow_none=True)
        if self.delta_max is None and self.delta_avg is None:
            raise MethodConfigError("delta_max and delta_avg are both None; TRM needs at least one")


@dataclass(frozen=True)
class GspoParams(GrpoParams):
    """GSPO (arXiv 2507.18071; TRL importance_sampling_level="sequence"): GRPO's clip on the sequence ratio
    ρ_seq = exp(mean_t log ρ_t); eps_low/eps_high bound ρ_seq (GSPO's own scale is ~1e-4)."""


@dataclass(frozen=True)
class OpsmParams(GrpoParams):
    delta: float = _doc("OPSM threshold δ: a response's A < 0 tokens are dropped when the mean over the "
                        "response of log μ − log π exceeds δ (TRL off_policy_mask_threshold)", 0.5)

    def _check(self):
        super()._check()
        _positive(self, "delta")


@dataclass(frozen=True)
class SapoParams(LossParams):
    temperature_pos: float = _doc("τ of the sigmoid gate for A > 0 (TRL sapo_temperature_pos)", 1.0)
    temperature_neg: float = _doc("τ of the sigmoid gate for A ≤ 0 (TRL sapo_temperature_neg)", 1.05)
    loss_form: LossForm = _loss_form("(4/τ)·σ(τ(ρ−1)), TRL's form")

    def _check(self):
        super()._check()
        _positive(self, "temperature_pos")
        _positive(self, "temperature_neg")


@dataclass(frozen=True)
class VespoParams(LossParams):
    """VESPO (TRL loss_type="vespo"): W = φ(w) = e^λ·w^k·e^(−λw) of the sequence ratio w, by the sign of A."""

    k_pos: float = _doc("k of φ for A ≥ 0 (TRL vespo_k_pos)", 2.0)
    lambda_pos: float = _doc("λ of φ for A ≥ 0 (TRL vespo_lambda_pos)", 3.0)
    k_neg: float = _doc("k of φ for A < 0 (TRL vespo_k_neg)", 3.0)
    lambda_neg: float = _doc("λ of φ for A < 0 (TRL vespo_lambda_neg)", 2.0)

    def _check(self):
        super()._check()
        for name in ("k_pos", "lambda_pos", "k_neg", "lambda_neg"):
            _positive(self, name)


@dataclass(frozen=True)
class DrpoParams(LossParams):
    eps: float = _doc("ε of the μ-weighted quadratic |A|·μ·(ρ−1)²/(2ε) (UniRL drpo_epsilon; paper 12.5)", 12.5)
    loss_form: LossForm = _loss_form("ρ + |A|/A·μ(ρ−1)²/(2ε) (UniRL's form)")

    def _check(self):
        super()._check()
        _positive(self, "eps")


@dataclass(frozen=True)
class DroParams(LossParams):
    beta: float = _doc("β of the penalty ½β(log π − log μ)² (verl dro_beta, which has no default)", 1.0)

    def _check(self):
        super()._check()
        _positive(self, "beta")

    @property
    def penalty_coef(self) -> float:
        return 0.5 * self.beta


@dataclass(frozen=True)
class PrimeDppoParams(DppoParams):
    delta_low: Optional[float] = _doc(
        "threshold for A < 0 tokens (prime-rl dppo_mask_low); None = delta (dppo_mask_high)", None)
    tau: float = _doc("τ of the penalty τ·(log π − log μ)² on every valid token (prime-rl kl_tau); 0 = none", 1e-3)

    def _check(self):
        super()._check()
        if self.delta_low is not None and not self.delta_low >= 0:
            raise MethodConfigError(f"delta_low must be >= 0 or None, got {self.delta_low!r}")
        if not self.tau >= 0:
            raise MethodConfigError(f"tau must be >= 0, got {self.tau!r}")

    @property
    def penalty_coef(self) -> float:
        return self.tau


@dataclass(frozen=True)
class CppoParams(DppoParams):
    w_min: float = _doc("last-token position weight; w_t falls linearly from 1 to w_min", 0.8)
    budget: Literal["dynamic", "fixed"] = _doc(
        "prefix budget δ_b: 'dynamic' = clamp(P90 of the response's D, delta_b, delta_b_max), "
        "'fixed' = delta_b", "dynamic")
    delta_b: float = _doc("δ_b when fixed; its lower clamp δ_b_min when dynamic; inf = no budget", 0.02)
    delta_b_max: Optional[float] = _doc("upper clamp of the dynamic δ_b; None = delta_b_max_factor·delta_b", None)
    budget_quantile: float = _doc("quantile of D used by the dynamic δ_b", 0.9)
    position_weights: Literal["linear", "uniform", "shuffled"] = _doc(
        "w_t schedule: linear (Eq. 9), uniform (w ≡ 1, ablation), shuffled (Eq. 9 weights "
        "randomly permuted within each response, ablation)", "linear")
    prefix_budget: bool = _doc("apply the prefix constraint S_t ≤ δ + δ_b W_{t−1}", True)
    gate: Literal["hard", "soft"] = _doc("hard: M = 1[I_t]; soft: M = min(1, 1/x_t) (App. C)", "hard")
    shuffle_seed: int = _doc("seed of the shuffled-weights permutations", 0)
    delta_b_max_factor: float = _doc("upper clamp of the dynamic δ_b as a multiple of delta_b (paper, UniRL: 2; "
                                     "verl PR #6731: 5), used when delta_b_max is None", 2.0)
    position_span: Literal["response", "padded"] = _doc(
        "T of the position weights: each response's own length (paper, UniRL), or the padded response length "
        "with t the column index (verl PR #6731, which pads to max_response_length): the horizon H where set, "
        "else the batch's width", "response")

    def _check(self):
        super()._check()
        if not (0.0 < self.w_min <= 1.0):
            raise MethodConfigError(f"w_min must be in (0, 1], got {self.w_min!r}")
        if not self.delta_b > 0:
            raise MethodConfigError(f"delta_b must be > 0 (inf allowed), got {self.delta_b!r}")
        if self.delta_b_max is not None and not self.delta_b_max >= self.delta_b:
            raise MethodConfigError(
                f"delta_b_max must be >= delta_b ({self.delta_b}), got {self.delta_b_max!r}")
        if not (0.0 <= self.budget_quantile <= 1.0):
            raise MethodConfigError(f"budget_quantile must be in [0, 1], got {self.budget_quantile!r}")
        if not 0 <= self.shuffle_seed < 2**32:
            raise MethodConfigError(f"shuffle_seed must be an integer in [0, 2**32), got {self.shuffle_seed!r}")
        if not self.delta_b_max_factor >= 1.0:
            raise MethodConfigError(f"delta_b_max_factor must be >= 1, got {self.delta_b_max_factor!r}")

    @property
    def delta_b_upper(self) -> float:
        return self.delta_b_max_factor * self.delta_b if self.delta_b_max is None else self.delta_b_max


# ---------------------------------------------------------------------------------------------
# generic checks


def _positive(params, name: str, allow_none: bool = False):
    value = getattr(params, name)
    if value is None and allow_none:
        return
    if value is None or not value > 0:
        raise MethodConfigError(f"{name} must be > 0, got {value!r}")


def _type_ok(value, hint) -> tuple[bool, str]:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        same_kind = [a for a in allowed if isinstance(a, bool) == isinstance(value, bool)]  # True == 1, but not listed
        return value in same_kind, "one of " + ", ".join(repr(a) for a in allowed)
    if origin is typing.Union:
        options = typing.get_args(hint)
        descriptions = []
        for option in options:
            if option is type(None):
                if value is None:
                    return True, ""
                descriptions.append("None")
                continue
            ok, description = _type_ok(value, option)
            if ok:
                return True, ""
            descriptions.append(description)
        return False, " or ".join(descriptions)
    if hint is bool:
        return isinstance(value, bool), "a bool"
    if hint is str:
        return isinstance(value, str), "a string"
    if hint is dict:
        return isinstance(value, dict), "a mapping"
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), "an int"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        return ok, "a number"
    return True, ""


def type_ok(value, hint) -> tuple[bool, str]:
    """Whether ``value`` fits the annotation ``hint`` (Literal, Optional, bool, int, float), and what
    the annotation allows, in words (the run config's typed groups check with it too)."""
    return _type_ok(value, hint)


def _check_types(params):
    hints = typing.get_type_hints(type(params))
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        ok, description = _type_ok(value, hints[f.name])
        if not ok:
            raise MethodConfigError(f"{f.name} must be {description}, got {value!r}")
        if hints[f.name] is float or typing.get_args(hints[f.name]) == (float, type(None)):
            if value is not None and not isinstance(value, float):
                object.__setattr__(params, f.name, float(value))


def describe_fields(params_cls, overrides: dict) -> list[dict]:
    """Name, type, default and doc of each parameter, as the registry and `trh methods` show them."""
    hints = typing.get_type_hints(params_cls)
    rows = []
    for f in dataclasses.fields(params_cls):
        rows.append({
            "name": f.name,
            "type": _type_name(hints[f.name]),
            "default": overrides.get(f.name, f.default),
            "doc": f.metadata.get("doc", ""),
        })
    return rows


def type_name(hint) -> str:
    """An annotation in words: {a, b} for a Literal, X | None for an Optional."""
    return _type_name(hint)


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "{" + ", ".join(str(a) for a in typing.get_args(hint)) + "}"
    if origin is typing.Union:
        return " | ".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))
