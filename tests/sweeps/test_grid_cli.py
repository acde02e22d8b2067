"""Grids from the command line, one rule for method= / setting= / seed=, misspelled keys refused in
seconds, unreadable specs in one line, and reruns that name every damaged, failed or collapsed cell."""

import json
import time

import pytest

from harness.store import RunStore
from sweeps.cli import main


def _status_rows(capsys, *args) -> list[str]:
    assert main(["sweep", *args, "--status"]) == 0
    out = capsys.readouterr().out.splitlines()
    return [line for line in out[2:] if line.strip()]  # after the count line and the header


def test_a_method_parameter_axis_doubles_the_cells_of_every_method_that_has_it(tmp_path, capsys):
    results = ["--results", str(tmp_path)]
    plain = _status_rows(capsys, "smoke", "method=cppo,dppo", "seed=0", *results)
    grid = _status_rows(capsys, "smoke", "method=cppo,dppo", "method.delta=0.1,0.2", "seed=0", *results)
    assert len(plain) == 2 and len(grid) == 4
    assert sum("method.delta=0.1" in r for r in grid) == 2 and sum("method.delta=0.2" in r for r in grid) == 2
    # on the spec as it is, grpo has no delta: it runs once, and the note says so
    mixed = _status_rows(capsys, "smoke", "method.delta=0.1,0.2", "seed=0", *results)
    assert len(mixed) == 3
    assert main(["sweep", "smoke", "method.delta=0.1,0.2", "seed=0", "--status", *results]) == 0
    assert "grpo has no parameter 'delta'; grpo runs once" in capsys.readouterr().err


def test_hydra_range_and_choice_expand_an_axis(tmp_path, capsys):
    rows = _status_rows(capsys, "smoke", "method=cppo", "seed=range(0,3)", "method.w_min=choice(0.6,0.9)",
                        "--results", str(tmp_path))
    assert len(rows) == 6 and {r.split()[-7] for r in rows} >= {"0", "1", "2"}


def test_method_setting_and_seed_replace_their_axis(tmp_path, capsys):
    results = ["--results", str(tmp_path)]
    rows = _status_rows(capsys, "smoke", "method=cppo_soft", *results)  # not in the spec: run at its defaults
    assert len(rows) == 2 and all("cppo_soft" in r for r in rows)
    rows = _status_rows(capsys, "smoke", "method=grpo,cppo_soft", "seed=0", *results)
    assert [r.split()[1] for r in rows] == ["grpo", "cppo_soft"]
    rows = _status_rows(capsys, "smoke", "seed=5,6,7", "method=grpo", *results)
    assert [r.split()[2] for r in rows] == ["5", "6", "7"]
    assert main(["sweep", "smoke", "method=nonesuch", "--status", *results]) == 2
    err = capsys.readouterr().err
    assert "method=nonesuch: neither a method nor a variant" in err and "the spec has grpo, cppo" in err


def test_a_misspelled_added_key_is_refused_in_seconds(tmp_path, capsys):
    started = time.time()
    assert main(["sweep", "smoke", "+rl.lrr=0.001", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert time.time() - started < 10 and len(err.splitlines()) == 1 and "rl.lrr is not a config key" in err
    assert not (tmp_path / "runs").exists()


def test_trh_train_points_a_grid_to_trh_sweep(capsys):
    assert main(["train", "setting=smoke", "method.delta=0.1,0.2"]) == 2
    assert "trh sweep" in capsys.readouterr().err


def test_a_spec_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: latin\ndescription: caf\xe9\n".encode("latin-1"))
    assert main(["sweep", str(path), "--status"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not UTF-8" in err


@pytest.mark.xdist_group("smoke_training")
def test_a_rerun_names_damaged_cells_and_repair_retrains_them(tmp_path, capsys):
    args = ["sweep", "smoke", "method=grpo", "seed=0,1", "--results", str(tmp_path), "--executor", "debug",
            "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    cut = sorted((tmp_path / "runs").glob("smoke-grpo-s1-*"))[0]
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("\n".join(lines[:2] + [lines[2][:9]] + lines[3:]) + "\n")

    assert main(args) == 1  # damaged: named, with what to do, and the rerun is not a success
    out = capsys.readouterr().out
    assert "cells to look at" in out and f"damaged: smoke/grpo/s1 ({cut})" in out and "--repair" in out
    assert "line 3" in out

    assert main([*args, "--repair"]) == 0
    out = capsys.readouterr().out
    assert "repair: smoke/grpo/s1 was damaged" in out and "1 run now" in out
    aside = list((tmp_path / "runs").glob(f"{cut.name}.damaged-*"))
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_text().count("\n") == len(lines)
    rows = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(5)) and RunStore(cut).read_status()["state"] == "done"
    assert main(args) == 0 and "cells to look at" not in capsys.readouterr().out


def test_collapsed_and_failed_cells_are_named_with_what_to_do(capsys):
    from types import SimpleNamespace

    from sweeps.cli import _print_attention

    rows = [{"state": "collapsed", "collapse_step": 7, "setting": "s", "label": "grpo", "seed": 0, "run_dir": "r0"},
            {"state": "failed", "reason": "RuntimeError: boom", "setting": "s", "label": "cppo", "seed": 1,
             "run_dir": "r1"},
            {"state": "done", "setting": "s", "label": "dppo", "seed": 0, "run_dir": "r2"}]
    assert _print_attention(rows, SimpleNamespace(name="x")) == 1
    out = capsys.readouterr().out
    assert "collapsed at step 7: s/grpo/s0 (r0)" in out and "failed: s/cppo/s1 (r1): RuntimeError: boom" in out
    assert "dppo" not in out


def test_a_tuning_sweep_takes_no_command_line_axis(tmp_path, capsys):
    assert main(["sweep", "tune_drift", "rl.lr=1e-4,2e-4", "--status", "--results", str(tmp_path)]) == 2
    assert "a tuning sweep's configurations are its spec's variants" in capsys.readouterr().err
