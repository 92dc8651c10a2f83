"""Task isbi2012_em's implementation: membrane U-Nets on the ISBI 2012 stack."""

import torch

from quantpipe.tasks.base import Task
from quantpipe.tasks.isbi2012_em import benchmark, sources, train, validation
from quantpipe.tasks.isbi2012_em.data import load_split
from quantpipe.tasks.isbi2012_em.data import prepare as write_volume
from quantpipe.tasks.isbi2012_em.summary import document, render_figures, summarize


class Isbi2012Em(Task):
    def prepare(self, data: str, config: dict, log=print) -> dict:
        """Fill the machine's data cache if it lacks the ISBI 2012 stack (QUANTPIPE_DATA, the
        config's copy, the download), then write it to `data` as a verified Zarr volume; `cache`
        says where the cache's copy came from."""
        cache = sources.cached(
            copy=config.get("isbi2012_copy", ""),
            url=config.get("isbi2012_url", sources.ISBI2012_URL),
            allow_download=config.get("allow_download", True),
            log=log,
        )
        return {**write_volume(cache["path"], data, log=log), "cache": cache}

    def architecture(self, config: dict) -> dict:
        return {"name": config["model"], "width": config["width"]}

    def training(self, data: str, config: dict, net, device):
        return train.training(data, config, net, device)

    def validate(self, data: str, config: dict, net, device) -> dict:
        """Imported weights are scored as training scores its epochs (whole sections), so that
        the train record's val_pixel_error means one thing for trained and imported runs."""
        val_image, val_membrane = load_split(data, "val")
        return {"val_pixel_error": train.pixel_error(net, val_image, val_membrane, device)}

    def validator(self, data: str, config: dict, device, limit: int | None = None):
        """Tiled as the benchmark runs the model (quantpipe.tasks.isbi2012_em.validation); items
        are sections. The model runs where its weights are."""
        return validation.validator(data, config, limit)

    def calibration_inputs(self, data: str, config: dict, count: int):
        return train.calibration_patches(data, config, count)

    def example_input(self, config: dict):
        return torch.zeros(1, 1, *train.tile_shape(config))

    def row_fields(self, config: dict) -> dict:
        return {"batch_size": config["inference_batch_size"]}

    def benchmark(self, data, net, implementations, base, config, log=print):
        """The tiled volume path per implementation; CPU rows paired with the FP32 eager
        `net`."""
        return benchmark.benchmark(data, implementations, base, config, net, log)

    # The summary (quantpipe.stages.summary): the cost per cubic millimetre; report.csv's rows
    # hold all it needs.

    def summary_table(self, report, config_digest, benchmark_metrics, predictions, data, config):
        return summarize(report, config_digest), None

    def summary_document(self, table, extra, facts, figures):
        return document(table, facts, figures)

    def summary_figures(self, table, extra, footer):
        return render_figures(table, footer)
