"""Property tests over random batches: invariants of the spec and reference loops of Algorithm 1."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from methods import (LossTotals, PolicyBatch, binary_kl, binary_tv, exact_kl, exact_tv, force_sampled_token,
                     get_method, method_names, topk_kl, topk_tv, unpack_packed)
from tests.methods.helpers import random_batch

SETTINGS = settings(max_examples=60, deadline=None)
seeds = st.integers(0, 2**31 - 1)
paddings = st.sampled_from(["right", "left", "holes"])
CPPO_FAMILY = ["cppo", "cppo_no_pw", "cppo_no_pb", "cppo_shuffled", "cppo_soft"]
DIVERGENCES = ["topk_tv", "topk_kl", "binary_tv", "binary_kl", "k2", "k3"]
ALL_METHODS = method_names()  # the property tests below hold for every registered rule


def method(name, **params):
    params.setdefault("horizon", 16)
    if name in ("dppo", "trm_max", "trm_avg", "trm_max_avg") or name.startswith("cppo"):
        params.setdefault("top_k", 4)
    return get_method(name, **params)


def toward_mu(batch):
    adv = batch.advantages
    adv = adv[:, None].expand_as(batch.logp) if adv.dim() == 1 else adv
    ratio = (batch.logp.detach() - batch.rollout_logp).clamp(-20, 20).exp()
    return (adv * (ratio - 1) <= 0) & batch.response_mask


@SETTINGS
@given(seed=seeds, padding=paddings, name=st.sampled_from(["dppo"] + CPPO_FAMILY),
       divergence=st.sampled_from(DIVERGENCES), delta=st.floats(0.001, 0.3), budget=st.sampled_from(["dynamic", "fixed"]))
def test_updates_toward_mu_are_never_masked(seed, padding, name, divergence, delta, budget):
    rb = random_batch(seed, padding=padding, drift=1.0)
    params = dict(divergence=divergence, delta=delta)
    if name != "dppo":
        params["budget"] = budget
    out = method(name, **params)(rb.batch)
    toward = toward_mu(rb.batch)
    assert bool((out.mask[toward] == 1).all())
    assert bool((out.mask[~rb.batch.response_mask] == 0).all())


def algorithm1(d, adv, rho, *, delta, delta_b, w_min, uniform, budget_on, soft):
    """Algorithm 1 of the CPPO paper on one response, in Python floats."""
    n = len(d)
    s = w_sum = 0.0
    mask = []
    for t in range(1, n + 1):
        w = 1.0 if uniform else 1.0 - (1.0 - w_min) * (t - 1) / max(n - 1, 1)
        z = w * d[t - 1]
        c = min(delta, delta + delta_b * w_sum - s) if budget_on else delta
        if adv * (rho[t - 1] - 1.0) <= 0:
            m = 1.0
        elif soft:
            x = z / delta
            if budget_on:
                x = max(x, (s + z) / (delta + delta_b * w_sum))
            m = min(1.0, 1.0 / x) if x > 0 else 1.0
        else:
            m = 1.0 if z <= c else 0.0
        mask.append(m)
        s += z
        w_sum += w
    return mask


@SETTINGS
@given(seed=seeds, padding=paddings, name=st.sampled_from(["cppo", "cppo_no_pw", "cppo_no_pb", "cppo_soft"]),
       budget=st.sampled_from(["dynamic", "fixed"]), delta=st.floats(0.01, 0.3), delta_b=st.floats(0.001, 0.2),
       w_min=st.floats(0.05, 1.0), divergence=st.sampled_from(["topk_tv", "binary_tv", "topk_kl"]))
def test_batched_cppo_equals_per_response_loop(seed, padding, name, budget, delta, delta_b, w_min, divergence):
    rb = random_batch(seed, rows=4, length=10, padding=padding, drift=0.8)
    m = method(name, divergence=divergence, delta=delta, delta_b=delta_b, w_min=w_min, budget=budget)
    out = m(rb.batch)
    d_all = out.details["divergence"].double()
    valid = rb.batch.response_mask
    ratio = (rb.batch.logp.detach() - rb.batch.rollout_logp).clamp(-20, 20).exp()
    for i in range(valid.shape[0]):
        idx = valid[i].nonzero().squeeze(-1)
        d = d_all[i, idx]
        if budget == "dynamic" and len(idx):
            db = float(torch.quantile(d, 0.9).clamp(delta_b, 2 * delta_b))
        else:
            db = delta_b
        expected = algorithm1(d.tolist(), float(rb.batch.advantages[i]), ratio[i, idx].tolist(), delta=delta,
                              delta_b=db, w_min=w_min, uniform=(name == "cppo_no_pw"),
                              budget_on=(name != "cppo_no_pb"), soft=(name == "cppo_soft"))
        if name == "cppo_soft":
            assert torch.allclose(out.mask[i, idx].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)
        else:
            assert out.mask[i, idx].tolist() == expected


@SETTINGS
@given(seed=seeds, name=st.sampled_from(CPPO_FAMILY + ["trm_max_avg", "minpro", "dppo"]))
def test_responses_do_not_interact(seed, name):
    """Prefix sums never cross responses: changing one row changes no other row's mask or weight."""
    rb = random_batch(seed, rows=3, padding="right")
    other = random_batch(seed + 1, rows=3, padding="right")
    mixed = PolicyBatch(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in vars(rb.batch).items()})
    for field in ("logp", "rollout_logp", "response_ids", "rollout_topk_ids", "rollout_topk_logp",
                  "policy_topk_logp", "response_mask"):
        getattr(mixed, field)[1] = getattr(other.batch, field)[1].detach()
    m = method(name, budget="fixed", delta_b=0.01) if name.startswith("cppo") else method(name)
    a, b = m(rb.batch), m(mixed)
    for row in (0, 2):
        assert torch.equal(a.mask[row], b.mask[row])
        assert torch.equal(a.weight[row], b.weight[row])


