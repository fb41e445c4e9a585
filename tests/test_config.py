"""The config schema: unknown keys are named with the closest valid ones; every experiment file is valid."""

from pathlib import Path

import pytest

from jaxdml.config import ConfigError, check_overrides, default_config, load_config_file, validate

EXPERIMENTS = sorted(p for p in Path(__file__).resolve().parents[1].glob("experiments/*.py")
                     if not p.name.startswith("_"))  # _*.py: recipes shared by experiment files


def test_default_config_is_valid():
    validate(default_config())


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_file_is_valid_and_documented(path):
    cfg = load_config_file(path)
    validate(cfg)
    doc = path.read_text().split('"""')[1]
    assert "python -m jaxdml.main --config experiments/" in doc, "docstring must give the exact command"


def test_unknown_key_in_experiment_is_named_with_suggestion():
    cfg = default_config()
    cfg.train.batch_szie = 64
    with pytest.raises(ConfigError, match=r"train\.batch_szie.*Did you mean: train\.batch_size"):
        validate(cfg)


def test_right_key_in_wrong_section_is_suggested():
    cfg = default_config()
    cfg.data.num_steps = 3
    with pytest.raises(ConfigError, match=r"data\.num_steps.*train\.num_steps"):
        validate(cfg)


def test_unknown_override_flag_is_named():
    cfg = default_config()
    check_overrides(cfg, ["prog", "--config.train.batch_size=64", "--workdir=x"])
    with pytest.raises(ConfigError, match=r"'train\.batch_sizee'.*Did you mean: train\.batch_size"):
        check_overrides(cfg, ["prog", "--config.train.batch_sizee=64"])


def test_batch_size_must_hold_whole_classes():
    cfg = default_config()
    cfg.train.batch_size, cfg.data.samples_per_class = 30, 4
    with pytest.raises(ConfigError, match=r"not a multiple of data\.samples_per_class=4.*batch_size=28"):
        validate(cfg)


def test_missing_config_file_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.py")
