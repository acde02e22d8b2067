"""A real batch for Fig. 3 (the prefix-constraint schematic): train CPPO on a setting as the loop does
(rollout from μ, `updates_per_iter` minibatch updates anchored to μ) and, on the first update that
has drifted from μ where the prefix budget masks a token the token test alone would keep, save that
response's per-token quantities. `trh report` draws Fig. 3 from the file; it never trains.

    python scripts/fig3_batch.py --out results/embedded/fig3_batch.json [setting=base_s seed=0]
"""

from __future__ import annotations

import argparse
import json

import torch

from harness.tasks import make_task
from harness.config import compose, resolve
from harness.model import CharTokenizer, build_model
from harness.rollout import response_logits, sample
from harness.warmup import encode_problems, rollout_rewards, warm_start
from methods import LossTotals, PolicyBatch, get_method, policy_logprobs_from_logits
from methods.seeds import derive_seed


def find_batch(overrides, max_steps: int = 30) -> dict:
    spec = resolve(compose(["method=cppo", *overrides]))
    task = make_task(spec.task)
    tok = CharTokenizer(task.alphabet)
    horizon, top_k = task.max_response_tokens, min(20, tok.vocab_size)
    state, _ = warm_start(spec.model, spec.warmup, task, progress=False)
    model = build_model(spec.model, tok.vocab_size, task.max_positions, seed=spec.seed)
    model.load_state_dict(state)
    params = {**spec.method_params, "top_k": top_k}
    method = get_method("cppo", horizon=horizon, **params)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.rl.lr, weight_decay=spec.rl.weight_decay)
    n = spec.rl.samples_per_prompt
    for step in range(1, max_steps + 1):
        problems = task.problems("train", spec.rl.prompts_per_iter, seed=derive_seed("problems", spec.seed, step))
        gen = torch.Generator().manual_seed(derive_seed("rollout", spec.seed, step))
        prompts = encode_problems(tok, task, problems).repeat_interleave(n, 0)
        with torch.no_grad():
            roll = sample(model, prompts, horizon, tok.eos_id, tok.pad_id, gen, record_top_k=top_k)
        rewards = rollout_rewards(tok, task, [p for p in problems for _ in range(n)], roll).float().view(-1, n)
        adv = (rewards - rewards.mean(1, keepdim=True)).reshape(-1)
        for update in range(spec.rl.updates_per_iter):
            logits = response_logits(model, roll.prompt_ids, roll.response_ids)
            logp, pi_topk = policy_logprobs_from_logits(logits, roll.response_ids, roll.rollout_topk_ids)
            batch = PolicyBatch(logp=logp, rollout_logp=roll.rollout_logp, advantages=adv,
                                response_mask=roll.response_mask, response_ids=roll.response_ids,
                                rollout_topk_ids=roll.rollout_topk_ids, rollout_topk_logp=roll.rollout_topk_logp,
                                policy_topk_logp=pi_topk)
            out = method(batch, LossTotals(num_sequences=len(adv), horizon=horizon))
            d = out.details
            valid = roll.response_mask
            token_ok = d["weighted_divergence"] <= params["delta"]
            budget_only = valid & (out.mask < 1) & token_ok
            if update > 0 and bool(budget_only.any()):
                row = int(budget_only.sum(1).argmax())
                return _record(spec, step, update, row, d, out.mask, valid, params, tok, roll)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.rl.grad_clip)
            optimizer.step()
    raise SystemExit(f"no update within {max_steps} steps masked a token by the prefix budget alone")


def _record(spec, step, update, row, d, mask, valid, params, tok, roll) -> dict:
    keep = valid[row]
    as_list = lambda t: [float(x) for x in t[row][keep]]  # noqa: E731
    return {"setting": spec.setting_name, "seed": spec.seed, "step": step, "update": update, "row": row,
            "delta": params["delta"], "w_min": params["w_min"], "delta_b": float(d["delta_b"][row]),
            "tokens": [tok.decode([i]) or "<end>" for i in roll.response_ids[row][keep].tolist()],
            "divergence": as_list(d["divergence"]), "position_weight": as_list(d["position_weight"]),
            "weighted_divergence": as_list(d["weighted_divergence"]),
            "prefix_threshold": as_list(d["prefix_threshold"]), "threshold": as_list(d["threshold"]),
            "mask": as_list(mask)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*", default=["setting=base_s"])
    args = parser.parse_args()
    record = find_batch(args.overrides or ["setting=base_s"])
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    masked = sum(m < 1 for m in record["mask"])
    print(f"step {record['step']} update {record['update']} row {record['row']}: {len(record['mask'])} tokens, "
          f"{masked} masked → {args.out}")


if __name__ == "__main__":
    main()
