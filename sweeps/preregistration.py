"""Pre-registered sweeps: the spec declares its test before any cell runs, and the code that trains the
cells is committed and unchanged.

A spec with a ``preregistration`` block (docs/sweeps.md, "Pre-registered sweeps")::

    preregistration:
      hypotheses: what is tested and why, in words
      score: heldout            # the primary score: heldout (test splits at the validation choice) or validation
      reference: cppo           # the arm every other arm of the family is compared with
      family: [dppo, grpo]      # the comparisons of the primary test; Holm over exactly these
      stopping: all seeds of every arm; no interim look
      trend:                    # optional; required over several settings: the primary test becomes a trend
        other: dppo             #   the slope of reference − other ...
        horizon: {chain_h14: 14, chain_h27: 27}   # ... over log2 of each setting's horizon (every setting)
        model: seed_slopes      #   analysis.stats.seed_slopes; the family's comparisons become secondary

At launch ``trh sweep`` refuses unless the spec file is committed and unchanged and no tracked file
outside ``results/`` differs from the commit; it records the spec's git blob and the commit in the
manifest, and on a rerun refuses a spec whose blob changed. Every cell refuses to start on a changed
tree. ``trh report`` puts the declared test first and audits the record (``analysis.preregistered``).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

from harness.provenance import REPO, code_state, git

from .errors import SweepError


def check_block(block, labels: list[str], settings: list[str], where: str) -> dict | None:
    """The validated ``preregistration`` block of a spec (None when the spec has none)."""
    from analysis.preregistered import FIELDS, OPTIONAL, PRIMARY_SCORES  # the report's names (pandas: not per cell)

    if block is None:
        return None
    if not isinstance(block, dict):
        raise SweepError(f"{where}: preregistration must be a mapping with {', '.join(FIELDS)}")
    missing = [f for f in FIELDS if f not in block]
    unknown = sorted(set(block) - set(FIELDS) - set(OPTIONAL))
    if missing or unknown:
        raise SweepError(f"{where}: preregistration needs {', '.join(FIELDS)} (optionally {', '.join(OPTIONAL)}); "
                         + (f"missing {missing}" if missing else f"unknown {unknown}"))
    for key in ("hypotheses", "stopping"):
        if not isinstance(block[key], str) or not block[key].strip():
            raise SweepError(f"{where}: preregistration.{key} must be a non-empty text")
    if block["score"] not in PRIMARY_SCORES:
        raise SweepError(f"{where}: preregistration.score must be one of {list(PRIMARY_SCORES)}, got {block['score']!r}")
    family = block["family"]
    if not isinstance(family, list) or not family:
        raise SweepError(f"{where}: preregistration.family must be a non-empty list of the spec's labels")
    for name in [block["reference"], *family]:
        if name not in labels:
            raise SweepError(f"{where}: preregistration names {name!r}, not a label of the spec; labels: {', '.join(labels)}")
    if block["reference"] in family:
        raise SweepError(f"{where}: preregistration.family must not hold the reference {block['reference']!r}")
    if block.get("trend") is not None:
        return {**block, "trend": check_trend(block["trend"], block["reference"], labels, settings, where)}
    if len(settings) != 1:
        raise SweepError(f"{where}: a pre-registered sweep over several settings ({', '.join(settings)}) declares "
                         "one test over all of them: add preregistration.trend (or declare one sweep per setting)")
    return dict(block)


def check_trend(trend, reference: str, labels: list[str], settings: list[str], where: str) -> dict:
    """The validated ``preregistration.trend``: the slope of reference − ``other`` over log2 of each
    setting's ``horizon``, by the named ``model``."""
    from analysis.preregistered import TREND_KEYS, TREND_MODELS

    if not isinstance(trend, dict) or set(trend) != set(TREND_KEYS):
        got = sorted(trend) if isinstance(trend, dict) else repr(trend)
        raise SweepError(f"{where}: preregistration.trend must be a mapping with exactly {', '.join(TREND_KEYS)}; got {got}")
    if trend["other"] not in labels or trend["other"] == reference:
        raise SweepError(f"{where}: preregistration.trend.other must be a label of the spec other than the reference "
                         f"{reference!r}; labels: {', '.join(labels)}; got {trend['other']!r}")
    if not isinstance(trend["model"], str) or trend["model"] not in TREND_MODELS:
        raise SweepError(f"{where}: preregistration.trend.model must be one of {list(TREND_MODELS)}, got {trend['model']!r}")
    horizon = trend["horizon"]
    if not isinstance(horizon, dict) or set(horizon) != set(settings):
        got = sorted(horizon) if isinstance(horizon, dict) else repr(horizon)
        raise SweepError(f"{where}: preregistration.trend.horizon must map exactly the spec's settings "
                         f"({', '.join(settings)}) to their horizons; got {got}")
    bad = {k: v for k, v in horizon.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0}
    if bad:
        raise SweepError(f"{where}: preregistration.trend.horizon values must be finite positive numbers, got {bad}")
    if len(set(horizon.values())) != len(horizon) or len(horizon) < 2:
        raise SweepError(f"{where}: preregistration.trend needs a different horizon for each setting (at least two), "
                         f"got {horizon}")
    return {"other": str(trend["other"]), "horizon": {str(k): float(v) for k, v in horizon.items()},
            "model": str(trend["model"])}


