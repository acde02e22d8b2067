"""One cell's scores from its status and metrics rows: the paper's protocol (the best validation
headline within [0, T_stop]) and the held-out one (the test splits at that step, which the run
scored once after choosing it on the validation splits)."""

from __future__ import annotations

import math

from harness.store import best_within_window, run_splits

# how often a rule limited the update, per training step (NaN where the rule has no such quantity):
# tokens masked (token masks, and TRM's rejected sequences counted by their tokens), responses
# accepted (TRM), tokens whose weight hit the cap (CISPO, MinPRO)
BINDING_KEYS = {"mask_fraction": "mask_fraction", "seq_acceptance": "seq_acceptance_rate",
                "cap_hit": "cap_hit_fraction"}


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
    best = best_within_window(rows, t_stop)  # reads the validation headline only
    held = held_out(status, best)
    out = {"verdict": verdict(status), "state": (status or {}).get("state", "missing"),
           "collapse_step": (status or {}).get("collapse_step"),
           "steps_run": rows[-1]["step"] if rows else 0, "t_stop": t_stop,
           "best_headline": best["headline"] if best else None, "best_step": best["step"] if best else None,
           "heldout_headline": held.get("test_headline"), "step0_headline": _step0(rows),
           **binding_rates(rows, t_stop)}
    splits = run_splits(status)  # the task named them; the run recorded them
    for key in splits["test"]:
        out[f"heldout_{key}"] = held.get(key)
    for key in splits["validation"]:
        out[f"best_{key}"] = best.get(key) if best else None
    out["validation_splits"] = ",".join(splits["validation"])
    if status and status.get("state") == "failed":
        out["reason"] = status.get("reason")
    return out


def binding_rates(rows: list[dict], t_stop: int) -> dict:
    """Mean over the training steps in [1, t_stop] of each ``BINDING_KEYS`` metric (None where the
    run never recorded a finite value): how much the trust region bound, to show beside the score."""
    out = {}
    for name, key in BINDING_KEYS.items():
        values = [r[key] for r in rows if 1 <= r.get("step", 0) <= t_stop and isinstance(r.get(key), (int, float))
                  and not math.isnan(r[key])]
        out[name] = sum(values) / len(values) if values else None
    return out


def held_out(status: dict | None, best: dict | None) -> dict:
    """The run's held-out scores, if it recorded them for the step its validation choice gives
    (runs from before the test splits existed have none)."""
    held = (status or {}).get("held_out") or {}
    if not best or held.get("step") != best["step"]:
        return {}
    return held


def _step0(rows: list[dict]):
    """The headline of the warm start (step 0): every method of a seed evaluates the same model with
    the same noise, so its spread over seeds is pure evaluation noise."""
    first = rows[0] if rows else {}
    return first.get("headline") if first.get("step") == 0 else None
