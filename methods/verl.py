"""The registry in verl's policy-loss calling convention (checked against verl 0.9.1), for verl users.

verl (``verl/trainer/ppo/core_algos.py``) calls a registered policy loss with keyword arguments
``old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights``
and expects ``(loss, metrics)``::

    from methods.verl import register
    register("cppo", divergence="binary_tv", delta=0.15, delta_b=0.05)   # as trh_cppo and bypass_mode

Anchoring on μ. The registry's trust region is anchored on the rollout policy μ, so ``old_log_prob``
must be the rollout engine's log-probs: verl's bypass mode
(``algorithm.rollout_correction.bypass_mode=true``, ``actor_rollout_ref.rollout.calculate_log_probs=true``).
Which name verl then calls depends on the trainer: the default v1 trainer calls
``actor_rollout_ref.actor.policy_loss.loss_mode`` (set it to ``trh_cppo``); the legacy trainer's bypass
mode overwrites that key with ``"bypass_mode"``, so ``register`` registers the loss under that name
too. ``methods.verl_config.check_config`` (``trh verl-check``) says, for a whole verl config, which
loss verl will call. Keep ``rollout_is`` and ``rollout_rs`` null: they are verl's own corrections,
which the registry loss would ignore (it refuses them where they reach it). Without bypass mode,
``old_log_prob`` is a recomputed π_old and the trust region is anchored there instead.

verl's clip names are accepted in verl's convention and mapped to the registry (``VERL_CLIP_NAMES``):
``clip_ratio``/``clip_ratio_low``/``clip_ratio_high`` are GRPO's ε (relative, as in the registry),
CISPO's/MinPRO's *relative* weight bounds 1 − low and 1 + high (the registry's ``lower``/``cap`` are
absolute), DPPO's divergence threshold δ (one value: low must equal high), and ``clip_ratio_c`` is
DPPO's truncation cap. verl passes no top-K data to losses, so divergence methods need a
sampled-token divergence (``binary_tv``/``binary_kl``, k2/k3 for TRM). verl is imported only by ``register``.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Optional

import torch

from .batch import LossTotals, PolicyBatch
from .params import MethodConfigError
from .registry import get_method

# The parameter names, in order, of verl's PolicyLossFn (0.9.x).
VERL_SIGNATURE = ("old_log_prob", "log_prob", "advantages", "response_mask", "loss_agg_mode", "config",
                  "rollout_is_weights")
VERL_AGGREGATIONS = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                     "seq-mean-token-sum-norm")
# the global count each mode needs when verl runs data parallel (verl 0.9.1's agg_loss raises without it)
_GLOBAL_COUNT = {"token-mean": "batch_num_tokens", "seq-mean-token-sum": "global_batch_size",
                 "seq-mean-token-mean": "global_batch_size", "seq-mean-token-sum-norm": "global_batch_size"}
# registry methods whose parameters verl's actor-config clip names describe
VERL_CLIP_NAMES = {"grpo": "ε_low = clip_ratio_low, ε_high = clip_ratio_high",
                   "cispo": "lower = 1 − clip_ratio_low, cap = 1 + clip_ratio_high",
                   "minpro": "lower = 1 − clip_ratio_low, cap = 1 + clip_ratio_high",
                   "dppo": "δ = clip_ratio_low = clip_ratio_high, truncation_cap = clip_ratio_c"}
_CLIP_KEYS = ("clip_ratio", "clip_ratio_low", "clip_ratio_high", "clip_ratio_c")


def config_get(obj: Any, key: str, default=None):
    """``key`` of a verl config node — a dict, an OmegaConf node or verl dataclass (``.get``), or any
    object (an attribute) — or ``default`` where it is absent."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    getter = getattr(obj, "get", None)
    if callable(getter):
        try:
            return getter(key, default)
        except TypeError:
            pass
    return getattr(obj, key, default)


