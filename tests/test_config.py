from pathlib import Path

import pytest

from sparseg.config import ConfigError, load_config


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


SHIPPED_CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_shipped_configs_validate(path):
    load_config(path)  # the method section included


def test_every_dataset_ships_configs():
    assert {path.parent.name for path in SHIPPED_CONFIGS} == {"camvid", "voc", "cityscapes"}
