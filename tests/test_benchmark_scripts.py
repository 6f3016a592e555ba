"""The CamVid job runner passes every job's overrides to ``sparseg train`` (checked with a stand-in command)."""

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
