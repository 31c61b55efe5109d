# The flagship decoder: train from the teacher shards, export ONNX (parity-gated), evaluate.


wildcard_constraints:
    exp="[123]",


rule decoder_train:
    input:
        shards="data/shards",
        code=code("decoder_train.py"),
    output:
        report(
            directory("results/decoder_exp{exp}"),
            patterns=["renders.png", "curves.png"],
            caption="../report/decoder_train.rst",
            category="Decoder",
        ),
    params:
        cfg=P("decoder.train"),
    resources:
        **gpu_job("decoder_train"),
    threads: MODEL_THREADS
    log:
        "logs/decoder_train_exp{exp}.log",
    script:
        "../scripts/decoder_train.py"


rule decoder_export:
    input:
        run="results/decoder_exp{exp}",
        shards="data/shards",
        code=code("decoder_export.py"),
    output:
        "results/decoder_exp{exp}.onnx",
    params:
        cfg=P("decoder.export"),
    threads: 1
    log:
        "logs/decoder_export_exp{exp}.log",
    script:
        "../scripts/decoder_export.py"


rule decoder_evaluate:
    input:
        onnx="results/decoder_exp{exp}.onnx",
        run="results/decoder_exp{exp}",
        shards="data/shards",
        code=code("decoder_evaluate.py"),
    output:
        report(
            directory("results/decoder_exp{exp}_eval"),
            patterns=["held_out.png", "psnr.png", "per_item.csv"],
            caption="../report/decoder_evaluate.rst",
            category="Decoder",
        ),
    params:
        cfg=P("decoder.train", "lpips_backbone"),
    threads: MODEL_THREADS
    log:
        "logs/decoder_evaluate_exp{exp}.log",
    script:
        "../scripts/decoder_evaluate.py"
