"""The benchmark scripts: the CamVid job runner and the payoff script (with a stand-in `sparseg`), and helpers."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_camvid_queue_passes_config_seed_and_overrides(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sparseg"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\necho "iter 2: val mIoU student 1.00"\n')
    fake.chmod(0o755)
    jobs = tmp_path / "test.jobs"
    jobs.write_text("# a comment\n\nrun_a cfg/a.yaml 0 data.train_list=x.txt method.name=partial_ce\nrun_b cfg/b.yaml 1\n")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "camvid_queue.sh"), str(jobs)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=True)
    assert sorted(done.stdout.splitlines()) == ["run_a: iter 2: val mIoU student 1.00",
                                               "run_b: iter 2: val mIoU student 1.00"]
    args_a = (tmp_path / "runs" / "camvid" / "run_a.log").read_text().splitlines()[:-1]
    assert args_a == ["train", "cfg/a.yaml", "--out", "runs/camvid/run_a", "--overwrite", "--set", "seed=0",
                      "data.train_list=x.txt", "method.name=partial_ce"]
    args_b = (tmp_path / "runs" / "camvid" / "run_b.log").read_text().splitlines()[:-1]
    assert args_b == ["train", "cfg/b.yaml", "--out", "runs/camvid/run_b", "--overwrite", "--set", "seed=1"]


def _run_queue(tmp_path, fake_sparseg):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if fake_sparseg is not None:
        fake = bin_dir / "sparseg"
        fake.write_text(fake_sparseg)
        fake.chmod(0o755)
    jobs = tmp_path / "test.jobs"
    jobs.write_text("run_a cfg/a.yaml 0\n")
    # PATH holds only the stand-in and the basic tools, so an installed sparseg cannot leak in.
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("grep", "xargs", "mkdir", "tail", "bash"):
        found = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True, check=True)
        (tools / tool).symlink_to(found.stdout.strip())
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{tools}"}
    return subprocess.run([str(tools / "bash"), str(REPO / "benchmarks" / "camvid_queue.sh"), str(jobs)],
                          check=False, cwd=tmp_path, env=env, capture_output=True, text=True)


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_camvid_queue_names_a_failed_job_and_exits_nonzero(tmp_path):
    done = _run_queue(tmp_path, '#!/usr/bin/env bash\necho "Traceback: boom" >&2\nexit 1\n')
    assert done.returncode != 0
    assert done.stdout.strip() == "run_a: FAILED, see runs/camvid/run_a.log"
    assert "boom" in (tmp_path / "runs" / "camvid" / "run_a.log").read_text()


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_camvid_queue_refuses_to_start_without_sparseg(tmp_path):
    done = _run_queue(tmp_path, None)
    assert done.returncode == 127
    assert "no 'sparseg' command" in done.stderr
    assert not (tmp_path / "runs").exists()


def _payoff(tmp_path, stage, **env):
    """camvid_payoff.sh with a stand-in sparseg that records its arguments and writes the --json it is given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "sparseg"
    fake.write_text('#!/usr/bin/env bash\necho "$@" >> "$(dirname "$0")/calls"\n'
                    'while [ $# -gt 0 ]; do [ "$1" = --json ] && echo \'{"miou": 1.0}\' > "$2"; shift; done\n')
    fake.chmod(0o755)
    root = tmp_path / "camvid"
    for split in ("1_8", "1_4"):
        (root / "splits" / split).mkdir(parents=True, exist_ok=True)
        (root / "splits" / split / "labeled.txt").write_text("a.png a_L.png\n")
    full_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CAMVID": str(root), **env}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "camvid_payoff.sh"), "0", str(tmp_path / "out"), stage],
                          cwd=REPO, env=full_env, capture_output=True, text=True, check=False)
    calls = bin_dir / "calls"
    return done, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_camvid_payoff_scores_finished_runs_on_the_splits_lists_and_skips_a_run_still_training(tmp_path):
    for arm in ("supervised", "semi"):
        (tmp_path / "out" / arm).mkdir(parents=True)
        (tmp_path / "out" / arm / "last.pt").write_bytes(b"")
    (tmp_path / "out" / "semi" / "train.lock").write_text("123")
    done, calls = _payoff(tmp_path, "score", SPLIT="1_4")
    assert done.returncode == 0, done.stderr
    assert "semi: not scored" in done.stdout and "supervised: val mIoU 1.00, held-out mIoU 1.00" in done.stdout
    assert not (tmp_path / "out" / "semi" / "val.json").exists()
    assert len(calls) == 3 and all(call.startswith(f"eval {tmp_path / 'out' / 'supervised'}/last.pt") for call in calls)
    assert "data.val_list" not in calls[0]  # val: the checkpoint's own list
    assert "data.val_list=splits/1_4/unlabeled.txt" in calls[1] and "data.val_list=splits/1_4/labeled.txt" in calls[2]


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_camvid_payoff_refuses_an_unknown_split_before_any_work(tmp_path):
    done, calls = _payoff(tmp_path, "supervised", SPLIT="1_3")
    assert done.returncode == 2 and calls == []
    assert done.stderr.strip() == f"camvid_payoff: SPLIT=1_3: {tmp_path / 'camvid'}/splits/1_3/labeled.txt not found"


def test_pseudo_label_shares_average_each_window_of_train_records(tmp_path):
    spec = importlib.util.spec_from_file_location("pseudo_label_shares", REPO / "benchmarks" / "pseudo_label_shares.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    records = [
        {"split": "train", "iter": 10, "loss": 1.0},  # warm-up: no shares logged
        {"split": "train", "iter": 20, "pseudo_label_share": [1.0, 0.0], "label_share": [0.5, 0.5]},
        {"split": "train", "iter": 30, "pseudo_label_share": [0.5, 0.5], "label_share": [0.5, 0.5]},
        {"split": "val", "iter": 30, "pseudo_label_share": [0.0, 1.0], "label_share": [0.0, 1.0]},
        {"split": "train", "iter": 40, "pseudo_label_share": [0.0, 1.0], "label_share": [0.25, 0.75]},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    rows = script.shares(tmp_path, [30, 40, 50])
    assert rows == [("20-30", [0.75, 0.25], [0.5, 0.5]), ("40-40", [0.0, 1.0], [0.25, 0.75])]
