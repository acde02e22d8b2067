"""``engine=trl``: TRL's GRPOTrainer with the registry's loss, anchored on the rollout policy μ.

TRL runs the loop (data, generation batches, advantages, accelerate/DeepSpeed, optimiser,
checkpoints); the harness supplies five things, and only these touch TRL (pinned to
``PINNED_TRL``; ``tests/harness/test_trl_engine.py`` fails if the internals below change):

1. ``rollout_func`` (TRL's generation hook): the harness sampler generates from the policy and
   records μ's log-prob of each sampled token and μ's top-K ids/log-probs — the generating model's
   full softmax at the rollout temperature. TRL turns the log-probs into ``sampling_per_token_logps``.
2. ``_generate_and_score_completions``: calls TRL's, then attaches μ's top-K and a stable id per
   response to the generation batch (TRL shuffles and splits it into minibatches with them).
3. ``_get_per_token_logps_and_entropies`` during generation: TRL would recompute "old" log-probs
   with the trainer whenever a generation feeds several optimiser steps; the harness never uses
   them (μ comes from the rollout, bypass mode), so the forward pass is skipped, not silently used.
4. ``_prepare_inputs``: after TRL splits a generation batch into its micro-batches, each one gets
   the valid-token and response counts of the optimiser step it belongs to, summed over processes
   (``step_totals``), so every aggregation is the registry's loss of the whole minibatch.
5. ``_compute_loss``: π's log-probs (and π at μ's top-K ids) from the final hidden states and the
   output layer, tile by tile (``engine.fused_loss``, default; never a ``[B, T, V]`` tensor) or from
   the training logits in chunks,
   then ``method(PolicyBatch, LossTotals)`` plus TRL's MoE router auxiliary loss where TRL would add
   it; every registry metric goes to TRL's metric sink ``self._metrics``.

TRL options whose effect lives in the loss the engine replaces (β's KL penalty, entropy masks and
bonus, the off-policy sequence mask, sequence-level importance sampling, two-sided clipping, vLLM
importance-sampling correction, ``loss_type``) are refused at construction (``check_trl_options``)
rather than silently dropped.

Updates per iteration (the paper's off-policy knob) = ``steps_per_generation`` optimiser steps per
generation batch (``num_iterations`` = 1): an RL step of the harness is that many TRL steps.
"""

from __future__ import annotations

import torch

from methods import LossTotals, PolicyBatch, policy_logprobs_from_hidden, policy_logprobs_from_logits
from methods.seeds import derive_seed

from ..lm import encode_prompt
from ..rollout import left_pad, output_layer, positions, sample_in_chunks

PINNED_TRL = "1.16.0"
# TRL internals the engine relies on; a test checks each exists with these parameters.
TRL_INTERNALS = {
    "_generate_and_score_completions": ("self", "inputs"),
    "_get_per_token_logps_and_entropies": ("self", "model", "input_ids", "attention_mask", "logits_to_keep"),
    "_compute_loss": ("self", "model", "inputs"),
    "_prepare_inputs": ("self", "generation_batch"),
}

# GRPOConfig options that act inside TRL's own loss, which the engine replaces: each must keep
# the value below (the effect it would have is then none) or the trainer refuses to start.
IGNORED_TRL_OPTIONS = {
    "beta": (0.0, "the KL penalty to a reference model; registry methods have no KL term"),
    "loss_type": ("dapo", "the registry method and its `aggregation` decide the loss (TRL's sapo and vespo "
                          "are method=sapo, method=vespo)"),
    "top_entropy_quantile": (1.0, "entropy masks are not part of any registry method"),
    "entropy_coef": (0.0, "no entropy bonus in the registry loss"),
    "use_adaptive_entropy": (False, "no entropy bonus in the registry loss"),
    "off_policy_mask_threshold": (None, "the trust region is the registry method's: method=opsm method.delta=..."),
    "importance_sampling_level": ("token", "the registry method decides the ratio: GSPO's sequence ratio is method=gspo"),
    "delta": (None, "two-sided clipping belongs to TRL's loss"),
}

# sampling options that make μ a truncated or reshaped softmax, with the values that leave it the full
# softmax at the rollout temperature (what every registry method's ratio divides by)
UNBIASED_SAMPLING = {"top_p": (1.0, None), "top_k": (0, None, -1), "min_p": (None, 0.0),
                     "repetition_penalty": (1.0, None), "presence_penalty": (0.0, None),
                     "frequency_penalty": (0.0, None)}
