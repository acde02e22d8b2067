"""Math word problems for real language models: data, the ``\\boxed{}`` prompt, and a math-verify reward.

Data comes from a local JSONL file or, on machines with network, the hub by name. Both schemas of
the paper's data sets are read: DAPO-Math-17k (``prompt`` as chat messages, answer in
``reward_model.ground_truth``) and the AIME sets (``problem``/``question`` and ``answer``). The
fixtures in ``harness/data/`` are made-up problems in those schemas, so tests never download.

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

DATA_DIR = Path(__file__).parent / "data"
TEMPLATE = ("Solve the following math problem step by step. Put your final answer within \\boxed{{}}.\n\n"
            "{problem}")


class TaskDataError(ValueError):
    """A data set cannot be found or read; the message names the config key and the path."""


@dataclass(frozen=True)
class MathProblem:
    problem: str
    answer: str

    def messages(self, template: str = TEMPLATE) -> list[dict]:
        return [{"role": "user", "content": template.format(problem=self.problem)}]


def resolve_source(source: str) -> str:
    """``fixture:NAME`` → the shipped fixture file; anything else unchanged (a path or a hub name)."""
    if source.startswith("fixture:"):
        return str(DATA_DIR / f"{source.split(':', 1)[1]}.jsonl")
    return source


def load_problems(source: str, key: str = "task.train", limit: int | None = None, split: str = "train"
                  ) -> list[MathProblem]:
    """Problems from a JSONL path (or ``fixture:NAME``), else a hub data set by name (``name@split``
    picks the split; ``split`` otherwise)."""
    path = resolve_source(source)
    if Path(path).is_file():
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    elif path.endswith(".jsonl") or path.startswith((".", "/")):
        raise TaskDataError(f"{key}: no JSONL file at {path!r}")
    else:  # a hub data set, ``name`` or ``name@split``
        name, _, named_split = path.partition("@")
        rows = _hub_rows(name, key, named_split or split)
    problems = [_problem(row, key, i) for i, row in enumerate(rows)]
    if not problems:
        raise TaskDataError(f"{key}: {source!r} holds no problems")
    return problems[:limit] if limit else problems


def _hub_rows(name: str, key: str, split: str):
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise TaskDataError(f"{key}: {name!r} is not a local file and the hub is offline (HF_HUB_OFFLINE=1); "
                            "give a JSONL path or fixture:NAME")
    from datasets import load_dataset
    try:
        return list(load_dataset(name, split=split))
    except Exception as err:  # noqa: BLE001 - the hub raises many types
        raise TaskDataError(f"{key}: cannot load {name!r} (split {split!r}) from the hub: {err}") from None


def _problem(row: dict, key: str, index: int) -> MathProblem:
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
    return MathProblem(problem=str(text), answer=str(answer))


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