@SETTINGS
@given(seed=seeds, name=st.sampled_from(["cppo", "cppo_soft", "trm_max_avg", "minpro"]))
def test_packed_layout_matches_padded(seed, name):
    rb = random_batch(seed, rows=3, padding="right")
    b = rb.batch
    valid = b.response_mask
    lengths = valid.sum(-1)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])

    def repad(x):
        return unpack_packed(x[valid], cu)[0]

    packed = PolicyBatch(
        logp=repad(b.logp), rollout_logp=repad(b.rollout_logp), advantages=b.advantages,
        response_mask=unpack_packed(b.logp[valid], cu)[1], response_ids=repad(b.response_ids),
        rollout_topk_ids=repad(b.rollout_topk_ids), rollout_topk_logp=repad(b.rollout_topk_logp),
        policy_topk_logp=repad(b.policy_topk_logp))
    a, p = method(name)(b), method(name)(packed)
    width = packed.logp.shape[1]
    assert torch.equal(a.mask[:, :width][valid[:, :width]], p.mask[packed.response_mask])
    assert torch.allclose(a.loss, p.loss, atol=1e-6)


def test_cppo_reduces_to_dppo():
    for seed in range(40):
        rb = random_batch(seed, padding="holes", drift=1.0)
        dppo = method("dppo", delta=0.1)(rb.batch).mask
        no_budget = method("cppo", delta=0.1, w_min=1.0, budget="fixed", delta_b=math.inf)(rb.batch).mask
        no_pb = method("cppo_no_pb", delta=0.1, w_min=1.0)(rb.batch).mask
        assert torch.equal(dppo, no_budget)
        assert torch.equal(dppo, no_pb)
        # and the reduction is not vacuous: dppo masks something in most batches, CPPO more
        if seed == 0:
            assert dppo.sum() < rb.batch.response_mask.sum()


