"""Shipped warm-ups: the embedded default's is shipped under its current key, loaded without training
or caching, and is what the warm-up procedure trains."""

import re

import pytest
import torch

from harness.tasks.addition import ALPHABET as ADDITION
from harness import warmup
from harness.config import compose, resolve
from harness.model import CharTokenizer, build_model
from harness.tasks import make_task
from harness.provenance import cpu


def _default(*overrides):
    spec = resolve(compose(["setting=base_s", *overrides]))
    return spec.model, spec.warmup, make_task(spec.task)


def test_the_embedded_default_ships_its_warm_up_under_its_current_key():
    model_cfg, warmup_cfg, task = _default()
    found = warmup.shipped(warmup.warmup_key(model_cfg, warmup_cfg, task))
    assert found is not None, "base_s's warm-up is not shipped under its current key: run scripts/ship_warmup.py"
    state, info = found
    assert info["source"] == "shipped" and info["reached_target"]
    assert info["sampled_accuracy"] >= warmup_cfg.target_accuracy
    fresh = build_model(model_cfg, CharTokenizer(ADDITION).vocab_size, task.max_positions, seed=0)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in fresh.state_dict().items()}


def test_a_shipped_warm_up_is_loaded_without_training_or_caching(monkeypatch):
    def no_training(*_):
        raise AssertionError("trained a shipped warm-up")

    monkeypatch.setattr(warmup, "_train_and_save", no_training)
    model_cfg, warmup_cfg, task = _default()
    state, info = warmup.warm_start(model_cfg, warmup_cfg, task)
    shipped_state, _ = warmup.shipped(info["key"])
    assert all(torch.equal(state[k], shipped_state[k]) for k in shipped_state)
    assert not (warmup.cache_dir() / f"{info['key']}.pt").exists()
    # another config is not served the shipped weights
    assert warmup.shipped(warmup.warmup_key(*_default("warmup.lr=0.004"))) is None


