"""Hydra config → a typed, validated ``RunSpec``. Errors name the config key and the allowed values.

Base values are the typed groups' defaults (``harness.runconfig``, the tasks' configs, the method
registry), handed to Hydra as config nodes; setting files override them and the command line
overrides both. Every key is checked: an unknown or misspelled one (``rl.lrr``, ``+setting.detla``)
is an error before any work starts, whether or not it was added with ``+``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from methods import MethodConfigError, get_method, list_methods, method_names

from . import runconfig as rc
from .schema import ConfigError, as_dict, build, foreign_knobs, id_view
from .store import config_hash
from .tasks import LocalTask, get_task, load_reward, task_classes

CONFIG_DIR = Path(__file__).parent / "conf"
NON_SEMANTIC = ("logging", "run_dir", "results_root", "hydra")  # what a run computes does not depend on them
TOP_KEYS = ("seed", "run_dir", "results_root", "warmup", "rl", "eval", "collapse", "method", "engine", "model",
            "task", "setting", "logging", "hydra")
GROUPS = ("method", "engine", "setting", "model", "task", "logging")  # Hydra config groups (`key=option`)
# a setting's defaults for the methods' thresholds: each has one public name, the method's
SETTING_DEFAULTS = {"setting.delta": "method.delta", "setting.w_min": "method.w_min",
                    "setting.budget": "method.budget", "setting.delta_b": "method.delta_b",
                    "setting.trm.delta_max": "method.delta_max", "setting.trm.delta_avg": "method.delta_avg",
                    "setting.trm.pair_max": "method.delta_max", "setting.trm.pair_avg": "method.delta_avg"}


__all__ = ["CONFIG_DIR", "ConfigError", "RunSpec", "available", "compose", "compose_many", "resolve", "run_id",
           "semantic_config"]


@dataclass
class RunSpec:
    """One run, resolved: typed groups the engines read as attributes."""
    resolved: dict         # every resolved knob (what config.yaml records)
    config_hash: str       # the run id (harness.schema.id_view of every group)
    run_dir: Path
    seed: int
    method_name: str
    method_params: dict    # every parameter of the method but ``horizon`` (the engine sets it)
    setting_name: str
    t_stop: int
    steps: int
    task: Any              # the task's config (harness.tasks); ``make_task(spec.task)`` builds it
    model: Any             # rc.ModelSize (local) or rc.HubModel / PackageModel / TinyLM (trl)
    warmup: rc.Warmup
    rl: rc.RL
    eval: rc.Eval
    collapse: rc.Collapse
    engine: Any            # rc.LocalEngine or rc.TrlEngine
    setting: rc.Setting
    logging: rc.Logging


# --- composing --------------------------------------------------------------------------------
def compose(overrides=()) -> DictConfig:
    """The config of ``trh train`` with Hydra overrides, without Hydra's app wrapper."""
    return compose_many([overrides])[0]


