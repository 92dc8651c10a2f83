# One job per node class and variant: the profile sends each node class where it says
# (profiles/slurm/config.yaml, set-resources: benchmark:, by wildcards.node_class).
rule benchmark:
    input:
        unpack(benchmark_inputs),
    output:
        metrics=f"results/benchmark/{{node_class}}/{RUN}/{{variant}}/metrics.json",
        predictions=f"results/benchmark/{{node_class}}/{RUN}/{{variant}}/predictions.pt",
    log:
        f"logs/benchmark/{{node_class}}/{RUN}/{{variant}}.log",
    wildcard_constraints:
        variant="fp32-cpu(-[a-z0-9]+)?|int8-cpu-[a-z0-9]+-[a-z_]+-c[0-9]+(-budget)?",
    conda:
        ENV
    params:
        stage="benchmark",
        config=benchmark_config,
    script:
        SUBMIT


# The same stage on a GPU node; a separate rule so profiles can send it to the GPU partition. It
# runs once, as node class `gpu`, whatever CPU node classes the config sweeps.
# One variant per precision: fp32, and bf16 / fp16 under autocast (quantpipe.precision).
use rule benchmark as benchmark_gpu with:
    input:
        unpack(benchmark_inputs),
    wildcard_constraints:
        variant="(fp32|bf16|fp16)-gpu",
        node_class=GPU_CLASS,
