import pytest
from conftest import REPO
from quantpipe.configuration import check_consistency, coerce_to_schema
from snakemake.utils import validate

SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def test_command_line_strings_become_the_schema_types():
    config = {"seeds": ["0", "1"], "train": {"epochs": "2", "lr": "0.1"}, "models": ["resnet18"],
              "benchmark": {"gpu": "false"}}  # fmt: skip
    coerce_to_schema(config, SCHEMA)
    assert config["seeds"] == [0, 1] and config["models"] == ["resnet18"]
    assert config["train"] == {"epochs": 2, "lr": 0.1}
    assert config["benchmark"]["gpu"] is False


@pytest.mark.parametrize(
    "bad,names",
    [({"seeds": ["zero"]}, "zero"), ({"calibration_sizes": []}, "calibration_sizes"),
     ({"calibration_sizes": [0]}, "0"), ({"methods": ["int4"]}, "int4"),
     ({"trian": {"epochs": 1}}, "trian"),
     ({"train": {"epochs": -1}}, "-1"), ({"widths": "16"}, "16")],
)  # fmt: skip
def test_bad_config_is_rejected_naming_key_and_value(bad, names):
    coerce_to_schema(bad, SCHEMA)
    with pytest.raises(Exception, match=names):
        validate(bad, SCHEMA, set_default=True)


def test_calibration_larger_than_the_training_split_is_rejected():
    config = {"val_size": 45000, "calibration_sizes": [512, 8192]}
    with pytest.raises(ValueError, match=r"calibration_sizes \[8192\] exceed .* = 5000"):
        check_consistency(config)


def test_qat_with_per_tensor_calibration_is_rejected():
    config = {"val_size": 5000, "calibration_sizes": [512], "methods": ["pt2e", "qat"],
              "calibration_methods": ["histogram", "minmax_per_tensor"]}  # fmt: skip
    with pytest.raises(ValueError, match=r"'qat' .*\['minmax_per_tensor'\].*per-channel"):
        check_consistency(config)
    check_consistency({**config, "methods": ["pt2e"]})
