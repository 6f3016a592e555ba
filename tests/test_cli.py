"""End-to-end: the CLI trains, resumes, evaluates and predicts on tiny generated data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparseg.cli import main
from sparseg.data import make_synthetic_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_train=12, n_val=3, size=32, seed=0)


def write_config(tmp_path, root, iters=4, train=""):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "cfg.yaml"
    path.write_text(f"""
out: {tmp_path / 'run'}
data: {{dataset: synthetic, root: {root}, train_list: train.txt, val_list: val.txt,
        crop_size: 32, batch_size: 4, workers: 0}}
model: {{encoder: resnet18, stem: plain, width: 8, output_stride: 16, decoder_channels: 16}}
optim: {{base_lr: 0.01}}
train: {{iters: {iters}, eval_every: 2, log_every: 1, device: cpu{train}}}
""")
    return path


def test_train_resume_eval_predict(tmp_path, data_root, capsys):
    cfg = write_config(tmp_path, data_root)
    run = tmp_path / "run"
    assert main(["train", str(cfg)]) == 0
    assert {"last.pt", "best.pt", "metrics.jsonl", "curves.png", "config.yaml"} <= {p.name for p in run.iterdir()}
    assert list(run.glob("tb/events.out.tfevents.*"))
    # the same run dir is protected unless resumed or overwritten
    assert main(["train", str(cfg)]) == 2
    assert "--resume" in capsys.readouterr().err
    # a finished run resumes to nothing; a run with another schedule length is refused
    assert main(["train", str(cfg), "--resume"]) == 0
    assert main(["train", str(cfg), "--resume", "--set", "train.iters=8"]) == 2
    assert "written for 4 iterations" in capsys.readouterr().err
    iters = [json.loads(line)["iter"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert iters == sorted(iters) and iters[-1] == 4

    capsys.readouterr()
    assert main(["eval", str(run / "last.pt"), "--json", str(tmp_path / "r.json")]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("mIoU: ")
    result = json.loads((tmp_path / "r.json").read_text())
    assert f"{result['miou']:.2f}" == last_line.split()[1]

    # any list can be scored with --set
    (data_root / "one.txt").write_text((data_root / "val.txt").read_text().splitlines()[0])
    assert main(["eval", str(run / "last.pt"), "--set", "data.val_list=one.txt", "--json", str(tmp_path / "o.json")]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["num_images"] == 1

    assert main(["predict", str(run / "last.pt"), str(data_root / "images"), "--out", str(tmp_path / "pred"),
                 "--overlay"]) == 0
    first = min((data_root / "images").iterdir())
    mask = Image.open(tmp_path / "pred" / f"{first.name}.png")
    assert mask.mode == "P" and mask.size == Image.open(first).size
    assert np.asarray(mask).max() < 5
    assert (tmp_path / "pred" / f"{first.name}.overlay.jpg").exists()


@pytest.mark.parametrize("precision", ["", ", amp: bf16, channels_last: true"], ids=["fp32", "bf16-channels-last"])
def test_resume_is_exact(tmp_path, data_root, precision):
    """4 iterations straight == 2 iterations, a checkpoint, a new process state, 2 more (bit-identical on CPU,
    also under the CamVid recipes' bf16 autocast and channels_last)."""
    from sparseg.build import load_config, resolve
    from sparseg.engine.trainer import Trainer

    straight = write_config(tmp_path / "a", data_root, train=precision)
    assert main(["train", str(straight)]) == 0

    interrupted = write_config(tmp_path / "b", data_root, train=precision)
    trainer = Trainer(*resolve(load_config(interrupted)), quiet=True)
    batches = trainer._batches(0, 0)
    for _ in range(2):
        trainer._train_step(next(batches), 0)
    trainer._evaluate_and_checkpoint()  # as at an eval point; the "crash" follows
    trainer.close()  # a process that dies releases the run folder (its lock turns stale)
    torch.manual_seed(1234)  # the resumed process starts from other RNG state
    assert main(["train", str(interrupted), "--resume"]) == 0

    state_a = torch.load(tmp_path / "a" / "run" / "last.pt", weights_only=True)  # tensors and plain data only
    state_b = torch.load(tmp_path / "b" / "run" / "last.pt", weights_only=True)
    assert state_b["iteration"] == 4
    for key, value in state_a["method"].items():
        assert torch.equal(value, state_b["method"][key]), key


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.root=/does/not/exist"], "not found"),
        (["data.train_list=bad.txt"], "bad.txt:2"),
        (["model.encoder=resnet19"], "model.encoder"),
        (["data.bogus=1"], "unknown config key 'data.bogus'"),
    ],
)
def test_bad_input_gives_clear_error(tmp_path, data_root, capsys, overrides, message):
    (data_root / "bad.txt").write_text("images/train_0000.png masks/train_0000.png\nthree columns here\n")
    cfg = write_config(tmp_path, data_root)
    assert main(["train", str(cfg), "--set", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_label_out_of_range_is_reported(tmp_path, data_root, capsys):
    bad = tmp_path / "bad_data"
    bad.mkdir()
    (bad / "images").mkdir()
    (bad / "masks").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad / "images" / "a.png")
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(bad / "masks" / "a.png")
    (bad / "val.txt").write_text("images/a.png masks/a.png\n")
    cfg = write_config(tmp_path, data_root)
    main(["train", str(cfg), "--set", "train.iters=1"])
    assert main(["eval", str(tmp_path / "run" / "last.pt"), "--set", f"data.root={bad}"]) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and "7" in err


def test_corrupt_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 not really")
    assert main(["eval", str(bad)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_load_report_goes_to_stderr_and_the_logger_is_restored(tmp_path, data_root, capsys):
    """The `model.pretrained` report line reaches the user; calling `main` in-process leaves the `sparseg`
    logger as it found it (a handler bound to a closed stream would break later logging)."""
    import logging

    log = logging.getLogger("sparseg")
    before = list(log.handlers), log.propagate, log.level
    first = write_config(tmp_path / "a", data_root, iters=2)
    assert main(["train", str(first)]) == 0
    second = write_config(tmp_path / "b", data_root, iters=2)
    pretrained = tmp_path / "a" / "run" / "last.pt"
    assert main(["train", str(second), "--set", f"model.pretrained={pretrained}"]) == 0
    assert "model.pretrained" in capsys.readouterr().err
    assert (list(log.handlers), log.propagate, log.level) == before


def test_bf16_autocast_and_channels_last_paths(tmp_path, data_root):
    """The AMP and memory-format switches run end to end (bf16 autocast works on CPU too)."""
    cfg = write_config(tmp_path, data_root, iters=2)
    assert main(["train", str(cfg), "--set", "train.amp=bf16", "train.channels_last=true"]) == 0
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_fp16_needs_cuda_and_dense_methods_refuse_sparse_lists(tmp_path, data_root, capsys):
    cfg = write_config(tmp_path, data_root, iters=2)
    assert main(["train", str(cfg), "--set", "train.amp=fp16"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    assert main(["train", str(cfg), "--set", "data.label_format=sparse"]) == 2
    assert "needs dense labels" in capsys.readouterr().err


def test_version_and_help_for_every_argument(capsys):
    import argparse

    from sparseg.cli import build_parser

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip().startswith("sparseg ")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"sparseg {name} {action.dest} has no help text"
        text = " ".join(sub.format_help().split())
        for action in sub._actions:  # choices and meaningful defaults are shown
            if action.choices and action.option_strings:
                assert "{" + ",".join(action.choices) + "}" in text, (name, action.dest)
            if action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings:
                assert f"default: {action.default}" in text, (name, action.dest)


def test_splits_detects_the_layout_and_keeps_an_existing_split(tmp_path, data_root, capsys):
    out = tmp_path / "split"
    # the synthetic list's masks derive from image paths: no --dataset needed
    (data_root / "images_only.txt").write_text("\n".join(
        line.split()[0] for line in (data_root / "train.txt").read_text().splitlines()))
    assert main(["splits", str(data_root / "images_only.txt"), "--labeled", "1/4", "--out", str(out)]) == 0
    assert len((out / "labeled.txt").read_text().splitlines()) == 3
    before = (out / "labeled.txt").read_text()
    assert main(["splits", str(data_root / "images_only.txt"), "--labeled", "1/2", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "labeled.txt").read_text() == before
    assert main(["splits", str(data_root / "images_only.txt"), "--labeled", "1/2", "--out", str(out),
                 "--overwrite"]) == 0
    assert len((out / "labeled.txt").read_text().splitlines()) == 6
    (data_root / "ids.txt").write_text("nowhere_0\nnowhere_1\n")
    assert main(["splits", str(data_root / "ids.txt"), "--labeled", "1", "--out", str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no dataset layout resolves this list" in err[0] and "--dataset" in err[0]


def test_default_run_folder_is_per_config_name(tmp_path, data_root, monkeypatch):
    cfg = write_config(tmp_path, data_root, iters=1)
    named = tmp_path / "tiny_run.yaml"
    named.write_text("\n".join(line for line in cfg.read_text().splitlines() if not line.startswith("out:")))
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(named)]) == 0
    assert (tmp_path / "runs" / "tiny_run" / "last.pt").exists()


def test_the_shipped_folder_config_trains_on_a_folder_dataset_with_spaces_in_names(tmp_path, capsys):
    """configs/folder/supervised.yaml, as the README's own-data section runs it: image folders as lists,
    masks under masks/, full-size evaluation (no inherited eval.scales)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            name = f"photo {i}"
            for folder, array in (("images", rng.integers(0, 256, (32, 32, 3), np.uint8)),
                                  ("masks", (rng.random((32, 32)) > 0.5).astype(np.uint8))):
                (tmp_path / folder / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(tmp_path / folder / split / f"{name}.png")
    config = Path(__file__).parents[1] / "configs" / "folder" / "supervised.yaml"
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--set", f"data.root={tmp_path}",
                 "train.iters=2", "train.eval_every=0", "train.device=cpu", "data.crop_size=32", "data.batch_size=2",
                 "data.workers=0", "model.width=8", "model.decoder_channels=16"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("mIoU: ")
    stored = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["config"]
    assert stored["eval"]["scales"] == [1.0] and stored["data"]["num_classes"] == 2
