"""The device check's orchestration (scripts/device_check.py): a step that hangs is killed at its limit, one
that crashes is a failed check, the summaries are written either way and the exit status says so. The steps
themselves run in CI through `bash scripts/device_check.sh --cpu OUT` (.ci/run)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import device_check  # noqa: E402


def _scripted(monkeypatch, programs: dict):
    """Each step's child runs the given Python program instead (``OUT`` in it is the output folder)."""
    def command(step, gpu, out):
        return [sys.executable, "-c", programs[step.name].replace("OUT", str(out))]
    monkeypatch.setattr(device_check, "child_command", command)


def test_a_hang_and_a_crash_are_failed_checks_and_the_summary_is_written(tmp_path, monkeypatch):
    steps = [device_check.Step("environment", 30, 30, "fine"), device_check.Step("tests", 2, 2, "hangs"),
             device_check.Step("fused_loss", 30, 30, "crashes")]
    result = {"checks": [{"name": "imports", "ok": True, "detail": "x"}], "measured": {"versions": {"torch": "2"}}}
    _scripted(monkeypatch, {
        "environment": f"import json, pathlib; pathlib.Path('OUT/steps/environment.json').write_text({json.dumps(result)!r})",
        "tests": "import time\nprint('started', flush=True)\ntime.sleep(60)",
        "fused_loss": "raise SystemExit(3)"})
    summary = device_check.run_all(steps, gpu=False, out=tmp_path)
    assert not summary["ok"]
    assert summary["steps"]["environment"]["checks"][0]["ok"]
    assert "killed at its time limit of 2 s" in summary["steps"]["tests"]["checks"][0]["detail"]
    assert summary["steps"]["tests"]["seconds"] < 20
    assert "exited with 3" in summary["steps"]["fused_loss"]["checks"][0]["detail"]
    assert (tmp_path / "logs" / "tests.log").read_text() == "started\n"
    md = (tmp_path / "summary.md").read_text()
    assert "**FAILED**" in md and "killed at its time limit" in md
    assert json.loads((tmp_path / "summary.json").read_text())["ok"] is False


def test_all_passing_exits_zero(tmp_path, monkeypatch):
    ok = {"checks": [{"name": "fine", "ok": True, "detail": ""}], "measured": {"rows": [{"a": 1, "b": None}]}}
    _scripted(monkeypatch, {name: f"import json, pathlib; pathlib.Path('OUT/steps/{name}.json').write_text({json.dumps(ok)!r})"
                            for name in ("fused_loss", "local_engine")})
    assert device_check.main(["--cpu", "--out", str(tmp_path), "--only", "fused_loss", "local_engine"]) == 0
    assert "| a | b |" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("args,message", [([], "usage: bash scripts/device_check.sh"),
                                          (["--gpu", "x"], "unknown option --gpu")])
def test_the_wrapper_refuses_bad_arguments_in_one_line(args, message):
    result = subprocess.run(["bash", "scripts/device_check.sh", *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
