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

Five contenders, rounds alternating in one window (the order rotates every round): the TRL
engine; TRL's stock GRPOTrainer (``loss_type="dapo"``, HF ``generate``, and the "old" log-prob
recompute TRL does when a generation feeds several steps) for reference; the local engine in fp32
with its defaults; the local engine in fp32 with ``engine.share_prompt_prefix`` (each prompt's forward
run once per group of n in the updates — the local engine's minibatches hold whole groups, TRL's
shuffle rows across groups); the local engine with its fastest honest settings (μ from the sampler,
no recompute, finished rows trimmed, shared prompt prefix, bf16 rollout copy). A TRL round is timed from ``on_step_begin`` of its first step to
``on_step_end`` of its fourth (Trainer set-up excluded). Medians. Target: local / TRL ≤ 0.8 in fp32.
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
    from harness.math_task import load_problems
    from harness.model import ModelSize, build_model

    tok = tiny_tokenizer()
    model = build_model(ModelSize(128, 4, 512, 4, 2), len(tok), 512, seed=0)
    eos = tok.eos_token_id
    problems = load_problems("fixture:fixture_dapo_math", limit=PROMPTS)
    return model, tok, eos, problems


def no_end_token(model, eos: int):
    """Every response runs the full 96 tokens: the end token's logit is −inf."""
    def hook(_module, _inputs, output):
        return output.index_fill(-1, torch.tensor([eos]), float("-inf"))
    model.lm_head.register_forward_hook(hook)


def rewards_for(n: int, round_index: int) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(1000 + round_index)).float()


def local_round(model, optimizer, method, prompt_ids, prompt_mask, round_index, bf16_rollout=False, rollout_model=None,
                share_prefix=False):
    """One RL step of the local engine (harness/engines/local.py, steps 1–3) on these prompts: minibatches of
    whole groups, as the engine takes them (``share_prefix``: engine.share_prompt_prefix)."""
    from harness.rollout import positions, sample, shared_prefix_logits
    from methods import LossTotals, PolicyBatch, policy_logprobs_from_logits

    t0 = time.perf_counter()
    ids = prompt_ids.repeat_interleave(SAMPLES, 0)
    mask = prompt_mask.repeat_interleave(SAMPLES, 0)
    sampler = model
    if bf16_rollout:
        rollout_model.load_state_dict(model.state_dict())
        sampler = rollout_model.to(torch.bfloat16)
    roll = sample(sampler, ids, TOKENS, -1, 0, torch.Generator().manual_seed(round_index), record_top_k=TOP_K,
                  prompt_mask=mask)
    if bf16_rollout:
        rollout_model.float()
    rewards = rewards_for(len(ids), round_index).view(-1, SAMPLES)
    adv = (rewards - rewards.mean(1, keepdim=True)).reshape(-1)
    groups = torch.randperm(PROMPTS, generator=torch.Generator().manual_seed(round_index))
    for chunk in groups.chunk(UPDATES):
        rows = (chunk[:, None] * SAMPLES + torch.arange(SAMPLES)).reshape(-1)
        if share_prefix:
            logits = shared_prefix_logits(model, ids[rows], roll.response_ids[rows], SAMPLES, prompt_mask=mask[rows])
        else:
            attention = torch.cat([mask[rows], roll.response_mask[rows].long()], 1)
            full = torch.cat([ids[rows], roll.response_ids[rows]], 1)
            logits = model(input_ids=full, attention_mask=attention, position_ids=positions(attention),
                           logits_to_keep=TOKENS + 1).logits[:, :-1]
        logp, pi_topk = policy_logprobs_from_logits(logits, roll.response_ids[rows], roll.rollout_topk_ids[rows])
        batch = PolicyBatch(logp=logp, rollout_logp=roll.rollout_logp[rows], advantages=adv[rows],
                            response_mask=roll.response_mask[rows], response_ids=roll.response_ids[rows],
                            rollout_topk_ids=roll.rollout_topk_ids[rows], rollout_topk_logp=roll.rollout_topk_logp[rows],
                            policy_topk_logp=pi_topk, sequence_ids=rows)
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
    models = {k: copy.deepcopy(model) for k in ("trl", "stock", "local", "local_shared", "local_fast", "bf16_copy")}
    for m in models.values():
        no_end_token(m, eos)
    prompt_ids, prompt_mask = left_pad([encode_prompt(tok, p.messages()) for p in problems], tok.pad_token_id)
    method = get_method("cppo", horizon=TOKENS, delta=0.05, top_k=TOP_K)
    current = [0]

    def reward(prompts, completions, **_):
        return rewards_for(len(completions), current[0]).tolist()

    opt = {k: torch.optim.AdamW(models[k].parameters(), lr=1e-4) for k in ("local", "local_shared", "local_fast")}
    engines = {
        "trl": trl_trainer(make_trainer_class(), models["trl"], tok, problems, reward, method=method, top_k=TOP_K),
        "stock": trl_trainer(GRPOTrainer, models["stock"], tok, problems, reward),
        "local": lambda: local_round(models["local"], opt["local"], method, prompt_ids, prompt_mask, current[0]),
        "local_shared": lambda: local_round(models["local_shared"], opt["local_shared"], method, prompt_ids, prompt_mask,
                                            current[0], share_prefix=True),
        "local_fast": lambda: local_round(models["local_fast"], opt["local_fast"], method, prompt_ids, prompt_mask,
                                          current[0], bf16_rollout=True, rollout_model=models["bf16_copy"],
                                          share_prefix=True),
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
    print(f"local engine (fp32)                    {med['local']:6.2f} s/round   local/TRL engine = "
          f"{med['local'] / med['trl']:.2f} (target ≤ 0.8); local/stock TRL = {med['local'] / med['stock']:.2f}")
    print(f"local engine + share_prompt_prefix (fp32)  {med['local_shared']:6.2f} s/round   local/TRL engine = "
          f"{med['local_shared'] / med['trl']:.2f} (target ≤ 0.8); local/stock TRL = {med['local_shared'] / med['stock']:.2f}")
    print(f"local engine, fastest honest settings  {med['local_fast']:6.2f} s/round   local/TRL engine = "
          f"{med['local_fast'] / med['trl']:.2f}; local/stock TRL = {med['local_fast'] / med['stock']:.2f} "
          "(bf16 rollout copy + shared prompt prefix; μ from the sampler, no recompute, finished rows trimmed)")


if __name__ == "__main__":
    main()
