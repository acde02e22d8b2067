"""Which differences the results support: paired comparisons against a reference method per setting
(Holm-corrected over one table), the entries Table 1 may bold, aggregates across settings, and the
evaluation noise. Statistics come from ``analysis.stats``; this module only arranges the cells.

Scores: ``best_headline`` is the paper's protocol (best validation headline within [0, T_stop]);
``heldout_headline`` is the held-out one (the test splits at that step). Collapsed seeds count with
their best score before the collapse, as in the paper's matched window.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.store import FINISHED

from . import stats as S

SCORES = {"best_headline": "paper protocol: best validation headline", "heldout_headline":
          "held-out: test splits at the step chosen on validation"}


def seed_scores(cells: pd.DataFrame, row: str, setting: str, score: str, row_key: str = "label") -> dict:
    """{seed: score} of one (row, setting) over its finished seeds."""
    sub = cells[(cells[row_key] == row) & (cells["setting"] == setting) & cells["state"].isin(FINISHED)]
    sub = sub[pd.to_numeric(sub[score], errors="coerce").notna()]
    return {int(s): float(v) for s, v in zip(sub["seed"], sub[score])}


def warm_start_seeds(best_steps: pd.Series) -> int:
    """How many of these finished seeds chose step 0 — the starting policy — as their best: their score
    is the warm start's, not the method's improvement on it (one rule for every table and comparison)."""
    return int((pd.to_numeric(best_steps, errors="coerce") == 0).sum())


def never_left_warm_start(cells: pd.DataFrame, row: str, setting: str, row_key: str = "label") -> bool:
    """Whether every finished seed of (row, setting) chose the warm start as its best."""
    sub = cells[(cells[row_key] == row) & (cells["setting"] == setting) & cells["state"].isin(FINISHED)]
    return len(sub) > 0 and warm_start_seeds(sub["best_step"]) == len(sub)


def _paired_rows(cells, pairs, score, row_key, effect, interval) -> list[dict]:
    out, family = [], max(1, len(pairs))
    for setting, ref, other in pairs:
        a, b = seed_scores(cells, ref, setting, score, row_key), seed_scores(cells, other, setting, score, row_key)
        if not a or not b:
            continue
        cmp = S.paired_comparison(a, b, interval=interval, bounds=(-1.0, 1.0))
        n = len(cmp.seeds)
        note = [f"{row} never left the warm start" for row in (ref, other)
                if never_left_warm_start(cells, row, setting, row_key)]
        if n and all(a[s] == b[s] for s in cmp.seeds):
            note.append("identical scores in every seed: the difference is exactly 0, not an estimate")
        if n < 2:
            note.append("fewer than 2 shared seeds")
        elif S.smallest_p(n) > S.ALPHA:
            note.append(f"{n} seeds: the permutation test cannot reach p < {S.ALPHA} (smallest p {S.smallest_p(n):.3g})")
        warning = S.coverage_warning(n, cmp.diff.method) if cmp.diff.method != "exact" else None
        if warning:
            note.append(warning)
        out.append({"setting": setting, "reference": ref, "other": other, "seeds": n, "diff": cmp.diff.estimate,
                    "ci_low": cmp.diff.low, "ci_high": cmp.diff.high, "interval": cmp.diff.method, "p": cmp.p,
                    "sd_diff": cmp.sd, "note": "; ".join(note),
                    # at the level of Holm's first step over the family, so that the correction is survivable
                    "seeds_needed": S.seeds_needed(cmp.sd, effect, alpha=S.ALPHA / family),
                    "detectable": S.detectable_difference(cmp.sd, n, alpha=S.ALPHA / family)})
    return out


def comparisons(cells: pd.DataFrame, settings: list[str], rows: list[str], reference: str,
                score: str = "best_headline", row_key: str = "label", effect: float = 0.02,
                interval: str = "auto") -> pd.DataFrame:
    """Per setting, ``reference`` against every other row, paired by seed: mean difference (reference −
    other) with its interval, the permutation p, Holm's p over every comparison of the table, the
    verdict, and the seeds a difference of ``effect`` would need at 80 % power."""
    pairs = [(s, reference, r) for s in settings for r in rows if r != reference]
    frame = pd.DataFrame(_paired_rows(cells, pairs, score, row_key, effect, interval))
    if frame.empty:
        return frame
    frame["p_holm"] = S.holm(frame["p"])
    frame["verdict"] = [S.verdict(S.Interval(d, lo, hi, n, m), p) for d, lo, hi, n, m, p in
                        frame[["diff", "ci_low", "ci_high", "seeds", "interval", "p_holm"]].itertuples(index=False)]
    frame.insert(0, "score", score)
    return frame


def supported_best(cells: pd.DataFrame, long: pd.DataFrame, settings: list[str], score: str,
                   compared: pd.DataFrame, row_key: str = "label") -> set:
    """(row, setting) entries Table 1 may bold: the top mean of a column when a paired test (Holm over
    the table's top-vs-rest comparisons) finds it better than every other entry of the column, and the
    reference comparisons do not call the top entry's difference undetectable."""
    pairs = []
    for setting in settings:
        col = long[(long["setting"] == setting) & long["rank"].notna()]
        if len(col) < 2:
            continue
        top = col.sort_values("mean", ascending=False)[row_key].iloc[0]
        pairs += [(setting, top, r) for r in long[long["setting"] == setting][row_key] if r != top]
    frame = pd.DataFrame(_paired_rows(cells, pairs, score, row_key, 0.02, "auto"))
    if frame.empty:
        return set()
    frame["p_holm"] = S.holm(frame["p"])
    bold = set()
    for (setting, top), group in frame.groupby(["setting", "reference"]):
        if not ((group["p_holm"] < S.ALPHA) & (group["diff"] > 0)).all():
            continue
        ref_rows = compared[(compared["setting"] == setting) & (compared["other"] == top)] if not compared.empty else compared
        if not ref_rows.empty and ref_rows["verdict"].iloc[0] == "no detectable difference":
            continue
        bold.add((top, setting))
    return bold


def aggregate_across_settings(cells: pd.DataFrame, settings: list[str], rows: list[str], reference: str,
                              score: str = "best_headline", row_key: str = "label") -> pd.DataFrame:
    """Per row over every (setting, seed): mean and IQM with stratified-bootstrap intervals, and the
    probability that the reference beats it, P(reference > row)."""
    out = []
    ref_samples = [list(seed_scores(cells, reference, s, score, row_key).values()) for s in settings]
    for row in rows:
        samples = [list(seed_scores(cells, row, s, score, row_key).values()) for s in settings]
        if not any(samples):
            continue
        mean, iqm = S.aggregate_mean(samples), S.aggregate_iqm(samples)
        entry = {"score": score, "row": row, "settings": sum(bool(x) for x in samples), "runs": mean.n,
                 "mean": mean.estimate, "mean_low": mean.low, "mean_high": mean.high,
                 "iqm": iqm.estimate, "iqm_low": iqm.low, "iqm_high": iqm.high}
        if row != reference:
            poi = S.probability_of_improvement(ref_samples, samples)
            entry.update(p_ref_better=poi.estimate, p_ref_better_low=poi.low, p_ref_better_high=poi.high)
        out.append(entry)
    return pd.DataFrame(out)


def eval_noise(cells: pd.DataFrame, settings: list[str], measured: dict | None = None) -> pd.DataFrame:
    """Per setting: the SD over seeds of the step-0 headline (one model — the shared warm start —
    evaluated with each seed's noise: evaluation noise alone), with its chi-square interval; and, where
    ``scripts/eval_noise.py`` measured it, the SD of one fixed model's headline and of the difference
    of two fixed models over evaluation seeds, per evaluation design, with its cost."""
    out = []
    for setting in settings:
        sub = cells[(cells["setting"] == setting)].drop_duplicates("seed")
        values = pd.to_numeric(sub["step0_headline"], errors="coerce").dropna()
        sd = S.noise_sd(values)
        base = {"setting": setting, "step0_seeds": sd.n, "step0_mean": values.mean() if len(values) else math.nan,
                "step0_sd": sd.estimate, "step0_sd_low": sd.low, "step0_sd_high": sd.high}
        entry = (measured or {}).get(setting) or {}
        plan = entry.get("plan") or {}
        if not entry.get("designs"):
            out.append(base)
        for d in entry.get("designs", []):
            role = {plan.get("val"): "validation, every eval step", plan.get("test"): "test, once per run"}.get(
                d["design"], "the old evaluation (multinomial streams)" if not d["common_noise"] else "alternative")
            if plan.get("val") == plan.get("test") == d["design"]:
                role = "validation and test"
            out.append({**base, "design": f"{d['problems_per_split']} × {d['samples']}", "role": role,
                        "streams": entry.get("streams"), "sd_single": d["sd_single"], "sd_diff": d["sd_diff"],
                        "sd_diff_low": d["sd_diff_ci"][0], "sd_diff_high": d["sd_diff_ci"][1], "eval_s": d["eval_s"],
                        "plan_eval_share": plan.get("eval_share")})
    return pd.DataFrame(out)


def interval_text(mean: float, low: float, high: float, scale: float = 100.0) -> str:
    if mean is None or not np.isfinite(mean):
        return "—"
    if low is None or not np.isfinite(low):
        return f"{mean * scale:.1f}"
    return f"{mean * scale:.1f} [{low * scale:.1f}, {high * scale:.1f}]"
