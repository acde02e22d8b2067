"""A newcomer's first run, `trh sweep demo && trh report` from an empty warm-up cache, as it is now
(the embedded default's warm-up shipped, the default workers sharing the last partial round) and as
it was (the warm-up trained here, `--workers 2` rounds), measured in turn on this machine.

    python benchmarks/first_run.py                  # 1 round of each, ≈ 6 min on 2 cores
    python benchmarks/first_run.py --rounds 2

Each measurement starts from an empty cache and an empty results folder (both temporary). The two
arms compute the same cells: their summaries are compared and must be identical. Target: now
≤ 180 s on 2 cores. The host's speed drifts by tens of percent within an
hour here, so the ratio of the two arms, measured in turn, is the number that transfers.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"now": ([], {}), "before": (["--workers", "2"], {"TRH_NO_SHIPPED_WARMUPS": "1"})}


def first_run(arm: str) -> tuple[float, list[dict]]:
    extra, env_extra = ARMS[arm]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TRH_CACHE": str(Path(tmp) / "cache"), **env_extra}
        results = Path(tmp) / "results"
        trh = [sys.executable, "-m", "sweeps.cli"]
        started = time.perf_counter()
        for command in (["sweep", "demo", *extra, "--results", str(results), "--no-progress"], ["report", str(results)]):
            subprocess.run([*trh, *command], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        with open(results / "sweeps" / "demo" / "summary.csv") as f:
            rows = [{k: r[k] for k in ("label", "id", "best_headline", "best_step", "heldout_headline")}
                    for r in csv.DictReader(f)]
    return seconds, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    times, summaries = {arm: [] for arm in ARMS}, {}
    for r in range(args.rounds):
        for arm in (ARMS if r % 2 == 0 else reversed(list(ARMS))):
            seconds, rows = first_run(arm)
            times[arm].append(seconds)
            summaries.setdefault(arm, rows)
            print(f"round {r + 1} {arm:>6}: {seconds:6.1f} s", flush=True)
    same = summaries["now"] == summaries["before"]
    now, before = (statistics.median(times[a]) for a in ("now", "before"))
    print(f"first run, median of {args.rounds}: now {now:.1f} s, before {before:.1f} s, now/before {now / before:.2f}; "
          f"target now ≤ 180 s: {'met' if now <= 180 else 'NOT met'}; same cells and scores: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
