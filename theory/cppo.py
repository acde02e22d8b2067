"""Policies inside CPPO's trust region on the toy model, and the shipped rule's verdict on them.

``feasible`` builds π by walking the prefixes depth by depth: at each prefix it knows the path's
prefix sum S_{t−1}, computes the threshold c_t of Eq. 8, and pulls a proposed distribution toward μ
until w_t D_t fits. ``shipped_rule`` then runs ``methods.masks.cppo_mask`` — the registry's own
code — on every response with the exact TV, so the check exercises the shipped rule, not a copy.
"""

from __future__ import annotations

import numpy as np
import torch

from methods import PolicyBatch, get_method
from methods.context import TokenContext
from methods.divergence import exact_tv
from methods.masks import cppo_mask

from .toy import Toy, toward


def linear_weights(horizon: int, w_min: float) -> np.ndarray:
    """w_t = 1 − (1 − w_min)(t − 1)/max(T − 1, 1), t = 1..T (Eq. 9)."""
    t = np.arange(1, horizon + 1)
    return 1.0 - (1.0 - w_min) * (t - 1) / max(horizon - 1, 1)


def feasible(toy: Toy, mu: list, proposal: list, delta: float, delta_b: float, w_min: float,
             slack: bool = True) -> list:
    """π passing CPPO's test Z_t ≤ c_t on every path (``slack``: the shipped rule, whose budget
    S_t ≤ δ + δ_b W_{t−1} has Eq. 8's initial slack δ); without slack also Theorem 1's budget
    P_m ≤ δ_b W_m for m < T."""
    w = linear_weights(toy.horizon, w_min)
    cum_w = np.cumsum(w)
    s_prev, pi = np.zeros(1), []
    for t in range(toy.horizon):
        w_prev = cum_w[t - 1] if t else 0.0
        allowed = np.minimum(delta, delta + delta_b * w_prev - s_prev)
        if not slack and t < toy.horizon - 1:
            allowed = np.minimum(allowed, delta_b * cum_w[t] - s_prev)
        row = toward(mu[t], proposal[t], np.clip(allowed, 0.0, None)[:, None] / w[t])
        row = np.where(allowed[:, None] > 0, row, mu[t])
        pi.append(row)
        d = exact_tv(torch.from_numpy(np.log(mu[t])), torch.from_numpy(np.log(row))).numpy()
        s_prev = np.repeat(s_prev + w[t] * d, toy.vocab)  # each child prefix inherits its path's sum
    return pi


def shipped_rule(toy: Toy, mu: list, pi: list, delta: float, delta_b: float, w_min: float) -> dict:
    """``cppo_mask`` on every response with D_t = the exact TV (float64): the weights, Z_t, c_t and
    whether each token passes the test I_t = (Z_t ≤ c_t)."""
    mu_tok, pi_tok = toy.token_probs(mu), toy.token_probs(pi)
    n = toy.responses
    batch = PolicyBatch(logp=torch.from_numpy(np.log(pi_tok)), rollout_logp=torch.from_numpy(np.log(mu_tok)),
                        advantages=torch.ones(n, dtype=torch.float64),
                        response_mask=torch.ones(n, toy.horizon, dtype=torch.bool))
    ctx = TokenContext.build(batch)
    ctx.divergence = torch.from_numpy(toy.along_paths(toy.token_tv(mu, pi)))
    params = get_method("cppo", delta=delta, delta_b=delta_b, budget="fixed", w_min=w_min).params
    details = cppo_mask(ctx, params).details
    z, c = details["weighted_divergence"].numpy(), details["threshold"].numpy()
    return {"weights": details["position_weight"].numpy(), "z": z, "threshold": c, "passes": z <= c + 1e-12,
            "prefix_sum": details["prefix_sum"].numpy()}
