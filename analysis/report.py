"""``trh report RESULTS_DIR``: every table and figure the results support, plus an index (report.md)
that names what is missing, running or failed instead of silently leaving it out."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.store import FINISHED

from . import compare as C
from . import figures as F
from . import stats as S
from . import tables as T
from . import tuning
from .load import load_results

TABLE_FORMATS = ("md", "tex", "csv")
FIGURE_FORMATS = ("png", "pdf")
BASE_SETTINGS = ["base_s", "base_m", "long_s"]
GRID_FIGURES = {"post_s": "fig8", "base_s": "fig9", "base_m": "fig10", "long_s": "fig11"}
FIG5 = [("ablation_mechanism", "(a) mechanism"), ("ablation_ordering", "(b) ordering"), ("ablation_gate", "(c) gate")]
FIG6 = [("sensitivity", "(a) sensitivity"), ("divergence_kl_tv", "(b) KL vs TV"),
        ("divergence_binary_topk", "(c) Binary vs Top-K TV")]


TABLE1_RULE = ("--table1, else drift_main, else paper_main, else demo, else the (non-tuning) sweep with the most "
               "finished cells; every other sweep gets its own table_<sweep> (and comparisons_, binding_) files")


def choose_table1(results, wanted: str | None = None) -> str | None:
    """The sweep Table 1 and the comparisons come from (``TABLE1_RULE``); "runs" for plain run folders."""
    if wanted:
        if not results.has(wanted):
            raise ValueError(f"--table1 must be one of the sweeps here {sorted(results.sweeps)}, got {wanted!r}")
        return wanted
    for name in ("drift_main", "paper_main", "demo"):
        if results.has(name):
            return name
    candidates = sorted(n for n, m in results.sweeps.items() if not tuning.is_tuning(m))
    if candidates:
        done = results.cells[results.cells["state"].isin(FINISHED)].groupby("sweep").size()
        return max(candidates, key=lambda n: int(done.get(n, 0)))  # ties: the first by name
    return "runs" if not results.sweeps and not results.cells.empty else None  # None: tuning sweeps only


def _main_sweep(results) -> str | None:
    return results.main_sweep if results.main_sweep is not None else choose_table1(results)


def _ordered_settings(cells: pd.DataFrame) -> list[str]:
    known = list(T.paper()["settings"])
    present = list(dict.fromkeys(cells["setting"]))
    return [s for s in known if s in present] + [s for s in present if s not in known]


def _ordered_rows(cells: pd.DataFrame) -> list[str]:
    order = T.paper()["table1_methods"]
    labels = list(dict.fromkeys(cells["label"]))
    return sorted(labels, key=lambda lb: order.index(lb) if lb in order else len(order) + labels.index(lb))


def _reference(rows: list[str], wanted: str | None) -> str:
    if wanted and wanted not in rows:
        raise ValueError(f"--reference must be one of the table's rows {rows}, got {wanted!r}")
    return wanted or next((r for r in rows if r == "cppo"), rows[0])


def _write(out: Path, stem: str, formats, md: str | None = None, tex: str | None = None,
           csv: pd.DataFrame | None = None) -> list[Path]:
    paths = []
    for fmt, content in (("md", md), ("tex", tex)):
        if fmt in formats and content is not None:
            (out / f"{stem}.{fmt}").write_text(content)
            paths.append(out / f"{stem}.{fmt}")
    if "csv" in formats and csv is not None:
        csv.to_csv(out / f"{stem}.csv", index=False)
        paths.append(out / f"{stem}.csv")
    return paths


def _protocols(cells: pd.DataFrame) -> list[str]:
    held = pd.to_numeric(cells.get("heldout_headline"), errors="coerce") if "heldout_headline" in cells else None
    return ["best_headline"] + (["heldout_headline"] if held is not None and held.notna().any() else [])


STYLES = ("tested", "paper")


def write_tables(results, out: Path, formats=TABLE_FORMATS, reference: str | None = None,
                 style: str = "tested") -> dict:
    written, notes = {}, []
    name = _main_sweep(results)
    tuning_sweeps = [n for n, m in results.sweeps.items() if tuning.is_tuning(m)]
    for sweep in tuning_sweeps:
        written[f"tuning_{sweep}"] = _tuning_tables(results, sweep, out, formats)
    if name is None:
        notes.append("table1: only tuning sweeps here (their configurations are in tuning_<sweep>.md)")
        return {"written": written, "notes": notes, "main_sweep": None, "comparisons": pd.DataFrame(),
                "reference": None, "names": {}}
    cells = results.sweep_cells(name) if name in results.sweeps else results.cells
    settings, rows = _ordered_settings(cells), _ordered_rows(cells)
    names = _display_names(rows)
    imported = set(cells.loc[cells["imported"].notna(), "label"]) if "imported" in cells else set()
    names = {r: (f"{n} (imported)" if r in imported else n) for r, n in names.items()}  # trh import's runs
    ref = _reference(rows, reference)
    protocols = _protocols(cells)
    if len(protocols) == 1:
        notes.append("held-out view: no cell recorded test-split scores (runs from before the held-out test "
                     "splits existed); tables and comparisons use the paper's protocol only")

    written["table1"], cmp = _table1(cells, settings, rows, ref, protocols, names, name, results.avg_label, out,
                                     formats)
    if style == "paper":
        written["table1_paper"] = _table1_paper(cells, settings, rows, protocols, names, name, results.avg_label,
                                                out, formats)
    if not cmp.empty:
        written["comparisons"] = _write(out, "comparisons", formats, _comparisons_markdown(cmp, names, ref),
                                        None, cmp)
    agg = pd.concat([C.aggregate_across_settings(cells, settings, rows, ref, score) for score in protocols])
    if not agg.empty:
        written["aggregate"] = _write(out, "aggregate", formats, _aggregate_markdown(agg, names, ref, settings),
                                      None, agg)
    noise = C.eval_noise(cells, settings, _measured_noise(results.root))
    written["eval_noise"] = _write(out, "eval_noise", formats, _noise_markdown(noise), None, noise)

    t4 = T.table4(cells, settings, rows)
    t4["label"] = t4["label"].map(lambda r: names.get(r, r))
    written["table4"] = _write(out, "table4", formats,
                               f"Table 4 — per split at each run's best validation step ({results.avg_label}, %, mean "
                               "over seeds; on the embedded task val_a/b/c stand in for AIME24/25/26, test_a/b/c are "
                               "the held-out splits scored at that step).\n\n" + T.to_markdown(t4, index=False),
                               T.to_latex(t4, "Per-split scores at the best step.", "tab:table4", index=False), t4)

    prov = T.provenance(results.cells)
    written["provenance"] = _write(out, "provenance", formats,
                                   "Provenance — every cell of every sweep.\n\n" + T.to_markdown(prov, index=False),
                                   T.to_latex(prov.drop(columns=["run_dir"]), "Cells.", "tab:provenance", index=False),
                                   prov)
    binding = T.binding(cells, settings, rows)
    written["binding"] = _write(out, "binding", formats, _binding_markdown(binding, names, name), None, binding)
    sweep_comparisons = {}
    for extra in _other_sweeps(results, name):
        files, sweep_comparisons[extra] = _sweep_tables(results, extra, out, formats)
        written.update(files)
    for label, group in results.cells[results.cells["pooled_from"].notna()].groupby("pooled_from", sort=False):
        parts = sorted(set(group["label"]))
        notes.append(f"{label}: cells of {len(parts)} configurations under one label, reported apart as "
                     f"{', '.join(parts)} (never averaged together)")
    plain = cells[cells["label"] == cells["method"]]  # the methods' own arms, not variants of them
    if plain.empty:
        notes.append("paper vs ours: no label here is a method's own arm (every label is a variant or a split "
                     "configuration)")
    elif any(s in T.paper()["settings"] for s in settings):
        versus = T.paper_vs_ours(T.table1(plain, settings, rows, row_key="method"), row_key="method")
        written["paper_vs_ours"] = _write(out, "paper_vs_ours", formats, _versus_markdown(versus, results.avg_label),
                                          None, versus)
    else:
        notes.append("paper vs ours: no setting of this results folder stands in for a paper column")
    return {"written": written, "notes": notes, "main_sweep": name, "comparisons": cmp, "reference": ref,
            "names": names, "sweep_comparisons": sweep_comparisons}


def _table1(cells, settings, rows, ref, protocols, names, sweep, avg_label, out, formats, stem="table1"):
    """Table 1 per protocol, bold where the corrected comparisons support it; and those comparisons."""
    longs, compared, md, tex = [], [], [], []
    for score in protocols:
        cmp = C.comparisons(cells, settings, rows, ref, score)
        plain = T.table1(cells, settings, rows, score=score)
        bold = C.supported_best(cells, plain, settings, score, cmp)
        long = T.table1(cells, settings, rows, score=score, bold=bold)
        longs.append(long.assign(protocol=score))
        compared.append(cmp)
        frame = T.pivot(long, settings, rows, markup="md").rename(index=names)
        frame.index.name = "method"
        few = long[(long["scored"] == 1)]
        warn = (f"\nNo interval for {len(few)} entries with a single seed: one run says nothing about seed "
                "noise.\n" if len(few) else "")
        if long["warm_start"].fillna(0).astype(int).any():
            warn += "\n" + T.WARM_START_NOTE + "\n"
        md.append(f"### {C.SCORES[score]} ({avg_label}, %)\n\n" + T.to_markdown(frame) + warn
                  + ("\nBold: " + ", ".join(f"{names.get(r, r)} in {s}" for r, s in sorted(bold)) + ".\n" if bold else
                     "\nNothing is bold: in no column does the top entry beat every other entry in a Holm-corrected "
                     "paired permutation test.\n"))
        frame = T.pivot(long, settings, rows, markup="tex").rename(index=names)
        frame.index.name = "method"
        tex.append(T.to_latex(frame, f"{C.SCORES[score]}: mean over seeds [95 % interval] ({sweep}); bold only where "
                                     "a corrected paired test supports the lead.", f"tab:table1_{score}"))
    caption = (f"Table 1 ({sweep}) — mean over seeds with its 95 % interval (Student-t below "
               f"{S.BOOTSTRAP_MIN_SEEDS} seeds, BCa bootstrap from there); `collapse (step N)` marks collapsed seeds, "
               "which count with their best score before the collapse.\n\n")
    paths = _write(out, stem, formats, caption + "\n".join(md), "\n".join(tex),
                   pd.concat(longs).drop(columns=["text"]))
    return paths, (pd.concat(compared) if any(not c.empty for c in compared) else pd.DataFrame())


def _table1_paper(cells, settings, rows, protocols, names, sweep, avg_label, out, formats) -> list[Path]:
    """Table 1 in the paper's layout: the mean alone, the highest of each column bold and the second
    underlined. Descriptive — no test stands behind a mark; table1.md holds the tested view."""
    paper_columns = T.paper()["settings"]
    compared = [f"{s} with the paper's {paper_columns[s]}" for s in settings if s in paper_columns]
    note = (f"Table 1 ({sweep}) in the paper's layout — mean over seeds ({avg_label}, %); **bold** the highest mean "
            "of a column, <u>underlined</u> the second (an entry with a collapsed seed is not ranked). Descriptive: "
            "no test stands behind these marks; table1.md bolds only what a Holm-corrected paired test supports."
            + (f" Compared with the paper's columns: {'; '.join(compared)}." if compared else "") + "\n\n")
    md, tex = [], []
    for score in protocols:
        long = T.table1(cells, settings, rows, score=score)
        values, warm = T.paper_style_values(long, settings, rows), T.never_left_warm_start(long)
        shown = T.paper_layout(values, "md", warm_start=warm).rename(index=names)
        shown.index.name = "method"
        md.append(f"### {C.SCORES[score]}\n\n" + T.to_markdown(shown)
                  + ("\n† never left the warm start: its best step was 0 in every seed.\n" if warm else ""))
        shown = T.paper_layout(values, "tex", warm_start=warm).rename(index=names)
        shown.index.name = "method"
        tex.append(T.to_latex(shown, f"{C.SCORES[score]} ({sweep}): mean over seeds; bold the highest, underlined "
                                     "the second mean of a column (descriptive, no test).", f"tab:table1_paper_{score}"))
    return _write(out, "table1_paper", formats, note + "\n".join(md), "\n".join(tex))


def _display_names(rows) -> dict:
    """The paper's name of each registry method; a variant label stays as the spec wrote it."""
    return {r: (T.display_name(r) if r in T.paper()["methods"] else r) for r in rows}


