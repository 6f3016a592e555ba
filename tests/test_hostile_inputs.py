"""Hostile inputs end in one clear error naming the file or key, and nothing is written over."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sparseg.cli import main
from sparseg.data import make_synthetic_dataset


@pytest.fixture()
def setup(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, size=32, seed=0)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
out: {tmp_path / 'run'}
data: {{dataset: synthetic, root: {root}, train_list: train.txt, val_list: val.txt,
        crop_size: 32, batch_size: 4, workers: 0}}
model: {{encoder: resnet18, stem: plain, width: 8, output_stride: 16, decoder_channels: 16}}
train: {{iters: 4, eval_every: 2, log_every: 1, device: cpu}}
""")
    # a first run: its checkpoint must survive every failure below
    assert main(["train", str(cfg)]) == 0
    last = tmp_path / "run" / "last.pt"
    shutil.copy(last, tmp_path / "good.pt")
    return root, cfg, last, tmp_path / "good.pt"


def first_train_image(root):
    return root / (root / "train.txt").read_text().split()[0]


def first_train_mask(root):
    return root / (root / "train.txt").read_text().split()[1]


def corrupt_truncated(root):
    path = first_train_image(root)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path.name


def corrupt_mask_size(root):
    path = first_train_mask(root)
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(path)
    return path.name


def corrupt_label_values(root):
    path = first_train_mask(root)
    mask = np.zeros((32, 32), np.uint8)
    mask[0, 0] = 9
    Image.fromarray(mask).save(path)
    return "9"


def corrupt_empty_split(root):
    (root / "train.txt").write_text("")
    return "train.txt"


