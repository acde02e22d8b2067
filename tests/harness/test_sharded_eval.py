"""engine=trl's evaluation shared by the ranks: two gloo processes on CPU each sample their chunks of
every split; the union of what they sampled is each split once (no duplicate), and the gathered row
equals one process's."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

EV = SimpleNamespace(samples=2, batch_size=3, temperature=1.0, top_p=1.0)


def _evaluate(out_path=None):
    import harness.engines.trl as trl_engine
    from harness.lm import load_lm
    from harness.tasks import make_task
    from harness.tasks.math import MathConfig, load_problems
    from tests.harness.trl_helpers import TINY

    model, tok = load_lm(TINY, seed=0)
    task = make_task(MathConfig())
    problems = load_problems("fixture:fixture_dapo_math")
    sizes = (5, 4, 3)  # 10, 8 and 6 rows: 4, 3 and 2 chunks of 3, so the ranks get unequal shares
    starts = (0, 5, 9)
    splits = {name: problems[a:a + n] for name, a, n in zip(task.validation_splits, starts, sizes)}
    sampled, real_sample = [], trl_engine.sample

    def recording_sample(model, ids, *args, **kwargs):
        sampled.append([tok.decode(row[row != tok.pad_token_id].tolist()) for row in ids])
        return real_sample(model, ids, *args, **kwargs)

    trl_engine.sample = recording_sample
    try:
        row = trl_engine.evaluate(model, tok, task, splits, EV, max_new=8, seed=3)
    finally:
        trl_engine.sample = real_sample
    if out_path:
        with open(out_path, "w") as f:
            json.dump({"row": row, "sampled": sampled}, f)
    return row, sampled


def _rank(rank, world, folder):
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                                         world_size=world)
    try:
        _evaluate(f"{folder}/rank{rank}.json")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.xdist_group("gloo")
def test_two_ranks_sample_each_problem_once_and_gather_the_same_row(tmp_path):
    """Two ranks as a launcher starts them: separate processes (the math verifier's own worker pool
    needs non-daemonic ones), meeting over gloo."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-m", "tests.harness.test_sharded_eval", str(r), "2", str(tmp_path)],
                              cwd=root, env=env) for r in range(2)]
    assert [p.wait(timeout=300) for p in ranks] == [0, 0]
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    alone, sampled_alone = _evaluate()
    assert out[0]["row"] == out[1]["row"] == alone
    assert all(r["sampled"] for r in out)  # both ranks took part
    chunks = [tuple(c) for r in out for c in r["sampled"]]
    assert sorted(chunks) == sorted(tuple(c) for c in sampled_alone)  # the union: each chunk once, none twice
    assert len(chunks) == len(sampled_alone)


if __name__ == "__main__":
    _rank(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