def _other_sweeps(results, main: str | None) -> list[str]:
    return [n for n, m in results.sweeps.items() if n != main and not tuning.is_tuning(m) and results.has(n)]


def _sweep_tables(results, sweep: str, out: Path, formats) -> tuple[dict, tuple]:
    """A Table 1 of one more sweep (its first arm as the reference of the paired comparisons), the
    comparisons, the binding rates, and a survival table if the sweep feeds one: ``*_<sweep>`` files;
    and (comparisons, display names) for the sweep's forest plot."""
    cells = results.sweep_cells(sweep)
    settings, rows = _ordered_settings(cells), _ordered_rows(cells)
    names = _display_names(rows)
    ref = _reference(rows, None) if "cppo" in rows else rows[0]
    written = {}
    written[f"table_{sweep}"], cmp = _table1(cells, settings, rows, ref, _protocols(cells), names, sweep,
                                             results.avg_label, out, formats, stem=f"table_{sweep}")
    if not cmp.empty:
        written[f"comparisons_{sweep}"] = _write(out, f"comparisons_{sweep}", formats,
                                                 _comparisons_markdown(cmp, names, ref), None, cmp)
    binding = T.binding(cells, settings, rows)
    written[f"binding_{sweep}"] = _write(out, f"binding_{sweep}", formats, _binding_markdown(binding, names, sweep),
                                         None, binding)
    if "survival" in str(results.sweeps[sweep].get("feeds", "")).lower():
        frame = T.survival(cells, settings, rows, reference=ref)
        frame = frame.rename(columns={f"p vs {ref}": f"p vs {names.get(ref, ref)}"}).assign(
            label=lambda f: f["label"].map(lambda r: names.get(r, r)))
        written[f"survival_{sweep}"] = _write(
            out, f"survival_{sweep}", formats,
            f"# Survival ({sweep})\n\nA run survives when it does not collapse within its steps (the headline "
            "falling to ≈ 0 after reaching the collapse threshold, or a non-finite loss or weight). Rate over "
            "finished seeds with its exact (Clopper-Pearson) 95 % interval; the collapse steps of the others; "
            f"two-sided Fisher exact p of each arm's survival against {names.get(ref, ref)}'s, Holm-adjusted over "
            "the table.\n\n"
            + T.to_markdown(frame.assign(**{c: frame[c].map(lambda v: _cell(v, ".3g"))
                                            for c in frame.columns if c.startswith("p ")}), index=False) + "\n",
            None, frame)
    return written, (cmp, names)


