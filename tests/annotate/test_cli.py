import time

import pytest

from sparseg.cli import main


@pytest.mark.parametrize("extra, fragment", [
    ([], "name the classes"),
    (["--classes", "{classes}", "--dataset", "camvid"], "not both"),
    (["--classes", "{missing}"], "cannot read the class file"),
    (["--dataset", "nosuch"], "--dataset nosuch"),
    (["--dataset", "camvid", "--out", "{images}/labels"], "inside the image root"),
    (["--classes", "{classes}", "--checkpoint", "{missing}"], "missing.yaml"),
])
def test_bad_input_is_one_line_and_exit_2_before_serving(image_root, classes_file, tmp_path, capsys, monkeypatch,
                                                         extra, fragment):
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: pytest.fail("served despite bad input"))
    names = {"classes": classes_file, "missing": tmp_path / "missing.yaml", "images": image_root}
    argv = ["annotate", str(image_root), "--out", str(tmp_path / "labels"), "--port", "0"]
    argv += [a.format(**names) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and fragment in err


def test_missing_images_are_reported(tmp_path, classes_file, capsys):
    argv = ["annotate", str(tmp_path / "nowhere"), "--classes", str(classes_file), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "no such image folder or split list" in capsys.readouterr().err


def test_a_second_server_on_one_folder_is_refused_until_the_first_is_gone(image_root, classes_file, tmp_path,
                                                                        capsys, monkeypatch):
    import subprocess
    import sys

    import uvicorn

    argv = ["annotate", str(image_root), "--classes", str(classes_file), "--out", str(tmp_path / "o"), "--port", "0"]
    first = subprocess.Popen([sys.executable, "-m", "sparseg", *argv], stdout=subprocess.PIPE, text=True)
    try:
        assert any("open http://127.0.0.1:" in line for line in first.stdout)  # serving
        monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: sockets[0].close())
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"in use by another sparseg annotate (pid {first.pid} " in err
    finally:
        first.kill()  # SIGKILL: the lock file stays behind
        first.wait()
    assert (tmp_path / "o" / "annotate.lock").exists()
    assert main(argv) == 0  # the dead server's lock is taken over


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-iteration model on generated 32x32 data: (data root, checkpoint)."""
    from sparseg.data import make_synthetic_dataset

    work = tmp_path_factory.mktemp("annotate_ckpt")
    root = make_synthetic_dataset(work / "data", n_train=4, n_val=2, size=32, seed=0)
    (work / "cfg.yaml").write_text(f"""
out: {work / 'run'}
data: {{dataset: synthetic, root: {root}, train_list: train.txt, val_list: val.txt,
        crop_size: 32, batch_size: 2, workers: 0}}
model: {{encoder: resnet18, stem: plain, width: 8, output_stride: 16, decoder_channels: 16}}
train: {{iters: 2, eval_every: 2, log_every: 1, device: cpu}}
""")
    assert main(["train", str(work / "cfg.yaml")]) == 0
    return root, work / "run" / "last.pt"


def test_checkpoint_gives_classes_and_the_model_overlay(trained, tmp_path, classes_file, capsys, monkeypatch):
    from sparseg.annotate import server
    from sparseg.data import SYNTHETIC_CLASSES

    root, checkpoint = trained
    served = {}
    monkeypatch.setattr(server, "serve", lambda store, assist, *address, ranker: served.update(
        store=store, assist=assist, ranker=ranker))
    argv = ["annotate", str(root / "train.txt"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    store, assist = served["store"], served["assist"]
    assert store.classes.names == tuple(SYNTHETIC_CLASSES) and len(store.images) == 4
    entry = next(iter(store.images.values()))
    maps = assist.maps(entry.id, entry.path)
    assert maps.shape == (3, entry.size[1], entry.size[0]) and maps[0].max() < len(SYNTHETIC_CLASSES)
    ranker = served["ranker"]
    deadline = time.monotonic() + 120  # scored in the background (slow on a busy machine), then cached
    while not (ranker.snapshot()["done"] == 4 and ranker.cache.is_file()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the cache is written after the last image is counted: wait for both
    assert ranker.snapshot()["done"] == 4 and ranker.cache.parent == store.out / ".annotate"
    assert ranker.cache.is_file()

    assert main([*argv, "--classes", str(classes_file)]) == 2
    assert f"predicts {len(SYNTHETIC_CLASSES)} classes but the class set has 3" in capsys.readouterr().err
