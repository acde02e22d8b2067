"""What a task is, and the registry that names tasks.

A task supplies the problems of each split (``train``, the validation splits that choose the best
step, the held-out test splits scored once at it), the prompt text, and the reward of a response.
A task for the local engine (``LocalTask``) also supplies its character vocabulary, the longest
response, and a reference solution per problem (the supervised warm-up's target). Its config group
is a dataclass of typed knobs (``harness.schema.knob``), registered as ``task=NAME``.
"""

from __future__ import annotations

import importlib
import math
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional

from ..schema import ConfigError, id_view, knob


class TaskDataError(ValueError):
    """A data set cannot be found or read; the message names the config key and the path."""


@dataclass(frozen=True)
class TaskConfig:
    """The knobs every task has; a task's own config subclasses this and sets ``name``'s default."""
    name: str = knob("", "the task's registered name (trh tasks lists them)", in_every_id=True)
    reward: Optional[str] = knob(None, "your reward instead of the task's: 'package.module:function', called as "
                                       "function(problem, response) -> float")


@dataclass(frozen=True)
class Problem:
    """A problem of a text task: its prompt, its reference answer, and the rest of its data row."""
    prompt: str
    answer: str
    data: dict = field(default_factory=dict, compare=False, hash=False)  # the whole data row


class Task:
    """A task built from its config (``make_task``). Subclasses set ``name`` and ``Config`` and
    implement ``problems`` and ``score``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = TaskConfig
    engines: ClassVar[tuple] = ("trl",)
    validation_splits: tuple = ("val_a", "val_b", "val_c")
    test_splits: tuple = ("test_a", "test_b", "test_c")

    def __init__(self, config):
        self.config = config
        self._user_reward = load_reward(config.reward) if config.reward else None

    def problems(self, split: str, count: Optional[int], seed: int = 0) -> list:
        """``count`` problems of ``split`` (None: all a data set holds). Train problems depend on
        ``seed``; a validation or test split's are fixed (its first ``count``)."""
        raise NotImplementedError

    def train_set(self, count: int, seed: int) -> list:
        """engine=trl's training data set: a data set's every problem (``count`` is what a run's
        rollout batches draw; a procedural task draws that many)."""
        return self.problems("train", None, seed)

    def prompt(self, problem) -> str:
        return problem.prompt

    def messages(self, problem) -> list[dict]:
        """The prompt as chat messages (engine=trl applies the tokenizer's chat template)."""
        return [{"role": "user", "content": self.prompt(problem)}]

    def score(self, problem, response: str) -> float:
        """The task's own reward of a finished response."""
        raise NotImplementedError

    def reward(self, problem, response: str, finished: bool = True) -> float:
        """The reward of one response: 0 for a response cut at the length limit, else the task's
        ``score`` or the user's ``task.reward`` (engine=trl passes every completion as finished)."""
        if not finished:
            return 0.0
        if self._user_reward is None:
            return float(self.score(problem, response))
        value = self._user_reward(problem, response)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"task.reward {self.config.reward} returned {value!r}; it must return a finite number")
        return float(value)

    def rewards(self, problems: list, responses: list[str], finished: Optional[list] = None) -> list[float]:
        finished = finished if finished is not None else [True] * len(responses)
        return [self.reward(p, r, f) for p, r, f in zip(problems, responses, finished)]

    def close(self) -> None:
        """Release what scoring holds (worker processes)."""

    @property
    def splits(self) -> dict:
        """The split names a run records (analysis reads them from the run, never from a task)."""
        return {"validation": list(self.validation_splits), "test": list(self.test_splits)}


class LocalTask(Task):
    """A procedural task with an exact verifier on a character vocabulary (both engines)."""

    engines: ClassVar[tuple] = ("local", "trl")
    alphabet: ClassVar[str] = ""  # every character of prompts and responses

    @property
    def max_response_tokens(self) -> int:
        """The longest correct response in tokens, end token included."""
        raise NotImplementedError

    @property
    def max_positions(self) -> int:
        """Positions the policy must hold: beginning token, prompt, the longest response, with slack."""
        raise NotImplementedError

    def reference(self, problem) -> str:
        """The reference response (without the end token): the warm-up's target."""
        raise NotImplementedError

    def train_set(self, count: int, seed: int) -> list:
        return self.problems("train", count, seed)

    def warmup_identity(self) -> dict:
        """What of the task names its warm-up (with the model, the warm-up config and the vocabulary)."""
        return {"task": id_view(self.config)}


# --- the registry --------------------------------------------------------------------------------
_TASKS: dict[str, type] = {}
_LOADED: set = set()
ENTRY_POINTS = "trust_region_harness.tasks"


def register_task(cls):
    """Class decorator: make ``cls`` the task ``cls.name`` (``task=NAME``)."""
    if not cls.name or not cls.name.replace("_", "").isalnum():
        raise ValueError(f"a task's name must be letters, digits and '_', got {cls.name!r}")
    if getattr(cls.Config(), "name", None) != cls.name:
        raise ValueError(f"task {cls.name}: its Config's name must default to {cls.name!r}")
    known = _TASKS.get(cls.name)
    if known is not None and f"{known.__module__}.{known.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
        raise ValueError(f"task {cls.name!r} is registered twice ({known.__module__} and {cls.__module__})")
    _TASKS[cls.name] = cls
    return cls


def _discover() -> None:
    """Import the built-in task modules, those named in ``TRH_TASKS``, and entry points (once each)."""
    names = [f"{__package__}.{m.name}" for m in pkgutil.iter_modules(importlib.import_module(__package__).__path__)
             if m.name != "base"]
    names += [n.strip() for n in os.environ.get("TRH_TASKS", "").split(",") if n.strip()]
    for name in names:
        if name not in _LOADED:
            try:
                importlib.import_module(name)
            except ImportError as err:
                raise ConfigError(f"TRH_TASKS names {name!r}, which cannot be imported: {err}") from None
            _LOADED.add(name)
    if ENTRY_POINTS not in _LOADED:
        from importlib.metadata import entry_points
        for point in entry_points(group=ENTRY_POINTS):
            point.load()
        _LOADED.add(ENTRY_POINTS)


def task_classes() -> dict:
    _discover()
    return dict(sorted(_TASKS.items()))


def task_names() -> list[str]:
    return list(task_classes())


def get_task(name) -> type:
    classes = task_classes()
    if name not in classes:
        raise ConfigError(f"task.name must be one of {list(classes)} (trh tasks; your own: docs/tasks.md), got {name!r}")
    return classes[name]


def make_task(config) -> Task:
    return get_task(config.name)(config)


def load_reward(path: str) -> Callable:
    """``package.module:function`` → the function (checked before any work starts)."""
    module_name, _, attr = str(path).partition(":")
    if not module_name or not attr:
        raise ConfigError(f"task.reward must be 'package.module:function', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"task.reward: cannot import {module_name!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"task.reward: {module_name!r} has no function {attr!r}")
    return fn
