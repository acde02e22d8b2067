"""What the procedural tasks share: train / validation / test splits cut by a hash of the problem,
drawn by rejection, and the answer check after the last ``>``."""

from __future__ import annotations

import hashlib
import random
from typing import Callable

VALIDATION = ("val_a", "val_b", "val_c")  # stand-ins for AIME24/25/26: the best step is chosen on these
TEST = ("test_a", "test_b", "test_c")     # held out: scored at the step chosen on VALIDATION, never used to choose
_BUCKETS = 20                             # keys hashing to 17, 18, 19 are held out for the a, b, c splits


def split_of(key: str) -> str:
    """The split a problem belongs to, from a hash of its identity ``key``: 17/20 train, the rest the
    three validation or the three test splits (an independent bit of the same hash picks which)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "little") % _BUCKETS
    if bucket < _BUCKETS - 3:
        return "train"
    held_out = TEST if digest[-1] & 1 else VALIDATION
    return held_out[bucket - (_BUCKETS - 3)]


def draw(split: str, count: int, rng: random.Random, make: Callable, key: Callable) -> list:
    """``count`` problems ``make(rng)`` whose ``split_of(key(p))`` is ``split`` (rejection sampling)."""
    if split != "train" and split not in VALIDATION + TEST:
        raise ValueError(f"split must be 'train' or one of {VALIDATION + TEST}, got {split!r}")
    out: list = []
    while len(out) < count:
        p = make(rng)
        if split_of(key(p)) == split:
            out.append(p)
    return out


def distinct(problems, count: int, key: Callable, what: str) -> tuple:
    """The first ``count`` distinct problems (a held-out split's fixed set)."""
    seen, out = set(), []
    for p in problems:
        if key(p) not in seen:
            seen.add(key(p))
            out.append(p)
        if len(out) == count:
            return tuple(out)
    raise ValueError(f"could not draw {count} distinct problems for {what}")


def answer_reward(response: str, answer: str) -> float:
    """1.0 iff the text after the last ``>`` is exactly ``answer`` (the steps before are not checked)."""
    if ">" not in response:
        return 0.0
    return 1.0 if response.rsplit(">", 1)[1] == answer else 0.0
