"""The declared test of each pre-registered sweep, first in the report, with an audit of its record.

A sweep launched with a ``preregistration`` block (``sweeps.preregistration``) keeps in its manifest the
spec's git blob, the commit and the time of its launch. Here that record is checked against what is on
disk now — the spec unchanged, every finished cell trained from a clean tree at the registered commit or
a later one, none started before the registration — and the declared comparisons are computed exactly
as declared: reference − each family member on the declared score, paired by seed, Holm over the family
(and its settings). A sweep over several settings declares a ``trend`` as its primary test: the slope of
reference − other over log2 of each setting's horizon (``declared_trend``); its comparisons are then
its secondary, declared family.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.provenance import REPO, git
from harness.store import FINISHED, RunStore

from . import compare as C
from . import markdown as M
from . import stats as S
from . import tables as T

FIELDS = ("hypotheses", "score", "reference", "family", "stopping")
OPTIONAL = ("trend",)
TREND_KEYS = ("other", "horizon", "model")
TREND_MODELS = {"seed_slopes": "each seed's least-squares slope of the paired difference over log2(horizon); the "
                               "mean slope with its 95 % interval (Student t below 20 seeds, BCa bootstrap from 20) "
                               "and the two-sided sign-flip permutation p over seeds (exact up to "
                               f"{S.EXACT_MAX_SEEDS} seeds, Monte Carlo with {S.RESAMPLES} resamples beyond)"}
PRIMARY_SCORES = {"heldout": "heldout_headline", "validation": "best_headline"}


def spec_blob(path: Path, repo: Path = REPO) -> str | None:
    """The git blob id of the file's current content (what ``git hash-object`` prints)."""
    return git("hash-object", str(path), repo=repo)


def audit(record: dict, statuses: list[dict], repo: Path = REPO) -> list[str]:
    """What weakens a pre-registration: the spec edited since launch, cells trained from a changed tree,
    from a commit that does not descend from the registered one, or started before the registration."""
    problems = []
    path = Path(repo) / record["spec_path"]
    now = spec_blob(path, repo) if path.exists() else None
    if now is None:
        problems.append(f"the registered spec {record['spec_path']} is gone (or git cannot read it)")
    elif now != record["spec_blob"]:
        problems.append(f"the spec {record['spec_path']} was edited after the launch (blob "
                        f"{record['spec_blob'][:12]} at launch, {str(now)[:12]} now)")
    # per cell, the code at every start and resume, and at the finish
    code = [[*s.get("code_log", []), s.get("provenance") or {}] for s in statuses]
    dirty = sum(any(c.get("dirty") is not False for c in states) for states in code)
    if dirty:
        problems.append(f"{dirty} of {len(statuses)} finished cells ran with uncommitted changes at a start, "
                        "a resume or the finish (or do not say)")

    def trained_at(commit):  # the registered commit or later, earlier (a reused cell), or unrelated
        if git("merge-base", "--is-ancestor", record["commit"], commit, repo=repo) is not None:
            return "after"
        return "before" if git("merge-base", "--is-ancestor", commit, record["commit"], repo=repo) is not None else "stray"

    when = {c: trained_at(c) for c in {c.get("commit") for states in code for c in states} - {None}}
    reused = sum(any(when.get(c.get("commit")) == "before" for c in states) for states in code)
    if reused:
        problems.append(f"{reused} cells were trained before the registration, by an earlier commit (cells reused "
                        "from earlier sweeps: their scores could be known when the test was declared)")
    strays = sorted(c for c, w in when.items() if w == "stray")
    if strays:
        problems.append(f"cells trained from {len(strays)} commit(s) unrelated to the registered "
                        f"{record['commit'][:12]} (or that this clone does not hold): {', '.join(c[:12] for c in strays)}")
    unknown = [s for s in statuses if s.get("started_at") in (None, "unknown")]
    if unknown:
        problems.append(f"{len(unknown)} cells do not record when they started")
    early = [s for s in statuses if s.get("started_at") not in (None, "unknown") and s["started_at"] < record["at"]]
    if early:
        problems.append(f"{len(early)} cells started before the registration at {record['at']}")
    return problems


