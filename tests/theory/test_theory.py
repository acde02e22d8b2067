"""The paper's bounds checked exactly on enumerable toy models: every statement holds to rounding
on random instances, a mutated bound is caught, and the adversarial search reproduces the failure
of a uniform trust region that the docs report."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from theory import checks
from theory.adversarial import search
from theory.cppo import feasible, shipped_rule
from theory.run import TOLERANCE
from theory.toy import Toy, exact, toward, worst_reward

ROOT = Path(__file__).resolve().parents[2]


def test_every_statement_holds_on_random_instances():
    rows = checks.run_checks(40, seed=3)
    for row in rows:
        assert row["instances"] == 40
        assert row["violation"] <= TOLERANCE, row


def test_a_mutated_bound_is_caught():
    """T(T−1) replaced by T in Theorem 1's constant: the key step's tight case u ≡ δ_b exceeds it."""
    def mutated(horizon, xi, ell_bar, delta_b):
        return 2 * xi * horizon * ell_bar * delta_b

    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(20):
        inst = checks.random_instance(rng)
        worst = max(worst, checks.abel_step(inst, constant=mutated)[0])
        assert checks.abel_step(inst)[0] <= TOLERANCE
    assert worst > 1e-3


def test_lemma2_by_hand_on_two_tokens():
    """V = 2, T = 1: Δ = 0 (no later token to multiply) and J(π) − J(μ) = L′ exactly."""
    toy = Toy(2, 1)
    mu, pi = [np.array([[0.5, 0.5]])], [np.array([[0.8, 0.2]])]
    e = exact(toy, mu, pi, np.array([1.0, -1.0]))
    assert e.delta == 0.0 and e.j_gain == pytest.approx(0.6) and e.surrogate == pytest.approx(0.6)
    assert e.u[0] == pytest.approx(0.3) and toward(mu[0], pi[0], 0.1)[0].tolist() == pytest.approx([0.6, 0.4])


def test_feasible_policies_pass_the_shipped_rule_with_its_own_thresholds():
    rng = np.random.default_rng(1)
    toy = Toy(3, 5)
    mu, proposal = toy.random_policy(rng), toy.random_policy(rng, 0.3)
    pi = feasible(toy, mu, proposal, delta=0.1, delta_b=0.01, w_min=0.8)
    rule = shipped_rule(toy, mu, pi, delta=0.1, delta_b=0.01, w_min=0.8)
    assert rule["passes"].all()
    assert (rule["threshold"] > 0).any() and np.isclose(rule["z"], rule["threshold"]).any()  # the drift is maximal
    raw = shipped_rule(toy, mu, proposal, delta=0.1, delta_b=0.01, w_min=0.8)
    assert not raw["passes"].all()  # the unprojected proposal is rejected


def test_uniform_trust_region_admits_errors_cppo_rules_out():
    """The docs' table: at V 3, T 4, δ 0.15, δ_b 0.005 the worst uniform policy found exceeds CPPO's
    constant, stays within its own, and CPPO's test rejects most of its tokens."""
    row = search(3, 4, 0.15, 0.005, restarts=2, steps=30)
    assert row["C_cppo"] < row["uniform_max_abs_delta"] <= row["C_uniform"]
    assert row["cppo_max_abs_delta"] <= row["C_cppo_with_slack"]
    assert row["cppo_rejects_share"] > 0.5
    toy = Toy(3, 4)
    mu = toy.random_policy(np.random.default_rng(0))
    pi = [toward(m, np.full_like(m, 1 / 3), 0.05) for m in mu]
    assert abs(exact(toy, mu, pi, worst_reward(toy, mu, pi)).delta) >= 0


def test_trh_theory_writes_its_tables_and_report_includes_them(tmp_path, capsys):
    from analysis.report import build_report
    from harness.store import run_folders
    from sweeps.cli import main

    assert main(["theory", "--instances", "5", "--results", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Lemma 2" in out and "adversarial search" in out
    for name in ("checks.md", "checks.csv", "adversarial.csv", "theory_bounds.png"):
        assert (tmp_path / "theory" / name).exists(), name
    one_run = run_folders(ROOT / "results" / "embedded")[0]  # a finished run so the report has a cell
    shutil.copytree(one_run, tmp_path / "runs" / one_run.name)
    report = build_report(tmp_path, figure_formats=())
    assert "Theory check" in report["index"] and (report["out"] / "theory_bounds.png").exists()
