"""The fused hidden-state → loss path against the materialised-logits path: values and gradients of
every registry method (Top-K and binary divergences), tied and untied output layers, a bias."""

import pytest
import torch
import torch.nn.functional as F

from methods import (LossTotals, PolicyBatch, get_method, list_methods, method_names, policy_logprobs_from_hidden,
                     policy_logprobs_from_logits)
from tests.methods.helpers import tunable

B, T, H, V, K = 3, 11, 8, 40, 5
TILES = (4, 16)  # several tiles along both axes


def _takes_divergence(name):
    return any(p["name"] == "divergence" for m in list_methods() if m["name"] == name for p in m["params"])


# thresholds at the scale of these batches' drift, so that every rule binds on some tokens (the
# default thresholds are for real models and would keep every token here); binary divergences are
# smaller than Top-K ones, so they get smaller thresholds. Both tests below are deterministic.
BINDING = {"grpo": dict(eps_low=0.02, eps_high=0.02), "cispo": dict(cap=1.02), "minpro": dict(cap=1.02),
           "dppo": dict(delta=0.01), "trm_max": dict(delta_max=0.0015), "trm_avg": dict(delta_avg=0.0007),
           "trm_max_avg": dict(delta_max=0.0015, delta_avg=0.0007), "gspo": dict(eps_low=0.002, eps_high=0.002),
           "opsm": dict(eps_low=0.02, eps_high=0.02, delta=0.001), "sapo": dict(temperature_pos=20.0, temperature_neg=20.0),
           "drpo": dict(eps=0.05), "prime_dppo": dict(delta=0.001), "dro": dict(beta=5.0),
           **{name: dict(delta=0.01, delta_b=0.0015) for name in method_names() if name.startswith("cppo")}}
BINARY = {"dppo": dict(delta=0.001), "prime_dppo": dict(delta=0.001), "trm_max": dict(delta_max=0.0025), "trm_avg": dict(delta_avg=0.001),
          "trm_max_avg": dict(delta_max=0.004, delta_avg=0.001),
          **{name: dict(delta=0.001, delta_b=0.00015) for name in method_names() if name.startswith("cppo")}}


def _method(name, divergence=None):
    params = {"horizon": T, **(BINARY if divergence else BINDING).get(name, {})}
    if _takes_divergence(name):
        params["top_k"] = K
    if divergence:
        params["divergence"] = divergence
    return get_method(name, **params)


CASES = [(name, None) for name in method_names()] + [
    (name, "binary_tv") for name in method_names() if tunable(name, "divergence")]


