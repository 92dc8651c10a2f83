# Local: login nodes have the network, compute nodes often do not.
localrules:
    prepare_data,


rule prepare_data:
    output:
        data=directory(DATA),
        metrics="results/prepare_data/cifar10.json",
    log:
        "logs/prepare_data/cifar10.log",
    conda:
        ENV
    resources:
        # Runs where Snakemake runs, never on a compute node: an empty partition means local.
        slurm_partition="",
    params:
        stage="prepare_data",
        config=config["data"],
    script:
        SUBMIT
