"""The factorial view of a grid: for each (sweep, setting, method) whose cells differ in one or two
parameters (what the configurations differ in, seed aside — ``analysis.grouping``), a pivot of the mean
score over seeds with its 95 % interval per combination, a heatmap (two parameters; the paper's Fig. 4
left is one) or a line plot with bands (one parameter), and the main effects: a linear model of the
score on the parameters (as categories) with the seed as a block, so every comparison is paired by
seed, and its type-II ANOVA (statsmodels)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.store import FINISHED

from . import stats as S
from .compare import SCORES, warm_start_seeds
from .tables import WARM_START, to_markdown

TEST_NAME = ("linear model score ~ C(parameter …) + C(seed) (the seed a block: the comparisons are paired by "
             "seed), type-II ANOVA F test per parameter (statsmodels)")


@dataclass
class Factorial:
    sweep: str
    setting: str
    method: str
    parameters: list[str]      # the varied keys, dotted (method.delta_b)
    frame: pd.DataFrame        # one row per finished cell: the parameters' values (text), seed, scores, best_step


def find_factorials(cells: pd.DataFrame) -> tuple[list[Factorial], list[str]]:
    """The groups a factorial view applies to, and a note for each grid it cannot show (three or more
    varied parameters)."""
    found, notes = [], []
    if "signature" not in cells:
        return found, notes
    # one row per run: a run two labels share (two sweeps, or two names of one config) counts once
    done = cells[cells["state"].isin(FINISHED) & cells["signature"].notna()].drop_duplicates(["sweep", "run_dir"])
    for (sweep, setting, method), group in done.groupby(["sweep", "setting", "method"], sort=False):
        configs = {s: json.loads(s) for s in group["signature"].unique()}
        if len(configs) < 2:
            continue
        keys = sorted({k for c in configs.values() for k in c})
        varied = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1]
        if len(varied) > 2:
            notes.append(f"factorial view: {sweep}/{setting}/{method} varies {len(varied)} parameters "
                         f"({', '.join(varied)}); the view shows one or two")
            continue
        if len(varied) == 2:
            combos = {(json.dumps(c.get(varied[0]), default=str), json.dumps(c.get(varied[1]), default=str))
                      for c in configs.values()}
            levels = [{a for a, _ in combos}, {b for _, b in combos}]
            if len(combos) < len(levels[0]) * len(levels[1]) or min(map(len, levels)) < 2:
                notes.append(f"factorial view: {sweep}/{setting}/{method} varies {varied[0]} and {varied[1]} "
                             "together, not as a full grid (its configurations are compared in the tables)")
                continue
        rows = []
        for r in group.to_dict("records"):
            config = configs[r["signature"]]
            # a key absent from a configuration sits at its declared default
            rows.append({**{k: _default_of(method, k) if config.get(k) is None else config.get(k) for k in varied},
                         "seed": r["seed"], "best_step": r["best_step"],
                         **{score: r.get(score) for score in SCORES}})
        found.append(Factorial(sweep, setting, method, varied, pd.DataFrame(rows)))
    return found, notes


def _default_of(method: str, key: str):
    """The registry's default of a method parameter (``method.divergence`` → ``topk_tv``), else 'default'."""
    from harness.config import method_defaults

    try:
        value = method_defaults(method).get(key.removeprefix("method.")) if key.startswith("method.") else None
    except StopIteration:  # not a registered method (an imported run's own name)
        value = None
    return "default" if value is None else value


