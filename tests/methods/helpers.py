"""Random batches with full μ and π distributions, for property tests and reference loops."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from methods import PolicyBatch, get_method, list_methods
from methods.masks import no_mask


def params_of(name: str) -> set:
    """The parameter names of registered method ``name``."""
    return {p["name"] for m in list_methods() if m["name"] == name for p in m["params"]}


def masks_nothing(name: str) -> bool:
    """Whether method ``name``'s rule is a weight (or penalty) only: its mask is M = 1."""
    return get_method(name, horizon=1).spec.mask_rule is no_mask


def tunable(name: str, param: str) -> bool:
    """Whether ``param`` of ``name`` may be set: a parameter of the method that its name does not fix."""
    return param in params_of(name) and not any(param in m["fixed"] for m in list_methods() if m["name"] == name)


@dataclass
class RandomBatch:
    batch: PolicyBatch
    mu_full: torch.Tensor   # [B, T, V] log μ
    pi_full: torch.Tensor   # [B, T, V] log π (detached)
    pi_logits: torch.Tensor  # leaf with grad


def random_batch(seed: int, rows: int = 3, length: int = 9, vocab: int = 8, top_k: int = 4,
                 drift: float = 0.6, padding: str = "right", lengths=None, advantages=None,
                 garbage_padding: bool = False) -> RandomBatch:
    g = torch.Generator().manual_seed(seed)
    mu_logits = torch.randn(rows, length, vocab, generator=g) * 1.5
    pi_logits = (mu_logits + drift * torch.randn(rows, length, vocab, generator=g)).requires_grad_(True)
    mu_full = mu_logits.log_softmax(-1)
    pi_full = pi_logits.log_softmax(-1)
    ids = torch.multinomial(mu_full.exp().reshape(-1, vocab), 1, generator=g).reshape(rows, length)
    if lengths is None:
        lengths = torch.randint(0, length + 1, (rows,), generator=g).tolist()
    mask = torch.zeros(rows, length, dtype=torch.bool)
    for i, n in enumerate(lengths):
        if padding == "right":
            mask[i, :n] = True
        elif padding == "left":
            mask[i, length - n:] = True
        else:  # holes: n valid positions scattered through the row
            mask[i, torch.randperm(length, generator=g)[:n]] = True
    if advantages is None:
        advantages = torch.randn(rows, generator=g)
    topk = mu_full.topk(top_k, dim=-1)
    logp = pi_full.gather(-1, ids[..., None]).squeeze(-1)
    rollout_logp = mu_full.gather(-1, ids[..., None]).squeeze(-1)
    if garbage_padding:
        logp = torch.where(mask, logp, torch.full_like(logp, float("nan")))
        rollout_logp = torch.where(mask, rollout_logp, torch.full_like(rollout_logp, -math.inf))
    batch = PolicyBatch(
        logp=logp, rollout_logp=rollout_logp.detach(), advantages=torch.as_tensor(advantages, dtype=torch.float32),
        response_mask=mask, response_ids=ids, rollout_topk_ids=topk.indices,
        rollout_topk_logp=topk.values.detach(), policy_topk_logp=pi_full.gather(-1, topk.indices).detach())
    return RandomBatch(batch, mu_full.detach(), pi_full.detach(), pi_logits)


def token_batch(logp, rollout_logp, advantages, mask=None) -> PolicyBatch:
    """A batch from explicit per-token values (lists or tensors), one response per row."""
    logp = torch.as_tensor(logp, dtype=torch.float32).clone().requires_grad_(True)
    rollout_logp = torch.as_tensor(rollout_logp, dtype=torch.float32)
    if mask is None:
        mask = torch.ones_like(rollout_logp, dtype=torch.bool)
    return PolicyBatch(logp=logp, rollout_logp=rollout_logp,
                       advantages=torch.as_tensor(advantages, dtype=torch.float32),
                       response_mask=torch.as_tensor(mask, dtype=torch.bool))
