"""One study cell's wall time on this code and on an earlier commit, measured in turn, and whether the
two computed the same run.

    python benchmarks/cell_throughput.py --baseline 83317a0            # 3 rounds after a warm one, ≈ 7 min
    python benchmarks/cell_throughput.py --baseline 83317a0 --steps 10 --rounds 5

A cell is what a sweep runs for each (method, setting, seed): one ``python -m harness.train`` process,
imports, warm start, RL steps, validation passes and the held-out test included. Both arms run the same
config (``setting=drift_s method=cppo seed=5 engine.threads=1`` by default, one thread as every sweep
cell runs) from the same warm start, one process at a time, alternating which goes first; the earlier
commit runs from a git worktree made for the purpose and removed afterwards. "Metrics identical" means
every ``metrics.jsonl`` row and the held-out scores are bitwise equal apart from the ``time_*`` fields
(a metric that does not apply is written ``NaN`` by older commits and ``null`` now; both count as
absent). The host's speed drifts by tens of percent within an hour, so the ratio of medians measured
in turn is the number that transfers; run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def overrides(args) -> list[str]:
    out = [f"setting={args.setting}", f"method={args.method}", f"seed={args.seed}", "engine.threads=1",
           "logging.progress=false"]
    if args.steps:
        out += [f"setting.steps={args.steps}", f"setting.t_stop={args.steps}",
                f"eval.every={max(1, args.steps // 4)}"]
    return out


def prepare_cache(cache: Path, args) -> None:
    """Put this code's warm-up for the cell into the shared cache in the cache's format, so that an
    earlier commit that did not ship it loads the same weights instead of training them."""
    sys.path.insert(0, str(ROOT))
    from harness import warmup
    from harness.config import compose, resolve
    from harness.tasks import make_task

    spec = resolve(compose(overrides(args)))
    task = make_task(spec.task)
    key = warmup.warmup_key(spec.model, spec.warmup, task)
    state, info = warmup.warm_start(spec.model, spec.warmup, task)  # shipped, cached, or trained now
    (cache / "warmup").mkdir(parents=True, exist_ok=True)
    torch.save({"state": state, "info": {k: v for k, v in info.items() if k != "source"}},
               cache / "warmup" / f"{key}.pt")


def run_cell(tree: Path, run_dir: Path, cache: Path, args) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "TRH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "harness.train", *overrides(args), f"run_dir={run_dir}",
               f"hydra.run.dir={run_dir.parent / (run_dir.name + '-hydra')}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"the cell failed in {tree}:\n{done.stderr[-3000:]}")
    return seconds


def _plain(value):
    """A row value as both formats mean it: NaN and infinities (written ``null`` now) are absent."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def outcome(run_dir: Path) -> dict:
    """What the run computed: its rows and held-out scores without the ``time_*`` fields."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    status = json.loads((run_dir / "status.json").read_text())
    strip = lambda row: {k: _plain(v) for k, v in row.items()  # noqa: E731
                         if not k.startswith("time_") and _plain(v) is not None}
    return {"rows": [strip(r) for r in rows], "held_out": strip(status.get("held_out") or {}),
            "warmup": (status.get("warmup") or {}).get("key"),
            "phases": {k: sum(r.get(k, 0.0) for r in rows) for k in ("time_rollout", "time_update", "time_eval")}
            | {"time_held_out": (status.get("held_out") or {}).get("time_eval", 0.0)}}


def first_difference(a: dict, b: dict) -> str | None:
    if len(a["rows"]) != len(b["rows"]):
        return f"{len(a['rows'])} rows vs {len(b['rows'])}"
    for x, y in zip(a["rows"], b["rows"]):
        for key in sorted(set(x) | set(y)):
            if x.get(key) != y.get(key):
                return f"step {x.get('step')}: {key} {x.get(key)!r} vs {y.get(key)!r}"
    for key in sorted(set(a["held_out"]) | set(b["held_out"])):
        if a["held_out"].get(key) != b["held_out"].get(key):
            return f"held-out {key}: {a['held_out'].get(key)!r} vs {b['held_out'].get(key)!r}"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each arm (after one untimed each)")
    parser.add_argument("--setting", default="drift_s")
    parser.add_argument("--method", default="cppo")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="shorten the cell to this many RL steps (0: as set)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.baseline}^{{commit}}"], cwd=ROOT,
                           capture_output=True, text=True)
    if found.returncode:
        parser.error(f"--baseline: no commit named {args.baseline!r} in {ROOT}")
    commit = found.stdout.strip()
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    print(f"cell: {' '.join(overrides(args))}")
    print(f"now: {git('rev-parse', '--short', 'HEAD')}{' + uncommitted changes' if dirty else ''}; "
          f"baseline: {commit[:7]}; cpu: {_cpu()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline = tmp / "baseline"
        git("worktree", "add", "--detach", str(baseline), commit)
        try:
            cache = tmp / "cache"
            prepare_cache(cache, args)
            trees = {"now": ROOT, "baseline": baseline}
            times, outcomes = {arm: [] for arm in trees}, {}
            for r in range(args.rounds + 1):  # round 0 warms the file cache and compiles bytecode: untimed
                for arm in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                    run_dir = tmp / f"{arm}-{r}"
                    seconds = run_cell(trees[arm], run_dir, cache, args)
                    outcomes.setdefault(arm, outcome(run_dir))
                    if r:
                        times[arm].append(seconds)
                    print(f"round {r}{' (untimed)' if not r else ''} {arm:>8}: {seconds:6.1f} s  "
                          + "  ".join(f"{k[5:]} {v:5.1f}" for k, v in outcome(run_dir)["phases"].items()),
                          flush=True)
        finally:  # a failed removal must not hide the error that got here; prune forgets the folder
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, capture_output=True)
            subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
    now, before = (statistics.median(times[arm]) for arm in ("now", "baseline"))
    differs = first_difference(outcomes["now"], outcomes["baseline"])
    keys = {arm: outcomes[arm]["warmup"] for arm in outcomes}
    if keys["now"] != keys["baseline"]:  # then a difference says nothing about the code under test
        print(f"note: the arms started from different warm-ups ({keys['now']} now, {keys['baseline']} baseline): "
              "the baseline computes another warm-up key and trained its own")
    print(f"cell wall time, median of {args.rounds}: now {now:.1f} s, baseline {before:.1f} s, "
          f"ratio now/baseline {now / before:.2f}; "
          + ("metrics identical" if differs is None else f"METRICS DIFFER ({differs})"))
    return 0 if differs is None else 1


def _cpu() -> str:
    sys.path.insert(0, str(ROOT))
    from harness.provenance import cpu
    return cpu()


if __name__ == "__main__":
    sys.exit(main())
