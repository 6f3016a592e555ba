from pathlib import Path

import pytest

from sparseg.build import load_config
from sparseg.config import ConfigError
from sparseg.methods import method_config


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  root: /x\n"), ["train.iters=5", "data.crop_size=[64, 96]", "seed=3"])
    assert cfg.data.root == "/x"
    assert cfg.train.iters == 5
    assert cfg.data.crop_size == (64, 96)
    assert cfg.seed == 3


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'data.roots'") as err:
        load_config(write(tmp_path, "data:\n  roots: /x\n"))
    assert "cfg.yaml" in str(err.value)


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'data.batch_size'"):
        load_config(None, ["data.batch_size=many"])


def test_unknown_method_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'method.los'"):
        load_config(None, ["method.los=ce"])


def test_unknown_method_name_suggests():
    with pytest.raises(ValueError, match="did you mean 'supervised'"):
        load_config(None, ["method.name=supervized"])


def test_exactly_one_length():
    with pytest.raises(ConfigError, match="exactly one of train.iters and train.epochs"):
        load_config(None, ["train.epochs=3", "train.iters=5"])
    assert load_config(None, ["train.epochs=3"]).train.iters is None


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["seed"])


@pytest.mark.parametrize("text, message", [
    ("data: [unclosed\n", (r"cfg.yaml:2:1: not valid YAML: while parsing a flow sequence: expected ',' or ']', "
                            r"but got '<stream end>'$")),
    ("data:\n  root: x\n   bad: 1\n", r"cfg.yaml:3:7: not valid YAML: mapping values are not allowed here$"),
    ("", r"cfg.yaml: the config file is empty"),
    ("# only a comment\n", r"cfg.yaml: the config file is empty"),
])
def test_bad_yaml_and_empty_files_are_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_a_folder_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match=f"^{tmp_path} is a folder; give a YAML config file"):
        load_config(tmp_path)


def test_a_set_mapping_without_spaces_explains_yaml_base_60():
    with pytest.raises(ConfigError, match=r"^--set data.mask_mapping=\{0:0,255:1\}: write a space after each ':' "
                                          r"\(data.mask_mapping='\{0: 0,255: 1\}'\).*base 60"):
        load_config(None, ["data.mask_mapping={0:0,255:1}"])
    assert load_config(None, ["data.mask_mapping={0: 0, 255: 1}"]).data.mask_mapping == {0: 0, 255: 1}


def test_config_changes_name_every_changed_key():
    from sparseg.config import config_changes

    base = ["data.num_classes=2", "train.iters=10"]
    old = load_config(None, base)
    new = load_config(None, [*base, "train.eval_every=5", "data.mask_mapping={0: 0, 255: 1}", "method.aux_weight=0.2"])
    assert config_changes(old, new, method_config) == {
        "data.mask_mapping": (None, {"0": 0, "255": 1}), "method.aux_weight": (0.4, 0.2), "train.eval_every": (0, 5)}
    assert config_changes(old, load_config(None, [*base, "method.aux_weight=0.4"]), method_config) == {}  # the default, spelled out


SHIPPED_CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_shipped_configs_validate(path):
    load_config(path)  # the method section included