def _binding_markdown(binding: pd.DataFrame, names: dict, sweep: str) -> str:
    frame = binding.assign(label=binding["label"].map(lambda r: names.get(r, r)))
    return (f"# How much each trust region bound ({sweep})\n\nPer arm, mean over its finished seeds of the per-run "
            "mean over training steps in [1, T_stop]: tokens masked (%; TRM's rejected responses count by their "
            "tokens), responses accepted (%, TRM), tokens whose IS weight hit the cap (%, CISPO/MinPRO); beside the "
            "score (held-out test headline where recorded, else the best validation headline; %).\n\n"
            + T.to_markdown(frame, index=False) + "\n")


def _tuning_tables(results, sweep: str, out: Path, formats) -> list[Path]:
    cells = tuning.with_arms(results.sweep_cells(sweep), results.sweeps[sweep])
    table = tuning.tuning_table(cells)
    budget = tuning.budgets(cells)
    seeds = sorted(set(cells["seed"]))
    shown = table.assign(**{c: table[c].map(lambda v: _cell(v, ".1f", 100))
                            for c in ("score", "low", "high", "mask_fraction", "seq_acceptance", "cap_hit") if c in table},
                         chosen=table["chosen"].map(lambda v: "**chosen**" if v else "")).rename(
        columns={"score": "score %", "low": "95% low", "high": "95% high", **T.BINDING_COLUMNS})
    md = (f"# Tuning ({sweep}): an equal budget per arm\n\nConfigurations per arm (a method, or a variant of one "
          "tuned on its own): "
          + ", ".join(f"{m} {n}" for m, n in budget.items())
          + f" (equal: {'yes' if len(set(budget.values())) == 1 else 'NO'}); tuning seeds {seeds}, never reported. "
          f"Score: the best validation headline in [0, T_stop], mean over the tuning seeds (a collapsed seed counts "
          f"{tuning.COLLAPSE_SCORE:g}), with its 95 % t interval, %; binding rates as in binding.md. The chosen "
          "configuration of each arm is the best mean (ties: the earlier); it is retrained on fresh seeds.\n\n"
          + T.to_markdown(shown, index=False) + "\n")
    paths = _write(out, f"tuning_{sweep}", formats, md, None, table)
    return paths + F.fig_tuning(table, out, f"tuning_{sweep}", f"Tuning ({sweep}): score vs how much the rule binds",
                                ("png",))


