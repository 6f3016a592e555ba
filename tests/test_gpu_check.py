"""``benchmarks/gpu_check.sh --cpu-dry-run``: every step of the GPU check runs on the CPU and reports, so the
script cannot rot before a GPU is at hand (issue #16)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = {"data", "train-bf16", "train-fp16", "resume", "density-fp32", "density-tf32", "throughput"}


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(sys.platform == "win32" or shutil.which("timeout") is None, reason="bash and coreutils timeout")
def test_cpu_dry_run_runs_every_step_and_reports(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--cpu-dry-run"],
                          check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    logs = {p.name: p.read_text()[-2000:] for p in (out / "logs").glob("*.log")}
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:], logs)
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["passed"] and report["mode"] == "cpu"
    results = {step["step"]: step["result"] for step in report["steps"]}
    assert results == {**{name: "pass" for name in STEPS}, "train-fp16": "skipped"}
    runs = {row["run"]: row for step in report["steps"] if step["record"] and "rows" in step["record"]
            for row in step["record"]["rows"] if "run" in row}
    expected = set(gpu_check_module().RUNS)
    assert expected <= set(runs)
    for name in expected - {"supervised+compile"}:
        row = runs[name]
        assert row["status"] == "pass", row
        # a torchrun launch of one process still runs DDP over a (gloo) process group
        assert row["backend"] == "gloo" and row["ddp"] == "DistributedDataParallel"
        assert row["it_s"] > 0 and row["iterations"] == report["iters"]
    assert runs["supervised+compile"]["status"] == "skipped"
    resume = next(row for row in runs.values() if row["run"].startswith("resume"))
    assert resume["exact"] and resume["max_difference"] == 0.0  # on a CPU resuming is bit-exact
    density = next(s for s in report["steps"] if s["step"] == "density-fp32")["record"]
    assert density["max_abs_error_vs_fp32_naive"] < 1e-5
    throughput = next(s for s in report["steps"] if s["step"] == "throughput")["record"]
    assert {Path(r["config"]).stem for r in throughput["rows"]} == {"supervised", "fixmatch"}
    table = (out / "gpu_check.md").read_text()
    assert table.startswith("# gpu_check: PASS") and all(f"| {name} |" in table for name in STEPS)


def test_report_fails_when_a_step_or_a_run_fails(tmp_path):
    steps = tmp_path / "steps"
    steps.mkdir()
    for name, result in (("data", "pass"), ("train-bf16", "pass"), ("density-fp32", "timeout")):
        (steps / f"{name}.status.json").write_text(json.dumps(
            {"step": name, "result": result, "exit_code": 0, "seconds": 1.0, "limit": 5}))
    (steps / "train-bf16.json").write_text(json.dumps({"rows": [
        {"run": "supervised", "amp": "bf16", "status": "pass", "problems": []},
        {"run": "dgcl", "amp": "bf16", "status": "fail", "problems": ["RuntimeError: boom"]},
    ]}))
    assert gpu_check_module().report(tmp_path) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not report["passed"]
    assert {s["step"]: s["result"] for s in report["steps"]} == {
        "data": "pass", "train-bf16": "fail", "density-fp32": "timeout"}
    assert "| dgcl | bf16 | fail |" in (tmp_path / "gpu_check.md").read_text()
