"""Fault injection: damaged, garbage and partial files, filtered reruns, every form of the results
path, read-only readers, a full disk and hostile spec files each end in one clear line naming the
file, or in a correct recovery — never in a changed score or a lost cell."""

import errno
import os
import shutil
from pathlib import Path

import pytest

from analysis.load import load_results
from analysis.report import build_report, choose_table1
from harness.store import RunStore, read_manifest, run_folders, summary_path, sweep_dir, write_manifest
from sweeps.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = run_folders(ROOT / "results" / "embedded")


def copy_runs(root: Path, count: int = 2) -> list[Path]:
    """Finished runs of the committed study, copied into ``root/runs`` (different methods)."""
    picked, methods = [], set()
    for folder in COMMITTED:
        method = RunStore(folder).read_config()["method"]["name"]
        if method not in methods and RunStore(folder).read_status()["state"] == "done":
            methods.add(method)
            picked.append(shutil.copytree(folder, root / "runs" / folder.name))
        if len(picked) == count:
            return picked
    raise AssertionError("not enough committed runs")


def manifest_row(folder: Path, root: Path) -> dict:
    cfg = RunStore(folder).read_config()
    return {"id": folder.name.rsplit("-", 1)[-1], "setting": cfg["setting"]["name"], "label": cfg["method"]["name"],
            "method": cfg["method"]["name"], "seed": cfg["seed"], "t_stop": cfg["setting"]["t_stop"],
            "run_dir": str(folder.relative_to(root)), "overrides": []}


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_single_trh_train_run_reports_done_from_any_path_form(tmp_path, monkeypatch):
    root = tmp_path / "results"
    copy_runs(root, 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd, path in ((tmp_path, "results"), (root, "."), (elsewhere, "../results"), (elsewhere, str(root))):
        monkeypatch.chdir(cwd)
        cells = load_results(path).cells
        assert cells["verdict"].tolist() == ["done"] and cells["best_headline"].notna().all(), (cwd, path)


def test_a_cut_or_short_metrics_file_is_reported_damaged_not_scored(tmp_path, capsys):
    root = tmp_path / "results"
    cut, short = copy_runs(root, 2)
    lines = (cut / "metrics.jsonl").read_text().splitlines(keepends=True)
    (cut / "metrics.jsonl").write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a torn write
    (short / "metrics.jsonl").write_text("".join((short / "metrics.jsonl").read_text().splitlines(keepends=True)[:-1]))
    cells = load_results(root).cells.set_index("run_dir")
    for folder, why in ((cut, "is cut"), (short, "ends at step")):
        row = cells.loc[str(folder)]
        assert row["verdict"] == "damaged" and pd_isna(row["best_headline"]) and why in row["reason"]
    report = build_report(root, tmp_path / "report", figure_formats=())
    assert "damaged" in report["index"]


def pd_isna(value) -> bool:
    import pandas as pd
    return bool(pd.isna(value))


@pytest.mark.parametrize("name,content,needle", [
    ("status.json", "{not json", "status.json is not valid JSON"),
    ("status.json", "[]", "holds no run status"),
    ("config.yaml", "a: [unclosed", "config.yaml is not valid YAML"),
    ("config.yaml", "seed: 0\n", "config.yaml is not a run config (missing ['setting', 'method'])"),
])
def test_garbage_files_are_one_line_naming_the_file(tmp_path, capsys, name, content, needle):
    root = tmp_path / "results"
    (folder,) = copy_runs(root, 1)
    (folder / name).write_text(content)
    one_line_error(capsys, main(["report", str(root), "--figures", ""]), needle, str(folder), "delete the run folder")


def test_a_garbage_manifest_is_one_line(tmp_path, capsys):
    root = tmp_path / "results"
    (sweep_dir(root, "x")).mkdir(parents=True)
    (sweep_dir(root, "x") / "manifest.json").write_text("{")
    one_line_error(capsys, main(["report", str(root)]), "manifest.json is not a valid manifest")


def test_readers_never_open_a_run_folder_for_writing(tmp_path, monkeypatch):
    """A read-only results folder (a shared archive): scoring a run opens nothing for writing."""
    root = tmp_path / "results"
    copy_runs(root, 1)
    (next((root / "runs").iterdir()) / ".lock").write_text("")
    real_open, real_os_open = open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        assert not (str(file).startswith(str(root)) and any(c in mode for c in "wa+x")), (file, mode)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        assert not (str(path).startswith(str(root)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND)), path
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    assert load_results(root).cells["verdict"].tolist() == ["done"]


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    import harness.store as store_module

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module.os, "fsync", full)
    run_dir = tmp_path / "run"
    code = main(["train", "setting=smoke", f"run_dir={run_dir}", "logging=quiet"])
    one_line_error(capsys, code, "No space left on device", "finished results are kept")
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def test_malformed_and_hostile_spec_files(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsettings: [smoke\nmethods: [grpo]\n")
    one_line_error(capsys, main(["sweep", str(bad)]), f"{bad}:", "not valid YAML")
    escape = tmp_path / "escape.yaml"
    escape.write_text("name: ../../escaped\nsettings: [smoke]\nmethods: [grpo]\nseeds: [0]\n")
    one_line_error(capsys, main(["sweep", str(escape), "--results", str(tmp_path / "r")]), "name must be")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "r").exists()
    variant = tmp_path / "variant.yaml"
    variant.write_text("name: variant\nsettings: [smoke]\nseeds: [0]\nvariants:\n  neg: {method: cppo, params: {delta: -1}}\n")
    one_line_error(capsys, main(["sweep", str(variant), "--results", str(tmp_path / "v")]), "delta must be > 0")
    assert not (tmp_path / "v").exists()


def test_table1_comes_from_a_stated_rule(tmp_path):
    root = tmp_path / "results"
    runs = copy_runs(root, 2)
    base = {"feeds": "tests", "description": "", "spec": {}, "settings": [], "labels": [], "seeds": [], "invocations": []}
    write_manifest(sweep_dir(root, "aaa_failed"), {**base, "sweep": "aaa_failed",
                                                    "cells": [{**manifest_row(runs[0], root), "id": "000000000000",
                                                               "run_dir": "runs/nowhere"}]})
    write_manifest(sweep_dir(root, "smoke"), {**base, "sweep": "smoke", "cells": [manifest_row(r, root) for r in runs]})
    results = load_results(root)
    assert choose_table1(results) == "smoke"  # the most finished cells, not the first by name
    assert choose_table1(results, "aaa_failed") == "aaa_failed"
    with pytest.raises(ValueError, match="--table1 must be one of"):
        choose_table1(results, "nope")
    assert "From sweep **smoke**" in build_report(root, tmp_path / "rep", figure_formats=())["index"]


def test_a_filtered_rerun_adds_cells_never_removes_them(tmp_path):
    """trh sweep smoke method=grpo, then method=cppo: the manifest, the summary and Table 1 hold both."""
    root = tmp_path / "results"
    for method in ("grpo", "cppo"):
        assert main(["sweep", "smoke", f"method={method}", "seed=0", "--executor", "debug", "--results", str(root),
                     "--no-progress"]) == 0
    manifest = read_manifest(sweep_dir(root, "smoke"))
    assert sorted(c["method"] for c in manifest["cells"]) == ["cppo", "grpo"] and len(manifest["invocations"]) == 2
    summary = summary_path(sweep_dir(root, "smoke")).read_text()
    assert "grpo" in summary and "cppo" in summary
    table = build_report(root, tmp_path / "rep", figure_formats=())["index"]
    assert "GRPO" in table and "CPPO" in table


def test_a_full_disk_mid_run_leaves_a_failed_status_with_the_reason(tmp_path, capsys, monkeypatch):
    """The weights file cannot be written (disk full) but the small status can: the run says failed,
    why, and leaves no temp file."""
    import harness.store as store_module

    def full(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(store_module, "atomic_torch_save", full)
    run_dir = tmp_path / "run"
    code = main(["train", "setting=smoke", f"run_dir={run_dir}", "logging=quiet"])
    one_line_error(capsys, code, "No space left on device")
    status = RunStore(run_dir).read_status()
    assert status["state"] == "failed" and "No space left on device" in status["reason"]
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def test_a_finished_run_in_a_read_only_folder_returns_its_verdict(tmp_path, monkeypatch):
    """trh train on a finished run never takes the lock, so an archive without write access works."""
    from harness.config import compose
    from harness.train import run

    overrides = ["setting=smoke", f"run_dir={tmp_path / 'run'}", "logging=quiet"]
    first = run(compose(overrides))
    monkeypatch.setattr(RunStore, "exclusive", lambda self: (_ for _ in ()).throw(PermissionError("read-only")))
    again = run(compose(overrides))
    assert again == {**first, "skipped": True}
