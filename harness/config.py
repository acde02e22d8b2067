"""Hydra config → a validated RunSpec. Errors name the config key and the allowed values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from methods import MethodConfigError, get_method, list_methods, method_names

from .store import config_hash

CONFIG_DIR = Path(__file__).parent / "conf"
# keys that do not change what a run computes, so they stay out of its id
NON_SEMANTIC = ("logging", "run_dir", "results_root")
# options added after results existed: at these values they are left out of a run's id, so the ids
# (and the committed results) of runs that never set them stay valid
# (their values before they existed: ids made since the defaults changed include them)
ID_OMITTED_AT_DEFAULT = {("engine", "share_prompt_prefix"): False, ("engine", "fused_loss"): False,
                         ("warmup", "shards"): 1}


class ConfigError(ValueError):
    """A run config value is invalid; the message names the key."""


@dataclass
class RunSpec:
    resolved: dict
    config_hash: str
    run_dir: Path
    seed: int
    method_name: str
    method_params: dict
    setting_name: str
    t_stop: int
    steps: int
    task: dict
    model: dict
    warmup: dict
    rl: dict
    eval: dict
    collapse: dict
    engine: dict
    logging: dict


def compose(overrides=()) -> DictConfig:
    """The config of ``trh train`` with Hydra overrides, without Hydra's app wrapper."""
    return compose_many([overrides])[0]


def compose_many(override_lists) -> list[DictConfig]:
    """Compose several configs under one Hydra initialisation (a sweep composes all its cells)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register_method_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return [hydra_compose("config", overrides=list(o)) for o in override_lists]


def register_method_configs() -> None:
    """The registry is the one list of method names: every registered method is a ``method=NAME``
    option. A file ``conf/method/NAME.yaml`` is needed only to tie parameters to the setting (e.g.
    ``delta: ${setting.delta}``); without one the method runs with its registered defaults."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    with_files = {p.stem for p in (CONFIG_DIR / "method").glob("*.yaml")}
    for row in list_methods():
        if row["name"] not in with_files:  # its registered defaults, so that method.X=... overrides them
            defaults = {p["name"]: p["default"] for p in row["params"] if p["name"] not in ("aggregation", "horizon")}
            store.store(group="method", name=row["name"],
                        node={"name": row["name"], "aggregation": "${rl.aggregation}", **defaults})


def available(group: str) -> list[str]:
    """The option names of a config group (``setting``, ``method``, ...); methods are the registry's."""
    if group == "method":
        return method_names()
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _require(section: dict, where: str, keys: dict) -> None:
    for key, check in keys.items():
        if key not in section:
            raise ConfigError(f"{where}.{key} is missing")
        value = section[key]
        ok, allowed = check(value)
        if not ok:
            raise ConfigError(f"{where}.{key} must be {allowed}, got {value!r}")


def _pos_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"


def _pos_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a positive number"


