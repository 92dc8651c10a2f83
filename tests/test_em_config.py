"""The task switch: each task takes its own models and settings, and says what is allowed."""

import pytest
from quantpipe.configuration import check_consistency

EM = {"task": "isbi2012_em", "models": ["unet2d"], "methods": ["pt2e", "eager"],
      "calibration_sizes": [32],
      "em": {"sections": 3, "tile_sections": 3, "patch_size": 128, "tile": 256, "overlap": 32,
             "section_overlap": 1}}  # fmt: skip


def test_a_consistent_em_config_passes():
    check_consistency(EM)


@pytest.mark.parametrize(
    "change,message",
    [({"models": ["resnet18_cifar"]}, r"models \['resnet18_cifar'\].*'isbi2012_em'.*unet2d"),
     ({"methods": ["pt2e", "onnxruntime"]}, r"methods \['onnxruntime'\].*pt2e, eager"),
     ({"em": {**EM["em"], "tile": 100}}, r"em.tile = 100 must be a multiple of 8"),
     ({"em": {**EM["em"], "overlap": 256}}, r"em.overlap = 256 must be smaller than em.tile"),
     ({"models": ["unet3d_aniso"], "em": {**EM["em"], "section_overlap": 3}},
      r"em.section_overlap = 3 must be smaller than em.tile_sections = 3"),
     ({"benchmark": {"batch_sizes": [1, 4]}},
      r"batch_sizes \[1, 4\]: the batch-size curve is for the classifier tasks.*inference_batch")],
)  # fmt: skip
def test_an_inconsistent_em_config_is_rejected_naming_key_value_and_choices(change, message):
    with pytest.raises(ValueError, match=message):
        check_consistency({**EM, **change})


def test_a_unet_is_rejected_for_cifar10():
    with pytest.raises(
        ValueError, match=r"models \['unet2d'\].*'cifar10'.*resnet18, resnet18_cifar"
    ):
        check_consistency({"task": "cifar10", "models": ["unet2d"], "val_size": 5000,
                           "calibration_sizes": [64], "methods": ["pt2e"]})  # fmt: skip


def test_the_task_lists_match_the_models():
    """The task specs spell the model lists out (the Snakefile does not import torch)."""
    from quantpipe import tasks
    from quantpipe.models.build import RESNETS, UNETS
    from quantpipe.models.unet import MIN_SIZE
    from quantpipe.tasks.isbi2012_em.spec import POOLING

    assert tasks.spec("cifar10").models == RESNETS and tasks.spec("isbi2012_em").models == UNETS
    assert POOLING == MIN_SIZE