def launch_record(spec_path: Path, previous: dict | None, repo: Path = REPO) -> dict:
    """Check that the spec and the code are committed and unchanged; the record the manifest keeps
    (the first launch's, kept by every rerun). Raises SweepError naming what is not committed."""
    from analysis.preregistered import spec_blob

    path = Path(spec_path).resolve()
    try:
        relative = path.relative_to(repo.resolve())
    except ValueError:
        raise SweepError(f"a pre-registered spec must be a file of this repository ({repo}); {path} is not") from None
    if git("ls-files", "--error-unmatch", str(relative), repo=repo) is None:
        raise SweepError(f"pre-registered sweep: commit the spec first ({relative} is not tracked by git)")
    spec_state = git("status", "--porcelain", "--", str(relative), repo=repo)
    if spec_state is None:
        raise SweepError(f"pre-registered sweep: git cannot tell whether {relative} is committed (git status failed)")
    if spec_state:
        raise SweepError(f"pre-registered sweep: {relative} differs from the last commit; commit it before launching")
    state = code_state(repo)
    if state["dirty"] is None:
        raise SweepError("pre-registered sweep: git cannot tell whether the code is committed (git status failed)")
    if state["dirty"]:
        raise SweepError("pre-registered sweep: tracked files outside results/ differ from the commit "
                         f"{state['commit'][:12]}; commit or stash them (git status) before launching")
    blob = spec_blob(path, repo)
    if previous:
        if previous.get("spec_blob") != blob:
            raise SweepError(f"pre-registered sweep: {relative} changed since its launch at commit "
                             f"{str(previous.get('commit'))[:12]} (blob {str(previous.get('spec_blob'))[:12]} → "
                             f"{str(blob)[:12]}); a registered spec is not edited — declare a new sweep")
        return previous
    return {"spec_path": str(relative), "spec_blob": blob, "commit": state["commit"],
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def cell_refusal(repo: Path = REPO) -> str | None:
    """Why a cell of a pre-registered sweep must not start here (None: the tree is clean)."""
    state = code_state(repo)
    if state["commit"] is None:
        return "pre-registered sweep: the code is not a git checkout, so its commit cannot be recorded"
    if state["dirty"] is not False:
        return (f"pre-registered sweep: tracked files outside results/ differ from commit {state['commit'][:12]} "
                "(or git cannot tell); "
                "the cell did not start (commit or stash the changes, then rerun the sweep)")
    return None


def refused(require_clean: bool) -> dict | None:
    """The status a cell job returns instead of training when it must refuse (see ``cell_refusal``)."""
    refusal = cell_refusal() if require_clean else None
    return {"state": "failed", "reason": refusal} if refusal else None
