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
