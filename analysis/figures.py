"""The paper's figures from results folders (never retraining). Seeds are drawn as a mean line with a
band = the 95 % t interval of the mean over seeds (said in every figure); colours follow the paper
(CPPO blue, DPPO red, TRM-Avg gold, TRM-Max brown, CISPO mauve, GRPO green, MinPRO black), and every
variant (a method with its overrides) keeps one colour in every panel and figure."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from .compare import SCORES  # noqa: E402
from .load import Results  # noqa: E402
from .stats import CONFIDENCE  # noqa: E402
from .tables import compared_with, display_name, paper  # noqa: E402

EXTRA_COLORS = ["#e377c2", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
                "#31a354", "#756bb1", "#636363", "#9c9ede", "#cedb9c", "#e7969c"]
BAND = "band: 95 % CI of the mean over seeds"
LINESTYLES = ["-", "--", "-.", ":"]
# one marker per variant, in order of appearance: as many as there are colours before any repeats
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p", "d", "H", "8", "1", "2", "3", "4", "+"]


def _variants(cells: pd.DataFrame) -> list[tuple[str, str, str]]:
    variants = cells["variant"] if "variant" in cells else cells["method"]
    return list(zip(cells["label"], cells["method"], variants))


def _spare_colour(taken: set) -> str:
    """A colour for a variant that is not a method's own arm: from the spare list, then matplotlib's
    qualitative palettes, then hues a golden angle apart — never a colour already taken."""
    import colorsys

    from matplotlib.colors import to_hex, to_rgb

    def far(colour: str, distance: float) -> bool:  # not a near-copy of a taken colour (a second blue for CPPO)
        rgb = np.array(to_rgb(colour))
        return all(np.linalg.norm(rgb - np.array(to_rgb(t))) >= distance for t in taken)

    palettes = [to_hex(c) for name in ("tab20", "tab20b", "tab20c", "Set1", "Dark2")
                for c in plt.get_cmap(name).colors]
    for distance in (0.25, 0.12):
        for colour in dict.fromkeys(EXTRA_COLORS + palettes):
            if colour not in taken and far(colour, distance):
                return colour
    k = len(taken)
    while True:
        k += 1
        colour = to_hex(colorsys.hsv_to_rgb((k * 0.6180339887) % 1.0, 0.55 + 0.4 * (k % 2), 0.5 + 0.4 * (k % 3) / 2))
        if colour not in taken:
            return colour


def colour_map(cells: pd.DataFrame, main_sweep: str | None = None) -> dict:
    """label → colour, one colour per variant (method + overrides) across every sweep of ``cells``: a
    method's own arm — the first variant, the main sweep's first, that has no overrides or is labelled by
    the method's name (a tuned arm) — gets the paper's colour, every other variant a colour no other
    variant has."""
    if main_sweep is not None and "sweep" in cells:
        cells = pd.concat([cells[cells["sweep"] == main_sweep], cells[cells["sweep"] != main_sweep]])
    paper_colours = {m["color"] for m in paper()["methods"].values() if "color" in m}
    by_variant, colours = {}, {}
    own_arms = {}
    for label, method, variant in _variants(cells):
        if variant == method or label in (method, display_name(method)):
            own_arms.setdefault(method, variant)
    for label, method, variant in _variants(cells):
        if variant not in by_variant:
            own = paper()["methods"].get(method, {}).get("color") if own_arms.get(method) == variant else None
            by_variant[variant] = own or _spare_colour(paper_colours | set(by_variant.values()))
        colours.setdefault(label, by_variant[variant])
    return colours


def report_colours(results: Results) -> dict:
    """The colours of every figure of one report: the main (Table 1) sweep's arms get the paper's colours."""
    return colour_map(results.cells, results.main_sweep)


def marker_map(cells: pd.DataFrame) -> dict:
    """label → marker, one marker per variant in order of appearance (distinct up to len(MARKERS) variants),
    so that two variants differ in colour and in marker (readable in grey print)."""
    by_variant, markers = {}, {}
    for label, _, variant in _variants(cells):
        by_variant.setdefault(variant, MARKERS[len(by_variant) % len(MARKERS)])
        markers.setdefault(label, by_variant[variant])
    return markers


def _legend_name(label: str, method: str) -> str:
    return display_name(method) if label == method else label


def seed_curves(results: Results, group: pd.DataFrame, key: str, smooth: int = 1):
    """(steps, mean, low, high) of ``key`` over the seeds of one (setting, label) group."""
    series = []
    for run_dir in group["run_dir"]:
        frame = results.curves(run_dir)
        if frame.empty or key not in frame:
            continue
        s = frame[["step", key]].dropna().set_index("step")[key]
        if smooth > 1:
            s = s.rolling(smooth, min_periods=1).mean()
        series.append(s)
    if not series:
        return None
    table = pd.concat(series, axis=1).sort_index()  # union of steps, in order (runs may miss some)
    mean = table.mean(axis=1).to_numpy()
    n = table.notna().sum(axis=1).to_numpy()
    half = np.full_like(mean, np.nan)
    ok = n > 1
    half[ok] = stats.t.ppf((1 + CONFIDENCE) / 2, n[ok] - 1) * table.std(axis=1, ddof=1).to_numpy()[ok] / np.sqrt(n[ok])
    return table.index.to_numpy(), mean, mean - half, mean + half


ACCURACIES = ("headline", "train_reward")  # and every validation split the runs recorded (cells' validation_splits)


def plot_curves(ax, results: Results, cells: pd.DataFrame, key: str, colours: dict, smooth: int = 1,
                scale: float = 1.0, labels=None):
    labels = labels or list(dict.fromkeys(cells["label"]))
    markers = marker_map(results.cells)  # every figure of a report: one marker per variant
    for i, label in enumerate(labels):
        group = cells[cells["label"] == label]
        curve = seed_curves(results, group, key, smooth)
        if curve is None:
            continue
        steps, mean, low, high = curve
        if key in ACCURACIES or key in _validation_splits(cells) or key.endswith("_share"):  # means of [0, 1] values
            low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
        colour = colours.get(label)
        # the variant's own marker (about eight along the line); the line style varies within a panel, so
        # that lines that coincide stay visible
        ax.plot(steps, mean * scale, color=colour, lw=1.6, ls=LINESTYLES[i % len(LINESTYLES)],
                label=_legend_name(label, group["method"].iloc[0]), marker=markers.get(label, "o"),
                markevery=max(1, len(steps) // 8), ms=4, mfc="none", zorder=3 + i)
        if len(group) > 1:
            ax.fill_between(steps, low * scale, high * scale, color=colour, alpha=0.12, lw=0)
    ax.grid(alpha=0.3)


def _t_stop_line(ax, cells):
    t_stop = cells["t_stop"].max()
    ax.axvline(t_stop, color="0.5", ls=":", lw=1)


def save_figure(fig, out: Path, stem: str, formats) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def fig_validation(results: Results, sweep: str, settings: list[str], out: Path, stem: str, title: str,
                   formats=("png",)) -> list[Path]:
    """Fig. 4 (and Figs. 5–6 panels): validation headline vs step, one panel per setting."""
    cells = results.sweep_cells(sweep)
    settings = [s for s in settings if s in set(cells["setting"])]
    if not settings:
        return []
    colours = report_colours(results)
    fig, axes = plt.subplots(1, len(settings), figsize=(4.6 * len(settings), 3.6), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        sub = cells[cells["setting"] == setting]
        plot_curves(ax, results, sub, "headline", colours, scale=100)
        _t_stop_line(ax, sub)
        ax.set_title(setting, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(f"validation headline ({results.avg_label}, %)", fontsize=8)
    fig.suptitle(f"{title}; {BAND}", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _compared_note(fig, settings)
    handles = {}
    for ax in axes[0]:  # every label of every panel, once
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    return save_figure(fig, out, stem, formats)


def _compared_note(fig, settings) -> None:
    """The paper columns these settings are compared with, as a note under the figure: a title says only
    what was run."""
    columns = compared_with(settings)
    if columns:
        fig.text(0.5, 0.005, "compared with: " + "; ".join(columns), ha="center", va="bottom", fontsize=7, color="0.35")


def fig_panels(results: Results, panels: list[tuple[str, str]], out: Path, stem: str, title: str,
               formats=("png",)) -> list[Path]:
    """Figs. 5 and 6: one panel per ablation sweep (its single setting), validation headline vs step."""
    panels = [(s, t) for s, t in panels if results.has(s)]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
    colours = report_colours(results)
    for ax, (sweep, panel_title) in zip(axes[0], panels):
        cells = results.sweep_cells(sweep)
        plot_curves(ax, results, cells, "headline", colours, scale=100)
        _t_stop_line(ax, cells)
        ax.set_title(f"{panel_title} — {cells['setting'].iloc[0]}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(f"validation headline ({results.avg_label}, %)", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{title}; {BAND}", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out, stem, formats)


def fig_warmup(results: Results, sweep: str, settings: list[str], out: Path, formats=("png",)) -> list[Path]:
    """Fig. 7: per setting (columns), CPPO's mean effective δ_b per step and the budget-mask share."""
    cells = results.sweep_cells(sweep)
    cells = cells[cells["method"] == "cppo"]
    settings = [s for s in settings if s in set(cells["setting"])]
    if not settings:
        return []
    fig, axes = plt.subplots(2, len(settings), figsize=(4.2 * len(settings), 5.6), squeeze=False, sharex="col")
    colours = report_colours(results)
    for col, setting in enumerate(settings):
        sub = cells[cells["setting"] == setting]
        for row, (key, ylabel) in enumerate([("delta_b_mean", "mean effective δ_b"),
                                             ("budget_mask_share", "budget-mask share")]):
            ax = axes[row][col]
            plot_curves(ax, results, sub, key, colours, smooth=3)
            if len(ax.get_legend_handles_labels()[1]) > 1:
                ax.legend(fontsize=7)
            ax.set_ylabel(ylabel, fontsize=9)
            if row == 0:
                ax.set_title(setting, fontsize=10)
            else:
                ax.set_ylim(-0.02, 1.02)
                ax.set_xlabel("step")
    fig.suptitle(f"CPPO warm-up diagnostics (3-step moving average; {BAND})", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out, "fig7_warmup_diagnostics", formats)


