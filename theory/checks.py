"""Each statement of the CPPO paper's theory (Section 3, Appendix B) checked exactly on random toy
instances. A check returns (violation, tightness) per instance: violation is how far the statement
fails (0 when it holds; for an identity, |lhs − rhs|), tightness how close a bound comes (lhs/rhs).
Bound checks also record (bound, |Δ|) pairs in ``POINTS`` for the figure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cppo import feasible, linear_weights, shipped_rule
from .toy import Toy, exact, suffix_tv, toward, worst_reward

POINTS: dict = {}  # statement → [(bound, |Δ|)] of the instances checked, for the figure


def _point(name: str, bound: float, value: float) -> None:
    POINTS.setdefault(name, []).append((bound, value))


def cppo_constant(horizon: int, xi: float, ell_bar: float, delta_b: float) -> float:
    """Theorem 1: J(π) − J(μ) ≥ L′ − 2ξT(T−1)ℓ̄δ_b."""
    return 2 * xi * horizon * (horizon - 1) * ell_bar * delta_b


def uniform_constant(horizon: int, xi: float, delta: float) -> float:
    """Corollary 6: a uniform token trust region D_t ≤ δ: |Δ| ≤ 2ξT(T−1)δ²."""
    return 2 * xi * horizon * (horizon - 1) * delta ** 2


def lambdas(horizon: int, xi: float, ell_bar: float) -> np.ndarray:
    """λ_t = 4ξℓ̄(T − t), t = 1..T−1 (Proposition 4)."""
    return 4 * xi * ell_bar * (horizon - np.arange(1, horizon))


@dataclass
class Instance:
    toy: Toy
    mu: list
    proposal: list
    reward: np.ndarray
    delta: float
    delta_b: float
    w_min: float


def random_instance(rng: np.random.Generator) -> Instance:
    vocab = int(rng.choice([2, 3, 4]))
    horizon = int(rng.integers(2, {2: 10, 3: 6, 4: 5}[vocab] + 1))
    toy = Toy(vocab, horizon)
    mu = toy.random_policy(rng, float(rng.uniform(0.3, 3.0)))
    proposal = toy.random_policy(rng, float(rng.uniform(0.3, 3.0)))
    xi = float(rng.uniform(0.5, 2.0))
    reward = rng.uniform(-xi, xi, toy.responses)
    return Instance(toy, mu, proposal, reward, delta=float(rng.uniform(0.01, 0.3)),
                    delta_b=float(rng.uniform(0.001, 0.1)), w_min=float(rng.uniform(0.5, 1.0)))


def lemma2(inst: Instance) -> tuple[float, float]:
    """J(π) − J(μ) = L′ − Δ, for an arbitrary π."""
    e = exact(inst.toy, inst.mu, inst.proposal, inst.reward)
    return abs(e.j_gain - (e.surrogate - e.delta)), float("nan")


def lemma3(inst: Instance) -> tuple[float, float]:
    """TV of the suffix laws after s_t ≤ 1 − Π_{j>t}(1 − ℓ_j) ≤ Σ_{j>t} ℓ_j."""
    toy = inst.toy
    ell = np.array([d.max() for d in toy.token_tv(inst.mu, inst.proposal)])
    violation, tight = 0.0, 0.0
    for t, tv in enumerate(suffix_tv(toy, inst.mu, inst.proposal)):
        product_bound = 1 - np.prod(1 - ell[t:])
        violation = max(violation, tv.max() - product_bound, product_bound - ell[t:].sum())
        tight = max(tight, tv.max() / product_bound if product_bound > 0 else 0.0)
    return max(violation, 0.0), tight


def proposition4(inst: Instance) -> tuple[float, float]:
    """|Δ| ≤ 4ξ Σ_{t<T} u_t Σ_{j>t} ℓ_j ≤ Σ_{t<T} λ_t u_t, for an arbitrary π (worst-case reward)."""
    toy = inst.toy
    e = exact(toy, inst.mu, inst.proposal, worst_reward(toy, inst.mu, inst.proposal))
    horizon = toy.horizon
    inner = 4 * e.xi * sum(e.u[t] * e.ell[t + 1:].sum() for t in range(horizon - 1))
    outer = float((lambdas(horizon, e.xi, e.ell.max()) * e.u[:-1]).sum())
    _point("proposition4", outer, abs(e.delta))
    return max(abs(e.delta) - inner, inner - outer, 0.0), abs(e.delta) / outer if outer > 0 else 0.0


def proposition5(inst: Instance) -> tuple[float, float]:
    """For the linear schedule, g_t = (T − t)/w_t falls by exactly w_min/(w_t w_{t+1}) > 0."""
    horizon = max(inst.toy.horizon, 2)
    w = linear_weights(horizon, inst.w_min)
    g = (horizon - np.arange(1, horizon + 1)) / w
    gap = g[:-1] - g[1:]
    return float(max(np.abs(gap - inst.w_min / (w[:-1] * w[1:])).max(), -gap.min())), float("nan")


def abel_step(inst: Instance, constant=cppo_constant) -> tuple[float, float]:
    """The key step of Theorem 1: Σ_{t<T} λ_t u_t ≤ 2ξT(T−1)ℓ̄δ_b for every u ≥ 0 with
    Σ_{j≤m} w_j u_j ≤ δ_b W_m, tight at u ≡ δ_b (a random feasible u and the tight one)."""
    horizon = inst.toy.horizon
    w = linear_weights(horizon, inst.w_min)[:-1]
    rng = np.random.default_rng(inst.toy.responses + horizon)
    u, spent = np.zeros(horizon - 1), 0.0
    for t in range(horizon - 1):  # a random u, clipped so that every prefix constraint holds
        u[t] = min(rng.uniform(0, 3) * inst.delta_b, (inst.delta_b * w[: t + 1].sum() - spent) / w[t])
        spent += w[t] * u[t]
    lam = lambdas(horizon, 1.0, 1.0)
    bound = constant(horizon, 1.0, 1.0, inst.delta_b)
    lhs = max(float(lam @ u), float(lam @ np.full(horizon - 1, inst.delta_b)))
    return max(lhs - bound, 0.0), lhs / bound


def theorem1(inst: Instance, constant=cppo_constant) -> tuple[float, float]:
    """π inside CPPO's test and Theorem 1's budget on every path: Δ ≤ 2ξT(T−1)ℓ̄δ_b with ℓ̄ the largest
    c_t/w_t met on any path, and the shipped rule passes every token."""
    toy = inst.toy
    pi = feasible(toy, inst.mu, inst.proposal, inst.delta, inst.delta_b, inst.w_min, slack=False)
    rule = shipped_rule(toy, inst.mu, pi, inst.delta, inst.delta_b, inst.w_min)
    e = exact(toy, inst.mu, pi, worst_reward(toy, inst.mu, pi))
    ell_bar = float((rule["threshold"] / rule["weights"]).max())
    bound = constant(toy.horizon, e.xi, ell_bar, inst.delta_b)
    w_cum = np.cumsum(rule["weights"], 1)
    budget_excess = float((rule["prefix_sum"] - inst.delta_b * w_cum)[:, :-1].max(initial=0.0))
    fails = float((rule["z"] - rule["threshold"]).max())
    _point("theorem1", bound, abs(e.delta))
    return max(e.delta - bound, budget_excess, fails, 0.0), e.delta / bound if bound > 0 else 0.0


def proposition8(inst: Instance, constant=cppo_constant) -> tuple[float, float]:
    """π inside the shipped rule as it is (Eq. 8's slack η = δ): |Δ| ≤ 2ξT(T−1)ℓ̄δ_b + η·4ξℓ̄(T−1)/w_1."""
    toy = inst.toy
    pi = feasible(toy, inst.mu, inst.proposal, inst.delta, inst.delta_b, inst.w_min, slack=True)
    rule = shipped_rule(toy, inst.mu, pi, inst.delta, inst.delta_b, inst.w_min)
    e = exact(toy, inst.mu, pi, worst_reward(toy, inst.mu, pi))
    ell_bar = float((rule["threshold"] / rule["weights"]).max())
    bound = constant(toy.horizon, e.xi, ell_bar, inst.delta_b) + inst.delta * 4 * e.xi * ell_bar * (toy.horizon - 1)
    fails = float((rule["z"] - rule["threshold"]).max())
    return max(abs(e.delta) - bound, fails, 0.0), abs(e.delta) / bound if bound > 0 else 0.0


def corollary6(inst: Instance) -> tuple[float, float]:
    """A uniform token trust region (D_t ≤ δ at every prefix): |Δ| ≤ 2ξT(T−1)δ²."""
    toy = inst.toy
    pi = [toward(m, p, inst.delta) for m, p in zip(inst.mu, inst.proposal)]
    e = exact(toy, inst.mu, pi, worst_reward(toy, inst.mu, pi))
    bound = uniform_constant(toy.horizon, e.xi, inst.delta)
    _point("corollary6", bound, abs(e.delta))
    return max(abs(e.delta) - bound, float(e.ell.max()) - inst.delta - 1e-12, 0.0), abs(e.delta) / bound


def terminal_budget(inst: Instance) -> tuple[float, float]:
    """B.8: with one terminal budget Σ_{j<T} w_j u_j ≤ δ_b W_{T−1}, the largest Σ λ_t u_t (a linear
    program, solved) is max_t(λ_t/w_t)·δ_b W_{T−1} ≥ CPPO's δ_b Σλ_t, equal iff w_t ∝ T − t; for
    w ≡ 1 the ratio is 2 − 2/T."""
    from scipy.optimize import linprog

    horizon = max(inst.toy.horizon, 2)
    lam = lambdas(horizon, 1.0, 1.0)
    violation = 0.0
    for w in (linear_weights(horizon, inst.w_min)[:-1], np.ones(horizon - 1), (horizon - np.arange(1, horizon)) / (horizon - 1)):
        lp = linprog(-lam, A_ub=w[None], b_ub=[inst.delta_b * w.sum()], bounds=[(0, None)] * (horizon - 1))
        closed = float((lam / w).max() * inst.delta_b * w.sum())
        cppo = inst.delta_b * lam.sum()
        violation = max(violation, abs(-lp.fun - closed) / closed, cppo - closed)
    ones_ratio = (lam.max() * inst.delta_b * (horizon - 1)) / (inst.delta_b * lam.sum())
    proportional = (horizon - np.arange(1, horizon)) / (horizon - 1)
    equal = abs((lam / proportional).max() * inst.delta_b * proportional.sum() - inst.delta_b * lam.sum())
    return max(violation, abs(ones_ratio - (2 - 2 / horizon)), equal), float("nan")


STATEMENTS = {
    "Lemma 2: J(π) − J(μ) = L′ − Δ": lemma2,
    "Lemma 3: suffix TV ≤ 1 − Π(1 − ℓ_j) ≤ Σ ℓ_j": lemma3,
    "Proposition 4: |Δ| ≤ 4ξ Σ u_t Σ_{j>t} ℓ_j ≤ Σ λ_t u_t": proposition4,
    "Proposition 5: g_t − g_{t+1} = w_min/(w_t w_{t+1}) > 0": proposition5,
    "Theorem 1 (key step): Σ λ_t u_t ≤ 2ξT(T−1)ℓ̄δ_b": abel_step,
    "Theorem 1: Δ ≤ 2ξT(T−1)ℓ̄δ_b on CPPO-feasible π": theorem1,
    "Proposition 8: the shipped rule (slack δ)": proposition8,
    "Corollary 6: uniform TR, |Δ| ≤ 2ξT(T−1)δ²": corollary6,
    "B.8: terminal budget vs CPPO constants": terminal_budget,
}


def run_checks(instances: int, seed: int = 0, progress=None) -> list[dict]:
    """Every statement on ``instances`` random instances: max violation and max tightness."""
    rng = np.random.default_rng(seed)
    POINTS.clear()
    results = {name: {"violation": 0.0, "tightness": float("nan"), "instances": 0} for name in STATEMENTS}
    for _ in range(instances):
        inst = random_instance(rng)
        for name, check in STATEMENTS.items():
            violation, tightness = check(inst)
            row = results[name]
            row["violation"] = max(row["violation"], violation)
            if not np.isnan(tightness):
                row["tightness"] = tightness if np.isnan(row["tightness"]) else max(row["tightness"], tightness)
            row["instances"] += 1
        if progress is not None:
            progress.update(1)
    return [{"statement": name, **row} for name, row in results.items()]
