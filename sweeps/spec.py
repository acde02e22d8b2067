"""Sweep specs: a YAML file names a grid (settings × variants × seeds); ``expand`` turns it into cells,
one training run each, identified by the hash of the cell's resolved config.

    name: ablation_gate
    feeds: Fig. 5c
    settings: [post_s]
    seeds: [0, 1, 2]
    variants:                      # label → method (+ params, Hydra overrides); or `methods: [grpo, ...]`
      CPPO: {method: cppo}
      CPPO (Binary TV): {method: cppo, params: {divergence: binary_tv}}
      CPPO (soft gate): {method: cppo_soft}
      DPPO: {method: dppo}
    overrides: []                  # Hydra overrides for every cell
    resources: {slurm: {mem_gb: 4}}

On the command line ``setting=``, ``seed=`` and ``method=`` replace the spec's axis (``setting=qwen3_*``
globs; ``method=X`` keeps the spec's variants of X, or the variant labelled X, and adds X at its
defaults where the spec has none); any other ``key=a,b,c`` (or Hydra's ``range(...)`` / ``choice(...)``)
is a new grid axis crossed with the spec's, each value in the cells' labels (a method parameter applies
to the variants whose method has it); every other ``key=value`` is an override for every cell.

``kind: tuning`` marks a grid of tuning configurations (the equal-budget protocol of
``analysis.tuning``): each variant tunes an ``arm`` (default: its method), every arm must have the
same number of variants, and the report shows it as a tuning table, never as Table 1. A variant of
a later sweep with ``tuned: <that sweep>`` (or ``<that sweep>:<arm>``) runs the arm's chosen
configuration (the best mean validation headline over the tuning seeds), read from the same results
folder when the sweep is expanded; its own ``params``/``overrides`` apply on top. Expanding it
before that arm's tuning cells have all finished is an error. Where each setting has its own tuning
sweep (one per horizon, say), ``tuned`` maps every setting of the sweep to its tuning sweep:
``tuned: {chain_h14: tune_h14, chain_h27: tune_h27}``.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from harness.config import ConfigError, available, compose_many, resolve
from harness.store import runs_dir
from methods import list_methods

from .axes import GRID_KEYS, cross_axes, split_overrides, sweep_values  # noqa: F401 - the command line's axes
from .errors import SweepError  # noqa: F401 - raised here, imported from here by the callers
from .tuned import resolve_tuned, tuned_field

SPEC_DIR = Path(__file__).parent / "specs"
SPEC_KEYS = {"name", "kind", "feeds", "description", "settings", "seeds", "methods", "variants", "overrides",
             "resources", "setting", "method", "space", "sampler", "pruner", "direction", "collapse_score",
             "preregistration"}


KINDS = ("grid", "tuning", "search")


@dataclass
class Variant:
    label: str
    method: str
    overrides: list[str] = field(default_factory=list)
    tuned: str | dict | None = None  # "<tuning sweep>[:<arm>]", or {setting: that} per setting: its choice first
    arm: str = ""             # in a tuning sweep: what the configuration tunes (default: the method)

    def __post_init__(self):
        self.arm = self.arm or self.method

    def tuned_from(self, setting: str) -> str | None:
        """The tuning sweep (``<sweep>[:<arm>]``) that chooses this variant's configuration at ``setting``."""
        return self.tuned.get(setting) if isinstance(self.tuned, dict) else self.tuned


@dataclass
class SweepSpec:
    name: str
    feeds: str
    description: str
    settings: list[str]
    variants: list[Variant]
    seeds: list[int]
    overrides: list[str]
    resources: dict
    raw: dict
    kind: str = "grid"
    aliases: dict = field(default_factory=dict)  # label → the tuned label it duplicates (not run twice)
    notes: list = field(default_factory=list)    # what the command line's axes did not apply to
    preregistration: dict | None = None          # the declared test (sweeps.preregistration), if any
    path: Path | None = None                     # the spec file


@dataclass
class Cell:
    """One training run of a sweep. ``id`` is its config hash; ``config`` its resolved config."""
    id: str
    setting: str
    label: str
    method: str
    seed: int
    t_stop: int
    run_dir: Path
    config: dict
    overrides: list[str]

    def describe(self) -> str:
        return f"{self.setting}/{self.label}/s{self.seed}"

    def manifest_row(self, root: Path) -> dict:
        try:
            run_dir = str(self.run_dir.resolve().relative_to(root.resolve()))
        except ValueError:
            run_dir = str(self.run_dir.resolve())
        return {"id": self.id, "setting": self.setting, "label": self.label, "method": self.method,
                "seed": self.seed, "t_stop": self.t_stop, "run_dir": run_dir, "overrides": self.overrides}


def spec_names() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