def _validation_splits(cells: pd.DataFrame) -> list[str]:
    """The validation splits the cells' runs recorded, in order (the task named them)."""
    names = cells["validation_splits"].dropna() if "validation_splits" in cells else []
    return list(dict.fromkeys(s for joined in names for s in str(joined).split(",") if s))


GRID_PANELS = [("train_reward", "training reward (5-step avg)", 1, 5),
               ("response_length", "mean response length (tokens)", 1, 1),
               ("mismatch_abs_logp", "drift from μ within an iteration: mean |log π − log μ| over updates", 1, 3)]


def fig_setting_grid(results: Results, sweep: str, setting: str, out: Path, stem: str, formats=("png",)) -> list[Path]:
    """Figs. 8–11: 2×3 per setting — the three validation splits, training reward, response length,
    and the policy's drift from the rollout policy μ within an iteration (plus, dashed, the engine
    mismatch at each step's first update when ``engine.mismatch`` simulates one)."""
    cells = results.sweep_cells(sweep)
    cells = cells[cells["setting"] == setting]
    if cells.empty:
        return []
    colours = report_colours(results)
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.2))
    samples = int(cells["eval_samples"].dropna().iloc[0]) if cells["eval_samples"].notna().any() else "k"
    panels = [(s, f"{s} Avg@{samples}, %", 100, 1) for s in _validation_splits(cells)[:3]] + GRID_PANELS
    for ax, (key, ylabel, scale, smooth) in zip(axes.flat, panels):
        plot_curves(ax, results, cells, key, colours, smooth=smooth, scale=scale)
        ax.set_title(ylabel, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel.split(":")[0].split(" (")[0], fontsize=8)
    if any(_mismatch_on(results, r) for r in cells["run_dir"]):
        drift = axes.flat[5]
        for label, group in cells.groupby("label", sort=False):
            curve = seed_curves(results, group, "engine_mismatch_abs_logp", 3)
            if curve is not None:
                drift.plot(curve[0], curve[1], color=colours.get(label), ls="--", lw=1)
        drift.set_title(drift.get_title() + "\n(dashed: engine mismatch at the first update)", fontsize=9)
    _legend_below(fig, axes[1][0], ncol=7)
    fig.suptitle(f"{setting} ({sweep}); {BAND}", fontsize=11)
    _compared_note(fig, [setting])
    return save_figure(fig, out, stem, formats)


