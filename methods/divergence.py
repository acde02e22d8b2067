"""Per-token divergences D_t between μ(·|s_t) and π(·|s_t) (docs/methods.md).

Top-K reduced TV/KL follow DPPO (arXiv 2602.04879, App.; Stable-RL ``compute_topk_kl``): the
partition is μ's top-K ids with the sampled token forced in, plus one residual bucket. Binary uses
{sampled token, rest}. k2/k3 are TRM's sample estimators (arXiv 2512.23075). Partitions are coarser
than the vocabulary, so Binary ≤ Top-K ≤ exact (data-processing inequality). All computed in fp32
without gradient; padding positions return 0.
"""

from __future__ import annotations

import torch

PROB_FLOOR = 1e-12
BINARY_KL_EPS = 1e-8
LOG_RATIO_CLAMP = 20.0


def log_ratio(logp: torch.Tensor, rollout_logp: torch.Tensor) -> torch.Tensor:
    """log ρ_t = clamp(log π − log μ, −20, 20), the verl convention."""
    return (logp - rollout_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def insert_sampled(topk_ids, topk_values, token, token_values):
    """Where the sampled ``token`` is not among ``topk_ids`` it replaces the K-th entry (ids and each
    value tensor), so the set always holds exactly K tokens, as the DPPO reference rollout records it.
    Returns ``(ids, *values)``."""
    absent = ~(topk_ids == token[..., None]).any(-1)
    out = []
    for tensor, fill in ((topk_ids, token), *zip(topk_values, token_values)):
        tensor = tensor.clone()
        tensor[..., -1] = torch.where(absent, fill, tensor[..., -1])
        out.append(tensor)
    return tuple(out)


def force_sampled_token(topk_ids, rollout_topk_logp, policy_topk_logp, response_ids, rollout_logp, logp):
    """μ's and π's log-probs on μ's top-K set with the sampled token forced in (see insert_sampled)."""
    _, mu, pi = insert_sampled(topk_ids, (rollout_topk_logp, policy_topk_logp), response_ids, (rollout_logp, logp))
    return mu, pi


def _reduced(mu_set_logp, pi_set_logp):
    # fp64 on the small [.., K] tensors: 1 − Σ p loses the residual bucket to cancellation in fp32
    mu_set_logp, pi_set_logp = mu_set_logp.double(), pi_set_logp.double()
    p = mu_set_logp.exp().clamp_min(PROB_FLOOR)
    q = pi_set_logp.exp().clamp_min(PROB_FLOOR)
    p_rest = (1.0 - mu_set_logp.exp().sum(-1)).clamp_min(PROB_FLOOR)
    q_rest = (1.0 - pi_set_logp.exp().sum(-1)).clamp_min(PROB_FLOOR)
    return p, q, p_rest, q_rest


def topk_tv(mu_set_logp: torch.Tensor, pi_set_logp: torch.Tensor) -> torch.Tensor:
    """½ (Σ_S |p − q| + |p_rest − q_rest|) over the set S (last dim) plus the residual bucket."""
    p, q, p_rest, q_rest = _reduced(mu_set_logp, pi_set_logp)
    return (0.5 * ((p - q).abs().sum(-1) + (p_rest - q_rest).abs())).float()


def topk_kl(mu_set_logp: torch.Tensor, pi_set_logp: torch.Tensor) -> torch.Tensor:
    """KL(μ‖π) on the reduced partition: Σ_S p log(p/q) + p_rest log(p_rest/q_rest)."""
    p, q, p_rest, q_rest = _reduced(mu_set_logp, pi_set_logp)
    return ((p * (p.log() - q.log())).sum(-1) + p_rest * (p_rest.log() - q_rest.log())).float()


def binary_tv(rollout_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """|π(y_t) − μ(y_t)|: TV on the partition {sampled token, rest}."""
    return (logp.exp() - rollout_logp.exp()).abs()


def binary_kl(rollout_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """μ log(μ/π) + (1−μ) log((1−μ+ε)/(1−π+ε)), ε = 1e-8."""
    mu, pi = rollout_logp.exp(), logp.exp()
    eps = BINARY_KL_EPS
    return mu * (rollout_logp - logp) + (1.0 - mu) * ((1.0 - mu + eps).log() - (1.0 - pi + eps).log())


def k2(rollout_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """½ (log ρ)², TRM's estimator for the max criterion."""
    return 0.5 * log_ratio(logp, rollout_logp).square()


def k3(rollout_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """ρ − 1 − log ρ ≥ 0, whose expectation under μ is KL(μ‖π)."""
    lr = log_ratio(logp, rollout_logp)
    return lr.exp() - 1.0 - lr


def exact_tv(mu_full_logp: torch.Tensor, pi_full_logp: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary TV (tests and diagnostics only: needs both full distributions)."""
    return 0.5 * (mu_full_logp.exp() - pi_full_logp.exp()).abs().sum(-1)


def exact_kl(mu_full_logp: torch.Tensor, pi_full_logp: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary KL(μ‖π) (tests and diagnostics only)."""
    return (mu_full_logp.exp() * (mu_full_logp - pi_full_logp)).sum(-1)


SAMPLED_TOKEN_ESTIMATORS = {"binary_tv": binary_tv, "binary_kl": binary_kl, "k2": k2, "k3": k3}
TOPK_ESTIMATORS = {"topk_tv": topk_tv, "topk_kl": topk_kl}


@torch.no_grad()
def token_divergence(name: str, batch, top_k: int) -> torch.Tensor:
    """D_t [B, T] (fp32, 0 on padding) for a validated PolicyBatch, with π from ``batch.logp``."""
    logp = batch.logp.detach().float()
    rollout_logp = batch.rollout_logp.float()
    if name in SAMPLED_TOKEN_ESTIMATORS:
        d = SAMPLED_TOKEN_ESTIMATORS[name](rollout_logp, logp)
    elif name in TOPK_ESTIMATORS:
        mu_set, pi_set = force_sampled_token(
            batch.rollout_topk_ids[..., :top_k], batch.rollout_topk_logp[..., :top_k].float(),
            batch.policy_topk_logp[..., :top_k].detach().float(), batch.response_ids, rollout_logp, logp)
        d = TOPK_ESTIMATORS[name](mu_set, pi_set)
    else:
        known = sorted(SAMPLED_TOKEN_ESTIMATORS) + sorted(TOPK_ESTIMATORS)
        raise ValueError(f"divergence must be one of {known}, got {name!r}")
    return torch.where(batch.valid, d, torch.zeros_like(d))