def _levels(values: pd.Series) -> list:
    """A parameter's values in order (numbers ascending, then the rest as text)."""
    unique = list(dict.fromkeys(values))
    numbers = sorted(v for v in unique if isinstance(v, (int, float)) and not isinstance(v, bool))
    return numbers + [v for v in unique if v not in numbers]


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def pivot_table(f: Factorial, score: str) -> pd.DataFrame:
    """Mean [95 % interval] over seeds per combination (rows: the first parameter; columns: the second)."""
    a, b = f.parameters[0], (f.parameters[1] if len(f.parameters) > 1 else None)
    frame = f.frame.copy()
    table = {}
    for va in _levels(frame[a]):
        for vb in (_levels(frame[b]) if b else [None]):
            sel = (frame[a].astype(str) == str(va)) & ((frame[b].astype(str) == str(vb)) if b else True)
            values = pd.to_numeric(frame.loc[sel, score], errors="coerce").dropna()
            ci = S.mean_interval(values, bounds=(0.0, 1.0))
            text = "missing" if values.empty else (
                f"{100 * values.mean():.1f}" + (f" [{100 * ci.low:.1f}, {100 * ci.high:.1f}]" if len(values) > 1 else ""))
            steps = frame.loc[sel, "best_step"]  # (the frame holds finished cells only)
            if len(steps) and warm_start_seeds(steps) == len(steps):
                text += f", {WARM_START}"
            table.setdefault(str(va), {})[str(vb) if b else _short(score)] = text
    out = pd.DataFrame(table).T
    out.index.name = _short(a) + (f" \\ {_short(b)}" if b else "")
    return out


def main_effects(f: Factorial, score: str) -> tuple[pd.DataFrame | None, str]:
    """Type-II ANOVA of the score on the parameters with the seed as a block, and each level's effect
    against the parameter's first level with its 95 % interval; (None, why) where it cannot be fitted."""
    import statsmodels.formula.api as smf
    from patsy import PatsyError
    from statsmodels.stats.anova import anova_lm

    frame = f.frame.copy()
    frame["y"] = 100 * pd.to_numeric(frame[score], errors="coerce")
    frame = frame.dropna(subset=["y"])
    names = {k: f"p{i}" for i, k in enumerate(f.parameters)}
    levels = {k: [str(v) for v in _levels(frame[k])] for k in f.parameters}  # of the scored cells
    for key, name in names.items():
        frame[name] = frame[key].astype(str)
    # each parameter's effects against its first level in our order (not the alphabet's)
    term_of = {k: f"C({n}, Treatment(reference={levels[k][0]!r}))" for k, n in names.items()}
    terms = " + ".join(term_of.values())
    seeds = frame["seed"].nunique()
    formula = f"y ~ {terms}" + (" + C(seed)" if seeds > 1 else "")
    n_params = 1 + sum(frame[n].nunique() - 1 for n in names.values()) + (seeds - 1 if seeds > 1 else 0)
    if len(frame) - n_params < 1:
        return None, f"too few cells for a model ({len(frame)} scores, {n_params} coefficients): more seeds needed"
    if any(frame[n].nunique() < 2 for n in names.values()):
        return None, "a parameter has one level among the scored cells"
    try:
        model = smf.ols(formula, data=frame).fit()
        anova = anova_lm(model, typ=2)
    except (ValueError, np.linalg.LinAlgError, PatsyError) as err:  # e.g. levels confounded with seeds
        return None, f"the model cannot be fitted on these cells ({err})"
    rows = []
    for key, term in term_of.items():
        for level in levels[key][1:]:
            coef = f"{term}[T.{level}]"
            if coef not in model.params:
                continue
            low, high = model.conf_int().loc[coef]
            rows.append({"parameter": key, "level": level, "vs": levels[key][0], "effect": model.params[coef],
                         "ci_low": low, "ci_high": high, "F": anova.loc[term, "F"], "p": anova.loc[term, "PR(>F)"]})
    if not rows:
        return None, "no level has an estimable effect on these cells"
    return pd.DataFrame(rows), ""


