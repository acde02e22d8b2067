"""trh import reads what verl's own file logger writes (verl.utils.tracking.FileLogger, the backend of
trainer.logger=['file']): skipped where verl is not installed; CI runs it in the verl environment."""

import pytest

pytest.importorskip("verl")
from verl.utils.tracking import FileLogger  # noqa: E402

from analysis.importer import read_log, run_rows  # noqa: E402


def test_a_verl_file_log_imports(tmp_path, monkeypatch):
    path = tmp_path / "cppo_s0.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger("project", "cppo_s0")
    for step in range(0, 21, 5):
        logger.log({"actor/pg_loss": 0.1 * step, "critic/score/mean": 0.3}, step=step)
        if step % 10 == 0:
            logger.log({"val-core/aime/acc/mean@16": 30.0 + step}, step=step)
    logger.finish()
    steps = read_log(path, "verl")
    assert sorted(steps) == [0, 5, 10, 15, 20] and steps[10]["val-core/aime/acc/mean@16"] == 40.0
    rows = run_rows(steps, {"validation": {"aime": "val-core/aime/acc/mean@16"}, "scale": 0.01}, path)
    assert [r["headline"] for r in rows if "headline" in r] == pytest.approx([0.30, 0.40, 0.50])
    assert rows[1]["actor/pg_loss"] == pytest.approx(0.5) and "headline" not in rows[1]
