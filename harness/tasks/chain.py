"""A running sum mod 10: the long-horizon procedural task, where an early mistake reaches the answer.

Prompt: ``L`` digits, comma-separated, and ``=``; response, one two-token step per digit: the digit
d_i copied, then the running sum s_i = (s_{i-1} + d_i) mod 10; then ``>``, the last sum, the end
token::

    prompt 4,1,7,2=    response 44157224>4

The response is 2·L + 3 tokens (end token included), so ``task.length`` is the horizon knob. Every
sum reads the sum before it, so one wrong sum makes every later sum wrong and, unless a later
mistake cancels it, the answer (a wrong chain still ends on the right digit 1 time in 10). Why this
layout: a prompt digit and its copy are always 2·L positions apart, and each sum needs only the two
tokens before it — a small model learns the step from local, constant-offset lookups (like the
addition scratchpad's), where a bare chain of sums gives it no signal from either input alone. The
reward is 1 iff the response ended and the text after its last ``>`` is the right final sum; the
steps are not checked (as with math answers). Splits are cut by a hash of the digit string.
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
        return ",".join(self.digits) + "="

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
    length: int = knob(28, "L digits: the response is 2·L + 3 tokens, the horizon knob",
                       lambda v: None if 4 <= v <= 2048 else "in [4, 2048]")


def _key(p: ChainProblem) -> str:
    return f"chain:{p.digits}"


@register_task
class Chain(LocalTask):
    """The running-sum chain of ``task.length`` digits (module doc)."""

    name = "chain"
    Config = ChainConfig
    alphabet = "0123456789,=>"
    validation_splits, test_splits = procedural.VALIDATION, procedural.TEST

    @property
    def max_response_tokens(self) -> int:
        return 2 * self.config.length + 3

    @property
    def max_positions(self) -> int:
        return 1 + 2 * self.config.length + self.max_response_tokens + 8

    def problems(self, split: str, count, seed: int = 0) -> list[ChainProblem]:
        if split == "train":
            return _draw("train", count, self.config.length, seed)
        return list(_fixed(split, count, self.config.length))

    def reference(self, problem: ChainProblem) -> str:
        steps = "".join(d + s for d, s in zip(problem.digits, problem.sums()))
        return f"{steps}>{problem.answer}"

    def score(self, problem: ChainProblem, response: str) -> float:
        return procedural.answer_reward(response, problem.answer)


def _draw(split: str, count: int, length: int, seed: int) -> list[ChainProblem]:
    make = lambda rng: ChainProblem("".join(rng.choice("0123456789") for _ in range(length)))  # noqa: E731
    return procedural.draw(split, count, random.Random(f"chain:{split}:{length}:{seed}"), make, _key)


@functools.lru_cache(maxsize=64)  # drawn by rejection (≈ 40 draws a problem) at every evaluation otherwise
def _fixed(split: str, count: int, length: int) -> tuple:
    return procedural.distinct(_draw(split, count * 4, length, seed=0), count, _key, f"{split} of length {length}")
