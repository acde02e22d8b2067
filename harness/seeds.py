"""Seeds of the training loop's random streams, derived from (run seed, step, stream)."""

from __future__ import annotations

EVAL_STREAM = 100  # evaluation sampling; method-independent, so every method at (seed, step) shares it


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """Every random draw of a step comes from (seed, step, salt): a resumed run replays it exactly."""
    return (seed * 1_000_003 + step * 7_919 + salt * 104_729) % (2**62)
