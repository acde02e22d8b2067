"""``report.md``: the index of a report — cell counts, what is not finished, Table 1, the comparisons'
verdicts, the files written and what could not be built — and its sections for factorial views,
searches and ``trh theory``."""

from __future__ import annotations

from pathlib import Path

from harness.store import FINISHED

from . import compare as C
from . import stats as S
from . import tables as T
from . import tuning


def factorial_section(results, out: Path, figure_formats) -> str:
    """The factorial view of every grid (non-tuning sweeps) that varies one or two parameters of a method."""
    from .factorial import find_factorials, write_factorial

    tuning_sweeps = {n for n, m in results.sweeps.items() if tuning.is_tuning(m)}
    found, notes = find_factorials(results.cells[~results.cells["sweep"].isin(tuning_sweeps)])
    sections = [write_factorial(f, out, figure_formats or ("png",))[1] for f in found]
    if not sections and not notes:
        return ""
    return ("\n## Factorial views (factorial_<sweep>_<setting>_<method>.md, heatmap or line figure)\n\n"
            + "\n\n".join(sections) + "".join(f"\n- {n}" for n in notes) + "\n")


def search_section(root: Path, out: Path, figure_formats) -> str:
    """Each ``trh search`` of this results root: its trials, figures and best trial (analysis.searches)."""
    from .searches import search_folders, write_search

    sections = [write_search(folder, out, figure_formats or ("png",))[1] for folder in search_folders(Path(root))]
    return ("\n## Searches (trh search; search_<name>.md)\n\n" + "\n\n".join(sections) + "\n") if sections else ""


def theory_section(root: Path, out: Path) -> str:
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


def index_markdown(results, tables, figs, out: Path, table1_rule: str, first: str = "") -> str:
    """The report's index; ``first`` (the pre-registered tests) comes right after its title."""
    cells = results.cells
    lines = [f"# Report of {results.root}\n", *([first] if first else []), "## Cells\n"]
    for sweep, group in cells.groupby("sweep", sort=False):
        counts = group["verdict"].str.replace(r" \(step \d+\)", "", regex=True).value_counts()
        lines.append(f"- **{sweep}**: {len(group)} cells — " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    unfinished = cells[~cells["state"].isin(FINISHED)]
    if not unfinished.empty:
        lines.append("\nNot finished (tables use the finished seeds and say how many):\n")
        lines.append(T.to_markdown(unfinished[["sweep", "setting", "label", "seed", "id", "verdict", "steps_run"]],
                                   index=False))
    lines.append(f"\n## Table 1\n\nFrom sweep **{results.main_sweep}** (rule: {table1_rule}).\n")
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
    if results.unlisted:
        notes.append(f"{len(results.unlisted)} run folder(s) under runs/ belong to no sweep and are not in these tables "
                     f"({', '.join(results.unlisted[:3])}{', …' if len(results.unlisted) > 3 else ''}): "
                     f"trh report {Path(results.root) / 'runs'} reports them")
    if notes:
        lines.append("\n## Not built\n")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
