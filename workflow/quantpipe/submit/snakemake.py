"""The Snakemake bridge: a rule's files, params and resources become one stage's submitit job."""

import contextlib
import importlib
import sys
from pathlib import Path

from quantpipe.submit.console import log
from quantpipe.submit.executor import submit
from quantpipe.submit.signals import stop_marker


def from_snakemake(smk) -> None:
    """Entry point of workflow/scripts/submit_stage.py: a rule's files and params become kwargs."""
    stopping = stop_marker()
    if stopping and stopping.exists():
        log(f"{smk.params.stage}: not submitted: this Snakemake run is being stopped")
        raise SystemExit(1)
    kwargs = stage_kwargs(smk.input, smk.output, smk.params)
    stage = smk.params.stage
    name = job_name(stage, smk.wildcards)
    log_path = Path(smk.log[0])
    resources, folder = dict(smk.resources.items()), str(log_path.parent / "submitit")
    with open(log_path, "a") as stream, contextlib.redirect_stdout(_Tee(sys.stdout, stream)):
        if stage == "segment":  # one job array over the volume's blocks, not one job
            # By name, as StageCall runs every stage: the stage sits above this layer, and it
            # imports torch, which no other submitter (nor Snakemake) needs.
            run_as_array = importlib.import_module("quantpipe.stages.segment").run_as_array
            run_as_array(**kwargs, tasks=smk.params.tasks, resources=resources,
                         job_name=name, folder=folder, log=log)  # fmt: skip
        else:
            submit(stage, kwargs, resources, name, folder)


def stage_kwargs(input_files, output_files, params) -> dict:
    """A stage's `run` arguments: the rule's named input and output files, and params.config."""
    kwargs = {}
    for files in (input_files, output_files):
        for name, value in files.items():
            kwargs[name] = str(value) if isinstance(value, str) else [str(v) for v in value]
    if "config" in params.keys():
        kwargs["config"] = dict(params.config)
    return kwargs


def job_name(stage: str, wildcards) -> str:
    """The job's cluster name: the stage and the rule's wildcards, e.g. train-resnet18-w4-s0."""
    return "-".join([stage, *(str(v) for v in wildcards)])


class _Tee:
    """Writes to every stream: the submitter's output reaches both Snakemake and the rule's log."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> None:
        for stream in self.streams:
            stream.write(text)
            stream.flush()

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()
