"""trh import: runs trained elsewhere become run folders the whole report reads (analysis/importer.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.importer import MappingError, import_runs, read_log
from analysis.report import build_report
from sweeps.cli import main

from .test_grouping import _config, _run

# per seed: the validation score at steps 0, 10, 20, 30 (the best within t_stop=20 is step 10 or 20)
CURVES = {"cppo": [[0.30, 0.50, 0.55, 0.9], [0.30, 0.60, 0.40, 0.9], [0.30, 0.45, 0.52, 0.9]],
          "grpo": [[0.30, 0.40, 0.35, 0.9], [0.30, 0.38, 0.44, 0.9], [0.30, 0.30, 0.41, 0.9]]}


def _verl_log(path, curve):
    """verl's file logger (verl/utils/tracking.py, FileLogger.log in verl 0.9.1): one line per logger call,
    {"step": N, "data": {...}}; validation at step 0 and every 10 steps, training metrics every step."""
    lines = []
    for step in range(31):
        lines.append({"step": step, "data": {"actor/pg_loss": 0.1 * step, "critic/score/mean": 0.2}})
        if step % 10 == 0:
            score = curve[step // 10]
            lines.append({"step": step, "data": {"val-core/aime/acc/mean@16": 100 * score,
                                                 "val-core/math500/acc/mean@1": 100 * score - 5}})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _mapping(tmp_path, fmt, runs, **extra):
    mapping = {"name": f"imported_{fmt}", "format": fmt, "setting": "base_s", "t_stop": 20,
               "validation": {"aime": "val-core/aime/acc/mean@16"}, "test": {"math500": "val-core/math500/acc/mean@1"},
               "scale": 0.01, "runs": runs, **extra}
    path = tmp_path / f"{fmt}.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return path


def test_verl_logs_become_table1_and_comparisons(tmp_path, capsys):
    runs = []
    for method, curves in CURVES.items():
        for seed, curve in enumerate(curves):
            _verl_log(tmp_path / f"{method}{seed}.jsonl", curve)
            runs.append({"path": f"{method}{seed}.jsonl", "method": method, "seed": seed})
    results = tmp_path / "results"
    assert main(["import", str(_mapping(tmp_path, "verl", runs)), "--results", str(results)]) == 0
    assert "imported 6 run(s)" in capsys.readouterr().out
    _run(results, "base_s-cppo-s9-loose", _config(9, 0.1), [0.1, 0.2])  # a trh train run beside the import
    report = build_report(results, tmp_path / "report", table_formats=("md", "csv"), figure_formats=())
    assert "1 run folder(s) under runs/ belong to no sweep" in report["index"] and "base_s-cppo-s9-loose" in report["index"]
    table = pd.read_csv(tmp_path / "report" / "table1.csv")
    means = table[table["protocol"] == "best_headline"].set_index("label")["mean"]
    assert means["cppo"] == pytest.approx((0.55 + 0.60 + 0.52) / 3)  # the best of steps 0–20, never step 30
    held = table[table["protocol"] == "heldout_headline"].set_index("label")["mean"]
    assert held["cppo"] == pytest.approx((0.50 + 0.55 + 0.47) / 3)  # the test split at each run's chosen step
    assert not pd.read_csv(tmp_path / "report" / "comparisons.csv").empty
    assert "CPPO (imported)" in (tmp_path / "report" / "table1.md").read_text()
    assert "imported" in report["cells"] and set(report["cells"]["imported"]) == {"verl"}
    # importing again rewrites the same folders: nothing doubles
    assert main(["import", str(_mapping(tmp_path, "verl", runs)), "--results", str(results)]) == 0
    assert len(list((results / "runs").iterdir())) == 7


def test_trl_trainer_state_as_transformers_writes_it(tmp_path):
    """A trainer_state.json written by transformers' own TrainerState, evaluation metrics in log_history."""
    from transformers import TrainerState

    state = TrainerState(log_history=[{"step": 0, "eval_aime": 0.3, "eval_heldout": 0.2},
                                      {"step": 5, "loss": 0.7}, {"step": 10, "eval_aime": 0.6, "eval_heldout": 0.5},
                                      {"step": 20, "eval_aime": 0.5, "eval_heldout": 0.7}])
    state.save_to_json(str(tmp_path / "trainer_state.json"))
    runs = [{"path": "trainer_state.json", "method": "cppo", "seed": 0}]
    for name, method, seed, best in [("c1", "cppo", 1, 0.7), ("g0", "grpo", 0, 0.4), ("g1", "grpo", 1, 0.45)]:
        TrainerState(log_history=[{"step": 0, "eval_aime": 0.3, "eval_heldout": 0.2},
                                  {"step": 20, "eval_aime": best, "eval_heldout": 0.3}]).save_to_json(str(tmp_path / name))
        runs.append({"path": name, "method": method, "seed": seed})
    mapping = _mapping(tmp_path, "trl", runs,
                       validation={"aime": "eval_aime"}, test={"heldout": "eval_heldout"}, scale=1.0)
    manifest = import_runs(mapping, tmp_path / "results")
    status = json.loads((tmp_path / "results" / manifest["cells"][0]["run_dir"] / "status.json").read_text())
    assert status["best_step"] == 10 and status["held_out"]["test_headline"] == 0.5 and status["state"] == "done"
    build_report(tmp_path / "results", tmp_path / "report", table_formats=("csv",), figure_formats=())
    table = pd.read_csv(tmp_path / "report" / "table1.csv")
    assert set(table["label"]) == {"cppo", "grpo"} and (tmp_path / "report" / "comparisons.csv").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_imported_run_and_a_native_run_give_the_same_tables(tmp_path, fmt):
    """A native results folder, its metrics exported as plain JSONL or CSV and imported with the same
    splits and window: Table 1 and the comparisons have the same numbers."""
    native = tmp_path / "native"
    runs = []
    for method, curves in CURVES.items():
        for seed, curve in enumerate(curves):
            name = f"base_s-{method}-s{seed}-{method}{seed}"
            _run(native, name, {**_config(seed, 0.1), "method": {"name": method},
                                "setting": {"name": "base_s", "t_stop": 20}}, curve)
            rows = [json.loads(line) for line in (native / "runs" / name / "metrics.jsonl").read_text().splitlines()]
            if fmt == "jsonl":
                (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            else:
                pd.DataFrame(rows).to_csv(tmp_path / f"{name}.csv", index=False)
            runs.append({"path": f"{name}.{fmt}", "method": method, "seed": seed})
    mapping = _mapping(tmp_path, fmt, runs, validation={s: s for s in ("val_a", "val_b", "val_c")}, test={},
                       scale=1.0)
    import_runs(mapping, tmp_path / "imported")
    tables = {}
    for name in ("native", "imported"):
        build_report(tmp_path / name, tmp_path / f"report_{name}", table_formats=("csv",), figure_formats=())
        tables[name] = [pd.read_csv(tmp_path / f"report_{name}" / f"{t}.csv") for t in ("table1", "comparisons")]
    for ours, theirs in zip(tables["native"], tables["imported"]):
        numbers = [c for c in ours.columns if ours[c].dtype.kind == "f"]
        pd.testing.assert_frame_equal(ours[numbers], theirs[numbers])


@pytest.mark.parametrize("change,message", [
    ({"t_stop": -1}, "t_stop must be a step"), ({"format": "tensorboard"}, "format must be one of"),
    ({"validation": {}}, "validation must name at least one split"),
    ({"runs": [{"path": "nowhere.jsonl", "method": "cppo", "seed": 0}]}, "does not exist"),
    ({"runs": [{"path": "verl.yaml", "method": "cppo", "seed": 0, "sede": 1}]}, "unknown key(s) ['sede']"),
    ({"scael": 0.01}, "unknown key(s) ['scael']"), ({"scale": "1%"}, "scale must be a number"),
    ({"runs": [{"path": "verl.yaml", "method": "cppo", "seed": "s0"}]}, "seed must be an integer"),
    ({"runs": [{"path": "verl.yaml", "method": "cppo", "seed": 0}] * 2}, "cppo seed 0 more than once")])
def test_bad_mappings_are_one_line_naming_the_field(tmp_path, change, message, capsys):
    mapping = _mapping(tmp_path, "verl", [{"path": "verl.yaml", "method": "cppo", "seed": 0}])
    data = {**yaml.safe_load(mapping.read_text()), **change}
    mapping.write_text(yaml.safe_dump(data))
    assert main(["import", str(mapping), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()  # nothing written before the mapping is whole


def test_a_log_without_the_validation_metric_is_refused(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 0, "data": {"loss": 1.0}}\n')
    with pytest.raises(MappingError, match="no step logs every validation metric"):
        import_runs(_mapping(tmp_path, "verl", [{"path": "log.jsonl", "method": "cppo", "seed": 0}]),
                    tmp_path / "results")
    with pytest.raises(MappingError, match="not a csv log|no record"):
        read_log(tmp_path / "log.jsonl", "csv")


WANDB_RUNS = """
import json, sys, wandb
for folder, name, rows, with_step in json.loads(sys.argv[1]):
    run = wandb.init(mode="offline", dir=folder, project="p", name=name)
    for step, row in rows:
        run.log(row, step=step) if with_step else run.log(row)
    run.finish()
"""


def _wandb_runs(tmp_path, runs: list) -> list[Path]:
    """Offline runs made by wandb itself, in a process of their own (it exits only when wandb has written
    its files, and no other test's wandb state reaches it): (subfolder, name, [(step, row)], log the step?)."""
    specs = [(str(tmp_path / sub), name, rows, with_step) for sub, name, rows, with_step in runs]
    done = subprocess.run([sys.executable, "-c", WANDB_RUNS, json.dumps(specs)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "WANDB_SILENT": "true"})
    assert done.returncode == 0, done.stderr[-2000:]
    return [next((tmp_path / sub / "wandb").glob("offline-run-*")) for sub, *_ in runs]


def test_a_wandb_offline_run_as_wandb_writes_it(tmp_path):
    """An offline run made by wandb itself (wandb.init(mode='offline')), read from its run folder."""
    arms = [("cppo", 0, [(0.3, 0.2), (0.6, 0.5), (0.5, 0.7)]), ("cppo", 1, [(0.3, 0.2), (0.5, 0.4)]),
            ("grpo", 0, [(0.3, 0.2), (0.4, 0.3)]), ("grpo", 1, [(0.3, 0.2), (0.45, 0.3)])]
    folders = _wandb_runs(tmp_path, [
        (f"{method}{seed}", f"{method}_s{seed}",
         [(10 * step, {"eval/aime": val, "eval/heldout": test, "train/loss": 1.0 - step})
          for step, (val, test) in enumerate(curve + [(0.1, 0.1)] * (3 - len(curve)))], True)
        for method, seed, curve in arms])
    runs = [{"path": str(folder.relative_to(tmp_path)), "method": method, "seed": seed}
            for folder, (method, seed, _) in zip(folders, arms)]
    mapping = _mapping(tmp_path, "wandb", runs, validation={"aime": "eval/aime"}, test={"heldout": "eval/heldout"},
                       scale=1.0)
    manifest = import_runs(mapping, tmp_path / "results")
    status = json.loads((tmp_path / "results" / manifest["cells"][0]["run_dir"] / "status.json").read_text())
    assert status["best_step"] == 10 and status["best_headline"] == 0.6 and status["held_out"]["test_headline"] == 0.5
    build_report(tmp_path / "results", tmp_path / "report", table_formats=("csv",), figure_formats=())
    assert set(pd.read_csv(tmp_path / "report" / "table1.csv")["label"]) == {"cppo", "grpo"}
    assert len(pd.read_csv(tmp_path / "report" / "comparisons.csv")) == 2  # grpo against cppo, both protocols


@pytest.mark.parametrize("lines,change,message", [
    (['{"step": 0, "data": {"val-core/aime/acc/mean@16": 160.0, "val-core/math500/acc/mean@1": 50.0}}'], {},
     "scores must be in [0, 1]"),
    (['{"step": 0, "data": {"val-core/aime/acc/mean@16": 60.0}}'], {}, "no evaluation step logs every test metric"),
    (['{"step": 0, "data": {"val-core/aime/acc/mean@16": 60.0}}', "1"], {}, "not a verl log"),
    (['{"step": 0, "data": {"val-core/aime/acc/mean@16": 60.0}', ""], {}, "not a verl log"),
    (['{"step": "x", "data": {"val-core/aime/acc/mean@16": 60.0}}'], {}, "must be a whole number")])
def test_damaged_logs_are_one_line_and_nothing_is_written(tmp_path, lines, change, message, capsys):
    _verl_log(tmp_path / "good.jsonl", CURVES["cppo"][0])
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    mapping = _mapping(tmp_path, "verl", [{"path": "good.jsonl", "method": "cppo", "seed": 0},
                                          {"path": "bad.jsonl", "method": "grpo", "seed": 0}], **change)
    assert main(["import", str(mapping), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "bad.jsonl" in err
    assert not (tmp_path / "results").exists()  # the good log was not written either


def test_a_log_that_stops_before_t_stop_is_interrupted_not_read_over_a_shorter_window(tmp_path, capsys):
    for seed, curve in enumerate(CURVES["cppo"]):
        _verl_log(tmp_path / f"c{seed}.jsonl", curve)
    short = [json.loads(line) for line in (tmp_path / "c2.jsonl").read_text().splitlines()]
    (tmp_path / "c2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in short if r["step"] <= 10))
    mapping = _mapping(tmp_path, "verl", [{"path": f"c{s}.jsonl", "method": "cppo", "seed": s} for s in range(3)])
    assert main(["import", str(mapping), "--results", str(tmp_path / "results")]) == 0
    assert "cppo seed 2: its log's evaluations end before t_stop" in capsys.readouterr().out
    report = build_report(tmp_path / "results", tmp_path / "report", table_formats=("csv",), figure_formats=())
    cells = report["cells"].set_index("seed")
    assert cells.loc[2, "verdict"] == "interrupted" and cells.loc[0, "verdict"] == "done"
    table = pd.read_csv(tmp_path / "report" / "table1.csv")
    assert table.loc[table["protocol"] == "best_headline", "mean"].iloc[0] == pytest.approx((0.55 + 0.60) / 2)


def test_the_mapping_step_names_the_wandb_step_of_a_hugging_face_trainer(tmp_path):
    """transformers' wandb callback logs without a step (so _step counts calls); the step is train/global_step."""
    (folder,) = _wandb_runs(tmp_path, [("hf", "hf", [(None, {"train/global_step": global_step, "eval/aime": val,
                                                             "eval/heldout": val})
                                                     for global_step, val in [(0, 0.3), (10, 0.6), (20, 0.5)]], False)])
    mapping = _mapping(tmp_path, "wandb", [{"path": str(folder.relative_to(tmp_path)), "method": "cppo", "seed": 0}],
                       validation={"aime": "eval/aime"}, test={"heldout": "eval/heldout"}, scale=1.0,
                       step="train/global_step")
    manifest = import_runs(mapping, tmp_path / "results")
    status = json.loads((tmp_path / "results" / manifest["cells"][0]["run_dir"] / "status.json").read_text())
    assert status["best_step"] == 10 and status["state"] == "done"
