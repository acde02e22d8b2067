"""The typed run config: every key checked, run ids from the typed groups with defaults left out, one
thread default for trh train and sweeps, every method parameter recorded, strict JSON."""

import ast
import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from harness import runconfig as rc
from harness.config import ConfigError, compose, id_dict, resolve, run_id
from harness.schema import knob
from harness.store import RunStore, run_folders

REPO = Path(__file__).resolve().parents[2]


def _committed(every: int = 1):
    folders = [f for f in run_folders(REPO / "results" / "embedded") if RunStore(f).read_status()]
    assert len(folders) >= 500
    return folders[::every]


def test_every_committed_cell_keeps_its_id():
    for folder in _committed():
        assert run_id(RunStore(folder).read_config()) == folder.name.rsplit("-", 1)[-1], folder


def _with_new_knob(monkeypatch, group: str, cls, default):
    """``cls`` with one more knob (``new_knob``) at ``default``, as a later change would add it."""
    grown = dataclasses.make_dataclass(cls.__name__, [("new_knob", type(default), knob(default, "added later"))],
                                       bases=(cls,), frozen=True)
    monkeypatch.setattr(rc, group, grown)
    return grown


def test_a_key_added_with_a_default_renames_no_committed_run(monkeypatch):
    _with_new_knob(monkeypatch, "RL", rc.RL, 0.5)
    folders = _committed(every=11)
    for folder in folders:
        assert run_id(RunStore(folder).read_config()) == folder.name.rsplit("-", 1)[-1], folder
    config = RunStore(folders[0]).read_config()
    assert run_id({**config, "rl": {**config["rl"], "new_knob": 0.5}}) == folders[0].name.rsplit("-", 1)[-1]
    assert run_id({**config, "rl": {**config["rl"], "new_knob": 0.7}}) != folders[0].name.rsplit("-", 1)[-1]


def test_a_task_knob_added_with_a_default_renames_no_committed_run():
    from harness.tasks import addition

    grown = dataclasses.make_dataclass("AdditionConfig", [("carry_hint", bool, knob(False, "added later"))],
                                       bases=(addition.AdditionConfig,), frozen=True)
    folder = _committed(every=50)[0]
    config = RunStore(folder).read_config()
    original = addition.Addition.Config
    addition.Addition.Config = grown
    try:
        assert run_id(config) == folder.name.rsplit("-", 1)[-1]
        assert run_id({**config, "task": {**config["task"], "carry_hint": True}}) != folder.name.rsplit("-", 1)[-1]
    finally:
        addition.Addition.Config = original


def test_a_changed_value_changes_the_id_and_a_default_written_out_does_not():
    base = resolve(compose(["setting=smoke"]))
    assert resolve(compose(["setting=smoke", "rl.lr=2e-4"])).config_hash != base.config_hash
    assert resolve(compose(["setting=smoke", "seed=1"])).config_hash != base.config_hash
    # a method parameter at its registered default, written out or not, is the same run
    assert resolve(compose(["setting=smoke", "method.top_k=20"])).config_hash == base.config_hash
    assert resolve(compose(["setting=smoke", "method.top_k=5"])).config_hash != base.config_hash
    assert resolve(compose(["setting=smoke", "rl.weight_decay=0"])).config_hash == base.config_hash  # 0 is 0.0


@pytest.mark.parametrize("override, match", [
    ("+rl.lrr=0.001", r"^rl.lrr is not a config key \(did you mean rl.lr\?\); rl has: prompts_per_iter"),
    ("rl.lrr=0.001", r"^rl.lrr is not a config key"),
    ("+setting.detla=0.5", r"^setting.detla is not a config key \(did you mean setting.delta\?\)"),
    ("+colour=red", r"^colour is not a config key; a run config has: seed"),
    ("engine.threads=0", r"^engine.threads must be >= 1, got 0"),
    ("engine.threads=-3", r"^engine.threads must be >= 1, got -3"),
    ("engine.threads=null", r"^engine.threads must be an int, got None"),
    ("rl.lr=inf", r"^rl.lr must be finite"),
    ("eval.top_p=1.5", r"^eval.top_p must be in \(0, 1\]"),
    ("rl.aggregation=sum", r"^rl.aggregation must be one of 'seq-mean-token-sum-norm'"),
    ("rl.minibatch_prompts=4", r"^rl.minibatch_prompts is read by engine=trl only"),
    ("setting.delta=0.2", r"^setting.delta is the setting's default of method.delta; set method.delta=\.\.\. instead"),
    ("method.deltaa=0.2", r"^method cppo: unknown parameter\(s\) \['deltaa'\]"),
    ("task.digitz=3", r"^task.digitz is not a config key \(did you mean task.digits\?\)"),
    ("task=chain", r"^task.digits is not a config key; task has: name, reward, length"),
    ("task.reward=nowhere_at_all:fn", r"^task.reward: cannot import 'nowhere_at_all'"),
    ("task.reward=json", r"^task.reward must be 'package.module:function'"),
])
def test_every_bad_key_or_value_is_one_line_naming_it(override, match):
    with pytest.raises(ConfigError, match=match) as err:
        resolve(compose(["setting=smoke", override]))
    assert "\n" not in str(err.value)


