"""Detached per-token quantities every rule reads, computed once per loss call (fp32, no grad)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .batch import PolicyBatch
from .divergence import log_ratio


@dataclass
class TokenContext:
    valid: torch.Tensor          # [B, T] bool
    advantages: torch.Tensor     # [B, T] fp32, 0 on padding
    log_ratio: torch.Tensor      # [B, T] clamp(log π − log μ, ±20), 0 on padding
    ratio: torch.Tensor          # [B, T] ρ_t, 1 on padding
    toward_mu: torch.Tensor      # [B, T] bool: A_t (ρ_t − 1) ≤ 0, an update that moves π back to μ
    lengths: torch.Tensor        # [B] int64 T_i
    position: torch.Tensor       # [B, T] int64 1-based index among the response's tokens, 0 on padding
    sequence_ids: torch.Tensor   # [B] int64
    rollout_logp: Optional[torch.Tensor] = None  # [B, T] fp32 log μ(y_t), 0 on padding
    divergence: Optional[torch.Tensor] = None  # [B, T] D_t, 0 on padding, when the method uses one
    extras: dict = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def build(cls, batch: PolicyBatch) -> "TokenContext":
        valid = batch.valid
        zeros = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
        adv = batch.advantages.detach().float()
        if adv.dim() == 1:
            adv = adv[:, None].expand(valid.shape)
        adv = torch.where(valid, adv, zeros)
        lr = torch.where(valid, log_ratio(batch.logp.detach().float(), batch.rollout_logp.float()), zeros)
        ratio = lr.exp()
        position = valid.long().cumsum(-1) * valid.long()
        seq_ids = batch.sequence_ids
        if seq_ids is None:
            seq_ids = torch.arange(valid.shape[0], device=valid.device)
        return cls(
            valid=valid,
            advantages=adv,
            log_ratio=lr,
            ratio=ratio,
            toward_mu=adv * (ratio - 1.0) <= 0,
            lengths=valid.long().sum(-1),
            position=position,
            sequence_ids=seq_ids.long(),
            rollout_logp=torch.where(valid, batch.rollout_logp.float(), zeros),
        )

    def fraction(self, selected: torch.Tensor, among: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Share of tokens (or of a [B, T] weight's mass) over ``among`` (default: valid tokens); NaN if none."""
        among = self.valid if among is None else among & self.valid
        count = among.sum()
        total = torch.where(among, selected.float(), torch.zeros_like(self.ratio)).sum()
        return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        return self.fraction(values)

    def rollout_prob(self) -> torch.Tensor:
        """[B, T] μ(y_t), the sampled token's rollout probability (0 on padding)."""
        if "rollout_prob" not in self.extras:
            self.extras["rollout_prob"] = torch.where(self.valid, self.rollout_logp.exp(), torch.zeros_like(self.ratio))
        return self.extras["rollout_prob"]

    def sequence_ratio(self) -> torch.Tensor:
        """[B, T] GSPO's sequence ratio ρ_seq = exp(mean_t log ρ_t) on every position of its response."""
        if "sequence_ratio" not in self.extras:
            self.extras["sequence_ratio"] = self.sequence_log_ratio().exp()[:, None].expand_as(self.ratio)
        return self.extras["sequence_ratio"]

    def sequence_log_ratio(self) -> torch.Tensor:
        """[B] mean over each response's tokens of log ρ_t (0 for an empty response): the log of GSPO's
        geometric-mean sequence ratio; computed once per call, whichever rule asks first."""
        if "sequence_log_ratio" not in self.extras:
            self.extras["sequence_log_ratio"] = self.log_ratio.sum(-1) / self.lengths.clamp_min(1)
        return self.extras["sequence_log_ratio"]
