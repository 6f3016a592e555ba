"""Fixtures of the engine tests: tiny training runs on generated data."""

import pytest

from sparseg.config import config_from_dict
from sparseg.data import make_synthetic_dataset


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_train=8, n_val=2, size=32, seed=0)


@pytest.fixture
def tiny_config(tmp_path, tiny_data):
    """``config(out="run", iters=4, eval_every=2, root=None) -> Config``: supervised, batch 4, logging every
    iteration, on ``tiny_data`` (or the synthetic dataset at ``root``)."""

    def config(out="run", iters=4, eval_every=2, root=None):
        return config_from_dict({
            "out": str(tmp_path / out),
            "data": {"dataset": "synthetic", "root": str(root or tiny_data), "train_list": "train.txt",
                     "val_list": "val.txt", "crop_size": 32, "batch_size": 4, "workers": 0},
            "model": {"encoder": "resnet18", "stem": "plain", "width": 8, "decoder_channels": 16},
            "optim": {"base_lr": 0.01},
            "train": {"iters": iters, "eval_every": eval_every, "log_every": 1, "device": "cpu"},
        })

    return config
