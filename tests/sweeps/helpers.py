import json
import os
import subprocess
import sys
import time
from pathlib import Path

TIMING_KEYS = ("time_rollout", "time_update", "time_eval")


def trh(*args, cwd=None, **popen):
    """``trh ARGS`` as a child process (a real driver, killable)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sweeps.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def wait_for(predicate, timeout=300, what="condition", proc=None):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver exited ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def statuses(root: Path) -> dict:
    out = {}
    for path in sorted((Path(root) / "runs").glob("*/status.json")):
        try:
            out[path.parent.name] = json.loads(path.read_text())
        except (json.JSONDecodeError, FileNotFoundError):
            pass
    return out


def metrics(run_dir: Path, name="metrics.jsonl") -> list[dict]:
    rows = [json.loads(line) for line in (Path(run_dir) / name).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def assert_each_step_once(run_dir: Path, steps: int):
    assert [r["step"] for r in metrics(run_dir)] == list(range(steps + 1))
