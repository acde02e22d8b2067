"""Final hidden states + ``lm_head`` → π's log-probs, without ever forming the ``[B, T, V]`` logits.

At the paper's scale (16k-token responses, a 151,936-token vocabulary) one micro-batch of logits is
~10 GB in fp32 — the memory that decides how long a response fits. Here the logits exist one tile
of ``token_chunk × vocab_chunk`` at a time: the forward pass keeps a running log-normaliser per
token (an online logsumexp over vocabulary tiles) and picks the logits at the sampled ids and at μ's
top-K ids as their tiles go by; the backward pass recomputes each tile and turns it straight into
its share of the hidden-state, weight and bias gradients. The price is one more vocabulary-sized
matrix product (four instead of three): no exact method with bounded memory can avoid it when the
gradient of a token's log-prob is known only after the whole response has been seen (CPPO's prefix
budget, TRM's sequence test), because that gradient multiplies the token's full softmax.

The logits of a tile are computed exactly as the model's ``lm_head`` would (``F.linear`` in the
weight's dtype, then fp32), so values and gradients match ``policy_logprobs_from_logits`` on the
materialised logits up to the order of floating-point sums.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .logits import check_token_inputs

# (tokens, vocabulary entries) per tile: on CPU an fp32 tile of 2048 × 512 (4 MiB) keeps the matrix
# products compute-bound (tall token tiles measured fastest of 256–4096 × 512–8192 at H = 1024,
# V = 32768) while the temporaries stay far below the logits; on GPU larger tiles.
DEFAULT_TILE = {"cpu": (2048, 512), "cuda": (4096, 8192)}


def _tile_logits(h, weight, bias, v0, v1, temperature, dtype=None):
    b = None if bias is None else bias[v0:v1]
    if dtype is None:
        x = F.linear(h, weight[v0:v1], b).float()
    else:  # the product in ``dtype`` as autocast computes it, in forward and backward alike
        with torch.autocast(h.device.type, enabled=False):
            x = F.linear(h.to(dtype), weight[v0:v1].to(dtype), None if b is None else b.to(dtype)).float()
    return x / temperature if temperature != 1.0 else x


def _pick(x, ids, v0, current):
    """``current`` with the entries whose id falls in this tile [v0, v0 + width) replaced by x[id]."""
    local = ids - v0
    inside = (local >= 0) & (local < x.shape[1])
    picked = x.gather(1, local.clamp(0, x.shape[1] - 1))
    return torch.where(inside, picked, current)


def _row_tiles(selected, rows: int, token_chunk: int):
    """Selections of at most ``token_chunk`` of ``rows`` rows: slices when every row is selected (no
    copy), index tensors of the selected rows otherwise; ``selected`` None selects every row."""
    if selected is None or bool(selected.all()):
        yield from (slice(r0, min(r0 + token_chunk, rows)) for r0 in range(0, rows, token_chunk))
        return
    chosen = selected.nonzero().squeeze(1)
    yield from (chosen[r0:r0 + token_chunk] for r0 in range(0, len(chosen), token_chunk))


def _count(rows) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def _accumulate(out, a, b):
    """out += a @ b, in place when the dtypes agree (fp32), else through one product in a's dtype."""
    if out.dtype == a.dtype == b.dtype:
        out.addmm_(a, b)
    else:
        out.add_((a @ b).float())


