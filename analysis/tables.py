"""The paper's tables from results: Table 1 (matched-window best, mean and 95 % interval over seeds,
bold only where a corrected paired test supports it, collapses marked) under the paper's protocol
and the held-out one, Table 4 (per split at the best step), the per-cell provenance table, and the
paper's Table 1 beside ours with each column's method ranking."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd
import yaml

from harness.store import FINISHED

from . import stats as S
from .compare import interval_text, warm_start_seeds



@lru_cache(maxsize=1)
def paper() -> dict:
    return yaml.safe_load((Path(__file__).parent / "paper.yaml").read_text())


def compared_with(settings) -> list[str]:
    """'SETTING with the paper's COLUMN' for each setting that stands in for a paper column."""
    return [f"{s} with the paper's {paper()['settings'][s]}" for s in settings if s in paper()["settings"]]


def display_name(method: str) -> str:
    return paper()["methods"].get(method, {}).get("name", method)


def _collapse_note(group: pd.DataFrame) -> str | None:
    collapsed = group[group["state"] == "collapsed"]
    if collapsed.empty:
        return None
    steps = sorted(int(s) for s in collapsed["collapse_step"].dropna())
    where = f"step {steps[0]}" if len(set(steps)) == 1 else f"steps {', '.join(map(str, steps))}"
    return f"collapse ({where})"


def aggregate(cells: pd.DataFrame, row_key: str = "label", score: str = "best_headline") -> pd.DataFrame:
    """One row per (row_key, setting): ``score`` over seeds (mean, std, 95 % interval), and what is missing."""
    out = []
    for (key, setting), group in cells.groupby([row_key, "setting"], sort=False):
        scored = group[group["state"].isin(FINISHED)]
        values = pd.to_numeric(scored[score], errors="coerce").dropna().astype(float)
        ci = S.mean_interval(values, bounds=(0.0, 1.0))  # scores are accuracies
        out.append({row_key: key, "method": group["method"].iloc[0], "setting": setting,
                    "seeds": len(group), "finished": len(scored), "scored": len(values),
                    "mean": values.mean() if len(values) else None,
                    "ci_low": ci.low, "ci_high": ci.high, "interval": ci.method,
                    "std": values.std(ddof=1) if len(values) > 1 else (0.0 if len(values) == 1 else None),
                    "collapsed": int((group["state"] == "collapsed").sum()), "collapse": _collapse_note(group),
                    "failed": int((group["state"] == "failed").sum()),
                    "unfinished": int((~group["state"].isin((*FINISHED, "failed"))).sum()),
                    "best_step_median": scored["best_step"].median() if len(scored) else None,
                    "warm_start": warm_start_seeds(scored["best_step"])})
    return pd.DataFrame(out)


def rank_column(agg: pd.DataFrame) -> pd.Series:
    """1 = best mean, 2 = second, …; entries with a collapsed seed or no finished seed are not ranked
    (the paper prints them as 'collapse (step N)')."""
    eligible = agg["mean"].notna() & (agg["collapsed"] == 0)
    ranks = agg.loc[eligible, "mean"].rank(ascending=False, method="min")
    return ranks.reindex(agg.index)


def table1(cells: pd.DataFrame, settings: list[str], rows: list[str], row_key: str = "label",
           scale: float = 100.0, score: str = "best_headline", bold: set | None = None) -> pd.DataFrame:
    """Long form: one row per (row, setting) with mean, std, interval, rank, whether a corrected test
    supports bolding it (``bold``: (row, setting) pairs) and the cell text (no markup)."""
    agg = aggregate(cells, row_key, score)
    agg = agg[agg["setting"].isin(settings) & agg[row_key].isin(rows)].copy()
    agg["rank"] = None
    for setting in settings:
        idx = agg["setting"] == setting
        agg.loc[idx, "rank"] = rank_column(agg[idx])
    agg["bold"] = [(r, s) in (bold or set()) for r, s in zip(agg[row_key], agg["setting"])]
    agg["text"] = [_cell_text(r, scale) for r in agg.to_dict("records")]
    return agg


def _cell_text(r: dict, scale: float) -> str:
    if r["mean"] is None or pd.isna(r["mean"]):
        if r["failed"]:
            return f"failed ({r['failed']}/{r['seeds']})"
        if r["finished"] and not r["scored"]:
            return "— (not recorded)"  # e.g. a held-out score of a run from before the test splits
        return "missing" if not r["unfinished"] else f"unfinished ({r['unfinished']}/{r['seeds']})"
    text = interval_text(r["mean"], r["ci_low"], r["ci_high"], scale)
    if r["collapsed"]:
        text = r["collapse"] if r["collapsed"] == r["seeds"] else f"{text}, {r['collapse']} in {r['collapsed']}/{r['seeds']}"
    missing = r["seeds"] - r["finished"]
    if missing and r["collapsed"] != r["seeds"]:
        text += f" ({r['finished']}/{r['seeds']} seeds)"
    if r.get("warm_start"):
        text += (f", {WARM_START}" if r["warm_start"] == r["finished"]
                 else f", {WARM_START} in {r['warm_start']}/{r['finished']}")
    return text


