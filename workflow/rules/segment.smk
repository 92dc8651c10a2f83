# A volume task (TaskSpec.segment_settings): the whole volume segmented block by block as ONE job
# array (quantpipe.stages.segment.run_as_array), the way a volume too large for one job is processed.
rule segment:
    input:
        unpack(segment_inputs),
    output:
        segmentation=directory(f"results/segment/{RUN}/{{variant}}/membrane.zarr"),
        metrics=f"results/segment/{RUN}/{{variant}}/metrics.json",
    log:
        f"logs/segment/{RUN}/{{variant}}.log",
    wildcard_constraints:
        variant="fp32-cpu|int8-cpu-[a-z0-9]+-[a-z_]+-c[0-9]+(-budget)?",
    conda:
        ENV
    params:
        stage="segment",
        config=segment_config,
        tasks=config["em"]["array_tasks"],
    script:
        SUBMIT
