"""Each method on small hand-built tensors, with masks, weights and losses written out by hand."""

import math

import pytest
import torch

from methods import PolicyBatch, get_method
from tests.methods.helpers import token_batch

L = math.log
HALF = L(0.5)


def assert_close(actual, expected, tol=1e-6):
    assert torch.allclose(torch.as_tensor(actual, dtype=torch.float64),
                          torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=0), (actual, expected)


def test_grpo_clip_higher_mask_weight_and_loss():
    # ρ = π/μ with μ = 0.5: row A=+1 has ρ = .5, 1, 1.2, 1.5; row A=−1 has ρ = .5, .9, 1, 1.5
    pi = [[0.25, 0.5, 0.6, 0.75], [0.25, 0.45, 0.5, 0.75]]
    batch = token_batch([[L(p) for p in r] for r in pi], [[HALF] * 4] * 2, [1.0, -1.0])
    out = get_method("grpo", aggregation="token-mean")(batch)
    # A>0: ρ ≤ 1 is toward μ, 1.2 ≤ 1.28 kept, 1.5 clipped. A<0: .5 < .8 clipped, others kept.
    assert out.mask.tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]
    assert_close(out.weight, [[0.5, 1.0, 1.2, 1.5], [0.5, 0.9, 1.0, 1.5]])
    expected = (-(0.5 * L(.25) + 1.0 * L(.5) + 1.2 * L(.6)) + (0.9 * L(.45) + 1.0 * L(.5) + 1.5 * L(.75))) / 8
    assert_close(out.loss, expected)
    out.loss.backward()
    # d loss / d logp_t = −A·M·W / (number of tokens)
    assert_close(batch.logp.grad, [[-0.5 / 8, -1 / 8, -1.2 / 8, 0], [0, 0.9 / 8, 1.0 / 8, 1.5 / 8]])
    assert out.metrics["mask_fraction"] == pytest.approx(2 / 8)
    assert out.metrics["mask_fraction_pos_adv"] == pytest.approx(1 / 4)
    assert out.metrics["mask_fraction_neg_adv"] == pytest.approx(1 / 4)
    assert out.metrics["ratio_min"] == pytest.approx(0.5)
    assert out.metrics["ratio_max"] == pytest.approx(1.5)


def test_pg_is_is_uncapped_while_truncation_cap_applies_elsewhere():
    batch = token_batch([[3.0 + HALF, HALF]], [[HALF, HALF]], [1.0])  # ρ = e^3 ≈ 20.09, 1
    pg = get_method("pg_is", aggregation="seq-mean-token-sum")(batch)
    assert_close(pg.weight, [[math.exp(3.0), 1.0]], tol=1e-4)
    assert pg.mask.tolist() == [[1, 1]]
    assert pg.metrics["truncated_fraction"] == 0.0
    dppo = get_method("dppo", divergence="binary_tv", delta=1.0, aggregation="seq-mean-token-sum")(batch)
    assert_close(dppo.weight, [[20.0, 1.0]])
    assert dppo.metrics["truncated_fraction"] == pytest.approx(0.5)


def test_cispo_clips_the_weight_and_never_masks():
    batch = token_batch([[L(0.25), L(1.0), L(0.6)]], [[HALF, HALF, L(0.1)]], [-1.0])  # ρ = .5, 2, 6
    out = get_method("cispo", aggregation="token-mean")(batch)
    assert out.mask.tolist() == [[1, 1, 1]]
    assert_close(out.weight, [[0.5, 2.0, 5.0]])
    assert out.metrics["cap_hit_fraction"] == pytest.approx(1 / 3)
    assert_close(out.loss, (0.5 * L(.25) + 2.0 * L(1.0) + 5.0 * L(.6)) / 3)
    lower = get_method("cispo", lower=0.8, cap=3.0, aggregation="token-mean")(batch)
    assert_close(lower.weight, [[0.8, 2.0, 3.0]])
    assert lower.metrics["lower_clip_fraction"] == pytest.approx(1 / 3)


