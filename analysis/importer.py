"""``trh import MAPPING.yaml``: runs trained elsewhere (verl, TRL, any trainer that logs a CSV or JSONL)
as run folders of this results store, so ``trh report`` gives them the matched-window choice, the held-out
score at that step, intervals over seeds and Holm-corrected comparisons like native runs.

    name: my_verl_runs              # the sweep the runs form (default: the mapping file's name)
    format: verl                    # verl | trl | jsonl | csv  (a run may say its own)
    setting: gsm8k_qwen3_1p7b       # the Table 1 column these runs fill
    t_stop: 500                     # the matched window: the best validation step within [0, t_stop]
    validation:                     # split → the logged metric; the headline is their mean
      aime24: val-core/aime24/acc/mean@16
    test: {math500: val-core/math500/acc/mean@1}    # optional: held out, read at the chosen step only
    scale: 1.0                      # × each score (0.01 for metrics logged in %)
    step: step                      # jsonl/csv: the column that holds the step
    runs:
      - {path: logs/cppo_s0.jsonl, method: cppo, seed: 0}
      - {path: logs/grpo_s0.jsonl, method: grpo, seed: 0, label: GRPO (clip-higher)}

Formats: ``verl`` — verl's file logger (``trainer.logger=['file']``), one JSON line per step
``{"step": N, "data": {metric: value}}``; ``trl`` — a Hugging Face ``trainer_state.json``, its
``log_history`` entries (``step`` and the logged metrics); ``wandb`` — an offline run folder
(``wandb/offline-run-…``) or its ``.wandb`` file, its history records (``_step``); ``jsonl`` — one JSON
object per line;
``csv`` — one row per line. Rows of one step are merged. Paths are relative to the mapping file.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import yaml

from harness.store import (RunStore, atomic_write_text, best_within_window, config_hash, runs_dir, sweep_dir,
                           write_manifest)

FORMATS = ("verl", "trl", "wandb", "jsonl", "csv")
RUN_KEYS = {"path", "method", "seed", "label", "format"}
MAPPING_KEYS = {"name", "format", "setting", "t_stop", "validation", "test", "scale", "step", "runs"}


class MappingError(ValueError):
    """A mapping or a log that cannot be imported; the message names the field or the file."""


def load_mapping(path: Path) -> dict:
    """The mapping, every field checked before anything is written."""
    if not path.is_file():
        raise MappingError(f"{path}: no such mapping file (see docs/import.md for its fields)")
    try:
        mapping = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise MappingError(f"{path}: cannot be read as YAML ({err})") from None
    if not isinstance(mapping, dict):
        raise MappingError(f"{path}: must be a mapping with setting, t_stop, validation and runs")
    extra = set(mapping) - MAPPING_KEYS
    if extra:
        raise MappingError(f"{path}: unknown key(s) {sorted(extra)}; allowed: {sorted(MAPPING_KEYS)}")
    for key in ("setting", "t_stop", "validation", "runs"):
        if key not in mapping:
            raise MappingError(f"{path}: {key} is missing")
    if not isinstance(mapping.get("scale", 1.0), (int, float)) or isinstance(mapping.get("scale"), bool):
        raise MappingError(f"{path}: scale must be a number (0.01 for metrics logged in percent), got {mapping['scale']!r}")
    if not isinstance(mapping["t_stop"], int) or isinstance(mapping["t_stop"], bool) or mapping["t_stop"] < 0:
        raise MappingError(f"{path}: t_stop must be a step ≥ 0, got {mapping['t_stop']!r}")
    for key in ("validation", "test"):
        splits = mapping.get(key) or {}
        if not isinstance(splits, dict) or not all(isinstance(v, str) for v in splits.values()):
            raise MappingError(f"{path}: {key} must map split names to logged metric names")
    if not mapping["validation"]:
        raise MappingError(f"{path}: validation must name at least one split")
    if not isinstance(mapping["runs"], list) or not mapping["runs"]:
        raise MappingError(f"{path}: runs must list at least one {{path, method, seed}}")
    for i, run in enumerate(mapping["runs"]):
        where = f"{path}: runs[{i}]"
        if not isinstance(run, dict) or not {"path", "method", "seed"} <= set(run):
            raise MappingError(f"{where} must have path, method and seed")
        extra = set(run) - RUN_KEYS
        if extra:
            raise MappingError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(RUN_KEYS)}")
        fmt = run.get("format", mapping.get("format"))
        if fmt not in FORMATS:
            raise MappingError(f"{where}: format must be one of {list(FORMATS)}, got {fmt!r}")
        if not (path.parent / run["path"]).exists():
            raise MappingError(f"{where}: {path.parent / run['path']} does not exist")
        if not isinstance(run["seed"], int) or isinstance(run["seed"], bool):
            raise MappingError(f"{where}: seed must be an integer (seeds pair the methods' runs), got {run['seed']!r}")
    seen = [(run.get("label", run["method"]), run["seed"]) for run in mapping["runs"]]
    twice = sorted({f"{label} seed {seed}" for label, seed in seen if seen.count((label, seed)) > 1})
    if twice:
        raise MappingError(f"{path}: runs list {', '.join(twice)} more than once (one run per label and seed)")
    return mapping


DEFAULT_STEP = {"verl": "step", "trl": "step", "wandb": "_step", "jsonl": "step", "csv": "step"}


def read_log(path: Path, fmt: str, step_key: str | None = None) -> dict[int, dict]:
    """step → the metrics logged at that step (several records of one step merged). ``step_key``: the
    field holding the step (default per format; for a wandb run of a Hugging Face trainer, which logs
    without a step, ``train/global_step``)."""
    records = []
    try:
        if fmt == "trl":
            records = json.loads(path.read_text())["log_history"]
        elif fmt == "wandb":
            records = wandb_history(path)
        elif fmt in ("verl", "jsonl"):
            for line in path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    records.append({"step": record["step"], **record["data"]} if fmt == "verl" else record)
        else:
            with open(path, newline="") as f:
                records = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except Exception as err:  # noqa: BLE001 - JSON, CSV, protobuf: any failure means the file is not that format
        raise MappingError(f"{path}: not a {fmt} log ({type(err).__name__}: {err})") from None
    key = step_key or DEFAULT_STEP[fmt]
    steps: dict[int, dict] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise MappingError(f"{path}: record {i + 1} is {type(record).__name__}, not an object of metrics")
        if record.get(key) in (None, ""):
            continue
        if not _finite(record[key]) or float(record[key]) != int(record[key]):
            raise MappingError(f"{path}: record {i + 1}: the step {key!r} must be a whole number, got {record[key]!r}")
        steps.setdefault(int(record[key]), {}).update({k: v for k, v in record.items() if _finite(v)})
    if not steps:
        raise MappingError(f"{path}: no record has a {key!r} value")
    return steps


# wandb's run file (.wandb): a LevelDB-style log — a 7-byte header, then 32 KiB blocks of records, each with a
# 7-byte header (checksum, length, type: 1 whole, 2 first, 3 middle, 4 last piece) — of wandb Record protobufs
WANDB_HEADER, WANDB_BLOCK = b":W&B", 32768


def wandb_history(path: Path) -> list[dict]:
    """The history rows (``wandb.log`` calls) of an offline wandb run folder or its ``.wandb`` file."""
    import struct

    from wandb.proto import wandb_internal_pb2

    if path.is_dir():
        files = sorted(path.glob("*.wandb"))
        if not files:
            raise ValueError(f"no .wandb file in {path}")
        path = files[0]
    data = path.read_bytes()
    if not data.startswith(WANDB_HEADER):
        raise ValueError("not a wandb run file (no :W&B header)")
    rows, pos, piece = [], 7, b""
    while pos + 7 <= len(data):
        if WANDB_BLOCK - pos % WANDB_BLOCK < 7:  # a block's tail too short for a record header is padding
            pos += WANDB_BLOCK - pos % WANDB_BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        piece = chunk if kind in (1, 2) else piece + chunk
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(piece)
        if record.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return rows


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run_rows(steps: dict[int, dict], mapping: dict, source: Path) -> list[dict]:
    """Rows in the store's format: every step's numeric metrics; at steps where every validation split
    was logged, the splits under their names, ``headline`` (their mean) and the test splits."""
    validation, test, scale = mapping["validation"], mapping.get("test") or {}, float(mapping.get("scale", 1.0))
    rows = []
    for step in sorted(steps):
        logged = steps[step]
        row = {"step": step, **{k: v for k, v in logged.items() if k != "step"}}
        if all(metric in logged for metric in validation.values()):
            row.update({split: scale * logged[metric] for split, metric in validation.items()})
            row["headline"] = sum(row[s] for s in validation) / len(validation)
            found = {split: scale * logged[metric] for split, metric in test.items() if metric in logged}
            if len(found) == len(test) and test:
                row.update(found)
                row["test_headline"] = sum(found.values()) / len(found)
        rows.append(row)
    if not any("headline" in r for r in rows):
        raise MappingError(f"{source}: no step logs every validation metric {sorted(validation.values())}")
    if test and not any("test_headline" in r for r in rows):
        raise MappingError(f"{source}: no evaluation step logs every test metric {sorted(test.values())}")
    outside = [(r["step"], k, r[k]) for r in rows for k in (*validation, *test) if k in r and not 0 <= r[k] <= 1]
    if outside:
        step, key, value = outside[0]
        raise MappingError(f"{source}: {key} is {value:g} at step {step} after scale {scale:g}; scores must be in "
                           "[0, 1] (scale: 0.01 for metrics logged in percent)")
    return rows


def import_runs(mapping_path, results_root) -> dict:
    """Write each mapped run as a finished run folder and the runs as one sweep; returns the manifest."""
    mapping_path = Path(mapping_path)
    mapping = load_mapping(mapping_path)
    name = mapping.get("name") or mapping_path.stem
    splits = {"validation": list(mapping["validation"]), "test": list(mapping.get("test") or {})}
    parsed = []  # every log is read and checked before any folder is written
    for run in mapping["runs"]:
        fmt, source = run.get("format", mapping.get("format")), (mapping_path.parent / run["path"]).resolve()
        parsed.append((run, fmt, source, run_rows(read_log(source, fmt, mapping.get("step")), mapping, source)))
    cells = []
    for run, fmt, source, rows in parsed:
        config = {"setting": {"name": mapping["setting"], "t_stop": mapping["t_stop"]},
                  "method": {"name": run["method"]}, "seed": int(run["seed"]),
                  "imported": {"format": fmt, "source": str(source), "validation": mapping["validation"],
                               "test": mapping.get("test") or {}, "scale": mapping.get("scale", 1.0)}}
        run_id = config_hash(config)
        store = RunStore(runs_dir(results_root) / f"{mapping['setting']}-{run['method']}-s{run['seed']}-{run_id}")
        store.write_config(yaml.safe_dump(config, sort_keys=False))
        store.clear_records()
        for row in rows:
            store.append_metrics(row)
        best = best_within_window(rows, mapping["t_stop"])
        held = ({"step": best["step"], **{k: best[k] for k in (*splits["test"], "test_headline")}}
                if best and "test_headline" in best else None)
        # a log whose evaluations stop before t_stop is not a finished run: the report counts it as
        # interrupted (its seed left out, said), never as read over a shorter window than the others'
        last_eval = max(r["step"] for r in rows if "headline" in r)
        state = "done" if last_eval >= mapping["t_stop"] else "running"
        store.write_status(state=state, step=rows[-1]["step"], config_hash=run_id, t_stop=mapping["t_stop"],
                           reason="" if state == "done" else f"the log's last evaluation is at step {last_eval}, "
                                                             f"before t_stop {mapping['t_stop']}",
                           best_headline=best["headline"] if best else None, best_step=best["step"] if best else None,
                           held_out=held, splits=splits, imported={"format": fmt, "source": str(source)},
                           run_dir=str(store.dir))
        cells.append({"id": run_id, "setting": mapping["setting"], "label": run.get("label", run["method"]),
                      "method": run["method"], "seed": int(run["seed"]), "t_stop": mapping["t_stop"],
                      "run_dir": str(Path("runs") / store.dir.name), "overrides": []})
    manifest = {"sweep": name, "feeds": "imported runs", "imported_from": str(mapping_path.resolve()), "cells": cells,
                "incomplete": [f"{c['label']} seed {c['seed']}" for c, (_, _, _, rows) in zip(cells, parsed)
                               if max(r["step"] for r in rows if "headline" in r) < mapping["t_stop"]]}
    write_manifest(sweep_dir(results_root, name), manifest)
    atomic_write_text(sweep_dir(results_root, name) / "mapping.yaml", mapping_path.read_text())
    return manifest