WARM_START = "never left the warm start"
WARM_START_NOTE = (f"`{WARM_START}`: the best validation step within [0, T_stop] was step 0 — the starting policy — "
                   "in every finished seed (or in k/n of them), so the entry is the warm start's score, not the "
                   "method's improvement on it.")


def pivot(long: pd.DataFrame, settings: list[str], rows: list[str], row_key: str = "label",
          markup: str | None = None) -> pd.DataFrame:
    """Rows × settings of cell text; ``markup`` 'md' or 'tex' bolds the entries whose lead a corrected
    paired test supports (``bold``), and nothing else."""
    def mark(r):
        text = r["text"]
        if markup == "md":
            text = text.replace("|", "\\|")
            return f"**{text}**" if r["bold"] else text
        if markup == "tex":
            return TexCell(f"\\textbf{{{tex_text(text)}}}" if r["bold"] else tex_text(text))
        return text
    frame = long.assign(shown=long.apply(mark, axis=1)).pivot(index=row_key, columns="setting", values="shown")
    frame = frame.reindex(index=[r for r in rows if r in frame.index], columns=[s for s in settings if s in frame.columns])
    return frame.fillna("missing")


def table4(cells: pd.DataFrame, settings: list[str], rows: list[str], row_key: str = "label",
           scale: float = 100.0) -> pd.DataFrame:
    """Per validation split at each cell's best step, mean over finished seeds (Table 4)."""
    scored = cells[cells["state"].isin(FINISHED) & cells["setting"].isin(settings)
                   & cells[row_key].isin(rows)]
    # the splits the runs recorded (cells.cell_row's best_<split> / heldout_<split> columns)
    val = [c for c in scored if c.startswith("best_") and c not in ("best_headline", "best_step")]
    test = [c for c in scored if c.startswith("heldout_") and c != "heldout_headline"]
    columns = ({c: c.removeprefix("best_") for c in val} | {"best_headline": "headline"}
               | {c: c.removeprefix("heldout_") for c in test} | {"heldout_headline": "test_headline"})
    scored = scored.assign(**{c: pd.to_numeric(scored[c], errors="coerce") for c in columns if c in scored})
    columns = {c: v for c, v in columns.items() if c in scored}
    agg = scored.groupby(["setting", row_key], sort=False)[list(columns)].mean() * scale
    agg = agg.rename(columns=columns).dropna(axis=1, how="all").reset_index()
    agg["setting"] = pd.Categorical(agg["setting"], settings, ordered=True)
    agg[row_key] = pd.Categorical(agg[row_key], rows, ordered=True)
    return agg.sort_values(["setting", row_key]).reset_index(drop=True)


BINDING_COLUMNS = {"mask_fraction": "masked %", "seq_acceptance": "accepted %", "cap_hit": "cap hit %"}


def binding(cells: pd.DataFrame, settings: list[str], rows: list[str], row_key: str = "label") -> pd.DataFrame:
    """Per (setting, arm): finished seeds, the score (held-out test headline where recorded, else the best
    validation headline) and the binding rates, mean over seeds, in %."""
    done = cells[cells["state"].isin(FINISHED) & cells["setting"].isin(settings) & cells[row_key].isin(rows)]
    out = []
    for (setting, label), group in done.groupby(["setting", row_key], sort=False):
        held = pd.to_numeric(group["heldout_headline"], errors="coerce")
        score = held if held.notna().all() else pd.to_numeric(group["best_headline"], errors="coerce")
        row = {"setting": setting, row_key: label, "seeds": len(group),
               "score": round(100 * float(score.mean()), 1) if score.notna().any() else None}
        for key, name in BINDING_COLUMNS.items():
            values = pd.to_numeric(group.get(key), errors="coerce").dropna() if key in group else pd.Series(dtype=float)
            row[name] = round(100 * float(values.mean()), 2) if len(values) else None
        out.append(row)
    frame = pd.DataFrame(out, columns=["setting", row_key, "seeds", "score", *BINDING_COLUMNS.values()])
    order = {r: i for i, r in enumerate(rows)}
    return frame.sort_values(["setting", row_key], key=lambda c: c.map(order) if c.name == row_key
                             else c.map({s: i for i, s in enumerate(settings)})).reset_index(drop=True)


