"""The command line of ``trh sweep``: which arguments are grid axes, how their values expand (Hydra's
sweep grammar), and how an axis meets the spec's variants (docs/sweeps.md, "The command line")."""

from __future__ import annotations

import dataclasses

from .errors import SweepError

GRID_KEYS = ("setting", "seed", "method")


def split_overrides(overrides) -> tuple[dict, list[str], list[str]]:
    """Command-line arguments → (grid axes, overrides, resource overrides ``slurm.*``/``local.*``).
    The axes map ``setting``/``seed``/``method`` and every swept key (``k=a,b``, ``range()``,
    ``choice()``) to their values; the overrides are the rest."""
    axes, hydra_overrides, resources = {}, [], []
    for item in overrides:
        if "=" not in item:
            raise SweepError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        if key.split(".")[0] in ("slurm", "local"):
            resources.append(item)
            continue
        if key in GRID_KEYS and not value.startswith(("range(", "choice(")):  # a list, globs allowed
            axes[key] = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
            continue
        values = sweep_values(item)
        if key in GRID_KEYS:
            axes[key] = values
        elif values is not None:
            axes[key.lstrip("+")] = values
        else:
            hydra_overrides.append(item)
    return axes, hydra_overrides, resources


def sweep_values(item: str) -> list[str] | None:
    """The values of a swept override (``k=a,b``, ``k=range(0,4)``, ``k=choice(x,y)``, Hydra's grammar),
    else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_override(item)
        if not parsed.is_sweep_override():
            return None
        values = list(parsed.sweep_string_iterator())
    except (HydraException, ValueError, TypeError) as err:
        raise SweepError(f"override {item!r}: {err}") from None
    if not values:
        raise SweepError(f"override {item!r} sweeps no value")
    return values


def cross_axes(variants: list, axes: dict, method_params: dict) -> tuple[list, list[str]]:
    """Each variant once per combination of the command line's other axes (``method.delta=0.1,0.2``),
    the values in its label. A ``method.*`` axis applies to the variants whose method has that
    parameter; the others run once (returned notes say which)."""
    out, notes = list(variants), []
    for key, values in axes.items():
        grown = []
        for v in out:
            param = key.split(".", 1)[1] if key.startswith("method.") else None
            if param is not None and param not in method_params[v.method]:
                notes.append(f"{key}: {v.method} has no parameter {param!r}; {v.label} runs once")
                grown.append(v)
                continue
            grown += [dataclasses.replace(v, label=f"{v.label} {key}={value}", overrides=[*v.overrides, f"{key}={value}"])
                      for value in values]
        out = grown
    return out, sorted(set(notes))


