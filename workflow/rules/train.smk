rule train:
    input:
        unpack(train_inputs),
    output:
        model=f"results/train/{RUN}/model.pt",
        metrics=f"results/train/{RUN}/metrics.json",
    log:
        f"logs/train/{RUN}.log",
    conda:
        ENV
    params:
        stage="train",
        config=train_config,
    script:
        SUBMIT