def survival(cells: pd.DataFrame, settings: list[str], rows: list[str], row_key: str = "label",
             reference: str | None = None) -> pd.DataFrame:
    """Per (setting, arm): finished seeds, how many survived (never collapsed), the rate with its exact
    Clopper-Pearson 95 % interval, the collapse steps of the others; and, with a ``reference`` arm, the
    two-sided Fisher exact p of each other arm's survival against it, Holm-adjusted over the table."""
    from scipy.stats import binomtest, fisher_exact

    done = cells[cells["state"].isin(FINISHED) & cells["setting"].isin(settings) & cells[row_key].isin(rows)]
    out = []
    for setting in settings:
        for label in rows:
            group = done[(done["setting"] == setting) & (done[row_key] == label)]
            if group.empty:
                continue
            n, k = len(group), int((group["state"] == "done").sum())
            ci = binomtest(k, n).proportion_ci(confidence_level=S.CONFIDENCE, method="exact")
            steps = sorted(int(x) for x in group.loc[group["state"] == "collapsed", "collapse_step"].dropna())
            out.append({"setting": setting, row_key: label, "seeds": n, "survived": k, "rate %": round(100 * k / n, 1),
                        "95% CI": f"[{100 * ci.low:.1f}, {100 * ci.high:.1f}]",
                        "collapse steps": ", ".join(map(str, steps)) or "—"})
    columns = ["setting", row_key, "seeds", "survived", "rate %", "95% CI", "collapse steps"]
    frame = pd.DataFrame(out, columns=columns)
    if reference is None or frame.empty:
        return frame
    ref = frame[frame[row_key] == reference].set_index("setting")
    p = []
    for r in frame.itertuples(index=False):
        if r.setting not in ref.index or getattr(r, row_key) == reference:
            p.append(float("nan"))
            continue
        k0, n0 = ref.at[r.setting, "survived"], ref.at[r.setting, "seeds"]
        p.append(float(fisher_exact([[r.survived, r.seeds - r.survived], [k0, n0 - k0]]).pvalue))
    return frame.assign(**{f"p vs {reference}": p, "p (Holm)": S.holm(p)})


def provenance(cells: pd.DataFrame) -> pd.DataFrame:
    keep = ["sweep", "setting", "label", "method", "seed", "id", "steps_run", "t_stop", "verdict", "best_step",
            "best_headline", "heldout_headline", "step0_headline", "run_dir"]
    for extra in ("search_trials", "imported"):  # which search trial made each cell; which were imported
        if extra in cells and cells[extra].notna().any():
            keep.insert(6, extra)
    return cells[keep].rename(columns={"id": "config_hash"}).reset_index(drop=True)


def paper_vs_ours(long: pd.DataFrame, row_key: str = "method") -> pd.DataFrame:
    """Per paper column: the paper's value and rank beside ours (same method order), plus Kendall's τ
    between the two rankings of each column (over methods ranked in both)."""
    ref = paper()
    names = {m: ref["methods"][m]["name"] for m in ref["table1_methods"]}
    out = []
    for setting, column in ref["settings"].items():
        if setting not in set(long["setting"]):
            continue  # a column we have no run for
        col_idx = ref["table1"]["columns"].index(column)
        paper_vals = {name: vals[col_idx] for name, vals in ref["table1"]["rows"].items()}
        numeric = {k: v for k, v in paper_vals.items() if isinstance(v, (int, float))}
        paper_rank = pd.Series(numeric).rank(ascending=False, method="min")
        ours = long[long["setting"] == setting].set_index(row_key)
        for method, name in names.items():
            row = ours.loc[method] if method in ours.index else None
            out.append({"paper_setting": column, "setting": setting, "method": name,
                        "paper": paper_vals.get(name), "paper_rank": paper_rank.get(name),
                        "ours": None if row is None else row["text"],
                        "ours_rank": None if row is None else row["rank"]})
    frame = pd.DataFrame(out)
    frame["paper_rank"] = pd.to_numeric(frame["paper_rank"]).astype("Int64")
    frame["ours_rank"] = pd.to_numeric(frame["ours_rank"]).astype("Int64")
    taus = {}
    for setting, group in frame.groupby("setting", sort=False):
        both = group.dropna(subset=["paper_rank", "ours_rank"])
        taus[setting] = (both["paper_rank"].astype(float).corr(both["ours_rank"].astype(float), method="kendall")
                         if len(both) >= 3 else None)
    frame["kendall_tau"] = frame["setting"].map(taus)
    return frame


# --- writers ---------------------------------------------------------------------------------------
def to_markdown(frame: pd.DataFrame, index: bool = True) -> str:
    frame = frame.reset_index() if index else frame
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def paper_marks(values: pd.DataFrame) -> pd.DataFrame:
    """The paper's convention on a methods × columns frame of numbers (a text entry such as 'collapse (step
    N)' is not ranked): "bold" for the highest number of each column, "underline" for the second, else "".
    Descriptive: it says which mean is largest, not that a test supports it."""
    marks = pd.DataFrame("", index=values.index, columns=values.columns)
    for column in values.columns:
        numbers = pd.to_numeric(values[column], errors="coerce").dropna().sort_values(ascending=False)
        for mark, row in zip(("bold", "underline"), numbers.index):
            marks.loc[row, column] = mark
    return marks


