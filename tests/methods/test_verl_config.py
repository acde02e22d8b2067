"""``check_config``: which loss a verl config makes verl call, and whether it is anchored on μ — on
configs written as verl 0.9.1 lays them out (``trainer.use_v1`` defaults to true there)."""

import pytest
import torch
from omegaconf import OmegaConf

from methods import MethodConfigError
from methods.verl import verl_policy_loss
from methods.verl_config import check_config, load_config


def verl_config(use_v1=True, bypass=True, loss_mode="trh_cppo", logprobs=True, external_lib="trh_losses", **rc):
    return OmegaConf.create({
        "trainer": {"use_v1": use_v1},
        "algorithm": {"rollout_correction": {"bypass_mode": bypass, "rollout_is": None, "rollout_rs": None, **rc}},
        "actor_rollout_ref": {"model": {"external_lib": external_lib},
                              "rollout": {"calculate_log_probs": logprobs},
                              "actor": {"policy_loss": {"loss_mode": loss_mode}}}})


def test_the_recipe_calls_the_harness_loss_anchored_on_mu_in_both_trainers():
    registry = {"trh_cppo": verl_policy_loss("cppo", divergence="binary_tv")}
    registry["bypass_mode"] = registry["trh_cppo"]  # what methods.verl.register does
    for use_v1, called in ((True, "trh_cppo"), (False, "bypass_mode")):
        check = check_config(verl_config(use_v1=use_v1), registry)
        assert (check.loss_called, check.harness_method, check.anchored_on_mu, check.ok) == (called, "cppo", True, True)
        assert "verl will call: " + called in str(check)


def test_the_old_bypass_mode_recipe_is_flagged_in_the_v1_trainer():
    """Registered as 'bypass_mode' with loss_mode left at verl's default: v1 calls vanilla."""
    registry = {"bypass_mode": verl_policy_loss("cppo", divergence="binary_tv"), "vanilla": lambda **_: None}
    check = check_config(verl_config(loss_mode="vanilla"), registry)
    assert check.loss_called == "vanilla" and check.harness_method is None and not check.ok
    assert "verl will call 'vanilla', not a harness loss" in check.problems[0]
    assert "policy_loss.loss_mode=trh_<method>" in check.problems[0]
    legacy = check_config(verl_config(use_v1=False, loss_mode="vanilla"), registry)
    assert (legacy.loss_called, legacy.harness_method, legacy.ok) == ("bypass_mode", "cppo", True)


@pytest.mark.parametrize("changes, key", [
    ({"bypass": False}, "algorithm.rollout_correction.bypass_mode is false"),
    ({"logprobs": False}, "calculate_log_probs must be true"),
    ({"external_lib": None}, "external_lib is unset"),
    ({"rollout_is": "sequence"}, "algorithm.rollout_correction.rollout_is='sequence'"),
    ({"rollout_rs": "token"}, "algorithm.rollout_correction.rollout_rs='token'"),
])
def test_each_problem_names_its_key(changes, key):
    check = check_config(verl_config(**changes))
    assert not check.ok and any(key in p for p in check.problems), check.problems
    if "bypass" in changes or "logprobs" in changes:
        assert not check.anchored_on_mu


def test_by_name_alone_trh_names_are_harness_losses():
    assert check_config(verl_config()).harness_method == "cppo"
    assert check_config(verl_config(use_v1=False)).harness_method is None  # verl's own bypass_mode, by name


def test_load_config_reads_a_file_with_overrides(tmp_path):
    path = tmp_path / "verl.yaml"
    OmegaConf.save(verl_config(loss_mode="vanilla"), path)
    cfg = load_config(str(path), ["actor_rollout_ref.actor.policy_loss.loss_mode=trh_dppo"])
    assert check_config(cfg).harness_method == "dppo"


def test_the_actors_own_default_correction_is_harmless_the_copied_one_is_refused():
    """verl 0.9.1's actor config defaults to policy_loss.rollout_correction = RolloutCorrectionConfig()
    (rollout_is 'sequence', bypass_mode false), read by nothing in the v1 trainer: accepted. The legacy
    trainer's bypass mode copies algorithm.rollout_correction there (bypass_mode true): refused if set."""
    fn = verl_policy_loss("dppo", divergence="binary_tv")
    logp = torch.zeros(2, 3)
    call = lambda cfg: fn(old_log_prob=logp, log_prob=logp, advantages=torch.ones(2, 3),  # noqa: E731
                          response_mask=torch.ones(2, 3), loss_agg_mode="token-mean", config=OmegaConf.create(cfg),
                          rollout_is_weights=None)
    call({"policy_loss": {"rollout_correction": {"rollout_is": "sequence", "bypass_mode": False}}})
    with pytest.raises(MethodConfigError, match=r"algorithm\.rollout_correction\.rollout_is is set"):
        call({"policy_loss": {"rollout_correction": {"rollout_is": "sequence", "bypass_mode": True}}})


def test_trh_verl_check_exits_by_verdict_and_names_the_key(tmp_path, capsys):
    from sweeps.cli import main

    path = tmp_path / "verl.yaml"
    OmegaConf.save(verl_config(loss_mode="vanilla"), path)
    assert main(["verl-check", "--config", str(path)]) == 1
    assert "verl will call 'vanilla', not a harness loss" in capsys.readouterr().out
    assert main(["verl-check", "--config", str(path), "actor_rollout_ref.actor.policy_loss.loss_mode=trh_cppo"]) == 0
    assert "verl will call: trh_cppo (the harness loss for 'cppo')" in capsys.readouterr().out
    assert main(["verl-check", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trh verl-check: FileNotFoundError") and len(err.strip().splitlines()) == 1