def _nonneg(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number >= 0"


def _prob(v):
    return isinstance(v, (int, float)) and 0 < v <= 1, "a number in (0, 1]"


def _bool(v):
    return isinstance(v, bool), "true or false"


ENGINES = ("local", "trl")
MODEL_SOURCES = ("hub", "package", "tiny")


def _check_local(resolved: dict) -> None:
    """The embedded default: the addition task on a model built from sizes, with a warm start."""
    _require(resolved["task"], "task", {"digits": _pos_int})
    _check_sizes(resolved["model"])
    _require(resolved["warmup"], "warmup", {"seed": lambda v: (isinstance(v, int) and 0 <= v < 2**32, "an integer in [0, 2**32)"), "lr": _pos_num,
                                            "batch_size": _pos_int, "max_steps": _pos_int, "check_every": _pos_int,
                                            "probe_size": _pos_int, "target_accuracy": _prob,
                                            "shards": _pos_int})
    _require(resolved["eval"], "eval", {"test_problems_per_split": _pos_int})
    _require(resolved["engine"], "engine", {"share_prompt_prefix": _bool, "fused_loss": _bool})
    _require(resolved["engine"].get("mismatch", {}), "engine.mismatch",
             {"bf16_rollout": _bool, "logit_noise": _nonneg,
              "lag": lambda v: (isinstance(v, int) and v >= 0, "an integer >= 0")})


def _check_sizes(model: dict) -> None:
    _require(model, "model", {"hidden": _pos_int, "layers": _pos_int, "mlp": _pos_int,
                              "heads": _pos_int, "kv_heads": _pos_int})
    if model["hidden"] % (2 * model["heads"]) or model["heads"] % model["kv_heads"]:
        raise ConfigError(f"model.hidden ({model['hidden']}) must be a multiple of 2·model.heads "
                          f"({2 * model['heads']}: an even rotary head dimension), and model.heads a multiple "
                          f"of model.kv_heads ({model['kv_heads']})")


def _check_trl(resolved: dict) -> None:
    """engine=trl: a real language model on the math task through TRL's GRPOTrainer."""
    task, model, rl, engine = resolved["task"], resolved["model"], resolved["rl"], resolved["engine"]
    if task.get("name") != "math":
        raise ConfigError(f"task.name must be 'math' with engine=trl, got {task.get('name')!r}")
    _require(task, "task", {"train": lambda v: (isinstance(v, str) and v != "", "a JSONL path, fixture:NAME or a hub name"),
                            "val": lambda v: (isinstance(v, dict) and len(v) > 0, "a mapping split name → source")})
    if model.get("source") not in MODEL_SOURCES:
        raise ConfigError(f"model.source must be one of {list(MODEL_SOURCES)} with engine=trl, got {model.get('source')!r}")
    if model["source"] == "tiny":
        _check_sizes(model)
    _require(rl, "rl", {"minibatch_prompts": _pos_int, "max_response_tokens": _pos_int, "temperature": _pos_num})
    if rl["prompts_per_iter"] != rl["minibatch_prompts"] * rl["updates_per_iter"]:
        raise ConfigError(f"rl.prompts_per_iter ({rl['prompts_per_iter']}) must equal rl.minibatch_prompts "
                          f"({rl['minibatch_prompts']}) × rl.updates_per_iter ({rl['updates_per_iter']})")
    _require(engine, "engine", {"num_processes": _pos_int, "gradient_accumulation_steps": _pos_int,
                                "bf16": _bool, "gradient_checkpointing": _bool, "fused_loss": _bool})
    rows = rl["minibatch_prompts"] * rl["samples_per_prompt"]
    ranks = engine["num_processes"] * engine["gradient_accumulation_steps"]
    if rows % ranks:
        raise ConfigError(f"rl.minibatch_prompts × rl.samples_per_prompt ({rows}) must be divisible by "
                          f"engine.num_processes × engine.gradient_accumulation_steps ({ranks})")
    launch = engine.get("launch", {})
    if launch and launch.get("nodes", 1) * launch.get("gpus_per_node", 1) not in (engine["num_processes"], 1):
        raise ConfigError(f"engine.num_processes ({engine['num_processes']}) must equal engine.launch.nodes × "
                          f"engine.launch.gpus_per_node ({launch.get('nodes')} × {launch.get('gpus_per_node')})")
    if launch.get("deepspeed_zero_stage") not in (None, 0, 1, 2, 3):
        raise ConfigError(f"engine.launch.deepspeed_zero_stage must be one of [null, 0, 1, 2, 3], "
                          f"got {launch.get('deepspeed_zero_stage')!r}")
    if engine["fused_loss"] and launch.get("deepspeed_zero_stage") == 3:
        raise ConfigError("engine.fused_loss must be false with engine.launch.deepspeed_zero_stage 3: ZeRO-3 "
                          "gathers the output layer's weight only inside the model's forward")
    _require(resolved["eval"], "eval", {"batch_size": _pos_int})


def _without_omitted_defaults(semantic: dict) -> dict:
    out = dict(semantic)
    for (section, key), default in ID_OMITTED_AT_DEFAULT.items():
        if isinstance(out.get(section), dict) and out[section].get(key, default) == default:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def semantic_config(resolved: dict) -> dict:
    """The part of a resolved config that decides what a run computes."""
    return {k: v for k, v in resolved.items() if k not in NON_SEMANTIC and k != "hydra"}


def run_id(semantic: dict) -> str:
    """A run's id: the hash of its semantic config (options added later are left out at their
    defaults, so the ids of runs that never set them stay valid)."""
    return config_hash(_without_omitted_defaults(semantic))


def resolve(cfg: DictConfig) -> RunSpec:
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # noqa: BLE001 - interpolation errors come in many types
        raise ConfigError(f"config does not resolve: {err}") from None
    for section in ("method", "setting", "task", "model", "rl", "eval", "collapse", "engine"):
        if not isinstance(resolved.get(section), dict):
            raise ConfigError(f"config section '{section}' is missing")
    method = dict(resolved["method"])
    name = method.pop("name", None)
    if name not in method_names():
        raise ConfigError(f"method.name must be one of {method_names()}, got {name!r}")
    try:  # the method's parameters, checked now: before any warm-up, model load or cell launch
        get_method(name, **method)
    except MethodConfigError as err:
        text = str(err) if str(err).startswith(f"{name}:") else f"{name}: {err}"
        raise ConfigError(f"method {text}") from None
    setting = resolved["setting"]
    _require(setting, "setting", {"name": lambda v: (isinstance(v, str), "a string"), "t_stop": _pos_int,
                                  "steps": _pos_int})
    if setting["steps"] < setting["t_stop"]:
        raise ConfigError(f"setting.steps ({setting['steps']}) must be >= setting.t_stop ({setting['t_stop']})")
    engine = resolved["engine"]
    engine_name = engine.get("name")
    if engine_name not in ENGINES:
        raise ConfigError(f"engine.name must be one of {list(ENGINES)}, got {engine_name!r}")
    if engine_name == "local":
        _check_local(resolved)
    else:
        _check_trl(resolved)
    _require(resolved["rl"], "rl", {"prompts_per_iter": _pos_int, "samples_per_prompt": _pos_int,
                                    "updates_per_iter": _pos_int, "lr": _pos_num, "weight_decay": _nonneg,
                                    "grad_clip": _pos_num, "std_normalize": _bool})
    if resolved["rl"]["samples_per_prompt"] < 2:
        raise ConfigError("rl.samples_per_prompt must be >= 2 (group advantages need a group)")
    if not (engine_name == "trl" and resolved["eval"].get("problems_per_split") is None):
        _require(resolved["eval"], "eval", {"problems_per_split": _pos_int})
    _require(resolved["eval"], "eval", {"every": _pos_int, "samples": _pos_int,
                                        "temperature": _pos_num, "top_p": _prob, "position_bins": _pos_int})
    _require(resolved["collapse"], "collapse", {"peak_at_least": _nonneg, "floor": _nonneg,
                                                "floor_fraction": lambda v: (isinstance(v, (int, float)) and 0 <= v < 1,
                                                                             "a number in [0, 1)")})
    _require(engine, "engine", {"checkpoint_every": _pos_int})
    seed = resolved.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")

    semantic = semantic_config(resolved)
    digest = run_id(semantic)
    run_dir = resolved.get("run_dir") or str(
        Path(resolved.get("results_root") or "results/runs") / f"{setting['name']}-{name}-s{seed}-{digest}")
    return RunSpec(resolved=semantic, config_hash=digest, run_dir=Path(run_dir), seed=seed, method_name=name,
                   method_params=method, setting_name=setting["name"], t_stop=setting["t_stop"],
                   steps=setting["steps"], task=resolved["task"], model=resolved["model"], warmup=resolved["warmup"],
                   rl=resolved["rl"], eval=resolved["eval"], collapse=resolved["collapse"], engine=engine,
                   logging=resolved.get("logging") or {})
