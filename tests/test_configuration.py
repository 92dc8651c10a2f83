import pytest
import yaml
from conftest import REPO
from quantpipe.configuration import check_consistency, check_node_classes, coerce_to_schema
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
     ({"train": {"epochs": -1}}, "-1"), ({"widths": "16"}, "16"),
     ({"node_classes": ["AMX"]}, "AMX"), ({"node_classes": []}, "node_classes")],
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


@pytest.mark.parametrize(
    "sizes,message",
    [([16, 1], r"batch_sizes \[16, 1\] must be ascending without repeats: write \[1, 16\]"),
     ([1, 16, 16], r"batch_sizes \[1, 16, 16\] must be ascending without repeats"),
     ([1, 2000], r"batch_sizes \[2000\] exceed benchmark.paired_images = 1000")],
)  # fmt: skip
def test_a_bad_batch_size_curve_is_rejected_saying_how_to_fix_it(sizes, message):
    config = {"val_size": 5000, "calibration_sizes": [512], "methods": ["pt2e"],
              "benchmark": {"batch_sizes": sizes, "paired_images": 1000}}  # fmt: skip
    with pytest.raises(ValueError, match=message):
        check_consistency(config)
    check_consistency({**config, "benchmark": {"batch_sizes": [1, 16, 256],
                                               "paired_images": 1000}})  # fmt: skip


@pytest.mark.parametrize("sizes", [[0, 16], ["one"], 16])
def test_batch_sizes_are_positive_integers_by_the_schema(sizes):
    config = {"benchmark": {"batch_sizes": sizes}}
    coerce_to_schema(config, SCHEMA)
    with pytest.raises(Exception, match="batch_sizes"):
        validate(config, SCHEMA, set_default=True)
    empty = {}
    validate(empty, SCHEMA, set_default=True)
    assert empty["benchmark"]["batch_sizes"] == []


def test_node_classes_default_to_any_and_gpu_is_reserved():
    config = {}
    validate(config, SCHEMA, set_default=True)
    assert config["node_classes"] == ["any"]
    with pytest.raises(ValueError, match=r"node class 'gpu' is reserved .*node_classes"):
        check_consistency({**config, "node_classes": ["any", "gpu"]})


def test_a_node_class_the_profile_does_not_map_is_named_with_the_key_to_edit():
    """The shipped profile maps `any`; a class it lacks fails before any job, naming the class,
    the profile key and the file."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    benchmark = profile["set-resources"]["benchmark"]
    check_node_classes(["any"], benchmark)
    named = r"node class 'amx' .*set-resources: benchmark: slurm_partition.*profiles/slurm/"
    with pytest.raises(ValueError, match=named):
        check_node_classes(["any", "amx"], benchmark)
    # Maps that cover every class, or read more than the wildcards, pass.
    check_node_classes(["any", "amx"], {
        "slurm_partition": "{'any': 'cpu', 'amx': 'cpu'}[wildcards.node_class]",
        "constraint": "{'amx': 'amx_int8'}.get(wildcards.node_class, '')",
        "mem_mb": "4000 * attempt", "runtime": "threads * wildcards.node_class",
    })  # fmt: skip
