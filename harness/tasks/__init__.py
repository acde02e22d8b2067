"""The task registry: every task the engines can train on, by name (``task=NAME``).

A task is one module holding a ``Task`` subclass decorated with ``@register_task`` (see
``harness.tasks.base`` and docs/tasks.md). Built-in tasks are the modules of this package; a task of
your own is a module anywhere on the Python path named in the environment variable ``TRH_TASKS``
(comma-separated), or one that an installed package names under the entry-point group
``trust_region_harness.tasks``. The engines, the warm-up and the evaluation reach tasks only here.
"""

from __future__ import annotations

from .base import (LocalTask, Problem, Task, TaskConfig, TaskDataError, get_task, load_reward, make_task,
                   register_task, task_classes, task_names)

__all__ = ["LocalTask", "Problem", "Task", "TaskConfig", "TaskDataError", "get_task", "load_reward", "make_task",
           "register_task", "task_classes", "task_names"]
