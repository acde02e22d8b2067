"""How sure a comparison is: intervals over seeds, paired permutation tests, Holm's correction,
aggregates across settings (mean and IQM with stratified bootstrap intervals, probability of
improvement, in the manner of rliable), evaluation-noise SDs, a seeds-needed estimate, and the trend of
a paired difference over a horizon (per-seed slopes).

Built on ``scipy.stats`` (``bootstrap``, ``permutation_test``, ``ttest_1samp``, ``trim_mean``, ``chi2``)
and ``statsmodels`` (Holm's step-down correction, t-test power). Every function takes plain arrays of
per-seed scores; nothing here knows the results format.

Interval choice (``interval="auto"``): the bootstrap's coverage is far below nominal with few seeds
(measured for normal scores, 95 % nominal: BCa 0.73 at 3 seeds, 0.85 at 5, 0.89 at 10, 0.94 at 20), so
below ``BOOTSTRAP_MIN_SEEDS`` the Student-t interval is used (0.94–0.96 at 3–30 seeds; it assumes
roughly normal seed outcomes), and BCa bootstrap from there on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
BOOTSTRAP_MIN_SEEDS = 20
RESAMPLES = 9999
EXACT_MAX_SEEDS = RESAMPLES.bit_length() - 1  # scipy enumerates all 2^n sign flips while 2^n ≤ RESAMPLES
INTERVALS = ("auto", "t", "bootstrap")
# measured 95 % BCa coverage for normal scores (docs/statistics.md): seeds → coverage
BOOTSTRAP_COVERAGE = {3: 0.73, 5: 0.85, 10: 0.89, 20: 0.94}


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int
    method: str        # "t", "bootstrap", "exact" (no spread) or "none" (fewer than two values)

    def excludes(self, value: float = 0.0) -> bool:
        return bool(self.low > value or self.high < value)


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)  # analysis only; training randomness lives in the harness


def interval_method(n: int, interval: str = "auto") -> str:
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {list(INTERVALS)}, got {interval!r}")
    if interval == "auto":
        return "bootstrap" if n >= BOOTSTRAP_MIN_SEEDS else "t"
    return interval


def mean_interval(values, confidence: float = CONFIDENCE, interval: str = "auto", seed: int = 0,
                  bounds: tuple[float, float] | None = None) -> Interval:
    """The mean of per-seed values and its ``confidence`` interval (Student-t or BCa bootstrap), clipped
    to ``bounds`` when the mean cannot lie outside them (an accuracy in [0, 1]; clipping to where the
    mean can be never lowers coverage)."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, "none")
    method = interval_method(n, interval)
    if np.ptp(x) <= 1e-12:  # every seed agrees: no spread to resample or scale
        return Interval(mean, mean, mean, n, "exact")
    if method == "t":
        ci = stats.ttest_1samp(x, 0.0).confidence_interval(confidence)
    else:
        ci = stats.bootstrap((x,), np.mean, confidence_level=confidence, method="BCa", n_resamples=RESAMPLES,
                             rng=_rng(seed)).confidence_interval
    low, high = float(ci.low), float(ci.high)
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(mean, low, high, n, method)


def coverage_warning(n: int, method: str) -> str | None:
    """Why an interval over ``n`` seeds cannot be trusted at its nominal level, else None."""
    if n < 2:
        return f"{n} seed(s): no interval"
    if method == "bootstrap" and n < BOOTSTRAP_MIN_SEEDS:
        near = max((k for k in BOOTSTRAP_COVERAGE if k <= n), default=min(BOOTSTRAP_COVERAGE))
        return (f"bootstrap over {n} seeds under-covers (95 % nominal, ≈ {BOOTSTRAP_COVERAGE[near]:.0%} measured at "
                f"{near}); use the t interval or ≥ {BOOTSTRAP_MIN_SEEDS} seeds")
    return None


def smallest_p(n_pairs: int) -> float:
    """The smallest two-sided p an exact paired (sign-flip) permutation test can reach: 2 / 2^n."""
    return min(1.0, 2.0 / 2 ** n_pairs) if n_pairs > 0 else 1.0


