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
from . import index as I
from . import markdown as M
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
    names = _display_names(rows, cells)
    ref = _reference(rows, reference)
    if reference is None and ref != "cppo" and any(r.startswith("cppo [") for r in rows):
        notes.append(f"comparisons: the reference is {ref}, since cppo's cells were split by configuration; "
                     "name one with --reference")
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
        written["comparisons"] = _write(out, "comparisons", formats, M.comparisons_markdown(cmp, names, ref),
                                        None, cmp)
    agg = pd.concat([C.aggregate_across_settings(cells, settings, rows, ref, score) for score in protocols])
    if not agg.empty:
        written["aggregate"] = _write(out, "aggregate", formats, M.aggregate_markdown(agg, names, ref, settings),
                                      None, agg)
    noise = C.eval_noise(cells, settings, _measured_noise(results.root))
    written["eval_noise"] = _write(out, "eval_noise", formats, M.noise_markdown(noise), None, noise)

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
    written["binding"] = _write(out, "binding", formats, M.binding_markdown(binding, names, name), None, binding)
    sweep_comparisons = {}
    for extra in _other_sweeps(results, name):
        files, sweep_comparisons[extra] = _sweep_tables(results, extra, out, formats)
        written.update(files)
    for label, group in results.cells[results.cells["pooled_from"].notna()].groupby("pooled_from", sort=False):
        parts = sorted(set(group["label"]))
        notes.append(f"{label}: cells of {len(parts)} configurations under one label, reported apart as "
                     f"{', '.join(parts)} (never averaged together)")
    written.update(_paper_vs_ours(cells, settings, rows, results.avg_label, out, formats, notes))
    return {"written": written, "notes": notes, "main_sweep": name, "comparisons": cmp, "reference": ref,
            "names": names, "sweep_comparisons": sweep_comparisons}


def _paper_vs_ours(cells, settings, rows, avg_label, out, formats, notes) -> dict:
    """The paper's Table 1 beside the methods' own arms (not variants, not split configurations)."""
    plain = cells[cells["label"] == cells["method"]]
    if plain.empty:
        notes.append("paper vs ours: no label here is a method's own arm (every label is a variant or a split "
                     "configuration)")
        return {}
    if not any(s in T.paper()["settings"] for s in settings):
        notes.append("paper vs ours: no setting of this results folder stands in for a paper column")
        return {}
    versus = T.paper_vs_ours(T.table1(plain, settings, rows, row_key="method"), row_key="method")
    return {"paper_vs_ours": _write(out, "paper_vs_ours", formats, M.versus_markdown(versus, avg_label), None, versus)}


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
    compared = T.compared_with(settings)
    note = (f"Table 1 ({sweep}) in the paper's layout — mean over seeds ({avg_label}, %); **bold** the highest mean "
            "of a column, <u>underlined</u> the second (an entry with a collapsed seed is not ranked). Descriptive: "
            "no test stands behind these marks; table1.md bolds only what a Holm-corrected paired test supports."
            + (f" Compared with the paper's columns: {'; '.join(compared)}." if compared else "") + "\n\n")
    md, tex = [], []
    for score in protocols:
        long = T.table1(cells, settings, rows, score=score)
        values, warm = T.paper_style_values(long, settings, rows), T.warm_start_entries(long)
        shown = T.paper_layout(values, "md", warm_start=warm).rename(index=names)
        shown.index.name = "method"
        md.append(f"### {C.SCORES[score]}\n\n" + T.to_markdown(shown)
                  + ("\n† never left the warm start: its best step was 0 in every seed.\n" if warm else ""))
        shown = T.paper_layout(values, "tex", warm_start=warm).rename(index=names)
        shown.index.name = "method"
        tex.append(T.to_latex(shown, f"{C.SCORES[score]} ({sweep}): mean over seeds; bold the highest, underlined "
                                     "the second mean of a column (descriptive, no test).", f"tab:table1_paper_{score}"))
    return _write(out, "table1_paper", formats, note + "\n".join(md), "\n".join(tex))


def _display_names(rows, cells: pd.DataFrame) -> dict:
    """The paper's name of each registry method; a variant label stays as the spec wrote it; a label of
    runs trained elsewhere (trh import) is marked as imported."""
    imported = set(cells.loc[cells["imported"].notna(), "label"]) if "imported" in cells else set()
    names = {r: (T.display_name(r) if r in T.paper()["methods"] else r) for r in rows}
    return {r: (f"{n} (imported)" if r in imported else n) for r, n in names.items()}


def _other_sweeps(results, main: str | None) -> list[str]:
    return [n for n, m in results.sweeps.items() if n != main and not tuning.is_tuning(m) and results.has(n)]


def _sweep_tables(results, sweep: str, out: Path, formats) -> tuple[dict, tuple]:
    """A Table 1 of one more sweep (its first arm as the reference of the paired comparisons), the
    comparisons, the binding rates, and a survival table if the sweep feeds one: ``*_<sweep>`` files;
    and (comparisons, display names) for the sweep's forest plot."""
    cells = results.sweep_cells(sweep)
    settings, rows = _ordered_settings(cells), _ordered_rows(cells)
    names = _display_names(rows, cells)
    ref = _reference(rows, None) if "cppo" in rows else rows[0]
    written = {}
    written[f"table_{sweep}"], cmp = _table1(cells, settings, rows, ref, _protocols(cells), names, sweep,
                                             results.avg_label, out, formats, stem=f"table_{sweep}")
    if not cmp.empty:
        written[f"comparisons_{sweep}"] = _write(out, f"comparisons_{sweep}", formats,
                                                 M.comparisons_markdown(cmp, names, ref), None, cmp)
    binding = T.binding(cells, settings, rows)
    written[f"binding_{sweep}"] = _write(out, f"binding_{sweep}", formats, M.binding_markdown(binding, names, sweep),
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
            + T.to_markdown(frame.assign(**{c: frame[c].map(lambda v: M.cell(v, ".3g"))
                                            for c in frame.columns if c.startswith("p ")}), index=False) + "\n",
            None, frame)
    return written, (cmp, names)


def _tuning_tables(results, sweep: str, out: Path, formats) -> list[Path]:
    cells = tuning.with_arms(results.sweep_cells(sweep), results.sweeps[sweep])
    table = tuning.tuning_table(cells)
    budget = tuning.budgets(cells)
    seeds = sorted(set(cells["seed"]))
    shown = table.assign(**{c: table[c].map(lambda v: M.cell(v, ".1f", 100))
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
    import time

    started = time.time()
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
    from .preregistered import preregistered_section

    index = (I.index_markdown(results, tables, figs, out, TABLE1_RULE, first=preregistered_section(results, out, figure_formats))
             + I.factorial_section(results, out, figure_formats) + I.search_section(results.root, out, figure_formats) + I.theory_section(results.root, out))
    (out / "report.md").write_text(index)
    from .html import write_html

    page = write_html(out, f"Report of {results.root}", since=started)
    return {"out": out, "tables": tables, "figures": figs, "cells": results.cells, "index": index, "html": page}

