"""Math word problems (or any JSONL data set of yours) for real language models: data, the
``\\boxed{}`` prompt, and a math-verify reward (or yours, ``task.reward=package.module:function``).

Data comes from a local JSONL file or, on machines with network, the hub by name. One JSON object
a line; the problem text is ``problem``, ``question`` or ``prompt`` (a string, or chat messages whose
last user message is the problem: DAPO-Math-17k's schema), the reference answer is ``answer``,
``reward_model.ground_truth`` or ``solution``; every other field rides along in ``Problem.data`` for
a reward of your own. The fixtures in ``harness/data/`` are made-up problems in those schemas, so
tests never download.

math-verify uses ``signal.alarm`` for its timeouts, which only works in a process's main thread;
the reward therefore runs in a pool of worker processes (never in threads).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..schema import ConfigError, at_least_one, knob
from .base import Problem, Task, TaskConfig, TaskDataError, register_task

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
TEMPLATE = ("Solve the following math problem step by step. Put your final answer within \\boxed{{}}.\n\n"
            "{problem}")


def _sources(v):
    ok = isinstance(v, dict) and all(isinstance(s, str) and s for s in v.values())
    return None if ok else "a mapping split name → source (a JSONL path, fixture:NAME or a hub name)"


@dataclass(frozen=True)
class MathConfig(TaskConfig):
    name: str = knob("math", "math word problems, math-verify reward", in_every_id=True)
    train: str = knob("fixture:fixture_dapo_math", "training problems: a JSONL path, fixture:NAME (shipped, "
                      "made-up) or a hub data set (the paper: BytedTsinghua-SIA/DAPO-Math-17k)",
                      lambda v: None if v else "a JSONL path, fixture:NAME or a hub name", in_every_id=True)
    train_limit: Optional[int] = knob(None, "use only the first N training problems", at_least_one,
                                      in_every_id=True)
    val: dict = knob({"aime24": "fixture:fixture_aime24", "aime25": "fixture:fixture_aime25",
                      "aime26": "fixture:fixture_aime26"},
                     "validation splits (name → source) that choose the best step; the paper: AIME24/25/26",
                     lambda v: _sources(v) if v else "at least one split", in_every_id=True)
    test: dict = knob({}, "held-out splits (name → source), scored at the step chosen on val, never used to "
                          "choose it: e.g. task.test.hmmt=/data/hmmt25.jsonl", _sources, in_every_id=True)
    reward_workers: int = knob(2, "math-verify worker processes (it cannot run in threads)", at_least_one,
                               in_every_id=True)
    reward_timeout: int = knob(5, "math-verify seconds per answer", at_least_one, in_every_id=True)


@register_task
class Math(Task):
    """Problems from JSONL (or the hub); the reward is math-verify's (or ``task.reward``)."""

    name = "math"
    Config = MathConfig

    def __init__(self, config):
        super().__init__(config)
        self.validation_splits = tuple(config.val)
        self.test_splits = tuple(f"test_{n}" for n in config.test)
        self._verifier = None

    def problems(self, split: str, count, seed: int = 0) -> list[Problem]:
        """A split's problems in file order (``count`` None: all; train: ``task.train_limit``)."""
        if split == "train":
            limit = self.config.train_limit if count is None else min(count, self.config.train_limit or count)
            return load_problems(self.config.train, "task.train", limit=limit)
        if split in self.config.val:
            return load_problems(self.config.val[split], f"task.val.{split}", limit=count)
        name = split.removeprefix("test_")
        if split.startswith("test_") and name in self.config.test:
            return load_problems(self.config.test[name], f"task.test.{name}", limit=count)
        raise ConfigError(f"split must be 'train' or one of {list(self.validation_splits + self.test_splits)}, "
                          f"got {split!r}")

    def messages(self, problem: Problem) -> list[dict]:
        return [{"role": "user", "content": TEMPLATE.format(problem=problem.prompt)}]

    def score(self, problem: Problem, response: str) -> float:
        return self.rewards([problem], [response])[0]

    def rewards(self, problems, responses, finished=None) -> list[float]:
        if self._user_reward is not None:
            return super().rewards(problems, responses, finished)
        if self._verifier is None:
            self._verifier = MathVerifier(self.config.reward_workers, self.config.reward_timeout)
        return self._verifier(list(responses), [p.answer for p in problems])

    def close(self) -> None:
        if self._verifier is not None:
            self._verifier.close()
            self._verifier = None