@SETTINGS
@given(seed=seeds, top_k=st.integers(1, 8), drift=st.floats(0.0, 3.0))
@example(seed=0, top_k=7, drift=3.0)  # π's residual mass 1.2e-8: below fp32 resolution
def test_binary_le_topk_le_exact(seed, top_k, drift):
    rb = random_batch(seed, vocab=8, top_k=top_k, drift=drift, padding="right", lengths=[9, 9, 9])
    b = rb.batch
    mu_set, pi_set = force_sampled_token(b.rollout_topk_ids, b.rollout_topk_logp, b.policy_topk_logp,
                                         b.response_ids, b.rollout_logp, b.logp.detach())
    assert bool(((mu_set == b.rollout_logp[..., None]) | (b.rollout_topk_ids == b.response_ids[..., None])).any(-1).all())
    tol = 1e-5
    tv_bin, tv_top, tv_ex = binary_tv(b.rollout_logp, b.logp.detach()), topk_tv(mu_set, pi_set), exact_tv(rb.mu_full, rb.pi_full)
    kl_bin, kl_top, kl_ex = binary_kl(b.rollout_logp, b.logp.detach()), topk_kl(mu_set, pi_set), exact_kl(rb.mu_full, rb.pi_full)
    assert bool((tv_bin <= tv_top + tol).all()) and bool((tv_top <= tv_ex + tol).all())
    # KL's residual term p_rest·log(p_rest/q_rest) amplifies the ~1e-7 rounding of fp32 log-probs
    # when q_rest is tiny (1 − Σ_S q cannot resolve it), hence the looser KL tolerance; where π's true
    # residual mass is below what fp32 log-probs resolve (1e-5), Top-K KL vs exact is not checked
    kl_tol = 1e-4 + 1e-4 * kl_ex.abs()
    q_rest = 1.0 - rb.pi_full.double().exp().gather(-1, b.rollout_topk_ids).sum(-1)
    resolvable = (q_rest >= 1e-5) | (b.rollout_topk_ids.shape[-1] == rb.pi_full.shape[-1])
    assert bool((kl_bin <= kl_top + kl_tol).all())
    assert bool((kl_top <= kl_ex + kl_tol)[resolvable].all())
    for d in (tv_bin, tv_top, kl_top, kl_bin):
        assert bool((d >= -tol).all())
    if top_k == 8:  # the whole vocabulary: Top-K is exact
        assert torch.allclose(tv_top, tv_ex, atol=1e-5) and torch.allclose(kl_top, kl_ex, atol=1e-5)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergences_vanish_when_pi_equals_mu(divergence):
    rb = random_batch(3, drift=0.0, padding="holes")
    out = method("dppo", divergence=divergence)(rb.batch)
    assert float(out.details["divergence"].abs().max()) < 1e-6


