"""Task isbi2012_em's implementation: membrane U-Nets on the ISBI 2012 stack."""

import torch

from quantpipe.tasks.base import Task
from quantpipe.tasks.isbi2012_em import benchmark, train


class Isbi2012Em(Task):
    def architecture(self, config: dict) -> dict:
        return {"name": config["model"], "width": config["width"]}

    def training(self, data: str, config: dict, net, device):
        return train.training(data, config, net, device)

    def calibration_inputs(self, data: str, config: dict, count: int):
        return train.calibration_patches(data, config, count)

    def example_input(self, config: dict):
        return torch.zeros(1, 1, *train.patch_shape(config, config["tile"]))

    def row_fields(self, config: dict) -> dict:
        return {"batch_size": config["inference_batch_size"]}

    def benchmark(self, data, net, implementations, base, config, log=print):
        return benchmark.benchmark(data, implementations, base, config, log)
