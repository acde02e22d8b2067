"""One RLVR training run, top to bottom: warm start → [rollout → advantages → k minibatch updates
with the registry loss → eval → collapse check → checkpoint] per step → verdict.

    python -m harness.train method=cppo setting=base_s seed=1 method.delta=0.2
    python -m harness.train -m method=grpo,cppo          # Hydra multirun
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections import deque

import torch
from omegaconf import DictConfig, OmegaConf

from methods import LossTotals, PolicyBatch, get_method, list_methods, policy_logprobs_from_logits

from . import task as tasks
from .config import ConfigError, RunSpec, resolve
from .evaluation import evaluate, held_out
from .model import CharTokenizer, ModelSize, build_model
from .provenance import provenance
from .rollout import response_logits, sample, shared_prefix_logits
from methods.seeds import derive_seed
from .store import RunStore, best_within_window
from .warmup import encode_problems, rollout_rewards, warm_start


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


def run(cfg: DictConfig, tags: dict | None = None, keep_model=None) -> dict:
    """Train one run to its verdict (or return the verdict of a finished one). ``tags`` (e.g. the
    launcher's job id) are recorded in the run's status; ``keep_model`` (a path, local engine) saves
    the final weights there (the run folder keeps none)."""
    spec = resolve(cfg)
    if spec.engine.get("threads"):
        torch.set_num_threads(int(spec.engine["threads"]))
    store = RunStore(spec.run_dir, tags=tags)
    if spec.engine["name"] == "trl" and int(os.environ.get("RANK", "0")) > 0:
        finished = _finished(spec, store)  # data-parallel rank > 0: rank 0 owns (and locks) the folder
        if finished:
            return finished
        from .lm_train import train as train_lm
        return train_lm(spec, store, main=False)
    with store.exclusive():  # one process per run folder: a second one fails fast instead of interleaving
        return _run_locked(spec, store, keep_model)


def _finished(spec: RunSpec, store: RunStore) -> dict | None:
    """The verdict of a finished run in the folder (never rerun a finished cell), else None; a folder
    holding another config's run is an error."""
    previous = store.read_status()
    if previous and previous.get("config_hash") != spec.config_hash:
        raise ConfigError(f"run folder {store.dir} holds a run of another config ({previous.get('config_hash')}, "
                          f"not {spec.config_hash}); choose another run_dir")
    if previous and previous.get("state") in ("done", "collapsed"):
        return {**previous, "skipped": True}
    return None


def _run_locked(spec: RunSpec, store: RunStore, keep_model=None) -> dict:
    finished = _finished(spec, store)
    if finished:
        return finished
    store.write_config(OmegaConf.to_yaml(spec.resolved))
    try:
        if spec.engine["name"] == "trl":
            from .lm_train import train as train_lm
            return train_lm(spec, store)
        return _train(spec, store, keep_model)
    except Exception as err:  # a crash is recorded as a verdict, then re-raised
        store.write_status(state="failed", reason=f"{type(err).__name__}: {err}", config_hash=spec.config_hash,
                           step=_last_step(store), resumed_from=(store.read_status() or {}).get("resumed_from", []))
        raise


def _last_step(store: RunStore) -> int:
    rows = store.read()
    return rows[-1]["step"] if rows else 0


def _train(spec: RunSpec, store: RunStore, keep_model=None) -> dict:
    rl, digits = spec.rl, spec.task["digits"]
    tokenizer = CharTokenizer()
    horizon = tasks.response_length(digits)
    top_k = min(20, tokenizer.vocab_size)

    # --- policy, warm start, method, optimiser -----------------------------------------------
    state, warm_info = warm_start(spec.model, spec.warmup, digits, progress=spec.logging.get("progress", True))
    model = build_model(ModelSize(**spec.model), tokenizer.vocab_size, tasks.max_positions(digits), seed=spec.seed)
    model.load_state_dict(state)
    method = get_method(spec.method_name, horizon=horizon, **_topk_param(spec.method_name, spec.method_params, top_k))
    optimizer = torch.optim.AdamW(model.parameters(), lr=rl["lr"], betas=(0.9, 0.999),
                                  weight_decay=rl["weight_decay"])
    mismatch = spec.engine["mismatch"]
    lagged = deque(maxlen=int(mismatch["lag"]) + 1)  # weights of the last k+1 updates; [0] is used for rollout

    start = 0
    resumed_from = list((store.read_status() or {}).get("resumed_from", []))
    ckpt = store.load_checkpoint()
    if ckpt is not None:
        if ckpt["config_hash"] != spec.config_hash:
            raise RuntimeError(f"checkpoint in {store.dir} belongs to config {ckpt['config_hash']}, not "
                               f"{spec.config_hash}; use another run_dir or delete the checkpoint")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        lagged.extend(ckpt["lagged"])
        start = ckpt["step"]
        resumed_from.append(start)
        store.truncate("metrics.jsonl", start)
        store.truncate("diagnostics.jsonl", start)
        store.remove_best_weights(after_step=start)
    else:
        for name in ("metrics.jsonl", "diagnostics.jsonl"):
            (store.dir / name).unlink(missing_ok=True)
        store.remove_best_weights()
    if not lagged:
        lagged.append(copy.deepcopy(model.state_dict()))
    store.write_status(state="running", step=start, config_hash=spec.config_hash, resumed_from=resumed_from,
                       warmup=warm_info_brief(warm_info), provenance=provenance())

    rows = store.read()
    peak_headline = max([r["headline"] for r in rows if "headline" in r], default=0.0)
    if start == 0:
        t0 = time.perf_counter()
        row = {"step": 0, **evaluate(model, tokenizer, spec, 0)}
        row["time_eval"] = time.perf_counter() - t0
        store.append("metrics.jsonl", row)
        rows.append(row)
        peak_headline = row["headline"]
        keep_if_best(store, rows, model, spec.t_stop)

    sink = _wandb_sink(spec, store)
    rollout_model = build_model(ModelSize(**spec.model), tokenizer.vocab_size, tasks.max_positions(digits), seed=0)
    bar = _bar(spec, start)
    verdict = {"state": "done", "reason": ""}
    for step in range(start + 1, spec.steps + 1):
        t0 = time.perf_counter()
        # --- 1. rollout from μ (possibly bf16, noisy or lagging) --------------------------------
        rollout_model.load_state_dict(lagged[0])
        sampler = rollout_model.to(torch.bfloat16) if mismatch["bf16_rollout"] else rollout_model
        problems = tasks.sample_problems("train", rl["prompts_per_iter"], digits, seed=derive_seed("problems", spec.seed, step))
        n = rl["samples_per_prompt"]
        gen = torch.Generator().manual_seed(derive_seed("rollout", spec.seed, step))
        prompts = encode_problems(tokenizer, problems).repeat_interleave(n, 0)
        roll = sample(sampler, prompts, horizon, tokenizer.eos_id, tokenizer.pad_id, gen,
                      record_top_k=top_k, logit_noise=mismatch["logit_noise"])
        if mismatch["bf16_rollout"]:
            rollout_model.float()
        rewards = rollout_rewards(tokenizer, [p for p in problems for _ in range(n)], roll).float()
        t1 = time.perf_counter()

        # --- 2. group advantages; zero-variance groups are skipped --------------------------------
        grouped = rewards.view(-1, n)
        adv = grouped - grouped.mean(1, keepdim=True)
        if rl["std_normalize"]:
            adv = adv / (grouped.std(1, keepdim=True) + 1e-6)
        kept_groups = (grouped.std(1) > 0).nonzero().squeeze(-1)
        kept_groups = kept_groups[torch.randperm(len(kept_groups), generator=gen)]

        # --- 3. updates_per_iter minibatch steps, all anchored to the same μ ----------------------
        step_metrics, diag_records, updates = [], [], 0
        for chunk in torch.tensor_split(kept_groups, rl["updates_per_iter"]):
            if len(chunk) == 0:
                continue
            rows_idx = (chunk[:, None] * n + torch.arange(n)).reshape(-1)
            resp = roll.response_ids[rows_idx]
            if spec.engine.get("share_prompt_prefix"):  # minibatches hold whole groups: one prompt pass each
                logits = shared_prefix_logits(model, roll.prompt_ids[rows_idx], resp, n)
            else:
                logits = response_logits(model, roll.prompt_ids[rows_idx], resp)
            logp, pi_topk = policy_logprobs_from_logits(logits, resp, roll.rollout_topk_ids[rows_idx])
            batch = PolicyBatch(logp=logp, rollout_logp=roll.rollout_logp[rows_idx], advantages=adv.reshape(-1)[rows_idx],
                                response_mask=roll.response_mask[rows_idx], response_ids=resp,
                                rollout_topk_ids=roll.rollout_topk_ids[rows_idx],
                                rollout_topk_logp=roll.rollout_topk_logp[rows_idx], policy_topk_logp=pi_topk,
                                sequence_ids=rows_idx + step * len(prompts))
            out = method(batch, LossTotals(num_sequences=len(rows_idx), horizon=horizon))
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), rl["grad_clip"])
            optimizer.step()
            updates += 1
            with torch.no_grad():
                entropy = _entropy(logits, batch.response_mask)
            step_metrics.append({**out.metrics, "grad_norm": float(grad_norm), "entropy": entropy})
            valid = batch.response_mask
            diag_records.append({"dev": (logp.detach().exp() - batch.rollout_logp.exp())[valid].abs(),
                                 "pos": valid.long().cumsum(-1)[valid] - 1, "masked": (out.mask < 1)[valid]})
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
        if not math.isfinite(row.get("policy_loss", 0.0)) or not _params_finite(model):
            verdict = {"state": "collapsed", "reason": "non-finite loss or parameters", "collapse_step": step}
        elif step % spec.eval["every"] == 0 or step == spec.steps:
            t3 = time.perf_counter()
            row.update(evaluate(model, tokenizer, spec, step))
            row["time_eval"] = time.perf_counter() - t3
            if diag_records:
                store.append("diagnostics.jsonl", {"step": step, **position_diagnostics(diag_records, horizon, spec.eval["position_bins"])})
            peak_headline = max(peak_headline, row["headline"])
            keep_if_best(store, rows + [row], model, spec.t_stop)
            reason = headline_collapse(row["headline"], peak_headline, spec.collapse)
            if reason:
                verdict = {"state": "collapsed", "collapse_step": step, "reason": reason}
        store.append("metrics.jsonl", row)
        rows.append(row)
        if sink is not None:
            sink.log({k: v for k, v in row.items() if k != "step"}, step=step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{row['train_reward']:.2f}", headline=f"{peak_headline:.3f}")
        if verdict["state"] == "collapsed":
            break
        if step % spec.engine["checkpoint_every"] == 0 and step < spec.steps:
            store.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "lagged": list(lagged), "step": step, "config_hash": spec.config_hash})
            store.write_status(state="running", step=step, config_hash=spec.config_hash, resumed_from=resumed_from)
    if bar is not None:
        bar.close()

    status = final_status(spec, store, rows, verdict, resumed_from, warmup=warm_info_brief(warm_info),
                          held_out=_held_out(spec, store, rows, model, tokenizer))
    store.write_status(**status)
    store.remove_checkpoint()
    store.remove_best_weights()
    if keep_model:
        torch.save(model.state_dict(), keep_model)
    if sink is not None:
        sink.summary.update({k: v for k, v in status.items() if not isinstance(v, dict)})
        sink.finish()
    return status


