"""Token losses → one scalar (docs/methods.md).

Masks never enter the denominators: they count every valid response token (or every response),
so masking a token shrinks the gradient instead of re-normalising over the kept ones. With global
``LossTotals`` the sum of micro-batch losses equals the full-batch loss.
"""

from __future__ import annotations

from typing import Optional

import torch

from .batch import LossTotals
from .params import AGGREGATIONS, MethodConfigError


def aggregate(
    token_loss: torch.Tensor,
    valid: torch.Tensor,
    mode: str,
    horizon: Optional[int] = None,
    totals: Optional[LossTotals] = None,
) -> torch.Tensor:
    """Reduce ``token_loss`` [B, T] (already 0 on padding) under ``valid`` [B, T] by ``mode``.

    seq-mean-token-sum-norm  (1/N) Σ_i Σ_t ℓ / H      (Dr.GRPO; DPPO/CPPO scripts)
    token-mean               Σ ℓ / Σ m               (DAPO, CISPO)
    seq-mean-token-mean      (1/N) Σ_i (Σ_t ℓ / Σ_t m) (original GRPO)
    seq-mean-token-sum       (1/N) Σ_i Σ_t ℓ
    """
    totals = totals or LossTotals()
    num_sequences = totals.num_sequences if totals.num_sequences is not None else token_loss.shape[0]
    per_sequence = token_loss.sum(-1)
    if mode == "token-mean":
        num_tokens = totals.num_tokens if totals.num_tokens is not None else valid.sum()
        return per_sequence.sum() / _at_least_one(num_tokens, token_loss)
    if mode == "seq-mean-token-mean":
        lengths = valid.sum(-1).clamp_min(1).to(token_loss.dtype)
        return (per_sequence / lengths).sum() / max(num_sequences, 1)
    if mode == "seq-mean-token-sum":
        return per_sequence.sum() / max(num_sequences, 1)
    if mode == "seq-mean-token-sum-norm":
        h = totals.horizon if totals.horizon is not None else horizon
        if h is None:
            raise MethodConfigError(
                "horizon: seq-mean-token-sum-norm divides by the configured max response length H; "
                "set the method's horizon=... or pass LossTotals(horizon=...)")
        return per_sequence.sum() / (max(num_sequences, 1) * h)
    raise MethodConfigError(f"aggregation must be one of {list(AGGREGATIONS)}, got {mode!r}")


def _at_least_one(count, like: torch.Tensor):
    if isinstance(count, torch.Tensor):
        return count.clamp_min(1).to(like.dtype)
    return max(float(count), 1.0)
