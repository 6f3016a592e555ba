import numpy as np
import pytest
import torch
from PIL import Image

from sparseg.annotate import LabelStore, find_images, load_classes

CLASSES_YAML = "names: [sky, road, car]\npalette: [[70, 130, 180], [128, 64, 128], [0, 0, 142]]\n"


@pytest.fixture
def image_root(tmp_path):
    """Three small RGB images, one in a subfolder and one JPEG."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a.png": (40, 30), "b.jpg": (32, 24), "sub/c.png": (20, 16)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    return root


@pytest.fixture
def classes_file(tmp_path):
    path = tmp_path / "classes.yaml"
    path.write_text(CLASSES_YAML)
    return path


@pytest.fixture
def store(image_root, classes_file, tmp_path):
    root, images = find_images(image_root)
    return LabelStore(root, images, load_classes(classes_file), tmp_path / "labels")


class HalfSureModel(torch.nn.Module):
    """Predicts class 1 on the left half (sure) and a near tie of classes 0 and 2 on the right half."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        b, _, h, w = x.shape
        logits = torch.zeros(b, 3, h, w)
        logits[:, 1, :, : w // 2] = 10
        logits[:, 0, :, w // 2 :] = 1
        logits[:, 2, :, w // 2 :] = 0.9
        return {"pred": logits}


@pytest.fixture
def half_sure_model():
    return HalfSureModel()


class PerImageModel(torch.nn.Module):
    """Knows the conftest images by their width: sure of class 1 on "a" (40 px), unsure between classes 1 and 0
    on "b" (32 px), sure of class 2 on "sub/c" (20 px), so class 2 is the rare one of the pool."""

    def forward(self, x):
        b, _, h, w = x.shape
        logits = torch.zeros(b, 3, h, w)
        if w == 32:
            logits[:, 1], logits[:, 0] = 1, 0.9
        else:
            logits[:, 1 if w == 40 else 2] = 10
        return {"pred": logits}
