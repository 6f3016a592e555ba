"""Two gloo processes through torchrun, as users launch them, against one process."""

import json
import os
import subprocess
import sys

import torch

from sparseg.cli import main
from sparseg.data import make_synthetic_dataset

CONFIG = """
data: {{dataset: synthetic, root: {root}, train_list: train.txt, val_list: val.txt,
        crop_size: 32, batch_size: 4, workers: 0}}
model: {{encoder: resnet18, stem: plain, width: 8, output_stride: 16, decoder_channels: 16, dropout: 0.0}}
optim: {{base_lr: 0.05, head_lr_mult: 1.0}}
train: {{iters: 3, eval_every: 0, log_every: 1, device: cpu}}
"""


def test_torchrun_two_processes_match_one(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_train=16, n_val=5, size=32, seed=0)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.format(root=root))

    assert main(["train", str(cfg), "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "sparseg", "train", str(cfg), "--out", str(tmp_path / "two")],
        check=False, env=env, capture_output=True, text=True, timeout=300,
    )
    # the trainer itself checks at every checkpoint that both processes hold identical parameters
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 process(es)" in run.stderr

    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["method"]
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["method"]
    from sparseg.build import load_config, resolve
    from sparseg.engine.trainer import seed_everything
    from sparseg.methods import build_method

    seed_everything(0)  # as the trainer does before building the model
    start = build_method(*resolve(load_config(cfg)), 5).state_dict()
    # BN statistics are per process on CPU (SyncBN is CUDA-only), which changes the gradients of layers
    # in front of BN a lot at 2 images per process. The classifier, after every BN, must still take the
    # same step within 15%: a wrong gradient reduction (sum instead of mean) would double it.
    for key in ("model.classifier.weight", "model.classifier.bias"):
        moved = (one[key] - start[key]).norm()
        assert moved > 0
        assert (one[key] - two[key]).norm() <= 0.15 * moved, key

    # evaluation was sharded across the two processes but covers the whole val list exactly once
    logged = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ddp_miou = [r["miou"] for r in logged if r["split"] == "val"][-1]
    assert main(["eval", str(tmp_path / "two" / "last.pt"), "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["num_images"] == 5
    assert abs(result["miou"] - ddp_miou) < 1e-6


def test_torchrun_refused_run_folder_ends_every_process_with_the_same_line(tmp_path):
    """The main process claims the run folder; when it is refused (here: locked by this live process),
    every rank reports it and exits 2, none goes on to wait for rank 0 in the first collective."""
    from sparseg.engine.rundir import RunLock

    root = make_synthetic_dataset(tmp_path / "data", n_train=16, n_val=5, size=32, seed=0)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.format(root=root))
    lock = RunLock(tmp_path / "busy")
    lock.acquire()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "sparseg", "train", str(cfg), "--out", str(tmp_path / "busy")],
        check=False, env=env, capture_output=True, text=True, timeout=300,
    )
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["train.lock"]  # still ours, nothing written
    lock.release()
    assert run.returncode != 0
    refusals = [line for line in run.stderr.splitlines() if line.startswith("error: ") and "is in use" in line]
    assert len(refusals) == 2, run.stderr[-3000:]
    assert "Warning" not in run.stderr, run.stderr[:2000]
