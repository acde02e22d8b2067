"""Tuned variants: a sweep whose variant says ``tuned: <tuning sweep>`` (or maps each setting to one)
runs the configuration that tuning sweep chose for the variant's arm — the best mean validation
headline over its tuning seeds (``analysis.tuning``), read from the same results folder when the sweep
is expanded. See ``sweeps.spec`` for the grammar."""

from __future__ import annotations

from pathlib import Path

from harness.store import FINISHED, read_manifest, sweep_dir

from .errors import SweepError


def tuned_field(tuned, declared: list[str], settings: list[str], safe_name, where: str):
    """A variant's ``tuned``: one tuning sweep for every setting, or a mapping naming one per setting (keys
    among the spec's ``declared`` settings, every setting this invocation runs named, each name matching
    ``safe_name``)."""
    def named(value) -> bool:
        return isinstance(value, str) and all(safe_name.fullmatch(part) for part in value.split(":", 1))

    if tuned is None or named(tuned):
        return tuned
    if not isinstance(tuned, dict):
        raise SweepError(f"{where}: 'tuned' must name a tuning sweep (optionally '<sweep>:<arm>'), or map each "
                         f"setting to one, got {tuned!r}")
    bad = {k: v for k, v in tuned.items() if not named(v)}
    if bad:
        raise SweepError(f"{where}: 'tuned' must map settings to tuning sweeps (optionally '<sweep>:<arm>'), got {bad}")
    unknown = [k for k in tuned if k not in declared and k not in settings]
    if unknown:
        raise SweepError(f"{where}: 'tuned' names setting(s) {unknown} that the spec does not run; its settings: "
                         f"{', '.join(declared)}")
    missing = [s for s in settings if s not in tuned]
    if missing:
        raise SweepError(f"{where}: 'tuned' names no tuning sweep for setting(s) {missing}; it maps "
                         f"{', '.join(map(str, tuned)) or 'nothing'}")
    return {str(k): str(v) for k, v in tuned.items()}


def resolve_tuned(variants: list, settings: list[str], results_root: Path, where: str, to_overrides) -> dict:
    """{(setting, label): the chosen tuning configuration's overrides} of the ``tuned:`` variants (see the
    module doc), each tuning sweep and arm read once; ``to_overrides`` as in ``tuned_overrides``."""
    chosen, out = {}, {}
    for v in variants:
        for setting in settings:
            source = v.tuned_from(setting)
            if source is None:
                continue
            sweep, _, arm = source.partition(":")
            if (sweep, arm or v.method) not in chosen:
                chosen[(sweep, arm or v.method)] = tuned_overrides(results_root, sweep, arm or v.method,
                                                                   f"{where}, variant {v.label!r}", to_overrides)
            out[(setting, v.label)] = chosen[(sweep, arm or v.method)]
    return out


def tuned_overrides(results_root: Path, sweep: str, arm: str, where: str, to_overrides) -> list[str]:
    """The overrides of ``arm``'s chosen configuration in tuning sweep ``sweep`` under ``results_root``;
    ``to_overrides(body, where)`` is the spec grammar's reading of a variant (``sweeps.spec.variant_overrides``)."""
    from analysis import tuning
    from analysis.load import load_results

    folder = sweep_dir(results_root, sweep)
    manifest = read_manifest(folder)
    if manifest is None:
        raise SweepError(f"{where}: tuned from sweep {sweep!r}, which has not run in {results_root} "
                         f"(trh sweep {sweep} --results {results_root})")
    if not tuning.is_tuning(manifest):
        raise SweepError(f"{where}: sweep {sweep!r} is not a tuning sweep (kind: tuning)")
    cells = tuning.with_arms(load_results(folder).cells, manifest)
    cells = cells[cells["arm"] == arm]
    if cells.empty:
        raise SweepError(f"{where}: tuning sweep {sweep!r} has no configuration of {arm!r}")
    label = tuning.choose(cells).get(arm)
    if label is None:
        done = int(cells["state"].isin(FINISHED).sum())
        raise SweepError(f"{where}: {arm!r} is still being tuned in {sweep!r} ({done} of {len(cells)} cells "
                         f"finished; trh sweep {sweep} --results {results_root})")
    return to_overrides(manifest["spec"]["variants"][label], f"{where}: {sweep!r}, variant {label!r}")
