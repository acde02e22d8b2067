"""The matched-window score of one cell on synthetic metrics."""

from analysis.cells import cell_row, verdict


def _rows(headlines, every=10):
    rows = []
    for i, h in enumerate(headlines):
        rows.append({"step": i * every, "headline": h, "val_a": h + 0.1, "val_b": h, "val_c": h - 0.1})
        if i + 1 < len(headlines):
            rows.append({"step": i * every + 5, "train_reward": 0.5})  # a non-eval row in between
    return rows


def test_best_within_window_ties_to_the_earlier_step():
    row = cell_row({"state": "done"}, _rows([0.2, 0.5, 0.5, 0.4, 0.9]), t_stop=30)
    assert (row["best_headline"], row["best_step"]) == (0.5, 10)  # step 40 (0.9) is outside [0, 30]
    assert (row["best_val_a"], row["best_val_b"], row["best_val_c"]) == (0.6, 0.5, 0.4)
    assert row["verdict"] == "done" and row["steps_run"] == 40


def test_collapsed_run_keeps_its_best_before_the_collapse():
    status = {"state": "collapsed", "collapse_step": 30}
    row = cell_row(status, _rows([0.3, 0.7, 0.2, 0.0]), t_stop=60)
    assert row["verdict"] == "collapse (step 30)" and row["collapse_step"] == 30
    assert (row["best_headline"], row["best_step"]) == (0.7, 10)


def test_missing_running_failed():
    assert cell_row(None, [], 60)["verdict"] == "missing"
    assert cell_row(None, [], 60)["best_headline"] is None
    assert verdict({"state": "running"}) == "running"
    failed = cell_row({"state": "failed", "reason": "boom"}, _rows([0.1]), 60)
    assert failed["verdict"] == "failed" and failed["reason"] == "boom" and failed["best_headline"] == 0.1
    nan = cell_row({"state": "done"}, [{"step": 0, "headline": float("nan")}, {"step": 10, "headline": 0.2}], 60)
    assert nan["best_step"] == 10


def test_held_out_score_is_the_one_recorded_for_the_validation_choice():
    rows = _rows([0.2, 0.5, 0.4])
    status = {"state": "done", "held_out": {"step": 10, "test_a": 0.3, "test_b": 0.4, "test_c": 0.5,
                                            "test_headline": 0.4}}
    row = cell_row(status, rows, t_stop=60)
    assert row["best_step"] == 10 and row["heldout_headline"] == 0.4 and row["heldout_test_c"] == 0.5
    assert row["step0_headline"] == 0.2
    stale = {"state": "done", "held_out": {**status["held_out"], "step": 20}}  # not the chosen step
    assert cell_row(stale, rows, 60)["heldout_headline"] is None
    assert cell_row({"state": "done"}, rows, 60)["heldout_headline"] is None  # an old-protocol run


def test_selection_never_reads_the_test_split():
    """Test scores that would pick another step, or garbage, leave the choice unchanged."""
    rows = _rows([0.2, 0.5, 0.4])
    for i, r in enumerate(rows):
        if "headline" in r:
            r.update(test_headline=[0.9, 0.1, 1.0][i // 2], test_a=float("nan"), test_b="garbage")
    assert cell_row({"state": "done"}, rows, 60)["best_step"] == 10