def _measured_noise(root) -> dict | None:
    path = Path(root) / "eval_noise.json"
    return json.loads(path.read_text()) if path.exists() else None


def _cell(v, spec: str, scale: float = 1.0) -> str:
    """A table cell: ``scale · v`` in format ``spec``, or — where the value is missing."""
    return "—" if pd.isna(v) else f"{scale * v:{spec}}"


def _pts(v) -> str:
    return _cell(v, "+.1f", 100)


def _comparisons_markdown(cmp: pd.DataFrame, names: dict, ref: str) -> str:
    lines = [f"# Paired comparisons against {names.get(ref, ref)}\n",
             f"Per setting and protocol: {names.get(ref, ref)} − other, paired by seed (seed s of every method shares the "
             "warm start, the training-problem stream and the evaluation noise), in points; 95 % interval of the mean "
             "difference; two-sided paired permutation p (exact: all sign flips); Holm-adjusted over every comparison "
             f"of the protocol's table; verdict at α = {S.ALPHA}; seeds a 2-point difference would need at 80 % power "
             "at the level of Holm's first step (α / number of comparisons), from the observed SD of the "
             "differences; and the smallest difference these seeds detect at that power and level ('detectable', "
             "points; — where the permutation test cannot reach that level at all).\n"]
    for score, group in cmp.groupby("score", sort=False):
        table = pd.DataFrame({
            "setting": group["setting"], "other": group["other"].map(lambda r: names.get(r, r)), "seeds": group["seeds"],
            "diff": group["diff"].map(_pts),
            "95% CI": [f"[{_pts(lo)}, {_pts(hi)}]" for lo, hi in zip(group["ci_low"], group["ci_high"])],
            "p": group["p"].map(lambda v: f"{v:.3g}"), "p (Holm)": group["p_holm"].map(lambda v: f"{v:.3g}"),
            "verdict": group["verdict"], "seeds for 2 pts": group["seeds_needed"],
            "detectable": group["detectable"].map(lambda v: _cell(v, ".1f", 100)),
            "note": group["note"]})
        lines.append(f"\n## {C.SCORES[score]}\n")
        lines.append(T.to_markdown(table, index=False))
        counts = group["verdict"].value_counts()
        lines.append("\n" + ", ".join(f"{n} {k}" for k, n in counts.items()) + f" (of {len(group)}).\n")
    return "\n".join(lines)


