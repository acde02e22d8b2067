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
def test_greedy_samples_equal_model_generate(preallocate, group):
    tok = CharTokenizer(ALPHABET)
    model = _context_dependent_model(tok)
    prompts = torch.tensor([[tok.bos_id] + tok.encode("47+85=")] * 3 + [[tok.bos_id] + tok.encode("10+99=")] * 3)
    roll = sample(model, prompts, 24, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(0), greedy=True,
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
