import dataclasses
import subprocess
import sys

import pytest
from absl import flags

from tests.conftest import REPO
from trainer.errors import ConfigError
from trainer.train import config


def _parse(*args):
    values = flags.FlagValues()
    config.define_flags(values)
    values(["trainer.task", *args])
    return values


def test_every_field_is_a_flag_with_the_fields_default_help_and_choices():
    values = _parse()
    for config_class in (config.TrainConfig, config.ClusterConfig):
        for field in dataclasses.fields(config_class):
            flag = values[field.name]
            assert flag.help.endswith(field.metadata["help"]) and field.metadata["help"]
            assert flag.default == field.metadata["flag_default"]
            if field.default is not dataclasses.MISSING and field.metadata["flag_default"] is not None:
                assert flag.default == field.default, field.name
            if field.metadata["choices"]:
                assert tuple(flag.parser.enum_values) == field.metadata["choices"]


def test_config_from_flags_is_generic_with_environment_fallbacks():
    train, cluster = config.config_from_flags(
        _parse("--epochs=3", "--shuffle_buffer=64", "--strategy=one_device"),
        {"AIP_MODEL_DIR": "gs://b/export"},
    )
    assert train.epochs == 3 and train.shuffle_buffer == 64 and cluster.strategy == "one_device"
    assert train.export_dir == "gs://b/export" and train.model_dir == "runs/colorizer/model"
    assert train.log_dir == "runs/colorizer/model/logs" and train.loss == "two_heads"
    assert train.train_data.startswith(config.SAMPLE_DIR)


def test_loss_follows_the_colour_space_unless_given():
    assert config.config_from_flags(_parse("--color_space=rgb"), {})[0].loss == "mse"
    with pytest.raises(ConfigError, match="needs --color_space=lab .with rgb, pass --loss=mse"):
        config.config_from_flags(_parse("--color_space=rgb", "--loss=two_heads"), {})


def test_only_the_zero_flag_run_fine_tunes_the_starter():
    def init_from(*args):
        return config.config_from_flags(_parse(*args), {})[0].init_from

    assert init_from() == init_from("--epochs=3", "--model_dir=m") == config.STARTER
    assert init_from("--train_data=data/train-*") == ""  # a user's own data: from scratch
    assert init_from("--model=autoencoder") == init_from("--base_filters=64") == ""  # another architecture
    assert init_from("--train_data=d/*", "--init_from=starter") == "starter"
    assert init_from("--init_from=") == ""
    rate = config.config_from_flags(_parse(), {})[0].learning_rate
    assert rate == config.FINE_TUNE_LEARNING_RATE  # fine-tuning: a tenth of the rate
    assert config.config_from_flags(_parse("--learning_rate=0.002"), {})[0].learning_rate == 0.002
    assert config.config_from_flags(_parse("--train_data=d/*"), {})[0].learning_rate == 1e-3


def test_mixed_precision_is_an_alias():
    assert config.config_from_flags(_parse("--mixed_precision"), {})[0].precision == "mixed_float16"
    with pytest.raises(ConfigError, match="--mixed_precision means --precision=mixed_float16"):
        config.config_from_flags(_parse("--mixed_precision", "--precision=mixed_bfloat16"), {})


def test_bad_enum_values_are_refused_by_the_flags_and_the_config():
    with pytest.raises(flags.IllegalFlagValueError):
        _parse("--model=resnet")
    with pytest.raises(ConfigError, match="--model='resnet': choose one of autoencoder, unet"):
        config.TrainConfig("a", "b", "c", "d", model="resnet")


def test_config_module_imports_no_tensorflow():
    code = (
        "import sys, trainer.train.config, trainer.task; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_rgb_regression_space_needs_a_lab_regression():
    assert config.config_from_flags(_parse("--regression_space=rgb"), {})[0].regression_space == "rgb"
    for other in (("--color_space=rgb",), ("--loss=classification",)):
        with pytest.raises(ConfigError, match="--regression_space=rgb converts a.b. to sRGB"):
            config.config_from_flags(_parse("--regression_space=rgb", *other), {})
