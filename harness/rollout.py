"""Sampling with a KV cache that records what the rollout policy μ emitted.

For every sampled token the sampler keeps μ's log-prob and μ's top-K ids and log-probs (the full
softmax at the sampling temperature), exactly what an inference engine returns. Simulated
training/inference mismatch: a bf16 rollout copy, Gaussian logit noise, or weights lagging k updates
are applied by the caller's choice of rollout model and ``logit_noise``; μ is whatever was sampled from.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from methods import insert_sampled

from . import decode


@dataclass
class Rollout:
    prompt_ids: torch.Tensor        # [N, P]
    response_ids: torch.Tensor      # [N, T] (pad after the end token)
    response_mask: torch.Tensor     # [N, T] bool, end token included
    finished: torch.Tensor          # [N] bool: the end token was sampled within the budget
    rollout_logp: Optional[torch.Tensor] = None       # [N, T] log μ(y_t)
    rollout_topk_ids: Optional[torch.Tensor] = None   # [N, T, K]
    rollout_topk_logp: Optional[torch.Tensor] = None  # [N, T, K]


def kv_bytes_per_row(config, length: int, dtype: torch.dtype) -> int:
    """The KV cache of one row of ``length`` positions: keys and values × layers × KV heads × head size."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * length * torch.tensor([], dtype=dtype).element_size()


