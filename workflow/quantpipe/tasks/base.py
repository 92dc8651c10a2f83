"""What a task is: one problem (its data, loss, quality metrics, how a model is measured, its
report columns and summary) behind one interface, so that no stage names a task.

A task comes in two halves:

- `TaskSpec`, torch-free facts the Snakefile needs to build the DAG: where prepare_data puts the
  data, the built-in models and quantize methods it takes, which config keys each stage reads,
  the summary's figures, whether the segment stage applies, and the checks across keys that run
  before any job. The Snakefile imports it at every parse, so it must stay cheap.
- `Task`, the torch half the stages call inside their jobs: prepare the data, training batches
  and loss, validation (also of imported weights), calibration inputs, an example input, how one
  model variant is measured, the summary tables and figures.

`SPEC.implementation` names the Task class as "package.module:Class". A user's own task is
`task: your.module:YOUR_SPEC` in config.yaml, a TaskSpec whose implementation is their Task;
quantpipe.tasks.spec() and load() resolve both built-in names and references.

A minimal task (see docs/your_model.md, "Your own task"):

    # mytask/spec.py: torch-free
    SPEC = TaskSpec(name="mytask", data="resources/mytask", implementation="mytask.task:MyTask",
                    models=(), references=True)

    # mytask/task.py
    class MyTask(Task):
        def prepare(self, data, config, log): ...        # write verified data under `data`
        def training(self, data, config, device): ...    # a Training: batches, loss, validate
        def calibration_inputs(self, data, config, count): ...
        def benchmark(self, data, variant, config, log): ...   # rows and predictions
        def summary_table(self, report, config_digest, benchmark_metrics, predictions, data,
                          config): ...                         # summary.csv's table, extra
        def summary_document(self, table, extra, facts, figures): ...  # summary.md
        def summary_figures(self, table, extra, footer): ...   # the figures by name
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The config sections whose keys a stage reads, unless a task says otherwise (TaskSpec.settings).
STAGE_SECTIONS = ("train", "quantize", "benchmark")


@dataclass(frozen=True)
class TaskSpec:
    """Torch-free facts about a task, read by the Snakefile (workflow/rules/common.smk).

    name: the task's one name: results/prepare_data/{name}.json, logs/prepare_data/{name}.log.
    data: the folder prepare_data writes, which every later stage reads (resources/...).
    implementation: "package.module:Class" of its Task.
    models: the built-in models it trains (quantpipe.models).
    references: whether it takes models by reference (torchvision.NAME, pkg.module:callable).
    methods: the quantize methods it supports; None for all of quantpipe.quantize.METHODS.
    gpu_precisions: whether its GPU benchmark runs bf16 and fp16 beside fp32.
    segment_settings: for a volume task, a function of (config, model) that gives the segment
        stage's config (quantpipe.stages.segment); None where the stage does not apply.
    figures: the summary's figure names (results/summary/{name}.png and .svg).
    data_keys: the keys of the config's `data` section its prepare_data reads.
    data_inputs: a function of the config that gives the files prepare_data reads (a user's
        folder), so that a changed or added file reruns it; None where it fetches its own.
    settings: per stage (train, quantize, benchmark; "data" for prepare_data; "validation" for
        what Task.validator reads beyond the run and quantize settings, which the sensitivity
        stage and the budgeted quantize add), a function of the config that gives what the
        stage reads; the default is the config section of that name (prepare_data: data_keys of
        `data`; validation: nothing). A stage reruns only when what it reads changes.
    run_keys: config keys every stage of one run reads (e.g. num_classes, val_size).
    report_columns: the report's columns of this task's measurements (benchmark row keys).
    quality: those of them that measure quality; the report adds `{name}_delta` to FP32 eager.
    rate: the report column of throughput, which speedups divide.
    validation_score: the train record's score, reported as `{name}_fp32`.
    validation_higher_is_better: which way that score is better (accuracy: up; error: down).
    accuracy_control: whether its Task scores INT8 models on validation (Task.validator), as
        accuracy_budget and the sensitivity stage need.
    check: a function of the config that raises ValueError for settings that cannot run.
    """

    name: str
    data: str
    implementation: str
    models: tuple[str, ...] = ()
    references: bool = False
    methods: tuple[str, ...] | None = None
    gpu_precisions: bool = False
    segment_settings: Callable[[dict, str], dict] | None = None
    figures: tuple[str, ...] = ()
    data_keys: tuple[str, ...] = ()
    data_inputs: Callable[[dict], list[str]] | None = None
    settings: Mapping[str, Callable[[dict], dict]] = field(default_factory=dict)
    run_keys: tuple[str, ...] = ()
    report_columns: tuple[str, ...] = ()
    quality: tuple[str, ...] = ()
    rate: str = "images_per_s"
    validation_score: str = "val_accuracy"
    validation_higher_is_better: bool = True
    accuracy_control: bool = True
    check: Callable[[dict], None] | None = None

    def stage_settings(self, config: dict, stage: str) -> dict:
        """What the stage of config section `stage` reads, for this task ("validation": what
        its validator adds; no section of its own)."""
        if stage in self.settings:
            return self.settings[stage](config)
        return {} if stage == "validation" else dict(config[stage])

    def input_files(self, config: dict) -> list[str]:
        """The files prepare_data reads, as the rule's inputs (data_inputs)."""
        return self.data_inputs(config) if self.data_inputs else []

    def data_settings(self, config: dict) -> dict:
        """prepare_data's settings: this task's keys of `data`, so another task's change
        nothing here."""
        if "data" in self.settings:
            return self.settings["data"](config)
        return {key: config["data"][key] for key in self.data_keys if key in config["data"]}


