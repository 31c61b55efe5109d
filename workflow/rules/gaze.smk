# GazeGaussian (guide 001): synthetic ETH-XGaze subjects -> step 1 MeshHead -> step 2
# GazeGaussian per ablation variant (DiT vs U-Net, VAE on/off, orthogonality on/off; same seed
# and budget), on a shared VAE and a shared angular-loss estimator -> redirection samples and
# metrics, measured by an estimator trained on the test subjects only -> one ablation table.


wildcard_constraints:
    gaze_variant="|".join(config["gaze"]["variants"]),
    estimator_split="train|test",


rule gaze_synthetic:
    input:
        code=code("gaze_synthetic.py"),
    output:
        directory("data/gaze/xgaze"),
    params:
        cfg=P("gaze.synthetic"),
    threads: MODEL_THREADS
    log:
        "logs/gaze_synthetic.log",
    script:
        "../scripts/gaze_synthetic.py"


rule gaze_meshhead:
    input:
        data="data/gaze/xgaze",
        code=code("gaze_meshhead.py"),
    output:
        directory("results/gaze/meshhead"),
    params:
        cfg=P("gaze.meshhead"),
    resources:
        **gpu_job("gaze_meshhead"),
    threads: MODEL_THREADS
    log:
        "logs/gaze_meshhead.log",
    script:
        "../scripts/gaze_meshhead.py"


rule gaze_estimator:
    input:
        data="data/gaze/xgaze",
        code=code("gaze_estimator.py"),
    output:
        directory("results/gaze/estimator_{estimator_split}"),
    params:
        cfg=P("gaze.estimator"),
    resources:
        **gpu_job("gaze_estimator"),
    threads: MODEL_THREADS
    log:
        "logs/gaze_estimator_{estimator_split}.log",
    script:
        "../scripts/gaze_estimator.py"


rule gaze_vae:
    input:
        data="data/gaze/xgaze",
        code=code("gaze_vae.py"),
    output:
        directory("results/gaze/vae"),
    params:
        cfg=P("gaze.vae"),
    resources:
        **gpu_job("gaze_vae"),
    threads: MODEL_THREADS
    log:
        "logs/gaze_vae.log",
    script:
        "../scripts/gaze_vae.py"


rule gaze_train:
    input:
        data="data/gaze/xgaze",
        meshhead="results/gaze/meshhead",
        estimator="results/gaze/estimator_train",
        vae="results/gaze/vae",
        code=code("gaze_train.py"),
    output:
        directory("results/gaze/runs/{gaze_variant}"),
    params:
        cfg=merged("gaze.train", "gaze.variants.{gaze_variant}"),
    resources:
        **gpu_job("gaze_train"),
    threads: MODEL_THREADS
    log:
        "logs/gaze_train_{gaze_variant}.log",
    script:
        "../scripts/gaze_train.py"


rule gaze_evaluate:
    input:
        run="results/gaze/runs/{gaze_variant}",
        data="data/gaze/xgaze",
        estimator="results/gaze/estimator_test",
        code=code("gaze_evaluate.py"),
    output:
        report(
            directory("results/gaze/eval/{gaze_variant}"),
            patterns=["*.png"],
            caption="../report/gaze_evaluate.rst",
            category="GazeGaussian",
            subcategory="{gaze_variant}",
        ),
    params:
        cfg=P("gaze.evaluate"),
    threads: MODEL_THREADS
    log:
        "logs/gaze_evaluate_{gaze_variant}.log",
    script:
        "../scripts/gaze_evaluate.py"


rule gaze_ablation:
    input:
        evaluations=expand("results/gaze/eval/{gaze_variant}", gaze_variant=config["gaze"]["variants"]),
        runs=expand("results/gaze/runs/{gaze_variant}", gaze_variant=config["gaze"]["variants"]),
        code=code("gaze_ablation.py"),
    output:
        report(
            directory("results/gaze/ablation"),
            patterns=["table.md", "table.png"],
            caption="../report/gaze_ablation.rst",
            category="GazeGaussian",
        ),
    params:
        cfg=P("gaze", "variants"),
    threads: 1
    log:
        "logs/gaze_ablation.log",
    script:
        "../scripts/gaze_ablation.py"