def resolve_source(source: str) -> str:
    """``fixture:NAME`` → the shipped fixture file; anything else unchanged (a path or a hub name)."""
    if source.startswith("fixture:"):
        return str(DATA_DIR / f"{source.split(':', 1)[1]}.jsonl")
    return source


def load_problems(source: str, key: str = "task.train", limit: int | None = None, split: str = "train"
                  ) -> list[Problem]:
    """Problems from a JSONL path (or ``fixture:NAME``), else a hub data set by name (``name@split``
    picks the split; ``split`` otherwise)."""
    path = resolve_source(source)
    if Path(path).is_file():
        rows = _jsonl_rows(Path(path), key)
    elif path.endswith(".jsonl") or path.startswith((".", "/")):
        raise TaskDataError(f"{key}: no JSONL file at {path!r}")
    else:  # a hub data set, ``name`` or ``name@split``
        name, _, named_split = path.partition("@")
        rows = _hub_rows(name, key, named_split or split)
    problems = [_problem(row, key, i) for i, row in enumerate(rows)]
    if not problems:
        raise TaskDataError(f"{key}: {source!r} holds no problems")
    return problems[:limit] if limit else problems


def _jsonl_rows(path: Path, key: str) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise TaskDataError(f"{key}: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise TaskDataError(f"{key}: {path}:{number} is not a JSON object ({err.msg})") from None
            if not isinstance(rows[-1], dict):
                raise TaskDataError(f"{key}: {path}:{number} is not a JSON object")
    return rows


def _hub_rows(name: str, key: str, split: str):
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise TaskDataError(f"{key}: {name!r} is not a local file and the hub is offline (HF_HUB_OFFLINE=1); "
                            "give a JSONL path or fixture:NAME")
    from datasets import load_dataset
    try:
        return list(load_dataset(name, split=split))
    except Exception as err:  # noqa: BLE001 - the hub raises many types
        raise TaskDataError(f"{key}: cannot load {name!r} (split {split!r}) from the hub: {err}") from None


def _problem(row: dict, key: str, index: int) -> Problem:
    text = row.get("problem") or row.get("question")
    if text is None and isinstance(row.get("prompt"), list):  # DAPO-Math-17k: chat messages
        text = next((m["content"] for m in reversed(row["prompt"]) if m.get("role") == "user"), None)
    elif text is None and isinstance(row.get("prompt"), str):
        text = row["prompt"]
    answer = row.get("answer")
    if answer is None and isinstance(row.get("reward_model"), dict):
        answer = row["reward_model"].get("ground_truth")
    if answer is None:
        answer = row.get("solution")
    if text is None or answer is None:
        raise TaskDataError(f"{key}: row {index} has no problem text (problem/question/prompt) or no answer "
                            f"(answer/reward_model.ground_truth/solution); keys: {sorted(row)}")
    return Problem(prompt=str(text), answer=str(answer), data=row)


# --- reward ---------------------------------------------------------------------------------------

def _verify_one(args) -> float:
    completion, answer, timeout = args
    from math_verify import parse, verify
    try:
        gold = parse(answer if "$" in answer or "\\boxed" in answer else f"${answer}$",
                     parsing_timeout=timeout)
        guess = parse(completion, parsing_timeout=timeout)
        return 1.0 if gold and guess and verify(gold, guess, timeout_seconds=timeout) else 0.0
    except Exception:  # noqa: BLE001 - an unparsable answer earns 0, never a crash
        return 0.0


class MathVerifier:
    """1.0 when math-verify finds the completion's final answer equal to the reference, else 0.0.

    Runs in ``workers`` spawned processes (math-verify's timeouts need a main thread). Call
    ``close()`` (or use it as a context manager) to stop them.
    """

    def __init__(self, workers: int = 2, timeout: int = 5):
        self.workers, self.timeout = max(1, workers), timeout
        self._pool = None

    def _executor(self):
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def __call__(self, completions: list[str], answers: list[str]) -> list[float]:
        if len(completions) != len(answers):
            raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
        jobs = [(c, a, self.timeout) for c, a in zip(completions, answers)]
        try:
            return list(self._executor().map(_verify_one, jobs, chunksize=max(1, len(jobs) // (4 * self.workers))))
        except cf.process.BrokenProcessPool:  # a worker died (e.g. a pathological expression): retry once
            self._pool = None
            return list(self._executor().map(_verify_one, jobs))

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):  # picklable into submitit jobs: the pool is rebuilt where it is used
        return {"workers": self.workers, "timeout": self.timeout, "_pool": None}