def _aggregate_markdown(agg: pd.DataFrame, names: dict, ref: str, settings: list[str]) -> str:
    lines = [f"# Across settings ({', '.join(settings)})\n",
             "Every (setting, seed) score of a method: mean and interquartile mean (IQM) with 95 % stratified-bootstrap "
             "intervals (seeds resampled within each setting, percentile method, as rliable does), and the probability "
             f"that a random seed of {names.get(ref, ref)} beats a random seed of the method in a random setting, "
             f"P({names.get(ref, ref)} > X), ties ½. With few seeds per setting these intervals are optimistic.\n"]
    for score, group in agg.groupby("score", sort=False):
        table = pd.DataFrame({
            "method": group["row"].map(lambda r: names.get(r, r)), "runs": group["runs"],
            "mean": [C.interval_text(m, lo, hi) for m, lo, hi in zip(group["mean"], group["mean_low"], group["mean_high"])],
            "IQM": [C.interval_text(m, lo, hi) for m, lo, hi in zip(group["iqm"], group["iqm_low"], group["iqm_high"])],
            f"P({names.get(ref, ref)} > X)": [
                "—" if pd.isna(p) else f"{p:.2f} [{lo:.2f}, {hi:.2f}]" for p, lo, hi in
                zip(*(group[c] if c in group else [float("nan")] * len(group)
                      for c in ("p_ref_better", "p_ref_better_low", "p_ref_better_high")))]})
        lines.append(f"\n## {C.SCORES[score]}\n")
        lines.append(T.to_markdown(table, index=False))
    return "\n".join(lines)