def test_minpro_strict_prefix_minimum_and_switches():
    lr = [0.2, -0.5, 0.3, -0.1]
    batch = token_batch([lr], [[0.0] * 4], [1.0])  # logp − logμ = log ρ directly (μ = 1 is fine here)
    out = get_method("minpro", aggregation="token-mean")(batch)
    # ρ̲ = 1, ρ_1, min(ρ_1, ρ_2), min(ρ_1..ρ_3) = 1, e^.2, e^−.5, e^−.5
    prefix = [0.0, 0.2, -0.5, -0.5]
    assert_close(out.details["prefix_ratio"], [[math.exp(p) for p in prefix]])
    assert_close(out.weight, [[math.exp(p + r) for p, r in zip(prefix, lr)]])
    assert out.metrics["prefix_ratio_mean"] == pytest.approx(sum(math.exp(p) for p in prefix) / 4)
    inclusive = get_method("minpro", inclusive_min=True, horizon=4)
    assert_close(inclusive(batch).weight, [[math.exp(0.4), math.exp(-1.0), math.exp(-0.2), math.exp(-0.6)]])
    capped = get_method("minpro", cap_prefix_at_one=True, horizon=4)
    assert_close(capped(batch).details["prefix_ratio"], [[1.0, 1.0, math.exp(-0.5), math.exp(-0.5)]])


# A shared hand-built CPPO example: μ(y_t) = 0.5, π = .70, .45, .66, .60 → Binary-TV D = .20, .05, .16, .10;
# ρ = 1.4, 0.9, 1.32, 1.2; A = +1, so token 2 moves toward μ and the others away.
CPPO_PI = [0.70, 0.45, 0.66, 0.60]


def cppo_batch():
    return token_batch([[L(p) for p in CPPO_PI]], [[HALF] * 4], [1.0])


CPPO_COMMON = dict(divergence="binary_tv", delta=0.15, w_min=0.7, budget="fixed", delta_b=0.05, horizon=4)


def test_cppo_hard_mask_by_hand():
    out = get_method("cppo", **CPPO_COMMON)(cppo_batch())
    # w = 1, .9, .8, .7; Z = .2, .045, .128, .07; S_{t−1} = 0, .2, .245, .373; W_{t−1} = 0, 1, 1.9, 2.7
    # c = min(.15, .15 + .05·W − S) = .15, 0, 0, −.088
    assert_close(out.details["position_weight"], [[1.0, 0.9, 0.8, 0.7]])
    assert_close(out.details["weighted_divergence"], [[0.2, 0.045, 0.128, 0.07]])
    assert_close(out.details["threshold"], [[0.15, 0.0, 0.0, -0.088]])
    # t1 fails the token test (Z > δ); t2 moves toward μ (kept, but its Z still enters S);
    # t3, t4 pass the token test and fail the budget → budget-mask share 2/3
    assert out.mask.tolist() == [[0, 1, 0, 0]]
    assert out.metrics["budget_mask_share"] == pytest.approx(2 / 3)
    assert out.metrics["delta_b_mean"] == pytest.approx(0.05)
    # seq-mean-token-sum-norm: −(1/N)(Σ A·M·ρ·logp)/H with N = 1, H = 4
    assert_close(out.loss, -(0.9 * L(0.45)) / 4)


def test_cppo_ablations_by_hand():
    batch = cppo_batch()
    # w/o prefix budget: w_t D_t ≤ δ → t3 passes (0.128) although D_3 = .16 > δ
    assert get_method("cppo_no_pb", **CPPO_COMMON)(batch).mask.tolist() == [[0, 1, 1, 1]]
    # DPPO: D_t ≤ δ
    assert get_method("dppo", divergence="binary_tv", delta=0.15, horizon=4)(batch).mask.tolist() == [[0, 1, 0, 1]]
    # w ≡ 1 with budget: c = .15, .15+.05−.2, .15+.1−.25, .15+.15−.41 = .15, 0, 0, −.11
    no_pw = get_method("cppo_no_pw", **CPPO_COMMON)(batch)
    assert_close(no_pw.details["threshold"], [[0.15, 0.0, 0.0, -0.11]])
    assert no_pw.mask.tolist() == [[0, 1, 0, 0]]
    # shuffled weights: same multiset of thresholds δ/w_t, permuted; no budget
    shuffled = get_method("cppo_shuffled", **CPPO_COMMON)(batch)
    assert sorted(shuffled.details["position_weight"][0].tolist()) == pytest.approx([0.7, 0.8, 0.9, 1.0])
    assert shuffled.mask[0, 1] == 1


def test_cppo_soft_gate_by_hand():
    out = get_method("cppo_soft", **CPPO_COMMON)(cppo_batch())
    # x_t = max(Z_t/δ, S_t/(δ + δ_b W_{t−1})); g = min(1, 1/x)
    x1 = max(0.2 / 0.15, 0.2 / 0.15)
    x3 = max(0.128 / 0.15, 0.373 / 0.245)
    x4 = max(0.07 / 0.15, 0.443 / 0.285)
    assert_close(out.mask, [[1 / x1, 1.0, 1 / x3, 1 / x4]])
    assert out.metrics["mask_fraction"] == pytest.approx((3 - 1 / x1 - 1 / x3 - 1 / x4) / 4)


