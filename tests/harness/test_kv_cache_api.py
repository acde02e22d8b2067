"""The sampler hands its KV cache to the model under the keyword this transformers version reads
(``cache`` in recent releases, ``past_key_values`` in 5.10.x, verl's pin): its greedy output equals
``model.generate``'s. CI runs this file under both (the main environment and the verl one)."""

import pytest
import torch

from harness.model import CharTokenizer, ModelSize, build_model
from harness.rollout import sample, with_cache
from harness.tasks.addition import ALPHABET


def _context_dependent_model(tok):
    """A random model whose greedy tokens vary with the context (at the default initialisation it
    repeats one token, which a decode without the cache would repeat too)."""
    model = build_model(ModelSize(32, 2, 64, 2, 1), tok.vocab_size, 64, seed=1).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (0.6 if p.dim() > 1 else 0.1) + (p.dim() == 1))
    return model


@pytest.mark.parametrize("preallocate", [False, True])
@pytest.mark.parametrize("group", [1, 3])
def test_greedy_samples_equal_model_generate(preallocate, group, device):
    tok = CharTokenizer(ALPHABET)
    model = _context_dependent_model(tok).to(device)
    prompts = torch.tensor([[tok.bos_id] + tok.encode("47+85=")] * 3 + [[tok.bos_id] + tok.encode("10+99=")] * 3)
    prompts = prompts.to(device)
    roll = sample(model, prompts, 24, tok.eos_id, tok.pad_id, torch.Generator(device).manual_seed(0), greedy=True,
                  preallocate=preallocate, group=group)
    with torch.no_grad():
        reference = model.generate(prompts, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_id,
                                   pad_token_id=tok.pad_id)[:, prompts.shape[1]:]
    for row in range(prompts.shape[0]):
        n = int(roll.response_mask[row].sum())
        assert roll.response_ids[row, :n].tolist() == reference[row, :n].tolist()
    assert len(set(reference.flatten().tolist())) >= 4  # tokens that depend on their context


def test_the_keyword_follows_the_installed_forward_and_unwraps_wrappers():
    tok = CharTokenizer(ALPHABET)
    model = build_model(ModelSize(32, 2, 64, 2, 1), tok.vocab_size, 64, seed=1)
    (keyword,) = with_cache(model, None)
    assert keyword in ("cache", "past_key_values")

    class Wrapper(torch.nn.Module):  # as DDP wraps a model: forward(*args, **kwargs), the model in .module
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    assert tuple(with_cache(Wrapper(model), None)) == (keyword,)

    class Unknown(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            return input_ids

    with pytest.raises(TypeError, match="neither 'cache' nor 'past_key_values'"):
        with_cache(Unknown(), None)


def test_rows_per_chunk_follow_the_kv_budget_in_whole_groups():
    from transformers import Qwen3Config

    from harness.rollout import chunk_rows, kv_bytes_per_row

    # Qwen3-8B at 16k tokens in bf16: 36 layers × 8 KV heads × 128 × 2 (K, V) × 2 bytes = 144 KiB a position
    config = Qwen3Config(num_hidden_layers=36, num_key_value_heads=8, num_attention_heads=32, head_dim=128,
                         hidden_size=4096)
    row = kv_bytes_per_row(config, 16384, torch.bfloat16)
    assert row == 36 * 8 * 128 * 2 * 2 * 16384
    assert chunk_rows(64, 8, row, 24 * 2**30) == 8  # 10 rows fit 24 GiB: one group of 8
    assert chunk_rows(64, 1, row, 24 * 2**30) == 10
    assert chunk_rows(64, 16, row, 24 * 2**30) == 16  # never less than one group
    assert chunk_rows(4, 1, 1, 1e12) == 4


@pytest.mark.parametrize("left_padded", [False, True])
def test_chunked_generation_equals_one_call_where_the_draw_belongs_to_the_row(left_padded, device):
    from harness.rollout import kv_bytes_per_row, left_pad, sample_in_chunks

    tok = CharTokenizer(ALPHABET)
    model = _context_dependent_model(tok).to(device)
    texts = ["47+85=", "1+2=", "10+99=", "5+5=", "123+4=", "9+90="]
    if left_padded:
        prompts, mask = left_pad([[tok.bos_id] + tok.encode(t) for t in texts], tok.pad_id)
        mask = mask.to(device)
    else:
        prompts, mask = torch.tensor([[tok.bos_id] + tok.encode(t[:4]) for t in texts]), None
    prompts = prompts.to(device)
    row = kv_bytes_per_row(model.config, prompts.shape[1] + 20, torch.float32)
    noise = -torch.log(-torch.log(torch.rand(6, 20, tok.vocab_size, generator=torch.Generator().manual_seed(5))))
    noise = noise.to(device)
    for options in ({"greedy": True}, {"gumbel": noise, "record_top_k": 3}):
        one = sample(model, prompts, 20, tok.eos_id, tok.pad_id, torch.Generator(device).manual_seed(0),
                     prompt_mask=mask, **options)
        chunked = sample_in_chunks(model, prompts, 20, tok.eos_id, tok.pad_id, torch.Generator(device).manual_seed(0),
                                   kv_budget_bytes=2.5 * row, prompt_mask=mask, **options)  # 2 rows a chunk
        width = one.response_ids.shape[1]
        assert chunked.response_ids.shape[1] == width
        for name in ("response_ids", "response_mask", "finished", "rollout_topk_ids"):
            a, b = getattr(one, name), getattr(chunked, name)
            assert (a is None and b is None) or torch.equal(a, b), name
        for name in ("rollout_logp", "rollout_topk_logp"):  # a matrix product's rounding depends on its rows
            a, b = getattr(one, name), getattr(chunked, name)
            assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-5, atol=1e-4), name


