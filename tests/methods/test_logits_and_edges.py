"""The chunked logits helper against full log-softmax, and edge cases: empty and length-1 responses."""

import math

import pytest
import torch

from methods import METRIC_NAMES, PolicyBatch, get_method, method_names, policy_logprobs_from_logits


@pytest.mark.parametrize("chunk", [1, 3, 128])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_equal_full_log_softmax_with_gradient(chunk, temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=g, requires_grad=True)
    ids = torch.randint(0, 11, (2, 7), generator=g)
    topk_ids = torch.randint(0, 11, (2, 7, 3), generator=g)
    upstream = torch.randn(2, 7, generator=g)

    logp, topk = policy_logprobs_from_logits(logits, ids, topk_ids, temperature=temperature, chunk_size=chunk)
    (grad,) = torch.autograd.grad((logp * upstream).sum(), logits)

    ref_full = (logits / temperature).log_softmax(-1)
    ref = ref_full.gather(-1, ids[..., None]).squeeze(-1)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), logits)
    assert torch.allclose(logp, ref, atol=1e-6)
    assert torch.allclose(topk, ref_full.gather(-1, topk_ids).detach(), atol=1e-6)
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    assert not topk.requires_grad
    assert torch.equal(logits, logits.detach().clone())  # the backward pass did not write into the logits


def test_bf16_logits_are_read_in_fp32():
    logits = torch.randn(1, 5, 9).to(torch.bfloat16).requires_grad_(True)
    ids = torch.zeros(1, 5, dtype=torch.long)
    logp, _ = policy_logprobs_from_logits(logits, ids)
    assert logp.dtype == torch.float32
    assert torch.allclose(logp, logits.float().log_softmax(-1)[..., 0], atol=1e-6)
    logp.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_helper_rejects_bad_shapes():
    with pytest.raises(ValueError, match="logits"):
        policy_logprobs_from_logits(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="response_ids"):
        policy_logprobs_from_logits(torch.randn(1, 3, 4), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        policy_logprobs_from_logits(torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), temperature=0.0)


def edge_batch(lengths, width=3, vocab=5):
    g = torch.Generator().manual_seed(1)
    rows = len(lengths)
    mask = torch.zeros(rows, width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    logits = torch.randn(rows, width, vocab, generator=g, requires_grad=True)
    mu = (logits.detach() + torch.randn(rows, width, vocab, generator=g)).log_softmax(-1)
    ids = torch.randint(0, vocab, (rows, width), generator=g)
    topk = mu.topk(vocab, -1)
    logp, pi_topk = policy_logprobs_from_logits(logits, ids, topk.indices)
    return logits, PolicyBatch(logp=logp, rollout_logp=mu.gather(-1, ids[..., None]).squeeze(-1),
                               advantages=torch.tensor([1.0, -1.0][:rows] + [0.5] * max(rows - 2, 0)),
                               response_mask=mask, response_ids=ids, rollout_topk_ids=topk.indices,
                               rollout_topk_logp=topk.values, policy_topk_logp=pi_topk)


@pytest.mark.parametrize("name", method_names())
@pytest.mark.parametrize("lengths", [[0, 1], [1, 1], [0, 0], [3, 0, 1]])
def test_empty_and_length_one_responses_are_finite(name, lengths):
    logits, batch = edge_batch(lengths)
    for aggregation in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        out = get_method(name, top_k=5, horizon=3, aggregation=aggregation)(batch) if "top_k" in _params(name) \
            else get_method(name, horizon=3, aggregation=aggregation)(batch)
        assert torch.isfinite(out.loss)
        (grad,) = torch.autograd.grad(out.loss, logits, retain_graph=True, allow_unused=True)
        assert grad is None or bool(torch.isfinite(grad).all())
        assert set(out.metrics) == set(METRIC_NAMES)
        assert all(not math.isinf(v) for v in out.metrics.values())
        if sum(lengths) == 0:
            assert out.loss.item() == 0.0


def test_length_one_cppo_weight_is_one():
    _, batch = edge_batch([1, 1])
    out = get_method("cppo", top_k=5, horizon=3)(batch)
    assert out.details["position_weight"][:, 0].tolist() == [1.0, 1.0]


def _params(name):
    from methods import list_methods
    return {p["name"] for m in list_methods() if m["name"] == name for p in m["params"]}
