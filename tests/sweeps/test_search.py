"""trh search: Optuna over the same executors; a killed search resumes without re-running trials."""

import signal

import optuna
from optuna.trial import TrialState

from harness.store import RunStore

from sweeps.search import open_storage, search

from .helpers import finish, statuses, trh, wait_for


def _study(root):
    storage = open_storage(None, root / "searches" / "search_smoke" / "journal.log")
    return optuna.load_study(study_name="search_smoke", storage=storage)


def test_search_reports_prunes_and_writes_results(tmp_path):
    result = search("search_smoke", 3, executor="debug", results_root=tmp_path,
                    progress=False, log=lambda *_: None)
    trials = _study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        # intermediate values = best headline so far at each eval step (non-decreasing), final = value
        steps = sorted(t.intermediate_values)
        assert steps == [0, 2, 4, 6, 8]
        values = [t.intermediate_values[s] for s in steps]
        assert values == sorted(values) and values[-1] == t.value
        (run_dir,) = t.user_attrs["cells"]
        assert t.value == statuses(tmp_path)[run_dir.rsplit("/", 1)[1]]["best_headline"]
    best = result["summary"]["best"]
    assert best["value"] == max(t.value for t in trials)
    # on smoke_bind the trust region binds: different parameters, different training (their best scores
    # may tie: on some CPUs every trial peaks at the shared warm start)
    curves = {tuple(r.get("headline") for r in RunStore(tmp_path / "runs" / t.user_attrs["cells"][0].rsplit("/", 1)[1])
                    .read_metrics() if "headline" in r) for t in trials}
    assert len(curves) == 3, curves
    csv = (tmp_path / "searches" / "search_smoke" / "trials.csv").read_text().splitlines()
    assert len(csv) == 4 and "params_method.delta_b" in csv[0]
    # params land in the cells' configs, and each cell names its trial
    for t in trials:
        name = t.user_attrs["cells"][0].rsplit("/", 1)[1]
        config = (tmp_path / "runs" / name / "config.yaml").read_text()
        assert f"delta_b: {t.params['method.delta_b']}" in config
        assert RunStore(tmp_path / "runs" / name).search_trials() == [{"search": "search_smoke", "trial": t.number}]
    # trh report: the search's trials, history, importances, contour and slice; its cells apart, by configuration
    from analysis.report import build_report

    report = build_report(tmp_path, tmp_path / "report")
    for kind in ("history", "importance", "contour", "slice"):
        assert (tmp_path / "report" / f"search_search_smoke_{kind}.png").stat().st_size > 10_000, kind
    section = (tmp_path / "report" / "search_search_smoke.md").read_text()
    assert f"Best: trial {best['number']}" in section and "optimistic" in section
    assert "## Searches" in report["index"] and report["cells"]["label"].nunique() == 3
    assert "search_smoke#" in (tmp_path / "report" / "provenance.md").read_text()


def test_killed_search_resumes_with_finished_trials_intact(tmp_path):
    driver = trh("search", "search_smoke", "--trials", "4", "--results", tmp_path, "--no-progress")

    def one_complete():
        try:
            return sum(t.state == TrialState.COMPLETE for t in _study(tmp_path).trials) >= 1
        except KeyError:  # the study is not created yet
            return False

    wait_for(one_complete, what="a completed trial", proc=driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {t.number: (t.params, t.value) for t in _study(tmp_path).trials if t.state == TrialState.COMPLETE}
    cells_before = {n: (tmp_path / "runs" / n / "status.json").read_text()
                    for n, s in statuses(tmp_path).items() if s["state"] == "done"}
    out = finish(trh("search", "search_smoke", "--trials", "4", "--results", tmp_path, "--no-progress"))
    trials = _study(tmp_path).trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), out
    for number, (params, value) in before.items():  # finished trials untouched
        assert (trials[number].params, trials[number].value) == (params, value)
    for name, text in cells_before.items():  # and their cells not re-run
        assert (tmp_path / "runs" / name / "status.json").read_text() == text
    assert len({t.user_attrs["cells"][0] for t in trials}) == 4
    invocations = (tmp_path / "searches" / "search_smoke" / "invocations.jsonl").read_text().splitlines()
    assert len(invocations) == 2 and '"git": {"commit"' in invocations[0]


def test_pruned_trials_are_cancelled_while_running(tmp_path):
    """A pruner that prunes every report: each trial is pruned at its first eval and its job cancelled."""
    spec = tmp_path / "prune_all.yaml"  # 400 steps: the cancel comes long before the end, even on a loaded machine
    spec.write_text("name: prune_all\nkind: search\nsetting: smoke\nmethod: cppo\nseeds: [0]\n"
                    "overrides: [setting.steps=400, setting.t_stop=400]\n"
                    "space: {method.w_min: {low: 0.5, high: 1.0}}\n"
                    "sampler: {name: random, seed: 0}\npruner: {name: threshold, lower: 2.0}\n")
    result = search(str(spec), 2, executor="local", workers=1, results_root=tmp_path, progress=False,
                    log=lambda *_: None)
    assert result["summary"]["trials"] == {"pruned": 2}
    storage = open_storage(None, tmp_path / "searches" / "prune_all" / "journal.log")
    for t in optuna.load_study(study_name="prune_all", storage=storage).trials:
        assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [0]
        status = statuses(tmp_path)[t.user_attrs["cells"][0].rsplit("/", 1)[1]]
        assert status["state"] == "running" and status["step"] < 400  # stopped early, resumable
