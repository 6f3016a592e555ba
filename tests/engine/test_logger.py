"""Run logging as the user sees it."""

from sparseg.engine.logger import RunLogger


def test_long_lines_are_not_wrapped_when_stderr_is_not_a_terminal(tmp_path, capsys):
    logger = RunLogger(tmp_path, total_iters=10)
    text = " ".join(f"word{i}" for i in range(40))  # 270 characters
    logger.message(text)
    logger.close()
    assert text in capsys.readouterr().err.splitlines()
    assert (tmp_path / "train.log").read_text().rstrip().endswith(text)


def test_curves_add_a_class_share_panel_when_pseudo_label_shares_are_logged(tmp_path):
    import json

    from PIL import Image

    from sparseg.engine.logger import plot_curves

    plain, shared = tmp_path / "plain.jsonl", tmp_path / "shared.jsonl"
    records = [{"iter": i, "split": "train", "loss": 1.0 / i} for i in (1, 2, 3)]
    plain.write_text("".join(json.dumps(r) + "\n" for r in records))
    shares = [{**r, "pseudo_label_share": [0.7, 0.3, 0.0], "class_prior": [0.6, 0.3, 0.1]} for r in records]
    shared.write_text("".join(json.dumps(r) + "\n" for r in shares))
    plot_curves(plain, tmp_path / "plain.png")
    plot_curves(shared, tmp_path / "shared.png")
    assert Image.open(tmp_path / "shared.png").width > 1.4 * Image.open(tmp_path / "plain.png").width
