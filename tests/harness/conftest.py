import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """One warm-up cache per test session, outside the user's home."""
    monkeypatch.setenv("TRH_CACHE", str(tmp_path_factory.getbasetemp() / "trh-cache"))
