"""Every registry method, every aggregation and every divergence on the test device (``--trh-device``;
the CPU by default, a GPU under scripts/device_check.sh) in float32, against the same batch computed
on the CPU in float64: the loss, its gradient with respect to the policy's logits, the mask and the
weight. The batches are made on the CPU from seeded generators, so every device sees the same numbers."""

import dataclasses

import pytest
import torch

from methods import AGGREGATIONS, DIVERGENCES, LossTotals, PolicyBatch, get_method, list_methods, method_names
from tests.methods.helpers import masks_nothing, random_batch, tunable

ROWS, LENGTH, VOCAB, TOP_K = 6, 24, 32, 4
# the sequence-level rules at thresholds these batches' drift half passes (at the defaults every response
# of a batch this far off-policy is rejected, and the comparison would be of zeros)
BINDING = {"trm_max": dict(delta_max=0.3), "trm_avg": dict(delta_avg=0.1),
           "trm_max_avg": dict(delta_max=0.3, delta_avg=0.1)}


def _params_of(name: str) -> set:
    return {p["name"] for m in list_methods() if m["name"] == name for p in m["params"]}


CASES = [(name, aggregation, None) for name in method_names() for aggregation in AGGREGATIONS] + [
    (name, "token-mean", divergence) for name in method_names() if tunable(name, "divergence")
    for divergence in DIVERGENCES]


def _method(name, aggregation, divergence):
    params = {"horizon": LENGTH, "aggregation": aggregation, **BINDING.get(name, {})}
    if "top_k" in _params_of(name):
        params["top_k"] = TOP_K
    if divergence:
        params["divergence"] = divergence
    return get_method(name, **params)


SEEDS = (0, 1)


def _loss_on(device, dtype, rb, method):
    """The method's loss on ``device`` in ``dtype``, π's log-probs taken from the logits there."""
    logits = rb.pi_logits.detach().to(device, dtype).requires_grad_(True)
    full = logits.log_softmax(-1)
    b = rb.batch

    def moved(t):
        return t.to(device, dtype) if t.is_floating_point() else t.to(device)

    batch = PolicyBatch(**{f.name: moved(getattr(b, f.name)) if isinstance(getattr(b, f.name), torch.Tensor) else
                           getattr(b, f.name) for f in dataclasses.fields(b)})
    batch = dataclasses.replace(batch, logp=full.gather(-1, batch.response_ids[..., None]).squeeze(-1),
                                policy_topk_logp=full.gather(-1, batch.rollout_topk_ids).detach())
    out = method(batch, LossTotals(num_sequences=ROWS, horizon=LENGTH))
    (grad,) = torch.autograd.grad(out.loss, logits)
    return out, grad


@pytest.mark.parametrize("name,aggregation,divergence", CASES)
def test_every_method_on_the_device_matches_a_float64_cpu_reference(name, aggregation, divergence, device):
    method = _method(name, aggregation, divergence)
    for seed in SEEDS:
        rb = random_batch(seed, rows=ROWS, length=LENGTH, vocab=VOCAB, top_k=TOP_K, drift=0.6)
        want, want_grad = _loss_on(torch.device("cpu"), torch.float64, rb, method)
        got, got_grad = _loss_on(device, torch.float32, rb, method)
        valid = rb.batch.response_mask
        scale = float(want_grad.abs().max().clamp_min(1e-12))
        assert abs(float(got.loss) - float(want.loss)) <= 1e-5 * max(1.0, abs(float(want.loss)))
        assert float((got_grad.cpu().double() - want_grad).abs().max()) <= 1e-5 * max(1.0, scale)
        # a float32 divergence may land on the other side of a threshold than the float64 one: at most one
        # token of a batch (soft masks agree to 1e-5), and the weights agree wherever the masks do
        same = ((got.mask.detach().cpu().double() - want.mask.double()).abs() <= 1e-5) | ~valid
        assert int((~same).sum()) <= 1, f"{int((~same).sum())} of {int(valid.sum())} tokens masked differently"
        got_weight, want_weight = got.weight.detach().cpu().double(), want.weight.detach().double()
        close = (got_weight - want_weight).abs() <= 1e-5 * want_weight.abs().clamp_min(1)
        assert bool((close | ~same | ~valid).all())


@pytest.mark.parametrize("name", [n for n in method_names() if not masks_nothing(n)])
def test_the_mask_rules_bind_on_these_batches(name):
    """The comparison above is not of all-kept or all-dropped batches: every mask rule keeps some valid
    tokens and drops others (the weight rules — pg_is, CISPO, MinPRO, VESPO, DRPO, DRO — mask nothing)."""
    kept = dropped = 0
    for seed in SEEDS:
        rb = random_batch(seed, rows=ROWS, length=LENGTH, vocab=VOCAB, top_k=TOP_K, drift=0.6)
        out, _ = _loss_on(torch.device("cpu"), torch.float64, rb, _method(name, "token-mean", None))
        mask = out.mask.detach()[rb.batch.response_mask]
        kept, dropped = kept + int((mask > 0).sum()), dropped + int((mask < 1).sum())
    assert kept and dropped
