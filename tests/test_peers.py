"""The peer runtimes (ONNX Runtime, OpenVINO) as quantize backends, from the optional `peers` extra.

Round trips skip, with the reason, where the extra is not installed; the message that names the
install command is tested everywhere (by hiding the packages).
"""

import importlib.util

import pytest
import torch
from quantpipe import optional
from quantpipe.configuration import check_consistency
from quantpipe.models.build import build_model
from quantpipe.optional import PEER_METHODS
from quantpipe.quantize import backend
from quantpipe.quantize.calibration import NAMES
from test_quantize import calibration, relative_error, trained_like

PEERS = sorted(PEER_METHODS)


def needs(method: str):
    absent = optional.missing(method)
    return pytest.mark.skipif(
        bool(absent),
        reason=f"the `peers` extra is not installed ({', '.join(absent)}): "
        f"{optional.PEERS_INSTALL}",
    )


def peer_params():
    return [pytest.param(method, marks=needs(method)) for method in PEERS]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return trained_like(build_model("resnet18_cifar", width=8))


@pytest.mark.slow
@pytest.mark.parametrize("method", peer_params())
def test_peer_round_trip_stays_close_to_fp32(method, tiny, tmp_path):
    module = backend(method)
    x = calibration(seed=2, count=1)[0]
    with torch.no_grad():
        reference = tiny(x)
    quantized = module.quantize(tiny, calibration(count=2), x[:2], log=lambda _: None)
    module.save(quantized, tmp_path / "int8.pt", x[:2])
    in_memory = module.compile_for_cpu(quantized)(x)
    loaded = module.compile_for_cpu(module.load(tmp_path / "int8.pt"))
    output = loaded(x)
    assert output.shape == reference.shape and output.dtype == torch.float32
    assert relative_error(reference, output) < 0.25
    torch.testing.assert_close(output, in_memory)
    assert loaded(x[:1]).shape == reference[:1].shape  # the batch size stayed dynamic
    # INT8 weights: the artifact is far smaller than the FP32 weights it came from
    fp32_bytes = sum(p.numel() * 4 for p in tiny.parameters())
    assert (tmp_path / "int8.pt").stat().st_size < 0.6 * fp32_bytes


@pytest.mark.slow
@pytest.mark.parametrize("method", peer_params())
def test_peer_fp32_matches_torch(method, tiny):
    x = calibration(seed=3, count=1)[0]
    runtime, size = backend(method).fp32_for_cpu(tiny, x[:2])
    with torch.no_grad():
        torch.testing.assert_close(runtime(x), tiny(x), rtol=1e-3, atol=1e-3)
    assert size > sum(p.numel() * 4 for p in tiny.parameters()) * 0.9


@pytest.mark.slow
@pytest.mark.parametrize("method", peer_params())
def test_peer_calibration_methods_map_to_their_own_settings(method, tiny, tmp_path):
    module = backend(method)
    for name in NAMES:
        assert module.settings(name)  # every name means something to every backend
    x = calibration(seed=2, count=1)[0]
    with torch.no_grad():
        reference = tiny(x)
    for name in ("minmax_per_tensor_reduce_range", "moving_average_full_range"):
        quantized = module.quantize(
            tiny, calibration(count=2), x[:2], log=lambda _: None, calibration=name
        )
        assert relative_error(reference, module.compile_for_cpu(quantized)(x)) < 0.3
    chosen = module.settings("minmax_per_tensor_reduce_range")
    assert chosen["per_channel"] is False
    default = module.settings("histogram")
    assert default["per_channel"] is True


@pytest.mark.slow
@pytest.mark.skipif(bool(optional.missing("onnxruntime")), reason=f"needs {optional.PEERS_INSTALL}")
def test_onnxruntime_uses_u8s8_qdq_per_channel(tiny):
    import onnx
    from quantpipe.quantize import onnxruntime as qort

    x = calibration(count=1)[0]
    model = qort.quantize(tiny, calibration(count=1), x[:2], log=lambda _: None)
    initializers = {init.name: init for init in model.graph.initializer}
    quantize_nodes = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert quantize_nodes and any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    # activations are quantized at run time, to uint8 (U8S8); weights are stored as int8
    activation_types = {initializers[node.input[2]].data_type for node in quantize_nodes}
    assert activation_types == {onnx.TensorProto.UINT8}
    int8_weights = [i for i in initializers.values() if i.data_type == onnx.TensorProto.INT8]
    per_channel = [i for i in int8_weights if len(i.dims) == 4]
    assert per_channel and all(
        len(initializers[name].dims) == 1
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in {i.name for i in per_channel}
        for name in [node.input[1]]
    )  # one scale per output channel
    assert qort.settings()["activation_type"] == "QUInt8"


@pytest.mark.parametrize("method", PEERS)
def test_a_missing_peer_names_the_install_command(method, monkeypatch):
    real = importlib.util.find_spec
    hidden = set(PEER_METHODS[method])
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e \.\[peers\]"):
        backend(method)
    config = {"val_size": 5000, "calibration_sizes": [512], "methods": ["pt2e", method]}
    with pytest.raises(ValueError, match=rf"{method}.*pip install -e \.\[peers\]"):
        check_consistency(config)
    check_consistency({**config, "methods": ["pt2e", "eager"]})  # torch methods need no extra