# The attention shapes of the hub models the shipped settings name (their config.json on the hub; the tests
# cannot download them): layers, KV heads, head size.
HUB_SHAPES = {"Qwen/Qwen3-1.7B": (28, 8, 128), "Qwen/Qwen3-1.7B-Base": (28, 8, 128),
              "Qwen/Qwen3-8B-Base": (36, 8, 128), "Qwen/Qwen3-30B-A3B-Base": (48, 4, 128)}
PROMPT_TOKENS = 2048  # a generous prompt: DAPO-Math prompts are a few hundred tokens


def test_every_shipped_setting_generates_within_an_80_gb_card():
    """Each shipped setting on a hub model generates in chunks of at least one row whose KV cache fits
    engine.kv_cache_gb, and that budget leaves most of an 80 GB card to the weights (rows counted at the
    master weights' dtype, fp32, as the sampler does: twice the bf16 cache)."""
    from transformers import Qwen3Config

    from harness.config import available, compose, resolve
    from harness.rollout import chunk_rows, kv_bytes_per_row

    checked = []
    for name in available("setting"):
        spec = resolve(compose([f"setting={name}"]))
        if getattr(spec.model, "source", None) != "hub":
            continue
        assert spec.model.name_or_path in HUB_SHAPES, f"setting {name}: add {spec.model.name_or_path}'s shape"
        layers, kv_heads, head_dim = HUB_SHAPES[spec.model.name_or_path]
        config = Qwen3Config(num_hidden_layers=layers, num_key_value_heads=kv_heads, head_dim=head_dim,
                             num_attention_heads=kv_heads * 4, hidden_size=kv_heads * 4 * head_dim)
        row = kv_bytes_per_row(config, PROMPT_TOKENS + spec.rl.max_response_tokens, torch.float32)
        budget = spec.engine.kv_cache_gb * 2**30
        rows = spec.rl.prompts_per_iter * spec.rl.samples_per_prompt // spec.engine.num_processes
        chunk = chunk_rows(rows, 1, row, budget)
        assert chunk >= 1 and chunk * row <= budget <= 40 * 2**30, (name, chunk, row / 2**30)
        checked.append(name)
    assert {"qwen3_1p7b", "qwen3_1p7b_base", "qwen3_8b_base", "qwen3_30b_a3b_base"} <= set(checked)
