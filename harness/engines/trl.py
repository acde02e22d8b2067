"""One run on a real language model through ``engine=trl``: the same results folder, metrics,
verdicts and matched-window rule as the local engine, so sweeps and reports work unchanged.

An RL step (one row of ``metrics.jsonl``) is one generation batch = ``rl.updates_per_iter`` TRL
optimiser steps. Validation: Avg@``eval.samples`` per split at ``eval.temperature``/``eval.top_p``,
scored by the task's reward; the headline is the unweighted mean over the validation splits.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import torch

from methods import get_method
from methods.seeds import derive_seed

from ..lifecycle import RunRecord, held_out_of_row
from ..lm import encode_prompt, load_lm
from ..rollout import left_pad, sample
from ..store import RunStore
from ..tasks import make_task
from .trl_trainer import grpo_args, make_trainer_class


def completion_text(completion) -> str:
    """TRL passes conversational completions as message lists."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


class TaskReward:
    """TRL reward function: the task's reward of each completion (the dataset's ``problem_index``
    column names its problem)."""

    __name__ = "task_reward"

    def __init__(self, task, problems: list):
        self.task, self.problems = task, problems

    def __call__(self, prompts, completions, problem_index, **_):
        return self.task.rewards([self.problems[i] for i in problem_index], [completion_text(c) for c in completions])


@torch.no_grad()
def evaluate(model, tok, task, splits: dict, ev, max_new: int, seed: int) -> dict:
    """Avg@k accuracy per split (``splits``: name → problems, the task's validation then test splits)
    and the validation splits' mean (the headline; the best step is chosen on it) and the test
    splits' mean ``test_headline``, reported at the chosen step only. The test splits are scored at
    every eval step (big models keep no weights per step to score later); nothing reads them to choose a step.
    The sampling of each (split, batch) is seeded by the run's ``seed`` only, so every step and every
    method at a seed is evaluated under the same random numbers."""
    val, test = list(task.validation_splits), list(task.test_splits)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rank, world = _rank_and_world()
    row = {}
    for s, (name, problems) in enumerate(splits.items()):
        prompts = [encode_prompt(tok, task.messages(p)) for p in problems for _ in range(ev.samples)]
        row_problems = [p for p in problems for _ in range(ev.samples)]
        mine = {}  # this rank's chunks (chunk i on rank i mod world): each problem is sampled once in all
        for chunk_index, start in enumerate(range(0, len(prompts), ev.batch_size)):
            if chunk_index % world != rank:
                continue
            ids, mask = left_pad(prompts[start:start + ev.batch_size], tok.pad_token_id)
            gen = torch.Generator(device=device).manual_seed(derive_seed("trl_evaluation", seed, s, chunk_index))
            roll = sample(model, ids.to(device), max_new, tok.eos_token_id, tok.pad_token_id, gen,
                          temperature=ev.temperature, top_p=ev.top_p, prompt_mask=mask.to(device))
            texts = [tok.decode(roll.response_ids[i, :n].tolist(), skip_special_tokens=True)
                     for i, n in enumerate(roll.response_mask.sum(1).tolist())]
            mine[chunk_index] = task.rewards(row_problems[start:start + ev.batch_size], texts)
        scores = [x for part in sorted(_all_gather(mine, world).items()) for x in part[1]]
        row[name] = sum(scores) / len(scores)
    row["headline"] = sum(row[n] for n in val) / len(val)
    if test:
        row["test_headline"] = sum(row[n] for n in test) / len(test)
    model.train(was_training)
    return row


def _rank_and_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(part: dict, world: int) -> dict:
    """Every rank's ``{chunk index: scores}``, merged (the chunk seeds depend on the index only, so
    the scores are the same on any number of ranks)."""
    if world == 1:
        return part
    parts = [None] * world
    torch.distributed.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}


