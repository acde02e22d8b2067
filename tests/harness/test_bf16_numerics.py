"""π and μ in the same numerics under bf16 mixed precision (accelerate's autocast; on the CPU, or on
``--trh-device``): on an
on-policy batch the ratio π/μ is 1 up to bf16's rounding on both the logits path and the fused
hidden-state path; the fused path computed in fp32 against a bf16 μ is the fake off-policy gap."""

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from harness.engines.trl_trainer import autocast_dtype
from harness.model import CharTokenizer, ModelSize, build_model
from harness.rollout import sample
from harness.tasks.addition import ALPHABET
from methods import policy_logprobs_from_hidden, policy_logprobs_from_logits


def spread(logp, mu, mask):
    return float((logp - mu).exp()[mask].sub(1).abs().max())


@pytest.mark.parametrize("hidden", [32, 128])
def test_on_policy_ratio_is_one_up_to_bf16_rounding_on_both_paths(hidden, device):
    tok = CharTokenizer(ALPHABET)
    accelerator = Accelerator(mixed_precision="bf16", cpu=device.type == "cpu")
    model = accelerator.prepare(build_model(ModelSize(hidden, 2, 2 * hidden, 2, 1), tok.vocab_size, 64, seed=0))
    prompts = torch.tensor([[tok.bos_id] + tok.encode("12+34=")] * 16).to(accelerator.device)
    roll = sample(model, prompts, 24, tok.eos_id, tok.pad_id, torch.Generator(accelerator.device).manual_seed(0),
                  record_top_k=1)
    ids, mask, mu = roll.response_ids, roll.response_mask, roll.rollout_logp
    with torch.no_grad():
        out = model(input_ids=torch.cat([prompts, ids], 1), output_hidden_states=True)
    states, n = out.hidden_states[-1][:, -(ids.shape[1] + 1):-1], ids.shape[1]
    dtype = autocast_dtype(accelerator)
    assert dtype is torch.bfloat16
    on_logits = policy_logprobs_from_logits(out.logits[:, -(n + 1):-1], ids, None)[0]
    fused = policy_logprobs_from_hidden(states, model.lm_head.weight, ids, None, response_mask=mask,
                                        matmul_dtype=dtype)[0]
    fp32 = policy_logprobs_from_hidden(states, model.lm_head.weight, ids, None, response_mask=mask)[0]
    assert spread(on_logits, mu, mask) < 2 ** -7  # bf16 keeps 8 bits: the sampler's cached decode rounds otherwise
    assert spread(fused, mu, mask) <= 2 * spread(on_logits, mu, mask)
    # the fused path now is the logits path's computation; in fp32 it was another one, off by bf16's rounding
    assert float((fused - on_logits)[mask].abs().max()) <= 1e-5
    assert float((fp32 - on_logits)[mask].abs().max()) > 1e-4

def test_the_fused_product_in_bf16_equals_the_bf16_logits_in_value_and_gradient(device):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 16, generator=g).to(device).requires_grad_(True)
    w = torch.randn(40, 16, generator=g).mul(0.3).to(device).requires_grad_(True)
    ids = torch.randint(0, 40, (3, 5), generator=g).to(device)
    fused, _ = policy_logprobs_from_hidden(h, w, ids, None, tiles=(4, 16), matmul_dtype=torch.bfloat16)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits = F.linear(h, w)
    reference, _ = policy_logprobs_from_logits(logits.float(), ids, None)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-6)
    upstream = torch.randn(3, 5, generator=g).to(device)
    got = torch.autograd.grad((fused * upstream).sum(), (h, w))
    want = torch.autograd.grad((reference * upstream).sum(), (h, w))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)  # bf16 products on both sides, other orders
