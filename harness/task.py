"""Multi-digit addition with a per-digit scratchpad: a procedural RLVR task with an exact verifier.

Prompt ``0123+0456=``; response, right to left, one ``x+y+c=CS;`` step per digit (C the new carry,
S the digit), then ``>`` and the sum, then the end token::

    3+6+0=09;2+5+0=07;1+4+0=05;0+0+0=00;>579

D digits give a response of 9·D + len(answer) + 2 tokens, so D is the horizon knob. The reward is
1 iff the text after the last ``>`` is exactly ``str(a + b)`` and the response ended with the end
token; the scratchpad is not checked (as with math answers). Train and the three validation splits
are disjoint by a hash of the operand pair.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass

SPLITS = ("val_a", "val_b", "val_c")  # stand-ins for AIME24/25/26: the best step is chosen on these
TEST_SPLITS = ("test_a", "test_b", "test_c")  # held out: scored at the step chosen on SPLITS, never used to choose
_BUCKETS = 20  # pairs hashing to 17, 18, 19 are held out for the a, b, c splits


@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    digits: int

    @property
    def prompt(self) -> str:
        return f"{self.a:0{self.digits}d}+{self.b:0{self.digits}d}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    def solution(self) -> str:
        """The reference response (without the end token)."""
        steps, carry = [], 0
        xs, ys = f"{self.a:0{self.digits}d}"[::-1], f"{self.b:0{self.digits}d}"[::-1]
        for x, y in zip(xs, ys):
            total = int(x) + int(y) + carry
            steps.append(f"{x}+{y}+{carry}={total // 10}{total % 10};")
            carry = total // 10
        return "".join(steps) + ">" + self.answer


def response_length(digits: int) -> int:
    """Upper bound of a correct response's length in tokens, end token included."""
    return 9 * digits + (digits + 1) + 2


def max_positions(digits: int) -> int:
    """Positions the policy must handle: bos + prompt (2·D + 2) + the longest response, with slack."""
    return 4 * digits + response_length(digits) + 8


def _digest(a: int, b: int, digits: int) -> bytes:
    return hashlib.blake2b(f"{digits}:{a}:{b}".encode(), digest_size=8).digest()


def split_of(problem: Problem) -> str:
    digest = _digest(problem.a, problem.b, problem.digits)
    bucket = int.from_bytes(digest, "little") % _BUCKETS
    if bucket < _BUCKETS - 3:
        return "train"
    held_out = TEST_SPLITS if digest[-1] & 1 else SPLITS  # an independent bit of the same hash
    return held_out[bucket - (_BUCKETS - 3)]


def sample_problems(split: str, count: int, digits: int, seed: int) -> list[Problem]:
    """``count`` problems of ``split`` ('train', a validation or a test split), deterministic in ``seed``."""
    if split != "train" and split not in SPLITS + TEST_SPLITS:
        raise ValueError(f"split must be 'train' or one of {SPLITS + TEST_SPLITS}, got {split!r}")
    if digits < 1:
        raise ValueError(f"task.digits must be >= 1, got {digits}")
    if split != "train" and 10 ** (2 * digits) < 40 * count:  # a held-out split holds ≈ 1/40 of all pairs
        raise ValueError(f"task.digits={digits} is too small for {count} held-out problems per split")
    rng = random.Random(f"{split}:{digits}:{seed}")
    limit = 10 ** digits
    out: list[Problem] = []
    while len(out) < count:
        p = Problem(rng.randrange(limit), rng.randrange(limit), digits)
        if split_of(p) == split:
            out.append(p)
    return out


def validation_set(split: str, count: int, digits: int) -> list[Problem]:
    """The fixed held-out problems of a validation or test split (distinct pairs, seed-independent)."""
    return list(_validation_set(split, count, digits))


@functools.lru_cache(maxsize=64)  # drawn by rejection (≈ 40 draws a problem) at every evaluation otherwise
def _validation_set(split: str, count: int, digits: int) -> tuple[Problem, ...]:
    seen, out = set(), []
    for p in sample_problems(split, count * 4, digits, seed=0):
        if (p.a, p.b) not in seen:
            seen.add((p.a, p.b))
            out.append(p)
        if len(out) == count:
            return tuple(out)
    raise ValueError(f"could not draw {count} distinct problems for {split} with {digits} digits")


def reward(problem: Problem, response: str, finished: bool) -> float:
    """1.0 iff the response ended (end token) and its final answer is exactly right."""
    if not finished or ">" not in response:
        return 0.0
    return 1.0 if response.rsplit(">", 1)[1] == problem.answer else 0.0
