"""The demo's recipe table, the CPU thread policy, and one very short demo through the CLI."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sparseg import threads
from sparseg.cli import main
from sparseg.config import ConfigError, config_from_dict
from sparseg.demo import DEMO_RECIPES, FROM_SUPERVISED, DemoRecipe, _merge, demo_config, recipe_kind
from sparseg.methods import list_methods, method_class


@pytest.mark.parametrize(("method", "kind"), [("supervised", "dense"), ("selftrain", "semi"), ("dgcl", "semi"),
                                              ("fixmatch", "semi"), ("agmm", "sparse"), ("partial_ce", "sparse"),
                                              ("ddep", "pretrain"), ("mim", "pretrain")])
def test_recipe_kind_follows_what_the_method_learns_from(method, kind):
    assert recipe_kind(method_class(method)) == kind


@pytest.mark.parametrize("kind", sorted(DEMO_RECIPES))
def test_every_recipe_is_a_valid_config(tmp_path, kind):
    recipe = DEMO_RECIPES[kind]
    cfg = config_from_dict(_merge(demo_config(tmp_path, tmp_path / "run", iters=recipe.iters), recipe.config))
    assert cfg.train.iters == recipe.iters and cfg.data.crop_size == (recipe.images["size"],) * 2


def test_every_demo_method_has_a_recipe():
    assert all(recipe_kind(method_class(name)) in DEMO_RECIPES for name in list_methods())


@pytest.mark.parametrize(("cores", "load", "expected"), [(2, 0.05, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1),
                                                         (2, 9.7, 1), (8, 2.2, 6), (1, 0.0, 1)])
def test_auto_threads_use_the_cores_the_load_leaves(cores, load, expected):
    reason = f"{cores} usable cores, 1-minute load average {load:.1f}"
    assert threads.choose_threads({}, cores, load) == (expected, reason)


def test_explicit_thread_counts_win_over_the_load():
    assert threads.choose_threads({"SPARSEG_THREADS": "3", "OMP_NUM_THREADS": "1"}, 2, 9.0)[0] == 3
    assert threads.choose_threads({"SPARSEG_THREADS": "auto", "OMP_NUM_THREADS": "4"}, 2, 0.0)[0] is None
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ConfigError, match=f"SPARSEG_THREADS={bad}: expected a positive integer or 'auto'"):
            threads.choose_threads({"SPARSEG_THREADS": bad}, 2, 0.0)


def test_prepare_openmp_keeps_a_users_wait_policy():
    env = {}
    threads.prepare_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.prepare_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_apply_thread_policy_sets_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("SPARSEG_THREADS", "2")
    try:
        assert threads.apply_thread_policy().startswith("2 CPU thread(s) (SPARSEG_THREADS=2")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_command_line_sets_the_wait_policy_before_torch_loads():
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: `import sparseg.cli` must not import torch."""
    code = ("import os, sys\nfrom sparseg.cli import main\nloaded = 'torch' in sys.modules\n"
            "try:\n    main(['demo', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), loaded)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "PASSIVE False"


def test_bad_sparseg_threads_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("SPARSEG_THREADS", "many")
    assert main(["demo", "--iters", "1"]) == 2
    assert capsys.readouterr().err == "error: SPARSEG_THREADS=many: expected a positive integer or 'auto'\n"


def test_demo_command_trains_evaluates_and_predicts(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(DEMO_RECIPES, "dense", DemoRecipe({"n_train": 16, "n_val": 3, "size": 32}, 20,
                                                          DEMO_RECIPES["dense"].config))
    assert main(["demo", "--iters", "20", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("demo: 1 CPU thread(s)")  # SPARSEG_THREADS=1 in tests/conftest.py
    assert lines[-1].startswith("mIoU: ") and 0 <= float(lines[-1].split()[1]) <= 100
    run = tmp_path / "supervised"
    assert (run / "last.pt").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["name"] == "adamw"  # the recipe's config
    assert len(list((run / "predictions").rglob("*.png"))) == 3  # one mask per validation image
    assert len(list((run / "predictions").rglob("*.overlay.jpg"))) == 3  # as `sparseg predict --overlay`
    assert f"wrote 3 predictions to {run / 'predictions'}" in lines


def test_pretraining_demo_compares_scratch_and_pretrained_and_replaces_its_own_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(DEMO_RECIPES, "pretrain", DemoRecipe({"n_train": 64, "n_val": 3, "size": 32}, 4,
                                                             DEMO_RECIPES["pretrain"].config))
    for _ in range(2):  # the second run replaces the first instead of keeping it in previous-*
        assert main(["demo", "--method", "ddep", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    comparison = next(line for line in out.splitlines() if line.startswith("comparison: "))
    assert "supervised " in comparison and "ddep (probe)" in comparison and "supervised from ddep" in comparison
    assert (tmp_path / "ddep" / "pretrained.pt").is_file()
    finetuned = tmp_path / "supervised_from_ddep"
    config = yaml.safe_load((finetuned / "config.yaml").read_text())
    assert config["model"]["pretrained"] == str(tmp_path / "ddep" / "pretrained.pt")
    assert config["data"]["train_list"].endswith("labeled.txt")
    assert list((finetuned / "predictions").rglob("*.png"))
    assert not list(tmp_path.rglob("previous-*"))


def test_from_supervised_demo_starts_the_method_from_the_baseline_beside_it_continued(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(DEMO_RECIPES, "semi", DemoRecipe({"n_train": 64, "n_val": 3, "size": 32}, 2))
    assert main(["demo", "--method", "selftrain", "--from-supervised", "--iters", "2", "--out", str(tmp_path)]) == 0
    comparison = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("comparison: "))
    assert [part.rsplit(" ", 1)[0] for part in comparison[len("comparison: "):].split(", ")] == [
        "supervised", "supervised continued", "selftrain from supervised"]
    start = str(tmp_path / "supervised" / "last.pt")
    continued = yaml.safe_load((tmp_path / "supervised_continued" / "config.yaml").read_text())
    semi = yaml.safe_load((tmp_path / "selftrain_from_supervised" / "config.yaml").read_text())
    assert continued["model"]["pretrained"] == semi["model"]["pretrained"] == start
    assert continued["train"]["iters"] == semi["train"]["iters"] == 2  # both arms as long
    assert semi["method"]["pseudo_label"]["align"] == "hard_share" and semi["method"]["warmup_epochs"] == 0
    assert list((tmp_path / "selftrain_from_supervised" / "predictions").rglob("*.png"))


@pytest.mark.parametrize("method", ["supervised", "agmm", "fixmatch+depmatch"])
def test_from_supervised_refuses_other_methods_before_any_work(tmp_path, capsys, method):
    assert main(["demo", "--method", method, "--from-supervised", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --from-supervised: '{method}' is not") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_from_supervised_is_the_camvid_recipe():
    """The demo's start-from-supervised keys are those of configs/camvid/selftrain_aligned.yaml, so the demo
    shows the recommended recipe and the two cannot drift apart."""
    recipe = yaml.safe_load((Path(__file__).parent.parent / "configs/camvid/selftrain_aligned.yaml").read_text())["method"]
    cls = method_class("selftrain")
    assert recipe.pop("name") == "selftrain"
    demo = cls.Config(**copy.deepcopy({**FROM_SUPERVISED, **cls.trained_start_overrides}))
    assert demo == cls.Config(**recipe)