def load_raw(name_or_path: str) -> tuple[dict, Path]:
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = SPEC_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise SweepError(f"unknown sweep {name_or_path!r}; known sweeps: {', '.join(spec_names())} "
                         f"(or a path to a spec .yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise SweepError(f"sweep spec {path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SweepError(f"sweep spec {where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(raw, dict):
        raise SweepError(f"sweep spec {path} must be a mapping")
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise SweepError(f"sweep spec {path}: unknown key(s) {unknown}; allowed: {sorted(SPEC_KEYS)}")
    raw.setdefault("name", path.stem)
    if not isinstance(raw["name"], str) or not SAFE_NAME.fullmatch(raw["name"]):
        raise SweepError(f"sweep spec {path}: name must be letters, digits, '_', '-' or '.' (not starting with "
                         f"'.'), got {raw['name']!r}: it names the sweep's folder under results/")
    return raw, path


def _as_list(raw: dict, key: str, where: str) -> list:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SweepError(f"{where}: '{key}' must be a list, got {value!r}")
    return value


def _int_seeds(values, where: str) -> list[int]:
    seeds = []
    for v in values:
        try:
            seeds.append(int(v))
        except (TypeError, ValueError):
            raise SweepError(f"{where}: seeds must be integers, got {v!r}") from None
    return seeds


def _match_settings(patterns: list[str], where: str) -> list[str]:
    known, out = available("setting"), []
    for pattern in patterns:
        hits = [s for s in known if fnmatch.fnmatchcase(s, pattern)]
        if not hits:
            raise SweepError(f"{where}: unknown setting {pattern!r}; allowed: {', '.join(known)}")
        out += [h for h in hits if h not in out]
    return out


def _override_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse(raw: dict, path: Path, axes: dict | None = None) -> SweepSpec:
    """Validate a grid spec and apply the command line's grid axes."""
    axes = axes or {}
    where = f"sweep {raw['name']!r}"
    declared = _match_settings([str(s) for s in _as_list(raw, "settings", where)], where)  # the spec's own
    settings = _match_settings(axes["setting"], where) if axes.get("setting") else declared
    seeds = _int_seeds(axes.get("seed") or _as_list(raw, "seeds", where), where)
    methods_known = available("method")
    if raw.get("variants") is not None and raw.get("methods") is not None:
        raise SweepError(f"{where}: give either 'methods' or 'variants', not both")
    variants = []
    if isinstance(raw.get("variants"), dict):
        for label, body in raw["variants"].items():
            if not isinstance(body, dict) or "method" not in body:
                raise SweepError(f"{where}: variant {label!r} must be a mapping with a 'method'")
            tuned = tuned_field(body.get("tuned"), declared, settings, SAFE_NAME, f"{where}, variant {label!r}")
            variants.append(Variant(str(label), str(body["method"]), variant_overrides(body, f"{where}, variant {label!r}"),
                                    tuned, str(body.get("arm") or body["method"])))
    elif raw.get("variants") is not None:
        raise SweepError(f"{where}: 'variants' must map labels to {{method, overrides}}")
    else:
        variants = [Variant(str(m), str(m)) for m in _as_list(raw, "methods", where)]
    for v in variants:
        if v.method not in methods_known:
            raise SweepError(f"{where}: unknown method {v.method!r} (variant {v.label!r}); "
                             f"allowed: {', '.join(methods_known)}")
    if axes.get("method"):
        variants = method_axis(variants, axes["method"], methods_known, where)
    params = {row["name"]: {p["name"] for p in row["params"]} for row in list_methods()}
    variants, notes = cross_axes(variants, {k: v for k, v in axes.items() if k not in GRID_KEYS}, params)
    kind = str(raw.get("kind", "grid"))
    if kind not in KINDS:
        raise SweepError(f"{where}: kind must be one of {list(KINDS)}, got {kind!r}")
    if kind == "tuning":
        extra = [k for k in axes if k not in GRID_KEYS]
        if extra:
            raise SweepError(f"{where}: a tuning sweep's configurations are its spec's variants; add {extra[0]} there, "
                             "not as a command-line axis (its labels name the configurations later sweeps run)")
        _check_equal_budget(variants, where)
    if not settings or not variants or not seeds:
        raise SweepError(f"{where}: the grid is empty (settings={settings}, variants={[v.label for v in variants]}, "
                         f"seeds={seeds}); each axis needs at least one value")
    from .preregistration import check_block
    registration = check_block(raw.get("preregistration"), [v.label for v in variants], declared, where)
    if registration and kind != "grid":
        raise SweepError(f"{where}: a pre-registered sweep is a grid of reported runs, not a {kind} sweep")
    return SweepSpec(name=str(raw["name"]), feeds=str(raw.get("feeds", "")),
                     description=str(raw.get("description", "")), settings=settings, variants=variants,
                     seeds=seeds, overrides=[str(o) for o in _as_list(raw, "overrides", where)],
                     resources=raw.get("resources") or {}, raw=raw, kind=kind, notes=notes,
                     preregistration=registration, path=path)


def method_axis(variants: list[Variant], wanted: list[str], known: list[str], where: str) -> list[Variant]:
    """``method=a,b`` on the command line: for each name the spec's variants of that method (or the
    variant with that label), else the method at its defaults; nothing asked for is dropped."""
    out = []
    for name in wanted:
        mine = [v for v in variants if name in (v.method, v.label)]
        if not mine and name not in known:
            labels = [v.label for v in variants]
            raise SweepError(f"method={name}: neither a method nor a variant of {where}; the spec has "
                             f"{', '.join(labels)}; methods: {', '.join(known)}")
        out += [v for v in (mine or [Variant(name, name)]) if v not in out]
    return out


def variant_overrides(body: dict, where: str) -> list[str]:
    """A variant's Hydra overrides: its ``params`` (method parameters) then its ``overrides``."""
    unknown = sorted(set(body) - {"method", "params", "overrides", "tuned", "arm"})
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {unknown}; allowed: method, params, overrides, tuned, arm")
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise SweepError(f"{where}: 'params' must map method parameters to values")
    return ([f"++method.{k}={_override_value(v)}" for k, v in params.items()]
            + [str(o) for o in _as_list(body, "overrides", where)])


def _check_equal_budget(variants: list[Variant], where: str) -> None:
    counts: dict[str, int] = {}
    for v in variants:
        counts[v.arm] = counts.get(v.arm, 0) + 1
        if v.tuned:
            raise SweepError(f"{where}: a tuning sweep's variants cannot be 'tuned' themselves ({v.label!r})")
    if len(set(counts.values())) > 1:
        raise SweepError(f"{where}: kind tuning needs the same number of configurations per arm (an equal "
                         f"budget), got {counts}")


def cell_configs(base_overrides_by_key: dict, seeds_by_key: dict, results_root: Path, threads: int,
                 where: str) -> dict:
    """Compose one config per distinct override list, then copy it per seed (Hydra's compose takes
    ≈ 0.2 s, so composing per seed would make large grids slow to start)."""
    keys = list(base_overrides_by_key)
    for overrides in base_overrides_by_key.values():
        if any(o.lstrip("+").startswith("engine.threads=") and o.split("=", 1)[1] != str(threads) for o in overrides):
            raise SweepError(f"{where}: engine.threads is set by the sweep from local.cpus_per_task (slurm.cpus_per_task "
                             "on SLURM): set that instead, e.g. local.cpus_per_task=2")
    try:
        composed = compose_many([base_overrides_by_key[k] + [f"results_root={results_root}",
                                                             f"engine.threads={threads}", "logging=quiet"]
                                 for k in keys])
    except ConfigError as err:
        raise SweepError(f"{where}: {err}") from None
    except Exception as err:  # noqa: BLE001 - Hydra raises many types; all mean a bad override
        raise SweepError(f"{where}: the overrides do not compose: {err}") from None
    out = {}
    for key, cfg in zip(keys, composed):
        for seed in seeds_by_key[key]:
            one = copy.deepcopy(cfg)
            one.seed = seed
            try:
                spec = resolve(one)
            except ConfigError as err:
                raise SweepError(f"{where}: {err}") from None
            out[(key, seed)] = (spec, OmegaConf.to_container(one, resolve=False))
    return out


def expand(spec: SweepSpec, results_root: Path, overrides=(), threads: int = 1) -> list[Cell]:
    """The cells of a grid, in submission order: settings interleaved, so that parallel workers warm
    up different settings first instead of queueing on one warm-up."""
    bases, seeds, meta = {}, {}, {}
    chosen = resolve_tuned(spec.variants, spec.settings, results_root, f"sweep {spec.name!r}", variant_overrides)
    by_label = {v.label: v for v in spec.variants}
    for v in spec.variants:
        for s in spec.settings:
            key = (s, v.label)
            bases[key] = [f"setting={s}", f"method={v.method}", *spec.overrides, *chosen.get(key, []), *v.overrides,
                          *overrides]
            seeds[key] = spec.seeds
            meta[key] = v
    built = cell_configs(bases, seeds, runs_dir(results_root), threads, f"sweep {spec.name!r}")
    cells = []
    for seed in spec.seeds:
        for v in spec.variants:
            for s in spec.settings:
                run, container = built[((s, v.label), seed)]
                cells.append(Cell(id=run.config_hash, setting=s, label=v.label, method=v.method, seed=seed,
                                  t_stop=run.t_stop, run_dir=run.run_dir, config=container,
                                  overrides=bases[(s, v.label)][2:]))
    seen, kept = {}, []
    for c in cells:
        first = seen.get(c.id)
        if first is not None and (by_label[first.label].tuned or by_label[c.label].tuned):
            if not by_label[first.label].tuned:  # keep the tuned label, record the other as its alias
                kept[kept.index(first)] = seen[c.id] = c
                first, c = c, first
            spec.aliases[c.label] = first.label  # e.g. a paper-default arm the tuning chose: run once
            continue
        if first is not None:
            raise SweepError(f"sweep {spec.name!r}: cells {first.describe()} and {c.describe()} have the "
                             f"same config (variants that differ only in their label)")
        seen[c.id] = c
        kept.append(c)
    return kept
