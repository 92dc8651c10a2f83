"""The benchmark stage: accuracy, throughput, latency and size of one model variant.

Variants: `fp32-cpu` (eager, the study's baseline, and torch.compile; or, given a peer `method`,
that peer runtime's FP32), `fp32-gpu`, `bf16-gpu` and `fp16-gpu` (the same on CUDA, channels_last;
bf16 and fp16 under autocast, quantpipe.precision; or rows marked skipped with the reason where
CUDA or the precision is unusable) and `int8-cpu` (a quantize artifact).
Each job benchmarks one variant on one node class (config `node_classes`, which the profile maps
to nodes), and every row names the class.
Every measurement follows a warm-up and runs with as many threads as the CPUs the job was given.
What is measured is the task's (quantpipe.tasks.base.Task.benchmark): for classifiers the timed
pass over the test images, batch-1 latency and timed rounds (CPU variants paired with FP32 eager
in the same process); for the EM task timed rounds of the tiled volume path, paired the same way.
Every row records the other Slurm jobs seen on its node at the start and at the end
(quantpipe.submit.neighbours).
"""

import io
import os

import torch

from quantpipe import provenance, tasks
from quantpipe.artifacts import atomic_path, read_json, write_json
from quantpipe.models.build import load_trained
from quantpipe.precision import GPU_VARIANTS, for_precision, unusable
from quantpipe.quantize import backend, load_for_cpu
from quantpipe.submit import neighbours

VARIANTS = ("fp32-cpu", *GPU_VARIANTS, "int8-cpu")


def state_dict_bytes(module: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def implementations(
    variant: str,
    net: torch.nn.Module,
    artifact: str | None,
    method: str | None,
    example,
    budgeted: bool = False,
):
    """(method label, device, callable module, size in bytes) for each row of this variant;
    `net` is the trained FP32 model, `example` one input (peer runtimes export with it). An INT8
    model made within an accuracy budget is labelled `{method}-budget`: one more INT8
    configuration to the report and summary."""
    if variant == "int8-cpu":
        label = f"{method}-budget" if budgeted else method
        yield label, torch.device("cpu"), load_for_cpu(method, artifact), os.path.getsize(artifact)
        return
    device = torch.device("cuda" if variant in GPU_VARIANTS else "cpu")
    if method:  # a peer runtime's FP32 (ONNX Runtime, OpenVINO)
        runtime, size = backend(method).fp32_for_cpu(net, example.expand(2, *example.shape[1:]))
        yield method, device, runtime, size
        return
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    size = state_dict_bytes(net)  # FP32 weights, also under autocast
    net = for_precision(net, variant.split("-")[0])
    yield "eager", device, net, size
    yield "compiled", device, torch.compile(net), size


def run(
    model: str,
    data: str,
    metrics: str,
    predictions: str,
    config: dict,
    artifact: str | None = None,
    quantized: str | None = None,
    log=print,
) -> dict:
    """Benchmark `config['variant']`: rows to `metrics`, per-item predictions to `predictions`.
    The task measures each implementation (quantpipe.tasks.base.Task.benchmark). `quantized`:
    the INT8 artifact's quantize metrics.json, for the layers it left in FP32."""
    task = tasks.load(config.get("task"))
    threads = provenance.set_threads()
    fields = task.row_fields(config)
    if quantized:
        kept = read_json(quantized).get("accuracy_control", {}).get("fp32_layers", [])
        fields.update(accuracy_budget=config.get("accuracy_budget"), fp32_layers=len(kept))
    base, rows = start_rows(config, log, **fields)
    kept, extra = {}, {}
    if not rows:
        log(f"benchmark: {config['variant']} with {threads} threads")
        net, _ = load_trained(model)
        variants = implementations(
            config["variant"],
            net,
            artifact,
            config.get("method"),
            task.example_input(config),
            config.get("accuracy_budget") is not None,
        )
        start = neighbours.on_this_node()
        rows, kept, extra = task.benchmark(data, net, variants, base, config, log)
        seen = neighbours.row_fields(start, neighbours.on_this_node())
        if seen["neighbour_jobs"]:
            log(f"benchmark: other jobs ran on this node meanwhile: {seen['neighbour_jobs']}")
        rows = [{**row, **seen} for row in rows]
    return write_results(metrics, predictions, config, rows, kept, extra)


def start_rows(config: dict, log=print, **extra) -> tuple[dict, list[dict]]:
    """(what every row of this variant says, `extra` included; the rows when it cannot run:
    skipped, with why)."""
    variant = config["variant"]
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    base = {
        "variant": variant,
        "device": "cuda" if variant in GPU_VARIANTS else "cpu",
        "precision": variant.split("-")[0],
        "calibration_method": config.get("calibration_method"),
        "calibration_size": config.get("calibration_size"),
        **{key: config[key] for key in ("node_class", "model", "width", "seed")},
        **extra,
    }
    reason = unusable(base["precision"]) if variant in GPU_VARIANTS else None
    if not reason:
        return base, []
    log(f"benchmark: {variant} skipped: {reason}")
    return base, [
        {**base, "method": label, "status": "skipped", "reason": reason}
        for label in ("eager", "compiled")
    ]


def write_results(
    metrics: str, predictions: str, config: dict, rows: list, kept: dict, extra: dict
) -> dict:
    """Each row's predictions to `predictions`, the rows, the task's `extra` record (e.g. the
    machine's ceilings) and provenance to `metrics`."""
    with atomic_path(predictions) as tmp:
        torch.save(kept, tmp)
    record = {
        "stage": "benchmark",
        "config": config,
        "rows": rows,
        **extra,
        "provenance": provenance.collect(),
    }
    write_json(metrics, record)
    return record
