"""Bad input (docs/methods.md, "Bad input") gets an error that names the field; the registry and `trh methods`."""

import json
import math
import subprocess
import sys

import pytest
import torch

from methods import BatchError, MethodConfigError, get_method, list_methods, method_names
from tests.methods.helpers import random_batch, token_batch

# the methods and ablations the paper compares (the registry may hold more)
PAPER_METHODS = ["pg_is", "grpo", "cispo", "minpro", "dppo", "trm_max", "trm_avg", "trm_max_avg", "cppo",
                 "cppo_no_pw", "cppo_no_pb", "cppo_shuffled", "cppo_soft"]


def test_registry_holds_every_method_of_the_paper():
    assert set(PAPER_METHODS) <= set(method_names())


def test_method_configs_are_checked_against_the_registry():
    """Every conf/method file is a registered method's; every registered method composes."""
    from harness.config import CONFIG_DIR, compose, resolve

    files = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml"))
    assert set(files) <= set(method_names()), sorted(set(files) - set(method_names()))
    for name in method_names():
        assert resolve(compose([f"method={name}", "setting=smoke"])).method_name == name


def test_unknown_method_lists_the_registered_names():
    with pytest.raises(MethodConfigError) as err:
        get_method("ppo_kl")
    assert "ppo_kl" in str(err.value)
    for name in method_names():
        assert name in str(err.value)


@pytest.mark.parametrize("name, params, field", [
    ("dppo", {"delta": 0.0}, "delta"),
    ("dppo", {"delta": -1.0}, "delta"),
    ("cppo", {"w_min": 0.0}, "w_min"),
    ("cppo", {"w_min": 1.5}, "w_min"),
    ("cppo", {"delta_b": 0.0}, "delta_b"),
    ("cppo", {"delta_b_max": 0.01}, "delta_b_max"),
    ("dppo", {"top_k": 0}, "top_k"),
    ("grpo", {"truncation_cap": 0.0}, "truncation_cap"),
    ("cispo", {"cap": -1.0}, "cap"),
    ("cispo", {"lower": 6.0}, "lower"),
    ("trm_max", {"delta_max": None}, "delta_max"),
    ("cppo", {"divergence": "js"}, "divergence"),
    ("cppo", {"budget": "adaptive"}, "budget"),
    ("grpo", {"aggregation": "sum"}, "aggregation"),
    ("dppo", {"delta": "0.1"}, "delta"),
    ("dppo", {"top_k": 2.5}, "top_k"),
    ("cppo", {"prefix_budget": 1}, "prefix_budget"),
    ("grpo", {"delta": 0.1}, "delta"),  # not a GRPO parameter
])
def test_bad_parameters_name_the_field(name, params, field):
    with pytest.raises(MethodConfigError) as err:
        get_method(name, **params)
    assert field in str(err.value) and name in str(err.value)


def test_choice_errors_list_the_allowed_values():
    with pytest.raises(MethodConfigError, match="topk_tv.*binary_kl"):
        get_method("dppo", divergence="tv")


def test_ints_are_accepted_for_floats_and_inf_for_caps():
    m = get_method("cppo", delta=1, truncation_cap=math.inf, delta_b=math.inf, budget="fixed")
    assert isinstance(m.params.delta, float) and m.params.delta == 1.0


def test_missing_horizon_is_a_clear_error():
    batch = token_batch([[0.0]], [[0.0]], [1.0])
    with pytest.raises(MethodConfigError, match="horizon"):
        get_method("grpo")(batch)
    assert torch.isfinite(get_method("grpo", horizon=8)(batch).loss)


def test_batch_shape_errors_name_the_field():
    rb = random_batch(0)
    b = rb.batch
    m = get_method("dppo", top_k=4, horizon=9)
    cases = {
        "rollout_logp": dict(rollout_logp=b.rollout_logp[:, :-1]),
        "response_mask": dict(response_mask=b.response_mask[:-1]),
        "advantages": dict(advantages=torch.zeros(7)),
        "policy_topk_logp": dict(policy_topk_logp=b.policy_topk_logp[..., :2]),
        "response_ids": dict(response_ids=b.response_ids[:, :3]),
    }
    for field, change in cases.items():
        with pytest.raises(BatchError, match=field):
            m({**vars(b), **change})


def test_topk_method_without_topk_data_says_what_is_missing():
    batch = token_batch([[0.0, 0.1]], [[0.0, 0.0]], [1.0])
    with pytest.raises(BatchError, match="rollout_topk_ids"):
        get_method("cppo", horizon=2)(batch)
    # the Binary variant needs no Top-K data
    assert torch.isfinite(get_method("cppo", divergence="binary_tv", horizon=2)(batch).loss)


def test_topk_data_narrower_than_k():
    rb = random_batch(0, top_k=4)
    with pytest.raises(BatchError, match="top_k"):
        get_method("dppo", horizon=9)(rb.batch)  # default K = 20 > 4


def test_non_finite_logprobs_at_valid_positions_are_rejected_but_padding_may_hold_anything():
    m = get_method("grpo", horizon=2)
    with pytest.raises(BatchError, match="logp"):
        m(token_batch([[float("nan"), 0.0]], [[0.0, 0.0]], [1.0]))
    with pytest.raises(BatchError, match="rollout_logp"):
        m(token_batch([[0.0, 0.0]], [[-math.inf, 0.0]], [1.0]))
    with pytest.raises(BatchError, match="advantages"):
        m(token_batch([[0.0, 0.0]], [[0.0, 0.0]], [float("inf")]))
    ok = m(token_batch([[0.0, float("nan")]], [[0.0, -math.inf]], [1.0], mask=[[1, 0]]))
    assert torch.isfinite(ok.loss)


def test_batch_mapping_with_unknown_or_missing_fields():
    with pytest.raises(BatchError, match="logprobs"):
        get_method("grpo", horizon=1)({"logprobs": torch.zeros(1, 1)})
    with pytest.raises(BatchError, match="advantages"):
        get_method("grpo", horizon=1)({"logp": torch.zeros(1, 1), "rollout_logp": torch.zeros(1, 1),
                                        "response_mask": torch.ones(1, 1)})


def test_list_methods_describes_typed_params_with_registry_defaults():
    rows = {r["name"]: r for r in list_methods()}
    assert set(rows) == set(method_names())
    params = {p["name"]: p for p in rows["trm_avg"]["params"]}
    assert params["delta_avg"]["default"] == 0.001 and params["delta_max"]["default"] is None
    assert params["divergence"]["default"] == "topk_kl"
    assert {p["name"]: p["default"] for p in rows["cppo_shuffled"]["params"]}["position_weights"] == "shuffled"
    assert math.isinf({p["name"]: p["default"] for p in rows["pg_is"]["params"]}["truncation_cap"])
    for row in rows.values():
        assert row["description"] and row["reference"]
        for p in row["params"]:
            assert p["doc"] and p["type"]


def test_trh_methods_command():
    out = subprocess.run([sys.executable, "-m", "sweeps.cli", "methods"], capture_output=True, text=True, check=True)
    for name in method_names():
        assert f"\n{name} " in "\n" + out.stdout
    assert "w_min = 0.8" in out.stdout and "eps_high = 0.28" in out.stdout
    js = subprocess.run([sys.executable, "-m", "sweeps.cli", "methods", "cppo", "--json"],
                        capture_output=True, text=True, check=True)
    rows = json.loads(js.stdout)
    assert [r["name"] for r in rows] == ["cppo"]
    bad = subprocess.run([sys.executable, "-m", "sweeps.cli", "methods", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "nope" in bad.stderr
