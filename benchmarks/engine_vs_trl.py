"""One RL round of the local engine vs the TRL engine, A/B in one window.

    python benchmarks/engine_vs_trl.py                 # S model, 16 prompts × 8, 96 tokens, 4 updates, fp32
    python benchmarks/engine_vs_trl.py --rounds 5 --threads 2

A round = rollout of 16 prompts × 8 samples (96 response tokens each: the end token's logit is
masked so both engines do exactly the same work), group advantages from a seeded random 0/1
reward, then 4 minibatch updates of CPPO (Top-K TV, K = 20) with AdamW — what one step of
``harness.train`` does. Both engines use the same model class, weights, prompts (the math fixture
through the same chat template) and the harness sampler (TRL's ``rollout_func``), so the difference is
the training loop: TRL's (generation batch bookkeeping, reward/advantage plumbing, Trainer step with
accelerate) against the harness's.

Four contenders, rounds alternating in one window (the order rotates every round), all fp32: the
TRL engine (its defaults: the fused hidden-state loss); TRL's stock GRPOTrainer (``loss_type="dapo"``,
HF ``generate``, and the "old" log-prob recompute TRL does when a generation feeds several steps) for
reference; the local engine with its defaults (each group's prompt run once in the rollout and in the
updates — its minibatches hold whole groups, TRL's shuffle rows across groups and split a group
across processes —, π from the hidden states tile by tile); the local engine "plain" (every row runs
its prompt, materialised logits: the defaults before). A TRL round is timed from ``on_step_begin``
of its first step to ``on_step_end`` of its fourth (Trainer set-up excluded). Medians. Targets:
local (defaults) / TRL engine ≤ 0.6 and / stock GRPOTrainer ≤ 0.5.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

PROMPTS, SAMPLES, TOKENS, UPDATES, TOP_K = 16, 8, 96, 4, 20


def build(args):
    from harness.lm import tiny_tokenizer
    from harness.tasks.math import load_problems
    from harness.model import ModelSize, build_model

    tok = tiny_tokenizer()
    model = build_model(ModelSize(128, 4, 512, 4, 2), len(tok), 512, seed=0)
    eos = tok.eos_token_id
    problems = load_problems("fixture:fixture_dapo_math", limit=PROMPTS)
    return model, tok, eos, problems


def no_end_token(model, eos: int):
    """Every response runs the full 96 tokens: the end token's logit is −inf while sampling (no grad);
    the training forward sees the model as it is."""
    def hook(_module, _inputs, output):
        if torch.is_grad_enabled():
            return output
        return output.index_fill(-1, torch.tensor([eos]), float("-inf"))
    model.lm_head.register_forward_hook(hook)


def rewards_for(n: int, round_index: int) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(1000 + round_index)).float()


def local_round(model, optimizer, method, prompt_ids, prompt_mask, round_index, plain=False):
    """One RL step of the local engine (harness/engines/local.py, steps 1–3) on these prompts, with its
    defaults: each group's prompt run once in the rollout and in the updates (minibatches of whole
    groups), π from the hidden states tile by tile. ``plain``: every row runs its prompt, the update
    materialises the logits (the defaults before they changed)."""
    from harness.rollout import output_layer, positions, sample, shared_prefix_hidden
    from methods import LossTotals, PolicyBatch, policy_logprobs_from_hidden, policy_logprobs_from_logits

    t0 = time.perf_counter()
    ids = prompt_ids.repeat_interleave(SAMPLES, 0)
    mask = prompt_mask.repeat_interleave(SAMPLES, 0)
    roll = sample(model, ids, TOKENS, -1, 0, torch.Generator().manual_seed(round_index), record_top_k=TOP_K,
                  prompt_mask=mask, group=1 if plain else SAMPLES)
    rewards = rewards_for(len(ids), round_index).view(-1, SAMPLES)
    adv = (rewards - rewards.mean(1, keepdim=True)).reshape(-1)
    groups = torch.randperm(PROMPTS, generator=torch.Generator().manual_seed(round_index))
    for chunk in groups.chunk(UPDATES):
        rows = (chunk[:, None] * SAMPLES + torch.arange(SAMPLES)).reshape(-1)
        resp, resp_mask, topk_ids = roll.response_ids[rows], roll.response_mask[rows], roll.rollout_topk_ids[rows]
        if plain:
            attention = torch.cat([mask[rows], resp_mask.long()], 1)
            logits = model(input_ids=torch.cat([ids[rows], resp], 1), attention_mask=attention,
                           position_ids=positions(attention), logits_to_keep=TOKENS + 1).logits[:, :-1]
            logp, pi_topk = policy_logprobs_from_logits(logits, resp, topk_ids)
        else:
            hidden = shared_prefix_hidden(model, ids[rows], resp, SAMPLES, prompt_mask=mask[rows])
            weight, bias = output_layer(model)
            logp, pi_topk = policy_logprobs_from_hidden(hidden, weight, resp, topk_ids, bias=bias,
                                                        response_mask=resp_mask)
        batch = PolicyBatch(logp=logp, rollout_logp=roll.rollout_logp[rows], advantages=adv[rows],
                            response_mask=resp_mask, response_ids=resp, rollout_topk_ids=topk_ids,
                            rollout_topk_logp=roll.rollout_topk_logp[rows], policy_topk_logp=pi_topk, sequence_ids=rows)
        out = method(batch, LossTotals(num_sequences=len(rows), horizon=TOKENS))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return time.perf_counter() - t0


class RoundTimer:
    """TRL round time: from ``on_step_begin`` of a generation's first step to ``on_step_end`` of its last."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            seconds = None

            def on_step_begin(self, args, state, control, **kw):
                if state.global_step % UPDATES == 0:
                    self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if state.global_step % UPDATES == 0:
                    self.seconds = time.perf_counter() - self.t0

        return _Timer()


