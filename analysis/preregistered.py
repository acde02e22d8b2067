"""The declared test of each pre-registered sweep, first in the report, with an audit of its record.

A sweep launched with a ``preregistration`` block (``sweeps.preregistration``) keeps in its manifest the
spec's git blob, the commit and the time of its launch. Here that record is checked against what is on
disk now — the spec unchanged, every finished cell trained from a clean tree at the registered commit or
a later one, none started before the registration — and the declared comparisons are computed exactly
as declared: reference − each family member on the declared score, paired by seed, Holm over the family.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.provenance import REPO, git
from harness.store import FINISHED, RunStore

from . import compare as C
from . import markdown as M
from . import stats as S

FIELDS = ("hypotheses", "score", "reference", "family", "stopping")
PRIMARY_SCORES = {"heldout": "heldout_headline", "validation": "best_headline"}


def spec_blob(path: Path, repo: Path = REPO) -> str | None:
    """The git blob id of the file's current content (what ``git hash-object`` prints)."""
    return git("hash-object", str(path), repo=repo)


def audit(record: dict, statuses: list[dict], repo: Path = REPO) -> list[str]:
    """What weakens a pre-registration: the spec edited since launch, cells trained from a changed tree,
    from a commit that does not descend from the registered one, or started before the registration."""
    problems = []
    path = Path(repo) / record["spec_path"]
    now = spec_blob(path, repo) if path.exists() else None
    if now is None:
        problems.append(f"the registered spec {record['spec_path']} is gone (or git cannot read it)")
    elif now != record["spec_blob"]:
        problems.append(f"the spec {record['spec_path']} was edited after the launch (blob "
                        f"{record['spec_blob'][:12]} at launch, {str(now)[:12]} now)")
    # per cell, the code at every start and resume, and at the finish
    code = [[*s.get("code_log", []), s.get("provenance") or {}] for s in statuses]
    dirty = sum(any(c.get("dirty") is not False for c in states) for states in code)
    if dirty:
        problems.append(f"{dirty} of {len(statuses)} finished cells ran with uncommitted changes at a start, "
                        "a resume or the finish (or do not say)")

    def trained_at(commit):  # the registered commit or later, earlier (a reused cell), or unrelated
        if git("merge-base", "--is-ancestor", record["commit"], commit, repo=repo) is not None:
            return "after"
        return "before" if git("merge-base", "--is-ancestor", commit, record["commit"], repo=repo) is not None else "stray"

    when = {c: trained_at(c) for c in {c.get("commit") for states in code for c in states} - {None}}
    reused = sum(any(when.get(c.get("commit")) == "before" for c in states) for states in code)
    if reused:
        problems.append(f"{reused} cells were trained before the registration, by an earlier commit (cells reused "
                        "from earlier sweeps: their scores could be known when the test was declared)")
    strays = sorted(c for c, w in when.items() if w == "stray")
    if strays:
        problems.append(f"cells trained from {len(strays)} commit(s) unrelated to the registered "
                        f"{record['commit'][:12]} (or that this clone does not hold): {', '.join(c[:12] for c in strays)}")
    unknown = [s for s in statuses if s.get("started_at") in (None, "unknown")]
    if unknown:
        problems.append(f"{len(unknown)} cells do not record when they started")
    early = [s for s in statuses if s.get("started_at") not in (None, "unknown") and s["started_at"] < record["at"]]
    if early:
        problems.append(f"{len(early)} cells started before the registration at {record['at']}")
    return problems


def declared_test(cells: pd.DataFrame, block: dict) -> pd.DataFrame:
    """The declared comparisons: reference − each family member, paired by seed, Holm over the whole
    family — a member without scores (yet) counts at p = 1, so the correction never shrinks."""
    settings = list(dict.fromkeys(cells["setting"]))
    frame = C.comparisons(cells, settings, [block["reference"], *block["family"]], block["reference"],
                          score=PRIMARY_SCORES[block["score"]])
    done = set(frame["other"]) if not frame.empty else set()
    missing = [m for m in block["family"] if m not in done]
    if not missing:
        return frame
    nan = float("nan")
    rows = pd.DataFrame([{"score": PRIMARY_SCORES[block["score"]], "setting": settings[0], "reference": block["reference"],
                          "other": m, "seeds": 0, "diff": nan, "ci_low": nan, "ci_high": nan, "interval": "none",
                          "p": 1.0, "sd_diff": nan, "note": "no scores yet: counted at p = 1", "seeds_needed": nan,
                          "detectable": nan} for m in missing])
    frame = pd.concat([frame, rows], ignore_index=True) if not frame.empty else rows
    frame["p_holm"] = S.holm(frame["p"])
    frame["verdict"] = [v if isinstance(v, str) and n else "not computed" for v, n in
                        zip(frame.get("verdict", pd.Series([None] * len(frame))), frame["seeds"])]
    return frame


def preregistered_section(results, out: Path) -> str:
    """The report's first section: each pre-registered sweep's declared test and its audit
    (``preregistered_<sweep>.md``/``.csv``); empty when no sweep of this root is pre-registered."""
    parts = []
    for sweep, manifest in results.sweeps.items():
        record, block = manifest.get("preregistration"), (manifest.get("spec") or {}).get("preregistration")
        if not record or not block or not results.has(sweep):
            continue
        cells = results.sweep_cells(sweep)
        finished = cells[cells["state"].isin(FINISHED)]
        statuses = [RunStore(d).read_status() or {} for d in finished["run_dir"]]
        problems = audit(record, statuses)
        cmp = declared_test(cells, block)
        text = [f"### {sweep}: the declared test\n",
                f"Registered at commit {record['commit'][:12]} on {record['at']} (spec {record['spec_path']}, blob "
                f"{record['spec_blob'][:12]}). Audit: " + ("no problem found." if not problems else
                                                           "**" + "; ".join(problems) + "**."),
                f"\n\nHypotheses: {block['hypotheses'].strip()}\n",
                f"Primary test: {block['reference']} − each of {', '.join(block['family'])} on the "
                f"{C.SCORES[PRIMARY_SCORES[block['score']]]}, paired by seed, two-sided permutation p (exact over "
                f"all sign flips up to {S.EXACT_MAX_SEEDS} seeds, Monte Carlo beyond), Holm over these "
                f"{len(block['family'])} comparisons. Stopping rule: {block['stopping'].strip()}\n",
                f"Cells: {len(finished)} finished of {len(cells)}"
                + ("" if len(finished) == len(cells) else " — **the declared test is not complete**") + ".\n"]
        if not cmp.empty:
            table = M.comparisons_markdown(cmp, {}, block["reference"]).split("\n## ", 1)[1]
            text.append("\n#### " + table)
            cmp.to_csv(out / f"preregistered_{sweep}.csv", index=False)
        section = "\n".join(text)
        (out / f"preregistered_{sweep}.md").write_text(f"# Pre-registered: {sweep}\n\n" + section.split("\n", 1)[1])
        parts.append(section)
    if not parts:
        return ""
    return ("## Pre-registered tests (declared in a committed spec before their cells ran)\n\n"
            + "\n\n".join(parts)
            + "\n\n**Everything below this section is exploratory**: other sweeps, other scores and other "
              "groupings of these runs were not declared in advance.\n\n")
