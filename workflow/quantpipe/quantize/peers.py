"""What the peer-runtime backends (ONNX Runtime, OpenVINO) share: the optional `peers` extra and a
torch-tensor-in, torch-tensor-out call, so the benchmark measures them exactly like torch modules.
"""

import numpy as np
import torch

from quantpipe.optional import PEERS_INSTALL, missing


def require(method: str) -> None:
    """Fail with the command that fixes it when a peer method's packages are not installed."""
    absent = missing(method)
    if absent:
        raise ModuleNotFoundError(
            f"method {method!r} needs {', '.join(absent)} from the optional `peers` extra: run "
            f"`{PEERS_INSTALL}` (pins in envs/peers.txt), or drop {method!r} from `methods`"
        )


def as_numpy(images: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 array sharing memory with `images` where it can."""
    return np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)


class Runtime:
    """A compiled peer model called like a torch module: (N, C, H, W) tensor in, logits out."""

    name = "peer"

    def __init__(self, run, settings: dict) -> None:
        self._run = run
        self.settings = settings

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(as_numpy(images)))

    def eval(self) -> "Runtime":
        """As a torch module's: a compiled model has no training mode to leave."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"
