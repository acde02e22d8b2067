"""Ship a setting's warm-up with the package (``harness/data/warmups/<key>.pt``), or check the shipped
one: the warm-up is trained afresh (one thread per shard, as every run trains it) and, with ``--check``,
compared with the shipped weights instead of replacing them.

    python scripts/ship_warmup.py                      # the embedded default: setting=base_s
    python scripts/ship_warmup.py setting=base_s --check

A shipped warm-up is found by its key (model, warm-up and task config, vocabulary, procedure version),
so a changed config or procedure stops using it; `tests/harness/test_warmup.py` fails when the
embedded default's warm-up is no longer shipped under its current key.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from harness import warmup
from harness.config import compose, resolve
from harness.tasks import make_task


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", default=["setting=base_s"], help="Hydra overrides (a setting)")
    parser.add_argument("--check", action="store_true", help="compare a fresh training with the shipped file")
    args = parser.parse_args(argv)
    spec = resolve(compose(args.overrides))
    task = make_task(spec.task)
    key = warmup.warmup_key(spec.model, spec.warmup, task)
    with tempfile.TemporaryDirectory() as tmp:
        state, info = warmup.train(spec.model, spec.warmup, task, Path(tmp) / f"{key}.pt", progress=True)
    print(f"warm-up {key}: {info['steps']} steps, sampled accuracy {info['sampled_accuracy']:.3f}, {info['seconds']} s")
    if not args.check:
        print(f"shipped: {warmup.write_shipped(key, state, info)}")
        return 0
    found = warmup.shipped(key)
    if found is None:
        print(f"no shipped warm-up named {key} in {warmup.SHIPPED_DIR}")
        return 1
    shipped_state, shipped_info = found
    same = all(torch.equal(state[k], shipped_state[k]) for k in state)
    worst = max(float((state[k] - shipped_state[k]).abs().max()) for k in state)
    print(f"shipped: {shipped_info['steps']} steps, sampled accuracy {shipped_info['sampled_accuracy']:.3f}; "
          f"weights {'bitwise equal' if same else f'differ (largest |difference| {worst:.2e})'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