def test_method_parameters_need_no_plus_and_config_yaml_records_them_all():
    spec = resolve(compose(["setting=smoke", "method.top_k=5", "method.gate=soft"]))
    assert spec.method_params["top_k"] == 5 and spec.method_params["gate"] == "soft"
    recorded = spec.resolved["method"]
    assert {"divergence", "top_k", "gate", "position_weights", "delta", "w_min", "delta_b"} <= set(recorded)
    from omegaconf import OmegaConf
    text = OmegaConf.to_yaml(OmegaConf.create(spec.resolved))  # what config.yaml holds
    assert run_id(yaml.safe_load(text)) == spec.config_hash


def test_trh_train_and_a_sweep_cell_of_the_same_config_share_an_id(tmp_path):
    """One thread default for both (recorded in the id), so trh train's numbers never follow OMP_NUM_THREADS."""
    from sweeps.spec import expand, load_raw, parse

    train_spec = resolve(compose([]))  # trh train: cppo on base_s, seed 0
    assert train_spec.engine.threads == 1
    raw, path = load_raw("demo")
    cells = expand(parse(raw, path), tmp_path)
    (cell,) = [c for c in cells if c.method == "cppo" and c.seed == 0]
    assert cell.id == train_spec.config_hash


def test_metrics_and_status_are_strict_json(tmp_path):
    store = RunStore(tmp_path / "run")
    store.dir.mkdir()
    store.append_metrics({"step": 1, "divergence_mean": float("nan"), "ratio_max": float("inf"), "ok": 0.5})
    store.write_status(state="done", best_headline=float("nan"))
    def refuse(constant):
        raise ValueError(f"bare {constant}")
    row = json.loads((store.dir / "metrics.jsonl").read_text(), parse_constant=refuse)
    assert row == {"step": 1, "divergence_mean": None, "ratio_max": None, "ok": 0.5}
    assert json.loads((store.dir / "status.json").read_text(), parse_constant=refuse)["best_headline"] is None


def test_trl_settings_check_their_geometry():
    spec = resolve(compose(["setting=lm_tiny"]))
    assert isinstance(spec.engine, rc.TrlEngine) and isinstance(spec.model, rc.TinyLM)
    with pytest.raises(ConfigError, match=r"rl.prompts_per_iter \(4\) must equal rl.minibatch_prompts \(3\)"):
        resolve(compose(["setting=lm_tiny", "rl.minibatch_prompts=3"]))
    with pytest.raises(ConfigError, match=r"model.source must be one of \['hub', 'package', 'tiny'\]"):
        resolve(compose(["setting=lm_tiny", "model.source=disk"]))


def test_no_module_reaches_a_task_but_through_the_registry():
    """Engines, warm-up and evaluation name no task: only harness/tasks/ imports a task module."""
    offenders = []
    for path in (REPO / "harness").rglob("*.py"):
        if "tasks" in path.relative_to(REPO / "harness").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [f"{node.module or ''}"] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[-1] in ("addition", "math_task", "chain", "task") or ".tasks." in f".{n}."
                   and n.rsplit(".", 1)[-1] not in ("tasks", "make_task", "get_task", "load_reward", "task_classes",
                                                    "task_names", "Task", "LocalTask")
                   for n in names):
                offenders.append(f"{path.relative_to(REPO)}: {names}")
    assert not offenders, offenders
    assert not (REPO / "harness" / "task.py").exists() and not (REPO / "harness" / "math_task.py").exists()


def test_the_run_config_groups_document_every_knob():
    for cls in (rc.Warmup, rc.RL, rc.Eval, rc.Collapse, rc.LocalEngine, rc.TrlEngine, rc.Setting, rc.ModelSize):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"
    assert math.isclose(id_dict(resolve(compose([])).resolved)["rl"]["lr"], 1e-4)


