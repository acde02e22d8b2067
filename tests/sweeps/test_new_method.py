"""Adding a method takes exactly the documented steps (docs/methods.md, "Adding a method"): its
params (if new), its mask or weight rule, one registry entry, a closed-form test — and then it trains
through ``trh sweep`` with no config file, no list to extend, nothing else."""

import math
from dataclasses import dataclass

import pytest
import torch

from methods import get_method, method_names
from methods import registry
from methods.masks import MaskResult
from methods.params import MethodConfigError, TruncatedParams, _doc
from methods.registry import MethodSpec, register
from methods.weights import truncated_ratio
from sweeps.cli import main
from tests.methods.helpers import token_batch


# 1. params (new here): a frozen dataclass whose _check names the field
@dataclass(frozen=True)
class RatioBandParams(TruncatedParams):
    band: float = _doc("keep an away-from-μ token while |ρ − 1| ≤ band", 0.1)

    def _check(self):
        super()._check()
        if not self.band > 0:
            raise MethodConfigError(f"band must be > 0, got {self.band!r}")


# 2. the mask rule
def ratio_band_mask(ctx, params) -> MaskResult:
    """Keep a token if its update moves π toward μ or its ratio stays within 1 ± band."""
    keep = ctx.toward_mu | ((ctx.ratio - 1.0).abs() <= params.band)
    return MaskResult(mask=(keep & ctx.valid).float())


@pytest.fixture
def ratio_band():
    # 3. one registry entry
    register(MethodSpec("ratio_band", "test method: symmetric ratio band", RatioBandParams, ratio_band_mask,
                        truncated_ratio, {}, "this test"))
    yield
    registry._REGISTRY.pop("ratio_band")


def test_closed_form(ratio_band):
    # 4. a closed-form test: μ = 0.5 everywhere; A = +1, ρ = 0.5, 1.05, 1.5 → toward μ, in band, masked
    log = math.log
    batch = token_batch([[log(0.25), log(0.525), log(0.75)]], [[log(0.5)] * 3], [1.0])
    out = get_method("ratio_band", aggregation="token-mean")(batch)
    assert out.mask.tolist() == [[1.0, 1.0, 0.0]]
    out.loss.backward()
    torch.testing.assert_close(batch.logp.grad, torch.tensor([[-0.5 / 3, -1.05 / 3, 0.0]]))


def test_a_new_method_trains_through_trh_sweep(ratio_band, tmp_path, capsys):
    assert "ratio_band" in method_names()
    spec = tmp_path / "new_method.yaml"  # a sweep lists it like any other method
    spec.write_text("name: new_method\nsettings: [smoke]\nmethods: [grpo, ratio_band]\nseeds: [0]\n")
    code = main(["sweep", str(spec), "method=ratio_band", "--executor", "debug", "--results", str(tmp_path),
                 "--no-progress"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    assert "smoke ratio_band" in out
    import pandas as pd
    from harness.store import summary_path, sweep_dir
    rows = pd.read_csv(summary_path(sweep_dir(tmp_path, "new_method")))
    assert rows["method"].tolist() == ["ratio_band"] and rows["verdict"].tolist() == ["done"]
    assert rows["best_headline"].iloc[0] > 0
    # its parameters are validated like every other method's, before anything starts
    code = main(["sweep", str(spec), "method=ratio_band", "method.band=-1", "--executor", "debug",
                 "--results", str(tmp_path / "bad"), "--no-progress"])
    assert code == 2 and "band must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
