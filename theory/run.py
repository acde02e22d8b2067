"""``trh theory``: every check on random instances, the adversarial search, their tables and a figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .adversarial import GRID, run_search
from .checks import POINTS, run_checks

TOLERANCE = 1e-10  # a statement holds when its violation is within rounding


def run(instances: int = 1000, seed: int = 0, out: Path | None = None, progress: bool = True) -> dict:
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=instances + len(GRID), desc="theory", dynamic_ncols=True)
    checks = pd.DataFrame(run_checks(instances, seed, bar))
    adversarial = pd.DataFrame(run_search(seed=seed, progress=bar))
    if bar is not None:
        bar.close()
    files = []
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        checks.to_csv(out / "checks.csv", index=False)
        adversarial.to_csv(out / "adversarial.csv", index=False)
        (out / "checks.md").write_text(checks_table(checks) + "\n\n" + adversarial_table(adversarial) + "\n")
        files = [out / "checks.csv", out / "adversarial.csv", out / "checks.md", figure(out / "theory_bounds.png")]
    return {"checks": checks, "adversarial": adversarial, "files": files,
            "ok": bool((checks["violation"] <= TOLERANCE).all())}


def checks_table(checks: pd.DataFrame) -> str:
    lines = ["| statement | instances | max violation | max tightness (lhs / bound) |", "| --- | --- | --- | --- |"]
    for r in checks.itertuples():
        tight = "—" if pd.isna(r.tightness) else f"{r.tightness:.3f}"
        lines.append(f"| {r.statement} | {r.instances} | {r.violation:.1e} | {tight} |")
    return "\n".join(lines)


def adversarial_table(rows: pd.DataFrame) -> str:
    lines = ["| V | T | δ | δ_b | max \\|Δ\\| uniform | C_uniform | max \\|Δ\\| CPPO | C_CPPO | C_CPPO + slack "
             "| uniform > C_CPPO | CPPO test fails (share of tokens) | L′ | J(π) − J(μ) |",
             "| " + " | ".join(["---"] * 13) + " |"]
    for r in rows.itertuples():
        lines.append(f"| {r.V} | {r.T} | {r.delta:g} | {r.delta_b:g} | {r.uniform_max_abs_delta:.4f} | "
                     f"{r.C_uniform:.4f} | {r.cppo_max_abs_delta:.4f} | {r.C_cppo:.4f} | {r.C_cppo_with_slack:.4f} | "
                     f"{'yes' if r.uniform_exceeds_C_cppo else 'no'} | {r.cppo_rejects_share:.2f} | "
                     f"{r.uniform_surrogate:.4f} | {r.uniform_true_gain:.4f} |")
    return "\n".join(lines)


def figure(path: Path) -> Path:
    """Exact |Δ| against its bound over the random instances: uniform region (Corollary 6, and
    Proposition 4 for arbitrary π) and CPPO (Theorem 1); every point must lie below the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    styles = {"corollary6": ("uniform TR: 2ξT(T−1)δ²", "tab:red"), "proposition4": ("any π: Σ λ_t u_t", "tab:gray"),
              "theorem1": ("CPPO: 2ξT(T−1)ℓ̄δ_b", "tab:blue")}
    low = 1.0
    for name, (label, colour) in styles.items():
        pairs = [(b, v) for b, v in POINTS.get(name, []) if b > 0 and v > 0]
        if pairs:
            bounds, values = zip(*pairs)
            ax.scatter(bounds, values, s=6, alpha=0.4, color=colour, label=label)
            low = min(low, min(bounds), min(values))
    ax.plot([low, 10], [low, 10], color="black", lw=1, ls="--", label="|Δ| = bound")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bound")
    ax.set_ylabel("exact |Δ| (worst-case reward)")
    ax.set_title("the surrogate's error against its bound, exactly", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