class _FusedSelectedLogProbs(torch.autograd.Function):
    """log softmax((hidden @ weightᵀ + bias) / temperature) at ``ids`` (and ``topk_ids``), tile by tile."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, valid, temperature, tiles, topk_ids, with_entropy, dtype):
        flat = hidden.reshape(-1, hidden.shape[-1])
        n, vocab = flat.shape[0], weight.shape[0]
        token_chunk, vocab_chunk = tiles
        zeros = dict(dtype=torch.float32, device=hidden.device)
        lead = hidden.shape[:-1]
        lse, picked = torch.zeros(n, **zeros), torch.zeros(n, 1, **zeros)
        # outputs in their final shape (custom-function outputs must not be views), written through flat views
        topk_out = None if topk_ids is None else torch.zeros(*lead, topk_ids.shape[-1], **zeros)
        entropy_out = torch.zeros(lead, **zeros) if with_entropy else None
        topk = None if topk_out is None else topk_out.view(-1, topk_ids.shape[-1])
        entropy = None if entropy_out is None else entropy_out.view(-1)
        with torch.no_grad():
            for rows in _row_tiles(valid, n, token_chunk):
                h, count = flat[rows], _count(rows)
                peak = torch.full((count,), float("-inf"), **zeros)
                mass, moment = torch.zeros(count, **zeros), torch.zeros(count, **zeros)  # moment: Σ e^(x−peak)·x
                row_picked = picked[rows]
                row_top = None if topk is None else topk[rows]
                for v0 in range(0, vocab, vocab_chunk):
                    x = _tile_logits(h, weight, bias, v0, min(v0 + vocab_chunk, vocab), temperature, dtype)
                    new_peak = torch.maximum(peak, x.max(1).values)
                    rescale = (peak - new_peak).exp()
                    e = (x - new_peak[:, None]).exp_()
                    mass = mass * rescale + e.sum(1)
                    if with_entropy:
                        moment = moment * rescale + e.mul_(x).sum(1)
                    peak = new_peak
                    row_picked = _pick(x, ids[rows, None], v0, row_picked)
                    if row_top is not None:
                        row_top = _pick(x, topk_ids[rows], v0, row_top)
                norm = peak + mass.log()
                lse[rows], picked[rows] = norm, row_picked
                if row_top is not None:
                    topk[rows] = row_top - norm[:, None]
                if with_entropy:
                    entropy[rows] = norm - moment / mass
        ctx.save_for_backward(hidden, weight, bias, ids, lse)
        ctx.temperature, ctx.tiles, ctx.dtype = temperature, tiles, dtype
        logp = (picked.squeeze(1) - lse).reshape(lead)  # 0 at rows left out by ``valid``: both are 0 there
        ctx.mark_non_differentiable(*[t for t in (topk_out, entropy_out) if t is not None])  # one call: it replaces
        return logp, topk_out, entropy_out

    @staticmethod
    def backward(ctx, grad_logp, _grad_topk, _grad_entropy):
        hidden, weight, bias, ids, lse = ctx.saved_tensors
        temperature, (token_chunk, vocab_chunk) = ctx.temperature, ctx.tiles
        flat = hidden.reshape(-1, hidden.shape[-1])
        g_all = grad_logp.reshape(-1).float()
        n, vocab = flat.shape[0], weight.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(flat) if need_h else None
        # fp32 accumulators across token tiles (bf16 weights would lose the small contributions)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if need_b and bias is not None else None
        for rows in _row_tiles(g_all != 0, n, token_chunk):  # tokens without gradient (padding) are skipped
            h, g, token_ids, norm = flat[rows], g_all[rows], ids[rows, None], lse[rows, None]
            gh = torch.zeros(_count(rows), flat.shape[1], dtype=torch.float32, device=flat.device) if need_h else None
            for v0 in range(0, vocab, vocab_chunk):
                v1 = min(v0 + vocab_chunk, vocab)
                # d logp / d x_v = (1[v = y] − softmax_v) / temperature, x the tile's logits
                tile = _tile_logits(h, weight, bias, v0, v1, temperature, ctx.dtype).sub_(norm).exp_().mul_(-g[:, None])
                local = token_ids - v0
                inside = (local >= 0) & (local < v1 - v0)
                tile.scatter_add_(1, local.clamp(0, v1 - v0 - 1), torch.where(inside, g[:, None], 0.0))
                if temperature != 1.0:
                    tile.div_(temperature)
                grad_x = tile.to(weight.dtype)  # the logits' gradient in the model's dtype, as autograd has it
                if gh is not None:
                    _accumulate(gh, grad_x, weight[v0:v1])
                if grad_w is not None:
                    _accumulate(grad_w[v0:v1], grad_x.t(), h)
                if grad_b is not None:
                    grad_b[v0:v1].add_(tile.sum(0))
            if grad_h is not None:
                grad_h[rows] = gh.to(grad_h.dtype)
        return (None if grad_h is None else grad_h.view(hidden.shape),
                None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None, None, None, None)


def policy_logprobs_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    response_ids: torch.Tensor,
    topk_ids: Optional[torch.Tensor] = None,
    *,
    bias: Optional[torch.Tensor] = None,
    response_mask: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    tiles: Optional[tuple[int, int]] = None,
    with_entropy: bool = False,
    matmul_dtype: Optional[torch.dtype] = None,
):
    """π's log-probs from the final hidden states and the output layer, never forming ``[B, T, V]``.

    ``hidden`` [B, T, H] are the states that predict ``response_ids`` [B, T] (after the final norm);
    ``weight`` [V, H] and ``bias`` [V] the output layer (with tied embeddings: the embedding matrix —
    its gradient then adds to the embedding's). Returns ``(logp, topk_logp)`` like
    :func:`policy_logprobs_from_logits` — ``logp`` [B, T] fp32 with gradient to ``hidden``,
    ``weight`` and ``bias``; ``topk_logp`` [B, T, K] at ``topk_ids`` (no gradient) or None — plus the
    entropy [B, T] (no gradient) when ``with_entropy``. With ``response_mask`` [B, T] only its
    positions are computed (the rest are 0: padding costs nothing). ``tiles`` = (tokens, vocabulary entries) per
    tile (default: 2048 × 512 on CPU, 4096 × 8192 on GPU). ``matmul_dtype``: the dtype of the output
    layer's product (default: as the ambient autocast or the weight's dtype decide); under mixed
    precision give the autocast dtype, so that π is computed as the forward that sampled μ computed it
    (an on-policy ratio is then 1 up to that dtype's rounding, as on the logits path).
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, H] with H={hidden.shape[-1]}, got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [V]=({weight.shape[0]},), got shape {tuple(bias.shape)}")
    check_token_inputs(tuple(hidden.shape[:2]), response_ids, topk_ids, temperature)
    tiles = tuple(tiles or DEFAULT_TILE.get(hidden.device.type, DEFAULT_TILE["cuda"]))
    if len(tiles) != 2 or min(tiles) < 1:
        raise ValueError(f"tiles must be two positive integers (tokens, vocabulary entries), got {tiles!r}")
    if response_mask is not None and tuple(response_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"response_mask has shape {tuple(response_mask.shape)}, expected {tuple(hidden.shape[:2])}")
    ids = response_ids.reshape(-1).long()
    valid = None if response_mask is None else response_mask.reshape(-1).bool()
    topk = None if topk_ids is None else topk_ids.reshape(-1, topk_ids.shape[-1]).long()
    logp, topk_logp, entropy = _FusedSelectedLogProbs.apply(hidden, weight, bias, ids, valid, float(temperature),
                                                            tiles, topk, with_entropy, matmul_dtype)
    return (logp, topk_logp, entropy) if with_entropy else (logp, topk_logp)
