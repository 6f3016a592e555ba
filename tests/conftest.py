import pytest
import torch

# Tests use tiny tensors: one thread is as fast, and far faster when the cores are busy
# (OpenMP threads spin-wait under oversubscription).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep generated demo data out of the user's cache; commands run in-process keep one thread."""
    monkeypatch.setenv("SPARSEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("SPARSEG_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_estimator(tmp_path_factory):
    """A random 2-layer DINOv2 + DPT head with 16 channels, and a DPT image processor, in a local folder (no
    download): a Depth Anything model for `sparseg depth` and the online depth source."""
    transformers = pytest.importorskip("transformers")
    backbone = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=28,
        patch_size=14, out_features=["stage1", "stage2"], reshape_hidden_states=False,
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16], fusion_hidden_size=16,
        head_hidden_size=8, reassemble_factors=[2, 1], patch_size=14, depth_estimation_type="relative",
    )
    folder = tmp_path_factory.mktemp("tiny_depth_anything")
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    transformers.DPTImageProcessor(
        size={"height": 28, "width": 28}, keep_aspect_ratio=True, ensure_multiple_of=14
    ).save_pretrained(folder)
    return folder
