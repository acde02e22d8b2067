"""Provenance: the code commit and a dirty flag that code edits set and results never do."""

import subprocess

from harness.provenance import code_state, environment


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_dirty_means_tracked_code_changed_not_results(tmp_path):
    repo = tmp_path / "repo"
    (repo / "harness").mkdir(parents=True)
    (repo / "results" / "runs").mkdir(parents=True)
    (repo / "harness" / "train.py").write_text("x = 1\n")
    (repo / "results" / "runs" / "metrics.jsonl").write_text("{}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    state = code_state(repo)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (repo / "results" / "runs" / "metrics.jsonl").write_text("{}\n{}\n")  # a tracked result changed
    (repo / "results" / "runs" / "new.jsonl").write_text("{}\n")          # and a new result folder
    assert code_state(repo)["dirty"] is False
    (repo / "harness" / "train.py").write_text("x = 2\n")
    assert code_state(repo)["dirty"] is True
    assert code_state(tmp_path)["commit"] is None  # not a checkout


def test_environment_names_the_packages_that_decide_numbers():
    env = environment()
    assert {"python", "torch", "transformers", "trl", "numpy", "cpu"} <= set(env) and env["cpu"]


def test_a_git_that_cannot_read_its_index_is_not_a_clean_tree(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "harness").mkdir(parents=True)
    (repo / "harness" / "train.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    (repo / "harness" / "train.py").write_text("x = 2\n")
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "damaged-index"))
    (tmp_path / "damaged-index").write_text("not an index")
    assert code_state(repo)["dirty"] is None
