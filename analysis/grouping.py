"""Cells are grouped by what they are. Every table, comparison and figure averages a label's cells over
seeds; that is only right when the label's cells share one configuration. A label whose cells differ in
anything but the seed (a ``trh train`` run beside a grid, two invocations with other thresholds, a
search's trials) is split into one label per configuration, named by the parameters that differ:

    cppo  →  cppo [delta_b=0.01, w_min=0.8]  and  cppo [delta_b=0.02, w_min=0.8]

A configuration is what the run id hashes (``harness.config.id_dict``), seed aside, so knobs that only
say where files go never split a label; a config the harness cannot type (another version's, a
hand-written one) is compared as recorded, ``logging`` and the seed aside.
"""

from __future__ import annotations

import json

import pandas as pd

UNTYPED_IGNORED = ("seed", "logging", "results_root", "run_dir")
SEED_LIKE = ("imported.source",)  # an imported run's log file differs per seed as the seed does


def signature(config: dict | None) -> str | None:
    """A cell's configuration, seed aside, as a canonical JSON string (None: the cell has no config yet)."""
    if not config:
        return None
    try:
        from omegaconf import OmegaConf

        # a cell not started yet holds the sweep's snapshot, with ${...} interpolations its run resolves
        config = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve: compare the config as written
        pass
    try:
        from harness.config import id_dict

        view = id_dict(config)
    except Exception:  # noqa: BLE001 - an untyped config is still compared, as recorded
        view = {k: v for k, v in config.items() if k not in UNTYPED_IGNORED}
    view.pop("seed", None)
    flat = {k: v for k, v in _flat(view).items() if k not in SEED_LIKE}
    return json.dumps(flat, sort_keys=True, default=str)


def _flat(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def split_pooled_labels(cells: pd.DataFrame) -> pd.DataFrame:
    """Give each configuration within a (sweep, setting, label) its own label, naming the parameters that
    differ; cells without a config yet (missing, not started) keep the label. ``pooled_from`` records the
    original label of a split one."""
    cells = cells.copy()
    cells["pooled_from"] = None
    if "signature" not in cells:
        return cells
    # the keys that tell a label's configurations apart, taken over all its settings, so that one
    # configuration reads the same in every column of a table
    differing: dict[tuple, set] = {}
    for (sweep, _, label), group in cells.groupby(["sweep", "setting", "label"], sort=False):
        configs = [json.loads(s) for s in group["signature"].dropna().unique()]
        if len(configs) > 1:
            differing.setdefault((sweep, label), set()).update(
                k for c in configs for k in c if len({json.dumps(o.get(k), default=str) for o in configs}) > 1)
    for (sweep, label), keys in differing.items():
        keys, rows = sorted(keys), cells.index[(cells["sweep"] == sweep) & (cells["label"] == label)
                                               & cells["signature"].notna()]
        names = _short_names(keys)
        for i in rows:
            config = json.loads(cells.at[i, "signature"])
            detail = f"{label} [{', '.join(f'{names[k]}={_value(config.get(k))}' for k in keys)}]"
            cells.loc[i, ["pooled_from", "label", "variant"]] = [label, detail, detail]
    return cells


def _short_names(keys: list[str]) -> dict:
    """The last component of each dotted key, or the whole key where two would read alike."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (short if last.count(short) == 1 else k) for k, short in zip(keys, last)}


def _value(value) -> str:
    if value is None:
        return "default"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