def test_cppo_dynamic_budget_is_the_clamped_p90():
    # D = .01, .02, .025, .03 → P90 (linear) = .025 + .7·.005 = .0285 ∈ [.02, .04]
    pi = [0.51, 0.52, 0.525, 0.53]
    batch = token_batch([[L(p) for p in pi]], [[HALF] * 4], [1.0])
    out = get_method("cppo", divergence="binary_tv", horizon=4)(batch)
    assert out.metrics["delta_b_mean"] == pytest.approx(0.0285, abs=1e-6)
    assert out.metrics["divergence_p90"] == pytest.approx(0.0285, abs=1e-6)
    # large divergences clamp at 2·δ_b_min
    big = token_batch([[L(0.9), L(0.8)]], [[HALF, HALF]], [1.0])
    assert get_method("cppo", divergence="binary_tv", horizon=2)(big).metrics["delta_b_mean"] == pytest.approx(0.04)


def one_token_topk_batch(mu_probs, pi_probs, sampled, top_ids, advantage=1.0):
    """One response of one token over a small vocabulary, with μ's top-K ids given explicitly."""
    mu, pi = torch.tensor(mu_probs).log(), torch.tensor(pi_probs).log()
    k = len(top_ids)
    return PolicyBatch(
        logp=pi[sampled].reshape(1, 1).clone().requires_grad_(True), rollout_logp=mu[sampled].reshape(1, 1),
        advantages=torch.tensor([advantage]), response_mask=torch.ones(1, 1, dtype=torch.bool),
        response_ids=torch.tensor([[sampled]]), rollout_topk_ids=torch.tensor([[top_ids]]),
        rollout_topk_logp=mu[top_ids].reshape(1, 1, k), policy_topk_logp=pi[top_ids].reshape(1, 1, k))


def test_dppo_with_topk_tv_by_hand():
    # V = 4; μ = (.5, .3, .1, .1), π = (.4, .4, .1, .1); K = 2 → S = {0, 1}; sampled token 1 (in S)
    batch = one_token_topk_batch([0.5, 0.3, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1], sampled=1, top_ids=[0, 1])
    # TV = ½(|.5−.4| + |.3−.4| + |.2−.2|) = 0.1; KL = .5 log(.5/.4) + .3 log(.3/.4) + .2 log 1
    tv = get_method("dppo", top_k=2, delta=0.15, horizon=1)(batch)
    assert tv.details["divergence"].item() == pytest.approx(0.1, abs=1e-6)
    assert tv.mask.item() == 1
    assert get_method("dppo", top_k=2, delta=0.05, horizon=1)(batch).mask.item() == 0  # away (ρ = 4/3)
    kl = get_method("dppo", top_k=2, divergence="topk_kl", horizon=1)(batch)
    assert kl.details["divergence"].item() == pytest.approx(0.5 * L(0.5 / 0.4) + 0.3 * L(0.3 / 0.4), abs=1e-6)


