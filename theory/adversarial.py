"""The failure the paper is about, measured exactly: how large can the surrogate's error |Δ| get when
every token stays within a uniform TV threshold δ (DPPO's trust region), against the uniform
constant and against CPPO's, and does CPPO's shipped rule reject those policies?

For a fixed π, Δ is linear in the reward, so the worst reward with |R| ≤ ξ is known in closed form
(``worst_reward``); the search is over π only: random restarts plus hill climbing over the
per-prefix directions, every candidate pushed to the largest drift its trust region allows (D_t = δ
for the uniform region; Z_t = c_t, the shipped rule's threshold, for CPPO).
"""

from __future__ import annotations

import numpy as np

from .checks import cppo_constant, uniform_constant
from .cppo import feasible, shipped_rule
from .toy import Toy, exact, toward, worst_reward


def _uniform(toy: Toy, mu: list, proposal: list, delta: float) -> list:
    return [toward(m, p, delta) for m, p in zip(mu, proposal)]


def _vertex(toy: Toy, rng: np.random.Generator, rows: int) -> np.ndarray:
    """Nearly deterministic targets (a vertex of the simplex, kept off zero so every ratio is finite)."""
    return 0.99 * np.eye(toy.vocab)[rng.integers(0, toy.vocab, rows)] + 0.01 / toy.vocab


def _search(toy: Toy, mu: list, project, rng: np.random.Generator, restarts: int, steps: int):
    """The π (from ``project(proposal)``) with the largest |Δ| under its worst reward."""
    def score(proposal):
        pi = project(proposal)
        return abs(exact(toy, mu, pi, worst_reward(toy, mu, pi)).delta), pi

    best = (-1.0, None, None)
    for _ in range(restarts):
        # vertices of the simplex drift furthest: start from a random deterministic target per prefix
        proposal = [_vertex(toy, rng, len(m)) for m in mu]
        value, pi = score(proposal)
        for _ in range(steps):
            t = int(rng.integers(0, toy.horizon))
            trial = [p.copy() for p in proposal]
            rows = rng.random(len(trial[t])) < 0.5
            trial[t][rows] = _vertex(toy, rng, int(rows.sum()))
            trial_value, trial_pi = score(trial)
            if trial_value > value:
                proposal, value, pi = trial, trial_value, trial_pi
        if value > best[0]:
            best = (value, pi, proposal)
    return best[0], best[1]


def search(vocab: int, horizon: int, delta: float, delta_b: float, w_min: float = 0.8, xi: float = 1.0,
           seed: int = 0, restarts: int = 6, steps: int = 120) -> dict:
    """One configuration: the largest |Δ| found inside each trust region, the constants, and what
    CPPO's shipped rule says of the worst uniform policy."""
    rng = np.random.default_rng(seed)
    toy = Toy(vocab, horizon)
    mu = toy.random_policy(rng, 1.0)
    uniform_delta, uniform_pi = _search(toy, mu, lambda p: _uniform(toy, mu, p, delta), rng, restarts, steps)
    cppo_delta, _ = _search(toy, mu, lambda p: feasible(toy, mu, p, delta, delta_b, w_min, slack=True), rng,
                            restarts, steps)
    e = exact(toy, mu, uniform_pi, worst_reward(toy, mu, uniform_pi, xi))
    rule = shipped_rule(toy, mu, uniform_pi, delta, delta_b, w_min)
    mu_y = toy.token_probs(mu).prod(1)
    rejected = float((mu_y[:, None] * ~rule["passes"]).sum() / horizon)  # μ-weighted share of tokens
    ell_bar = delta / w_min
    c_cppo = cppo_constant(horizon, xi, ell_bar, delta_b)
    slack = delta * 4 * xi * ell_bar * (horizon - 1)  # Proposition 8: the shipped rule's initial slack
    return {"V": vocab, "T": horizon, "delta": delta, "delta_b": delta_b, "w_min": w_min, "xi": xi,
            "uniform_max_abs_delta": uniform_delta, "C_uniform": uniform_constant(horizon, xi, delta),
            "cppo_max_abs_delta": cppo_delta, "C_cppo": c_cppo, "C_cppo_with_slack": c_cppo + slack,
            "uniform_exceeds_C_cppo": uniform_delta > c_cppo,
            "cppo_rejects_share": rejected, "uniform_surrogate": e.surrogate, "uniform_true_gain": e.j_gain,
            "bound_vacuous": uniform_constant(horizon, xi, delta) >= 2 * xi}


GRID = [(3, t, d, b) for t in (4, 6) for d in (0.05, 0.15) for b in (0.005, 0.02)]


def run_search(grid=GRID, seed: int = 0, progress=None) -> list[dict]:
    rows = []
    for vocab, horizon, delta, delta_b in grid:
        rows.append(search(vocab, horizon, delta, delta_b, seed=seed))
        if progress is not None:
            progress.update(1)
    return rows