def final_status(spec: RunSpec, store, rows: list[dict], verdict: dict, resumed_from: list, **extra) -> dict:
    """A finished run's status: verdict, last step and the matched-window best (any engine)."""
    best = best_within_window(rows, spec.t_stop)
    return {**verdict, "step": rows[-1]["step"], "config_hash": spec.config_hash, "t_stop": spec.t_stop,
            "run_dir": str(store.dir), "best_headline": best["headline"] if best else None,
            "best_step": best["step"] if best else None, "resumed_from": resumed_from,
            "provenance": provenance(), **extra}


def keep_if_best(store: RunStore, rows: list[dict], model, t_stop: int) -> None:
    """Keep the weights of the last eval row if it is the best so far within [0, t_stop]."""
    row = rows[-1]
    if row["step"] <= t_stop and best_within_window(rows, t_stop)["step"] == row["step"]:
        store.save_best_weights(row["step"], model.state_dict())


def _held_out(spec: RunSpec, store: RunStore, rows: list[dict], model, tokenizer) -> dict | None:
    """The test splits scored on the weights of the step chosen on the validation splits."""
    best = best_within_window(rows, spec.t_stop)
    weights = store.load_best_weights(best["step"]) if best else None
    if weights is None:
        return None
    chosen = copy.deepcopy(model)
    chosen.load_state_dict(weights)
    started = time.perf_counter()
    return {**held_out(chosen, tokenizer, spec, best["step"]), "time_eval": time.perf_counter() - started}


