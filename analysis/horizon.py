"""The horizon study's figure: the declared paired differences against the horizon, with their 95 %
intervals, beside the paper's gains of CPPO over DPPO against each run's maximum response length —
a different model and task, drawn in its own panel so that nobody reads the two on one scale."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from .figures import plt, save_figure
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


def horizon_figure(comparisons: pd.DataFrame, horizon: dict, slope: pd.Series | None, sweep: str, colours: dict,
                   out: Path, stem: str, formats=("png",)) -> list[Path]:
    """Left: reference − each other arm per horizon (points, 95 % interval over seeds), with the declared
    slope in the title; right: the paper's gains. ``comparisons`` is the declared test's frame; ``colours``
    the report's label → colour (``figures.report_colours``)."""
    frame = comparisons[comparisons["seeds"] > 0].copy()
    if frame.empty:
        return []
    frame["horizon"] = frame["setting"].map(lambda s: float(horizon[s]))
    fig, (ax, ax_paper) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    others = list(dict.fromkeys(frame["other"]))
    for k, other in enumerate(others):
        rows = frame[frame["other"] == other].sort_values("horizon")
        x = rows["horizon"] * (1 + 0.04 * (k - (len(others) - 1) / 2))  # side by side at each horizon
        y = 100 * rows["diff"]
        err = [100 * (rows["diff"] - rows["ci_low"]), 100 * (rows["ci_high"] - rows["diff"])]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, lw=1.2, label=f"{rows['reference'].iloc[0]} − {other}",
                    color=colours.get(other))
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
    ax_paper.scatter(gains["response_tokens"], gains["gain"], color=paper()["methods"]["cppo"]["color"], zorder=3)
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
    return save_figure(fig, out, stem, formats)


def position_by_horizon(results, sweep: str, horizon: dict, colours: dict, out: Path, stem: str,
                        formats=("png",)) -> list[Path]:
    """The drift's position profile and the mask rate by position at each horizon (one column each): the
    mean |π(y_t) − μ(y_t)| of the sampled token and the share of tokens masked per position bin, over
    relative position t / T, pooled over seeds and the evaluation steps after step 0, one line per arm
    (``colours``: as in ``horizon_figure``)."""
    cells = results.sweep_cells(sweep)
    settings = [s for s in sorted(horizon, key=horizon.get) if s in set(cells["setting"])]
    if not settings:
        return []
    fig, axes = plt.subplots(2, len(settings), figsize=(3.2 * len(settings), 5.6), squeeze=False, sharey="row")
    drawn = False
    for col, setting in enumerate(settings):
        for label, group in cells[cells["setting"] == setting].groupby("label", sort=False):
            rows = [r for run_dir in group["run_dir"] for r in results.curves(run_dir, diagnostics=True).to_dict("records")
                    if r.get("step", 0) > 0]
            if not rows:
                continue
            ends = [float(e) for e in rows[0]["bin_end"]]
            centres = [(float(s) + e) / 2 / ends[-1] for s, e in zip(rows[0]["bin_start"], ends)]
            for row, key in enumerate(("mean_dev", "mask_rate")):
                values = pd.DataFrame([[float("nan") if v is None else v for v in r.get(key) or []] for r in rows])
                if values.empty:
                    continue
                axes[row][col].plot(centres[:values.shape[1]], values.mean().to_numpy(), marker="o", ms=3,
                                    color=colours.get(label), label=label)
                drawn = True
        axes[0][col].set_title(f"{setting} ({horizon[setting]:g} tokens)", fontsize=9)
        axes[1][col].set_xlabel("relative position t / T")
    if not drawn:
        plt.close(fig)
        return []
    axes[0][0].set_ylabel("mean |π(y_t) − μ(y_t)|")
    axes[0][0].set_yscale("log")
    axes[1][0].set_ylabel("tokens masked")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{sweep}: drift and masks by position (mean over seeds and evaluation steps after 0)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, stem, formats)
