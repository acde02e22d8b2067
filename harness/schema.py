"""Typed config groups: each knob's type, default, one-line doc, range and id rule live once, on its
field (the style of ``methods.params``).

    lr: float = knob(1.0e-4, "AdamW learning rate", positive, in_every_id=True)

``build(cls, mapping, "rl")`` checks a composed config group against its dataclass: unknown keys,
wrong types and out-of-range values are one ``ConfigError`` naming the field and what is allowed.
``id_view(obj)`` is what a run id hashes: a knob stays out of the id while it sits at its declared
default, so a key added later never renames a run made before it. The knobs of the first id scheme
(``in_every_id=True``) are hashed at every value: leaving them out now would rename every run made
since, so a new knob must never set it. A knob that says only where a run keeps its files
(``in_id=False``: checkpoint folders, which weights to keep) is never hashed: moving them keeps the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import MISSING, field

from methods.params import type_name, type_ok


class ConfigError(ValueError):
    """A run config value is invalid; the message names the key."""


_ALWAYS = object()  # marker: hashed at every value
_NEVER = object()  # marker: never hashed (where files go, not what is computed)


def knob(default, doc: str, check=None, *, in_every_id: bool = False, omitted_at=MISSING, engine: str = "",
         in_id: bool = True):
    """A config field. ``check(value)`` returns what is allowed when ``value`` is out of range, else
    None. The run id leaves the key out at ``omitted_at`` (default: the default value); with
    ``in_every_id`` it is hashed at every value. A knob only ``engine`` reads is hashed at every value on
    that engine (as in the first id scheme) and refused away from its default on the others. With
    ``in_id=False`` it is never hashed."""
    if not in_id:
        omitted_at = _NEVER
    meta = {"doc": doc, "check": check, "engine": engine,
            "omitted_at": _ALWAYS if in_every_id else (default if omitted_at is MISSING else omitted_at)}
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value):
    return dataclasses.replace(value) if dataclasses.is_dataclass(value) else type(value)(value)


# --- range checks: None when fine, else what is allowed ------------------------------------------
def positive(v):
    return None if v is None or v > 0 else "> 0"


def at_least_one(v):
    return None if v is None or v >= 1 else ">= 1"


def non_negative(v):
    return None if v is None or v >= 0 else ">= 0"


def probability(v):
    return None if 0 < v <= 1 else "in (0, 1]"


def fraction(v):
    return None if 0 <= v < 1 else "in [0, 1)"


def seed_range(v):
    return None if 0 <= v < 2**32 else "in [0, 2**32)"


def finite(check=None):
    """``check``, and finite: infinity means nothing for this knob."""
    def test(v):
        if isinstance(v, float) and not math.isfinite(v):
            return "finite"
        return check(v) if check else None
    return test


# --- building and hashing ------------------------------------------------------------------------
def build(cls, data, where: str):
    """``cls`` from a composed config mapping, every key checked (see the module doc)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of {', '.join(_names(cls))}, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {where}.{near[0]}?)" if near else ""
            raise ConfigError(f"{where}.{key} is not a config key{hint}; {where} has: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        hint, key = hints[name], f"{where}.{name}"
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{key} is missing")
            continue
        value = data[name]
        if dataclasses.is_dataclass(hint):
            values[name] = build(hint, value, key)
            continue
        ok, allowed = type_ok(value, hint)
        if not ok:
            raise ConfigError(f"{key} must be {allowed}, got {value!r}")
        if value is not None and _is_float(hint) and not isinstance(value, float):
            value = float(value)
        check = f.metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            raise ConfigError(f"{key} must be {problem}, got {value!r}")
        values[name] = value
    return cls(**values)


def _is_float(hint) -> bool:
    return hint is float or set(typing.get_args(hint)) == {float, type(None)}


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def id_view(obj, engine: str = "") -> dict:
    """What a run id hashes of a config group on ``engine``: every ``in_every_id`` knob (and every knob
    of that engine), and any other knob away from the value it is omitted at."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        omitted_at = f.metadata.get("omitted_at", _ALWAYS)
        if omitted_at is _NEVER:
            continue
        if f.metadata.get("engine") and f.metadata["engine"] == engine:
            omitted_at = _ALWAYS
        if dataclasses.is_dataclass(value):
            sub = id_view(value, engine)
            if omitted_at is _ALWAYS or sub != id_view(type(value)(), engine):
                out[f.name] = sub
        elif omitted_at is _ALWAYS or value != omitted_at:
            out[f.name] = value
    return out


def foreign_knobs(obj, engine: str, where: str) -> list[str]:
    """The knobs of ``obj`` set away from their default that another engine than ``engine`` reads."""
    out = []
    for f in dataclasses.fields(obj):
        owner = f.metadata.get("engine")
        if owner and owner != engine and getattr(obj, f.name) != getattr(type(obj)(), f.name):
            out.append(f"{where}.{f.name} (read by engine={owner})")
    return out


def as_dict(obj) -> dict:
    """Every knob of a config group, resolved (what ``config.yaml`` records)."""
    return dataclasses.asdict(obj)


def describe(cls, prefix: str) -> list[dict]:
    """Key, type, default and doc of each knob (``trh config`` prints them)."""
    hints, rows = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        hint, key = hints[f.name], f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(hint):
            rows += describe(hint, key)
            continue
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        rows.append({"key": key, "type": type_name(hint),
                     "default": default, "doc": f.metadata.get("doc", "")})
    return rows