def declared_test(cells: pd.DataFrame, block: dict) -> pd.DataFrame:
    """The declared comparisons: reference − each family member at each setting, paired by seed, Holm over
    all of them — a comparison without scores (yet) counts at p = 1, so the correction never shrinks."""
    settings = list(dict.fromkeys(cells["setting"]))
    frame = C.comparisons(cells, settings, [block["reference"], *block["family"]], block["reference"],
                          score=PRIMARY_SCORES[block["score"]])
    done = set(zip(frame["setting"], frame["other"])) if not frame.empty else set()
    missing = [(s, m) for s in settings for m in block["family"] if (s, m) not in done]
    if not missing:
        return frame
    nan = float("nan")
    rows = pd.DataFrame([{"score": PRIMARY_SCORES[block["score"]], "setting": s, "reference": block["reference"],
                          "other": m, "seeds": 0, "diff": nan, "ci_low": nan, "ci_high": nan, "interval": "none",
                          "p": 1.0, "sd_diff": nan, "note": "no scores yet: counted at p = 1", "seeds_needed": nan,
                          "detectable": nan} for s, m in missing])
    frame = pd.concat([frame, rows], ignore_index=True) if not frame.empty else rows
    frame["p_holm"] = S.holm(frame["p"])
    frame["verdict"] = [v if isinstance(v, str) and n else "not computed" for v, n in
                        zip(frame.get("verdict", pd.Series([None] * len(frame))), frame["seeds"])]
    return frame