_GRPO_SAMPLING_OPTIONS = ("top_p", "top_k", "min_p", "repetition_penalty")  # GRPOConfig's; the rest: vLLM's


def biased_sampling_options(args) -> list[str]:
    """The GRPOConfig options (and ``generation_kwargs`` keys, which reach vLLM and ``generate``) that
    would sample from another distribution than μ = softmax(logits / temperature)."""
    found = [f"{k}={getattr(args, k)!r}" for k in _GRPO_SAMPLING_OPTIONS
             if getattr(args, k, None) not in UNBIASED_SAMPLING[k]]
    extra = getattr(args, "generation_kwargs", None) or {}
    found += [f"generation_kwargs[{k!r}]={v!r}" for k, v in extra.items()
              if k in UNBIASED_SAMPLING and v not in UNBIASED_SAMPLING[k]]
    return found


def autocast_dtype(accelerator):
    """The dtype accelerate's mixed precision runs the model's forward in (its output layer, so μ's
    logits, included), or None without mixed precision. The fused loss's output-layer product runs
    outside that forward, so it is told the dtype: else π would be fp32 against a bf16 μ, a fake
    off-policy gap of the order of bf16's rounding."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(getattr(accelerator, "mixed_precision", "no")))


def _pad_rows(rows: list[torch.Tensor], length: int, fill) -> torch.Tensor:
    out = rows[0].new_full((len(rows), length) + tuple(rows[0].shape[1:]), fill)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def mu_from_vllm(completion_ids: list, logprobs: list, token_ids: list, top_k: int):
    """vLLM's per-token logprobs (``logprobs=K``: up to K+1 entries by rank, the sampled token always
    among them) → μ's sampled log-prob per token and μ's top-K ids/log-probs with the sampled token
    forced into the set, as the harness sampler records them. NaN where vLLM gave none."""
    from methods import insert_sampled

    sampled_logp, top_ids, top_logp = [], [], []
    for row_ids, row_lps, row_tok in zip(completion_ids, logprobs, token_ids):
        lp_row, ids_row, vals_row = [], [], []
        for token, lps, ids in zip(row_ids, row_lps, row_tok):
            lps = [float("nan") if v is None else v for v in lps]
            if token not in ids:
                raise RuntimeError(f"vLLM returned no log-prob for the sampled token {token}; it must run with "
                                   "logprobs >= 0 (the engine sets vllm_generation.logprobs = top_k)")
            if len(ids) < top_k:
                raise RuntimeError(f"vLLM returned {len(ids)} log-probs for a token, fewer than top_k={top_k}")
            lp_row.append(lps[ids.index(token)])
            ids_row.append(ids[:top_k])
            vals_row.append(lps[:top_k])
        ids_t, vals_t = torch.tensor(ids_row, dtype=torch.long), torch.tensor(vals_row, dtype=torch.float32)
        tok_t, lp_t = torch.tensor(list(row_ids), dtype=torch.long), torch.tensor(lp_row, dtype=torch.float32)
        ids_t, vals_t = insert_sampled(ids_t, (vals_t,), tok_t, (lp_t,))
        sampled_logp.append(lp_row)
        top_ids.append(ids_t)
        top_logp.append(vals_t)
    return sampled_logp, top_ids, top_logp


def check_trl_options(args) -> None:
    """Refuse GRPOConfig options the registry loss would silently ignore (one line naming each)."""
    bad = [f"{name}={getattr(args, name)!r} (must be {keep!r}: {why})"
           for name, (keep, why) in IGNORED_TRL_OPTIONS.items() if getattr(args, name, keep) != keep]
    if args.use_vllm and args.vllm_importance_sampling_correction:
        bad.append("vllm_importance_sampling_correction=True (must be False: the registry anchors on the "
                   "rollout's own log-probs, so there is no vLLM/trainer mismatch to correct)")
    biased = biased_sampling_options(args)
    if biased:
        bad.append(f"{', '.join(biased)} (μ must be the full softmax at the rollout temperature: truncated or "
                   "penalised sampling renormalises the rollout's log-probs, which biases every ratio π/μ)")
    if bad:
        raise ValueError("engine=trl replaces TRL's loss with the registry's; unsupported GRPOConfig option(s): "
                         + "; ".join(bad))


def step_totals(slices: list[dict], accumulation: int) -> torch.Tensor:
    """[optimiser steps, 2] float64: valid response tokens and responses of each optimiser step on this
    process. TRL feeds a generation batch's micro-batches in order and steps the optimiser after every
    ``accumulation`` of them."""
    counts = torch.stack([torch.stack([_valid_mask(s).sum().double(),
                                       torch.tensor(float(len(s["completion_ids"])), dtype=torch.float64,
                                                    device=s["completion_ids"].device)])
                          for s in slices])
    if len(slices) % accumulation:
        raise ValueError(f"{len(slices)} micro-batches per generation is not a multiple of gradient "
                         f"accumulation {accumulation}")
    return counts.view(-1, accumulation, 2).sum(1)


def attach_step_totals(slices: list[dict], accumulation: int, global_totals: torch.Tensor,
                       num_processes: int) -> None:
    """Give each micro-batch this process's share of its optimiser step's totals over all processes:
    data parallelism averages the processes' accumulated gradients, so dividing each micro-batch loss
    by (step total / processes) makes the result the registry loss of the whole minibatch."""
    for i, batch in enumerate(slices):
        batch["step_totals"] = global_totals[i // accumulation] / num_processes


def _valid_mask(inputs: dict) -> torch.Tensor:
    mask = inputs["completion_mask"].bool()
    return mask & inputs["tool_mask"].bool() if "tool_mask" in inputs else mask


def registry_rollout(prompts: list, trainer) -> dict:
    """TRL's ``rollout_func``: sample with the harness sampler and record μ (see the module doc)."""
    return trainer.registry_rollout(prompts)


