"""A lagged running sum mod 10: the long-horizon procedural task, where an early mistake reaches the answer.

Prompt: ``k`` seed digits (``task.lag``); response: the next ``L`` digits (``task.length``) of
s_i = (s_{i-1} + s_{i-k}) mod 10, then ``>`` and the last two, then the end token::

    k = 3, L = 7: prompt 407    response 1189087>87    (1 = 7 + 4 mod 10, 1 = 1 + 0, 8 = 1 + 7, ...)

No separator between the seed and the response: with one, the first k digits would read their inputs
at other offsets than every later digit (a warm-up learned the rest and levelled off there, at a loss
of ≈ k · ln 10 / L per token).

The response is L + 4 tokens (end token included), so ``task.length`` is the horizon knob. Every digit
reads the digit before it and the digit k places back, so one wrong digit makes later digits wrong and,
unless its effect cancels, the answer (a guess is right 1 time in 100). Each step needs only tokens at
two fixed, short offsets whatever L is, so a small model learns it quickly at any horizon; a layout
whose step needs a token L positions back (a prompt digit to add) did not warm up at L = 116 within
330 steps. The reward is 1 iff the response ended and the text after its last ``>`` is the right last
two digits; the digits before it are not checked (as with math answers). Splits are cut by a hash of the
seed (10^k seeds).
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
    seed: str

    @property
    def prompt(self) -> str:
        return self.seed

    def digits(self, length: int) -> str:
        """The ``length`` digits after the seed."""
        out = [int(d) for d in self.seed]
        lag = len(self.seed)
        for _ in range(length):
            out.append((out[-1] + out[-lag]) % 10)
        return "".join(map(str, out[lag:]))


@dataclass(frozen=True)
class ChainConfig(TaskConfig):
    name: str = knob("chain", "a lagged running sum mod 10 (long horizon: an early mistake reaches the answer)",
                     in_every_id=True)
    length: int = knob(56, "L digits to generate: the response is L + 4 tokens, the horizon knob",
                       lambda v: None if 4 <= v <= 4096 else "in [4, 4096]")
    lag: int = knob(8, "k: seed digits, and how far back each digit reads", lambda v: None if 2 <= v <= 16 else "in [2, 16]")


def _key(p: ChainProblem) -> str:
    return f"chain:{p.seed}"


@register_task
class Chain(LocalTask):
    """The lagged running sum of ``task.length`` digits from ``task.lag`` seed digits (module doc)."""

    name = "chain"
    Config = ChainConfig
    alphabet = "0123456789>"
    validation_splits, test_splits = procedural.VALIDATION, procedural.TEST

    @property
    def max_response_tokens(self) -> int:
        return self.config.length + 4

    @property
    def max_positions(self) -> int:
        return 1 + self.config.lag + self.max_response_tokens + 8

    def problems(self, split: str, count, seed: int = 0) -> list[ChainProblem]:
        if split == "train":
            return _draw("train", count, self.config.lag, seed)
        return list(_fixed(split, count, self.config.lag))

    def answer(self, problem: ChainProblem) -> str:
        return problem.digits(self.config.length)[-2:]

    def reference(self, problem: ChainProblem) -> str:
        digits = problem.digits(self.config.length)
        return f"{digits}>{digits[-2:]}"

    def score(self, problem: ChainProblem, response: str) -> float:
        return procedural.answer_reward(response, self.answer(problem))


def _draw(split: str, count: int, lag: int, seed: int) -> list[ChainProblem]:
    make = lambda rng: ChainProblem("".join(rng.choice("0123456789") for _ in range(lag)))  # noqa: E731
    return procedural.draw(split, count, random.Random(f"chain:{split}:{lag}:{seed}"), make, _key)


@functools.lru_cache(maxsize=64)  # drawn by rejection (≈ 40 draws a problem) at every evaluation otherwise
def _fixed(split: str, count: int, lag: int) -> tuple:
    return procedural.distinct(_draw(split, count * 4, lag, seed=0), count, _key, f"{split} with lag {lag}")
