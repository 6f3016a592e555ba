"""`sparseg predict` mirrors its inputs under --out and never writes over an input or, unasked, an output."""

import numpy as np
import pytest
from PIL import Image

from sparseg.cli import main
from sparseg.eval.predict import PredictError, plan_predictions


def image(path, size=(24, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(path)
    return path


def masks(plan, out):
    return sorted(str(p.mask.relative_to(out)) for p in plan)


def test_outputs_keep_extensions_and_mirror_the_tree(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for name in ("x.jpg", "x.png", "a.jpg", "sub/a.jpg", ".cache/b.jpg", ".c.png"):  # hidden ones left out
        image(src / name)
    (src / "notes.txt").write_text("not an image")
    single = image(tmp_path / "single.webp")
    plan = plan_predictions([src, single], out, overlays=True, overwrite=False)
    assert masks(plan, out) == ["a.jpg.png", "single.webp.png", "sub/a.jpg.png", "x.jpg.png", "x.png.png"]
    assert {p.overlay.name for p in plan} == {"a.jpg.overlay.jpg", "single.webp.overlay.jpg", "x.jpg.overlay.jpg",
                                              "x.png.overlay.jpg"}
    # the same file reached twice is predicted once
    assert masks(plan_predictions([src, src / "x.png"], out, False, False), out).count("x.png.png") == 1


def test_unsafe_outputs_are_refused_before_anything_is_written(tmp_path):
    src = tmp_path / "src"
    image(src / "x.png")
    for out in (src, src / "predictions"):
        with pytest.raises(PredictError, match="inside the input folder"):
            plan_predictions([src], out, False, False)
    image(tmp_path / "other" / "x.png")
    with pytest.raises(PredictError, match="would both be written to"):
        plan_predictions([src, tmp_path / "other"], tmp_path / "out", False, False)
    image(tmp_path / "out" / "x.png.png")  # an input that is also an output
    with pytest.raises(PredictError, match="would write over the input image"):
        plan_predictions([src, tmp_path / "out" / "x.png.png"], tmp_path / "out", False, False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.png.png"]


def test_predict_command_refuses_existing_outputs_unless_overwrite(tmp_path, capsys):
    from sparseg.data import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=1, size=32, seed=0)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
out: {tmp_path / 'run'}
data: {{dataset: synthetic, root: {root}, train_list: train.txt, crop_size: 32, batch_size: 2, workers: 0}}
model: {{encoder: resnet18, stem: plain, width: 8, decoder_channels: 16}}
train: {{iters: 1, device: cpu}}
""")
    assert main(["train", str(cfg)]) == 0
    src, out = tmp_path / "src", tmp_path / "pred"
    image(src / "a.jpg"), image(src / "sub" / "a.jpg", size=(20, 12))
    checkpoint = str(tmp_path / "run" / "last.pt")
    capsys.readouterr()

    assert main(["predict", checkpoint, str(src), "--out", str(src)]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in src.rglob("*")) == ["a.jpg", "a.jpg", "sub"]

    assert main(["predict", checkpoint, str(src), "--out", str(out)]) == 0
    assert Image.open(out / "sub" / "a.jpg.png").size == (20, 12) and Image.open(out / "a.jpg.png").size == (24, 16)
    (out / "a.jpg.png").write_bytes(b"kept")
    capsys.readouterr()
    assert main(["predict", checkpoint, str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists (and 1 more outputs): pass --overwrite" in err[0]
    assert (out / "a.jpg.png").read_bytes() == b"kept"
    assert main(["predict", checkpoint, str(src), "--out", str(out), "--overwrite"]) == 0
    assert Image.open(out / "a.jpg.png").mode == "P"
