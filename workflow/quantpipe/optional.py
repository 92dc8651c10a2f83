"""The optional `peers` extra: the methods that need it and the packages each imports. Torch-free,
so configuration checks it before any job."""

import importlib.util

PEER_METHODS = {
    "onnxruntime": ("onnx", "onnxruntime", "onnxscript"),
    "openvino": ("openvino", "nncf"),
}
PEERS_INSTALL = "pip install -e .[peers]"


def missing(method: str) -> list[str]:
    """The packages of peer `method` that are not installed ([] for a method of torch's own)."""
    return [name for name in PEER_METHODS.get(method, ()) if importlib.util.find_spec(name) is None]