def corrupt_duplicate_line(root):
    lines = (root / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("\n".join(lines + [lines[0]]))
    return f"train.txt:{len(lines) + 1}"


@pytest.mark.parametrize("corrupt, found_up_front", [
    (corrupt_truncated, False), (corrupt_mask_size, True), (corrupt_label_values, False),
    (corrupt_empty_split, True), (corrupt_duplicate_line, True),
])
def test_bad_data_stops_training_without_losing_the_checkpoint(setup, capsys, corrupt, found_up_front):
    root, cfg, last, good = setup
    named = corrupt(root)
    capsys.readouterr()
    # a loader worker process too: its errors must arrive as the same one line
    assert main(["train", str(cfg), "--overwrite", "--set", "train.iters=8", "data.workers=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and named in err and "Traceback" not in err
    previous = list(last.parent.glob("previous-*/last.pt"))
    if found_up_front:  # refused from the lists and file headers, before the old run was touched
        assert last.read_bytes() == good.read_bytes() and not previous
    else:  # found by the loader: --overwrite had moved the old run aside, the new one has no checkpoint
        assert not last.exists() and [p.read_bytes() for p in previous] == [good.read_bytes()]


def test_unknown_config_key(setup, capsys):
    _, cfg, last, good = setup
    assert main(["train", str(cfg), "--resume", "--set", "optim.lr=0.1"]) == 2
    assert "unknown config key 'optim.lr'" in capsys.readouterr().err
    assert last.read_bytes() == good.read_bytes()


def test_checkpoint_from_another_model_or_class_count(setup, capsys, tmp_path):
    _root, cfg, last, good = setup
    assert main(["train", str(cfg), "--resume", "--set", "train.iters=4", "model.width=16"]) == 2
    assert "another model or class count" in capsys.readouterr().err
    assert main(["train", str(cfg), "--resume", "--set", "data.dataset=folder", "data.num_classes=3"]) == 2
    assert "another model or class count" in capsys.readouterr().err
    assert last.read_bytes() == good.read_bytes()
    # scoring a dataset with another class count
    assert main(["eval", str(last), "--set", "data.dataset=camvid"]) == 2
    assert "classes" in capsys.readouterr().err


def test_nonfinite_loss_stops_or_skips(setup, capsys, monkeypatch):
    _, cfg, last, good = setup
    from sparseg.methods import supervised

    real = supervised.cross_entropy
    monkeypatch.setattr(supervised, "cross_entropy", lambda logits, target: real(logits, target) * float("nan"))
    assert main(["train", str(cfg), "--resume", "--set", "train.iters=6"]) == 2
    err = capsys.readouterr().err
    assert "written for 4 iterations" in err  # resuming needs the same schedule: start a longer one
    assert main(["train", str(cfg), "--overwrite", "--set", "train.iters=4"]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at iteration 0: loss = nan, sup = nan" in err
    assert [p.read_bytes() for p in last.parent.glob("previous-*/last.pt")] == [good.read_bytes()]
    assert main(["train", str(cfg), "--overwrite", "--set", "train.iters=4", "train.on_nonfinite=skip"]) == 0
    import torch

    assert torch.load(last, weights_only=True)["skipped_steps"] == 4


@pytest.fixture()
def fresh_config(tmp_path):
    """A config whose run never started: bad values must be refused before the run folder exists."""
    root = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, size=32, seed=0)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
out: {tmp_path / 'run'}
data: {{dataset: synthetic, root: {root}, train_list: train.txt, val_list: val.txt, crop_size: 32, batch_size: 2,
        workers: 0}}
model: {{encoder: resnet18, stem: plain, width: 8, decoder_channels: 16}}
train: {{iters: 2, device: cpu}}
""")
    return cfg, tmp_path / "run"


@pytest.mark.parametrize("override, key", [
    ("data.batch_size=0", "data.batch_size"), ("optim.base_lr=-1", "optim.base_lr"),
    ("data.crop_size=0", "data.crop_size"), ("train.log_every=0", "train.log_every"),
    ("data.workers=-1", "data.workers"), ("data.base_size=-5", "data.base_size"), ("train.iters=0", "train.iters"),
    ("train.iters=-3", "train.iters"), ("data.num_classes=0", "data.num_classes"), ("eval.mode=sliding_window", "eval"),
])
def test_bad_values_end_in_one_line_before_any_work(fresh_config, capsys, override, key):
    cfg, run = fresh_config
    assert main(["train", str(cfg), "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --set: config key '{key}'"), err
    assert not run.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_before_data_is_read(fresh_config, capsys):
    cfg, run = fresh_config
    (cfg.parent / "data" / "train.txt").unlink()  # reading the data would fail differently
    assert main(["train", str(cfg), "--set", "train.device=cuda"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: train.device=cuda but no CUDA GPU is available; use train.device=cpu (or auto)")
    assert not run.exists()


def test_set_takes_key_value_items_only_and_repeats(fresh_config, capsys):
    cfg, _ = fresh_config
    with pytest.raises(SystemExit) as exit_:  # a config path after --set is not swallowed silently
        main(["train", "--set", "train.iters=1", str(cfg)])
    assert exit_.value.code == 2
    assert f"'{cfg}' is not KEY=VALUE" in capsys.readouterr().err
    # repeated --set flags add up (the second does not replace the first)
    assert main(["train", str(cfg), "--set", "optim.lr=1", "--set", "data.bogus=2"]) == 2
    err = capsys.readouterr().err
    assert "--set: unknown config key 'optim.lr' (did you mean 'optim.base_lr'?)" in err and "'data.bogus'" in err


def test_checkpoint_model_cannot_be_swapped_and_shape_mismatch_is_one_line(setup, capsys, tmp_path):
    _, _, last, _ = setup
    capsys.readouterr()
    assert main(["eval", str(last), "--set", "model.encoder=resnet50"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --set model.encoder: model.* keys come from the checkpoint")
    # weights of another shape under the same config: the first differing tensor, in one line
    from sparseg.engine.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(last)
    key = next(k for k in state["method"] if k.endswith("conv1.weight"))
    state["method"][key] = torch.zeros(3, 3, 1, 1)
    del state["format_version"]
    save_checkpoint(tmp_path / "odd.pt", state)
    assert main(["eval", str(tmp_path / "odd.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"first {key}: [3, 3, 1, 1] in the file" in err[0], err


def test_unreadable_training_images_are_skipped_with_on_bad_image_skip(setup, capsys):
    root, cfg, last, _ = setup
    truncated = corrupt_truncated(root)  # the header reads, the pixels do not
    empty = root / (root / "train.txt").read_text().split()[2]
    empty.write_bytes(b"")  # not even a header: found by the up-front check
    assert main(["train", str(cfg), "--overwrite"]) == 2
    assert empty.name in capsys.readouterr().err.strip().splitlines()[-1]  # default error: named, up front
    assert main(["train", str(cfg), "--overwrite", "--set", "data.on_bad_image=skip"]) == 0
    err = capsys.readouterr().err
    # one plain line per file, however often the sampler draws it: no Python category, no source line
    skipped = [line for line in err.splitlines() if "data.on_bad_image=skip" in line]
    assert len(skipped) == 2 and all(line.startswith("warning: skipped (") for line in skipped)
    assert "UserWarning" not in err and "warnings.warn" not in err
    assert any(truncated in m for m in skipped) and any(empty.name in m for m in skipped)
    from sparseg.engine.checkpoint import load_checkpoint

    assert load_checkpoint(last)["iteration"] == 4


def test_skip_replaces_an_unreadable_unlabeled_image_by_the_next_one(setup):
    from sparseg.config import DataConfig
    from sparseg.data import EvalTransform, build_dataset

    root, _, _, _ = setup
    corrupt_truncated(root)
    (root / "unlabeled.txt").write_text("\n".join(line.split()[0] for line in (root / "train.txt").read_text()
                                                  .splitlines()))
    cfg = DataConfig(dataset="synthetic", root=str(root), unlabeled_list="unlabeled.txt")
    dataset = build_dataset(cfg, "unlabeled_list", labeled=False, transform=EvalTransform())
    with pytest.raises(Exception, match=first_train_image(root).name):
        dataset[0]
    dataset = build_dataset(cfg.model_copy(update={"on_bad_image": "skip"}), "unlabeled_list", labeled=False,
                            transform=EvalTransform())
    with pytest.warns(UserWarning, match=first_train_image(root).name):
        assert dataset[0]["index"].item() == 1
    assert dataset[0]["index"].item() == 1 and dataset.skipped == {first_train_image(root)}


def test_predict_skips_unreadable_images_with_on_bad_image_skip(setup, capsys, tmp_path):
    root, _, last, _ = setup
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    bad = min(images.iterdir())
    bad.write_bytes(bad.read_bytes()[:100])
    assert main(["predict", str(last), str(images), "--out", str(tmp_path / "pred")]) == 2
    assert bad.name in capsys.readouterr().err
    assert main(["predict", str(last), str(images), "--out", str(tmp_path / "pred2"),
                 "--set", "data.on_bad_image=skip"]) == 0
    n = len(list(images.iterdir()))
    out, err = capsys.readouterr()
    assert f"wrote {n - 1} predictions" in out
    assert [line for line in err.splitlines() if bad.name in line] == [
        f"warning: skipped (data.on_bad_image=skip): cannot read image {bad}: image file is truncated"]
    assert len(list((tmp_path / "pred2").iterdir())) == n - 1


def test_resume_with_another_method_names_the_first_missing_tensor(setup, capsys):
    _, cfg, last, good = setup
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume", "--allow-config-change", "--set", "method.name=selftrain",
                 "data.labeled_list=train.txt", "data.unlabeled_list=val.txt", "data.unlabeled_batch_size=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit this model" in err[0] and "missing, first teacher." in err[0], err
    assert last.read_bytes() == good.read_bytes()


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_an_image_over_the_pixel_limit_is_one_line_in_train_and_predict_and_skippable(setup, capsys, monkeypatch):
    root, cfg, last, good = setup
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 32x32 inputs pass; PIL refuses over 4000 pixels
    big = first_train_image(root)
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(big)
    capsys.readouterr()
    assert main(["train", str(cfg), "--overwrite"]) == 2
    err = one_error(capsys)
    assert str(big) in err and "exceeds limit" in err and last.read_bytes() == good.read_bytes()  # up front
    assert main(["train", str(cfg), "--overwrite", "--set", "data.on_bad_image=skip"]) == 0
    assert f"warning: skipped (data.on_bad_image=skip; 1 so far): {big}: unreadable image" in capsys.readouterr().err
    assert main(["predict", str(last), str(big), "--out", str(root / "pred"), "--set", "data.on_bad_image=error"]) == 2
    assert str(big) in one_error(capsys)
    val_image = root / (root / "val.txt").read_text().split()[0]
    assert main(["predict", str(last), str(big), str(val_image), "--out", str(root / "pred"),
                 "--set", "data.on_bad_image=skip"]) == 0
    assert "wrote 1 predictions" in capsys.readouterr().out


def test_outputs_that_cannot_be_written_are_refused_before_any_work(setup, capsys, tmp_path, monkeypatch):
    root, _, last, _ = setup
    import sparseg.eval

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before checking --json")

    monkeypatch.setattr(sparseg.eval, "evaluate", no_evaluation)
    capsys.readouterr()
    assert main(["eval", str(last), "--json", str(tmp_path / "missing" / "r.json")]) == 2
    assert f"--json {tmp_path / 'missing' / 'r.json'}: cannot write this file" in one_error(capsys)
    image = root / (root / "val.txt").read_text().split()[0]
    before = image.read_bytes()
    assert main(["predict", str(last), str(image), "--out", str(image)]) == 2
    assert f"--out {image} is a file" in one_error(capsys) and image.read_bytes() == before


@pytest.mark.parametrize("argv, expected", [
    (["inspect-labels", "masks", "--num-classes", "0"], "--num-classes 0: must be in 1..254"),
    (["sparsify", "train.txt", "--kind", "clicks", "--seed", "0", "--out", "sp"], "needs --num-classes K"),
    (["sparsify", "train.txt", "--kind", "clicks", "--seed", "0", "--out", "sp", "--num-classes", "300"],
     "--num-classes 300: must be in 1..254"),
    (["splits", "missing.txt", "--labeled", "1", "--out", "sp"], "missing.txt: split list or image folder not found"),
])
def test_command_line_values_are_one_line(setup, capsys, monkeypatch, argv, expected):
    root, _, _, _ = setup
    monkeypatch.chdir(root)
    capsys.readouterr()
    assert main(argv) == 2
    assert expected in one_error(capsys)


def test_resume_after_a_config_edit_is_one_line_and_keeps_the_run(setup, capsys):
    _, cfg, last, good = setup
    stored = (last.parent / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume", "--set", "optim.base_lr=0.5"]) == 2
    err = one_error(capsys)
    assert "optim.base_lr 0.001 -> 0.5" in err and "--allow-config-change" in err
    assert (last.parent / "config.yaml").read_text() == stored and last.read_bytes() == good.read_bytes()
    assert main(["train", str(cfg), "--overwrite", "--allow-config-change"]) == 2
    assert "--allow-config-change applies to --resume only" in one_error(capsys)


def test_the_final_miou_says_when_it_covers_part_of_val(setup, capsys):
    _, cfg, last, _ = setup
    assert main(["train", str(cfg), "--overwrite", "--set", "train.max_val_images=1"]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip().splitlines()[-1].endswith(
        f" over 1 validation images (train.max_val_images=1; sparseg eval {last.parent / 'best.pt'} scores the "
        "whole list)")
    evaluations = [line for line in printed.err.splitlines() if ": val mIoU " in line]  # iterations 2 and 4
    assert len(evaluations) == 2 and all(line.endswith(" (first 1 of 2 val images)") for line in evaluations)
    assert main(["train", str(cfg), "--overwrite", "--set", "train.max_val_images=2"]) == 0
    assert "val images)" not in capsys.readouterr().err  # the whole of val


def test_resume_of_a_checkpoint_whose_stored_config_no_longer_validates_names_the_checkpoint(setup, capsys):
    from sparseg.engine.checkpoint import load_checkpoint, save_checkpoint

    _, cfg, last, _ = setup
    state = load_checkpoint(last)
    state["config"]["train"]["retired_key"] = 1  # a key of an older sparseg
    save_checkpoint(last, state)
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume"]) == 2
    err = one_error(capsys)
    assert f"{last} (the config stored in the checkpoint): unknown config key 'train.retired_key'" in err
    assert main(["eval", str(last)]) == 2  # the checkpoint's other readers say the same
    assert f"{last} (the config stored in the checkpoint): unknown config key 'train.retired_key'" in one_error(capsys)
