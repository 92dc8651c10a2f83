# Local: login nodes have the network, compute nodes often do not.
localrules:
    prepare_data,


rule prepare_data:
    input:
        # The files the task reads (TaskSpec.data_inputs; none where it fetches its own data): a
        # changed, added or removed file reruns prepare_data and everything after it.
        lambda wildcards: TASK.input_files(config),
    output:
        data=directory(DATA),
        metrics=f"results/prepare_data/{TASK.name}.json",
    log:
        f"logs/prepare_data/{TASK.name}.log",
    conda:
        ENV
    resources:
        # Runs where Snakemake runs, never on a compute node: an empty partition means local.
        slurm_partition="",
    params:
        stage="prepare_data",
        config=data_config(),
    script:
        SUBMIT
