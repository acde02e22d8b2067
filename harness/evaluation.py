"""Evaluation of the embedded task: Avg@k per validation and held-out test split with common random
numbers (``scripts/eval_noise.py`` measures its noise and cost).

- The best step is chosen on the validation splits' mean (``headline``, the paper's protocol); the
  test splits are scored once, on the weights of that step (kept by the run until its verdict), and
  reported as ``held_out`` in the run's status: the choice never sees them.
- Common random numbers: at a given (seed, step) every method sees the same problems and the same
  Gumbel noise per (problem, sample, position) (``rollout.sample(gumbel=...)``), so where two policies
  nearly agree they sample the same response and their paired difference cancels most of the noise.
"""

from __future__ import annotations

import statistics

import torch

from . import task as tasks
from .rollout import sample
from methods.seeds import derive_seed

from .warmup import encode_problems, rollout_rewards, sampled_accuracy

HELD_OUT = tasks.SPLITS + tasks.TEST_SPLITS


def split_scores(model, tokenizer, digits: int, ev: dict, stream: int, splits=HELD_OUT,
                 problems_per_split: int | None = None) -> dict:
    """Avg@``ev.samples`` at ``ev.temperature``/``ev.top_p`` of each split's first ``problems_per_split``
    fixed problems (default ``ev.problems_per_split``), all splits in one batch; the sampling noise is
    drawn once from ``stream`` (Gumbel-max)."""
    count = problems_per_split or ev["problems_per_split"]
    problems = [p for s in splits for p in tasks.validation_set(s, count, digits)]
    k = ev["samples"]
    prompts = encode_problems(tokenizer, problems).repeat_interleave(k, 0)
    max_new = tasks.response_length(digits)
    gen = torch.Generator().manual_seed(stream)
    gumbel = -torch.empty(len(prompts), max_new, tokenizer.vocab_size).exponential_(generator=gen).log()
    roll = sample(model, prompts, max_new, tokenizer.eos_id, tokenizer.pad_id, gen,
                  temperature=ev["temperature"], top_p=ev["top_p"], gumbel=gumbel, group=k, lean=True)
    rewards = rollout_rewards(tokenizer, [p for p in problems for _ in range(k)], roll)
    per_split = rewards.view(len(splits), -1).mean(1)
    return {s: float(v) for s, v in zip(splits, per_split)}


def greedy_accuracy(model, tokenizer, digits: int, count: int) -> float:
    """Accuracy of greedy decoding on the first ``count`` problems of test_a (no sampling noise)."""
    problems = tasks.validation_set(tasks.TEST_SPLITS[0], count, digits)
    return sampled_accuracy(model, tokenizer, problems, tasks.response_length(digits), seed=0, greedy=True)


def streams(seed: int) -> tuple[int, int]:
    """The evaluation noise of a run: one stream for the validation splits (the same at every step, so
    steps are compared under the same noise) and one for the test splits; both depend on the run's seed
    only, so every method at a seed shares them."""
    return derive_seed("evaluation", seed, 0), derive_seed("evaluation", seed, 1)


def evaluate(model, tokenizer, spec, step: int) -> dict:
    """One eval step's row: Avg@k per validation split and their mean ``headline`` (the best step is
    chosen on it). ``step`` does not change the noise (see ``streams``)."""
    row = split_scores(model, tokenizer, spec.task["digits"], spec.eval, streams(spec.seed)[0], tasks.SPLITS)
    row["headline"] = statistics.fmean(row[s] for s in tasks.SPLITS)
    return row


def held_out(model, tokenizer, spec, step: int) -> dict:
    """The test splits of the model chosen at ``step`` on the validation splits: Avg@k per test split
    (``eval.test_problems_per_split`` problems each: scored once per run, so it can afford more problems
    than each validation pass) and their mean ``test_headline``. Called once per run, after the choice."""
    digits = spec.task["digits"]
    row = split_scores(model, tokenizer, digits, spec.eval, streams(spec.seed)[1], tasks.TEST_SPLITS,
                       spec.eval["test_problems_per_split"])
    return {"step": step, **row, "test_headline": statistics.fmean(row[s] for s in tasks.TEST_SPLITS),
            "greedy_accuracy": greedy_accuracy(model, tokenizer, digits, spec.eval["problems_per_split"])}
