rule benchmark:
    input:
        unpack(benchmark_inputs),
    output:
        metrics=f"results/benchmark/{RUN}/{{variant}}/metrics.json",
        predictions=f"results/benchmark/{RUN}/{{variant}}/predictions.pt",
    log:
        f"logs/benchmark/{RUN}/{{variant}}.log",
    wildcard_constraints:
        variant="fp32-cpu(-[a-z0-9]+)?|int8-cpu-[a-z0-9]+-[a-z_]+-c[0-9]+",
    conda:
        ENV
    params:
        stage="benchmark",
        config=benchmark_config,
    script:
        SUBMIT


# The same stage on a GPU node; a separate rule so profiles can send it to the GPU partition.
# One variant per precision: fp32, and bf16 / fp16 under autocast (quantpipe.precision).
use rule benchmark as benchmark_gpu with:
    input:
        unpack(benchmark_inputs),
    wildcard_constraints:
        variant="(fp32|bf16|fp16)-gpu",
