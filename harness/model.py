"""Character tokenizer built in code and a Qwen3 policy from a transformers config (random init)."""

from __future__ import annotations

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from methods.seeds import derive_seed

from .runconfig import ModelSize  # noqa: F401 - the sizes a model is built from

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


class CharTokenizer:
    """Ids: 0 pad, 1 bos, 2 eos, then one id per character of ``chars`` (a local task's alphabet)."""

    def __init__(self, chars: str):
        self.chars = chars
        self.itos = [PAD, BOS, EOS] + list(chars)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the tokenizer's alphabet {self.chars!r}") from None

    def decode(self, ids) -> str:
        """Text up to (not including) the first end token; special tokens dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i > self.eos_id:
                out.append(self.itos[i])
        return "".join(out)


def build_model(size, vocab_size: int, max_positions: int, seed: int) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=size.hidden, intermediate_size=size.mlp,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        head_dim=size.hidden // size.heads, max_position_embeddings=max_positions,
        tie_word_embeddings=True, rope_theta=10000.0, attention_dropout=0.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(derive_seed("model_init", seed))
    model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = 0
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
