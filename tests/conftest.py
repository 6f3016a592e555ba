import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep generated demo data out of the user's cache."""
    monkeypatch.setenv("SPARSEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
