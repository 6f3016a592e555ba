import pytest
import torch

# Tests use tiny tensors: one thread is as fast, and far faster when the cores are busy
# (OpenMP threads spin-wait under oversubscription).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep generated demo data out of the user's cache."""
    monkeypatch.setenv("SPARSEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