def make_trainer_class():
    """The GRPOTrainer subclass (built lazily: importing TRL costs seconds)."""
    from trl import GRPOTrainer
    from trl.models import unwrap_model_for_generation

    class RegistryGRPOTrainer(GRPOTrainer):
        """GRPOTrainer whose loss is ``method`` (a registry method) with μ from the rollout."""

        def __init__(self, *args, method, top_k: int, rollout_temperature: float = 1.0, rollout_seed: int = 0,
                     fused_loss: bool = True, kv_cache_bytes: float = 24 * 2**30, **kwargs):
            kwargs["rollout_func"] = registry_rollout
            trl_args = kwargs.get("args", args[2] if len(args) > 2 else None)  # (model, reward_funcs, args, ...)
            if trl_args is not None:
                check_trl_options(trl_args)
            super().__init__(*args, **kwargs)
            self.method = method
            self.top_k = top_k if method.needs_topk else 1  # μ's sampled log-prob is always recorded
            self.rollout_temperature = rollout_temperature
            self.rollout_seed = rollout_seed
            self.fused_loss = fused_loss
            self.kv_cache_bytes = kv_cache_bytes
            self._head_checked = False
            self.recomputes_skipped = 0      # "old log-prob" forwards TRL asked for and did not get
            self.last_ratio_deviation = None  # max |π/μ − 1| over the last minibatch's valid tokens
            self._pending_topk = None
            self._in_generation = False
            self._generations = 0

        # -- 1. rollout ------------------------------------------------------------------------------
        def registry_rollout(self, prompts: list) -> dict:
            tok = self.processing_class
            prompt_ids = [encode_prompt(tok, p) for p in prompts]
            if self.use_vllm:
                return self._vllm_rollout(prompt_ids)
            ids, mask = left_pad(prompt_ids, tok.pad_token_id)
            device = self.accelerator.device
            generator = torch.Generator(device=device).manual_seed(
                derive_seed("trl_rollout", self.rollout_seed, self._generations, self.accelerator.process_index))
            self._generations += 1
            with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                             gather_deepspeed3_params=self.args.ds3_gather_for_generation) as model:
                was_training = model.training
                model.eval()
                roll = sample_in_chunks(model, ids.to(device), self.max_completion_length, tok.eos_token_id,
                                        tok.pad_token_id, generator, kv_budget_bytes=self.kv_cache_bytes,
                                        temperature=self.rollout_temperature, record_top_k=self.top_k,
                                        prompt_mask=mask.to(device))
                model.train(was_training)
            lengths = roll.response_mask.sum(1).tolist()
            completion_ids = [roll.response_ids[i, :n].tolist() for i, n in enumerate(lengths)]
            logprobs = [roll.rollout_logp[i, :n].tolist() for i, n in enumerate(lengths)]
            self._pending_topk = ([roll.rollout_topk_ids[i, :n].cpu() for i, n in enumerate(lengths)],
                                  [roll.rollout_topk_logp[i, :n].cpu() for i, n in enumerate(lengths)])
            return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}

        def _vllm_rollout(self, prompt_ids: list) -> dict:
            """vLLM generates with ``logprobs=K``; μ and its top-K come from what vLLM returns."""
            self.vllm_generation.logprobs = self.top_k
            if self.state.global_step != self._last_loaded_step:
                self.vllm_generation.sync_weights()
                self._last_loaded_step = self.state.global_step
            _, completion_ids, logprobs, token_ids = self.vllm_generation.generate(
                prompts=prompt_ids, images=None, num_generations=self.num_generations)
            if logprobs is None or token_ids is None:
                raise RuntimeError("vLLM returned no log-probs; μ cannot be recorded")
            sampled, top_ids, top_logp = mu_from_vllm(completion_ids, logprobs, token_ids, self.top_k)
            self._pending_topk = (top_ids, top_logp)
            return {"prompt_ids": prompt_ids, "completion_ids": [list(c) for c in completion_ids], "logprobs": sampled}

        # -- 2. attach μ's top-K to the generation batch ---------------------------------------------
        def _generate_and_score_completions(self, inputs):
            self._pending_topk, self._in_generation = None, True
            try:
                out = super()._generate_and_score_completions(inputs)
            finally:
                self._in_generation = False
            if out.get("sampling_per_token_logps") is None or self._pending_topk is None:
                raise RuntimeError("the rollout returned no μ log-probs; the TRL engine needs rollout_func's logprobs "
                                   f"(TRL {PINNED_TRL} routes them to sampling_per_token_logps)")
            length = out["completion_ids"].shape[1]
            device = out["completion_ids"].device
            top_ids, top_logp = self._pending_topk
            out["rollout_topk_ids"] = _pad_rows(top_ids, length, 0).to(device)
            out["rollout_topk_logp"] = _pad_rows(top_logp, length, 0.0).to(device)
            rows = len(top_ids)
            out["sequence_ids"] = (torch.arange(rows, device=device) + self.accelerator.process_index * rows
                                   + self._generations * rows * self.accelerator.num_processes)
            return out

        # -- 3. no "old log-prob" recompute: μ is the rollout's --------------------------------------
        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args,
                                               **kwargs):
            if self._in_generation:
                self.recomputes_skipped += 1
                return None, None, None
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              *args, **kwargs)

        # -- 4. each micro-batch learns its optimiser step's totals --------------------------------------
        def _prepare_inputs(self, generation_batch):
            before = self._buffered_inputs
            out = super()._prepare_inputs(generation_batch)
            if self.model.training and self._buffered_inputs is not before:
                # TRL has just generated, shuffled and split a batch: count each optimiser step once
                accumulation = self.args.gradient_accumulation_steps
                local = step_totals(self._buffered_inputs, accumulation)
                attach_step_totals(self._buffered_inputs, accumulation, self.accelerator.reduce(local, "sum"),
                                   self.accelerator.num_processes)
            return out

        # -- 5. the registry loss ----------------------------------------------------------------------
        def _compute_loss(self, model, inputs):
            mode = "train" if self.model.training else "eval"
            prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
            attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            length = completion_ids.shape[1]
            extra = {"output_router_logits": True} if self.aux_loss_enabled else {}
            mask = _valid_mask(inputs)
            topk_ids = inputs["rollout_topk_ids"] if self.method.needs_topk else None
            # through the (possibly DDP/DeepSpeed-wrapped) model, so its hooks run; with the fused loss
            # it computes one position's logits and π comes from the hidden states tile by tile
            output = model(input_ids=torch.cat([prompt_ids, completion_ids], dim=1), attention_mask=attention,
                           position_ids=positions(attention), logits_to_keep=1 if self.fused_loss else length + 1,
                           output_hidden_states=self.fused_loss, **extra)
            if self.fused_loss:
                weight, bias = output_layer(self.accelerator.unwrap_model(model))
                self._check_output_layer(output, weight, bias)
                logp, pi_topk = policy_logprobs_from_hidden(
                    output.hidden_states[-1][:, -(length + 1):-1], weight, completion_ids, topk_ids, bias=bias,
                    temperature=self.rollout_temperature, response_mask=mask,
                    matmul_dtype=autocast_dtype(self.accelerator))
            else:
                logp, pi_topk = policy_logprobs_from_logits(output.logits[:, :-1], completion_ids, topk_ids,
                                                            temperature=self.rollout_temperature)
            batch = PolicyBatch(logp=logp, rollout_logp=inputs["sampling_per_token_logps"].float(),
                                advantages=inputs["advantages"].float(), response_mask=mask,
                                response_ids=completion_ids,
                                rollout_topk_ids=topk_ids,
                                rollout_topk_logp=inputs["rollout_topk_logp"].float() if topk_ids is not None else None,
                                policy_topk_logp=pi_topk, sequence_ids=inputs["sequence_ids"])
            out = self.method(batch, self.loss_totals(inputs, mask))
            loss = out.loss
            if self.aux_loss_enabled:  # as TRL adds it: the MoE load-balancing loss, scaled for accumulation
                accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
                loss = loss + self.router_aux_loss_coef * output.aux_loss / accumulation
                self._metrics[mode]["aux_loss"].append(float(output.aux_loss.detach()))
            with torch.no_grad():
                ratio = (logp.detach() - batch.rollout_logp).exp()
                self.last_ratio_deviation = float((ratio - 1).abs()[mask].max()) if bool(mask.any()) else 0.0
            for name, value in out.metrics.items():
                self._metrics[mode][name].append(float(value))
            return loss

        def _check_output_layer(self, output, weight, bias) -> None:
            """Once: the model's logits must be its output layer applied to its last hidden state (not
            so with logit soft-capping or scaling), or the fused loss would compute another policy."""
            if self._head_checked:
                return
            with torch.no_grad():
                want = output.logits[:, -1].float()
                got = torch.nn.functional.linear(output.hidden_states[-1][:, -1], weight, bias).float()
            if not torch.allclose(got, want, rtol=1e-2, atol=1e-2 * float(want.abs().max().clamp_min(1.0))):
                raise RuntimeError("engine.fused_loss: this model's logits are not its output layer applied to its "
                                   "last hidden state (logit soft-capping or scaling?); set engine.fused_loss=false")
            self._head_checked = True

        def loss_totals(self, inputs, mask: torch.Tensor) -> LossTotals:
            """The denominators of this micro-batch: its optimiser step's share (``step_totals``) in
            training; in evaluation the batch is the whole minibatch (no accumulation, no split)."""
            if "step_totals" in inputs:
                tokens, sequences = inputs["step_totals"].tolist()
            else:
                tokens, sequences = float(mask.sum()), float(mask.shape[0])
            return LossTotals(num_sequences=sequences, num_tokens=tokens, horizon=self.max_completion_length)

    return RegistryGRPOTrainer


