"""benchmarks/cell_throughput.py's comparison: two runs are the same when every metrics row and the
held-out scores agree bitwise apart from the ``time_*`` fields, with NaN (older commits), null (now) and
an absent key all meaning "does not apply"."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("cell_throughput", ROOT / "benchmarks" / "cell_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, rows: list[str], held_out: dict) -> Path:
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    (folder / "status.json").write_text(json.dumps({"held_out": held_out}))
    return folder


def test_runs_that_differ_only_in_timing_and_in_how_they_write_nan_are_identical(tmp_path):
    bench = _bench()
    old = _run(tmp_path / "old", ['{"step": 1, "loss": 0.5, "cap_hit": NaN, "time_update": 3.0}'],
               {"test_a": 0.75, "time_eval": 4.0})
    new = _run(tmp_path / "new", ['{"step": 1, "loss": 0.5, "cap_hit": null, "time_update": 2.0}'],
               {"test_a": 0.75, "time_eval": 3.0})
    absent = _run(tmp_path / "absent", ['{"step": 1, "loss": 0.5}'], {"test_a": 0.75})
    assert bench.first_difference(bench.outcome(old), bench.outcome(new)) is None
    assert bench.first_difference(bench.outcome(old), bench.outcome(absent)) is None
    assert bench.outcome(new)["phases"]["time_update"] == 2.0


def test_a_last_bit_difference_is_reported_with_its_step_and_field(tmp_path):
    bench = _bench()
    a = _run(tmp_path / "a", ['{"step": 1, "loss": 0.5}', '{"step": 2, "loss": 0.25}'], {"test_a": 0.75})
    b = _run(tmp_path / "b", ['{"step": 1, "loss": 0.5}', '{"step": 2, "loss": 0.25000000000000006}'], {"test_a": 0.75})
    assert bench.first_difference(bench.outcome(a), bench.outcome(b)) == "step 2: loss 0.25 vs 0.25000000000000006"
    c = _run(tmp_path / "c", ['{"step": 1, "loss": 0.5}', '{"step": 2, "loss": 0.25}'], {"test_a": 0.5})
    assert bench.first_difference(bench.outcome(a), bench.outcome(c)) == "held-out test_a: 0.75 vs 0.5"
    short = _run(tmp_path / "short", ['{"step": 1, "loss": 0.5}'], {"test_a": 0.75})
    assert bench.first_difference(bench.outcome(a), bench.outcome(short)) == "2 rows vs 1"
