"""Supervised warm-up on reference solutions, so that RL starts with signal.

Deterministic and cached by a hash of its config: every method and seed of a comparison starts
from the same checkpoint. It trains until the *sampled* accuracy (temperature 1, the RL rollout
temperature) on a probe set of training problems reaches ``target_accuracy`` ("base" ≈ 0.3–0.4,
"post-trained" higher), checking every ``check_every`` steps. Each step's gradient is computed in
``shards`` fixed parts, one thread each, and summed in order: the parts run in parallel where there
are cores for them, and the cached weights are the same whatever the core count of the machine.

The warm-ups of the embedded default ship with the package (``harness/data/warmups/<key>.pt``, written
by ``scripts/ship_warmup.py``, which also checks them against a fresh training): a first run loads
them instead of spending the warm-up's minute; any other config is trained here and cached.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from methods.seeds import derive_seed

from .locks import FileLock
from .model import CharTokenizer, build_model
from .rollout import response_logits, sample
from .schema import as_dict, build, id_view
from .store import atomic_torch_save, config_hash

CODE_VERSION = 4  # bump when the warm-up procedure (or the sampler it probes with) changes
SHIPPED_DIR = Path(__file__).parent / "data" / "warmups"


def cache_dir() -> Path:
    root = os.environ.get("TRH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "trust-region-harness")
    return Path(root) / "warmup"


def encode_problems(tokenizer: CharTokenizer, task, problems) -> torch.Tensor:
    return torch.tensor([[tokenizer.bos_id] + tokenizer.encode(task.prompt(p)) for p in problems])


def sampled_accuracy(model, tokenizer, task, problems, seed: int, temperature: float = 1.0,
                     top_p: float = 1.0, samples: int = 1, greedy: bool = False) -> float:
    prompts = encode_problems(tokenizer, task, problems).repeat_interleave(samples, 0)
    gen = torch.Generator().manual_seed(seed)
    roll = sample(model, prompts, task.max_response_tokens, tokenizer.eos_id, tokenizer.pad_id, gen,
                  temperature=temperature, top_p=top_p, greedy=greedy, lean=True)
    return float(rollout_rewards(tokenizer, task, [p for p in problems for _ in range(samples)], roll).mean())


def rollout_rewards(tokenizer: CharTokenizer, task, row_problems, roll) -> torch.Tensor:
    """The task's reward of each sampled row; ``row_problems[i]`` is row i's problem."""
    responses = [tokenizer.decode(roll.response_ids[i]) for i in range(len(row_problems))]
    return torch.tensor(task.rewards(row_problems, responses, [bool(f) for f in roll.finished]), dtype=torch.float64)


def _sft_batch(tokenizer, task, problems):
    prompts = encode_problems(tokenizer, task, problems)
    targets = [tokenizer.encode(task.reference(p)) + [tokenizer.eos_id] for p in problems]
    width = max(len(t) for t in targets)
    ids = torch.full((len(problems), width), tokenizer.pad_id)
    mask = torch.zeros(len(problems), width, dtype=torch.bool)
    for i, t in enumerate(targets):
        ids[i, : len(t)] = torch.tensor(t)
        mask[i, : len(t)] = True
    return prompts, ids, mask


def _sharded_gradient(model, params, prompts, ids, mask, shards: int, pool) -> torch.Tensor:
    """Set every parameter's ``.grad`` to the batch's mean token cross-entropy gradient, computed in
    ``shards`` fixed row slices (each on one thread of ``pool``) and summed in slice order: the same
    result on any number of cores, in parallel where there are several. Returns the loss."""
    tokens = int(mask.sum())
    parts = [(prompts[i::shards], ids[i::shards], mask[i::shards]) for i in range(shards)]
    work = lambda part: _shard_gradient(model, params, *part, tokens)  # noqa: E731
    shard_grads = list(pool.map(work, parts)) if pool is not None else [work(part) for part in parts]
    for i, p in enumerate(params):
        p.grad = functools.reduce(torch.add, (grads[i] for _, grads in shard_grads))
    return sum(loss for loss, _ in shard_grads)


def _shard_gradient(model, params, prompts, ids, mask, tokens: int):
    """One shard's share of the batch's mean token cross-entropy and its gradient (no ``.grad`` touched)."""
    logits = response_logits(model, prompts, ids)
    loss = torch.nn.functional.cross_entropy(logits[mask], ids[mask], reduction="sum") / tokens
    return loss.detach(), torch.autograd.grad(loss, params)


def start_task(warmup_cfg, task):
    """With ``warmup.start_from`` set, the warm-up config and task variant whose warm-up this one
    starts from (the run's task with those keys changed); else None."""
    if not warmup_cfg.start_from:
        return None
    from .tasks import make_task

    variant = build(type(task.config), {**as_dict(task.config), **warmup_cfg.start_from}, "warmup.start_from")
    return dataclasses.replace(warmup_cfg, start_from=None), make_task(variant)


def warmup_key(model_cfg, warmup_cfg, task) -> str:
    """The hash that names a warm-up: its model, warm-up and task config, vocabulary and procedure version
    (knobs at their declared defaults left out, as in run ids)."""
    return config_hash({"model": id_view(model_cfg), "warmup": id_view(warmup_cfg), **task.warmup_identity(),
                       "vocab": CharTokenizer(task.alphabet).itos, "version": CODE_VERSION})


def shipped(key: str):
    """The shipped warm-up ``(state_dict, info)`` named ``key``, or None (also when the environment sets
    ``TRH_NO_SHIPPED_WARMUPS``)."""
    path = SHIPPED_DIR / f"{key}.pt"
    if os.environ.get("TRH_NO_SHIPPED_WARMUPS") or not path.exists():  # set: train (and cache) every warm-up
        return None
    state = torch.load(path, weights_only=True)  # tensors only: no pickled code runs from a data file
    return state, {**json.loads(path.with_suffix(".json").read_text()), "source": "shipped"}


def write_shipped(key: str, state: dict, info: dict) -> Path:
    """Ship a warm-up with the package: its weights (tensors only) and its info, named by ``key``, with
    the CPU and torch that trained it (another CPU's kernels may round differently, and a warm-up is
    chaotic enough that it can then stop at another step)."""
    from .provenance import cpu

    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    path = SHIPPED_DIR / f"{key}.pt"
    torch.save(state, path)
    info = {**info, "trained_on": {"cpu": cpu(), "torch": torch.__version__}}
    path.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    return path


def warm_start(model_cfg, warmup_cfg, task, progress: bool = False):
    """The warm-up state dict for this (model, warm-up, task) config: shipped with the package, from
    the cache, or trained now. Returns ``(state_dict, info)``."""
    key = warmup_key(model_cfg, warmup_cfg, task)
    found = shipped(key)
    if found is not None:
        return found
    path = cache_dir() / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    # one process trains a given warm-up; others started meanwhile wait for it and load the result
    # (a heartbeat lock file: it holds on shared filesystems where flock does not)
    lock = FileLock(path.with_suffix(".owner"))
    lock.acquire_blocking()
    try:
        if path.exists():
            blob = torch.load(path, weights_only=False)
            return blob["state"], blob["info"]
        return train(model_cfg, warmup_cfg, task, path, progress)
    finally:
        lock.release()


def train(model_cfg, warmup_cfg, task, path: Path, progress: bool = False):
    """Train the warm-up now and save ``{state, info}`` at ``path`` (its info also as JSON beside it).
    One thread per shard: the weights do not depend on the core count. Returns ``(state_dict, info)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_and_save(model_cfg, warmup_cfg, task, Path(path), progress)
    finally:
        torch.set_num_threads(threads)


def _train_and_save(model_cfg, cfg, task, path, progress):
    tokenizer, key = CharTokenizer(task.alphabet), warmup_key(model_cfg, cfg, task)
    started = time.perf_counter()
    model = build_model(model_cfg, tokenizer.vocab_size, task.max_positions, seed=cfg.seed)
    start, started_from = start_task(cfg, task), None
    if start is not None:  # rotary positions: the weights fit any response length
        start_state, start_info = warm_start(model_cfg, *start, progress=progress)
        model.load_state_dict(start_state)
        started_from = start_info["key"]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    probe = task.problems("train", cfg.probe_size, seed=derive_seed("warmup_probe", cfg.seed))
    accuracy, step, history = 0.0, 0, []
    bar = _progress(cfg.max_steps, "warm-up", progress)
    shards = cfg.shards
    params = list(model.parameters())
    with ThreadPoolExecutor(shards) as pool:  # one thread per shard
        while step < cfg.max_steps:
            problems = task.problems("train", cfg.batch_size, seed=derive_seed("warmup_batch", cfg.seed, step))
            loss = _sharded_gradient(model, params, *_sft_batch(tokenizer, task, problems), shards, pool)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.check_every == 0:
                accuracy = sampled_accuracy(model, tokenizer, task, probe,
                                            seed=derive_seed("warmup_probe_sampling", cfg.seed, step))
                history.append({"step": step, "loss": loss.item(), "sampled_accuracy": accuracy})
                if bar is not None:
                    bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.2f}")
                if accuracy >= cfg.target_accuracy:
                    break
    if bar is not None:
        bar.close()
    info = {"key": key, "steps": step, "sampled_accuracy": accuracy, "history": history,
            "seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads(), "shards": shards,
            "reached_target": accuracy >= cfg.target_accuracy, **({"started_from": started_from} if started_from else {})}
    atomic_torch_save(path, {"state": model.state_dict(), "info": info})
    (path.with_suffix(".json")).write_text(json.dumps(info, indent=1))
    return model.state_dict(), info


def _progress(total, desc, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
