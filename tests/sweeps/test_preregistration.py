"""Pre-registered sweeps: a changed tree or spec is refused at launch and at each cell, an edit after
launch is found at report time, and the report puts the declared test first."""

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import stats as S
from analysis.preregistered import audit, declared_test, spec_blob
from analysis.report import build_report
from sweeps import preregistration as P
from sweeps.errors import SweepError
from sweeps.spec import load_raw, parse
from tests.analysis.test_report import _seeded_root

BLOCK = {"hypotheses": "cppo differs from dppo and grpo", "score": "validation", "reference": "cppo",
         "family": ["dppo", "grpo"], "stopping": "all seeds"}


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "sweeps" / "specs").mkdir(parents=True)
    (repo / "harness").mkdir()
    (repo / "harness" / "train.py").write_text("x = 1\n")
    spec = {"name": "confirm", "settings": ["smoke"], "seeds": [0, 1], "methods": ["cppo", "dppo", "grpo"],
            "preregistration": BLOCK}
    (repo / "sweeps" / "specs" / "confirm.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "declare")
    return repo


def test_the_block_is_checked_against_the_spec(repo):
    raw, path = load_raw(str(repo / "sweeps" / "specs" / "confirm.yaml"))
    assert parse(raw, path).preregistration == BLOCK
    for change, message in [({"score": "test"}, "preregistration.score must be one of"),
                            ({"family": ["cppo_soft"]}, "'cppo_soft', not a label of the spec"),
                            ({"family": ["cppo", "dppo"]}, "must not hold the reference"),
                            ({"stopping": ""}, "preregistration.stopping must be a non-empty text")]:
        with pytest.raises(SweepError, match=message):
            parse({**raw, "preregistration": {**BLOCK, **change}}, path)
    with pytest.raises(SweepError, match="missing \\['stopping'\\]"):
        parse({**raw, "preregistration": {k: v for k, v in BLOCK.items() if k != "stopping"}}, path)


def test_launch_refuses_a_changed_tree_or_spec_and_keeps_the_first_record(repo):
    spec = repo / "sweeps" / "specs" / "confirm.yaml"
    record = P.launch_record(spec, None, repo=repo)
    assert record["commit"] == _git(repo, "rev-parse", "HEAD") and record["spec_blob"] == spec_blob(spec, repo)
    assert P.launch_record(spec, record, repo=repo) is record  # a rerun keeps the first launch's record
    (repo / "harness" / "train.py").write_text("x = 2\n")  # code changed
    with pytest.raises(SweepError, match="tracked files outside results/ differ"):
        P.launch_record(spec, None, repo=repo)
    assert "did not start" in P.cell_refusal(repo)
    _git(repo, "checkout", "--", "harness/train.py")
    assert P.cell_refusal(repo) is None
    spec.write_text(spec.read_text() + "# edited\n")  # the spec itself changed, not committed
    with pytest.raises(SweepError, match="differs from the last commit"):
        P.launch_record(spec, None, repo=repo)
    _git(repo, "commit", "-qam", "edit the spec after launching")  # committed, but after the launch
    with pytest.raises(SweepError, match="changed since its launch"):
        P.launch_record(spec, record, repo=repo)
    untracked = repo / "sweeps" / "specs" / "new.yaml"
    untracked.write_text("name: new\n")
    with pytest.raises(SweepError, match="commit the spec first"):
        P.launch_record(untracked, None, repo=repo)


def test_audit_finds_an_edited_spec_a_dirty_cell_a_stray_commit_and_an_early_start(repo):
    spec = repo / "sweeps" / "specs" / "confirm.yaml"
    record = P.launch_record(spec, None, repo=repo)
    clean = {"provenance": {"commit": record["commit"], "dirty": False}, "started_at": "9999-01-01T00:00:00+00:00"}
    assert audit(record, [clean, clean], repo=repo) == []
    (repo / "harness" / "train.py").write_text("x = 3\n")
    _git(repo, "commit", "-qam", "later code")
    later = {**clean, "provenance": {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False}}
    assert audit(record, [clean, later], repo=repo) == []  # a descendant commit is fine
    problems = audit(record, [clean, {**clean, "provenance": {"commit": record["commit"], "dirty": True}},
                              {**clean, "provenance": {"commit": "0" * 40, "dirty": False}},
                              {**clean, "started_at": "2000-01-01T00:00:00+00:00"}], repo=repo)
    assert any("1 of 4 finished cells ran with uncommitted changes" in p for p in problems)
    assert any("unrelated to the registered" in p for p in problems)
    assert any("1 cells started before the registration" in p for p in problems)
    first = _git(repo, "rev-list", "--max-parents=0", "HEAD")
    assert P.launch_record(spec, None, repo=repo)["commit"] != first
    later_record = P.launch_record(spec, None, repo=repo)  # registered at the later commit: the first's cells are reused
    assert any("1 cells were trained before the registration" in p for p in audit(later_record, [clean], repo=repo))
    spec.write_text(spec.read_text().replace("all seeds", "until it looks good"))
    assert any("was edited after the launch" in p for p in audit(record, [clean], repo=repo))


def test_a_cell_of_a_registered_sweep_refuses_a_changed_tree(monkeypatch, tmp_path):
    from sweeps.cell import CellJob
    monkeypatch.setattr(P, "code_state", lambda repo=None: {"commit": "a" * 40, "dirty": True})
    result = CellJob()({"run_dir": str(tmp_path / "never")}, "debug", require_clean=True)
    assert result["state"] == "failed" and "did not start" in result["reason"]
    assert not (tmp_path / "never").exists()


def test_trh_sweep_refuses_a_spec_outside_the_repository_in_one_line(repo, capsys):
    from sweeps.cli import main
    assert main(["sweep", str(repo / "sweeps" / "specs" / "confirm.yaml"), "--results", str(repo / "res")]) == 2
    err = capsys.readouterr().err.strip()
    assert "must be a file of this repository" in err and len(err.splitlines()) == 1
    plain = repo / "plain.yaml"
    plain.write_text(yaml.safe_dump({"name": "plain", "settings": ["smoke"], "seeds": [0], "methods": ["cppo"]}))
    assert main(["sweep", str(plain), "--preregistered", "--results", str(repo / "res")]) == 2
    assert "declares no test" in capsys.readouterr().err


def test_report_puts_the_declared_test_first_and_flags_a_later_edit(repo, tmp_path):
    root = _seeded_root(tmp_path / "results", {"cppo": 0.04, "dppo": 0.0, "grpo": 0.0, "cppo_soft": 0.1})
    manifest_path = root / "sweeps" / "paper_main" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    spec = repo / "sweeps" / "specs" / "confirm.yaml"
    record = P.launch_record(spec, None, repo=repo)
    for cell in manifest["cells"]:  # trained from the registered commit, after the registration
        status_path = root / cell["run_dir"] / "status.json"
        status = json.loads(status_path.read_text())
        status.update(provenance={"commit": record["commit"], "dirty": False}, started_at="9999-01-01T00:00:00+00:00")
        status_path.write_text(json.dumps(status))
    manifest.update(spec={"preregistration": BLOCK}, preregistration=record)
    manifest_path.write_text(json.dumps(manifest))
    import analysis.preregistered as AP
    original = AP.audit
    AP.audit = lambda rec, statuses: original(rec, statuses, repo=repo)
    try:
        index = build_report(root, out=tmp_path / "report", figure_formats=())["index"]
        first = index.split("## Cells")[0]
        assert "paper_main: the declared test" in first and "Audit: no problem found" in first
        assert "cppo − each of dppo, grpo" in first and "Holm over these 2 comparisons" in first
        assert "cppo_soft" not in first  # not in the declared family
        assert "Everything below this section is exploratory" in first
        assert "the declared test is not complete" not in first
        spec.write_text(spec.read_text() + "# moved the goalposts\n")
        index = build_report(root, out=tmp_path / "report2", figure_formats=())["index"]
        assert "was edited after the launch" in index.split("## Cells")[0]
    finally:
        AP.audit = original
    csv = (tmp_path / "report" / "preregistered_paper_main.csv").read_text()
    assert csv.count("\n") == 3  # header + the two declared comparisons


def test_a_rerun_must_be_the_registered_sweep(repo, monkeypatch):
    import sweeps.driver as D
    from sweeps.driver import prepare, registered

    spec, cells, _, _ = prepare(str(repo / "sweeps" / "specs" / "confirm.yaml"), [], repo / "res")
    monkeypatch.setattr(D, "launch_record", lambda path, previous: previous or {"commit": "c", "spec_blob": "b"})
    first = registered(spec, cells, [], None)
    assert first["cells"] == sorted(c.id for c in cells)
    assert registered(spec, cells, ["slurm.partition=gpu", "local.cpus_per_task=1"], first) == first
    for overrides in (["seed=5"], ["rl.lr=1e-3"]):
        with pytest.raises(SweepError, match="run it as declared"):
            registered(spec, cells, overrides, first)
    with pytest.raises(SweepError, match="its cells changed since the launch"):
        registered(spec, cells[:-1], [], first)
    spec.preregistration = None
    with pytest.raises(SweepError, match="lost its 'preregistration' block"):
        registered(spec, cells, [], first)


def test_a_family_member_without_scores_at_one_setting_counts_there_at_p_1():
    rows = [{"label": label, "setting": setting, "seed": seed, "state": "done", "best_headline": 0.5 + 0.01 * seed + shift,
             "best_step": 10} for setting in ("a", "b") for label, shift in (("cppo", 0.1), ("dppo", 0.0), ("grpo", 0.0))
            for seed in range(8) if not (setting == "b" and label == "grpo")]
    frame = declared_test(pd.DataFrame(rows), {"reference": "cppo", "family": ["dppo", "grpo"], "score": "validation"})
    assert sorted(zip(frame["setting"], frame["other"])) == [("a", "dppo"), ("a", "grpo"), ("b", "dppo"), ("b", "grpo")]
    missing = frame[(frame["setting"] == "b") & (frame["other"] == "grpo")].iloc[0]
    assert missing["p"] == 1.0 and missing["verdict"] == "not computed"
    assert np.allclose(frame["p_holm"], S.holm(frame["p"]))  # Holm over all four


def test_a_family_member_without_scores_counts_at_p_1():
    rows = [{"label": label, "setting": "s", "seed": seed, "state": "done", "best_headline": h, "best_step": 10}
            for label, shift in (("cppo", 0.1), ("dppo", 0.0)) for seed, h in enumerate([0.5, 0.6, 0.55, 0.7, 0.65,
                                                                                         0.58, 0.62, 0.61])
            for h in [h + shift]]
    frame = declared_test(pd.DataFrame(rows), {"reference": "cppo", "family": ["dppo", "grpo"], "score": "validation"})
    assert list(frame["other"]) == ["dppo", "grpo"]
    grpo = frame[frame["other"] == "grpo"].iloc[0]
    assert grpo["p"] == 1.0 and grpo["verdict"] == "not computed"
    dppo = frame[frame["other"] == "dppo"].iloc[0]
    assert dppo["p_holm"] == pytest.approx(min(1.0, 2 * dppo["p"]))  # Holm over both, not over the one computed


TREND = {"other": "dppo", "horizon": {"smoke": 14, "smoke_bind": 56}, "model": "seed_slopes"}


def test_several_settings_need_a_declared_trend_over_them(repo):
    raw, path = load_raw(str(repo / "sweeps" / "specs" / "confirm.yaml"))
    raw = {**raw, "settings": ["smoke", "smoke_bind"]}
    with pytest.raises(SweepError, match="declares one test over all of them: add preregistration.trend"):
        parse(raw, path)
    declared = parse({**raw, "preregistration": {**BLOCK, "trend": TREND}}, path).preregistration
    assert declared["trend"] == {**TREND, "horizon": {"smoke": 14.0, "smoke_bind": 56.0}}
    for change, message in [({"other": "cppo"}, "other than the reference 'cppo'"),
                            ({"other": "sapo"}, "trend.other must be a label"),
                            ({"model": "ols"}, "trend.model must be one of \\['seed_slopes'\\]"),
                            ({"horizon": {"smoke": 14}}, "map exactly the spec's settings"),
                            ({"model": ["seed_slopes"]}, "trend.model must be one of"),
                            ({"horizon": {"smoke": 14, "smoke_bind": -1}}, "finite positive numbers"),
                            ({"horizon": {"smoke": 14, "smoke_bind": float("inf")}}, "finite positive numbers"),
                            ({"horizon": {"smoke": 14, "smoke_bind": 14}}, "a different horizon for each setting")]:
        with pytest.raises(SweepError, match=message):
            parse({**raw, "preregistration": {**BLOCK, "trend": {**TREND, **change}}}, path)
    with pytest.raises(SweepError, match="exactly other, horizon, model"):
        parse({**raw, "preregistration": {**BLOCK, "trend": {"other": "dppo"}}}, path)
    # a command line that narrows the settings is checked against the spec's own (and refused at launch)
    narrowed = parse({**raw, "preregistration": {**BLOCK, "trend": TREND}}, path, {"setting": ["smoke"]})
    assert narrowed.settings == ["smoke"] and narrowed.preregistration["trend"]["horizon"]["smoke_bind"] == 56.0


def test_report_puts_the_declared_trend_first(repo, tmp_path):
    from tests.analysis.test_report import _write_cell
    root, rng = tmp_path / "results", np.random.default_rng(1)
    horizon = {"h1": 1, "h2": 2, "h4": 4, "h8": 8}
    cells = []
    for setting, x in horizon.items():
        for seed in range(8):  # cppo − dppo = 2 points per doubling, noise SD 0.5 points
            base = 0.6 + rng.normal(0, 0.05)
            for method, score in (("dppo", base), ("grpo", base),
                                  ("cppo", base + 0.02 * np.log2(x) + rng.normal(0, 0.005))):
                cells.append(_write_cell(root, setting, method, seed, [0.5, score]))
                bins = [0, x, 2 * x]  # two position bins; the drift on the last
                (root / cells[-1]["run_dir"] / "diagnostics.jsonl").write_text("".join(json.dumps(
                    {"step": step, "bin_start": bins[:2], "bin_end": bins[1:], "mean_dev": [1e-4, 1e-3],
                     "top10_dev": [1e-3, 1e-2], "mask_rate": [0.0, 0.05]}) + "\n" for step in (0, 10)))
    spec = repo / "sweeps" / "specs" / "confirm.yaml"
    record = P.launch_record(spec, None, repo=repo)
    for cell in cells:
        status_path = root / cell["run_dir"] / "status.json"
        status = json.loads(status_path.read_text())
        status.update(provenance={"commit": record["commit"], "dirty": False}, started_at="9999-01-01T00:00:00+00:00")
        status_path.write_text(json.dumps(status))
    block = {**BLOCK, "trend": {**TREND, "horizon": horizon}}
    (root / "sweeps" / "horizon").mkdir(parents=True)
    (root / "sweeps" / "horizon" / "manifest.json").write_text(json.dumps(
        {"sweep": "horizon", "cells": cells, "spec": {"preregistration": block}, "preregistration": record}))
    import analysis.preregistered as AP
    original = AP.audit
    AP.audit = lambda rec, statuses: original(rec, statuses, repo=repo)
    try:
        index = build_report(root, out=tmp_path / "report", figure_formats=("png",))["index"]
    finally:
        AP.audit = original
    first = index.split("## Cells")[0]
    for figure in ("preregistered_horizon_horizon.png", "horizon_position.png"):
        assert f"({figure})" in first and (tmp_path / "report" / figure).exists()
    primary, secondary = first.split("Secondary (declared) tests")
    assert "Primary test (seed_slopes): the slope of cppo − dppo" in primary
    assert "points per doubling of the horizon (8 seeds, t interval)" in primary
    assert "the difference grows with the horizon" in primary
    assert "Exploratory (not the declared test): without the shortest horizon (h1) the slope is" in primary
    assert "Holm over these 8 comparisons" in secondary  # 2 family members × 4 settings
    declared = pd.read_csv(tmp_path / "report" / "preregistered_horizon.csv")
    assert len(declared) == 8 and np.allclose(declared["p_holm"], S.holm(declared["p"]))
    trend = pd.read_csv(tmp_path / "report" / "preregistered_horizon_trend.csv").iloc[0]
    assert trend["slope_per_doubling"] == pytest.approx(0.02, abs=0.004) and trend["seeds"] == 8
    by_horizon = pd.read_csv(tmp_path / "report" / "preregistered_horizon_by_horizon.csv")
    assert list(by_horizon["horizon"]) == [1, 2, 4, 8] and by_horizon["diff"].is_monotonic_increasing
