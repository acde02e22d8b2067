"""Stage (git add) the small files of a results root's finished cells and its sweeps' manifests and
summaries, so that a long study is committed in parts as its cells finish; a running, failed or
unstarted cell is never staged, and checkpoints stay out (.gitignore). Prints what it staged.

    python scripts/stage_finished.py results/horizon && git commit -m "horizon_confirm: finished cells"
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.store import FINISHED, RunStore, StoreError, runs_dir  # noqa: E402


def finished_cells(root: Path, log=print) -> list[Path]:
    """The run folders whose cell has finished and that no live process holds; never a folder that a
    repair moved aside (``<cell>.damaged-<time>``) or one whose status cannot be read (named)."""
    folder = runs_dir(root)
    out = []
    for path in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        if ".damaged-" in path.name:
            continue
        store = RunStore(path)
        try:
            state = (store.read_status() or {}).get("state")
        except StoreError as err:
            log(f"skipped {path.name}: {err}")
            continue
        if state in FINISHED and not store.in_use():
            out.append(path)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a results root inside a git checkout, e.g. results/horizon")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"stage_finished: {args.root} is not a folder", file=sys.stderr)
        return 2
    cells = finished_cells(args.root)
    books = [p for pattern in ("sweeps/*/manifest.json", "sweeps/*/summary.csv") for p in args.root.glob(pattern)]
    paths = [str(p.resolve()) for p in cells + books]
    if paths:
        done = subprocess.run(["git", "add", "--", *paths], cwd=args.root, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"stage_finished: git add failed: {done.stderr.strip()}", file=sys.stderr)
            return 1
    print(f"staged {len(cells)} finished cells and {len(books)} sweep manifests/summaries under {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
