rule train:
    input:
        data=DATA,
    output:
        model=f"results/train/{RUN}/model.pt",
        metrics=f"results/train/{RUN}/metrics.json",
    log:
        f"logs/train/{RUN}.log",
    conda:
        ENV
    params:
        stage="train",
        config=lambda wildcards: {**run_config(wildcards), **task_settings("train")},
    script:
        SUBMIT
