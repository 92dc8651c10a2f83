"""Task isbi2012_em's implementation (quantpipe.tasks.base.Task)."""

from quantpipe.tasks.base import Task
from quantpipe.tasks.isbi2012_em import sources
from quantpipe.tasks.isbi2012_em.data import prepare as write_volume


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
