"""Equal-budget tuning (Henderson et al. 2018; Dodge et al. 2019): every method's trust-region
parameters get the same number of configurations, trained on tuning seeds that are never reported;
each method's configuration with the best mean validation headline over those seeds is the one
trained again on fresh seeds and scored on the held-out test splits.

A tuning sweep is a grid spec with ``kind: tuning``; its variants carry ``params``/``overrides`` and
an ``arm`` (default: their method; e.g. ``cppo_kl`` for CPPO with the KL divergence, tuned on its own),
and every arm has the same number of them. This module scores such a sweep's cells
(``tuning_table``) and makes the choice (``choose``) that ``tuned:`` variants of later sweeps and
the report both read.
"""

from __future__ import annotations

import pandas as pd

from harness.store import FINISHED

from . import stats as S

KIND = "tuning"
COLLAPSE_SCORE = 0.0  # a seed whose run collapsed counts as this in the choice: robustness is part of the score


def is_tuning(manifest: dict) -> bool:
    return ((manifest or {}).get("spec") or {}).get("kind") == KIND


def selection_score(row: pd.Series) -> float:
    """The per-seed score the choice maximises: the best validation headline in [0, T_stop], or
    ``COLLAPSE_SCORE`` for a run that collapsed (its pre-collapse peak is not a usable configuration)."""
    if row["state"] == "collapsed":
        return COLLAPSE_SCORE
    return float(row["best_headline"])


def arms(manifest: dict) -> dict[str, str]:
    """Label → arm of a tuning sweep's variants (the arm defaults to the variant's method)."""
    variants = ((manifest or {}).get("spec") or {}).get("variants") or {}
    return {label: str(body.get("arm") or body["method"]) for label, body in variants.items()}


def with_arms(cells: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    """The cells with an ``arm`` column (from the manifest's spec; the method where it names none)."""
    by_label = arms(manifest)
    return cells.assign(arm=[by_label.get(lb, m) for lb, m in zip(cells["label"], cells["method"])])


def tuning_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per tuning configuration, in spec order: its arm, the selection score's mean over
    the tuning seeds with a 95 % t interval, how many seeds finished and collapsed, the mean binding
    rates, and ``chosen`` (the best mean of its arm; ties go to the earlier configuration; an arm
    with an unfinished cell has no choice yet). ``cells`` without an ``arm`` column: arm = method."""
    if "arm" not in cells:
        cells = cells.assign(arm=cells["method"])
    rows = []
    for (arm, label), group in cells.groupby(["arm", "label"], sort=False):
        done = group[group["state"].isin(FINISHED)]
        scores = [selection_score(r) for _, r in done.iterrows()]
        interval = S.mean_interval(scores, interval="t", bounds=(0.0, 1.0))
        rows.append({"arm": arm, "method": group["method"].iloc[0], "label": label, "seeds": len(group),
                     "finished": len(done),
                     "collapsed": int((done["state"] == "collapsed").sum()),
                     "score": interval.estimate, "low": interval.low, "high": interval.high,
                     **{k: _mean(done[k]) for k in ("mask_fraction", "seq_acceptance", "cap_hit") if k in done}})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["chosen"] = False
    for _, group in table.groupby("arm", sort=False):
        if (group["finished"] < group["seeds"]).any():
            continue
        table.loc[group["score"].idxmax(), "chosen"] = True  # idxmax: the first of equal maxima
    return table


def choose(cells: pd.DataFrame) -> dict[str, str]:
    """Arm → the label of its chosen configuration (arms still tuning are absent)."""
    table = tuning_table(cells)
    return {} if table.empty else dict(zip(table.loc[table["chosen"], "arm"], table.loc[table["chosen"], "label"]))


def budgets(cells: pd.DataFrame) -> dict[str, int]:
    """Arm → its number of configurations (an equal budget makes these all equal)."""
    key = "arm" if "arm" in cells else "method"
    return cells.groupby(key, sort=False)["label"].nunique().to_dict()


def _mean(column: pd.Series):
    values = pd.to_numeric(column, errors="coerce").dropna()
    return float(values.mean()) if len(values) else None
