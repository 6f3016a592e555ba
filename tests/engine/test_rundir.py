"""A run folder belongs to one training at a time and holds one run: new, resumed or overwritten."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sparseg.build import resolve
from sparseg.cli import main
from sparseg.config import dump_config
from sparseg.engine.rundir import LOCK_NAME, RunDirError, RunLock
from sparseg.engine.trainer import Trainer


def write_yaml(cfg, path):
    path.write_text(yaml.safe_dump(dump_config(cfg)))
    return str(path)


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_second_training_is_refused_while_the_first_lives_and_a_dead_ones_lock_is_taken_over(
        tiny_config, tmp_path, capsys):
    cfg = tiny_config(iters=2)
    run = Path(cfg.out)
    hold = ("import sys, time; from pathlib import Path; from sparseg.engine.rundir import RunLock; "
            "lock = RunLock(Path(sys.argv[1])); lock.acquire(); print('held', flush=True); time.sleep(120)")
    # the first training: another process holding the folder
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        config = write_yaml(cfg, tmp_path / "cfg.yaml")
        for flags in ([], ["--overwrite"]):
            assert main(["train", config, *flags]) == 2
            err = one_error_line(capsys)
            assert f"{run} is in use by another training (pid {holder.pid} on {socket.gethostname()}" in err
        assert [p.name for p in run.iterdir()] == [LOCK_NAME]  # nothing written by the refused runs
    finally:
        holder.kill()  # killed outright: its lock file stays behind, naming a dead process
        holder.wait()
    assert (run / LOCK_NAME).exists()
    assert main(["train", config]) == 0
    assert (run / "last.pt").exists() and not (run / LOCK_NAME).exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times need Linux /proc")
def test_a_lock_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    import os

    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock(run)
    lock.acquire()
    owner = json.loads((run / LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["pid_start"]
    lock._release.detach()  # as if this process had been killed: the lock file stays behind
    # the same pid, started at another time: a new process that reuses the dead one's pid
    (run / LOCK_NAME).write_text(json.dumps({**owner, "pid_start": str(int(owner["pid_start"]) - 1)}))
    taker = RunLock(run)
    taker.acquire()
    assert json.loads((run / LOCK_NAME).read_text())["token"] != owner["token"]
    taker.release()
    (run / LOCK_NAME).write_text(json.dumps(owner))  # the live owner itself is still respected
    with pytest.raises(RunDirError, match="in use by another training"):
        RunLock(run).acquire()


def test_a_lock_from_another_host_is_respected(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "today"}))
    with pytest.raises(RunDirError, match="in use by another training \\(pid 1 on elsewhere since today\\)"):
        RunLock(run).acquire()
    lock = RunLock(tmp_path / "free")
    lock.acquire()
    with pytest.raises(RunDirError, match=f"pid \\d+ on {socket.gethostname()}"):  # this process, a second time
        RunLock(tmp_path / "free").acquire()
    lock.release()
    assert not (tmp_path / "free" / LOCK_NAME).exists()


def test_a_folder_is_new_resumed_or_overwritten_never_mixed(tiny_config, tmp_path, capsys):
    cfg = tiny_config(iters=2)
    run = Path(cfg.out)
    (run / "tb").mkdir(parents=True)  # what a run that died before its first checkpoint leaves
    (run / "tb" / "events.out.tfevents.old").write_bytes(b"old events")
    (run / "metrics.jsonl").write_text('{"iter": 2, "split": "train", "loss": 1.0}\n')
    (run / "config.yaml").write_text("old: config\n")
    config = write_yaml(cfg, tmp_path / "cfg.yaml")

    assert main(["train", config]) == 2
    assert "holds another run's config.yaml, metrics.jsonl, tb but no last.pt: pass --overwrite" in one_error_line(
        capsys)
    assert main(["train", config, "--resume"]) == 2
    assert f"nothing to resume: {run / 'last.pt'} does not exist" in one_error_line(capsys)
    assert main(["train", config, "--resume", "--overwrite"]) == 2
    assert "pass one of them" in one_error_line(capsys)
    assert (run / "config.yaml").read_text() == "old: config\n"

    assert main(["train", config, "--overwrite"]) == 0
    (previous,) = run.glob("previous-*")
    assert sorted(p.name for p in previous.iterdir()) == ["config.yaml", "metrics.jsonl", "tb"]
    assert (previous / "tb" / "events.out.tfevents.old").read_bytes() == b"old events"
    assert (previous / "metrics.jsonl").read_text() == '{"iter": 2, "split": "train", "loss": 1.0}\n'
    assert not (run / "tb" / "events.out.tfevents.old").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iter"], r["split"]) for r in records] == [(1, "train"), (2, "train"), (2, "val")]


class Crash(Exception):
    pass


def test_resume_writes_no_step_twice(tiny_config, tmp_path):
    """Interrupted after logging iteration 3 (checkpoint at 2), then resumed: metrics.jsonl and TensorBoard
    hold every step once; train.log keeps both parts of the story."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(iters=4, eval_every=2)
    run = Path(cfg.out)

    class CrashAfterThree(Trainer):
        def _train_step(self, batch, epoch):
            super()._train_step(batch, epoch)
            if self.iteration == 3:
                raise Crash

    with pytest.raises(Crash):
        CrashAfterThree(*resolve(cfg)).fit()
    assert main(["train", write_yaml(cfg, tmp_path / "cfg.yaml"), "--resume"]) == 0

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iter"], r["split"]) for r in records] == [
        (1, "train"), (2, "train"), (2, "val"), (3, "train"), (4, "train"), (4, "val")]
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("val/miou")] == [2, 4]

    log = (run / "train.log").read_text()
    assert log.count("iter 3/4 train: loss ") == 2  # the lost step, then its replay
    assert f"resumed from {run / 'last.pt'} at iteration 2" in log
    assert log.count("iter 4/4 val: miou ") == 1 and "iter 4: val mIoU" not in log  # each result once
    assert "finished in" in log


def test_a_running_training_is_named_before_the_resume_or_overwrite_advice(tiny_config, tmp_path, capsys):
    cfg = tiny_config(iters=2)
    config = write_yaml(cfg, tmp_path / "cfg.yaml")
    assert main(["train", config]) == 0
    lock = RunLock(Path(cfg.out))  # a training running there (this process's pid: alive)
    lock.acquire()
    try:
        capsys.readouterr()
        assert main(["train", config]) == 2
        err = one_error_line(capsys)
        assert f"{cfg.out} is in use by another training (pid" in err and "--overwrite" not in err
    finally:
        lock.release()


def test_a_lock_names_its_file_and_holder(tmp_path):
    run = tmp_path / "labels"
    first = RunLock(run, "tool.lock", "labeling tool")
    first.acquire()
    with pytest.raises(RunDirError) as refused:
        RunLock(run, "tool.lock", "labeling tool").acquire()
    assert str(refused.value).startswith(f"{run} is in use by another labeling tool (pid ")
    assert str(refused.value).endswith(f"(delete {run / 'tool.lock'} if no labeling tool runs there)")
    RunLock(run).acquire()  # training's lock is another file
    first._release.detach()  # as if killed: the lock stays, naming a dead process
    owner = json.loads((run / "tool.lock").read_text())
    (run / "tool.lock").write_text(json.dumps({**owner, "pid": 2 ** 22 + 1}))
    RunLock(run, "tool.lock", "labeling tool").acquire()  # taken over
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary file left
