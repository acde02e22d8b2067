"""Which policy loss a verl (0.9.x) configuration will call, and whether it is anchored on μ.

verl picks the loss in two places. The actor calls ``actor_rollout_ref.actor.policy_loss.loss_mode``
(``workers/utils/losses.py::ppo_loss``). The legacy trainer (``trainer.use_v1=false``), in bypass mode,
first overwrites that key with ``"bypass_mode"`` (``rollout_corr_helper.apply_bypass_mode``); verl's
default v1 trainer does not: it only copies the rollout log-probs into ``old_log_probs``. So:

- v1 trainer: select the harness loss by its own name, ``policy_loss.loss_mode=trh_<method>``;
- legacy trainer in bypass mode: verl calls whatever is registered as ``"bypass_mode"``.

``methods.verl.register`` registers a loss under both names, so the recipe in the docs works in both
trainers. ``check_config`` reads a whole verl config (a mapping, an OmegaConf node, or verl's own
composed ``ppo_trainer``) and says what verl will call; ``trh verl-check`` prints it. No verl import
unless ``registry`` is left to be looked up (then only when verl is installed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .verl import config_get

ACTOR = "actor_rollout_ref.actor"
CORRECTION = "algorithm.rollout_correction"


def _get(cfg: Any, dotted: str, default=None):
    node = cfg
    for key in dotted.split("."):
        node = config_get(node, key)
    return default if node is None else node


@dataclass(frozen=True)
class VerlCheck:
    """What a verl config will do with the policy loss."""
    trainer: str                      # "v1" or "legacy"
    loss_called: str                  # the registered name the actor looks up
    harness_method: Optional[str]     # the registry method behind that name, if it is a harness loss
    anchored_on_mu: bool              # old_log_prob = the rollout engine's log-probs
    problems: tuple = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        who = f"the harness loss for {self.harness_method!r}" if self.harness_method else "not a harness loss"
        lines = [f"trainer: {self.trainer}",
                 f"verl will call: {self.loss_called} ({who})",
                 f"anchored on μ (rollout log-probs): {'yes' if self.anchored_on_mu else 'no'}"]
        lines += [f"problem: {p}" for p in self.problems]
        lines.append("ok" if self.ok else f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


def _harness_method(name: str, registry: Optional[dict]) -> Optional[str]:
    if registry is not None:
        return getattr(registry.get(name), "trh_method", None)
    return name[4:] if name.startswith("trh_") else None


def verl_registry(cfg) -> Optional[dict]:
    """verl's policy-loss registry after importing the config's ``external_lib`` (as every verl worker
    does), or None when verl is not installed here."""
    try:
        from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
        from verl.utils.import_utils import import_external_libs
    except ImportError:
        return None
    import_external_libs(_get(cfg, "actor_rollout_ref.model.external_lib"))
    return POLICY_LOSS_REGISTRY


def check_config(cfg, registry: Optional[dict] = None) -> VerlCheck:
    """Which loss ``cfg`` (a whole verl PPO config) makes verl call and whether it is anchored on μ,
    with every problem named by its key. ``registry``: verl's name → loss mapping (default: looked up
    by name alone — ``trh_<method>`` is a harness loss, ``bypass_mode`` is taken to be verl's)."""
    use_v1 = bool(_get(cfg, "trainer.use_v1", True))
    bypass = bool(_get(cfg, f"{CORRECTION}.bypass_mode", False))
    loss_mode = _get(cfg, f"{ACTOR}.policy_loss.loss_mode", "vanilla")
    called = "bypass_mode" if bypass and not use_v1 else loss_mode
    method = _harness_method(called, registry)
    problems = []
    if method is None:
        fix = (f"set {ACTOR}.policy_loss.loss_mode=trh_<method>" if use_v1 else
               "register the harness loss as 'bypass_mode' too (methods.verl.register does)")
        problems.append(f"verl will call {called!r}, not a harness loss: {fix}")
    if not bypass:
        problems.append(f"{CORRECTION}.bypass_mode is false: old_log_prob is verl's recomputed π_old, so the trust "
                        "region is anchored there, not on μ; set it to true")
    logprobs = bool(_get(cfg, "actor_rollout_ref.rollout.calculate_log_probs", False))
    if bypass and not logprobs:
        problems.append("actor_rollout_ref.rollout.calculate_log_probs must be true: bypass mode needs the rollout "
                        "engine's log-probs")
    for key in ("rollout_is", "rollout_rs"):
        value = _get(cfg, f"{CORRECTION}.{key}")
        if value is not None and method is not None:
            effect = ("the harness loss refuses its weights at the first call" if not bypass else
                      "the harness loss would ignore it (it refuses it at the first call)" if not use_v1 else
                      "verl does not apply it in bypass mode, and the harness loss has no such correction")
            problems.append(f"{CORRECTION}.{key}={value!r}: {effect}; set it to null")
    if method is not None and not _get(cfg, "actor_rollout_ref.model.external_lib"):
        problems.append("actor_rollout_ref.model.external_lib is unset: no verl worker would import the module "
                        "that registers the harness loss")
    return VerlCheck("v1" if use_v1 else "legacy", called, method, bypass and logprobs, tuple(problems))


def load_config(path: Optional[str], overrides: list[str]):
    """A verl config to check: ``path`` (YAML, e.g. the config verl saved for a run) or, without one,
    verl's own composed ``ppo_trainer`` (verl must be installed), with ``key=value`` overrides."""
    from omegaconf import OmegaConf

    if path is not None:
        return OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
    import os

    try:
        import verl
    except ImportError:
        raise ValueError("verl is not installed here: give the config file (--config CONFIG.yaml)") from None
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(os.path.dirname(verl.__file__), "trainer", "config"),
                               version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))