def _noise_markdown(noise: pd.DataFrame) -> str:
    lines = ["# Evaluation noise\n",
             "Step 0: every method and seed of a setting starts from the same warm-start model, so the spread of the "
             "step-0 headline over seeds is evaluation noise alone (SD in points, 95 % chi-square interval). "
             "Measured designs (`python scripts/eval_noise.py`): SD of one fixed model's headline and of the "
             "difference of two fixed models (GRPO and CPPO after 30 RL steps) over evaluation seeds, as the study "
             "compares them (same seed: same problems and noise), the seconds per evaluation, and the whole "
             "evaluation's share of a run (validation at every eval step, the test splits once).\n"]
    table = pd.DataFrame({
        "setting": noise["setting"], "step-0 seeds": noise["step0_seeds"],
        "step-0 SD": [C.interval_text(m, lo, hi) for m, lo, hi in
                      zip(noise["step0_sd"], noise["step0_sd_low"], noise["step0_sd_high"])]})
    if "design" in noise:
        table["design (problems × samples)"] = noise["design"].fillna("—")
        table["role"] = noise["role"].fillna("—")
        table["SD one model"] = noise["sd_single"].map(lambda v: _cell(v, ".2f", 100))
        table["SD difference"] = [C.interval_text(m, lo, hi, 100) if not pd.isna(m) else "—" for m, lo, hi in
                                  zip(noise["sd_diff"], noise["sd_diff_low"], noise["sd_diff_high"])]
        table["s per eval"] = noise["eval_s"].map(lambda v: _cell(v, ".2f"))
        table["evaluation's share of a run"] = noise["plan_eval_share"].map(
            lambda v: "—" if pd.isna(v) else f"{100 * v:.0f} %")
    lines.append(T.to_markdown(table, index=False))
    return "\n".join(lines)


def _versus_markdown(frame: pd.DataFrame, avg_label: str = "Avg@k") -> str:
    parts = [f"Paper Table 1 (AIME Avg@16, %) beside ours (headline {avg_label}, %), with each column's "
             "ranking (1 = best; collapsed entries unranked). Kendall's τ compares the two rankings.\n"]
    for (setting, column), group in frame.groupby(["setting", "paper_setting"], sort=False):
        tau = group["kendall_tau"].iloc[0]
        parts.append(f"\n### {column} ↔ {setting} (Kendall τ = {'—' if pd.isna(tau) else f'{tau:.2f}'})\n")
        parts.append(T.to_markdown(group[["method", "paper", "paper_rank", "ours", "ours_rank"]], index=False))
    return "".join(parts)