def position_threshold(results: Results, cells) -> tuple[str, float, float]:
    """(run folder, δ, w_min) of Fig. 2's threshold panel: a CPPO cell's own values (a tuned run carries
    them in its method block), else the setting's."""
    cppo = cells[cells["method"] == "cppo"]
    run_dir = (cppo if not cppo.empty else cells)["run_dir"].iloc[0]
    cfg = results.config(run_dir)
    params = cfg["method"] if "delta" in cfg.get("method", {}) else cfg["setting"]
    return run_dir, float(params["delta"]), float(params["w_min"])


def fig_position(results: Results, sweep: str, out: Path, formats=("png",)) -> list[Path]:
    """Fig. 2: |π(y_t) − μ(y_t)| of the sampled token by position bin (mean, top-10% tail), pooled over
    eval steps after step 0, and the position-weighted threshold δ/w_t against position."""

    cells = results.sweep_cells(sweep)
    if cells.empty:
        return []
    colours = report_colours(results)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for label, group in cells.groupby("label", sort=False):
        rows = [r for run_dir in group["run_dir"]
                for r in results.curves(run_dir, diagnostics=True).to_dict("records")]
        if not rows:
            continue
        centres = (np.array(rows[0]["bin_start"]) + np.array(rows[0]["bin_end"])) / 2
        for ax, key in zip(axes[:2], ("mean_dev", "top10_dev")):
            values = np.array([[np.nan if v is None else v for v in r[key]] for r in rows], dtype=float)
            with warnings.catch_warnings():  # a bin no response reached is NaN, drawn as a gap
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, low, high = np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)
            ax.plot(centres, mean, marker="o", color=colours[label], label=_legend_name(label, group["method"].iloc[0]))
            ax.fill_between(centres, low, high, color=colours[label], alpha=0.12)
    axes[0].set_title("mean |π(y_t) − μ(y_t)| per position bin", fontsize=10)
    axes[1].set_title("top-10% |π(y_t) − μ(y_t)| per position bin", fontsize=10)
    for ax in axes[:2]:
        ax.set_xlabel("response position")
        ax.set_ylabel("|π(y_t) − μ(y_t)|", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    run_dir, delta, w_min = position_threshold(results, cells)
    horizon = int(results.curves(run_dir, diagnostics=True)["bin_end"].iloc[0][-1])  # the last bin ends at H
    t = np.arange(1, horizon + 1)
    w = 1 - (1 - w_min) * (t - 1) / max(horizon - 1, 1)
    axes[2].plot(t, delta / w, color=paper()["methods"]["cppo"]["color"])
    axes[2].axhline(delta, color="0.5", ls=":", lw=1)
    axes[2].set_title(f"token threshold δ/w_t (δ = {delta}, w_min = {w_min}, T = {horizon})", fontsize=10)
    axes[2].set_xlabel("response position t")
    axes[2].set_ylabel("δ / w_t", fontsize=9)
    axes[2].grid(alpha=0.3)
    fig.suptitle(f"Position diagnostic ({cells['setting'].iloc[0]}; pooled over eval steps and seeds; band = range "
                 "over eval steps and seeds)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out, "fig2_position_diagnostic", formats)


def _mismatch_on(results: Results, run_dir: str) -> bool:
    mismatch = (results.config(run_dir).get("engine") or {}).get("mismatch") or {}
    return bool(mismatch.get("bf16_rollout") or mismatch.get("logit_noise") or mismatch.get("lag"))


def fig_forest(cmp: pd.DataFrame, names: dict, out: Path, avg_label: str, formats=("png",),
               stem: str = "forest_comparisons") -> list[Path]:
    """The paired differences (reference − other) with their 95 % intervals, one row per comparison,
    one panel per protocol; filled markers where the Holm-corrected test detects a difference."""
    protocols = list(dict.fromkeys(cmp["score"]))
    n = cmp.groupby("score").size().max()
    fig, axes = plt.subplots(1, len(protocols), figsize=(6.4 * len(protocols), 0.32 * n + 1.6), squeeze=False,
                             sharey=True, sharex=True)
    colours = {"better": "#1f77b4", "worse": "#d62728", "no detectable difference": "0.45"}
    for ax, score in zip(axes[0], protocols):
        group = cmp[cmp["score"] == score].reset_index(drop=True)
        y = np.arange(len(group))[::-1]
        for yi, r in zip(y, group.itertuples()):
            colour = colours[r.verdict]
            ax.plot([100 * r.ci_low, 100 * r.ci_high], [yi, yi], color=colour, lw=1.6)
            ax.plot(100 * r.diff, yi, "o", color=colour, mfc=colour if r.verdict != "no detectable difference" else "white")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{r.setting}: vs {names.get(r.other, r.other)}" for r in group.itertuples()], fontsize=8)
        ax.set_xlabel(f"{names.get(group['reference'].iloc[0], group['reference'].iloc[0])} − other ({avg_label}, points)")
        ax.set_title(SCORES.get(score, score), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Paired differences over seeds, 95 % intervals; filled = detected after Holm correction", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, stem, formats)


def _legend_below(fig, ax, ncol: int = 4):
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)), fontsize=8,
                   bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))


