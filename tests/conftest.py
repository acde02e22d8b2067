import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--trh-device", default="cpu",
                     help="the device the device-aware tests run on (cpu, cuda, cuda:1, ...): the fused-loss, "
                          "registry-on-device, bf16-numerics and KV-cache tests (scripts/device_check.sh)")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device of the device-aware tests (``--trh-device``; cpu by default). Their inputs are made on
    the CPU from seeded generators and moved there, so every device sees the same numbers."""
    value = request.config.getoption("--trh-device")
    try:
        chosen = torch.device(value)
    except RuntimeError:
        pytest.fail(f"--trh-device {value!r} is not a torch device (e.g. cpu, cuda, cuda:1)", pytrace=False)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"--trh-device {chosen}: CUDA is not available")
    return chosen


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """One warm-up cache per test session (shared by xdist workers), outside the user's home."""
    root = tmp_path_factory.getbasetemp()
    if root.name.startswith("popen-gw"):  # an xdist worker: share the session's parent folder
        root = root.parent
    monkeypatch.setenv("TRH_CACHE", str(root / "trh-cache"))