def write_figures(results, out: Path, formats=("png",), comparisons: pd.DataFrame | None = None,
                  names: dict | None = None, sweep_comparisons: dict | None = None) -> dict:
    written, notes = {}, []
    if comparisons is not None and not comparisons.empty:
        written["forest"] = F.fig_forest(comparisons, names or {}, out, results.avg_label, formats)
    for sweep, (cmp, sweep_names) in (sweep_comparisons or {}).items():
        if not cmp.empty and (cmp["seeds"] >= 2).any():  # one forest per other sweep with seeds to compare
            written[f"forest_{sweep}"] = F.fig_forest(cmp, sweep_names, out, results.avg_label, formats,
                                                      stem=f"forest_{sweep}")
    main = _main_sweep(results)

    def add(key, paths, why):
        if paths:
            written[key] = paths
        else:
            notes.append(f"{key}: {why}")

    if main:
        cells = results.sweep_cells(main)
        base = [s for s in BASE_SETTINGS if s in set(cells["setting"])] or _ordered_settings(cells)
        add("fig4", F.fig_validation(results, main, base, out, "fig4_validation_curves",
                                     f"Validation headline vs step ({main}; dotted: T_stop)", formats), "no cells")
        add("fig7", F.fig_warmup(results, main, base, out, formats), "no CPPO cells")
    gridded = set()
    for sweep in ([main] if main else []) + _other_sweeps(results, main):  # one grid per setting, first sweep wins
        for setting in _ordered_settings(results.sweep_cells(sweep)):
            if setting not in gridded:
                gridded.add(setting)
                stem = f"{GRID_FIGURES.get(setting, 'fig_grid')}_{setting}"
                add(stem, F.fig_setting_grid(results, sweep, setting, out, stem, formats), "no cells")
    add("fig5", F.fig_panels(results, FIG5, out, "fig5_ablations", "Fig. 5 — ablations", formats),
        "sweeps ablation_mechanism/ordering/gate not in this results folder")
    add("fig6", F.fig_panels(results, FIG6, out, "fig6_sensitivity_divergences", "Fig. 6 — sensitivity and divergences",
                             formats), "sweeps sensitivity/divergence_* not in this results folder")
    batch_file = Path(results.root) / "fig3_batch.json"
    if batch_file.exists():
        import json
        add("fig3", F.fig_prefix_schematic(json.loads(batch_file.read_text()), out, formats), "empty batch file")
    else:
        notes.append(f"fig3: no {batch_file.name} (python scripts/fig3_batch.py --out {batch_file})")
    if results.has("position_diagnostics"):
        add("fig2", F.fig_position(results, "position_diagnostics", out, formats), "no diagnostics recorded")
    else:
        notes.append("fig2: sweep position_diagnostics not in this results folder")
    return {"written": written, "notes": notes}


def build_report(root, out=None, table_formats=TABLE_FORMATS, figure_formats=("png",), reference=None,
                 table1: str | None = None, style: str = "tested") -> dict:
    if style not in STYLES:
        raise ValueError(f"--style must be one of {list(STYLES)}, got {style!r}")
    results = load_results(root)
    results.main_sweep = choose_table1(results, table1)
    out = Path(out) if out else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    bad = [f for f in table_formats if f not in TABLE_FORMATS] + [f for f in figure_formats if f not in FIGURE_FORMATS]
    if bad:
        raise ValueError(f"unknown format(s) {bad}; tables: {list(TABLE_FORMATS)}, figures: {list(FIGURE_FORMATS)}")
    tables = write_tables(results, out, table_formats, reference, style)
    figs = (write_figures(results, out, figure_formats, tables["comparisons"], tables["names"],
                          tables.get("sweep_comparisons")) if figure_formats
            else {"written": {}, "notes": []})
    index = (_index(results, tables, figs, out) + _factorials(results, out, figure_formats)
             + _searches(results.root, out, figure_formats) + _theory(results.root, out))
    (out / "report.md").write_text(index)
    from .html import write_html

    page = write_html(out, f"Report of {results.root}")
    return {"out": out, "tables": tables, "figures": figs, "cells": results.cells, "index": index, "html": page}


