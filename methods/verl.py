"""The registry in verl's policy-loss calling convention, for users who train with verl.

verl (``verl/trainer/ppo/core_algos.py``) calls a registered policy loss with keyword arguments
``old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights``
and expects ``(loss, metrics)``. Register a registry method under a name of your choice::

    from verl.trainer.ppo.core_algos import register_policy_loss
    from methods.verl import verl_policy_loss
    register_policy_loss("trh_cppo")(verl_policy_loss("cppo", delta=0.15, budget="dynamic"))
    # then: actor_rollout_ref.actor.policy_loss.loss_mode=trh_cppo

μ must be what ``old_log_prob`` holds: run verl in bypass mode (``rollout_correction.bypass_mode``
with rollout log-probs), where ``old_log_prob`` *is* the rollout policy's log-prob; in decoupled
mode it is a recomputed π_old and the trust region is anchored there instead. verl passes no
top-K data to losses, so methods with a Top-K divergence must be built with a sampled-token one
(``divergence="binary_tv"``; k2/k3 for TRM, as verl's own TRM does); they raise otherwise. No verl
import: this module only follows the convention.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch

from .batch import LossTotals, PolicyBatch
from .params import MethodConfigError
from .registry import get_method

# The parameter names, in order, of verl's PolicyLossFn (0.9.x).
VERL_SIGNATURE = ("old_log_prob", "log_prob", "advantages", "response_mask", "loss_agg_mode", "config",
                  "rollout_is_weights")
VERL_AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _get(obj: Any, key: str, default=None):
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


def totals_from_config(config, response_mask: torch.Tensor) -> LossTotals:
    """verl's ``config.global_batch_info`` (dp_size, batch_num_tokens, global_batch_size,
    loss_scale_factor) → per-rank denominators: data-parallel averaging then gives the global loss."""
    info = _get(config, "global_batch_info") or {}
    dp = _get(info, "dp_size", 1) or 1
    tokens, sequences = _get(info, "batch_num_tokens"), _get(info, "global_batch_size")
    horizon = _get(info, "loss_scale_factor") or response_mask.shape[-1]
    return LossTotals(num_sequences=None if sequences is None else sequences / dp,
                      num_tokens=None if tokens is None else tokens / dp, horizon=int(horizon))


def verl_policy_loss(name: str, **params):
    """A function with verl's policy-loss signature computing registry method ``name``."""
    probe = get_method(name, horizon=1, **params)
    if probe.needs_topk:
        raise MethodConfigError(
            f"{name}: verl passes no top-K log-probs to policy losses, so a Top-K divergence cannot be computed; "
            f"build it with a sampled-token one (binary_tv, binary_kl, k2, k3), e.g. "
            f"verl_policy_loss({name!r}, divergence='binary_tv')")
    methods = {}

    def policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                    response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config=None,
                    rollout_is_weights: Optional[torch.Tensor] = None):
        if loss_agg_mode not in VERL_AGGREGATIONS:
            raise MethodConfigError(f"loss_agg_mode must be one of {list(VERL_AGGREGATIONS)}, got {loss_agg_mode!r}")
        if rollout_is_weights is not None:  # verl's decoupled-mode IS weights multiply the token loss
            raise MethodConfigError(f"{name}: rollout_is_weights given; the registry anchors on μ itself — run verl "
                                    "in bypass mode (old_log_prob = rollout log-probs) without rollout IS weights")
        if loss_agg_mode not in methods:
            methods[loss_agg_mode] = get_method(name, horizon=response_mask.shape[-1], **{**params, "aggregation": loss_agg_mode})
        batch = PolicyBatch(logp=log_prob, rollout_logp=old_log_prob.detach(), advantages=advantages,
                            response_mask=response_mask.bool())
        out = methods[loss_agg_mode](batch, totals_from_config(config, response_mask))
        loss = out.loss
        valid = response_mask.bool()
        with torch.no_grad():
            kl = (old_log_prob - log_prob.detach())[valid].mean() if bool(valid.any()) else torch.tensor(0.0)
        metrics = {"actor/pg_loss": float(loss.detach()), "actor/pg_clipfrac": out.metrics["mask_fraction"],
                   "actor/ppo_kl": float(kl)}
        metrics.update({f"actor/trh/{k}": v for k, v in out.metrics.items()})
        return loss, metrics

    policy_loss.__name__ = f"trh_{name}"
    policy_loss.__doc__ = f"Registry method {name!r} ({params or 'defaults'}) in verl's policy-loss convention."
    assert tuple(inspect.signature(policy_loss).parameters) == VERL_SIGNATURE
    return policy_loss