def chunk_rows(rows: int, group: int, row_bytes: int, budget_bytes: float) -> int:
    """The most rows (whole groups of ``group``) whose KV cache fits ``budget_bytes`` (at least one group)."""
    groups = max(1, int(budget_bytes // (row_bytes * group)))
    return min(rows, groups * group)


def sample_in_chunks(model, prompt_ids: torch.Tensor, max_new_tokens: int, eos_id: int, pad_id: int,
                     generator: torch.Generator, *, kv_budget_bytes: float, group: int = 1,
                     prompt_mask: Optional[torch.Tensor] = None, gumbel: Optional[torch.Tensor] = None,
                     **options) -> Rollout:
    """``sample`` over chunks of rows whose KV cache (``kv_bytes_per_row``) fits ``kv_budget_bytes``,
    concatenated. Row by row the same computation as one call: where the draw belongs to the row
    (greedy, or ``gumbel`` noise) the same tokens bitwise, and log-probs equal up to the rounding of
    a matrix product with fewer rows (≤ 1e-4 in the tests); with the generator's draws each chunk
    draws its own, so the samples differ from one call's (not their distribution)."""
    config = getattr(model, "config", None) or model.module.config
    # the weights' dtype: under mixed precision the cache is in the (smaller) autocast dtype, so this errs safe
    row_bytes = kv_bytes_per_row(config, prompt_ids.shape[1] + max_new_tokens, next(model.parameters()).dtype)
    step = chunk_rows(prompt_ids.shape[0], group, row_bytes, kv_budget_bytes)
    parts = [sample(model, prompt_ids[i:i + step], max_new_tokens, eos_id, pad_id, generator, group=group,
                    prompt_mask=None if prompt_mask is None else prompt_mask[i:i + step],
                    gumbel=None if gumbel is None else gumbel[i:i + step], **options)
             for i in range(0, prompt_ids.shape[0], step)]
    return parts[0] if len(parts) == 1 else _concatenate(parts, pad_id)


def _concatenate(parts: list, pad_id: int) -> Rollout:
    width = max(p.response_ids.shape[1] for p in parts)

    def cat(name, fill):
        tensors = [getattr(p, name) for p in parts]
        if tensors[0] is None:
            return None
        padded = [torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]), value=fill)
                  for t in tensors]
        return torch.cat(padded)

    return Rollout(torch.cat([p.prompt_ids for p in parts]), cat("response_ids", pad_id), cat("response_mask", False),
                   torch.cat([p.finished for p in parts]), cat("rollout_logp", 0.0), cat("rollout_topk_ids", 0),
                   cat("rollout_topk_logp", 0.0))


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only (left padding), as ``generate`` computes them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def left_pad(rows: list, pad_id: int):
    """Token-id lists → a left-padded ``[N, P]`` tensor and its mask (1 on real tokens)."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


class PreallocatedLayer(DynamicLayer):
    """A KV-cache layer whose keys and values live in buffers sized for the whole generation: each
    token is written in place (no per-token concatenation of the growing cache); rows that finish
    leave by a gather into the front of the same buffers. ``capacity`` is set by ``preallocated_cache``."""

    capacity = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        self.device = key_states.device
        self._keys = key_states.new_empty(batch, heads, self.capacity, dim)
        self._values = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self.rows, self.length = batch, 0
        self.keys = self.values = self._keys[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"the preallocated KV cache holds {self.capacity} positions, {end} requested")
        self._keys[: self.rows, :, self.length:end] = key_states
        self._values[: self.rows, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._keys[: self.rows, :, :end], self._values[: self.rows, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            kept = len(indices)
            self._keys[:kept, :, : self.length] = self._keys[indices, :, : self.length]
            self._values[:kept, :, : self.length] = self._values[indices, :, : self.length]
            self.rows = kept
            self.keys, self.values = self._keys[:kept, :, : self.length], self._values[:kept, :, : self.length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:  # a group's shared prompt becomes one row per response
            self._keys = self._keys[: self.rows].repeat_interleave(repeats, 0)
            self._values = self._values[: self.rows].repeat_interleave(repeats, 0)
            self.rows *= repeats
            self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]


@functools.lru_cache(maxsize=None)
def _cache_keyword_of(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise TypeError(f"{forward_owner.__name__}.forward takes neither 'cache' nor 'past_key_values': this "
                    "transformers version's KV-cache API is not supported by the harness sampler")


def with_cache(model, cache) -> dict:
    """The keyword that hands ``cache`` to ``model``'s forward: ``cache`` in recent transformers,
    ``past_key_values`` before (5.10.x, verl's pin). The wrong one is swallowed by ``**kwargs``, and the
    model then decodes every token without the earlier ones — different samples, no error."""
    while hasattr(model, "module") and not hasattr(type(model), "config_class"):  # DDP / accelerate wrappers
        model = model.module
    return {_cache_keyword_of(type(model)): cache}


def preallocated_cache(capacity: int) -> Cache:
    """A KV cache for ``capacity`` positions per row (prompt + every new token)."""
    layer = type("PreallocatedLayer", (PreallocatedLayer,), {"capacity": capacity})
    return Cache(layer_class_to_replicate=layer)


def _group_heads(prompt_ids: torch.Tensor, prompt_mask: Optional[torch.Tensor], group: int) -> slice:
    """The rows that carry each group's prompt; checks that the groups really share their prompt."""
    if group < 1 or prompt_ids.shape[0] % group:
        raise ValueError(f"group must divide the {prompt_ids.shape[0]} rows, got {group}")
    heads = slice(None, None, group)
    for rows in (prompt_ids,) if prompt_mask is None else (prompt_ids, prompt_mask):
        if group > 1 and not torch.equal(rows, rows[heads].repeat_interleave(group, 0)):
            raise ValueError(f"group={group}: the rows of a group must share one prompt (and prompt mask)")
    return heads


def _nucleus(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Log-probs renormalised over the smallest set whose mass reaches top_p."""
    sorted_logp, order = logp.sort(-1, descending=True)
    mass_before = sorted_logp.exp().cumsum(-1) - sorted_logp.exp()
    sorted_logp = sorted_logp.masked_fill(mass_before >= top_p, float("-inf"))
    kept = torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp)
    return kept.log_softmax(-1)


def _scatter(values: torch.Tensor, rows: torch.Tensor, shape, fill) -> torch.Tensor:
    """Values of the active rows placed into a full-batch tensor (finished rows get ``fill``); while
    every row is active (``rows`` is then ``0..n-1`` in order) that tensor is ``values`` itself."""
    if len(rows) == shape[0]:
        return values
    out = torch.full(shape, fill, dtype=values.dtype, device=values.device)
    out[rows] = values
    return out


def _in_inference_mode(fn):
    """Run ``fn`` under ``torch.inference_mode`` — less bookkeeping per operation than ``no_grad``
    (about a tenth of a rollout's time on CPU, the same values) — and return its Rollout as ordinary
    tensors, which a later loss may save for its backward (an inference tensor may not be)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.inference_mode():
            out = fn(*args, **kwargs)
        return dataclasses.replace(out, **{f.name: value.clone() for f in dataclasses.fields(out)
                                           if (value := getattr(out, f.name)) is not None and value.is_inference()})
    return run


@_in_inference_mode
def sample(
    model,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    record_top_k: int = 0,
    logit_noise: float = 0.0,
    prompt_mask: Optional[torch.Tensor] = None,
    gumbel: Optional[torch.Tensor] = None,
    preallocate: bool = False,
    group: int = 1,
    lean: bool = False,
) -> Rollout:
    """Sample ``max_new_tokens`` at most per prompt: prompts of one length, or left-padded with
    ``prompt_mask`` (1 on real tokens; positions then count real tokens only, as in ``generate``).

    With ``record_top_k`` > 0, μ's log-prob of each sampled token and μ's top-K are recorded; μ is
    the distribution actually sampled from (noise and temperature included, no top-p for training);
    the sampled token is always in the recorded set. Rows that sampled the end token leave the batch
    (and the KV cache), so short responses stop costing compute.

    ``gumbel`` ([N, max_new_tokens, V], standard Gumbel noise) samples by Gumbel-max instead of
    ``torch.multinomial``: row i's token at position t is argmax(log p + gumbel[i, t]), an exact draw
    whose randomness belongs to (row, position) whatever else is in the batch — common random numbers:
    two models given the same noise make the same choice wherever their distributions nearly agree.

    ``group`` > 1: the rows come in groups of that many identical prompts (GRPO's n samples of a
    prompt); each prompt is run once and its KV cache copied to its group's rows. Same values as
    running every row up to floating-point rounding (the same samples in the tests).

    ``lean``: decode with ``harness.decode.decode_step`` where it computes exactly the model's
    forward (the harness's Qwen3 policies, rows without padding, no preallocation): the same samples
    with less Python per token.

    ``preallocate`` writes the KV cache into buffers sized for the whole generation instead of growing
    a ``DynamicCache`` by concatenation: bitwise the same samples, but through the model's forward on
    CPU it measured 0.91–0.98× the growing cache's tokens/s (``benchmarks/engine_throughput.py``), so
    it is off by default there; the lean decode step preallocates its own cache.
    """
    if record_top_k and top_p < 1.0:
        raise ValueError(f"sample: top_p={top_p} with record_top_k={record_top_k}: a nucleus renormalises the "
                         "distribution, so the recorded log-probs would not be μ = softmax(logits / temperature); "
                         "sample training rollouts at top_p=1")
    n = prompt_ids.shape[0]
    device = prompt_ids.device
    extra = {}
    if prompt_mask is not None:
        extra = {"attention_mask": prompt_mask.long(), "position_ids": positions(prompt_mask)}
    cache = preallocated_cache(prompt_ids.shape[1] + max_new_tokens) if preallocate else DynamicCache()
    heads = _group_heads(prompt_ids, prompt_mask, group)
    out = model(input_ids=prompt_ids[heads], **with_cache(model, cache), use_cache=True, logits_to_keep=1,
                **{k: v[heads] for k, v in extra.items()})
    cache, logits = out.past_key_values, out.logits[:, -1]
    if group > 1:
        cache.batch_repeat_interleave(group)
        logits = logits.repeat_interleave(group, 0)
    lean = lean and prompt_mask is None and not preallocate and decode.supports(model)
    if lean:
        cache = decode.LeanCache(cache, prompt_ids.shape[1] + max_new_tokens)
    active = torch.arange(n, device=device)  # rows still generating, in the cache's row order
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    tokens, alive, logps, top_ids, top_logps = [], [], [], [], []
    for step in range(max_new_tokens):
        logits = logits.float()
        if logit_noise > 0:
            logits = logits + logit_noise * torch.randn(logits.shape, generator=generator, device=device)
        if greedy:
            token = logits.argmax(-1)
        else:
            logp = (logits / temperature).log_softmax(-1)
            dist = _nucleus(logp, top_p) if top_p < 1.0 else logp
            if gumbel is not None:
                token = (dist + gumbel[active, step]).argmax(-1)
            else:
                token = torch.multinomial(dist.exp(), 1, generator=generator).squeeze(-1)
            if record_top_k:
                token_logp = logp.gather(-1, token[:, None]).squeeze(-1)
                top = logp.topk(record_top_k, dim=-1)
                ids, vals = insert_sampled(top.indices, (top.values,), token, (token_logp,))
                logps.append(_scatter(token_logp, active, (n,), 0.0))
                top_ids.append(_scatter(ids, active, (n, record_top_k), 0))
                top_logps.append(_scatter(vals, active, (n, record_top_k), 0.0))
        tokens.append(_scatter(token, active, (n,), pad_id))
        alive.append(_scatter(torch.ones_like(token, dtype=torch.bool), active, (n,), False))
        ended = token == eos_id
        finished[active[ended]] = True
        if bool(ended.all()) or step == max_new_tokens - 1:
            break
        if bool(ended.any()):  # finished rows leave the batch and the KV cache
            keep = (~ended).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            active, token = active[keep], token[keep]
            if extra:
                extra = {k: v[keep] for k, v in extra.items()}
        if extra:
            attention = torch.cat([extra["attention_mask"], extra["attention_mask"].new_ones(len(active), 1)], 1)
            extra = {"attention_mask": attention, "position_ids": extra["position_ids"][:, -1:] + 1}
        if lean:
            logits = decode.decode_step(model, token, cache)
        else:
            out = model(input_ids=token[:, None], **with_cache(model, cache), use_cache=True, **extra)
            cache, logits = out.past_key_values, out.logits[:, -1]
    rollout = Rollout(prompt_ids=prompt_ids, response_ids=torch.stack(tokens, 1),
                      response_mask=torch.stack(alive, 1), finished=finished)
    if record_top_k and not greedy:
        rollout.rollout_logp = torch.stack(logps, 1)
        rollout.rollout_topk_ids = torch.stack(top_ids, 1)
        rollout.rollout_topk_logp = torch.stack(top_logps, 1)
    return rollout


def response_logits(model, prompt_ids: torch.Tensor, response_ids: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits at the response positions: [N, T, V] predicting response_ids."""
    inputs = torch.cat([prompt_ids, response_ids], dim=1)
    logits = model(input_ids=inputs).logits
    p = prompt_ids.shape[1]
    return logits[:, p - 1: p - 1 + response_ids.shape[1]]


def output_layer(model):
    """The output layer's ``(weight, bias)`` (with tied embeddings the weight is the embedding matrix)."""
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def response_hidden(model, prompt_ids: torch.Tensor, response_ids: torch.Tensor) -> torch.Tensor:
    """Teacher-forced final hidden states that predict the response tokens: [N, T, H] (the
    ``response_logits`` before the output layer; for ``methods.policy_logprobs_from_hidden``)."""
    inputs = torch.cat([prompt_ids, response_ids], dim=1)
    hidden = model.base_model(input_ids=inputs).last_hidden_state
    p = prompt_ids.shape[1]
    return hidden[:, p - 1: p - 1 + response_ids.shape[1]]


def shared_prefix_hidden(model, prompt_ids: torch.Tensor, response_ids: torch.Tensor, group: int,
                         prompt_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``response_hidden`` for rows that come in groups of ``group`` identical prompts (GRPO's n
    samples of a prompt): each prompt is run once and its KV cache shared by the group's responses,
    gradients included. Same values as the full forward up to floating-point rounding; with
    ``prompt_mask`` (left padding) positions count real tokens only, as in ``sample``."""
    n = prompt_ids.shape[0]
    heads = _group_heads(prompt_ids, prompt_mask, group)
    decoder = model.base_model
    extra, after = {}, {}
    if prompt_mask is not None:
        mask = prompt_mask[heads].long()
        extra = {"attention_mask": mask, "position_ids": positions(mask)}
    out = decoder(input_ids=prompt_ids[heads], **with_cache(decoder, DynamicCache()), use_cache=True, **extra)
    cache, first = out.past_key_values, out.last_hidden_state[:, -1:]
    cache.batch_repeat_interleave(group)
    t = response_ids.shape[1]
    if prompt_mask is not None:
        mask = prompt_mask.long()
        start = mask.sum(-1, keepdim=True)
        after = {"attention_mask": torch.cat([mask, mask.new_ones(n, t - 1)], 1),
                 "position_ids": start + torch.arange(t - 1, device=mask.device)}
    rest = decoder(input_ids=response_ids[:, :-1], **with_cache(decoder, cache), use_cache=True,
                   **after).last_hidden_state
    return torch.cat([first.repeat_interleave(group, 0), rest], 1)