def held_out_of_row(row: dict | None) -> dict | None:
    """The held-out score of an eval row that carries its test splits (``test_*``), else None."""
    if not row or row.get("test_headline") is None:
        return None
    return {"step": row["step"], **{k: v for k, v in row.items() if k.startswith("test_")}}


def headline_collapse(headline: float, peak: float, rule: dict):
    """The reason a headline counts as collapsed (fallen to ≈ 0 after a real peak), else None."""
    floor = max(rule["floor"], rule["floor_fraction"] * peak)
    if peak >= rule["peak_at_least"] and headline <= floor:
        return f"headline {headline:.3f} ≤ {floor:.3f} after a peak of {peak:.3f}"
    return None


def warm_info_brief(info: dict) -> dict:
    return {k: info[k] for k in ("key", "steps", "sampled_accuracy")}


def _topk_param(name, params, top_k):
    """Top-K methods use K = min(configured, vocabulary size): the rollout records that many."""
    params = dict(params)
    takes_top_k = any(p["name"] == "top_k" for m in list_methods() if m["name"] == name for p in m["params"])
    if takes_top_k:
        params["top_k"] = min(params.get("top_k", top_k), top_k)
    return params


def _entropy(logits, mask) -> float:
    logp = logits.float().log_softmax(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return float(ent[mask].mean()) if bool(mask.any()) else float("nan")


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
    if not spec.logging.get("wandb"):
        return None
    import wandb
    return wandb.init(mode="offline", dir=str(store.dir), config=spec.resolved, reinit="finish_previous",
                      name=store.dir.name, id=f"{spec.config_hash}", resume="allow")


def _bar(spec: RunSpec, start: int):
    if not spec.logging.get("progress", True):
        return None
    from tqdm.auto import tqdm
    return tqdm(total=spec.steps, initial=start, desc=f"{spec.method_name}/{spec.setting_name}/s{spec.seed}",
                dynamic_ncols=True)


def main() -> None:
    import hydra

    from .config import CONFIG_DIR

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
    def _main(cfg: DictConfig) -> None:
        status = run(cfg)
        print(summary_line(status))

    _main()


def summary_line(status: dict) -> str:
    best = status.get("best_headline")
    best_text = "none" if best is None else f"{best:.4f} at step {status.get('best_step')}"
    verdict = status["state"] if status["state"] != "collapsed" else f"collapsed at step {status.get('collapse_step')}"
    return f"best headline within [0, {status.get('t_stop')}]: {best_text}; verdict: {verdict}"


if __name__ == "__main__":
    main()