def _factorials(results, out: Path, figure_formats) -> str:
    """The factorial view of every grid (non-tuning sweeps) that varies one or two parameters of a method."""
    from .factorial import find_factorials, write_factorial

    tuning_sweeps = {n for n, m in results.sweeps.items() if tuning.is_tuning(m)}
    found, notes = find_factorials(results.cells[~results.cells["sweep"].isin(tuning_sweeps)])
    sections = [write_factorial(f, out, figure_formats or ("png",))[1] for f in found]
    if not sections and not notes:
        return ""
    return ("\n## Factorial views (factorial_<sweep>_<setting>_<method>.md, heatmap or line figure)\n\n"
            + "\n\n".join(sections) + "".join(f"\n- {n}" for n in notes) + "\n")


def _searches(root: Path, out: Path, figure_formats) -> str:
    """Each ``trh search`` of this results root: its trials, figures and best trial (analysis.searches)."""
    from .searches import search_folders, write_search

    sections = [write_search(folder, out, figure_formats or ("png",))[1] for folder in search_folders(Path(root))]
    return ("\n## Searches (trh search; search_<name>.md)\n\n" + "\n\n".join(sections) + "\n") if sections else ""


def _theory(root: Path, out: Path) -> str:
    """``trh theory``'s exact check of the paper's bounds, when this results root holds one."""
    import shutil

    from harness.store import theory_dir

    folder = theory_dir(root)
    if not (folder / "checks.md").exists():
        return ""
    for name, copy in (("checks.md", "theory_checks.md"), ("theory_bounds.png", "theory_bounds.png")):
        if (folder / name).exists():
            shutil.copyfile(folder / name, out / copy)
    return ("\n## Theory check (trh theory: the paper's bounds on enumerable toy models)\n\n"
            + (out / "theory_checks.md").read_text())


def _index(results, tables, figs, out: Path) -> str:
    cells = results.cells
    lines = [f"# Report of {results.root}\n", "## Cells\n"]
    for sweep, group in cells.groupby("sweep", sort=False):
        counts = group["verdict"].str.replace(r" \(step \d+\)", "", regex=True).value_counts()
        lines.append(f"- **{sweep}**: {len(group)} cells — " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    unfinished = cells[~cells["state"].isin(FINISHED)]
    if not unfinished.empty:
        lines.append("\nNot finished (tables use the finished seeds and say how many):\n")
        lines.append(T.to_markdown(unfinished[["sweep", "setting", "label", "seed", "id", "verdict", "steps_run"]],
                                   index=False))
    lines.append(f"\n## Table 1\n\nFrom sweep **{results.main_sweep}** (rule: {TABLE1_RULE}).\n")
    table1 = out / "table1.md"
    lines.append(table1.read_text() if table1.exists() else "(not written)\n")
    cmp = tables.get("comparisons")
    if cmp is not None and not cmp.empty:
        lines.append(f"\n## Comparisons against {tables['reference']} (comparisons.md)\n")
        for score, group in cmp.groupby("score", sort=False):
            counts = group["verdict"].value_counts()
            lines.append(f"- {C.SCORES[score]}: " + ", ".join(f"{n} {k}" for k, n in counts.items())
                         + f" of {len(group)} (Holm-corrected paired permutation tests)")
        few = cmp[cmp["seeds"].map(S.smallest_p) > S.ALPHA]
        if not few.empty:
            lines.append(f"- Warning: {len(few)} comparisons have {sorted(set(few['seeds']))} shared seeds; a paired "
                         f"permutation test needs ≥ 6 to reach p < {S.ALPHA} at all, so they cannot detect any "
                         "difference (the 'seeds for 2 pts' column says how many would).")
    lines.append("\n## Files\n")
    for key, paths in {**tables["written"], **figs["written"]}.items():
        lines.append(f"- {key}: " + ", ".join(p.name for p in paths))
    notes = tables["notes"] + figs["notes"]
    if notes:
        lines.append("\n## Not built\n")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