def fig_prefix_schematic(record: dict, out: Path, formats=("png",)) -> list[Path]:
    """Fig. 3 from a real batch (scripts/fig3_batch.py): bars w_t·D_t coloured by which constraint
    masked the token, the token threshold δ, the prefix-adjusted threshold δ + δ_b W_{t−1} − S_{t−1},
    and the effective threshold c_t (symmetric-log y axis: the prefix threshold goes far below 0)."""
    z = np.array(record["weighted_divergence"])
    t = np.arange(1, len(z) + 1)
    delta, mask = record["delta"], np.array(record["mask"])
    token_masked = (mask < 1) & (z > delta)
    budget_masked = (mask < 1) & ~token_masked
    colours = np.where(token_masked, "#d62728", np.where(budget_masked, "#ff7f0e", "#1f77b4"))
    fig, ax = plt.subplots(figsize=(max(8, 0.32 * len(z)), 4.4))
    ax.bar(t, z, color=colours, width=0.8)
    ax.axhline(delta, color="k", ls="--", lw=1, label=f"token threshold δ = {delta}")
    ax.plot(t, record["prefix_threshold"], color="#9467bd", lw=1.4, label="prefix-adjusted δ + δ_b·W_{t−1} − S_{t−1}")
    ax.step(t, record["threshold"], where="mid", color="#2ca02c", lw=1.6, label="effective threshold c_t")
    ax.set_yscale("symlog", linthresh=delta / 2)
    ax.axhline(0, color="0.6", lw=0.6)
    if record.get("tokens"):
        labels = list(record["tokens"])[: len(t)]
        labels += ["∎"] * (len(t) - len(labels))  # (the end token decodes to nothing)
        ax.set_xticks(t)
        ax.set_xticklabels(labels, fontsize=8, family="monospace")
    from matplotlib.patches import Patch
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color="#1f77b4", label="w_t·D_t kept"), Patch(color="#d62728", label="masked by the token test"),
                Patch(color="#ff7f0e", label="masked by the prefix budget only")]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xlabel("response token")
    ax.set_ylabel("w_t·D_t and thresholds (symlog)")
    ax.set_title(f"CPPO prefix constraint on one real response ({record['setting']}, step {record['step']}, "
                 f"update {record['update'] + 1}; δ_b = {record['delta_b']:.4f}; toward-μ tokens are never masked)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, "fig3_prefix_constraint", formats)


ARM_NAMES = {"cppo_kl": "CPPO (Top-K KL)"}  # tuning arms that are not registry methods


def fig_tuning(table: pd.DataFrame, out: Path, stem: str, title: str, formats=("png",)) -> list[Path]:
    """One panel per method: each tuning configuration's score (mean over tuning seeds, 95 % t
    interval) against how much its rule bound (tokens masked, or weights capped for CISPO/MinPRO);
    the chosen configuration is starred."""
    if table.empty:
        return []
    methods = list(dict.fromkeys(table["arm"]))
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.7 * rows), squeeze=False, sharey=True)
    for ax, method in zip(axes.ravel(), methods):
        group = table[table["arm"] == method]
        capped = group.get("cap_hit")
        use_cap = capped is not None and pd.to_numeric(capped, errors="coerce").fillna(0).gt(0).any() and \
            pd.to_numeric(group.get("mask_fraction"), errors="coerce").fillna(0).eq(0).all()
        group = group.assign(x=100 * pd.to_numeric(group["cap_hit" if use_cap else "mask_fraction"],
                                                    errors="coerce").fillna(0))
        weight_rule = not group["x"].gt(0).any()  # masks and caps nothing (VESPO, DRPO): the grid's order instead
        group = group.assign(x=np.arange(len(group))) if weight_rule else group.sort_values("x", kind="stable")
        x, y = group["x"].to_numpy(), 100 * group["score"].to_numpy()
        err = np.vstack([y - 100 * group["low"].to_numpy(), 100 * group["high"].to_numpy() - y])
        ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="o-", color="0.3", ms=4, lw=1, capsize=2)
        chosen = group["chosen"].to_numpy(dtype=bool)
        ax.plot(x[chosen], y[chosen], "*", color="#d62728", ms=13, zorder=3)
        ax.set_title(ARM_NAMES.get(method, display_name(method)), fontsize=9)
        if weight_rule:
            ax.set_xticks(x, [str(label).removeprefix(str(method)).strip() for label in group["label"]],
                          rotation=35, ha="right", fontsize=6)
            ax.set_xlabel("configuration (a weight rule: nothing masked)", fontsize=8)
        else:
            ax.set_xscale("symlog", linthresh=0.1)
            ax.set_xlabel(("weights capped" if use_cap else "tokens masked") + " (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(methods):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation headline (%)", fontsize=8)
    fig.suptitle(title + " (★ chosen)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, stem, formats)