def test_every_dataset_ships_configs():
    assert {path.parent.name for path in SHIPPED_CONFIGS} == {"camvid", "voc", "cityscapes", "folder"}


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.batch_size=0", "data.batch_size"),
        ("data.unlabeled_batch_size=0", "data.unlabeled_batch_size"),
        ("optim.base_lr=-1", "optim.base_lr"),
        ("optim.base_lr=0", "optim.base_lr"),
        ("data.crop_size=0", "data.crop_size"),
        ("data.crop_size=[64, -1]", "data.crop_size"),
        ("train.log_every=0", "train.log_every"),
        ("data.workers=-1", "data.workers"),
        ("data.base_size=-5", "data.base_size"),
        ("train.iters=0", "train.iters"),
        ("train.iters=-3", "train.iters"),
        ("data.num_classes=0", "data.num_classes"),
        ("data.num_classes=255", "data.num_classes"),
        ("train.eval_every=-1", "train.eval_every"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.momentum=1", "optim.momentum"),
        ("optim.betas=[0.9, 1.0]", "optim.betas"),
        ("optim.poly_power=-1", "optim.poly_power"),
        ("eval.scales=[1.0, 0]", "eval.scales"),
        ("eval.scales=[]", "eval.scales"),
        ("model.dropout=1.0", "model.dropout"),
        ("model.aspp_rates=[6, 0, 18]", "model.aspp_rates"),
        ("data.palette=[[0, 0, 256]]", "data.palette"),
        ("train.device=gpu", "train.device"),
        ("seed=-1", "seed"),
        ("method.aux_weight=-1", "method.aux_weight"),
        ("method.ohem_thresh=1.5", "method.ohem_thresh"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epochs=1" if override.startswith("train.iters") else "seed=0", override])
    assert f"'{key}'" in str(err.value) and str(err.value).startswith("--set: ")


def test_train_epochs_and_agmm_weights_ranges():
    with pytest.raises(ConfigError, match="'train.epochs'"):
        load_config(None, ["train.iters=null", "train.epochs=0"])
    with pytest.raises(ConfigError, match="'method.weights.g2p'"):
        load_config(None, ["method.name=agmm", "method.weights.g2p=-1"])


def test_crop_modes_need_a_crop_size():
    for mode in ("sliding_window", "center_crop"):
        with pytest.raises(ConfigError, match=f"eval.mode {mode} needs eval.crop_size"):
            load_config(None, [f"eval.mode={mode}"])
    assert load_config(None, ["eval.mode=sliding_window", "eval.crop_size=64"]).eval.crop_size == (64, 64)


def test_unknown_keys_name_their_origin_and_the_nearest_key(tmp_path):
    path = write(tmp_path, "data:\n  root: /x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["optim.lr=0.1"])
    assert str(err.value) == "--set: unknown config key 'optim.lr' (did you mean 'optim.base_lr'?)"
    with pytest.raises(ConfigError, match=r"cfg.yaml: unknown config key 'data.roots' \(did you mean 'data.root'\?\)$"):
        load_config(write(tmp_path, "data:\n  roots: /x\n"))
    # method keys are suggested from the chosen method's own schema
    with pytest.raises(ConfigError, match=r"--set: unknown config key 'method.unsup_weigth' \(did you mean "
                                          r"'method.unsup_weight'\?\)"):
        load_config(None, ["method.name=selftrain", "method.unsup_weigth=1"])


def test_set_values_keep_text_for_text_fields():
    cfg = load_config(None, ["data.root=/data/run#2", "data.val_list=2024", "train.iters=5", "train.amp=off",
                             "data.train_list=null",
                             "data.labeled_list=a b #c"])
    assert cfg.data.root == "/data/run#2"
    assert cfg.data.val_list == "2024"
    assert cfg.train.amp == "off"  # YAML 1.1 would read `off` as False
    assert cfg.data.train_list is None
    assert cfg.data.labeled_list == "a b #c"
    # other fields are YAML; a comment that would cut the value is refused, a quoted '#' is kept
    with pytest.raises(ConfigError, match=r"--set data.scale_range: .* cut"):
        load_config(None, ["data.scale_range=[0.5, 2.0] #x"])
    cfg = load_config(None, ["data.num_classes=2", "data.class_names=['a #1', b]"])
    assert cfg.data.class_names == ["a #1", "b"]


def test_default_run_folder_follows_the_config_name(tmp_path):
    path = tmp_path / "my_run.yaml"
    path.write_text("seed: 1\n")
    assert load_config(path).out == "runs/my_run"
    assert load_config(path, ["out=elsewhere"]).out == "elsewhere"
    path.write_text("out: there\n")
    assert load_config(path).out == "there"


@pytest.mark.parametrize("override", ["method.cutmix_area=[0.5, 1.5]", "method.blur_sigma=[2, 1]",
                                      "method.cutmix_ratio=[0, 1]"])
def test_consistency_ranges(override):
    with pytest.raises(ConfigError, match=f"'{override.split('=')[0]}'"):
        load_config(None, ["method.name=fixmatch", override])


@pytest.mark.parametrize("text, message", [
    ("method: {}\n", "config key 'method': needs a name"),
    ("method: {name: fixmatch, depmatch: {lamda_cdp: 0.1}}\n",
     "unknown config key 'method.depmatch.lamda_cdp' (did you mean 'method.depmatch.lambda_cdp'?)"),
])
def test_method_and_plugin_sections_are_one_line_errors_before_any_data_is_read(tmp_path, capsys, text, message):
    from sparseg.cli import main

    path = write(tmp_path, "data: {root: /nonexistent, train_list: missing.txt}\n" + text)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "missing.txt" not in err
