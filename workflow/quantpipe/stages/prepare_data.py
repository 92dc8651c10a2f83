"""prepare_data stage: the task's verified data in the folder every later stage reads.

The task (quantpipe.tasks.load(config["task"])) fills the machine's data cache first if it lacks
the data (quantpipe.datacache: a machine fetches it once), then `data` from the cache; see its
`prepare`.
"""

from quantpipe import provenance, tasks
from quantpipe.artifacts import write_json


def log(message: str) -> None:
    print(f"[prepare_data] {message}", flush=True)


def run(data: str, metrics: str, config: dict, log=log) -> dict:
    """The pipeline's stage: `config` is the experiment's `data` section (see the config schema),
    with `task` naming the task. The record says where the cache's copy came from (`cache`)."""
    task = tasks.load(config.get("task"))
    result = {
        "stage": "prepare_data",
        "config": config,
        **task.prepare(data, config, log=log),
        "provenance": provenance.collect(),
    }
    write_json(metrics, result)
    return result