class Task:
    """The torch half of a task. Subclasses implement the methods their stages call; each takes
    paths and plain config and returns plain data, like the stages themselves."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec

    def prepare(self, data: str, config: dict, log=print) -> dict:
        """Fill the folder `data` with verified data, as config's `data` section says (through
        the machine's cache, quantpipe.datacache); the record, to which the prepare_data stage
        adds its own keys (stage, config, provenance)."""
        raise NotImplementedError

    def architecture(self, config: dict) -> dict:
        """quantpipe.models.build.build_model's arguments for the run `config`, saved with the
        weights so that later stages rebuild the model without the config."""
        raise NotImplementedError

    def training(self, data: str, config: dict, net, device):
        """The quantpipe.engine.Training of one run: optimizer, batches, loss, validation."""
        raise NotImplementedError

    def validate(self, data: str, config: dict, net, device) -> dict:
        """The validation scores of `net` as it stands, named as its Training's: what the train
        record keeps for imported weights (config `weights`), which are not trained here."""
        raise NotImplementedError(f"task {self.spec.name!r} cannot import trained weights")

    def validator(self, data: str, config: dict, device, limit: int | None = None):
        """validate() for many models of one run (accuracy control scores dozens of INT8
        variants): the split read once, a function `(model, items=None) -> scores` of a model
        and optionally the indices of the items to score (NNCF's accuracy control ranks on
        subsets), with the number of items as its attribute `items`. `limit`: only the first
        `limit` items of the validation split (a fixed subset); None: all of it."""
        raise NotImplementedError(
            f"task {self.spec.name!r} has no accuracy control yet (accuracy_budget, sensitivity)"
        )

    def normalization(self, data: str, config: dict) -> dict:
        """{"mean", "std"}: the per-channel statistics the run's inputs are normalised with (a
        `weights` entry's, else the task's own), for the record; {} where there are none."""
        return {}

    def calibration_inputs(self, data: str, config: dict, count: int):
        """`count` inputs from the training split (never validation or test), as the model
        takes them, for INT8 calibration."""
        raise NotImplementedError

    def fine_tune_data(self, data: str, config: dict):
        """(inputs, targets) of the training split for quantization-aware fine-tuning."""
        raise NotImplementedError(f"task {self.spec.name!r} has no quantization-aware training")

    def example_input(self, config: dict):
        """One batch-1 input of the shape the model takes (peer runtimes export with it)."""
        raise NotImplementedError

    def row_fields(self, config: dict) -> dict:
        """What every benchmark row of this task says beyond the variant's own fields."""
        return {}

    def benchmark(
        self, data: str, net, implementations, base: dict, config: dict, log=print
    ) -> tuple[list[dict], dict[str, Any], dict]:
        """Measure each (label, device, callable module, size in bytes) of `implementations`,
        one variant's (`net` is the trained FP32 model, `base` what every row says): (rows,
        predictions per label for the summary, anything else the record keeps)."""
        raise NotImplementedError

    # The summary stage (quantpipe.stages.summary) calls these three in turn; quantpipe.reporting
    # holds what they share (statistics, aggregation over seeds, document blocks, figure layout).

    def summary_table(
        self,
        report,
        config_digest: str,
        benchmark_metrics: list[str],
        predictions: list[str],
        data: str,
        config: dict,
    ) -> tuple[Any, Any]:
        """report.csv's rows (a DataFrame) summarized over seeds, one row per configuration with
        `config_digest` in it: (summary.csv's table, what summary_figures needs beside it).
        benchmark_metrics and predictions are the benchmark stage's files of every variant."""
        raise NotImplementedError

    def summary_document(self, table, extra, facts: dict, figures: dict[str, str]) -> list[tuple]:
        """summary.md's blocks (quantpipe.reporting.document) from the table; extra:
        summary_table's second value; facts: the provenance
        (quantpipe.reporting.document.provenance); figures: name -> PNG path relative to
        summary.md."""
        raise NotImplementedError

    def summary_figures(self, table, extra, footer: str) -> dict:
        """Each figure of spec.figures by name (a matplotlib Figure), `footer` on each; extra:
        summary_table's second value."""
        raise NotImplementedError