def paired_permutation_p(x, y, seed: int = 0) -> float:
    """Two-sided p of the paired permutation test of mean(x − y) = 0 (exact for ≤ EXACT_MAX_SEEDS pairs)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"paired test needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2 or np.all(x == y):
        return 1.0
    result = stats.permutation_test((x, y), lambda a, b, axis: np.mean(a - b, axis=axis), vectorized=True,
                                    permutation_type="samples", alternative="two-sided", n_resamples=RESAMPLES,
                                    rng=_rng(seed))
    return float(min(1.0, result.pvalue))


def unpaired_permutation_p(x, y, seed: int = 0) -> float:
    """Two-sided p of the two-sample permutation test of mean(x) = mean(y) (no pairing)."""
    x, y = _finite(x), _finite(y)
    if len(x) < 1 or len(y) < 1 or len(x) + len(y) < 3:
        return 1.0
    result = stats.permutation_test((x, y), lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
                                    vectorized=True, permutation_type="independent", alternative="two-sided",
                                    n_resamples=RESAMPLES, rng=_rng(seed))
    return float(min(1.0, result.pvalue))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error); NaN entries stay NaN and are not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return out


@dataclass(frozen=True)
class Paired:
    diff: Interval          # mean over shared seeds of (reference − other)
    p: float                # paired permutation p
    sd: float               # SD of the per-seed differences (NaN below two pairs)
    seeds: tuple            # the seeds both sides have


def paired_comparison(reference: dict, other: dict, interval: str = "auto", seed: int = 0,
                      bounds: tuple[float, float] | None = None) -> Paired:
    """Compare two methods on the seeds both have: ``reference[seed]`` − ``other[seed]`` (``bounds``: of
    the difference, e.g. (−1, 1) for accuracies)."""
    shared = tuple(sorted(s for s in reference if s in other
                          and np.isfinite(reference[s]) and np.isfinite(other[s])))
    x = np.array([reference[s] for s in shared], dtype=float)
    y = np.array([other[s] for s in shared], dtype=float)
    d = x - y
    return Paired(diff=mean_interval(d, interval=interval, seed=seed, bounds=bounds), p=paired_permutation_p(x, y, seed),
                  sd=float(d.std(ddof=1)) if len(d) > 1 else math.nan, seeds=shared)


def verdict(diff: Interval, p_adjusted: float, alpha: float = ALPHA) -> str:
    """'better' / 'worse' (the reference against the other) or 'no detectable difference'."""
    if not np.isfinite(p_adjusted) or p_adjusted >= alpha or diff.estimate == 0:
        return "no detectable difference"
    return "better" if diff.estimate > 0 else "worse"


def seeds_needed(sd_diff: float, effect: float, power: float = 0.8, alpha: float = ALPHA) -> int | None:
    """Seeds (pairs) a paired comparison needs to detect ``effect`` with ``power`` at two-sided level
    ``alpha``, from the SD of the per-seed differences (t-test power; never below the exact permutation
    test's floor, the n where 2 / 2^n ≤ alpha)."""
    from statsmodels.stats.power import TTestPower

    floor = next(n for n in range(1, 64) if smallest_p(n) <= alpha)
    if not np.isfinite(sd_diff) or effect <= 0:
        return None
    if sd_diff == 0:
        return floor
    analysis = TTestPower()
    for n in range(max(2, floor), 100_000):  # the smallest n whose power reaches the target
        if analysis.power(effect_size=effect / sd_diff, nobs=n, alpha=alpha, alternative="two-sided") >= power:
            return n
    return None


def detectable_difference(sd_diff: float, n_pairs: int, power: float = 0.8, alpha: float = ALPHA) -> float | None:
    """The smallest mean difference a paired comparison of ``n_pairs`` seeds detects with ``power`` at
    two-sided level ``alpha``, from the SD of the per-seed differences (t-test power, the inverse of
    ``seeds_needed``); None where the exact permutation test cannot reach ``alpha`` at all (2 / 2^n > alpha)
    or the SD is unknown. What "no detectable difference" means at the seeds a study has."""
    from statsmodels.stats.power import TTestPower

    if n_pairs < 2 or smallest_p(n_pairs) > alpha or not np.isfinite(sd_diff):
        return None
    if sd_diff == 0:
        return 0.0
    effect = TTestPower().solve_power(effect_size=None, nobs=n_pairs, alpha=alpha, power=power,
                                      alternative="two-sided")
    return float(effect * sd_diff)


@dataclass(frozen=True)
class Trend:
    slope: Interval           # mean over seeds of each seed's slope: the difference's change per doubling of x
    p: float                  # two-sided sign-flip permutation p of mean slope = 0
    sd: float                 # SD of the per-seed slopes (NaN below two seeds)
    seeds: tuple              # the seeds with a difference at every x
    detectable: float | None  # the smallest |slope| these seeds detect at 80 % power (two-sided ``alpha``)


def seed_slopes(diff_by_seed: dict, xs, interval: str = "auto", seed: int = 0, alpha: float = ALPHA) -> Trend:
    """The trend of a paired difference over log2(x), respecting the pairing by seed: ``diff_by_seed[s][x]``
    is the difference (reference − other, both trained with seed s) at x. Each seed with a difference at
    every x gets its least-squares slope over log2(x); the seeds' slopes are independent, so the mean
    slope gets the usual one-sample interval (``mean_interval``) and the sign-flip permutation test (exact
    up to EXACT_MAX_SEEDS seeds, Monte Carlo beyond). With every seed complete, the mean slope equals the
    slope fitted to all the differences at once."""
    xs = sorted(set(float(x) for x in xs))
    if len(xs) < 2 or xs[0] <= 0:
        raise ValueError(f"a trend over log2(x) needs at least two distinct positive x, got {xs}")
    centred = np.log2(xs) - np.log2(xs).mean()
    weights = centred / (centred ** 2).sum()  # slope = Σ w_i d_i: least squares on one seed's points
    complete = tuple(sorted(s for s, row in diff_by_seed.items()
                            if all(np.isfinite(row.get(x, math.nan)) for x in xs)))
    slopes = np.array([float(weights @ np.array([diff_by_seed[s][x] for x in xs])) for s in complete])
    sd = float(slopes.std(ddof=1)) if len(slopes) > 1 else math.nan
    return Trend(slope=mean_interval(slopes, interval=interval, seed=seed),
                 p=paired_permutation_p(slopes, np.zeros_like(slopes), seed), sd=sd, seeds=complete,
                 detectable=detectable_difference(sd, len(slopes), alpha=alpha))


def noise_sd(values, confidence: float = CONFIDENCE) -> Interval:
    """The SD of repeated measurements (evaluation noise) with its chi-square interval."""
    x = _finite(values)
    n = len(x)
    if n < 2:
        return Interval(math.nan, math.nan, math.nan, n, "none")
    s2 = float(x.var(ddof=1))
    lo_q, hi_q = stats.chi2.ppf([(1 + confidence) / 2, (1 - confidence) / 2], n - 1)
    return Interval(math.sqrt(s2), math.sqrt((n - 1) * s2 / lo_q), math.sqrt((n - 1) * s2 / hi_q), n, "chi2")


# --- across settings (rliable-style) ---------------------------------------------------------------
def _iqm(*samples, axis=-1):
    return stats.trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)


