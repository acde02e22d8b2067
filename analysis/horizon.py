"""The horizon study's figure: the declared paired differences against the horizon, with their 95 %
intervals, beside the paper's gains of CPPO over DPPO against each run's maximum response length —
a different model and task, drawn in its own panel so that nobody reads the two on one scale."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from .figures import _save, plt
from .tables import display_name, paper

SETTINGS_DIR = Path(__file__).resolve().parents[1] / "harness" / "conf" / "setting"


def paper_gains() -> pd.DataFrame:
    """The paper's CPPO − DPPO per column (Table 1, points) and that column's maximum response tokens."""
    data = paper()
    rows = data["table1"]["rows"]
    out = []
    for i, column in enumerate(data["table1"]["columns"]):
        setting = yaml.safe_load((SETTINGS_DIR / f"{data['paper_settings'][column]}.yaml").read_text())
        out.append({"column": column, "response_tokens": setting["rl"]["max_response_tokens"],
                    "gain": float(rows["CPPO"][i]) - float(rows["DPPO"][i])})
    return pd.DataFrame(out)


def horizon_figure(comparisons: pd.DataFrame, horizon: dict, slope: pd.Series | None, sweep: str, out: Path,
                   stem: str, formats=("png",)) -> list[Path]:
    """Left: reference − each other arm per horizon (points, 95 % interval over seeds), with the declared
    slope in the title; right: the paper's gains. ``comparisons`` is the declared test's frame."""
    frame = comparisons[comparisons["seeds"] > 0].copy()
    if frame.empty:
        return []
    frame["horizon"] = frame["setting"].map(lambda s: float(horizon[s]))
    colors = {m: row['color'] for m, row in paper()['methods'].items()}
    fig, (ax, ax_paper) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    others = list(dict.fromkeys(frame["other"]))
    for k, other in enumerate(others):
        rows = frame[frame["other"] == other].sort_values("horizon")
        x = rows["horizon"] * (1 + 0.04 * (k - (len(others) - 1) / 2))  # side by side at each horizon
        y = 100 * rows["diff"]
        err = [100 * (rows["diff"] - rows["ci_low"]), 100 * (rows["ci_high"] - rows["diff"])]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, lw=1.2, label=f"{rows['reference'].iloc[0]} − {other}",
                    color=colors.get(str(other).lower()))
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(frame["horizon"].unique()), [f"{h:g}" for h in sorted(frame["horizon"].unique())])
    ax.set_xlabel("response tokens (log scale)")
    score = "held-out test" if frame["score"].iloc[0] == "heldout_headline" else "best validation"
    ax.set_ylabel(f"paired difference, {score} (points)")
    title = f"this harness: {sweep}"
    if slope is not None and pd.notna(slope["slope_per_doubling"]):
        title += (f"\ndeclared slope of {slope['reference']} − {slope['other']}: {100 * slope['slope_per_doubling']:.2f} "
                  f"[{100 * slope['ci_low']:.2f}, {100 * slope['ci_high']:.2f}] per doubling ({slope['seeds']} seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, title="bars: 95 % CI over seeds", title_fontsize=7)
    gains = paper_gains()
    ax_paper.scatter(gains["response_tokens"], gains["gain"], color=colors.get("cppo"), zorder=3)
    for row in gains.itertuples():
        ax_paper.annotate(row.column, (row.response_tokens, row.gain), textcoords="offset points", xytext=(5, 3),
                          fontsize=8)
    ax_paper.set_xscale("log", base=2)
    ax_paper.set_xticks(sorted(gains["response_tokens"].unique()),
                        [f"{t:g}" for t in sorted(gains["response_tokens"].unique())])
    ax_paper.set_xlim(gains["response_tokens"].min() / 1.6, gains["response_tokens"].max() * 1.6)
    ax_paper.axhline(0, color="0.5", lw=0.8)
    ax_paper.set_xlabel("maximum response tokens (log scale)")
    ax_paper.set_ylabel(f"{display_name('cppo')} − {display_name('dppo')}, best validation (points)")
    ax_paper.set_title("the paper: Qwen3 models on AIME, one run each\n(a different model and task; no intervals)",
                       fontsize=9)
    fig.tight_layout()
    return _save(fig, out, stem, formats)
