"""The sweep driver end to end on the tiny smoke setting: executors agree, reruns skip, and kills of
the driver or of a worker — or two drivers at once — never lose, duplicate or rerun a cell."""

import json
import os
import signal
from pathlib import Path

from sweeps.driver import sweep

from .helpers import assert_each_step_once, finish, metrics, statuses, trh, wait_for

# Long enough, and checkpointed often enough, to kill a cell between checkpoints: the status file's
# step moves only at a checkpoint, and with the engine's default (every 10 steps) a fast machine left
# a window of two steps (≈ 0.3 s) for the poller to see "past its second checkpoint".
STEPS = 16
LONG = [f"setting.steps={STEPS}", f"setting.t_stop={STEPS}", "engine.checkpoint_every=2"]


def _quiet(*_):
    pass


def test_debug_and_local_executors_agree_and_reruns_skip(tmp_path):
    debug = sweep("smoke", executor="debug", results_root=tmp_path / "debug", progress=False, log=_quiet)
    assert [o.state for o in debug["outcomes"]] == ["done"] * 4
    local = sweep("smoke", executor="local", workers=2, results_root=tmp_path / "local", progress=False, log=_quiet)
    for a, b in zip(debug["outcomes"], local["outcomes"]):
        assert a.cell.id == b.cell.id
        assert metrics(a.cell.run_dir) == metrics(b.cell.run_dir)  # same config and seed → same metrics
        assert json.loads((b.cell.run_dir / "status.json").read_text())["job"]["executor"] == "local"
        assert not (b.cell.run_dir / "checkpoint.pt").exists()
    rows = {(r["label"], r["seed"]): r for r in local["rows"]}
    for o in local["outcomes"]:
        status = json.loads((o.cell.run_dir / "status.json").read_text())
        assert rows[(o.cell.label, o.cell.seed)]["best_headline"] == status["best_headline"]

    # a rerun submits nothing; adding a seed runs only the new cells
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "local" / "runs").glob("*/status.json")}
    again = sweep("smoke", executor="local", workers=2, results_root=tmp_path / "local", progress=False, log=_quiet)
    assert all(o.seconds is None for o in again["outcomes"])
    more = sweep("smoke", ["seed=0,1,2"], executor="local", workers=2, results_root=tmp_path / "local",
                 progress=False, log=_quiet)
    assert sorted(o.cell.seed for o in more["outcomes"] if o.seconds is not None) == [2, 2]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    manifest = json.loads((tmp_path / "local" / "sweeps" / "smoke" / "manifest.json").read_text())
    assert len(manifest["invocations"]) == 3 and len(manifest["cells"]) == 6
    assert manifest["invocations"][0]["git"]["commit"]


def test_killed_driver_then_rerun(tmp_path):
    root = tmp_path / "r"
    driver = trh("sweep", "smoke", *LONG, "--workers", "2", "--results", root, "--no-progress")

    def one_done_one_midway():
        s = statuses(root).values()
        return any(v["state"] == "done" for v in s) and any(v["state"] == "running" and v["step"] >= 2 for v in s)

    wait_for(one_done_one_midway, what="a finished cell and one past its first checkpoint", proc=driver)
    finished = {name: (root / "runs" / name / "status.json").read_text()
                for name, v in statuses(root).items() if v["state"] == "done"}
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    out = finish(trh("sweep", "smoke", *LONG, "--workers", "2", "--results", root, "--no-progress"))
    final = statuses(root)
    assert len(final) == 4 and all(v["state"] == "done" for v in final.values()), out
    for name in final:
        assert_each_step_once(root / "runs" / name, STEPS)  # nothing lost, nothing twice
    for name, text in finished.items():  # a finished cell is never rerun
        assert (root / "runs" / name / "status.json").read_text() == text
    summary = (root / "sweeps" / "smoke" / "summary.csv").read_text().splitlines()
    assert len(summary) == 5


def test_killed_worker_resumes_from_its_checkpoint(tmp_path):
    root, ref = tmp_path / "r", tmp_path / "ref"
    args = ("smoke", "method=cppo", "seed=0", *LONG)
    driver = trh("sweep", *args, "--results", root, "--no-progress")

    def midway():
        s = list(statuses(root).values())
        return s and s[0]["state"] == "running" and s[0]["step"] >= 4 and s[0]["step"] < STEPS and s[0]

    status = wait_for(midway, what="the cell past its second checkpoint", proc=driver)
    os.kill(status["job"]["pid"], signal.SIGKILL)
    out = finish(driver)
    assert "resubmitting" in out
    (name, final), = statuses(root).items()
    assert final["state"] == "done" and final["resumed_from"] and final["resumed_from"][0] >= 4
    assert final["job"]["pid"] != status["job"]["pid"]
    assert_each_step_once(root / "runs" / name, STEPS)
    # the resumed run equals an uninterrupted one, step for step
    finish(trh("sweep", *args, "--results", ref, "--no-progress", "--executor", "debug"))
    assert metrics(root / "runs" / name) == metrics(ref / "runs" / name)
    assert metrics(root / "runs" / name, "diagnostics.jsonl") == metrics(ref / "runs" / name, "diagnostics.jsonl")


def test_two_drivers_at_once_train_each_cell_once(tmp_path):
    root = tmp_path / "r"
    drivers = [trh("sweep", "smoke", "--workers", "2", "--results", root, "--no-progress") for _ in range(2)]
    outs = [finish(d) for d in drivers]
    trained = [int(out.split(" run now")[0].rsplit("(", 1)[1]) for out in outs]
    assert sum(trained) == 4, outs  # every cell trained by exactly one of the two drivers
    final = statuses(root)
    assert len(final) == 4 and all(v["state"] == "done" and v["resumed_from"] == [] for v in final.values())
    for name in final:
        assert_each_step_once(root / "runs" / name, 4)
    json.loads((root / "sweeps" / "smoke" / "manifest.json").read_text())  # not corrupted
    assert not list(Path(root).rglob("*.tmp"))


def test_failed_cell_is_reported_and_others_finish(tmp_path, capsys):
    from sweeps.cli import main

    # a checkpoint from another config makes the cppo cells fail with a clear reason
    result = sweep("smoke", ["method=grpo"], executor="debug", results_root=tmp_path, progress=False, log=_quiet)
    assert all(o.state == "done" for o in result["outcomes"])
    from sweeps.driver import prepare
    _, cells, _, _ = prepare("smoke", ["method=cppo", "seed=0"], tmp_path)
    cells[0].run_dir.mkdir(parents=True)
    (cells[0].run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code = main(["sweep", "smoke", "--executor", "debug", "--results", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert "smoke/cppo/s0 failed: RuntimeError: checkpoint" in out and "corrupted" in out
    final = statuses(tmp_path)
    assert sorted(v["state"] for v in final.values()) == ["done", "done", "done", "failed"]
