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
import random
from dataclasses import dataclass

from ..schema import at_least_one, knob
from . import procedural
from .base import LocalTask, TaskConfig, register_task

SPLITS, TEST_SPLITS = procedural.VALIDATION, procedural.TEST
ALPHABET = "0123456789+=;>"


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


def _key(p: Problem) -> str:
    return f"{p.digits}:{p.a}:{p.b}"


def split_of(problem: Problem) -> str:
    return procedural.split_of(_key(problem))


def sample_problems(split: str, count: int, digits: int, seed: int) -> list[Problem]:
    """``count`` problems of ``split`` ('train', a validation or a test split), deterministic in ``seed``."""
    if digits < 1:
        raise ValueError(f"task.digits must be >= 1, got {digits}")
    if split != "train" and 10 ** (2 * digits) < 40 * count:  # a held-out split holds ≈ 1/40 of all pairs
        raise ValueError(f"task.digits={digits} is too small for {count} held-out problems per split")
    limit = 10 ** digits
    return procedural.draw(split, count, random.Random(f"{split}:{digits}:{seed}"),
                           lambda rng: Problem(rng.randrange(limit), rng.randrange(limit), digits), _key)


def validation_set(split: str, count: int, digits: int) -> list[Problem]:
    """The fixed held-out problems of a validation or test split (distinct pairs, seed-independent)."""
    return list(_validation_set(split, count, digits))


@functools.lru_cache(maxsize=64)  # drawn by rejection (≈ 40 draws a problem) at every evaluation otherwise
def _validation_set(split: str, count: int, digits: int) -> tuple[Problem, ...]:
    return procedural.distinct(sample_problems(split, count * 4, digits, seed=0), count, _key,
                               f"{split} with {digits} digits")


def reward(problem: Problem, response: str, finished: bool) -> float:
    """1.0 iff the response ended (end token) and its final answer is exactly right."""
    return procedural.answer_reward(response, problem.answer) if finished else 0.0


@dataclass(frozen=True)
class AdditionConfig(TaskConfig):
    name: str = knob("addition", "multi-digit addition with a per-digit scratchpad", in_every_id=True)
    digits: int = knob(3, "D: the response is about 10·D + 4 tokens, the horizon knob", at_least_one,
                       in_every_id=True)


@register_task
class Addition(LocalTask):
    """D-digit addition, right to left with a carry per digit (module doc)."""

    name = "addition"
    Config = AdditionConfig
    alphabet = ALPHABET
    validation_splits, test_splits = SPLITS, TEST_SPLITS

    @property
    def max_response_tokens(self) -> int:
        return response_length(self.config.digits)

    @property
    def max_positions(self) -> int:
        return max_positions(self.config.digits)

    def problems(self, split: str, count, seed: int = 0) -> list[Problem]:
        if split == "train":
            return sample_problems("train", count, self.config.digits, seed)
        return validation_set(split, count, self.config.digits)

    def reference(self, problem: Problem) -> str:
        return problem.solution()

    def score(self, problem: Problem, response: str) -> float:
        return reward(problem, response, True)

    def warmup_identity(self) -> dict:
        return {"digits": self.config.digits}  # the key of every warm-up made before tasks were plug-ins
