"""Accuracy control (quantpipe.quantize.accuracy_control): per-layer sensitivity and INT8 within
an accuracy budget, on real pt2e and eager quantization of a network with one layer made fragile
on purpose. The stages' wiring in the whole DAG: tests/test_user_model_workflow.py."""

import pytest
import torch
from quantpipe import configuration
from quantpipe.models.build import build_model
from quantpipe.quantize import CONTROLLED, backend, requantizer, save
from quantpipe.quantize import accuracy_control as control
from quantpipe.tasks.base import TaskSpec

# In quantpipe's ResNet18 this layer's input channel 0 is made dead (its batch norm and ReLU
# give 0) and its weights on that channel 1000x the others: FP32 outputs do not change, INT8's
# per-output-channel weight scales round its real weights away.
FRAGILE = "layer2.0.conv2"
ARCHITECTURE = {"name": "resnet18_cifar", "width": 4, "num_classes": 10}


def fragile_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(**ARCHITECTURE).eval()
    block = net.get_submodule(FRAGILE.rsplit(".", 1)[0])
    with torch.no_grad():
        block.bn1.weight[0], block.bn1.bias[0] = 0.0, -1.0  # ReLU(-1) = 0, whatever the input
        block.conv2.weight[:, 0] = 1000.0
    return net


@pytest.fixture(scope="module")
def setup():
    """The fragile network, calibration images, and a score: 1 - the relative error of the
    logits against FP32's on fixed inputs (1 = FP32's outputs; a unit test's stand-in for a
    task's accuracy, which a random network does not have)."""
    net = fragile_net()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(128, 3, 32, 32, generator=generator)
    with torch.no_grad():
        reference = net(images)

    def score(module) -> float:
        with torch.no_grad():
            return 1 - ((module(images) - reference).norm() / reference.norm()).item()

    return net, images, score


def quiet(line):
    pass


# Four of its 21 layers keep the fast tier fast; the DAG test below ranks every layer.
TRIED = ("conv1", "layer1.0.conv1", FRAGILE, "fc")