def compose_many(override_lists) -> list[DictConfig]:
    """Compose several configs under one Hydra initialisation (a sweep composes all its cells)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register_configs()
    extra = [f"hydra.searchpath=[{','.join(f'file://{p.resolve()}' for p in user_config_dirs())}]"] if user_config_dirs() else []
    out = []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        for overrides in override_lists:
            merged, replaced = _mappings_replace(list(overrides))
            cfg = hydra_compose("config", overrides=hydra_overrides(merged) + extra)
            for key, value in replaced:  # a mapping given on the command line is the whole mapping
                OmegaConf.update(cfg, key, value, merge=False, force_add=True)
            out.append(cfg)
    return out


def _mappings_replace(overrides: list[str]) -> tuple[list[str], list[tuple[str, dict]]]:
    """``key={...}`` overrides apart: Hydra would merge them into the composed mapping (so
    ``task.val={dev: d.jsonl}`` would keep the setting's splits too); they replace it instead."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    kept, replaced = [], []
    for item in overrides:
        key, _, value = item.partition("=")
        if "." in key and key == key.lstrip("+~") and value.strip().startswith("{"):
            parsed = OverridesParser.create().parse_override(item).value()
            replaced.append((key, dict(parsed)))
        else:
            kept.append(item)
    return kept, replaced


def user_config_dirs() -> list[Path]:
    """Folders of your own config groups (``setting/NAME.yaml``, ``model/NAME.yaml``, ...), named in the
    environment variable ``TRH_CONFIG_PATH`` (separated by ``:``), searched after the built-in ones."""
    import os
    return [Path(p) for p in os.environ.get("TRH_CONFIG_PATH", "").split(os.pathsep) if p]


def hydra_overrides(overrides) -> list[str]:
    """Command-line overrides as Hydra takes them: a dotted ``key=value`` may name a knob that the
    composed config does not list yet (a method parameter at its default), so it is passed as
    ``++key=value``; the typed check then refuses any key no group declares. A setting's default of a
    method threshold (``setting.delta``) is refused in favour of the method's name."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0]
        bare = key.lstrip("+~")
        if bare in GROUPS and "=" in item and item.split("=", 1)[1] not in available(bare):
            more = " (your own: a module named in TRH_TASKS, docs/tasks.md)" if bare == "task" else ""
            raise ConfigError(f"{bare}={item.split('=', 1)[1]}: no such {bare}; known: {', '.join(available(bare))}{more}")
        if bare in SETTING_DEFAULTS:
            raise ConfigError(f"{bare} is the setting's default of {SETTING_DEFAULTS[bare]}; set "
                              f"{SETTING_DEFAULTS[bare]}=... instead (one name per knob)")
        if "=" in item and key == bare and "." in key and not key.startswith("hydra."):
            item = "++" + item
        out.append(item)
    return out


def register_configs() -> None:
    """Hand the typed defaults to Hydra: the run's base values, one node per engine, per task without
    a file, and per registered method without a file (``method=NAME`` with its registered defaults)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="run_defaults", node={"warmup": as_dict(rc.Warmup()), "rl": as_dict(rc.RL()),
                                           "eval": as_dict(rc.Eval()), "collapse": as_dict(rc.Collapse()),
                                           "setting": as_dict(rc.Setting())})
    for name, cls in rc.ENGINES.items():
        store.store(group="engine", name=name, node=as_dict(cls()))
    files = {p.stem for p in (CONFIG_DIR / "task").glob("*.yaml")}
    for name, cls in task_classes().items():
        if name not in files:
            store.store(group="task", name=name, node=as_dict(cls.Config()))
    for name in method_names():
        if name not in _method_files():
            store.store(group="method", name=name, node={"name": name, "aggregation": "${rl.aggregation}"})


def _method_files() -> set[str]:
    return {p.stem for p in (CONFIG_DIR / "method").glob("*.yaml")}


def available(group: str) -> list[str]:
    """The option names of a config group (``setting``, ``method``, ``task``, ...)."""
    if group == "method":
        return method_names()
    if group == "task":
        return list(task_classes())
    if group == "engine":
        return list(rc.ENGINES)
    return sorted({p.stem for d in (CONFIG_DIR, *user_config_dirs()) for p in (d / group).glob("*.yaml")})