def _mean(*samples, axis=-1):
    return np.mean(np.concatenate(samples, axis=axis), axis=axis)


def _stratified(samples: list, statistic, confidence: float, seed: int) -> Interval:
    """A statistic of per-setting seed samples with a percentile interval from resampling seeds within
    each setting (stratified bootstrap, as rliable does)."""
    samples = [np.asarray(s, dtype=float) for s in samples]
    if not any(len(s) for s in samples):
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    estimate = float(statistic(*samples))
    n = sum(len(s) for s in samples)
    varying = [i for i, s in enumerate(samples) if len(s) > 1 and np.ptp(s) > 0]
    if not varying:
        return Interval(estimate, estimate, estimate, n, "exact")

    def resampled(*drawn, axis=-1):  # strata without spread (one seed, or all equal) stay as they are
        batch = drawn[0].shape[:-1]
        full = [np.broadcast_to(s, batch + s.shape) for s in samples]
        for i, d in zip(varying, drawn):
            full[i] = d
        return statistic(*full, axis=axis)

    ci = stats.bootstrap([samples[i] for i in varying], resampled, vectorized=True, paired=False,
                         confidence_level=confidence, method="percentile", n_resamples=RESAMPLES,
                         rng=_rng(seed)).confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), n, "stratified bootstrap")


def aggregate_mean(samples: list, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """Mean over every (setting, seed) score; ``samples`` holds one array of seed scores per setting."""
    return _stratified(samples, _mean, confidence, seed)


def aggregate_iqm(samples: list, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """Interquartile mean (25 % trimmed each side) over every (setting, seed) score."""
    return _stratified(samples, _iqm, confidence, seed)


def probability_of_improvement(x_by_setting: list, y_by_setting: list, confidence: float = CONFIDENCE,
                               seed: int = 0) -> Interval:
    """P(X > Y): per setting the chance that a random seed of X beats a random seed of Y (ties count
    ½, the Mann–Whitney U / (n·m)), averaged over settings; stratified bootstrap interval."""
    pairs = [(np.asarray(x, float), np.asarray(y, float)) for x, y in zip(x_by_setting, y_by_setting)
             if len(x) and len(y)]
    if not pairs:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    k = len(pairs)

    def statistic(*samples, axis=-1):
        per = []
        for x, y in zip(samples[:k], samples[k:]):
            gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
            eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
            per.append(gt + 0.5 * eq)
        return np.mean(per, axis=0)

    samples = [x for x, _ in pairs] + [y for _, y in pairs]
    return _stratified(samples, statistic, confidence, seed)
