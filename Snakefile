# quantpipe: train a ResNet18 on CIFAR-10, quantize it to INT8, benchmark FP32 (GPU, CPU) against
# INT8 (CPU), and merge every measurement into results/report.csv. Every stage runs through
# submitit: locally by default, on Slurm with `snakemake --profile slurm` (docs/slurm.md).
# `task: isbi2012_em` runs the same rules on membrane U-Nets for serial-section EM instead
# (workflow/experiments/isbi2012_em.yaml): the task's plug-in (quantpipe.tasks) says what each
# stage does for it.

from snakemake.utils import min_version, validate

from quantpipe.configuration import check_consistency, coerce_to_schema
from quantpipe.submit import cancel_jobs_on_sigterm

min_version("9.0")


configfile: "config.yaml"


# --config values arrive as strings ("seeds=[0,1]" gives ["0", "1"]): type them by the schema.
coerce_to_schema(config, "workflow/schemas/config.schema.yaml")
validate(config, "workflow/schemas/config.schema.yaml", set_default=True)
check_consistency(config)


# Stopping Snakemake with SIGTERM cancels the cluster jobs of the run (Ctrl-C already does): with
# profiles/slurm (the executor plugin quantpipe) Snakemake holds those jobs itself and SIGTERM
# stops it as Ctrl-C does; with profiles/local each rule's submitter is told to cancel its job.
onstart:
    cancel_jobs_on_sigterm(workflow.executor_plugin.name == "quantpipe")


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare_data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sensitivity.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/segment.smk"


# Output paths, with RUN = {model}-w{width}-s{seed} (a model by reference: {folder}-s{seed}, e.g.
# torchvision.mobilenet_v3_small-s0, pkg.nets.make_net-s0 for pkg.nets:make_net):
#   resources/cifar-10-batches-py/                     prepare_data (verified CIFAR-10), or
#   resources/isbi2012_em.zarr/                        (task isbi2012_em) the verified EM stack
#   results/prepare_data/{task}.json                   prepare_data record (cifar10.json, ...)
#   results/train/RUN/{model.pt,metrics.json}          FP32 weights (+ checkpoints/ for resume)
#   results/quantize/RUN/{method}-{calibration_method}-c{calibration_size}/{int8.pt,metrics.json}
#       (int8.pt: the backend's own format; an ONNX file or a zipped OpenVINO IR for the peers)
#   results/quantize/RUN/{method}-{calibration_method}-c{size}-budget/   (config accuracy_budget)
#       the same within the budget, the layers it kept in FP32 in metrics.json
#   results/sensitivity/RUN/{method}-{calibration_method}-c{size}/{sensitivity.csv,metrics.json}
#       per-layer sensitivity (config accuracy_budget or sensitivity.enabled; pt2e and eager)
#   results/benchmark/{node_class}/RUN/{variant}/{metrics.json,predictions.pt}
#       node_class = each of config `node_classes` (default any) for the CPU variants
#                    fp32-cpu | fp32-cpu-{peer} | int8-cpu-{method}-{calibration_method}-c{size}
#                    | int8-cpu-{method}-{calibration_method}-c{size}-budget;
#                    gpu for the GPU variants {fp32,bf16,fp16}-gpu (run once)
#       (EM: predictions.pt holds each row's membrane probability of the test sections, uint8)
#   results/report.csv                                 one row per measurement
#   results/batch_sizes.csv                            batch-size curves (benchmark.batch_sizes)
#   results/summary.{csv,md}                           seed statistics, paired tests, Table 1
#   results/summary/{figure}.{png,svg}, tables.html    figures and tables for --report
#       (EM: summary.md is the cost per mm^3 table; figures quality_vs_throughput, cost_per_mm3)
#   results/segment/RUN/{fp32-cpu|int8-cpu-...}/{membrane.zarr,metrics.json}
#       (EM only) the whole stack's membrane probability, made by one job array
#   logs/<stage>/...                                   each job's log and submitit files
rule all:
    input:
        "results/report.csv",
        rules.summary.output,
        sensitivity_outputs("table"),
        [
            f"results/segment/{RUN}/{variant}/metrics.json".format(**run)
            for run in runs()
            for variant in segment_variants()
        ],
