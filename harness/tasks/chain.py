"""A running sum mod 10: the long-horizon procedural task, where an early mistake reaches the answer.

Prompt: ``L`` digits and ``=``; response: the running sums s_i = (s_{i-1} + d_i) mod 10 of the
prefixes, one digit each, then ``>`` and the last one, then the end token::

    prompt 4172=    response 4580>0

The response is L + 3 tokens (end token included), so ``task.length`` is the horizon knob; every
step reads the step before it, so one wrong digit makes every later sum wrong and, unless a later
mistake cancels it, the answer (a wrong chain still ends on the right digit 1 time in 10). The
reward is 1 iff the response ended and the text after its last ``>`` is the right final sum; the
chain itself is not checked (as with math answers). Splits are cut by a hash of the digit string.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from ..schema import knob
from . import procedural
from .base import LocalTask, TaskConfig, register_task


@dataclass(frozen=True)
class ChainProblem:
    digits: str

    @property
    def prompt(self) -> str:
        return f"{self.digits}="

    def sums(self) -> str:
        total, out = 0, []
        for d in self.digits:
            total = (total + int(d)) % 10
            out.append(str(total))
        return "".join(out)

    @property
    def answer(self) -> str:
        return self.sums()[-1]


@dataclass(frozen=True)
class ChainConfig(TaskConfig):
    name: str = knob("chain", "running sum mod 10 (long horizon: an early mistake reaches the answer)",
                     in_every_id=True)
    length: int = knob(56, "L digits: the response is L + 3 tokens, the horizon knob",
                       lambda v: None if 8 <= v <= 4096 else "in [8, 4096]")


def _key(p: ChainProblem) -> str:
    return f"chain:{p.digits}"


@register_task
class Chain(LocalTask):
    """The running-sum chain of ``task.length`` digits (module doc)."""

    name = "chain"
    Config = ChainConfig
    alphabet = "0123456789=>"
    validation_splits, test_splits = procedural.VALIDATION, procedural.TEST

    @property
    def max_response_tokens(self) -> int:
        return self.config.length + 3

    @property
    def max_positions(self) -> int:
        return 1 + (self.config.length + 1) + self.max_response_tokens + 8

    def problems(self, split: str, count, seed: int = 0) -> list[ChainProblem]:
        if split == "train":
            return _draw("train", count, self.config.length, seed)
        return list(_fixed(split, count, self.config.length))

    def reference(self, problem: ChainProblem) -> str:
        return f"{problem.sums()}>{problem.answer}"

    def score(self, problem: ChainProblem, response: str) -> float:
        return procedural.answer_reward(response, problem.answer)


def _draw(split: str, count: int, length: int, seed: int) -> list[ChainProblem]:
    make = lambda rng: ChainProblem("".join(rng.choice("0123456789") for _ in range(length)))  # noqa: E731
    return procedural.draw(split, count, random.Random(f"chain:{split}:{length}:{seed}"), make, _key)


@functools.lru_cache(maxsize=64)  # drawn by rejection (≈ 40 draws a problem) at every evaluation otherwise
def _fixed(split: str, count: int, length: int) -> tuple:
    return procedural.distinct(_draw(split, count * 4, length, seed=0), count, _key, f"{split} of length {length}")
