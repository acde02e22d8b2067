"""analysis.stats against known answers: coverage on synthetic seeds drawn from known distributions,
Holm on hand-computed p-values, the paired design's power, exact permutation p-values, the
evaluation-noise estimate, and the across-setting aggregates."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis import stats as S


def _coverage(draw, truth, n, reps, interval="auto", seed=0):
    rng = np.random.default_rng(seed)
    hits = 0
    for rep in range(reps):
        ci = S.mean_interval(draw(rng, n), interval=interval, seed=rep)
        hits += ci.low <= truth <= ci.high
    return hits / reps


@pytest.mark.parametrize("name, draw, truth", [
    ("normal", lambda rng, n: rng.normal(0.70, 0.05, n), 0.70),
    ("skewed near the ceiling", lambda rng, n: rng.beta(18, 2, n), 0.90),
])
def test_ci_at_10_seeds_covers_the_true_mean(name, draw, truth):
    coverage = _coverage(draw, truth, n=10, reps=300)
    assert 0.90 <= coverage <= 0.99, (name, coverage)


def test_bootstrap_covers_from_its_seed_threshold_and_undercovers_below():
    draw = lambda rng, n: rng.normal(0.5, 0.1, n)  # noqa: E731
    assert S.interval_method(S.BOOTSTRAP_MIN_SEEDS) == "bootstrap"
    assert 0.90 <= _coverage(draw, 0.5, n=30, reps=200, interval="auto") <= 0.99
    assert _coverage(draw, 0.5, n=3, reps=200, interval="bootstrap") < 0.85  # why auto uses t below 20
    assert S.coverage_warning(3, "bootstrap") and "under-covers" in S.coverage_warning(3, "bootstrap")
    assert S.coverage_warning(3, "t") is None and S.coverage_warning(1, "none")


def test_t_interval_is_the_textbook_one():
    x = np.array([0.91, 0.93, 0.96, 0.90])
    ci = S.mean_interval(x)
    half = sps.t.ppf(0.975, 3) * x.std(ddof=1) / 2
    assert ci.method == "t" and ci.low == pytest.approx(x.mean() - half) and ci.high == pytest.approx(x.mean() + half)
    assert S.mean_interval([0.5]).method == "none" and math.isnan(S.mean_interval([0.5]).low)
    assert S.mean_interval([0.5, 0.5, 0.5]).low == 0.5  # no spread: an exact point
    with pytest.raises(ValueError, match="interval must be one of"):
        S.mean_interval([1, 2], interval="wald")


def test_holm_on_known_p_values():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 → max(0.04, 0.06) = 0.06
    adjusted = S.holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])


def test_exact_permutation_p_values():
    assert S.paired_permutation_p([3, 4, 5], [0, 0, 0]) == pytest.approx(0.25)  # 2 of 8 sign patterns
    assert S.smallest_p(3) == 0.25 and S.smallest_p(6) == pytest.approx(2 / 64)
    assert S.paired_permutation_p([1, 2, 3, 4, 5, 6], [0] * 6) == pytest.approx(2 / 64)
    assert S.paired_permutation_p([1, 2], [1, 2]) == 1.0
    # unpaired, 3 vs 3 fully separated: 2 of C(6,3) = 20 splits are as extreme
    assert S.unpaired_permutation_p([5, 6, 7], [0, 1, 2]) == pytest.approx(0.1)


def test_paired_design_detects_what_the_unpaired_one_misses():
    """Seeds share the warm start and the training stream, so seed effects are common to both methods;
    pairing removes them, an unpaired test drowns in them."""
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0.0, 0.05, 10)
    ref = 0.80 + seed_effect + 0.02 + rng.normal(0, 0.005, 10)
    other = 0.80 + seed_effect + rng.normal(0, 0.005, 10)
    paired = S.paired_comparison(dict(enumerate(ref)), dict(enumerate(other)))
    assert paired.p < 0.01 and paired.diff.excludes(0.0)
    assert S.unpaired_permutation_p(ref, other) > 0.3
    assert S.verdict(paired.diff, paired.p) == "better"
    assert S.verdict(paired.diff, 0.2) == "no detectable difference"


def test_paired_comparison_uses_shared_seeds_only():
    out = S.paired_comparison({0: 0.9, 1: 0.8, 2: 0.85}, {1: 0.7, 2: 0.75, 3: 0.1})
    assert out.seeds == (1, 2) and out.diff.estimate == pytest.approx(0.1)


def test_eval_noise_estimate_recovers_a_known_sd():
    rng = np.random.default_rng(0)
    est = S.noise_sd(rng.normal(0.65, 0.03, 400))
    assert est.estimate == pytest.approx(0.03, rel=0.1) and est.low <= 0.03 <= est.high
    hits = sum(S.noise_sd(rng.normal(0.0, 0.03, 8)).excludes(0.03) is False for _ in range(300))
    assert 0.90 <= hits / 300 <= 0.99


def test_seeds_needed_matches_simulated_power():
    n = S.seeds_needed(sd_diff=0.02, effect=0.02)
    assert 9 <= n <= 11  # ((1.96 + 0.84)·1)² ≈ 7.9, plus the t correction
    rng = np.random.default_rng(1)
    power = np.mean([sps.ttest_1samp(rng.normal(0.02, 0.02, n), 0).pvalue < 0.05 for _ in range(600)])
    assert power >= 0.77
    assert S.seeds_needed(0.0, 0.02) == 6  # the permutation test's floor: 2/2^6 < 0.05
    assert S.seeds_needed(0.04, 0.02) > n and S.seeds_needed(float("nan"), 0.02) is None


def test_detectable_difference_inverts_seeds_needed():
    # large n: the normal approximation (z_{1-α/2} + z_power)·sd/√n
    assert S.detectable_difference(0.03, 400) == pytest.approx((1.959964 + 0.841621) * 0.03 / 20, rel=0.01)
    for n in (6, 10, 20):  # round trip: n seeds need n seeds to detect their own detectable difference
        mdd = S.detectable_difference(0.02, n)
        assert S.seeds_needed(0.02, mdd * 1.0001) == n and S.seeds_needed(0.02, mdd * 0.99) > n
    rng = np.random.default_rng(2)  # simulated power at that difference ≈ 0.8
    mdd = S.detectable_difference(0.02, 10)
    power = np.mean([sps.ttest_1samp(rng.normal(mdd, 0.02, 10), 0).pvalue < 0.05 for _ in range(800)])
    assert 0.75 <= power <= 0.85
    assert S.detectable_difference(0.02, 10, alpha=0.005) > mdd  # a stricter level detects less
    assert S.detectable_difference(0.02, 5) is None  # 2/2^5 > 0.05: nothing is detectable
    assert S.detectable_difference(float("nan"), 10) is None and S.detectable_difference(0.0, 10) == 0.0


def test_aggregates_across_settings():
    a, b = [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]
    iqm = S.aggregate_iqm([a, b])
    assert iqm.estimate == pytest.approx(sps.trim_mean(a + b, 0.25)) and iqm.low <= iqm.estimate <= iqm.high
    assert S.aggregate_mean([a, b]).estimate == pytest.approx(0.45)
    assert S.probability_of_improvement([[0.9, 0.95], [0.8]], [[0.1, 0.2], [0.3]]).estimate == 1.0
    # per setting, the Mann–Whitney U over n·m (rliable's definition), averaged over settings
    x, y = [[0.5, 0.7, 0.9], [0.2, 0.4]], [[0.6, 0.7, 0.8, 0.1], [0.3, 0.5, 0.2]]
    u = [sps.mannwhitneyu(a, b).statistic / (len(a) * len(b)) for a, b in zip(x, y)]
    assert S.probability_of_improvement(x, y).estimate == pytest.approx(np.mean(u))
    same = S.probability_of_improvement([[0.5, 0.6]], [[0.5, 0.6]])
    assert same.estimate == pytest.approx(0.5) and same.low < 0.5 < same.high


def test_seed_slopes_by_hand_and_equal_to_the_pooled_fit():
    # horizons 1, 2, 4: log2 = 0, 1, 2, so one seed's least-squares slope is (d_4 − d_1) / 2
    diffs = {0: {1: 0.0, 2: 1.0, 4: 2.0}, 1: {1: 1.0, 2: 1.0, 4: 1.0}, 2: {1: 0.0, 2: 0.0, 4: 3.0},
             3: {1: 5.0, 4: 5.0}}  # seed 3 lacks horizon 2: left out
    trend = S.seed_slopes(diffs, [4, 1, 2])
    assert trend.seeds == (0, 1, 2)
    assert trend.slope.estimate == pytest.approx((1.0 + 0.0 + 1.5) / 3)
    assert trend.sd == pytest.approx(np.std([1.0, 0.0, 1.5], ddof=1))
    # sign flips of (1, 0, 1.5): |mean| reaches 2.5/3 in 4 of the 8 flips (flipping the 0 changes nothing)
    assert trend.p == pytest.approx(0.5)
    assert trend.slope.method == "t" and trend.detectable is None  # 3 seeds cannot reach p < 0.05 at all
    x = np.log2([1, 2, 4] * 3)
    y = [diffs[s][h] for s in (0, 1, 2) for h in (1, 2, 4)]
    assert trend.slope.estimate == pytest.approx(np.polyfit(x, y, 1)[0])  # balanced: the pooled slope
    with pytest.raises(ValueError, match="two distinct positive"):
        S.seed_slopes(diffs, [2, 2])


def test_seed_slopes_detects_a_real_trend_and_not_a_flat_one():
    rng = np.random.default_rng(3)
    horizons = [14, 27, 59, 115]

    def diffs(per_doubling):  # 16 seeds, noise SD 2 points on each paired difference
        return {s: {h: per_doubling * math.log2(h / 14) + rng.normal(0, 0.02) for h in horizons} for s in range(16)}

    rising = S.seed_slopes(diffs(0.02), horizons)
    assert rising.p < 0.01 and rising.slope.low > 0 and rising.slope.estimate == pytest.approx(0.02, abs=0.005)
    flat = S.seed_slopes(diffs(0.0), horizons)
    assert flat.slope.low < 0 < flat.slope.high and 0 < flat.detectable < 0.02