# --- resolving ---------------------------------------------------------------------------------
def resolve(cfg) -> RunSpec:
    """Every key of a composed config checked and typed; the run id derived from the typed groups."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    except Exception as err:  # noqa: BLE001 - interpolation errors come in many types
        raise ConfigError(f"config does not resolve: {err}") from None
    groups = typed_groups(resolved)
    method_name, method_params = _method(resolved.get("method"))
    setting = groups["setting"]
    semantic = {"seed": groups["seed"], **{k: as_dict(v) for k, v in groups.items() if k not in ("seed", "logging")},
                "method": {"name": method_name, **method_params}}
    digest = config_hash(_id_dict(groups, resolved["method"], method_name, method_params))
    run_dir = resolved.get("run_dir") or str(Path(resolved.get("results_root") or "results/runs")
                                             / f"{setting.name}-{method_name}-s{groups['seed']}-{digest}")
    return RunSpec(resolved=semantic, config_hash=digest, run_dir=Path(run_dir), seed=groups["seed"],
                   method_name=method_name, method_params=method_params, setting_name=setting.name,
                   t_stop=setting.t_stop, steps=setting.steps, task=groups["task"], model=groups["model"],
                   warmup=groups["warmup"], rl=groups["rl"], eval=groups["eval"], collapse=groups["collapse"],
                   engine=groups["engine"], setting=setting, logging=groups["logging"])


def typed_groups(resolved: dict) -> dict:
    """The typed config groups of a resolved config (every key checked; cross-checks included)."""
    if not isinstance(resolved, dict):
        raise ConfigError(f"a run config must be a mapping, got {type(resolved).__name__}")
    unknown = [k for k in resolved if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a config key; a run config has: {', '.join(TOP_KEYS[:-1])}")
    for section in ("method", "setting", "task", "model", "engine"):
        if not isinstance(resolved.get(section), dict):
            raise ConfigError(f"config section '{section}' is missing")
    engine_name = resolved["engine"].get("name")
    if engine_name not in rc.ENGINES:
        raise ConfigError(f"engine.name must be one of {list(rc.ENGINES)}, got {engine_name!r}")
    task_cls = get_task(resolved["task"].get("name"))
    try:
        task = build(task_cls.Config, resolved["task"], "task")
    except ConfigError as err:
        hint = (f" (is setting {resolved['setting'].get('name')!r} written for another task?)"
                if "is not a config key" in str(err) else "")
        raise ConfigError(f"{err}{hint}") from None
    groups = {"seed": _seed(resolved.get("seed")),
              "engine": build(rc.ENGINES[engine_name], resolved["engine"], "engine"), "task": task,
              "model": build(_model_class(engine_name, resolved["model"]), resolved["model"], "model"),
              **{name: build(cls, resolved.get(name), name) for name, cls in
                 (("warmup", rc.Warmup), ("rl", rc.RL), ("eval", rc.Eval), ("collapse", rc.Collapse),
                  ("setting", rc.Setting), ("logging", rc.Logging))}}
    if groups["task"].reward:
        load_reward(groups["task"].reward)
    if groups["warmup"].start_from is not None:
        _check_start_from(task_cls, resolved["task"], groups["warmup"].start_from, engine_name)
    if engine_name not in task_cls.engines:
        raise ConfigError(f"task {task_cls.name} runs on engine {' or '.join(task_cls.engines)}, not engine={engine_name}")
    _cross_checks(groups, engine_name, procedural=issubclass(task_cls, LocalTask))
    return groups


def _check_start_from(task_cls, task_node: dict, changes: dict, engine: str) -> None:
    """``warmup.start_from`` changes keys of the run's own task, and only where a warm-up runs."""
    if engine != "local":
        raise ConfigError(f"warmup.start_from is read by engine=local only (engine={engine} has no warm-up)")
    fixed = [k for k in ("name", "reward") if k in changes]
    if fixed:
        raise ConfigError(f"warmup.start_from.{fixed[0]} cannot be changed: the warm-up starts from a variant of the "
                          f"run's own task (warmup.start_from sets other task keys, e.g. {{length: 231}})")
    start = build(task_cls.Config, {**task_node, **changes}, "warmup.start_from")
    if start == build(task_cls.Config, task_node, "task"):
        raise ConfigError(f"warmup.start_from {changes} changes nothing: name task keys whose values differ from the run's")


def _seed(seed) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return seed


def _model_class(engine: str, model: dict):
    if engine == "local":
        if "source" in model:
            raise ConfigError(f"model.source is for engine=trl; the local engine builds a Qwen3 from sizes "
                              f"(model=s, m, tiny), got model.source={model['source']!r}")
        return rc.ModelSize
    source = model.get("source")
    if source not in rc.LM_SOURCES:
        raise ConfigError(f"model.source must be one of {list(rc.LM_SOURCES)} with engine=trl, got {source!r}")
    return rc.LM_SOURCES[source]


def _cross_checks(g: dict, engine: str, procedural: bool) -> None:
    setting, rl, model = g["setting"], g["rl"], g["model"]
    if setting.steps < setting.t_stop:
        raise ConfigError(f"setting.steps ({setting.steps}) must be >= setting.t_stop ({setting.t_stop})")
    if isinstance(model, (rc.ModelSize, rc.TinyLM)) and (model.hidden % (2 * model.heads) or model.heads % model.kv_heads):
        raise ConfigError(f"model.hidden ({model.hidden}) must be a multiple of 2·model.heads ({2 * model.heads}: an "
                          f"even rotary head dimension), and model.heads a multiple of model.kv_heads ({model.kv_heads})")
    foreign = foreign_knobs(rl, engine, "rl") + foreign_knobs(g["eval"], engine, "eval")
    if foreign:
        raise ConfigError(f"{foreign[0].split(' ')[0]} is read by engine=trl only, not engine={engine} (the local engine cuts "
                          "rl.prompts_per_iter into rl.updates_per_iter minibatches, samples at temperature 1, and its "
                          "task sets the longest response)")
    if procedural:
        if g["eval"].problems_per_split is None:
            raise ConfigError("eval.problems_per_split must be an integer >= 1 for a procedural task, got None")
    if engine == "trl":
        _check_trl(g)


