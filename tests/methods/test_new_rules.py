"""SAPO, GSPO, VESPO, OPSM, DRPO, DRO, prime-rl's DPPO and the CPPO presets: hand-computed cases,
invariants over random batches, and the presets' fixed conventions."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from methods import AGGREGATIONS, MethodConfigError, get_method
from tests.methods.helpers import random_batch, token_batch

SETTINGS = settings(max_examples=40, deadline=None)
seeds = st.integers(0, 2**31 - 1)
aggregations = st.sampled_from(AGGREGATIONS)


def grad_of(name, batch, **params):
    out = get_method(name, horizon=16, **params)(batch)
    (grad,) = torch.autograd.grad(out.loss, batch.logp)
    return out, grad


# --- hand-computed cases (one or two tokens, token-mean) ----------------------------------------------

def test_sapo_hand_computed():
    b = token_batch([[math.log(0.75)]], [[math.log(0.5)]], [1.0])  # ρ = 1.5, τ = 1
    out, grad = grad_of("sapo", b, aggregation="token-mean", loss_form="ratio")
    s = 1 / (1 + math.exp(-0.5))  # σ(τ(ρ − 1))
    assert out.loss.item() == pytest.approx(-4 * s, rel=1e-6)
    assert out.mask.item() == pytest.approx(4 * s * (1 - s), rel=1e-6)  # 0.940014
    assert grad.item() == pytest.approx(-4 * s * (1 - s) * 1.5, rel=1e-6)  # −1.410021
    b = token_batch([[math.log(0.75)]], [[math.log(0.5)]], [-1.0])  # A ≤ 0: τ_neg = 1.05
    out, _ = grad_of("sapo", b, aggregation="token-mean", loss_form="ratio")
    assert out.loss.item() == pytest.approx(4 / 1.05 / (1 + math.exp(-1.05 * 0.5)), rel=1e-6)


def test_gspo_hand_computed():
    b = token_batch([[0.1, 0.3]], [[0.0, 0.0]], [1.0])  # ρ_seq = e^0.2 = 1.2214
    out, grad = grad_of("gspo", b, aggregation="token-mean", eps_low=0.2, eps_high=0.28)
    assert out.weight.tolist()[0] == pytest.approx([math.exp(0.2)] * 2, rel=1e-6)
    assert grad.tolist()[0] == pytest.approx([-math.exp(0.2) / 2] * 2, rel=1e-6)
    out, grad = grad_of("gspo", b, aggregation="token-mean", eps_low=0.2, eps_high=0.2)  # 1.2214 > 1.2: dropped
    assert out.mask.tolist() == [[0.0, 0.0]] and grad.abs().max().item() == 0.0
    b = token_batch([[0.1, 0.3]], [[0.0, 0.0]], [-1.0])  # A < 0 and ρ_seq > 1: back toward μ, kept
    out, _ = grad_of("gspo", b, aggregation="token-mean", eps_low=0.2, eps_high=0.2)
    assert out.mask.tolist() == [[1.0, 1.0]]


def test_vespo_hand_computed():
    b = token_batch([[0.2]], [[0.0]], [1.0])  # w = e^0.2
    out, grad = grad_of("vespo", b, aggregation="token-mean")
    phi = math.exp(3 + 2 * 0.2 - 3 * math.exp(0.2))  # e^λ w^k e^(−λw), k 2, λ 3
    assert out.weight.item() == pytest.approx(phi, rel=1e-6)  # 0.767827
    assert grad.item() == pytest.approx(-phi, rel=1e-6)
    b = token_batch([[0.1, 0.1]], [[0.0, 0.0]], [-1.0])  # w = e^0.2 over the sequence, k 3, λ 2
    out, _ = grad_of("vespo", b, aggregation="token-mean")
    assert out.weight.tolist()[0] == pytest.approx([math.exp(2 + 3 * 0.2 - 2 * math.exp(0.2))] * 2, rel=1e-6)


def test_opsm_hand_computed():
    # mean log μ − log π = 0.6 in both responses; A < 0 drops the second, A > 0 keeps the first
    b = token_batch([[-1.0, -1.0], [-1.0, -1.0]], [[-0.5, -0.3], [-0.5, -0.3]], [1.0, -1.0])
    out, _ = grad_of("opsm", b, aggregation="token-mean", delta=0.5, eps_low=10.0, eps_high=10.0)
    assert out.mask.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert out.metrics["seq_acceptance_rate"] == 0.5
    out, _ = grad_of("opsm", b, aggregation="token-mean", delta=0.7, eps_low=10.0, eps_high=10.0)
    assert out.mask.tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_drpo_hand_computed():
    b = token_batch([[math.log(0.75)]], [[math.log(0.5)]], [1.0])  # μ 0.5, ρ 1.5, ε 0.5
    out, grad = grad_of("drpo", b, aggregation="token-mean", eps=0.5, loss_form="ratio")
    assert out.loss.item() == pytest.approx(-1.5 + 0.5 * 0.25 / 1.0, rel=1e-6)  # −1.375
    assert out.weight.item() == pytest.approx(0.75, rel=1e-6)
    assert grad.item() == pytest.approx(-0.75, rel=1e-6)


def test_dro_hand_computed():
    b = token_batch([[-1.0]], [[-1.2]], [0.5])
    out, grad = grad_of("dro", b, aggregation="token-mean", beta=2.0)
    assert out.loss.item() == pytest.approx(0.5 + 0.04, rel=1e-5)   # −A·log π + ½β·0.2²
    assert grad.item() == pytest.approx(-0.5 + 2.0 * 0.2, rel=1e-5)  # −A + β·log ρ


def test_prime_dppo_hand_computed():
    # π 0.5 vs μ 0.3: away from μ for A > 0 by 0.2; A < 0 keeps it (toward μ)
    b = token_batch([[math.log(0.5)], [math.log(0.5)]], [[math.log(0.3)], [math.log(0.3)]], [1.0, -1.0])
    out, _ = grad_of("prime_dppo", b, aggregation="token-mean", delta=0.15, tau=0.0)
    assert out.mask.tolist() == [[0.0], [1.0]]
    out, _ = grad_of("prime_dppo", b, aggregation="token-mean", delta=0.25, tau=0.0)
    assert out.mask.tolist() == [[1.0], [1.0]]
    # π 0.1 vs μ 0.3 with A < 0: away by 0.2, judged by delta_low
    b = token_batch([[math.log(0.1)]], [[math.log(0.3)]], [-1.0])
    assert grad_of("prime_dppo", b, aggregation="token-mean", delta=0.25, delta_low=0.1)[0].mask.item() == 0.0
    assert grad_of("prime_dppo", b, aggregation="token-mean", delta=0.1, delta_low=0.25)[0].mask.item() == 1.0


def test_gspo_refuses_advantages_that_vary_within_a_response():
    from methods import BatchError
    b = token_batch([[0.1, 0.3]], [[0.0, 0.0]], [[1.0, -1.0]])
    with pytest.raises(BatchError, match="one advantage per response"):
        get_method("gspo", horizon=4)(b)
    b = token_batch([[0.1, 0.3, 0.0]], [[0.0, 0.0, 0.0]], [[1.0, 1.0, -5.0]], mask=[[True, True, False]])
    get_method("gspo", horizon=4)(b)  # padding may hold anything


def test_padded_position_weights_hand_computed():
    b = random_batch(0, rows=1, length=5, lengths=[3]).batch
    w = get_method("cppo@verl-pr6731", horizon=5)(b).details["position_weight"][0].tolist()
    assert w == pytest.approx([1.0, 0.95, 0.9, 0.0, 0.0])  # span H − 1 = 4
    w = get_method("cppo@unirl", horizon=5)(b).details["position_weight"][0].tolist()
    assert w == pytest.approx([1.0, 0.9, 0.8, 0.0, 0.0])  # span T_i − 1 = 2


# --- invariants over random batches ---------------------------------------------------------------

@SETTINGS
@given(seed=seeds, aggregation=aggregations,
       case=st.sampled_from([("sapo", {}), ("gspo", dict(eps_low=0.05, eps_high=0.05, truncation_cap=math.inf)),
                             ("drpo", dict(eps=0.5)), ("opsm", dict(delta=0.05, truncation_cap=math.inf)),
                             ("prime_dppo", dict(delta=0.05))]))
def test_ratio_and_reinforce_forms_have_one_gradient(seed, aggregation, case):
    """The surrogate of each rule and its (mask, weight) decomposition give the same gradient."""
    name, params = case
    rb = random_batch(seed, drift=0.8)
    forms = [grad_of(name, rb.batch, aggregation=aggregation, loss_form=f, **params)[1] for f in ("ratio", "reinforce")]
    torch.testing.assert_close(forms[0], forms[1], rtol=1e-4, atol=1e-7)


@SETTINGS
@given(seed=seeds, name=st.sampled_from(["gspo", "vespo"]))
def test_sequence_rules_are_constant_within_a_response(seed, name):
    rb = random_batch(seed, drift=0.5)
    out = get_method(name, horizon=16)(rb.batch)
    valid = rb.batch.response_mask
    for row in range(valid.shape[0]):
        for values in (out.mask[row][valid[row]], out.weight[row][valid[row]]):
            assert values.numel() == 0 or bool((values == values[0]).all())


@SETTINGS
@given(seed=seeds)
def test_on_policy_tokens_are_untouched(seed):
    """π = μ: SAPO's gate, VESPO's φ and DRPO's weight are 1, GSPO and OPSM keep everything, DRO's penalty is 0."""
    rb = random_batch(seed)
    b = rb.batch
    b.rollout_logp = b.logp.detach().clone()
    valid = b.response_mask
    for name in ("sapo", "vespo", "drpo", "gspo", "opsm"):
        out = get_method(name, horizon=16)(b)
        assert torch.allclose(out.mask[valid], torch.ones(()), atol=1e-6)
        assert torch.allclose(out.weight[valid], torch.ones(()), atol=1e-5)
    dro = get_method("dro", horizon=16)(b)
    reinforce = -(b.advantages[:, None] * torch.where(valid, b.logp, 0)).sum() / (b.logp.shape[0] * 16)
    torch.testing.assert_close(dro.loss, reinforce)


@SETTINGS
@given(seed=seeds, delta=st.floats(0.01, 1.0))
def test_opsm_only_removes_negative_advantage_responses_from_grpo(seed, delta):
    rb = random_batch(seed, drift=0.8)
    opsm = get_method("opsm", horizon=16, delta=delta)(rb.batch).mask
    grpo = get_method("grpo", horizon=16)(rb.batch).mask
    assert bool((opsm <= grpo).all())
    positive = (rb.batch.advantages >= 0)[:, None].expand_as(opsm)
    assert torch.equal(opsm[positive], grpo[positive])


@SETTINGS
@given(seed=seeds, aggregation=aggregations)
def test_sapo_gate_is_in_the_unit_interval(seed, aggregation):
    rb = random_batch(seed, drift=1.0)
    out = get_method("sapo", horizon=16, aggregation=aggregation)(rb.batch)
    gate = out.mask[rb.batch.response_mask]
    assert bool(((gate > 0) & (gate <= 1)).all())


@SETTINGS
@given(seed=seeds, beta=st.floats(0.01, 5.0))
def test_dro_penalty_acts_without_advantage(seed, beta):
    rb = random_batch(seed, drift=0.5, advantages=[0.0, 0.0, 0.0])
    out, grad = grad_of("dro", rb.batch, aggregation="seq-mean-token-sum", beta=beta)
    lr = torch.where(rb.batch.response_mask, rb.batch.logp.detach() - rb.batch.rollout_logp, torch.zeros(()))
    torch.testing.assert_close(grad, beta * lr / 3, rtol=1e-5, atol=1e-7)


@SETTINGS
@given(seed=seeds, delta=st.floats(0.01, 0.3), aggregation=aggregations)
def test_prime_dppo_without_penalty_and_asymmetry_is_dppo(seed, delta, aggregation):
    rb = random_batch(seed, drift=0.8)
    ours, ours_grad = grad_of("prime_dppo", rb.batch, aggregation=aggregation, delta=delta, tau=0.0)
    dppo, dppo_grad = grad_of("dppo", rb.batch, aggregation=aggregation, delta=delta, divergence="binary_tv",
                              loss_form="ratio", truncation_cap=math.inf)
    assert torch.equal(ours.mask, dppo.mask)
    torch.testing.assert_close(ours.loss, dppo.loss, rtol=0, atol=0)
    torch.testing.assert_close(ours_grad, dppo_grad, rtol=0, atol=0)


@SETTINGS
@given(seed=seeds, aggregation=aggregations)
def test_presets_equal_cppo_with_their_conventions(seed, aggregation):
    rb = random_batch(seed, drift=0.6)
    for preset, conventions in [
            ("cppo@paper", dict(divergence="topk_tv", loss_form="ratio", truncation_cap=math.inf)),
            ("cppo@unirl", dict(divergence="binary_tv", loss_form="ratio", truncation_cap=math.inf)),
            ("cppo@verl-pr6731", dict(divergence="binary_tv", position_span="padded", delta_b_max_factor=5.0))]:
        a = get_method(preset, horizon=16, top_k=4, aggregation=aggregation)(rb.batch)
        b = get_method("cppo", horizon=16, top_k=4, aggregation=aggregation, **conventions)(rb.batch)
        assert torch.equal(a.mask, b.mask)
        torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)


# --- the presets' names stand for their conventions -------------------------------------------------

@pytest.mark.parametrize("preset", ["cppo@paper", "cppo@unirl", "cppo@verl-pr6731"])
def test_a_preset_refuses_to_change_its_conventions_but_tunes_its_thresholds(preset):
    with pytest.raises(MethodConfigError, match=f"{preset}: divergence is fixed"):
        get_method(preset, divergence="k3")
    with pytest.raises(MethodConfigError, match="position_span is fixed"):
        get_method(preset, position_span="padded" if preset != "cppo@verl-pr6731" else "response")
    m = get_method(preset, delta=0.1, w_min=0.7, delta_b=0.03)
    assert (m.params.delta, m.params.w_min, m.params.delta_b) == (0.1, 0.7, 0.03)
    factor = 5.0 if preset == "cppo@verl-pr6731" else 2.0
    assert m.params.delta_b_upper == pytest.approx(factor * 0.03)
