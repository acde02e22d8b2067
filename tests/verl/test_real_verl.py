"""The harness losses inside the installed verl (0.9.1): registered through verl's own
``import_external_libs``, selected by verl's own config code, and equal to verl's own losses on
identical tensors. Skipped where verl is not installed; CI runs them in a second virtual environment
with verl and its pins (``.ci/run``)."""

import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

verl = pytest.importorskip("verl")
core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
from verl.utils.import_utils import import_external_libs  # noqa: E402

from methods import LossTotals, PolicyBatch, get_method  # noqa: E402
from methods.verl import VERL_AGGREGATIONS, verl_policy_loss  # noqa: E402
from methods.verl_config import check_config, load_config, verl_registry  # noqa: E402

B, T = 6, 7
RECIPE = ["actor_rollout_ref.model.external_lib=trh_test_losses",
          "actor_rollout_ref.actor.policy_loss.loss_mode=trh_cppo",
          "algorithm.rollout_correction.bypass_mode=true",
          "actor_rollout_ref.rollout.calculate_log_probs=true",
          "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"]


@pytest.fixture(scope="module", autouse=True)
def harness_losses(tmp_path_factory):
    """A module registering harness losses, imported the way every verl worker imports it."""
    folder = tmp_path_factory.mktemp("external_lib")
    (folder / "trh_test_losses.py").write_text(textwrap.dedent("""
        from methods.verl import register
        register("cppo", divergence="binary_tv", delta=0.05, delta_b=0.02)
        register("dppo", legacy_bypass=False, divergence="binary_tv", clip_ratio=0.05)
    """))
    saved = dict(core_algos.POLICY_LOSS_REGISTRY)
    sys.path.insert(0, str(folder))
    import_external_libs("trh_test_losses")
    yield
    sys.path.remove(str(folder))
    sys.modules.pop("trh_test_losses", None)
    core_algos.POLICY_LOSS_REGISTRY.clear()
    core_algos.POLICY_LOSS_REGISTRY.update(saved)


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(B, T, generator=g).mul(0.6).sub(0.8).clamp(max=-1e-3)
    old = (logp + 0.15 * torch.randn(B, T, generator=g)).clamp(max=-1e-3)
    adv = torch.randn(B, 1, generator=g).expand(B, T).clone()
    mask = torch.ones(B, T)
    mask[0, 5:] = 0
    mask[3, 2:] = 0
    return old, logp, adv, mask


def call(fn, old, logp, adv, mask, mode, config):
    logp = logp.clone().requires_grad_(True)
    loss, _ = fn(old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode=mode,
                 config=config, rollout_is_weights=None)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad


def actor_config(dp=1, tokens=None, sequences=None, **clip):
    """verl's own actor dataclass (its CISPO asserts the type), with the batch info verl's ppo_loss sets."""
    from verl.workers.config import ActorConfig

    cfg = ActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=2, ppo_mini_batch_size=4, rollout_n=1,
                      clip_ratio=0.2, clip_ratio_c=20.0, **clip)
    cfg.global_batch_info.update({"dp_size": dp, "batch_num_tokens": tokens, "global_batch_size": sequences,
                                  "loss_scale_factor": None})
    return cfg


def test_registered_through_verls_own_hook():
    for name, method in (("trh_cppo", "cppo"), ("trh_dppo", "dppo"), ("bypass_mode", "cppo")):
        assert core_algos.get_policy_loss_fn(name).trh_method == method


