"""docs/tasks.md, followed as a user would: its files, written as the page gives them, make a new task
that `trh tasks` lists and `trh sweep` trains on both engines (engine=trl with the tiny model), and
`trh report` reports with the task's own splits. Nothing in the harness is edited."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tasks.md"


def page_files() -> dict[str, str]:
    """The page's code blocks that carry a file name (```lang title="NAME"```)."""
    blocks = re.findall(r'```\w+ title="([^"]+)"\n(.*?)```', DOCS.read_text(), flags=re.S)
    return {name: body for name, body in blocks}


def _trh(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.xdist_group("trl")
def test_a_task_added_by_the_documented_steps_trains_on_both_engines(tmp_path):
    files = page_files()
    assert {"my_tasks.py", "my_rewards.py", "conf/setting/copy_local.yaml", "conf/setting/copy_trl.yaml",
            "copy.yaml"} <= set(files)
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TRH_TASKS": "my_tasks", "TRH_CONFIG_PATH": str(tmp_path / "conf")}

    listed = _trh(["tasks"], tmp_path, env)
    assert listed.returncode == 0 and re.search(r"^copy +engines: local, trl", listed.stdout, re.M), listed.stdout
    assert "task.digits = 3" in listed.stdout

    done = _trh(["sweep", "copy.yaml", "--results", "results", "--no-progress"], tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 cells (4 run now" in done.stdout
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/status.json")]
    assert sorted((s["state"], s.get("engine", "local")) for s in statuses) == [
        ("done", "local"), ("done", "local"), ("done", "trl"), ("done", "trl")]
    assert all(s["splits"] == {"validation": ["val_a", "val_b", "val_c"], "test": ["test_a", "test_b", "test_c"]}
               for s in statuses)

    report = _trh(["report", "results", "--figures", ""], tmp_path, env)
    assert report.returncode == 0, report.stdout + report.stderr
    table4 = (tmp_path / "results" / "report" / "table4.csv").read_text()
    assert "val_a" in table4.splitlines()[0]


def test_without_the_module_the_task_is_an_error_naming_the_known_ones(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRH_TASKS"}
    out = _trh(["train", "setting=smoke", "task=copy"], tmp_path, env)
    assert out.returncode == 2 and "task=copy: no such task; known: addition, chain, math" in out.stderr
    env = {**env, "TRH_TASKS": "no_such_module_here"}
    out = _trh(["train", "setting=smoke"], tmp_path, env)
    assert out.returncode == 2 and "TRH_TASKS names 'no_such_module_here', which cannot be imported" in out.stderr


def test_a_user_reward_replaces_the_tasks_own(tmp_path, monkeypatch):
    """task.reward=package.module:function is what scores every response (here on the addition task)."""
    (tmp_path / "my_rewards.py").write_text(page_files()["my_rewards.py"])
    monkeypatch.syspath_prepend(str(tmp_path))
    from harness.tasks import make_task
    from harness.tasks.addition import AdditionConfig

    task = make_task(AdditionConfig(digits=2, reward="my_rewards:exact"))
    problem = task.problems("train", 1, seed=0)[0]
    assert task.reward(problem, f"anything\n{problem.answer}") == 1.0   # the user's rule: last line
    assert task.reward(problem, f"0+0+0=00;>{problem.answer}") == 0.0  # the built-in rule would say 1
    assert task.reward(problem, problem.answer, finished=False) == 0.0
