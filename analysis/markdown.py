"""The markdown text of the report's tables: comparisons, aggregates, evaluation noise, binding rates and
the paper-vs-ours view (the numbers come from ``analysis.compare`` and ``analysis.tables``)."""

from __future__ import annotations

import pandas as pd

from . import compare as C
from . import stats as S
from . import tables as T


def binding_markdown(binding: pd.DataFrame, names: dict, sweep: str) -> str:
    frame = binding.assign(label=binding["label"].map(lambda r: names.get(r, r)))
    return (f"# How much each trust region bound ({sweep})\n\nPer arm, mean over its finished seeds of the per-run "
            "mean over training steps in [1, T_stop]: tokens masked (%; TRM's rejected responses count by their "
            "tokens), responses accepted (%, TRM), tokens whose IS weight hit the cap (%, CISPO/MinPRO); beside the "
            "score (held-out test headline where recorded, else the best validation headline; %).\n\n"
            + T.to_markdown(frame, index=False) + "\n")


def cell(v, spec: str, scale: float = 1.0) -> str:
    """A table cell: ``scale · v`` in format ``spec``, or — where the value is missing."""
    return "—" if pd.isna(v) else f"{scale * v:{spec}}"


def points(v) -> str:
    return cell(v, "+.1f", 100)


def comparisons_markdown(cmp: pd.DataFrame, names: dict, ref: str) -> str:
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
            "diff": group["diff"].map(points),
            "95% CI": [f"[{points(lo)}, {points(hi)}]" for lo, hi in zip(group["ci_low"], group["ci_high"])],
            "p": group["p"].map(lambda v: f"{v:.3g}"), "p (Holm)": group["p_holm"].map(lambda v: f"{v:.3g}"),
            "verdict": group["verdict"], "seeds for 2 pts": group["seeds_needed"],
            "detectable": group["detectable"].map(lambda v: cell(v, ".1f", 100)),
            "note": group["note"]})
        lines.append(f"\n## {C.SCORES[score]}\n")
        lines.append(T.to_markdown(table, index=False))
        counts = group["verdict"].value_counts()
        lines.append("\n" + ", ".join(f"{n} {k}" for k, n in counts.items()) + f" (of {len(group)}).\n")
    return "\n".join(lines)


def aggregate_markdown(agg: pd.DataFrame, names: dict, ref: str, settings: list[str]) -> str:
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


def noise_markdown(noise: pd.DataFrame) -> str:
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
        table["SD one model"] = noise["sd_single"].map(lambda v: cell(v, ".2f", 100))
        table["SD difference"] = [C.interval_text(m, lo, hi, 100) if not pd.isna(m) else "—" for m, lo, hi in
                                  zip(noise["sd_diff"], noise["sd_diff_low"], noise["sd_diff_high"])]
        table["s per eval"] = noise["eval_s"].map(lambda v: cell(v, ".2f"))
        table["evaluation's share of a run"] = noise["plan_eval_share"].map(
            lambda v: "—" if pd.isna(v) else f"{100 * v:.0f} %")
    lines.append(T.to_markdown(table, index=False))
    return "\n".join(lines)


def versus_markdown(frame: pd.DataFrame, avg_label: str = "Avg@k") -> str:
    parts = [f"Paper Table 1 (AIME Avg@16, %) beside ours (headline {avg_label}, %), with each column's "
             "ranking (1 = best; collapsed entries unranked). Kendall's τ compares the two rankings.\n"]
    for (setting, column), group in frame.groupby(["setting", "paper_setting"], sort=False):
        tau = group["kendall_tau"].iloc[0]
        parts.append(f"\n### {column} ↔ {setting} (Kendall τ = {'—' if pd.isna(tau) else f'{tau:.2f}'})\n")
        parts.append(T.to_markdown(group[["method", "paper", "paper_rank", "ours", "ours_rank"]], index=False))
    return "".join(parts)
