"""A lean decode step for the harness's own Qwen3 policies: the same modules and kernels as the
transformers forward, without its per-call machinery.

On the embedded task a decode step is a 64-row, one-token forward of a 1M-parameter model, so the
Python around the kernels — keyword-argument deprecation wrappers, output capturing, mask building,
cache dispatch — costs about as much as the arithmetic. ``decode_step`` calls the model's own
submodules (norms, projections, rotary embedding, MLP, output layer: their hooks still run) and the
transformers SDPA attention function in the order ``Qwen3ForCausalLM.forward`` does, so the logits
are the same (``tests/harness/test_rollout.py`` compares the samples bitwise). Its KV cache is
preallocated for the whole generation and written in place: growing it by concatenation, as
``DynamicCache`` does, copied the whole cache and allocated a fresh, larger block at every layer of
every token: 37 % of the held-out evaluation's time on CPU (its batches are large), less in a
rollout. The attention reads a view of the filled positions, which the SDPA kernel computes bitwise
as it computes a contiguous copy. It covers what the local engine samples: rows without padding,
full attention, the sdpa implementation; anything else goes through the model's forward.
"""

from __future__ import annotations

import torch
from transformers import Qwen3ForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb


def supports(model) -> bool:
    """Whether ``decode_step`` computes exactly what ``model``'s forward would."""
    config = model.config
    return (type(model) is Qwen3ForCausalLM and config._attn_implementation == "sdpa"
            and all(t == "full_attention" for t in config.layer_types) and not config.attention_dropout)


class LeanCache:
    """Per layer the keys and values of every position so far, ``[rows, kv_heads, length, head_dim]``
    views into buffers that hold ``capacity`` positions (prompt + every new token)."""

    def __init__(self, cache, capacity: int):
        rows, heads, self.length, _ = cache.layers[0].keys.shape
        if capacity < self.length:
            raise ValueError(f"LeanCache: capacity {capacity} is below the {self.length} cached positions")
        self._keys, self._values = [], []
        for layer in cache.layers:
            for source, buffers in ((layer.keys, self._keys), (layer.values, self._values)):
                buffer = source.new_empty(rows, heads, capacity, source.shape[-1])
                buffer[:, :, : self.length] = source
                buffers.append(buffer)

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new position ``[rows, kv_heads, 1, head_dim]`` of ``layer``; its keys and values so far."""
        end = self.length + 1
        if end > self._keys[layer].shape[2]:
            raise RuntimeError(f"LeanCache: {end} positions requested, its buffers hold {self._keys[layer].shape[2]}")
        self._keys[layer][:, :, self.length:end] = key
        self._values[layer][:, :, self.length:end] = value
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def advance(self) -> None:
        """Every layer has its new position: the next token goes after it."""
        self.length += 1

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        self._keys = [k[rows] for k in self._keys]
        self._values = [v[rows] for v in self._values]


def decode_step(model, token: torch.Tensor, cache: LeanCache) -> torch.Tensor:
    """The next-token logits [rows, V] after appending ``token`` [rows] to every row."""
    base = model.model
    hidden = base.embed_tokens(token[:, None])
    position = torch.tensor([[cache.length]], device=token.device)
    cos, sin = base.rotary_emb(hidden, position)
    rows = token.shape[0]
    for i, layer in enumerate(base.layers):
        attn = layer.self_attn
        residual = hidden
        x = layer.input_layernorm(hidden)
        heads = (rows, 1, -1, attn.head_dim)
        q = attn.q_norm(attn.q_proj(x).view(heads)).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x).view(heads)).transpose(1, 2)
        v = attn.v_proj(x).view(heads).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys, values = cache.append(i, k, v)
        out, _ = sdpa_attention_forward(attn, q, keys, values, None, dropout=0.0, scaling=attn.scaling)
        hidden = residual + attn.o_proj(out.reshape(rows, 1, -1).contiguous())
        residual = hidden
        hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
    cache.advance()
    return model.lm_head(base.norm(hidden))[:, -1]
