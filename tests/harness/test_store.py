"""The results store: matched-window selection on synthetic metrics, atomic and kill-tolerant files."""

import json

import pytest

from harness.store import RunStore, best_within_window, config_hash

ROWS = [
    {"step": 0, "headline": 0.30},
    {"step": 5, "train_reward": 0.4},            # not an eval row
    {"step": 10, "headline": 0.50},
    {"step": 20, "headline": 0.50},              # tie: the earlier step wins
    {"step": 30, "headline": float("nan")},      # NaN is never best
    {"step": 40, "headline": 0.70},              # outside a window of 35
]


def test_best_within_window():
    assert best_within_window(ROWS, t_stop=35)["step"] == 10
    assert best_within_window(ROWS, t_stop=40)["step"] == 40
    assert best_within_window(ROWS, t_stop=0)["step"] == 0
    assert best_within_window(ROWS[1:2], t_stop=100) is None
    assert best_within_window([], t_stop=10) is None


def test_metrics_survive_a_cut_line_and_truncate_to_a_checkpoint(tmp_path):
    store = RunStore(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    for row in ({"step": 1, "a": 1}, {"step": 2, "a": 2}, {"step": 3, "a": 3}):
        store.append_metrics(row)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "a"')                # a kill in the middle of a write
    assert [r["step"] for r in store.read_metrics()] == [1, 2, 3]
    store.truncate_records(2)
    assert [r["step"] for r in store.read_metrics()] == [1, 2]


def test_status_is_written_atomically_and_finished_means_done_or_collapsed(tmp_path):
    store = RunStore(tmp_path / "run")
    assert store.read_status() is None and not store.is_finished()
    store.write_status(state="running", step=3)
    assert not store.is_finished()
    store.write_status(state="collapsed", step=7)
    assert store.is_finished()
    assert not list(store.dir.glob("*.tmp"))
    assert json.loads((store.dir / "status.json").read_text())["step"] == 7


def test_config_hash_is_order_independent_and_value_sensitive():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_checkpoint_round_trip(tmp_path):
    store = RunStore(tmp_path)
    assert store.load_checkpoint() is None
    store.save_checkpoint({"step": 4, "x": [1, 2]})
    assert store.load_checkpoint() == {"step": 4, "x": [1, 2]}
    store.remove_checkpoint()
    assert store.load_checkpoint() is None


@pytest.mark.parametrize("junk", [b"", b"garbage"])
def test_corrupted_checkpoint_message(tmp_path, junk):
    store = RunStore(tmp_path)
    store.checkpoint_path.write_bytes(junk)
    with pytest.raises(RuntimeError, match="corrupted"):
        store.load_checkpoint()
