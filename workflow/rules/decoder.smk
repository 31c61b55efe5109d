# The flagship decoder: train from the teacher shards, export ONNX (parity-gated), evaluate.


wildcard_constraints:
    exp="[123]",


# What `dvc metrics show` / `dvc plots show` present (paths relative to a job's outputs).
DVC_PRESENTATION = {
    "train": {"plots": [{"{out}/dvclive/plots/metrics": {"x": "step"}}, "{out}/renders.png"]},
    "evaluate": {"metrics": ["{out}/metrics.json"], "plots": ["{out}/held_out.png", "{out}/psnr.png"]},
}


rule train:
    input:
        shards="data/shards",
        code=code("train_decoder.py"),
    output:
        report(
            directory("results/decoder_exp{exp}"),
            patterns=["renders.png", "curves.png"],
            caption="../report/train.rst",
            category="Decoder",
        ),
    params:
        cfg=P("decoder"),
    resources:
        gpu=1,
    log:
        "logs/train_exp{exp}.log",
    script:
        "../scripts/train_decoder.py"


rule export_decoder:
    input:
        run="results/decoder_exp{exp}",
        shards="data/shards",
        code=code("export_decoder.py"),
    output:
        "results/decoder_exp{exp}.onnx",
    params:
        cfg=P("export"),
    log:
        "logs/export_decoder_exp{exp}.log",
    script:
        "../scripts/export_decoder.py"


rule evaluate:
    input:
        onnx="results/decoder_exp{exp}.onnx",
        run="results/decoder_exp{exp}",
        shards="data/shards",
        code=code("evaluate_decoder.py"),
    output:
        report(
            directory("results/decoder_exp{exp}_eval"),
            patterns=["held_out.png", "psnr.png", "per_image.csv"],
            caption="../report/evaluate.rst",
            category="Decoder",
        ),
    params:
        cfg=P("decoder"),
    log:
        "logs/evaluate_exp{exp}.log",
    script:
        "../scripts/evaluate_decoder.py"
