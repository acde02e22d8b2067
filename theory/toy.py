"""A toy autoregressive model small enough to enumerate every response, with exact laws.

A policy is its per-prefix next-token distributions: ``probs[t]`` has shape ``[V**t, V]`` — row p
is the distribution of token t+1 after the prefix whose tokens are p's base-V digits. A response is
an index y < V**T; its prefix of length t is ``y // V**(T-t)``. Every expectation of the paper's
theory is then a finite sum over the V**T responses, computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from methods.divergence import exact_tv


@dataclass
class Toy:
    vocab: int
    horizon: int

    @property
    def responses(self) -> int:
        return self.vocab ** self.horizon

    def prefix_index(self, t: int) -> np.ndarray:
        """[N]: each response's prefix of length t (the state s_{t+1} of position t + 1)."""
        return np.arange(self.responses) // self.vocab ** (self.horizon - t)

    def token(self, t: int) -> np.ndarray:
        """[N]: each response's token at position t + 1 (0-based t)."""
        return (np.arange(self.responses) // self.vocab ** (self.horizon - t - 1)) % self.vocab

    def token_probs(self, probs: list) -> np.ndarray:
        """[N, T]: the probability of each response's token at each position under ``probs``."""
        return np.stack([probs[t][self.prefix_index(t), self.token(t)] for t in range(self.horizon)], 1)

    def token_tv(self, mu: list, pi: list) -> list:
        """Exact TV(π(·|s), μ(·|s)) at every prefix, per depth (the registry's ``exact_tv``)."""
        return [exact_tv(torch.from_numpy(np.log(m)), torch.from_numpy(np.log(p))).numpy() for m, p in zip(mu, pi)]

    def along_paths(self, per_prefix: list) -> np.ndarray:
        """[N, T]: a per-prefix quantity (one array per depth) read along every response."""
        return np.stack([per_prefix[t][self.prefix_index(t)] for t in range(self.horizon)], 1)

    def random_policy(self, rng: np.random.Generator, concentration: float = 1.0) -> list:
        """Full-support next-token distributions, Dirichlet at every prefix."""
        return [rng.dirichlet(np.full(self.vocab, concentration), size=self.vocab ** t) for t in range(self.horizon)]


@dataclass
class Exact:
    """Every quantity of Lemma 2 and Proposition 4 for one (μ, π, R), exactly."""

    j_gain: float        # J(π) − J(μ)
    surrogate: float     # L′_μ(π) = E_μ[R Σ_t (ρ_t − 1)]
    delta: float         # Δ(μ, π) = E_μ[R Σ_t (ρ_t − 1)(1 − ρ_{t+1:T})]
    u: np.ndarray        # [T] u_t = E_μ[D_t]
    ell: np.ndarray      # [T] ℓ_t = max over prefixes of D_t (a μ-a.s. bound: μ has full support)
    xi: float            # max |R|


def _ratios(mu_tok: np.ndarray, pi_tok: np.ndarray):
    """[N, T] token ratios ρ_t and suffix products ρ_{t+1:T} (1 at the last position)."""
    rho = pi_tok / mu_tok
    suffix = np.concatenate([np.cumprod(rho[:, ::-1], 1)[:, ::-1][:, 1:], np.ones((len(rho), 1))], 1)
    return rho, suffix


def exact(toy: Toy, mu: list, pi: list, reward: np.ndarray) -> Exact:
    mu_tok, pi_tok = toy.token_probs(mu), toy.token_probs(pi)
    mu_y, pi_y = mu_tok.prod(1), pi_tok.prod(1)
    rho, suffix = _ratios(mu_tok, pi_tok)
    tv = toy.token_tv(mu, pi)
    return Exact(j_gain=float(((pi_y - mu_y) * reward).sum()),
                 surrogate=float((mu_y * reward * (rho - 1).sum(1)).sum()),
                 delta=float((mu_y * reward * ((rho - 1) * (1 - suffix)).sum(1)).sum()),
                 u=(mu_y[:, None] * toy.along_paths(tv)).sum(0), ell=np.array([d.max() for d in tv]),
                 xi=float(np.abs(reward).max()))


def suffix_tv(toy: Toy, mu: list, pi: list) -> list:
    """Per depth t = 0..T−1: TV between π's and μ's laws of tokens t+1..T after each prefix of length t."""
    mu_tok, pi_tok = toy.token_probs(mu), toy.token_probs(pi)
    out = []
    for t in range(toy.horizon):
        diff = np.abs(pi_tok[:, t:].prod(1) - mu_tok[:, t:].prod(1))
        out.append(0.5 * np.bincount(toy.prefix_index(t), weights=diff, minlength=toy.vocab ** t))
    return out


def toward(mu_row: np.ndarray, target: np.ndarray, tv: float) -> np.ndarray:
    """The distribution on the segment from ``mu_row`` to ``target`` at TV distance ``tv`` from μ
    (TV is linear along the segment); ``target`` itself if it is closer."""
    full = 0.5 * np.abs(target - mu_row).sum(-1, keepdims=True)
    alpha = np.clip(np.divide(tv, full, out=np.ones_like(full), where=full > 0), 0.0, 1.0)
    return mu_row + alpha * (target - mu_row)


def worst_reward(toy: Toy, mu: list, pi: list, xi: float = 1.0) -> np.ndarray:
    """The reward with |R| ≤ ξ that maximises Δ for this (μ, π): Δ is linear in R, so R = ξ·sign(g),
    g(y) = Σ_t (ρ_t − 1)(1 − ρ_{t+1:T})."""
    rho, suffix = _ratios(toy.token_probs(mu), toy.token_probs(pi))
    g = ((rho - 1) * (1 - suffix)).sum(1)
    return xi * np.where(g >= 0, 1.0, -1.0)