def test_a_committed_cell_replays_from_its_config(tmp_path):
    """A committed stress cell (shipped warm-up), retrained for two steps from its own config.yaml: the
    warm start's evaluation (step 0) is the committed row on any CPU; the training rows are the
    committed rows bitwise, times aside, on the CPU that trained it (elsewhere kernels round
    differently within a step)."""
    from omegaconf import OmegaConf

    from harness.provenance import cpu
    from harness.train import run

    folder = next(f for f in _committed() if f.name.startswith("stress-cppo-s20-"))
    config = RunStore(folder).read_config()
    short = {**config, "setting": {**config["setting"], "steps": 2, "t_stop": 2},
             "logging": {"progress": False}, "run_dir": str(tmp_path / "replay")}
    run(OmegaConf.create(short))
    strip = lambda r: {k: (None if isinstance(v, float) and math.isnan(v) else v)  # noqa: E731
                       for k, v in r.items() if not k.startswith("time_")}
    committed = [strip(r) for r in RunStore(folder).read_metrics()]
    replayed = [strip(r) for r in RunStore(tmp_path / "replay").read_metrics()]
    assert replayed[0] == committed[0]
    if RunStore(folder).read_status()["provenance"]["cpu"] == cpu():
        assert replayed[1] == committed[1]
        assert {k: v for k, v in replayed[2].items() if k not in ("val_a", "val_b", "val_c", "headline")} == committed[2]


def _pinned_configs():
    """The settings × methods whose ids the code before the typed config gave (tests/harness/data/)."""
    for setting in ["lm_tiny", "smollm2_smoke", "qwen3_1p7b", "qwen3_1p7b_base", "qwen3_8b_base", "qwen3_30b_a3b_base",
                    "smoke", "base_s", "drift_s", "long_s", "post_s", "base_m", "stress", "smoke_bind"]:
        for method in ["grpo", "cppo", "dppo", "trm_avg", "cispo", "minpro", "pg_is", "cppo_soft", "trm_max_avg"]:
            trl = setting.startswith("qwen") or setting in ("lm_tiny", "smollm2_smoke")
            for extra in ([], ["engine.fused_loss=false"]) if trl else (["engine.threads=1"],):
                yield f"{setting}/{method}/{extra}", [f"setting={setting}", f"method={method}", *extra]


def test_every_shipped_setting_keeps_the_ids_it_had_on_both_engines():
    """Not only the committed cells: every shipped setting × method, engine=trl included, has the id the
    untyped config gave it (recorded from that code), so runs in progress anywhere resume in place."""
    pinned = json.loads((REPO / "tests" / "harness" / "data" / "ids_before_typed_config.json").read_text())
    seen = 0
    for key, overrides in _pinned_configs():
        assert resolve(compose(overrides)).config_hash == pinned[key], key
        seen += 1
    assert seen == len(pinned) == 180


def test_a_mapping_on_the_command_line_replaces_the_settings():
    spec = resolve(compose(["setting=lm_tiny", "task.val={dev: fixture:fixture_aime24}", "task.test={}"]))
    assert spec.task.val == {"dev": "fixture:fixture_aime24"} and spec.task.test == {}
    grown = resolve(compose(["setting=lm_tiny", "task.val.dev=fixture:fixture_aime24"]))  # one key: added
    assert list(grown.task.val) == ["aime24", "aime25", "aime26", "dev"]


@pytest.mark.parametrize("override", ["rl.temperature=0.7", "eval.batch_size=8", "rl.max_response_tokens=64"])
def test_a_knob_only_the_trl_engine_reads_is_refused_on_the_local_engine(override):
    with pytest.raises(ConfigError, match=rf"^{override.split('=')[0]} is read by engine=trl only, not engine=local"):
        resolve(compose(["setting=smoke", override]))


@pytest.mark.parametrize("override, match", [
    ("task.train=[a.jsonl,b.jsonl]", r"task.train must be a string"),
    ("engine.launch.deepspeed_zero_stage=true", r"deepspeed_zero_stage must be one of 0, 1, 2, 3 or None, got True"),
    ("task=addition", r"is setting 'lm_tiny' written for another task"),
])
def test_trl_values_of_the_wrong_type_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve(compose(["setting=lm_tiny", override]))


def test_every_status_write_keeps_the_tasks_split_names(tmp_path):
    from harness.lifecycle import RunRecord, record_failure

    spec = resolve(compose(["setting=smoke", f"run_dir={tmp_path / 'run'}"]))
    store = RunStore(spec.run_dir)
    record = RunRecord(spec, store)
    splits = {"validation": ["v"], "test": ["t"]}
    record.begin(0, splits=splits)
    record.running(3)
    assert store.read_status()["splits"] == splits
    record_failure(spec, store, RuntimeError("boom"))
    assert store.read_status()["splits"] == splits and store.read_status()["state"] == "failed"


def test_every_shipped_setting_resolves():
    from harness.config import available
    for setting in available("setting"):
        assert resolve(compose([f"setting={setting}"])).setting_name == setting