def write_factorial(f: Factorial, out: Path, formats=("png",)) -> tuple[list[Path], str]:
    """The pivot, main effects and figure of one group: files and a markdown section."""
    stem = f"factorial_{f.sweep}_{f.setting}_{f.method}"
    lines = [f"### {f.sweep} / {f.setting} / {f.method}: {' × '.join(f.parameters)}", ""]
    written, effects_all = [], []
    for score in [s for s in SCORES if pd.to_numeric(f.frame[s], errors="coerce").notna().any()]:
        lines += [f"{SCORES[score]} (%, mean [95 % interval] over seeds):", "", to_markdown(pivot_table(f, score)), ""]
        effects, why = main_effects(f, score)
        if effects is None:
            lines += [f"Main effects: {why}.", ""]
            continue
        effects_all.append(effects.assign(score=score))
        shown = effects.assign(effect=[f"{e:+.1f} [{lo:+.1f}, {hi:+.1f}]" for e, lo, hi in
                                       effects[["effect", "ci_low", "ci_high"]].itertuples(index=False)],
                               p=[f"{p:.3g}" for p in effects["p"]], F=[f"{v:.3g}" for v in effects["F"]])
        lines += [f"Main effects (points; {TEST_NAME}):", "",
                  to_markdown(shown[["parameter", "level", "vs", "effect", "F", "p"]], index=False), ""]
    if effects_all:
        path = out / f"{stem}_effects.csv"
        pd.concat(effects_all).to_csv(path, index=False)
        written.append(path)
    written += _figure(f, out, stem, formats)
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return [path, *written], "\n".join(lines)


def _figure(f: Factorial, out: Path, stem: str, formats) -> list[Path]:
    """A heatmap of the mean (two parameters) or the mean with its band against the parameter (one)."""
    import matplotlib.pyplot as plt

    frame, score = f.frame, "best_headline"
    a = f.parameters[0]
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    if len(f.parameters) == 2:
        b = f.parameters[1]
        la, lb = _levels(frame[a]), _levels(frame[b])
        grid = np.full((len(la), len(lb)), np.nan)
        for i, va in enumerate(la):
            for j, vb in enumerate(lb):
                sel = (frame[a].astype(str) == str(va)) & (frame[b].astype(str) == str(vb))
                values = pd.to_numeric(frame.loc[sel, score], errors="coerce").dropna()
                grid[i, j] = 100 * values.mean() if len(values) else np.nan
        image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="w" if value < np.nanmean(grid) else "k")
        ax.set_xticks(range(len(lb)), [str(v) for v in lb])
        ax.set_yticks(range(len(la)), [str(v) for v in la])
        ax.set_xlabel(b)
        ax.set_ylabel(a)
        fig.colorbar(image, ax=ax, label="mean best validation headline (%)")
        kind = "heatmap"
    else:
        levels = _levels(frame[a])
        means, lows, highs = [], [], []
        for v in levels:
            values = pd.to_numeric(frame.loc[frame[a].astype(str) == str(v), score], errors="coerce").dropna()
            ci = S.mean_interval(values, bounds=(0.0, 1.0))
            means.append(100 * values.mean())
            lows.append(100 * ci.low if len(values) > 1 else np.nan)
            highs.append(100 * ci.high if len(values) > 1 else np.nan)
        numeric = all(isinstance(v, (int, float)) for v in levels)
        x = np.array(levels, dtype=float) if numeric else np.arange(len(levels))
        ax.plot(x, means, "o-", color="#1f77b4")
        ax.fill_between(x, lows, highs, color="#1f77b4", alpha=0.15, lw=0)
        if not numeric:
            ax.set_xticks(x, [str(v) for v in levels])
        ax.set_xlabel(a)
        ax.set_ylabel("best validation headline (%)")
        ax.grid(alpha=0.3)
        kind = "lines"
    what = "cells: mean over seeds" if kind == "heatmap" else "mean over seeds, band: its 95 % CI"
    ax.set_title(f"{f.method} on {f.setting} ({f.sweep}); {what}", fontsize=9)
    fig.tight_layout()
    paths = []
    for fmt in formats:
        paths.append(out / f"{stem}_{kind}.{fmt}")
        fig.savefig(paths[-1], dpi=150)
    plt.close(fig)
    return paths