@pytest.mark.slow
@pytest.mark.parametrize("method", CONTROLLED)
def test_sensitivity_ranks_the_fragile_layer_first(setup, method):
    net, images, score = setup
    layers = control.quantized_layers(net, images[:2], backend(method).LAYER_TYPES)
    assert len(layers) == 21  # 20 convolutions and the head
    tried = [layer for layer in layers if layer["layer"] in TRIED]
    quantize = requantizer(method, net, images.split(64), images[:2], "histogram")
    all_int8, rows = control.sensitivity(
        tried, lambda keep: quantize(keep, log=quiet), score, True, quiet
    )
    assert sorted(row["layer"] for row in rows) == sorted(TRIED)
    assert [row["rank"] for row in rows] == [1, 2, 3, 4]
    assert rows[0]["layer"] == FRAGILE and rows[0]["op"] == "Conv2d"
    # Falling back the fragile layer recovers most of what INT8 lost; no other layer comes near.
    assert rows[0]["recovery_points"] > 10 * max(abs(row["recovery_points"]) for row in rows[1:])
    assert all_int8 < 0.9 < rows[0]["score_layer_fp32"]
    assert rows[0]["recovery_points"] == pytest.approx(
        100 * (rows[0]["score_layer_fp32"] - all_int8)
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", CONTROLLED)
def test_the_budget_keeps_the_fewest_layers_in_fp32(setup, method, tmp_path):
    net, images, score = setup
    quantize = requantizer(method, net, images.split(64), images[:2], "histogram")
    # A ranking that puts the fragile layer third: the search must get past two useless ones.
    ranked = ["conv1", "layer1.0.conv1", FRAGILE, "fc"]
    model, chosen, steps = control.within_budget(
        ranked, lambda keep: quantize(keep, log=quiet), score, score(net), 5.0, True, quiet
    )
    # Every layer INT8 misses; all but the last in FP32 meets it (it can be met); then one
    # more layer at a time until the fragile one is in.
    assert [step["fp32_layers"] for step in steps] == [[], ranked[:3], ranked[:1], ranked[:2]]
    assert chosen == steps[1] and chosen["drop_points"] <= 5.0 < steps[0]["drop_points"]
    assert score(model) == pytest.approx(chosen["score"])
    # The artifact keeps the FP32 layers: loaded, it computes what the search scored.
    path = tmp_path / "int8.pt"
    save(method, model, path, images[:2], ARCHITECTURE, "histogram", tuple(ranked[:3]))
    assert score(backend(method).load(path)) == pytest.approx(chosen["score"], abs=1e-4)


@pytest.mark.slow
def test_the_search_stops_at_the_fewest_layers(setup):
    net, images, score = setup
    quantize = requantizer("pt2e", net, images.split(64), images[:2], "histogram")
    ranked = [FRAGILE, "conv1", "layer1.0.conv1", "fc"]
    _, chosen, steps = control.within_budget(
        ranked, lambda keep: quantize(keep, log=quiet), score, score(net), 5.0, True, quiet
    )
    assert [step["fp32_layers"] for step in steps] == [[], ranked[:3], [FRAGILE]]
    assert chosen is steps[-1]


@pytest.mark.slow
def test_an_impossible_budget_fails_with_the_best_reached(setup):
    net, images, score = setup
    quantize = requantizer("pt2e", net, images.split(64), images[:2], "histogram")
    ranked = [FRAGILE, "conv1", "layer1.0.conv1"]
    with pytest.raises(control.BudgetError, match=r"no choice of FP32 layers meets the accuracy "
                       r"budget of -1\.0 points: even with 2 of the 3 quantized layers in FP32 "
                       r".*best reached: .* Raise accuracy_budget"):  # fmt: skip
        control.within_budget(
            ranked, lambda keep: quantize(keep, log=quiet), score, score(net), -1.0, True, quiet
        )


def test_drops_point_the_way_the_score_goes():
    assert control.drop_points(0.90, 0.88, higher_is_better=True) == pytest.approx(2.0)
    assert control.drop_points(0.10, 0.12, higher_is_better=False) == pytest.approx(2.0)
    assert control.drop_points(0.10, 0.08, higher_is_better=False) == pytest.approx(-2.0)


def test_layers_and_their_share_of_the_work():
    net = build_model(**ARCHITECTURE)
    layers = control.quantized_layers(net, torch.zeros(2, 3, 32, 32), backend("pt2e").LAYER_TYPES)
    assert layers[0]["layer"] == "conv1" and layers[-1]["layer"] == "fc"
    # The stem: 4 output channels at 32x32, each 3x3 over 3 input channels.
    assert layers[0]["macs"] == 4 * 32 * 32 * 3 * 9
    assert layers[-1]["macs"] == 32 * 10
    assert sum(layer["macs_share"] for layer in layers) == pytest.approx(1.0)


def test_a_model_with_no_quantized_layer_is_named():
    with pytest.raises(ValueError, match="no layer this method quantizes"):
        control.sensitivity([], lambda keep: None, lambda module: 0.0, True, quiet)


def test_methods_without_layer_fallback_are_refused():
    with pytest.raises(ValueError, match="method 'qat' cannot leave chosen layers in FP32"):
        requantizer("qat", fragile_net(), [], torch.zeros(2, 3, 32, 32), None)


def test_the_snakefile_knows_the_controlled_methods():
    assert configuration.SENSITIVITY_METHODS == CONTROLLED


def test_accuracy_control_needs_a_method_and_a_task_that_take_it():
    base = {"task": "cifar10", "models": ["resnet18_cifar"], "widths": [8], "val_size": 5000,
            "calibration_sizes": [64], "node_classes": ["any"], "weights": {}}  # fmt: skip
    with pytest.raises(ValueError, match="accuracy_budget applies to methods pt2e, eager, "
                       "openvino, and `methods` holds none"):  # fmt: skip
        configuration.check_consistency({**base, "methods": ["qat"], "accuracy_budget": 0.5})
    with pytest.raises(ValueError, match="sensitivity.enabled applies to methods pt2e, eager,"):
        configuration.check_consistency(
            {**base, "methods": ["qat"], "sensitivity": {"enabled": True}}
        )
    configuration.check_consistency({**base, "methods": ["pt2e"], "accuracy_budget": 0.5})
    # A task whose Task has no validator says so (the built-in tasks all have one).
    without = TaskSpec(name="mytask", data="resources/mytask", implementation="my.task:T",
                       accuracy_control=False)  # fmt: skip
    with pytest.raises(ValueError, match="task 'mytask' has no accuracy control yet"):
        configuration.check_accuracy_control(
            {**base, "methods": ["pt2e"], "sensitivity": {"enabled": True}}, without
        )
