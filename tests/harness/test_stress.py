"""The stress setting, shortened to 30 steps: the trust-region rule decides who survives.

Same warm-up and seed for every method (one thread, as the numbers in setting/stress.yaml were
measured). The control without a trust region (pg_is) collapses; GRPO's clip and DPPO's divergence
mask keep the policy alive through the same window.
"""

import pytest

from harness import train as train_mod
from harness.config import compose

SHORT = ["setting=stress", "setting.steps=30", "setting.t_stop=30", "logging=quiet", "engine.threads=1"]


@pytest.mark.xdist_group("stress")  # one worker: the three runs share one base_s warm-up
@pytest.mark.parametrize("method, survives", [("pg_is", False), ("grpo", True), ("dppo", True)])
def test_stress_collapses_only_without_a_trust_region(tmp_path, method, survives):
    status = train_mod.run(compose(SHORT + [f"method={method}", f"run_dir={tmp_path / method}"]))
    if survives:
        assert status["state"] == "done", status
    else:
        assert status["state"] == "collapsed", status
        assert status["collapse_step"] <= 30