def _check_trl(g: dict) -> None:
    rl, engine, launch = g["rl"], g["engine"], g["engine"].launch
    for key in ("minibatch_prompts", "max_response_tokens"):
        if getattr(rl, key) is None:
            raise ConfigError(f"rl.{key} must be an integer >= 1 with engine=trl, got None")
    if rl.prompts_per_iter != rl.minibatch_prompts * rl.updates_per_iter:
        raise ConfigError(f"rl.prompts_per_iter ({rl.prompts_per_iter}) must equal rl.minibatch_prompts "
                          f"({rl.minibatch_prompts}) × rl.updates_per_iter ({rl.updates_per_iter})")
    rows, ranks = rl.minibatch_prompts * rl.samples_per_prompt, engine.num_processes * engine.gradient_accumulation_steps
    if rows % ranks:
        raise ConfigError(f"rl.minibatch_prompts × rl.samples_per_prompt ({rows}) must be divisible by "
                          f"engine.num_processes × engine.gradient_accumulation_steps ({ranks})")
    if launch.nodes * launch.gpus_per_node not in (engine.num_processes, 1):
        raise ConfigError(f"engine.num_processes ({engine.num_processes}) must equal engine.launch.nodes × "
                          f"engine.launch.gpus_per_node ({launch.nodes} × {launch.gpus_per_node})")
    if engine.fused_loss and launch.deepspeed_zero_stage == 3:
        raise ConfigError("engine.fused_loss must be false with engine.launch.deepspeed_zero_stage 3: ZeRO-3 "
                          "gathers the output layer's weight only inside the model's forward")


def _method(node) -> tuple[str, dict]:
    """The method's name and every parameter (registry defaults filled in), checked now: before any
    warm-up, model load or cell launch."""
    node = dict(node or {})
    name = node.pop("name", None)
    if name not in method_names():
        raise ConfigError(f"method.name must be one of {method_names()}, got {name!r}")
    node.pop("horizon", None)  # the engine's: the task's (or rl.max_response_tokens') longest response
    try:
        method = get_method(name, **node)
    except MethodConfigError as err:
        text = str(err) if str(err).startswith(f"{name}:") else f"{name}: {err}"
        raise ConfigError(f"method {text}") from None
    params = dataclasses.asdict(method.params)
    params.pop("horizon", None)
    return name, params


# --- the run id --------------------------------------------------------------------------------
def _id_dict(groups: dict, method_node: dict, name: str, params: dict) -> dict:
    engine = groups["engine"].name
    out = {"seed": groups["seed"], **{k: id_view(v, engine) for k, v in groups.items() if k not in ("seed", "logging")}}
    out["task"] = {"name": groups["task"].name, **out["task"]}  # a task's name is in every id, whatever its Config says
    out["method"] = method_id_view(name, method_node, params)
    return out


def method_id_view(name: str, node: dict, params: dict) -> dict:
    """What the id hashes of the method: the parameters its config file names (at any value, as
    composed), and any other parameter away from its registered default."""
    named = set(_method_file_keys(name))
    defaults = _registered_defaults(name)
    out = {"name": name}
    for key, value in params.items():  # typed values: method.delta=1 and =1.0 are one run
        if key in named or value != defaults.get(key):
            out[key] = value
    return out


@functools.lru_cache(maxsize=None)  # read once per process: every cell's id needs it
def _method_file_keys(name: str) -> tuple[str, ...]:
    path = CONFIG_DIR / "method" / f"{name}.yaml"
    keys = list((yaml.safe_load(path.read_text()) or {}).keys()) if path.exists() else []
    return tuple(k for k in keys if k != "name") or ("aggregation",)


def method_defaults(name: str) -> dict:
    """A registered method's parameter defaults (what a configuration without the key runs at)."""
    return dict(_registered_defaults(name))


@functools.lru_cache(maxsize=None)  # the registry's defaults of one method, built once per process
def _registered_defaults(name: str) -> dict:
    row = next(r for r in list_methods() if r["name"] == name)
    return {p["name"]: p["default"] for p in row["params"]}


def semantic_config(resolved: dict) -> dict:
    """The part of a resolved config that decides what a run computes."""
    return {k: v for k, v in resolved.items() if k not in NON_SEMANTIC}


def id_dict(config: dict) -> dict:
    """What a run's id hashes, from a (resolved or recorded) config."""
    groups = typed_groups(config)
    name, params = _method(config.get("method"))
    return _id_dict(groups, config["method"], name, params)


def run_id(config: dict) -> str:
    """A run's id from a (resolved or recorded) config: ``resolve``'s id without composing."""
    return config_hash(id_dict(config))

