# The skeleton family: toy data -> training -> the standard table.


rule skeleton_data:
    input:
        code=code("skeleton_data.py"),
    output:
        "data/skeleton/toy.pt",
    params:
        cfg=P("skeleton.data"),
    threads: 1
    log:
        "logs/skeleton_data.log",
    script:
        "../scripts/skeleton_data.py"


rule skeleton_train:
    input:
        data="data/skeleton/toy.pt",
        code=code("skeleton_train.py"),
    output:
        directory("results/skeleton/run"),
    params:
        cfg=P("skeleton.train"),
    resources:
        **gpu_job("skeleton_train"),
    threads: MODEL_THREADS
    log:
        "logs/skeleton_train.log",
    script:
        "../scripts/skeleton_train.py"


rule skeleton_evaluate:
    input:
        run="results/skeleton/run",
        data="data/skeleton/toy.pt",
        code=code("skeleton_evaluate.py"),
    output:
        directory("results/skeleton/eval"),
    threads: 1
    log:
        "logs/skeleton_evaluate.log",
    script:
        "../scripts/skeleton_evaluate.py"