def paper_layout(values: pd.DataFrame, markup: str, digits: int = 1, warm_start: frozenset = frozenset()) -> pd.DataFrame:
    """``values`` rendered as the paper prints Table 1: the number alone, best bold, second underlined;
    an entry in ``warm_start`` ((row, column) pairs) gets a dagger: it never left the warm start."""
    marks = paper_marks(values)

    def show(value, mark, flagged):
        text = f"{value:.{digits}f}" if isinstance(value, (int, float)) and not pd.isna(value) else str(value)
        text += "†" if flagged else ""
        if markup == "tex":
            text = tex_text(text)
            return TexCell({"bold": f"\\textbf{{{text}}}", "underline": f"\\underline{{{text}}}"}.get(mark, text))
        return {"bold": f"**{text}**", "underline": f"<u>{text}</u>"}.get(mark, text)
    return pd.DataFrame({c: [show(v, m, (r, c) in warm_start) for r, v, m in zip(values.index, values[c], marks[c])]
                         for c in values.columns}, index=values.index)


def paper_style_values(long: pd.DataFrame, settings: list[str], rows: list[str], scale: float = 100.0) -> pd.DataFrame:
    """Our Table 1 as the paper's numbers: the mean over seeds, or the collapse note where every seed
    collapsed; an entry with a collapsed seed is shown but, as in ``rank_column``, not ranked."""
    frame = pd.DataFrame(index=rows, columns=settings, dtype=object)
    for r in long.to_dict("records"):
        if r["mean"] is None or pd.isna(r["mean"]):
            value = r["text"]
        elif r["collapsed"]:
            value = (r["collapse"] if r["collapsed"] == r["seeds"]
                     else f"{r['mean'] * scale:.1f}, {r['collapse']} in {r['collapsed']}/{r['seeds']}")
        else:
            value = r["mean"] * scale
        frame.loc[r["label"], r["setting"]] = value
    return frame.dropna(how="all").fillna("missing")


def warm_start_entries(long: pd.DataFrame) -> frozenset:
    """(label, setting) entries whose every finished seed chose step 0 as its best."""
    return frozenset((r["label"], r["setting"]) for r in long.to_dict("records")
                     if r.get("warm_start") and r["warm_start"] == r["finished"])


class TexCell(str):
    """Text already rendered as LaTeX (``to_latex`` leaves it as it is)."""


# what pdflatex cannot read as it stands: LaTeX's special characters, and the Unicode the tables use
_TEX_SPECIAL = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
                "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}"}
_TEX_UNICODE = {"±": "$\\pm$", "δ": "$\\delta$", "ε": "$\\varepsilon$", "μ": "$\\mu$", "π": "$\\pi$",
                "τ": "$\\tau$", "ρ": "$\\rho$", "λ": "$\\lambda$", "β": "$\\beta$", "×": "$\\times$",
                "≤": "$\\le$", "≥": "$\\ge$", "≈": "$\\approx$", "−": "$-$", "→": "$\\to$", "—": "---",
                "–": "--", "⁻": "$^{-}$", "¹": "$^{1}$", "²": "$^{2}$", "³": "$^{3}$", "⁴": "$^{4}$",
                "·": "$\\cdot$", "…": "\\ldots{}", "’": "'", "“": "``", "”": "''", "Δ": "$\\Delta$",
                "†": "$^\\dagger$"}


def tex_text(text) -> str:
    """Plain text as pdflatex-safe LaTeX: special characters escaped, Greek letters and symbols as math,
    any other non-ASCII character shown as "?" (pdflatex would stop on it)."""
    out = []
    for ch in str(text):
        if ch in _TEX_SPECIAL:
            out.append(_TEX_SPECIAL[ch])
        elif ch in _TEX_UNICODE:
            out.append(_TEX_UNICODE[ch])
        elif ord(ch) > 127:
            out.append("?")
        else:
            out.append(ch)
    return "".join(out)


def to_latex(frame: pd.DataFrame, caption: str, label: str, index: bool = True) -> str:
    """A booktabs table (needs \\usepackage{booktabs}) that pdflatex compiles: the caption, the headers
    and every cell go through ``tex_text`` except cells rendered already (``TexCell``)."""
    frame = frame.reset_index() if index else frame
    spec = "l" * len(frame.columns)
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{tex_text(caption)}}}", f"\\label{{{label}}}",
             f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(tex_text(c) for c in frame.columns) + " \\\\", "\\midrule"]
    for row in frame.itertuples(index=False):
        lines.append(" & ".join(v if isinstance(v, TexCell) else tex_text(_fmt(v)) for v in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