def _callback_class():
    from transformers import TrainerCallback

    class StoreCallback(TrainerCallback):
        """TRL's logs → one metrics row per RL step, evaluation and the collapse verdict."""

        def __init__(self, run):
            self.run = run

        def on_train_begin(self, args, state, control, **kwargs):
            if self.run.record.start == 0:  # step 0: the starting policy, every rank taking part (see LMRun.evaluate)
                row = {"step": 0, **self.run.evaluate(0)}
                self.run.record.record(row)
                self.run.keep_if_best(row)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "train_runtime" in logs or state.global_step % self.run.updates:
                return
            step = state.global_step // self.run.updates
            row = {"step": step, "train_reward": logs.get("reward"),
                   "response_length": logs.get("completions/mean_length"),
                   "updates": self.run.updates, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            verdict = self.run.judge(row)
            self.run.record.record(row)
            self.run.keep_if_best(row)
            if verdict:
                self.run.record.verdict = verdict
                control.should_training_stop = True

        def on_save(self, args, state, control, **kwargs):
            step = self.run.checkpointed = state.global_step // self.run.updates
            self.run.record.running(step, engine="trl")
            if self.run.accelerator_main:
                self.run.record.store.checkpointed_best_policy(step)

    return StoreCallback


class _ReadOnlyStore:
    """The run folder as seen by data-parallel ranks > 0: readable, never written."""

    def __init__(self, store: RunStore):
        self.dir, self._store = store.dir, store

    def read_metrics(self):
        return self._store.read_metrics()

    def read_status(self):
        return self._store.read_status()

    def append_metrics(self, *args, **kwargs):
        pass

    write_status = truncate_records = clear_records = append_metrics


class LMRun:
    """State shared by the run and its TRL callback."""

    def __init__(self, spec, record: RunRecord):
        self.spec, self.record = spec, record
        self.updates = spec.rl.updates_per_iter
        self.checkpointed = 0  # the RL step of the last checkpoint (a resume starts there)
        self.accelerator_main = True
        self.model = self.tok = self.task = self.splits = self.trainer = None

    def judge(self, row: dict) -> dict | None:
        """Evaluate at eval steps and decide the verdict; rank 0 decides for every rank, so that all
        of them stop at the same step."""
        from accelerate.utils import broadcast_object_list

        loss = row.get("policy_loss", row.get("loss", 0.0))
        finite = loss is None or math.isfinite(loss)
        if finite and (row["step"] % self.spec.eval.every == 0 or row["step"] == self.spec.steps):
            row.update(self.evaluate(row["step"]))
        verdict = self.record.judge(row, finite)
        if self.trainer is not None and self.trainer.accelerator.num_processes > 1:
            verdict = broadcast_object_list([verdict], from_process=0)[0]
        return verdict

    def keep_if_best(self, row: dict) -> None:
        """After an eval row is recorded: if it is the matched-window best so far, save the policy as
        ``policy_best/`` (``engine.keep_best_weights``). Rank 0 decides for every rank; every rank
        takes part in the save (under ZeRO-3 the weights are gathered)."""
        if not self.spec.engine.keep_best_weights or "headline" not in row:
            return
        best = self.record.best()
        is_best = best is not None and best["step"] == row["step"]
        t = self.trainer
        if t.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list
            is_best = broadcast_object_list([is_best], from_process=0)[0]
        if not is_best:
            return
        store = self.record.store
        t.save_model(str(store.partial_policy_dir))
        if self.accelerator_main:
            store.replace_best_policy(store.partial_policy_dir, row["step"], self.checkpointed)

    def kept_weights(self, final: bool) -> dict:
        """What the verdict records of the weights kept: the final policy's folder, and the best step's
        folder only when it holds that step (else None, with the reason)."""
        store, best = self.record.store, self.record.best()
        kept = {"final": store.policy_dir.name if final else None, "best": None}
        if self.spec.engine.keep_best_weights and best is not None:
            held = store.best_policy_step()
            if held == best["step"]:
                kept["best"] = {"dir": store.best_policy_dir.name, "step": held}
            else:
                kept["best_missing"] = f"policy_best/ holds step {held}, not the best step {best['step']}"
        return kept

    def evaluate(self, step: int) -> dict:
        """The ranks share the evaluation — each samples its chunks of every split with the full policy
        (under ZeRO-3 its parameters are gathered for the duration, so the forwards need no
        collectives) and the scores are gathered; only rank 0's row is written."""
        from trl.models import unwrap_model_for_generation

        t = self.trainer
        with unwrap_model_for_generation(t.model_wrapped, t.accelerator,
                                         gather_deepspeed3_params=t.args.ds3_gather_for_generation) as model:
            return evaluate(model, self.tok, self.task, self.splits, self.spec.eval, self.spec.rl.max_response_tokens,
                            seed=self.spec.seed)


def train_dataset(rows: list[dict]):
    """The training rows as a ``datasets.Dataset`` fingerprinted by the rows' own hash. ``Dataset.from_list``
    fingerprints a table by pickling it with dill, which fails on Python 3.12 with pyarrow 26 (a
    ``PicklingError`` on pyarrow's ``MonthDayNano``; found by the device check's rehearsal)."""
    from datasets import Dataset
    from datasets.table import InMemoryTable

    fingerprint = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Dataset(InMemoryTable.from_pylist(rows), fingerprint=fingerprint)


def train(spec, store: RunStore, main: bool = True) -> dict:
    """Train one run with TRL to its verdict; resumes from the last TRL checkpoint in the run folder.
    Ranks other than 0 (``main=False``) train alongside and never write to the run folder."""

    eng = spec.engine
    if eng.threads:
        torch.set_num_threads(eng.threads)
    cuda = torch.cuda.is_available() and not eng.force_cpu
    run = LMRun(spec, RunRecord(spec, store))
    output_dir, policy_dir = store.trl_checkpoints_in(eng.checkpoint_dir), store.policy_dir
    args = grpo_args(spec, str(output_dir), cuda)  # first: under ZeRO-3 it makes from_pretrained partition weights
    run.model, run.tok = load_lm(spec.model, seed=spec.seed)
    task = run.task = make_task(spec.task)
    train_problems = task.train_set(spec.rl.prompts_per_iter * spec.steps, seed=derive_seed("trl_train_problems", spec.seed))
    run.splits = {name: task.problems(name, spec.eval.problems_per_split)
                  for name in task.validation_splits + task.test_splits}
    dataset = train_dataset([{"prompt": task.messages(p), "problem_index": i} for i, p in enumerate(train_problems)])

    method = get_method(spec.method_name, horizon=spec.rl.max_response_tokens, **spec.method_params)
    top_k = getattr(method.params, "top_k", 1) or 1
    trainer_cls = make_trainer_class()
    trainer = trainer_cls(model=run.model, processing_class=run.tok, reward_funcs=[TaskReward(task, train_problems)],
                          args=args, train_dataset=dataset, method=method, top_k=top_k,
                          rollout_temperature=spec.rl.temperature, rollout_seed=spec.seed,
                          fused_loss=spec.engine.fused_loss, kv_cache_bytes=spec.engine.kv_cache_gb * 2**30,
                          callbacks=[_callback_class()(run)])
    run.trainer = trainer
    run.accelerator_main = main and trainer.accelerator.is_main_process
    if not run.accelerator_main:
        store = run.record.store = _ReadOnlyStore(store)

    from transformers.trainer_utils import get_last_checkpoint
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    start = int(Path(last).name.split("-")[-1]) // run.updates if last else 0
    run.record.begin(start, engine="trl", splits=task.splits)
    run.checkpointed = start
    if run.accelerator_main:  # weights of a step after the resume point belong to rows that are recomputed
        store.resume_best_policy(start, keep=eng.keep_best_weights)
    try:
        trainer.train(resume_from_checkpoint=last)  # step 0 is evaluated in on_train_begin
        if eng.keep_weights:  # every rank: under ZeRO-3 the weights are gathered; the main process writes
            trainer.save_model(str(policy_dir))
    finally:
        task.close()
    status = run.record.finish(engine="trl", trl_recomputes_skipped=trainer.recomputes_skipped, splits=task.splits,
                               held_out=held_out_of_row(run.record.best(), task.test_splits),
                               weights=run.kept_weights(eng.keep_weights))
    if run.accelerator_main:
        shutil.rmtree(output_dir, ignore_errors=True)  # results stay small: no checkpoints after the verdict
        shutil.rmtree(store.anchor_policy_dir, ignore_errors=True)
    return status
