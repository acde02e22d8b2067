"""Evaluation of a local-engine task: Avg@k per validation and held-out test split with common random
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

from methods.seeds import derive_seed

from .rollout import sample
from .warmup import encode_problems, rollout_rewards, sampled_accuracy


def split_scores(model, tokenizer, task, ev, stream: int, splits, problems_per_split: int | None = None) -> dict:
    """Avg@``ev.samples`` at ``ev.temperature``/``ev.top_p`` of each split's first ``problems_per_split``
    fixed problems (default ``ev.problems_per_split``), all splits in one batch; the sampling noise is
    drawn once from ``stream`` (Gumbel-max)."""
    count = problems_per_split or ev.problems_per_split
    problems = [p for s in splits for p in task.problems(s, count)]
    k = ev.samples
    prompts = encode_problems(tokenizer, task, problems).repeat_interleave(k, 0)
    max_new = task.max_response_tokens
    gen = torch.Generator().manual_seed(stream)
    gumbel = -torch.empty(len(prompts), max_new, tokenizer.vocab_size).exponential_(generator=gen).log()
    roll = sample(model, prompts, max_new, tokenizer.eos_id, tokenizer.pad_id, gen,
                  temperature=ev.temperature, top_p=ev.top_p, gumbel=gumbel, group=k, lean=True)
    rewards = rollout_rewards(tokenizer, task, [p for p in problems for _ in range(k)], roll)
    per_split = rewards.view(len(splits), -1).mean(1)
    return {s: float(v) for s, v in zip(splits, per_split)}


def greedy_accuracy(model, tokenizer, task, count: int) -> float:
    """Accuracy of greedy decoding on the first ``count`` problems of the first test split (no sampling noise)."""
    problems = task.problems(task.test_splits[0], count)
    return sampled_accuracy(model, tokenizer, task, problems, seed=0, greedy=True)


def streams(seed: int) -> tuple[int, int]:
    """The evaluation noise of a run: one stream for the validation splits (the same at every step, so
    steps are compared under the same noise) and one for the test splits; both depend on the run's seed
    only, so every method at a seed shares them."""
    return derive_seed("evaluation", seed, 0), derive_seed("evaluation", seed, 1)


def evaluate(model, tokenizer, task, spec, step: int) -> dict:
    """One eval step's row: Avg@k per validation split and their mean ``headline`` (the best step is
    chosen on it). ``step`` does not change the noise (see ``streams``)."""
    row = split_scores(model, tokenizer, task, spec.eval, streams(spec.seed)[0], task.validation_splits)
    row["headline"] = statistics.fmean(row[s] for s in task.validation_splits)
    return row


def held_out(model, tokenizer, task, spec, step: int) -> dict:
    """The test splits of the model chosen at ``step`` on the validation splits: Avg@k per test split
    (``eval.test_problems_per_split`` problems each: scored once per run, so it can afford more problems
    than each validation pass) and their mean ``test_headline``. Called once per run, after the choice."""
    row = split_scores(model, tokenizer, task, spec.eval, streams(spec.seed)[1], task.test_splits,
                       spec.eval.test_problems_per_split)
    return {"step": step, **row, "test_headline": statistics.fmean(row[s] for s in task.test_splits),
            "greedy_accuracy": greedy_accuracy(model, tokenizer, task, spec.eval.problems_per_split)}
