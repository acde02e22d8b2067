"""The local engine: one RLVR run, top to bottom, in plain torch — warm start → [rollout → group
advantages → ``updates_per_iter`` minibatch updates with the registry loss → eval → collapse check →
checkpoint] per step → verdict. The run's bookkeeping (resume, rows, verdict) is
``harness.lifecycle.RunRecord``'s."""

from __future__ import annotations

import copy
import math
import time
from collections import deque

import torch

from methods import (LossTotals, PolicyBatch, get_method, list_methods, policy_logprobs_from_hidden,
                     policy_logprobs_from_logits)
from methods.seeds import derive_seed

from ..config import RunSpec
from ..evaluation import evaluate, held_out
from ..lifecycle import RunRecord
from ..model import CharTokenizer, build_model
from ..provenance import provenance
from ..rollout import output_layer, response_hidden, sample, shared_prefix_hidden
from ..store import RunStore
from ..tasks import make_task
from ..warmup import encode_problems, rollout_rewards, warm_start


def position_diagnostics(records: list[dict], horizon: int, bins: int) -> dict:
    """Per position bin: mean and top-10% |π(y_t) − μ(y_t)| of the sampled token, and mask rate."""
    dev = torch.cat([r["dev"] for r in records])
    pos = torch.cat([r["pos"] for r in records])
    masked = torch.cat([r["masked"] for r in records])
    edges = [round(i * horizon / bins) for i in range(bins + 1)]
    out = {"bin_start": edges[:-1], "bin_end": edges[1:], "mean_dev": [], "top10_dev": [], "mask_rate": []}
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (pos >= lo) & (pos < hi)
        d = dev[sel]
        out["mean_dev"].append(float(d.mean()) if d.numel() else None)
        out["top10_dev"].append(float(d.sort(descending=True).values[: max(1, d.numel() // 10)].mean()) if d.numel() else None)
        out["mask_rate"].append(float(masked[sel].float().mean()) if d.numel() else None)
    return out


def train(spec: RunSpec, store: RunStore, keep_model=None) -> dict:
    """Train one run to its verdict in ``store``'s folder (resuming from its checkpoint)."""
    rl, task = spec.rl, make_task(spec.task)
    tokenizer = CharTokenizer(task.alphabet)
    horizon = task.max_response_tokens
    top_k = min(20, tokenizer.vocab_size)

    # --- policy, warm start, method, optimiser -----------------------------------------------
    state, warm_info = warm_start(spec.model, spec.warmup, task, progress=spec.logging.progress)
    model = build_model(spec.model, tokenizer.vocab_size, task.max_positions, seed=spec.seed)
    model.load_state_dict(state)
    method = get_method(spec.method_name, horizon=horizon, **_topk_param(spec.method_name, spec.method_params, top_k))
    optimizer = torch.optim.AdamW(model.parameters(), lr=rl.lr, betas=(0.9, 0.999), weight_decay=rl.weight_decay)
    lagged = deque(maxlen=spec.engine.mismatch.lag + 1)  # weights of the last k+1 updates; [0] is used for rollout

    start = _resume(spec, store, model, optimizer, lagged)
    record = RunRecord(spec, store)
    record.begin(start, warmup=warm_info_brief(warm_info), provenance=provenance(), splits=task.splits,
                 rollout_top_k=top_k)  # μ's top-K recorded per token: method.top_k is capped at it
    if start == 0:
        t0 = time.perf_counter()
        row = {"step": 0, **evaluate(model, tokenizer, task, spec, 0)}
        row["time_eval"] = time.perf_counter() - t0
        record.record(row)
        keep_if_best(store, record, model)

    sink = _wandb_sink(spec, store)
    rollout_model = build_model(spec.model, tokenizer.vocab_size, task.max_positions, seed=0)
    bar = _bar(spec, start)
    for step in range(start + 1, spec.steps + 1):
        t0 = time.perf_counter()
        # --- 1. rollout from μ (possibly bf16, noisy or lagging) --------------------------------
        rollout_model.load_state_dict(lagged[0])
        problems, roll, rewards, gen = _rollout(spec, task, step, rollout_model, tokenizer, top_k)
        t1 = time.perf_counter()
        # --- 2. group advantages; zero-variance groups are skipped --------------------------------
        adv, kept_groups = _group_advantages(rewards, rl, gen)
        # --- 3. updates_per_iter minibatch steps, all anchored to the same μ ----------------------
        step_metrics, diag_records = [], []
        for chunk in torch.tensor_split(kept_groups, rl.updates_per_iter):
            if len(chunk) == 0:
                continue
            metrics, diag = _update(spec, step, model, optimizer, method, roll, adv, chunk, horizon)
            step_metrics.append(metrics)
            diag_records.append(diag)
            if spec.engine.mismatch.lag:  # μ lags k updates behind: every update's weights may be sampled from
                lagged.append(copy.deepcopy(model.state_dict()))
        updates = len(step_metrics)
        if updates and not spec.engine.mismatch.lag:  # μ is π after the step's last update: copy that one only
            lagged.append(copy.deepcopy(model.state_dict()))
        t2 = time.perf_counter()

        # --- 4. record, evaluate, judge -----------------------------------------------------------
        row = {"step": step, "train_reward": float(rewards.mean()),
               "response_length": float(roll.response_mask.sum(1).float().mean()),
               "finished_fraction": float(roll.finished.float().mean()),
               "groups_kept": len(kept_groups), "groups_skipped": len(problems) - len(kept_groups),
               "updates": updates, **_mean_metrics(step_metrics),
               # before the step's first update π is the rollout's weights: what remains is engine mismatch
               "engine_mismatch_abs_logp": step_metrics[0]["mismatch_abs_logp"] if step_metrics else float("nan"),
               "time_rollout": t1 - t0, "time_update": t2 - t1}
        finite = math.isfinite(row.get("policy_loss", 0.0)) and _params_finite(model)
        if finite and (step % spec.eval.every == 0 or step == spec.steps):
            t3 = time.perf_counter()
            row.update(evaluate(model, tokenizer, task, spec, step))
            row["time_eval"] = time.perf_counter() - t3
            if diag_records:
                store.append_diagnostics({"step": step, **position_diagnostics(diag_records, horizon,
                                                                               spec.eval.position_bins)})
        verdict = record.judge(row, finite)
        record.record(row)
        if "headline" in row:
            keep_if_best(store, record, model)
        if sink is not None:
            sink.log({k: v for k, v in row.items() if k != "step"}, step=step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{row['train_reward']:.2f}", headline=f"{record.peak:.3f}")
        if verdict:
            record.verdict = verdict
            break
        if step % spec.engine.checkpoint_every == 0 and step < spec.steps:
            store.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "lagged": list(lagged), "step": step, "config_hash": spec.config_hash})
            record.running(step)
    if bar is not None:
        bar.close()

    status = record.finish(warmup=warm_info_brief(warm_info), splits=task.splits, rollout_top_k=top_k,
                           held_out=_held_out(spec, task, store, record, model, tokenizer))
    store.remove_checkpoint()
    store.remove_best_weights()
    if keep_model:
        torch.save(model.state_dict(), keep_model)
    if sink is not None:
        sink.summary.update({k: v for k, v in status.items() if not isinstance(v, dict)})
        sink.finish()
    return status


def _resume(spec: RunSpec, store: RunStore, model, optimizer, lagged: deque) -> int:
    """Load the run's checkpoint if there is one; the step to continue after (0: a fresh start)."""
    start = 0
    ckpt = store.load_checkpoint()
    if ckpt is not None:
        if ckpt["config_hash"] != spec.config_hash:
            raise RuntimeError(f"checkpoint in {store.dir} belongs to config {ckpt['config_hash']}, not "
                               f"{spec.config_hash}; use another run_dir or delete the checkpoint")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        lagged.extend(ckpt["lagged"])
        start = ckpt["step"]
    store.remove_best_weights(after_step=start if ckpt is not None else -1)
    if not lagged:
        lagged.append(copy.deepcopy(model.state_dict()))
    return start


def _rollout(spec: RunSpec, task, step: int, rollout_model, tokenizer, top_k: int):
    """Sample ``samples_per_prompt`` responses to each of the step's problems from μ, recording μ's
    log-probs and top-K; their rewards. Returns the step's generator too (it also orders minibatches)."""
    rl, mismatch = spec.rl, spec.engine.mismatch
    sampler = rollout_model.to(torch.bfloat16) if mismatch.bf16_rollout else rollout_model
    problems = task.problems("train", rl.prompts_per_iter, seed=derive_seed("problems", spec.seed, step))
    n = rl.samples_per_prompt
    gen = torch.Generator().manual_seed(derive_seed("rollout", spec.seed, step))
    prompts = encode_problems(tokenizer, task, problems).repeat_interleave(n, 0)
    roll = sample(sampler, prompts, task.max_response_tokens, tokenizer.eos_id, tokenizer.pad_id, gen,
                  record_top_k=top_k, logit_noise=mismatch.logit_noise, group=n, lean=True)
    if mismatch.bf16_rollout:
        rollout_model.float()
    rewards = rollout_rewards(tokenizer, task, [p for p in problems for _ in range(n)], roll).float()
    return problems, roll, rewards, gen


def _group_advantages(rewards: torch.Tensor, rl, gen: torch.Generator):
    """Mean-centred group advantages (optionally std-normalised) and the groups with reward variance,
    in a random order (the minibatches are cut from it)."""
    grouped = rewards.view(-1, rl.samples_per_prompt)
    adv = grouped - grouped.mean(1, keepdim=True)
    if rl.std_normalize:
        adv = adv / (grouped.std(1, keepdim=True) + 1e-6)
    kept_groups = (grouped.std(1) > 0).nonzero().squeeze(-1)
    return adv, kept_groups[torch.randperm(len(kept_groups), generator=gen)]


def _update(spec: RunSpec, step: int, model, optimizer, method, roll, adv, groups, horizon: int):
    """One optimiser step with the registry loss on the responses of ``groups``, anchored on μ.
    Returns its metrics and the per-position records of Fig. 2's diagnostics."""
    n = spec.rl.samples_per_prompt
    rows = (groups[:, None] * n + torch.arange(n)).reshape(-1).to(roll.response_ids.device)
    resp, mask, topk_ids = roll.response_ids[rows], roll.response_mask[rows], roll.rollout_topk_ids[rows]
    if spec.engine.share_prompt_prefix:  # minibatches hold whole groups: one prompt pass each
        hidden = shared_prefix_hidden(model, roll.prompt_ids[rows], resp, n)
    else:
        hidden = response_hidden(model, roll.prompt_ids[rows], resp)
    weight, bias = output_layer(model)
    if spec.engine.fused_loss:  # π from the hidden states tile by tile: no [B, T, V] logits
        logp, pi_topk, entropy = policy_logprobs_from_hidden(hidden, weight, resp, topk_ids, bias=bias,
                                                             response_mask=mask, with_entropy=True)
    else:
        logp, pi_topk, entropy = policy_logprobs_from_logits(torch.nn.functional.linear(hidden, weight, bias), resp,
                                                             topk_ids, with_entropy=True)
    batch = PolicyBatch(logp=logp, rollout_logp=roll.rollout_logp[rows], advantages=adv.reshape(-1)[rows],
                        response_mask=mask, response_ids=resp,
                        rollout_topk_ids=topk_ids, rollout_topk_logp=roll.rollout_topk_logp[rows],
                        policy_topk_logp=pi_topk, sequence_ids=rows + step * len(roll.response_ids))
    out = method(batch, LossTotals(num_sequences=len(rows), horizon=horizon))
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), spec.rl.grad_clip)
    optimizer.step()
    valid = batch.response_mask
    diag = {"dev": (logp.detach().exp() - batch.rollout_logp.exp())[valid].abs(),
            "pos": valid.long().cumsum(-1)[valid] - 1, "masked": (out.mask < 1)[valid]}
    entropy = float(entropy[valid].mean()) if bool(valid.any()) else float("nan")
    return {**out.metrics, "grad_norm": float(grad_norm), "entropy": entropy}, diag


def keep_if_best(store: RunStore, record: RunRecord, model) -> None:
    """Keep the weights of the last eval row if it is the best so far within [0, T_stop]."""
    best = record.best()
    if best is not None and best["step"] == record.rows[-1]["step"]:
        store.save_best_weights(best["step"], model.state_dict())


def _held_out(spec: RunSpec, task, store: RunStore, record: RunRecord, model, tokenizer) -> dict | None:
    """The test splits scored on the weights of the step chosen on the validation splits."""
    best = record.best()
    weights = store.load_best_weights(best["step"]) if best else None
    if weights is None:
        return None
    chosen = copy.deepcopy(model)
    chosen.load_state_dict(weights)
    started = time.perf_counter()
    return {**held_out(chosen, tokenizer, task, spec, best["step"]), "time_eval": time.perf_counter() - started}


def warm_info_brief(info: dict) -> dict:
    return {k: info[k] for k in ("key", "steps", "sampled_accuracy", "started_from") if k in info}


def _topk_param(name, params, top_k):
    """Top-K methods use K = min(configured, vocabulary size): the rollout records that many."""
    params = dict(params)
    takes_top_k = any(p["name"] == "top_k" for m in list_methods() if m["name"] == name for p in m["params"])
    if takes_top_k:
        params["top_k"] = min(params.get("top_k", top_k), top_k)
    return params


def _mean_metrics(rows: list[dict]) -> dict:
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        out[key] = sum(values) / len(values) if values else float("nan")
    return out


def _params_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _wandb_sink(spec: RunSpec, store: RunStore):
    """An offline wandb run in the run folder when logging.wandb is true (the store stays the truth)."""
    if not spec.logging.wandb:
        return None
    import wandb
    return wandb.init(mode="offline", dir=str(store.dir), config=spec.resolved, reinit="finish_previous",
                      name=store.dir.name, id=f"{spec.config_hash}", resume="allow")


def _bar(spec: RunSpec, start: int):
    if not spec.logging.progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=spec.steps, initial=start, desc=f"{spec.method_name}/{spec.setting_name}/s{spec.seed}",
                dynamic_ncols=True)