# --- run glue: config → GRPOConfig, data, reward, evaluation, the results store ---------------------

def grpo_args(spec, output_dir: str, cuda: bool):
    """The GRPOConfig of a run: the paper's batch geometry mapped onto TRL's knobs."""
    from trl import GRPOConfig

    rl, eng = spec.rl, spec.engine
    processes, accumulation = eng.num_processes, eng.gradient_accumulation_steps
    minibatch_rows = rl.minibatch_prompts * rl.samples_per_prompt  # divisibility: harness.config._check_trl
    updates = rl.updates_per_iter
    return GRPOConfig(
        output_dir=output_dir, seed=spec.seed, data_seed=spec.seed,
        per_device_train_batch_size=minibatch_rows // (processes * accumulation),
        gradient_accumulation_steps=accumulation, steps_per_generation=updates * accumulation,
        num_iterations=1, num_generations=rl.samples_per_prompt,
        max_completion_length=rl.max_response_tokens, temperature=rl.temperature,
        learning_rate=rl.lr, weight_decay=rl.weight_decay, max_grad_norm=rl.grad_clip,
        adam_beta1=0.9, adam_beta2=0.999, lr_scheduler_type="constant", warmup_steps=0,
        beta=0.0, scale_rewards="group" if rl.std_normalize else "none",
        vllm_importance_sampling_correction=False, use_vllm=eng.vllm.enabled,
        vllm_mode=eng.vllm.mode, vllm_gpu_memory_utilization=eng.vllm.gpu_memory_utilization,
        max_steps=spec.steps * updates, logging_steps=updates, save_steps=eng.checkpoint_every * updates,
        save_total_limit=1, report_to="none", disable_tqdm=not spec.logging.progress,
        bf16=eng.bf16 and cuda, use_cpu=not cuda,
        remove_unused_columns=False, log_completions=False, dataloader_num_workers=0,
        **{checkpointing_keyword(GRPOConfig): eng.gradient_checkpointing},
    )


def checkpointing_keyword(config_class) -> str:
    """transformers renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (5.24 has the new
    name; 5.17, the newest vLLM 0.31 allows, and 5.10 the old one): whichever the installed one takes."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