def registry_params(name: str, params: dict) -> dict:
    """``params`` with verl's clip names (``_CLIP_KEYS``) replaced by the registry's parameters of ``name``."""
    clip = {k: params[k] for k in _CLIP_KEYS if params.get(k) is not None}
    rest = {k: v for k, v in params.items() if k not in _CLIP_KEYS}
    if not clip:
        return rest
    if name not in VERL_CLIP_NAMES:
        raise MethodConfigError(f"{name}: verl's {sorted(clip)} describe only {sorted(VERL_CLIP_NAMES)}; "
                                f"give {name}'s own parameters instead")
    low = clip.get("clip_ratio_low", clip.get("clip_ratio"))
    high = clip.get("clip_ratio_high", clip.get("clip_ratio"))
    if name == "grpo":
        mapped = {"eps_low": low, "eps_high": high}
    elif name in ("cispo", "minpro"):
        mapped = {"lower": None if low is None else 1.0 - low, "cap": None if high is None else 1.0 + high}
    else:  # dppo: one divergence threshold
        if low is not None and high is not None and low != high:
            raise MethodConfigError(f"dppo: clip_ratio_low ({low}) != clip_ratio_high ({high}); the registry's "
                                    "DPPO has one threshold δ for both sides")
        mapped = {"delta": high if high is not None else low, "truncation_cap": clip.get("clip_ratio_c")}
    if "clip_ratio_c" in clip and name != "dppo":
        raise MethodConfigError(f"{name}: clip_ratio_c is verl's dual-clip constant, which {name} does not have")
    mapped = {k: v for k, v in mapped.items() if v is not None}
    both = sorted(set(mapped) & set(rest))
    if both:
        raise MethodConfigError(f"{name}: {both} given both directly and through verl's clip names; give one")
    return {**rest, **mapped}


def totals_from_config(config, response_mask: torch.Tensor, loss_agg_mode: str) -> LossTotals:
    """verl's ``config.global_batch_info`` (dp_size, batch_num_tokens, global_batch_size,
    loss_scale_factor) → per-rank denominators: data-parallel averaging then gives the global loss.
    As verl 0.9.1: local counts only on one rank (else an error), and a local response count leaves
    out responses with no valid token."""
    info = config_get(config, "global_batch_info") or {}
    dp = config_get(info, "dp_size", 1) or 1
    tokens, sequences = config_get(info, "batch_num_tokens"), config_get(info, "global_batch_size")
    needed = _GLOBAL_COUNT.get(loss_agg_mode)
    if dp > 1 and needed and config_get(info, needed) is None:
        raise MethodConfigError(f"{loss_agg_mode} with dp_size={dp} needs the global {needed} in "
                                "config.global_batch_info (local counts would weight ranks unequally)")
    if sequences is None:
        sequences = float((response_mask.sum(-1) > 0).sum())
    horizon = config_get(info, "loss_scale_factor") or response_mask.shape[-1]
    return LossTotals(num_sequences=sequences / dp, num_tokens=None if tokens is None else tokens / dp,
                      horizon=int(horizon))


def verl_policy_loss(name: str, **params):
    """A function with verl's policy-loss signature computing registry method ``name``."""
    params = registry_params(name, params)
    probe = get_method(name, horizon=1, **params)
    if probe.needs_topk:
        raise MethodConfigError(
            f"{name}: verl passes no top-K log-probs to policy losses, so a Top-K divergence cannot be computed; "
            f"build it with a sampled-token one (binary_tv, binary_kl, k2, k3), e.g. "
            f"verl_policy_loss({name!r}, divergence='binary_tv')")
    methods, checked = {}, []

    def policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                    response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config=None,
                    rollout_is_weights: Optional[torch.Tensor] = None):
        if loss_agg_mode not in VERL_AGGREGATIONS:
            raise MethodConfigError(f"loss_agg_mode must be one of {list(VERL_AGGREGATIONS)}, got {loss_agg_mode!r}")
        _refuse_verl_corrections(name, config, rollout_is_weights)
        if not checked:  # once per loss: verl's own clip values are not read
            _warn_if_config_disagrees(name, probe, config)
            checked.append(True)
        # token-sum is the token-mean numerator (denominator 1), scaled by dp_size as verl scales it
        aggregation = "token-mean" if loss_agg_mode == "token-sum" else loss_agg_mode
        if aggregation not in methods:
            methods[aggregation] = get_method(name, horizon=response_mask.shape[-1],
                                              **{**params, "aggregation": aggregation})
        scale = 1.0
        if loss_agg_mode == "token-sum":
            totals, scale = LossTotals(num_tokens=1.0), config_get(config_get(config, "global_batch_info") or {}, "dp_size", 1) or 1
        else:
            totals = totals_from_config(config, response_mask, loss_agg_mode)
        batch = PolicyBatch(logp=log_prob, rollout_logp=old_log_prob.detach(), advantages=advantages,
                            response_mask=response_mask.bool())
        out = methods[aggregation](batch, totals)
        loss = out.loss * scale
        valid = response_mask.bool()
        with torch.no_grad():
            kl = (old_log_prob - log_prob.detach())[valid].mean() if bool(valid.any()) else torch.tensor(0.0)
        metrics = {"actor/pg_loss": float(loss.detach()), "actor/pg_clipfrac": out.metrics["mask_fraction"],
                   "actor/ppo_kl": float(kl)}
        metrics.update({f"actor/trh/{k}": v for k, v in out.metrics.items()})
        return loss, metrics

    policy_loss.__name__ = f"trh_{name}"
    policy_loss.trh_method = name  # how methods.verl_config.check_config recognises a harness loss
    policy_loss.__doc__ = f"Registry method {name!r} ({params or 'defaults'}) in verl's policy-loss convention."
    assert tuple(inspect.signature(policy_loss).parameters) == VERL_SIGNATURE
    return policy_loss