@SETTINGS
@given(seed=seeds, name=st.sampled_from(ALL_METHODS), extra=st.integers(1, 5),
       aggregation=st.sampled_from(["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]))
def test_appending_padding_changes_no_loss(seed, name, extra, aggregation):
    rb = random_batch(seed, padding="right")
    b = rb.batch

    def pad(x, value):
        if x is None:
            return None
        shape = list(x.shape)
        shape[1] = extra
        return torch.cat([x, torch.full(shape, value, dtype=x.dtype)], dim=1)

    padded = PolicyBatch(
        logp=pad(b.logp, float("nan")), rollout_logp=pad(b.rollout_logp, -math.inf), advantages=b.advantages,
        response_mask=pad(b.response_mask, False), response_ids=pad(b.response_ids, 0),
        rollout_topk_ids=pad(b.rollout_topk_ids, 0), rollout_topk_logp=pad(b.rollout_topk_logp, float("nan")),
        policy_topk_logp=pad(b.policy_topk_logp, float("nan")))
    m = method(name, aggregation=aggregation)
    a, p = m(b), m(padded)
    assert torch.allclose(a.loss, p.loss, atol=1e-6, equal_nan=False)
    g_a = torch.autograd.grad(a.loss, rb.pi_logits, allow_unused=True, retain_graph=True)[0]
    g_p = torch.autograd.grad(p.loss, rb.pi_logits, allow_unused=True)[0]
    if g_a is not None:
        assert torch.isfinite(g_p).all() and torch.allclose(g_a, g_p, atol=1e-6)


@SETTINGS
@given(seed=seeds, name=st.sampled_from(ALL_METHODS), split=st.integers(1, 3),
       aggregation=st.sampled_from(["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]))
def test_micro_batches_with_global_totals_give_the_same_gradient(seed, name, split, aggregation):
    rb = random_batch(seed, rows=4, padding="holes")
    b = rb.batch
    b.sequence_ids = torch.arange(4) + 100
    m = method(name, aggregation=aggregation)
    full = m(b)
    totals = LossTotals.of([b], horizon=16)
    micro_loss = 0.0
    for rows in (slice(0, split), slice(split, 4)):
        part = PolicyBatch(**{k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in vars(b).items()})
        micro_loss = micro_loss + m(part, totals).loss
    assert torch.allclose(full.loss, micro_loss, atol=1e-6)
    g_full = torch.autograd.grad(full.loss, rb.pi_logits, allow_unused=True, retain_graph=True)[0]
    g_micro = torch.autograd.grad(micro_loss, rb.pi_logits, allow_unused=True)[0]
    if g_full is None:
        assert g_micro is None
    else:
        assert torch.allclose(g_full, g_micro, atol=1e-6)


@SETTINGS
@given(seed=seeds, name=st.sampled_from(["pg_is", "grpo", "dppo", "trm_max_avg"] + CPPO_FAMILY))
def test_reinforce_and_ratio_forms_have_the_same_gradient_without_cap(seed, name):
    rb = random_batch(seed, padding="holes", drift=1.5)
    grads = []
    for form in ("reinforce", "ratio"):
        out = method(name, loss_form=form, truncation_cap=math.inf)(rb.batch)
        grads.append(torch.autograd.grad(out.loss, rb.pi_logits, allow_unused=True, retain_graph=True)[0])
    if grads[0] is None:
        assert grads[1] is None
    else:
        assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_ratio_form_zeroes_the_gradient_above_the_cap_where_reinforce_keeps_it():
    from tests.methods.helpers import token_batch
    batch = token_batch([[math.log(3.0), 0.0]], [[0.0, 0.0]], [1.0])  # ρ = 3, 1
    reinforce = method("pg_is", truncation_cap=2.0)(batch)
    (g_r,) = torch.autograd.grad(reinforce.loss, batch.logp)
    ratio = method("pg_is", truncation_cap=2.0, loss_form="ratio")(batch)
    (g_q,) = torch.autograd.grad(ratio.loss, batch.logp)
    assert g_r[0, 0].item() == pytest.approx(-2.0 / 16)
    assert g_q[0, 0].item() == 0.0
    assert g_r[0, 1].item() == pytest.approx(g_q[0, 1].item())


@SETTINGS
@given(seed=seeds, padding=paddings, position=st.integers(0, 8), bump=st.floats(-3.0, 3.0))
def test_minpro_prefix_minimum_is_strict(seed, padding, position, bump):
    rb = random_batch(seed, padding=padding, lengths=[9, 5, 1])
    m = method("minpro")
    before = m(rb.batch).details["prefix_ratio"]
    bumped = rb.batch.logp.detach().clone()
    bumped[:, position] += bump
    after = m(PolicyBatch(**{**vars(rb.batch), "logp": bumped})).details["prefix_ratio"]
    # token t's own ratio is not in its prefix minimum; only later tokens can change
    assert torch.equal(before[:, : position + 1], after[:, : position + 1])
    valid = rb.batch.response_mask
    first = valid.long().argmax(-1)
    assert torch.equal(before[torch.arange(3), first], torch.ones(3))  # ρ̲_1 = 1


def test_shuffled_weights_are_a_per_response_permutation_keyed_by_sequence_id():
    rb = random_batch(5, rows=3, lengths=[9, 7, 9], padding="right")
    b = rb.batch
    m = method("cppo_shuffled", w_min=0.5)
    w = m(b).details["position_weight"]
    linear = method("cppo_no_pb", w_min=0.5)(b).details["position_weight"]
    for row in range(3):
        assert sorted(w[row].tolist()) == pytest.approx(sorted(linear[row].tolist()))
    assert not torch.equal(w, linear)
    b.sequence_ids = torch.tensor([7, 8, 9])
    again = m(b).details["position_weight"]
    assert torch.equal(m(b).details["position_weight"], again)  # deterministic
