"""Training logits → π's log-probs at the sampled tokens (with gradient) and at μ's top-K ids.

A full ``log_softmax`` would allocate a second fp32 ``[B, T, V]`` tensor (2 GiB at B=4, T=4096,
V=32768), and the Top-K divergence would want a third. Here one log-normaliser per chunk of tokens
serves both gathers, so the extra memory is one ``[chunk, V]`` temporary; the backward pass
recomputes the softmax chunk by chunk instead of saving it.
"""

from __future__ import annotations

from typing import Optional

import torch

# Tokens per chunk: on CPU a [32, V] fp32 chunk stays near the caches (measured fastest of 16–256 at
# V = 32768); on GPU larger chunks amortise kernel launches.
DEFAULT_CHUNK = {"cpu": 32, "cuda": 1024}


def _chunks(batch: int, length: int, chunk: int):
    for b in range(batch):
        for start in range(0, length, chunk):
            yield b, start, min(start + chunk, length)


class _SelectedLogProbs(torch.autograd.Function):
    """log softmax(logits / temperature) gathered at ``ids``, computed per chunk of tokens."""

    @staticmethod
    def forward(ctx, logits, ids, temperature, chunk, topk_ids, with_entropy):
        batch, length, _ = logits.shape
        logp = torch.empty(batch, length, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else None
        topk = None
        if topk_ids is not None:
            topk = torch.empty(topk_ids.shape, dtype=torch.float32, device=logits.device)
        with torch.no_grad():
            for b, s, e in _chunks(batch, length, chunk):
                x = logits[b, s:e].float()
                if temperature != 1.0:
                    x = x / temperature
                norm = torch.logsumexp(x, dim=-1)
                lse[b, s:e] = norm
                logp[b, s:e] = x.gather(-1, ids[b, s:e, None]).squeeze(-1) - norm
                if topk is not None:
                    topk[b, s:e] = x.gather(-1, topk_ids[b, s:e]) - norm[:, None]
                if entropy is not None:  # H = lse − Σ p·x
                    entropy[b, s:e] = norm - ((x - norm[:, None]).exp() * x).sum(-1)
        ctx.save_for_backward(logits, ids, lse)
        ctx.temperature = temperature
        ctx.chunk = chunk
        ctx.mark_non_differentiable(*[t for t in (topk, entropy) if t is not None])  # one call: it replaces
        return logp, topk, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_topk, _grad_entropy):
        logits, ids, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        batch, length, _ = logits.shape
        in_place = grad.dtype == torch.float32
        # d logp_t / d logit_v = (1[v = y_t] − softmax_v) / temperature, written chunk by chunk
        # straight into the gradient buffer when it is fp32 (no extra chunk copy)
        for b, s, e in _chunks(batch, length, ctx.chunk):
            g = grad_logp[b, s:e].float()
            x = logits[b, s:e].float()
            if ctx.temperature != 1.0:
                x = x / ctx.temperature
            out = grad[b, s:e] if in_place else torch.empty_like(x)
            torch.sub(x, lse[b, s:e, None], out=out)
            out.exp_().mul_(-g[:, None])
            out.scatter_add_(-1, ids[b, s:e, None], g[:, None])
            if ctx.temperature != 1.0:
                out.div_(ctx.temperature)
            if not in_place:
                grad[b, s:e] = out
        return grad, None, None, None, None, None


def check_token_inputs(lead: tuple, response_ids, topk_ids, temperature) -> None:
    """The per-token inputs of both log-prob paths against their [B, T]; errors name the argument."""
    if tuple(response_ids.shape) != lead:
        raise ValueError(f"response_ids has shape {tuple(response_ids.shape)}, expected {lead}")
    if topk_ids is not None and (topk_ids.dim() != 3 or tuple(topk_ids.shape[:2]) != lead):
        raise ValueError(f"topk_ids must be [B, T, K] with [B, T]={lead}, got {tuple(topk_ids.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def policy_logprobs_from_logits(
    logits: torch.Tensor,
    response_ids: torch.Tensor,
    topk_ids: Optional[torch.Tensor] = None,
    *,
    temperature: float = 1.0,
    chunk_size: Optional[int] = None,
    with_entropy: bool = False,
):
    """π's log-probs from training logits without materialising a ``[B, T, V]`` log-softmax.

    Returns ``(logp, topk_logp)``: ``logp`` ``[B, T]`` fp32 at ``response_ids`` with gradient to
    ``logits``; ``topk_logp`` ``[B, T, K]`` fp32 at ``topk_ids`` (no gradient), or None.
    ``temperature`` divides the logits chunk by chunk (rollout and trainer temperatures must match).
    ``chunk_size`` tokens are normalised at a time (default: 32 on CPU, 1024 on GPU). With
    ``with_entropy`` a third value is returned: the entropy [B, T] of π (no gradient).
    Without a ``[B, T, V]`` tensor at all: ``methods.policy_logprobs_from_hidden``.
    """
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK.get(logits.device.type, DEFAULT_CHUNK["cuda"])
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    check_token_inputs(tuple(logits.shape[:2]), response_ids, topk_ids, temperature)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    ids = response_ids.long()
    topk = None if topk_ids is None else topk_ids.long()
    logp, topk_logp, entropy = _SelectedLogProbs.apply(logits, ids, float(temperature), int(chunk_size), topk,
                                                       with_entropy)
    return (logp, topk_logp, entropy) if with_entropy else (logp, topk_logp)
