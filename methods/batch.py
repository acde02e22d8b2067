"""The tensors a method reads, their validation, and the totals that make losses micro-batch invariant.

Layout: ``[B, T]`` per token (``[B, T, K]`` for Top-K data), one response per row, padding wherever
``response_mask`` is 0 (right, left or holes). Packed layouts are converted with
:func:`unpack_packed` so that per-response prefix sums can never cross a response boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping, Optional, Sequence

import torch


class BatchError(ValueError):
    """A batch tensor is missing, mis-shaped or non-finite. The message names the field."""


@dataclass
class PolicyBatch:
    """Inputs of one loss call.

    logp:             log π(y_t|s_t) of the sampled tokens — the only tensor with gradient. [B, T]
    rollout_logp:     log μ(y_t|s_t) as emitted by the rollout engine (never recomputed). [B, T]
    advantages:       per response [B] or per token [B, T].
    response_mask:    1/True on real response tokens, 0 on padding. [B, T]
    response_ids:     the sampled token ids y_t; needed by Top-K divergences (forced into the set). [B, T]
    rollout_topk_ids: μ's top-K token ids per position, sorted by μ descending. [B, T, K]
    rollout_topk_logp: μ's log-probs at those ids. [B, T, K]
    policy_topk_logp: π's log-probs at rollout_topk_ids (no gradient needed). [B, T, K]
    sequence_ids:     a stable id per response (e.g. its index in the rollout batch); keys the
                      shuffled-weights permutation so it does not depend on micro-batching. [B]
    """

    logp: torch.Tensor
    rollout_logp: torch.Tensor
    advantages: torch.Tensor
    response_mask: torch.Tensor
    response_ids: Optional[torch.Tensor] = None
    rollout_topk_ids: Optional[torch.Tensor] = None
    rollout_topk_logp: Optional[torch.Tensor] = None
    policy_topk_logp: Optional[torch.Tensor] = None
    sequence_ids: Optional[torch.Tensor] = None

    @classmethod
    def coerce(cls, batch) -> "PolicyBatch":
        if isinstance(batch, cls):
            return batch
        if isinstance(batch, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(batch) - known)
            if unknown:
                raise BatchError(f"unknown batch field(s) {unknown}; known: {sorted(known)}")
            missing = [n for n in ("logp", "rollout_logp", "advantages", "response_mask") if n not in batch]
            if missing:
                raise BatchError(f"batch is missing required field(s) {missing}")
            return cls(**batch)
        raise BatchError(f"batch must be a PolicyBatch or a mapping of tensors, got {type(batch).__name__}")

    @property
    def has_topk(self) -> bool:
        return self.rollout_topk_ids is not None

    def validate(self, needs_topk: bool = False, top_k: Optional[int] = None) -> None:
        """Shapes, dtypes and finiteness at valid positions; raises BatchError naming the field."""
        for name in ("logp", "rollout_logp", "advantages", "response_mask"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise BatchError(f"{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        if self.logp.dim() != 2:
            raise BatchError(f"logp must be [B, T], got shape {tuple(self.logp.shape)}")
        shape = tuple(self.logp.shape)
        _same_shape("rollout_logp", self.rollout_logp, shape)
        _same_shape("response_mask", self.response_mask, shape)
        if tuple(self.advantages.shape) not in (shape, shape[:1]):
            raise BatchError(
                f"advantages must be [B]={shape[:1]} or [B, T]={shape}, got {tuple(self.advantages.shape)}")
        for name in ("logp", "rollout_logp", "advantages"):
            if not getattr(self, name).is_floating_point():
                raise BatchError(f"{name} must be a floating-point tensor, got {getattr(self, name).dtype}")
        valid = self.valid
        for name in ("logp", "rollout_logp"):
            value = getattr(self, name).detach()
            if not bool(torch.isfinite(value)[valid].all()):
                raise BatchError(f"{name} has non-finite values at valid response positions")
        adv = self.advantages if self.advantages.dim() == 2 else self.advantages[:, None].expand(shape)
        if not bool(torch.isfinite(adv)[valid].all()):
            raise BatchError("advantages has non-finite values at valid response positions")
        if self.response_ids is not None:
            _same_shape("response_ids", self.response_ids, shape)
        if self.sequence_ids is not None and tuple(self.sequence_ids.shape) != shape[:1]:
            raise BatchError(f"sequence_ids must be [B]={shape[:1]}, got {tuple(self.sequence_ids.shape)}")
        topk_fields = ("rollout_topk_ids", "rollout_topk_logp", "policy_topk_logp")
        present = [n for n in topk_fields if getattr(self, n) is not None]
        if needs_topk:
            missing = [n for n in topk_fields + ("response_ids",) if getattr(self, n) is None]
            if missing:
                raise BatchError(
                    f"this method uses a Top-K divergence but the batch lacks {missing}; the rollout must "
                    "store μ's top-K ids/log-probs and the trainer must gather π at those ids "
                    "(methods.policy_logprobs_from_logits)")
        if present:
            ref = getattr(self, present[0])
            if ref.dim() != 3 or tuple(ref.shape[:2]) != shape:
                raise BatchError(f"{present[0]} must be [B, T, K] with [B, T]={shape}, got {tuple(ref.shape)}")
            for name in present[1:]:
                _same_shape(name, getattr(self, name), tuple(ref.shape))
            if needs_topk and top_k is not None and ref.shape[-1] < top_k:
                raise BatchError(
                    f"{present[0]} holds K={ref.shape[-1]} entries per position but the method's top_k is "
                    f"{top_k}; set top_k <= {ref.shape[-1]} (e.g. the vocabulary size)")
            for name in ("rollout_topk_logp", "policy_topk_logp"):
                value = getattr(self, name)
                if value is not None and bool(torch.isnan(value.detach())[valid].any()):
                    raise BatchError(f"{name} has NaN at valid response positions")

    @property
    def valid(self) -> torch.Tensor:
        return self.response_mask.bool()


def _same_shape(name, tensor, shape):
    if not isinstance(tensor, torch.Tensor):
        raise BatchError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(shape):
        raise BatchError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")


@dataclass(frozen=True)
class LossTotals:
    """Global denominators of the aggregation, for losses invariant to micro-batching.

    Pass the totals of the whole (mini)batch to every micro-batch call; summing the micro-batch
    losses (or gradients) then gives exactly the full-batch value.
    """

    num_sequences: Optional[float] = None
    num_tokens: Optional[float] = None
    horizon: Optional[int] = None

    @classmethod
    def of(cls, batches: Sequence, horizon: Optional[int] = None) -> "LossTotals":
        sequences = tokens = 0.0
        for batch in batches:
            mask = batch["response_mask"] if isinstance(batch, Mapping) else batch.response_mask
            sequences += mask.shape[0]
            tokens += float(mask.bool().sum())
        return cls(num_sequences=sequences, num_tokens=tokens, horizon=horizon)


def unpack_packed(values: torch.Tensor, cu_seqlens: torch.Tensor, pad_value=0):
    """A packed ``[total, ...]`` tensor with cumulative lengths ``cu_seqlens`` (``[N+1]``, starting at 0)
    → a padded ``[N, T_max, ...]`` tensor and its ``[N, T_max]`` mask, one response per row."""
    cu = [int(x) for x in cu_seqlens.tolist()]
    if not cu or cu[0] != 0 or any(b < a for a, b in zip(cu, cu[1:])) or cu[-1] != values.shape[0]:
        raise BatchError("cu_seqlens must start at 0, be non-decreasing and end at values.shape[0]")
    lengths = [b - a for a, b in zip(cu, cu[1:])]
    t_max = max(lengths, default=0)
    out = values.new_full((len(lengths), t_max) + tuple(values.shape[1:]), pad_value)
    mask = torch.zeros(len(lengths), t_max, dtype=torch.bool, device=values.device)
    for i, (start, length) in enumerate(zip(cu, lengths)):
        out[i, :length] = values[start:start + length]
        mask[i, :length] = True
    return out, mask