def test_retraining_reproduces_the_shipped_warm_up(tmp_path):
    """The shipped file is what the procedure trains: on the CPU model and torch that shipped it, a
    fresh training gives the same weights (bitwise, in ``scripts/ship_warmup.py --check``; here within
    rounding). Another CPU's kernels round differently and may stop the warm-up at another step, so
    elsewhere there is nothing to compare — which is why the file is shipped."""
    model_cfg, warmup_cfg, task = _default()
    shipped_state, shipped_info = warmup.shipped(warmup.warmup_key(model_cfg, warmup_cfg, task))
    here = {"cpu": cpu(), "torch": torch.__version__}
    if shipped_info["trained_on"] != here:
        pytest.skip(f"shipped from {shipped_info['trained_on']}, this machine is {here}")
    state, info = warmup.train(model_cfg, warmup_cfg, task, tmp_path / "fresh.pt")
    assert (info["steps"], info["sampled_accuracy"]) == (shipped_info["steps"], shipped_info["sampled_accuracy"])
    for name, tensor in shipped_state.items():
        torch.testing.assert_close(state[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def _sweep_configs() -> list[tuple]:
    """Every (setting, overrides) a committed sweep spec trains, read by the sweeps' own loader; only
    the overrides that could change a warm-up are kept (a method's parameters cannot)."""
    from sweeps.search import parse_search
    from sweeps.spec import load_raw, parse, spec_names

    out = set()
    for name in spec_names():
        raw, path = load_raw(name)
        if "setting" in raw:  # an Optuna search: one setting
            search = parse_search(raw, {})
            pairs = [(search.setting, search.overrides)]
        else:
            spec = parse(raw, path)
            pairs = [(s, spec.overrides + v.overrides) for s in spec.settings for v in spec.variants]
        for setting, overrides in pairs:
            kept = tuple(o for o in overrides if not o.lstrip("+").startswith("method"))
            out.add((setting, kept))
    assert out, "no committed sweep spec found"
    return sorted(out)


@pytest.mark.parametrize("setting,overrides", _sweep_configs())
def test_every_committed_sweep_starts_from_a_shipped_warm_up(setting, overrides):
    """A fresh clone trains no warm-up for any committed sweep (the long_s warm-up alone took minutes)."""
    spec = resolve(compose([f"setting={setting}", *overrides]))
    if spec.engine.name != "local":
        pytest.skip(f"{setting} runs engine={spec.engine.name}, which has no warm-up")
    task = make_task(spec.task)
    key = warmup.warmup_key(spec.model, spec.warmup, task)
    found = warmup.shipped(key)
    assert found is not None, f"{setting}'s warm-up {key} is not shipped: run scripts/ship_warmup.py setting={setting}"
    state, info = found
    assert info["key"] == key
    fresh = build_model(spec.model, CharTokenizer(task.alphabet).vocab_size, task.max_positions, seed=0)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in fresh.state_dict().items()}


def test_other_warm_ups_are_trained_and_cached():
    spec = resolve(compose(["setting=smoke", "warmup.seed=3"]))
    state, info = warmup.warm_start(spec.model, spec.warmup, make_task(spec.task))
    assert "source" not in info and (warmup.cache_dir() / f"{info['key']}.pt").exists()


def _chain(*overrides):
    spec = resolve(compose(["setting=chain_s", "model=tiny", "warmup.start_from=null", "task.length=6", "task.lag=3",
                            "warmup.max_steps=2",
                            "warmup.check_every=1", "warmup.probe_size=4", "warmup.batch_size=4", *overrides]))
    return spec.model, spec.warmup, make_task(spec.task)


def test_a_warm_up_can_start_from_the_warm_up_of_a_task_variant(monkeypatch):
    """``warmup.start_from`` (a curriculum): the variant's warm-up (this warm-up config, the variant's
    task) is what that variant's own runs use, trained and cached once; this warm-up starts from its
    weights. With every gradient zeroed afterwards, the steps leave them exactly there."""
    variant = _chain("task.length=10")
    curriculum = _chain("warmup.start_from={length: 10}")
    plain = _chain()
    key = warmup.warmup_key(*curriculum)
    assert len({key, warmup.warmup_key(*variant), warmup.warmup_key(*plain)}) == 3
    variant_state, variant_info = warmup.warm_start(*variant)

    def zero_gradient(model, params, *_):
        for p in params:
            p.grad = torch.zeros_like(p)
        return torch.tensor(1.0)

    monkeypatch.setattr(warmup, "_sharded_gradient", zero_gradient)
    state, info = warmup.warm_start(*curriculum)
    assert info["key"] == key and info["steps"] >= 1 and info["started_from"] == variant_info["key"]
    assert all(torch.equal(state[k], variant_state[k]) for k in variant_state)
    plain_state, _ = warmup.warm_start(*plain)  # from the initialisation, not the variant
    assert not all(torch.equal(plain_state[k], variant_state[k]) for k in variant_state)


@pytest.mark.parametrize("value, message", [
    ("{lenght: 10}", "warmup.start_from.lenght is not a config key (did you mean warmup.start_from.length?)"),
    ("{length: 2}", "warmup.start_from.length must be in [4, 4096], got 2"),
    ("{name: addition}", "warmup.start_from.name cannot be changed"),
    ("{length: 6}", "changes nothing"),
    ("7", "warmup.start_from must be a mapping or None, got 7"),
])
def test_a_bad_start_from_is_one_line_naming_the_key(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _chain(f"warmup.start_from={value}")


def test_no_shipped_warm_ups_trains_even_a_shipped_one(monkeypatch):
    """``TRH_NO_SHIPPED_WARMUPS`` ignores the shipped files: the warm-up is trained (and cached)."""
    spec = resolve(compose(["setting=smoke"]))
    task = make_task(spec.task)
    assert warmup.shipped(warmup.warmup_key(spec.model, spec.warmup, task)) is not None
    monkeypatch.setenv("TRH_NO_SHIPPED_WARMUPS", "1")
    trained = []
    monkeypatch.setattr(warmup, "train", lambda *args, **kwargs: trained.append(args) or ({}, {"key": "trained"}))
    assert warmup.warm_start(spec.model, spec.warmup, task) == ({}, {"key": "trained"}) and len(trained) == 1
