"""``trh report RESULTS_DIR``: every table and figure the results support, plus an index (report.md)
that names what is missing, running or failed instead of silently leaving it out."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import figures as F
from . import tables as T
from .load import load_results

TABLE_FORMATS = ("md", "tex", "csv")
FIGURE_FORMATS = ("png", "pdf")
BASE_SETTINGS = ["base_s", "base_m", "long_s"]
GRID_FIGURES = {"post_s": "fig8", "base_s": "fig9", "base_m": "fig10", "long_s": "fig11"}
FIG5 = [("ablation_mechanism", "(a) mechanism"), ("ablation_ordering", "(b) ordering"), ("ablation_gate", "(c) gate")]
FIG6 = [("sensitivity", "(a) sensitivity"), ("divergence_kl_tv", "(b) KL vs TV"),
        ("divergence_binary_topk", "(c) Binary vs Top-K TV")]


def _main_sweep(results) -> str | None:
    for name in ("paper_main", "demo"):
        if results.has(name):
            return name
    return next(iter(results.sweeps), "runs" if not results.cells.empty else None)


def _ordered_settings(cells: pd.DataFrame) -> list[str]:
    known = list(T.paper()["settings"])
    present = list(dict.fromkeys(cells["setting"]))
    return [s for s in known if s in present] + [s for s in present if s not in known]


def _ordered_rows(cells: pd.DataFrame) -> list[str]:
    order = T.paper()["table1_methods"]
    labels = list(dict.fromkeys(cells["label"]))
    return sorted(labels, key=lambda lb: order.index(lb) if lb in order else len(order) + labels.index(lb))


def write_tables(results, out: Path, formats=TABLE_FORMATS) -> dict:
    written, notes = {}, []
    name = _main_sweep(results)
    cells = results.sweep_cells(name) if name in results.sweeps else results.cells
    settings, rows = _ordered_settings(cells), _ordered_rows(cells)
    names = {r: (T.display_name(r) if r in T.paper()["methods"] else r) for r in rows}

    long = T.table1(cells, settings, rows)
    for fmt in formats:
        frame = T.pivot(long, settings, rows, markup=fmt if fmt in ("md", "tex") else None).rename(index=names)
        frame.index.name = "method"
        path = out / f"table1.{fmt}"
        if fmt == "md":
            path.write_text(f"Table 1 — best validation headline ({results.avg_label}, %) within [0, T_stop], mean ± std over "
                            f"seeds ({name}); **best**, <u>second</u>; entries with a collapsed seed are not "
                            f"ranked.\n\n" + T.to_markdown(frame))
        elif fmt == "tex":
            path.write_text(T.to_latex(frame, f"Best validation headline within the matched window ({name}); "
                                              "bold best, underlined second.", "tab:table1"))
        else:
            long.drop(columns=["text"]).to_csv(path, index=False)
        written.setdefault("table1", []).append(path)

    t4 = T.table4(cells, settings, rows)
    t4["label"] = t4["label"].map(lambda r: names.get(r, r))
    for fmt in formats:
        path = out / f"table4.{fmt}"
        if fmt == "md":
            path.write_text(f"Table 4 — per validation split at each run's best step ({results.avg_label}, %, mean over "
                            "seeds; on the embedded task val_a/b/c stand in for AIME24/25/26).\n\n" + T.to_markdown(t4, index=False))
        elif fmt == "tex":
            path.write_text(T.to_latex(t4, "Per-split scores at the best step.", "tab:table4", index=False))
        else:
            t4.to_csv(path, index=False)
        written.setdefault("table4", []).append(path)

    prov = T.provenance(results.cells)
    for fmt in formats:
        path = out / f"provenance.{fmt}"
        if fmt == "md":
            path.write_text("Provenance — every cell of every sweep.\n\n" + T.to_markdown(prov, index=False))
        elif fmt == "tex":
            path.write_text(T.to_latex(prov.drop(columns=["run_dir"]), "Cells.", "tab:provenance", index=False))
        else:
            prov.to_csv(path, index=False)
        written.setdefault("provenance", []).append(path)

    noise = T.seed_noise(long, reference=next((r for r in rows if r == "cppo"), rows[0]))
    if not noise.empty:
        scaled = noise.assign(diff=noise["diff"] * 100, se=noise["se"] * 100)
        (out / "seed_noise.md").write_text(
            "CPPO (or the first row) against each method per setting: difference of mean best headlines "
            f"(points of {results.avg_label} %), its standard error over seeds, and whether |diff| > 2·SE.\n\n"
            + T.to_markdown(scaled, index=False))
        scaled.to_csv(out / "seed_noise.csv", index=False)
        written["seed_noise"] = [out / "seed_noise.md", out / "seed_noise.csv"]
    if any(s in T.paper()["settings"] for s in settings):
        versus = T.paper_vs_ours(T.table1(cells, settings, rows, row_key="method"), row_key="method")
        (out / "paper_vs_ours.csv").write_text(versus.to_csv(index=False))
        (out / "paper_vs_ours.md").write_text(_versus_markdown(versus, results.avg_label))
        written["paper_vs_ours"] = [out / "paper_vs_ours.md", out / "paper_vs_ours.csv"]
    else:
        notes.append("paper vs ours: no setting of this results folder stands in for a paper column")
    return {"written": written, "notes": notes, "main_sweep": name}


def _versus_markdown(frame: pd.DataFrame, avg_label: str = "Avg@k") -> str:
    parts = [f"Paper Table 1 (AIME Avg@16, %) beside ours (headline {avg_label}, %), with each column's "
             "ranking (1 = best; collapsed entries unranked). Kendall's τ compares the two rankings.\n"]
    for (setting, column), group in frame.groupby(["setting", "paper_setting"], sort=False):
        tau = group["kendall_tau"].iloc[0]
        parts.append(f"\n### {column} ↔ {setting} (Kendall τ = {'—' if pd.isna(tau) else f'{tau:.2f}'})\n")
        parts.append(T.to_markdown(group[["method", "paper", "paper_rank", "ours", "ours_rank"]], index=False))
    return "".join(parts)


def write_figures(results, out: Path, formats=("png",)) -> dict:
    written, notes = {}, []
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
        for setting in _ordered_settings(cells):
            stem = f"{GRID_FIGURES.get(setting, 'fig_grid')}_{setting}"
            add(stem, F.fig_setting_grid(results, main, setting, out, stem, formats), "no cells")
    add("fig5", F.fig_panels(results, FIG5, out, "fig5_ablations_post", "Fig. 5 — ablations (post-trained)", formats),
        "sweeps ablation_mechanism/ordering/gate not in this results folder")
    add("fig6", F.fig_panels(results, FIG6, out, "fig6_ablations_base", "Fig. 6 — sensitivity and divergences (base)",
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


def build_report(root, out=None, table_formats=TABLE_FORMATS, figure_formats=("png",)) -> dict:
    results = load_results(root)
    out = Path(out) if out else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    bad = [f for f in table_formats if f not in TABLE_FORMATS] + [f for f in figure_formats if f not in FIGURE_FORMATS]
    if bad:
        raise ValueError(f"unknown format(s) {bad}; tables: {list(TABLE_FORMATS)}, figures: {list(FIGURE_FORMATS)}")
    tables = write_tables(results, out, table_formats)
    figs = write_figures(results, out, figure_formats) if figure_formats else {"written": {}, "notes": []}
    index = _index(results, tables, figs, out)
    (out / "report.md").write_text(index)
    return {"out": out, "tables": tables, "figures": figs, "cells": results.cells, "index": index}


def _index(results, tables, figs, out: Path) -> str:
    cells = results.cells
    lines = [f"# Report of {results.root}\n", "## Cells\n"]
    for sweep, group in cells.groupby("sweep", sort=False):
        counts = group["verdict"].str.replace(r" \(step \d+\)", "", regex=True).value_counts()
        lines.append(f"- **{sweep}**: {len(group)} cells — " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    unfinished = cells[~cells["state"].isin(["done", "collapsed"])]
    if not unfinished.empty:
        lines.append("\nNot finished (tables use the finished seeds and say how many):\n")
        lines.append(T.to_markdown(unfinished[["sweep", "setting", "label", "seed", "id", "verdict", "steps_run"]],
                                   index=False))
    lines.append("\n## Table 1\n")
    table1 = out / "table1.md"
    lines.append(table1.read_text() if table1.exists() else "(not written)\n")
    lines.append("\n## Files\n")
    for key, paths in {**tables["written"], **figs["written"]}.items():
        lines.append(f"- {key}: " + ", ".join(p.name for p in paths))
    notes = tables["notes"] + figs["notes"]
    if notes:
        lines.append("\n## Not built\n")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