class TinyLM(torch.nn.Module):
    """Embedding → one mixing layer → output layer (tied to the embedding, or its own with a bias)."""

    def __init__(self, tied: bool, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(0.5 * torch.randn(V, H, generator=g))
        self.mix = torch.nn.Parameter(torch.randn(H, H, generator=g) / H ** 0.5)
        self.tied = tied
        if not tied:
            self.out = torch.nn.Parameter(torch.randn(V, H, generator=g) / H ** 0.5)
            self.bias = torch.nn.Parameter(torch.randn(V, generator=g) * 0.1)

    def head(self):
        return (self.embed, None) if self.tied else (self.out, self.bias)

    def hidden(self, ids):
        return torch.tanh(self.embed[ids] @ self.mix)


def _rollout(model, seed: int = 1, device=torch.device("cpu")):
    """μ: ``model``'s distribution with noisy logits (an inference engine); sampled ids, μ's top-K, a
    ragged mask. Then ``model`` takes a step away from μ, so masks and clips bind on some tokens.
    Made on the CPU (``model`` too, there), then the model and the tensors go to ``device``."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, V, (B, T), generator=g)
    with torch.no_grad():
        weight, bias = model.head()
        mu = (F.linear(model.hidden(inputs), weight, bias) + 0.05 * torch.randn(B, T, V, generator=g)).log_softmax(-1)
        model.mix.add_(0.05 * torch.randn(H, H, generator=g))
    ids = torch.multinomial(mu.exp().reshape(-1, V), 1, generator=g).reshape(B, T)
    top = mu.topk(K, dim=-1)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 3:] = False
    model.to(device)
    roll = dict(inputs=inputs, ids=ids, rollout_logp=mu.gather(-1, ids[..., None]).squeeze(-1), top_ids=top.indices,
                top_logp=top.values, mask=mask, adv=torch.randn(B, generator=g))
    return {k: v.to(device) for k, v in roll.items()}


def _loss_and_grads(model, roll, method, fused: bool, temperature=1.0, mask_rows=False):
    hidden = model.hidden(roll["inputs"])
    weight, bias = model.head()
    if fused:
        logp, pi_topk = policy_logprobs_from_hidden(hidden, weight, roll["ids"], roll["top_ids"], bias=bias,
                                                    temperature=temperature, tiles=TILES,
                                                    response_mask=roll["mask"] if mask_rows else None)
    else:
        logits = F.linear(hidden, weight, bias)
        logp, pi_topk = policy_logprobs_from_logits(logits, roll["ids"], roll["top_ids"], temperature=temperature)
    batch = PolicyBatch(logp=logp, rollout_logp=roll["rollout_logp"], advantages=roll["adv"],
                        response_mask=roll["mask"], response_ids=roll["ids"], rollout_topk_ids=roll["top_ids"],
                        rollout_topk_logp=roll["top_logp"], policy_topk_logp=pi_topk, sequence_ids=torch.arange(B))
    out = method(batch, LossTotals(num_sequences=B, horizon=T))
    grads = torch.autograd.grad(out.loss, [p for p in model.parameters()])
    return out, grads


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied+bias"])
@pytest.mark.parametrize("name,divergence", CASES)
def test_fused_gradient_equals_unfused_for_every_method(name, divergence, tied, device):
    method = _method(name, divergence)
    model = TinyLM(tied)
    roll = _rollout(model, device=device)
    ref, ref_grads = _loss_and_grads(model, roll, method, fused=False)
    out, grads = _loss_and_grads(model, roll, method, fused=True)
    assert torch.allclose(out.loss, ref.loss, rtol=1e-5, atol=1e-7)
    assert torch.allclose(out.mask, ref.mask, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        assert _relative(got, want) < 1e-5


def test_the_cases_bind(device):
    """The gradient comparisons above are not vacuous: every rule but plain PG-IS keeps some valid
    tokens and drops, clips or down-weights others in at least one of the two batches."""
    bound = set()
    for tied in (True, False):
        model = TinyLM(tied)
        roll = _rollout(model, device=device)
        for name, divergence in CASES:
            out, _ = _loss_and_grads(model, roll, _method(name, divergence), fused=True)
            valid = roll["mask"]
            kept, weight = out.mask[valid], out.weight[valid]
            if name in ("cispo", "minpro"):  # the capped importance weight is the rule
                reduced = weight >= BINDING[name]["cap"] - 1e-6
            elif name in ("vespo", "drpo"):  # the weight is the rule: it departs from PG-IS's W = ρ
                ratio = _loss_and_grads(model, roll, _method("pg_is"), fused=True)[0].weight[valid]
                reduced = (weight - ratio).abs() > 1e-6
            else:
                reduced = kept < 1
            if bool((kept > 0).any()) and bool(reduced.any()):
                bound.add((name, divergence))
    assert bound == set(CASES) - {("pg_is", None), ("dro", None)}  # DRO's rule is its penalty, always on


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_values_entropy_and_masked_rows(temperature, device):
    model = TinyLM(tied=False)
    roll = _rollout(model, device=device)
    hidden = model.hidden(roll["inputs"])
    weight, bias = model.head()
    logits = F.linear(hidden, weight, bias)
    full = (logits / temperature).log_softmax(-1)
    logp, topk, entropy = policy_logprobs_from_hidden(hidden, weight, roll["ids"], roll["top_ids"], bias=bias,
                                                      temperature=temperature, tiles=TILES, with_entropy=True)
    assert torch.allclose(logp, full.gather(-1, roll["ids"][..., None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(topk, full.gather(-1, roll["top_ids"]), atol=1e-5)
    assert torch.allclose(entropy, -(full.exp() * full).sum(-1), atol=1e-5)
    _, _, entropy_logits = policy_logprobs_from_logits(logits, roll["ids"], temperature=temperature,
                                                       with_entropy=True)
    assert torch.allclose(entropy_logits, entropy, atol=1e-5)
    assert not topk.requires_grad and not entropy.requires_grad
    # with the response mask only valid rows are computed: same values there, 0 elsewhere, same gradient
    masked, _ = policy_logprobs_from_hidden(hidden, weight, roll["ids"], bias=bias, temperature=temperature,
                                            tiles=TILES, response_mask=roll["mask"])
    assert torch.allclose(masked[roll["mask"]], logp[roll["mask"]], atol=1e-6)
    assert bool((masked[~roll["mask"]] == 0).all())
    upstream = torch.randn(B, T).to(device) * roll["mask"]
    want = torch.autograd.grad((logp * upstream).sum(), [hidden, weight, bias], retain_graph=True)
    got = torch.autograd.grad((masked * upstream).sum(), [hidden, weight, bias])
    for a, b in zip(got, want):
        assert _relative(a, b) < 1e-5


def test_method_gradients_with_masked_rows_match(device):
    model = TinyLM(tied=True)
    roll = _rollout(model, device=device)
    method = _method("cppo")
    _, want = _loss_and_grads(model, roll, method, fused=False)
    _, got = _loss_and_grads(model, roll, method, fused=True, mask_rows=True)
    for a, b in zip(got, want):
        assert _relative(a, b) < 1e-5


def test_bf16_weights_give_fp32_logprobs_and_grads_in_their_dtype(device):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, H, generator=g).to(device, torch.bfloat16).requires_grad_(True)
    weight = torch.randn(V, H, generator=g).to(device, torch.bfloat16).requires_grad_(True)
    ids = torch.randint(0, V, (2, 5), generator=g).to(device)
    logp, _ = policy_logprobs_from_hidden(hidden, weight, ids, tiles=TILES)
    ref, _ = policy_logprobs_from_logits(F.linear(hidden, weight), ids)
    assert logp.dtype == torch.float32
    assert torch.allclose(logp, ref, atol=1e-5)
    logp.sum().backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16


def test_frozen_output_layer_gets_no_gradient(device):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, H, generator=g).to(device).requires_grad_(True)
    weight = torch.randn(V, H, generator=g).to(device)  # e.g. a frozen head under LoRA
    ids = torch.randint(0, V, (2, 5), generator=g).to(device)
    logp, _ = policy_logprobs_from_hidden(hidden, weight, ids, tiles=TILES)
    (grad,) = torch.autograd.grad(logp.sum(), hidden)
    (ref,) = torch.autograd.grad(policy_logprobs_from_logits(F.linear(hidden, weight), ids)[0].sum(), hidden)
    assert _relative(grad, ref) < 1e-5 and weight.grad is None


def test_bad_inputs_name_the_field():
    h, w, ids = torch.randn(1, 3, H), torch.randn(V, H), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="hidden"):
        policy_logprobs_from_hidden(h[0], w, ids)
    with pytest.raises(ValueError, match="weight"):
        policy_logprobs_from_hidden(h, w[:, :3], ids)
    with pytest.raises(ValueError, match="bias"):
        policy_logprobs_from_hidden(h, w, ids, bias=torch.zeros(3))
    with pytest.raises(ValueError, match="response_ids"):
        policy_logprobs_from_hidden(h, w, ids[:, :2])
    with pytest.raises(ValueError, match="response_mask"):
        policy_logprobs_from_hidden(h, w, ids, response_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="tiles"):
        policy_logprobs_from_hidden(h, w, ids, tiles=(0, 4))