def _refuse_verl_corrections(name: str, config, rollout_is_weights) -> None:
    """verl's own off-policy corrections would be ignored by the registry loss: refuse them."""
    if rollout_is_weights is not None:  # decoupled mode: verl computed IS weights from the algorithm's config
        raise MethodConfigError(f"{name}: verl passed rollout_is_weights (algorithm.rollout_correction.rollout_is is "
                                "set, without bypass mode); the registry anchors on μ itself — set "
                                "algorithm.rollout_correction.bypass_mode=true and rollout_is=null")
    correction = config_get(config_get(config, "policy_loss"), "rollout_correction")
    # the legacy trainer's bypass mode copies algorithm.rollout_correction here (bypass_mode true); the
    # actor's own default (bypass_mode false, rollout_is "sequence") is read by nothing in the v1 trainer
    if not config_get(correction, "bypass_mode", False):
        return
    active = [k for k in ("rollout_is", "rollout_rs") if config_get(correction, k) is not None]
    if active:
        raise MethodConfigError(f"{name}: algorithm.rollout_correction.{'/'.join(active)} is set; in bypass mode "
                                "the registry loss replaces verl's correction and would ignore it — set it to null")


def register(name: str, *, legacy_bypass: bool = True, **params):
    """Register registry method ``name`` with verl (must be installed) as ``trh_<name>`` — the name
    ``actor_rollout_ref.actor.policy_loss.loss_mode`` selects in verl's default v1 trainer — and, with
    ``legacy_bypass``, also as ``bypass_mode``, the name verl's legacy trainer calls in bypass mode.
    Returns the loss. Call it in the module ``actor_rollout_ref.model.external_lib`` names."""
    from verl.trainer.ppo.core_algos import register_policy_loss

    loss = verl_policy_loss(name, **params)
    register_policy_loss(f"trh_{name}")(loss)
    if legacy_bypass:
        register_policy_loss("bypass_mode")(loss)
    return loss


def _warn_if_config_disagrees(name: str, method, config) -> None:
    """Once per loss: if verl's actor config carries clip ratios that map to other parameters than the
    registered ones, say so (verl's values are not used; pass them to verl_policy_loss to use them)."""
    if name not in VERL_CLIP_NAMES or config is None:
        return
    given = {k: config_get(config, k) for k in ("clip_ratio", "clip_ratio_low", "clip_ratio_high")}
    given = {k: v for k, v in given.items() if isinstance(v, (int, float))}
    if not given:
        return
    try:
        theirs = registry_params(name, given)
    except MethodConfigError:
        theirs = {}
    ours = {k: getattr(method.params, k) for k in theirs}
    if theirs and any(abs(float(ours[k] or 0) - float(v)) > 1e-12 for k, v in theirs.items()):
        warnings.warn(f"{name}: verl's actor config {given} would mean {theirs} ({VERL_CLIP_NAMES[name]}); this "
                      f"loss uses the registered {ours}. verl's clip values are not read; pass them to "
                      f"verl_policy_loss({name!r}, ...) to use them", stacklevel=3)