def declared_trend(cells: pd.DataFrame, block: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The declared trend (``block["trend"]``): per setting, the paired difference reference − other over
    the seeds that have both, and the slope of that difference per doubling of the horizon, from the seeds
    that have it at every horizon (``analysis.stats.seed_slopes``). Returns (per-horizon rows, the slope row)."""
    trend, score = block["trend"], PRIMARY_SCORES[block["score"]]
    horizon = {str(k): float(v) for k, v in trend["horizon"].items()}
    by_seed, rows = {}, []
    for setting, x in sorted(horizon.items(), key=lambda kv: kv[1]):
        ref = C.seed_scores(cells, block["reference"], setting, score)
        other = C.seed_scores(cells, trend["other"], setting, score)
        paired = S.paired_comparison(ref, other, bounds=(-1.0, 1.0))
        for s in paired.seeds:
            by_seed.setdefault(s, {})[x] = ref[s] - other[s]
        rows.append({"setting": setting, "horizon": x, "seeds": len(paired.seeds), "diff": paired.diff.estimate,
                     "ci_low": paired.diff.low, "ci_high": paired.diff.high, "interval": paired.diff.method})
    fit = S.seed_slopes(by_seed, horizon.values())
    incomplete = sorted(set(by_seed) - set(fit.seeds))
    slope = pd.DataFrame([{
        "score": score, "reference": block["reference"], "other": trend["other"], "model": trend["model"],
        "seeds": len(fit.seeds), "slope_per_doubling": fit.slope.estimate, "ci_low": fit.slope.low,
        "ci_high": fit.slope.high, "interval": fit.slope.method, "p": fit.p if fit.seeds else float("nan"),
        "sd_slope": fit.sd, "detectable": fit.detectable,
        "verdict": S.verdict(fit.slope, fit.p) if len(fit.seeds) > 1 else "not computed",
        "note": (f"{len(incomplete)} seed(s) lack a score at some horizon and are left out: "
                 f"{', '.join(map(str, incomplete))}" if incomplete else "")}])
    return pd.DataFrame(rows), slope


def _trend_text(per_horizon: pd.DataFrame, slope: pd.DataFrame, block: dict, interim: str = "") -> list[str]:
    row = slope.iloc[0]
    words = {"better": "the difference grows with the horizon", "worse": "the difference shrinks with the horizon",
             "no detectable difference": "no trend detectable", "not computed": "not computed (fewer than 2 seeds)"}
    detect = "—" if pd.isna(row["detectable"]) else f"{100 * row['detectable']:.2f}"
    table = pd.DataFrame({"setting": per_horizon["setting"], "horizon": per_horizon["horizon"].map(lambda v: f"{v:g}"),
                          "seeds": per_horizon["seeds"],
                          f"{block['reference']} − {block['trend']['other']} (points, 95% CI)": [
                              C.interval_text(d, lo, hi) for d, lo, hi in
                              zip(per_horizon["diff"], per_horizon["ci_low"], per_horizon["ci_high"])]})
    return [f"Primary test ({row['model']}): the slope of {block['reference']} − {block['trend']['other']} on the "
            f"{C.SCORES[row['score']]}, over log2(horizon) — {TREND_MODELS[row['model']]}.\n",
            f"**{interim}Slope: {C.interval_text(row['slope_per_doubling'], row['ci_low'], row['ci_high'])} points per doubling "
            f"of the horizon ({row['seeds']} seeds, {row['interval']} interval), p = {row['p']:.3g}: "
            f"{words[row['verdict']]}.** Smallest slope these seeds detect at 80 % power (α = {S.ALPHA}): "
            f"{detect} points per doubling." + (f" Note: {row['note']}." if row["note"] else "") + "\n",
            T.to_markdown(table, index=False) + "\n"]


def _trend_section(cells: pd.DataFrame, block: dict, sweep: str, out: Path,
                   interim: str = "") -> tuple[pd.DataFrame, list[str]]:
    """The declared trend's text and CSVs, and (exploratory) the slope without the shortest horizon."""
    per_horizon, slope = declared_trend(cells, block)
    text = _trend_text(per_horizon, slope, block, interim)
    slope.to_csv(out / f"preregistered_{sweep}_trend.csv", index=False)
    per_horizon.to_csv(out / f"preregistered_{sweep}_by_horizon.csv", index=False)
    horizon = block["trend"]["horizon"]
    if len(horizon) >= 3:  # is the slope carried by the shortest horizon alone?
        shortest = min(horizon, key=horizon.get)
        rest = {**block, "trend": {**block["trend"], "horizon": {k: v for k, v in horizon.items() if k != shortest}}}
        row = declared_trend(cells, rest)[1].iloc[0]
        text.append(f"Exploratory (not the declared test): without the shortest horizon ({shortest}) the slope is "
                    f"{C.interval_text(row['slope_per_doubling'], row['ci_low'], row['ci_high'])} points per "
                    f"doubling ({row['seeds']} seeds, p = {row['p']:.3g}).\n")
    return slope, text


def preregistered_section(results, out: Path, formats=("png",)) -> str:
    """The report's first section: each pre-registered sweep's declared test and its audit
    (``preregistered_<sweep>.md``/``.csv``, and a declared trend's figure ``preregistered_<sweep>_horizon``);
    empty when no sweep of this root is pre-registered."""
    parts = []
    for sweep, manifest in results.sweeps.items():
        record, block = manifest.get("preregistration"), (manifest.get("spec") or {}).get("preregistration")
        if not record or not block or not results.has(sweep):
            continue
        cells = results.sweep_cells(sweep)
        finished = cells[cells["state"].isin(FINISHED)]
        statuses = [RunStore(d).read_status() or {} for d in finished["run_dir"]]
        problems = audit(record, statuses)
        cmp = declared_test(cells, block)
        text = [f"### {sweep}: the declared test\n",
                f"Registered at commit {record['commit'][:12]} on {record['at']} (spec {record['spec_path']}, blob "
                f"{record['spec_blob'][:12]}). Audit: " + ("no problem found." if not problems else
                                                           "**" + "; ".join(problems) + "**."),
                f"\n\nHypotheses: {block['hypotheses'].strip()}\n",
                f"Cells: {len(finished)} finished of {len(cells)}"
                + ("" if len(finished) == len(cells) else " — **the declared test is not complete**") + ".\n"]
        interim = "" if len(finished) == len(cells) else f"Interim ({len(finished)} of {len(cells)} cells), not the answer: "
        if block.get("trend"):
            slope, trend_text = _trend_section(cells, block, sweep, out, interim)
            text += trend_text
        text += [f"{'Secondary (declared) tests' if block.get('trend') else 'Primary test'}: {block['reference']} − "
                 f"each of {', '.join(block['family'])} at each of the {cells['setting'].nunique()} setting(s) on the "
                 f"{C.SCORES[PRIMARY_SCORES[block['score']]]}, paired by seed, two-sided permutation p (exact over "
                 f"all sign flips up to {S.EXACT_MAX_SEEDS} seeds, Monte Carlo beyond), Holm over these "
                 f"{len(block['family']) * cells['setting'].nunique()} comparisons. Stopping rule: "
                 f"{block['stopping'].strip()}\n"]
        if not cmp.empty:
            table = M.comparisons_markdown(cmp, {}, block["reference"]).split("\n## ", 1)[1]
            text.append("\n#### " + table)
            cmp.to_csv(out / f"preregistered_{sweep}.csv", index=False)
        if block.get("trend") and formats:
            from .figures import report_colours
            from .horizon import horizon_figure, position_by_horizon

            colours = report_colours(results)  # one colour per arm in both figures
            paths = horizon_figure(cmp, block["trend"]["horizon"], slope.iloc[0], sweep, colours, out,
                                   f"preregistered_{sweep}_horizon", formats)
            text += [f"![{sweep}: the declared differences against the horizon]({p.name})\n" for p in paths[:1]]
            paths = position_by_horizon(results, sweep, block["trend"]["horizon"], colours, out, f"{sweep}_position",
                                        formats)
            text += [f"Descriptive, not a test: the drift and the masks by position at each horizon.\n\n"
                     f"![{sweep}: drift and masks by position]({p.name})\n" for p in paths[:1]]
        section = "\n".join(text)
        (out / f"preregistered_{sweep}.md").write_text(f"# Pre-registered: {sweep}\n\n" + section.split("\n", 1)[1])
        parts.append(section)
    if not parts:
        return ""
    return ("## Pre-registered tests (declared in a committed spec before their cells ran)\n\n"
            + "\n\n".join(parts)
            + "\n\n**Everything below this section is exploratory**: other sweeps, other scores and other "
              "groupings of these runs were not declared in advance.\n\n")