@pytest.mark.parametrize("mode", VERL_AGGREGATIONS)
@pytest.mark.parametrize("theirs, ours, clip", [
    ("dppo_tv", ("dppo", {"divergence": "binary_tv"}), {"clip_ratio_low": 0.05, "clip_ratio_high": 0.05}),
    ("dppo_kl", ("dppo", {"divergence": "binary_kl"}), {"clip_ratio_low": 0.05, "clip_ratio_high": 0.05}),
    ("cispo", ("cispo", {}), {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28}),
])
def test_equal_to_verls_own_losses_on_one_and_two_ranks(theirs, ours, clip, mode):
    """verl's own loss function and the harness loss given verl's clip names, on identical tensors:
    loss and gradient; with two data-parallel ranks (global counts) and on one (local counts)."""
    old, logp, adv, mask = tensors()
    verl_fn, harness = core_algos.get_policy_loss_fn(theirs), verl_policy_loss(ours[0], **ours[1], **clip)
    tokens, sequences = float(mask.sum()), float(B)
    for rows in ([slice(0, B)], [slice(0, 3), slice(3, B)]):
        dp = len(rows)
        cfg = actor_config(dp, tokens if dp > 1 else None, sequences if dp > 1 else None, **clip)
        for r in rows:
            a, b = (call(fn, old[r], logp[r], adv[r], mask[r], mode, cfg) for fn in (verl_fn, harness))
            torch.testing.assert_close(b[0], a[0], rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(b[1], a[1], rtol=1e-6, atol=1e-7)


def test_the_verl_loss_equals_the_registry_called_directly():
    old, logp, adv, mask = tensors(1)
    fn = core_algos.get_policy_loss_fn("trh_cppo")
    loss, grad = call(fn, old, logp, adv, mask, "seq-mean-token-mean", actor_config())
    method = get_method("cppo", horizon=T, divergence="binary_tv", delta=0.05, delta_b=0.02,
                        aggregation="seq-mean-token-mean")
    x = logp.clone().requires_grad_(True)
    out = method(PolicyBatch(logp=x, rollout_logp=old, advantages=adv, response_mask=mask.bool()),
                 LossTotals(num_sequences=float(B), horizon=T))
    (direct,) = torch.autograd.grad(out.loss, x)
    assert torch.equal(loss, out.loss.detach()) and torch.equal(grad, direct)


def test_the_recipe_selects_the_harness_loss_through_verls_config_code():
    """verl's own ppo_trainer config with the recipe's overrides, turned into verl's actor dataclass as
    its workers do: the actor's loss_mode is the harness loss (v1 trainer, the default), and in the
    legacy trainer verl's apply_bypass_mode renames it to 'bypass_mode', also the harness loss."""
    from verl import DataProto
    from verl.trainer.ppo.rollout_corr_helper import apply_bypass_mode
    from verl.utils.config import omega_conf_to_dataclass

    cfg = load_config(None, RECIPE)
    assert cfg.trainer.use_v1 is True
    check = check_config(cfg, verl_registry(cfg))
    assert (check.trainer, check.loss_called, check.harness_method, check.anchored_on_mu) == ("v1", "trh_cppo",
                                                                                             "cppo", True)
    assert check.ok, check.problems
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert core_algos.get_policy_loss_fn(actor.policy_loss.loss_mode).trh_method == "cppo"
    # the actor's own default rollout_correction (rollout_is 'sequence') is harmless: the loss runs
    old, logp, adv, mask = tensors(2)
    actor.global_batch_info.update({"dp_size": 1, "batch_num_tokens": None, "global_batch_size": None,
                                    "loss_scale_factor": None})
    call(core_algos.get_policy_loss_fn(actor.policy_loss.loss_mode), old, logp, adv, mask, actor.loss_agg_mode, actor)

    legacy = load_config(None, [*RECIPE, "trainer.use_v1=false"])
    batch = DataProto.from_dict({"rollout_log_probs": old, "responses": torch.zeros(B, T, dtype=torch.long)})
    policy_loss = OmegaConf.create(OmegaConf.to_container(legacy.actor_rollout_ref.actor.policy_loss))
    apply_bypass_mode(batch, legacy.algorithm.rollout_correction, policy_loss)
    assert policy_loss.loss_mode == "bypass_mode" and torch.equal(batch.batch["old_log_probs"], old)
    assert core_algos.get_policy_loss_fn(policy_loss.loss_mode).trh_method == "cppo"
    assert check_config(legacy, verl_registry(legacy)).loss_called == "bypass_mode"


def test_the_old_recipe_is_flagged_verl_will_call_vanilla():
    old_recipe = [r for r in RECIPE if "loss_mode" not in r]
    cfg = load_config(None, old_recipe)
    check = check_config(cfg, verl_registry(cfg))
    assert check.loss_called == "vanilla" and check.harness_method is None
    assert "verl will call 'vanilla', not a harness loss" in str(check)
