"""A lean decode step for the harness's own Qwen3 policies: the same modules and kernels as the
transformers forward, without its per-call machinery.

On the embedded task a decode step is a 64-row, one-token forward of a 1M-parameter model, so the
Python around the kernels — keyword-argument deprecation wrappers, output capturing, mask building,
cache dispatch — costs about as much as the arithmetic. ``decode_step`` calls the model's own
submodules (norms, projections, rotary embedding, MLP, output layer: their hooks still run) and the
transformers SDPA attention function in the order ``Qwen3ForCausalLM.forward`` does, on a KV cache
grown by concatenation as ``DynamicCache`` grows it, so the logits are the same
(``tests/harness/test_rollout.py`` compares the samples bitwise). It covers what the local engine
samples: rows without padding, full attention, the sdpa implementation; anything else goes through
the model's forward.
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
    """Per layer the keys and values of every position so far, ``[rows, kv_heads, length, head_dim]``."""

    def __init__(self, cache):
        self.keys = [layer.keys for layer in cache.layers]
        self.values = [layer.values for layer in cache.layers]

    @property
    def length(self) -> int:
        return self.keys[0].shape[-2]

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]


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
        cache.keys[i] = torch.cat([cache.keys[i], k], dim=-2)
        cache.values[i] = torch.cat([cache.values[i], v], dim=-2)
        out, _ = sdpa_attention_forward(attn, q, cache.keys[i], cache.values[i], None, dropout=0.0,
                                        scaling=attn.scaling)
        hidden = residual + attn.o_proj(out.reshape(rows, 1, -1).contiguous())
        residual = hidden
        hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
    return model.lm_head(base.norm(hidden))[:, -1]
