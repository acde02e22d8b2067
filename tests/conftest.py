import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """One warm-up cache per test session (shared by xdist workers), outside the user's home."""
    root = tmp_path_factory.getbasetemp()
    if root.name.startswith("popen-gw"):  # an xdist worker: share the session's parent folder
        root = root.parent
    monkeypatch.setenv("TRH_CACHE", str(root / "trh-cache"))