def trl_trainer(cls, model, tok, problems, reward, **kwargs):
    from datasets import Dataset
    from trl import GRPOConfig

    data = Dataset.from_list([{"prompt": p.messages()} for p in problems])
    config = GRPOConfig(output_dir="/tmp/trh_bench_trl", per_device_train_batch_size=PROMPTS * SAMPLES // UPDATES,
                        gradient_accumulation_steps=1, steps_per_generation=UPDATES, num_generations=SAMPLES,
                        max_completion_length=TOKENS, temperature=1.0, top_p=1.0, top_k=0, learning_rate=1e-4,
                        max_steps=UPDATES, logging_steps=UPDATES, report_to="none", use_cpu=True, bf16=False,
                        activation_checkpointing=False, beta=0.0, scale_rewards="none", save_strategy="no",
                        remove_unused_columns=False, seed=0, disable_tqdm=True, lr_scheduler_type="constant",
                        dataloader_num_workers=0, loss_type="dapo")
    timer = RoundTimer()
    trainer = cls(model=model, processing_class=tok, reward_funcs=[reward], args=config, train_dataset=data,
                  callbacks=[timer], **kwargs)

    def one_round():
        trainer.train()  # max_steps = one generation of UPDATES steps; the timer excludes Trainer set-up
        return timer.seconds
    return one_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import transformers
    from trl import GRPOTrainer

    from harness.lm import encode_prompt
    from harness.rollout import left_pad
    from harness.engines.trl_trainer import make_trainer_class
    from methods import get_method

    transformers.logging.set_verbosity_error()
    model, tok, eos, problems = build(args)
    models = {k: copy.deepcopy(model) for k in ("trl", "stock", "local", "local_plain")}
    for m in models.values():
        no_end_token(m, eos)
    prompt_ids, prompt_mask = left_pad([encode_prompt(tok, p.messages()) for p in problems], tok.pad_token_id)
    method = get_method("cppo", horizon=TOKENS, delta=0.05, top_k=TOP_K)
    current = [0]

    def reward(prompts, completions, **_):
        return rewards_for(len(completions), current[0]).tolist()

    opt = {k: torch.optim.AdamW(models[k].parameters(), lr=1e-4) for k in ("local", "local_plain")}
    engines = {
        "trl": trl_trainer(make_trainer_class(), models["trl"], tok, problems, reward, method=method, top_k=TOP_K),
        "stock": trl_trainer(GRPOTrainer, models["stock"], tok, problems, reward),
        "local": lambda: local_round(models["local"], opt["local"], method, prompt_ids, prompt_mask, current[0]),
        "local_plain": lambda: local_round(models["local_plain"], opt["local_plain"], method, prompt_ids, prompt_mask,
                                           current[0], plain=True),
    }
    times = {k: [] for k in engines}
    names = list(engines)
    for r in range(args.rounds + 1):  # round 0 warms caches and allocators and is dropped
        current[0] = r
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order: A/B/C/D, B/C/D/A, ...
            times[name].append(engines[name]())
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    print(f"\nS model (1.0M + embeddings), {PROMPTS} prompts × {SAMPLES}, {TOKENS} tokens, {UPDATES} minibatch updates, "
          f"CPPO Top-K (K={TOP_K}), {args.threads} thread(s); median of {args.rounds} rounds after a warm-up round")
    print(f"TRL engine (registry loss, harness sampler for μ, fp32)  {med['trl']:6.2f} s/round")
    print(f"stock GRPOTrainer (loss_type=dapo, HF generate + old-logp recompute, fp32)  {med['stock']:6.2f} s/round")
    for key, label in (("local", "local engine, defaults"), ("local_plain", "local engine, plain (old defaults)")):
        print(f"{label:<45}{med[key]:6.2f} s/round   local/TRL engine = {med[key] / med['trl']:.2f} (target ≤ 0.6); "
              f"local/stock TRL = {med[key] / med['stock']:.2f} (target ≤ 0.5)")


if __name__ == "__main__":
    main()
