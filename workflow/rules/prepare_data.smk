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
    params:
        stage="prepare_data",
        config=config["data"],
    script:
        SUBMIT
