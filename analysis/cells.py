"""One cell's score under the paper's matched-window rule, from its status and metrics rows."""

from __future__ import annotations

from harness.store import best_within_window

SPLIT_KEYS = ("val_a", "val_b", "val_c")            # the embedded task (stand-ins for AIME24/25/26)
REAL_SPLIT_KEYS = ("aime24", "aime25", "aime26")    # engine=trl's math task (task.val names)


def verdict(status: dict | None) -> str:
    """'done', 'collapse (step N)', 'failed', 'running' or 'missing' (no status yet)."""
    if not status:
        return "missing"
    state = status.get("state")
    if state == "collapsed":
        return f"collapse (step {status.get('collapse_step')})"
    return state if state in ("done", "failed", "running") else str(state)


def cell_row(status: dict | None, rows: list[dict], t_stop: int) -> dict:
    """The matched-window score: the best headline among eval steps in [0, t_stop] (ties → earlier
    step), the per-split scores at that step, and the cell's verdict. A collapsed run keeps its best
    score before the collapse; tables mark it ``collapse (step N)``."""
    best = best_within_window(rows, t_stop)
    out = {"verdict": verdict(status), "state": (status or {}).get("state", "missing"),
           "collapse_step": (status or {}).get("collapse_step"),
           "steps_run": rows[-1]["step"] if rows else 0, "t_stop": t_stop,
           "best_headline": best["headline"] if best else None, "best_step": best["step"] if best else None}
    for key in SPLIT_KEYS + REAL_SPLIT_KEYS:
        out[f"best_{key}"] = best.get(key) if best else None
    if status and status.get("state") == "failed":
        out["reason"] = status.get("reason")
    return out