def test_trm_sequence_masks_by_hand():
    # k2 = ½(log ρ)²: row 1 log ρ = .1, −.2 → k2 = .005, .02; row 2 log ρ = .4, 0 → .08, 0
    batch = token_batch([[0.1, -0.2], [0.4, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [1.0, -1.0])
    common = dict(divergence="k2", aggregation="seq-mean-token-sum")
    trm_max = get_method("trm_max", **common)(batch)  # δ_max = .05: row 1 max .02 ok, row 2 max .08 rejected
    assert trm_max.mask.tolist() == [[1, 1], [0, 0]]
    assert trm_max.metrics["seq_acceptance_rate"] == 0.5
    # the rejected response still counts in N = 2
    assert_close(trm_max.loss, -(math.exp(0.1) * 0.1 + math.exp(-0.2) * -0.2) / 2)
    trm_avg = get_method("trm_avg", delta_avg=0.015, **common)(batch)  # means .0125 and .04
    assert trm_avg.mask.tolist() == [[1, 1], [0, 0]]
    both = get_method("trm_max_avg", delta_max=0.1, delta_avg=0.01, **common)(batch)  # row 1 mean .0125 > .01
    assert both.mask.tolist() == [[0, 0], [0, 0]]
    # no toward-μ exemption: row 2 token 1 (A<0, ρ>1 ... ) and token 2 (ρ = 1) are rejected all the same
    assert trm_max.mask[1, 1] == 0


def test_aggregation_modes_by_hand():
    # two responses, lengths 3 and 1; token losses −A·ρ·logp with ρ = 1 (π = μ): ℓ = −A·logp
    logp = [[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]]
    mask = [[1, 1, 1], [1, 0, 0]]
    batch = token_batch(logp, logp, [1.0, 2.0], mask)
    expected = {
        "token-mean": (6.0 + 8.0) / 4,
        "seq-mean-token-mean": (6.0 / 3 + 8.0 / 1) / 2,
        "seq-mean-token-sum": (6.0 + 8.0) / 2,
        "seq-mean-token-sum-norm": (6.0 + 8.0) / (2 * 10),
    }
    for mode, value in expected.items():
        out = get_method("pg_is", aggregation=mode, horizon=10)(batch)
        assert out.loss.item() == pytest.approx(value), mode


def test_masked_tokens_stay_in_the_denominator():
    # GRPO masks token 3 (A>0, ρ = 2 > 1.28); token-mean still divides by all 4 valid tokens
    batch = token_batch([[-1.0, -2.0, L(2.0) - 3.0], [-4.0, 0.0, 0.0]],
                        [[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]], [1.0, 2.0], [[1, 1, 1], [1, 0, 0]])
    out = get_method("grpo", aggregation="token-mean")(batch)
    assert out.mask.tolist() == [[1, 1, 0], [1, 0, 0]]
    assert out.loss.item() == pytest.approx((1.0 + 2.0 + 8.0) / 4)


@pytest.mark.parametrize("name, at_tie, below", [
    ("dppo", {"delta": 0.125}, {"delta": 0.1249}),
    ("cppo", {"delta": 0.125, "budget": "fixed"}, {"delta": 0.1249, "budget": "fixed"}),
    ("trm_max", {"delta_max": 0.125}, {"delta_max": 0.1249}),
    ("trm_avg", {"delta_avg": 0.125}, {"delta_avg": 0.1249}),
])
def test_ties_are_kept(name, at_tie, below):
    # log ρ = 0.5 (away from μ for A > 0) gives k2 = ½·0.25 = 0.125 exactly: D = δ keeps the token (≤)
    batch = token_batch([[0.5]], [[0.0]], [1.0])
    out = get_method(name, divergence="k2", horizon=1, **at_tie)(batch)
    assert out.details["divergence"].item() == 0.125
    assert out.mask.tolist() == [[1.0]]
    assert get_method(name, divergence="k2", horizon=1, **below)(batch).mask.tolist() == [[0.0]]


@pytest.mark.parametrize("name", ["dppo", "cppo", "cppo_soft"])
def test_unchanged_sampled_token_counts_as_toward_mu(name):
    # ρ = 1 exactly (A(ρ−1) = 0 ≤ 0) while π moved mass among other tokens: D = 0.2 > δ, still kept
    batch = one_token_topk_batch([0.5, 0.3, 0.1, 0.1], [0.3, 0.3, 0.3, 0.1], sampled=1, top_ids=[0, 1])
    out = get_method(name, top_k=2, horizon=1, budget="fixed")(batch) if name != "dppo" else \
        get_method(name, top_k=2, horizon=1)(batch)
    assert out.details["divergence"].item() == pytest.approx(0.2, abs=1e-6)
    assert out.mask.item() == 1.0


def test_sampled_token_outside_topk_replaces_the_kth_entry():
    # μ = (.5, .3, .1, .1), π = (.4, .2, .2, .2), K = 2 → top ids {0, 1}; sampled token 3 replaces id 1:
    # S = {0, 3}: ½(|.5−.4| + |.1−.2| + |.4−.4|) = 0.1   (without forcing, {0, 1} would give 0.2)
    batch = one_token_topk_batch([0.5, 0.3, 0.1, 0.1], [0.4, 0.2, 0.2, 0.2], sampled=3, top_ids=[0, 1])
    out = get_method("dppo", top_k=2, horizon=1)(batch)
    assert out.details["divergence"].item() == pytest.approx(0.1, abs=1e-6)
    # and with the sampled token already in the set nothing is replaced: sampled 1 → S = {0, 1}
    batch = one_token_topk_batch([0.5, 0.3, 0.1, 0.1], [0.4, 0.2, 0.2, 0.2], sampled=1, top_ids=[0, 1])
    assert get_method("dppo", top_k=2, horizon=1)(batch).details["divergence"].item() == pytest.approx(0.2, abs=1e-6)
