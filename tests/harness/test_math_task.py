"""Math data in both schemas of the paper's data sets, and the math-verify reward in processes."""

import json
import os

import pytest

from harness.tasks import make_task
from harness.tasks.math import MathConfig, MathVerifier, TaskDataError, load_problems


def test_fixtures_read_in_both_schemas():
    train = load_problems("fixture:fixture_dapo_math")   # DAPO-Math-17k: chat prompt, reward_model.ground_truth
    val = load_problems("fixture:fixture_aime24")        # AIME: problem, answer
    assert len(train) == 32 and len(val) == 6
    assert train[0].prompt == "What is $22 + 6$?" and train[0].answer == "28"
    task = make_task(MathConfig())
    message = task.messages(train[0])[0]
    assert message["role"] == "user" and "\\boxed{}" in message["content"] and train[0].prompt in message["content"]


def test_local_jsonl_and_errors(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": 2}) + "\n")
    assert load_problems(str(path))[0].answer == "2"
    with pytest.raises(TaskDataError, match="task.train: no JSONL file"):
        load_problems(str(tmp_path / "missing.jsonl"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "no answer"}) + "\n")
    with pytest.raises(TaskDataError, match="row 0 has no problem text .* or no answer"):
        load_problems(str(tmp_path / "bad.jsonl"), "task.val.aime24")


def test_hub_names_are_refused_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskDataError, match="hub is offline"):
        load_problems("BytedTsinghua-SIA/DAPO-Math-17k")


def test_math_verify_reward_in_worker_processes():
    completions = ["Adding, we get \\boxed{28}.", "The answer is \\boxed{27}.", "so \\boxed{0.5}",
                   "\\boxed{\\frac{2}{4}}", "no answer here", "\\boxed{594}"]
    answers = ["28", "28", "\\frac{1}{2}", "\\frac{1}{2}", "3", "594"]
    with MathVerifier(workers=2) as verify:
        assert verify(completions, answers) == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
        pids = set(verify._executor().map(_pid, range(4)))
    assert os.getpid() not in pids  # it ran in worker processes, not in this one


def _pid(_):
    return os.getpid()
