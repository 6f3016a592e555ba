"""Run logging as the user sees it."""

from sparseg.engine.logger import RunLogger


def test_long_lines_are_not_wrapped_when_stderr_is_not_a_terminal(tmp_path, capsys):
    logger = RunLogger(tmp_path, total_iters=10)
    text = " ".join(f"word{i}" for i in range(40))  # 270 characters
    logger.message(text)
    logger.close()
    assert text in capsys.readouterr().err.splitlines()
    assert (tmp_path / "train.log").read_text().rstrip().endswith(text)
