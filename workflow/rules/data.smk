# Data stages of the flagship chain: images in, training-ready teacher shards out.

BACKBONES = {"dinov2_small": "dinov2", "depth_anything_v2_small": "depth"}  # file -> params.yaml backbones.<key>


wildcard_constraints:
    backbone="|".join(BACKBONES),


rule download:
    output:
        directory("data/raw"),
    input:
        unpack(sources("download")),
        code=code("download.py"),
    params:
        cfg=P("download"),
    threads: 1
    log:
        "logs/download.log",
    script:
        "../scripts/download.py"


rule matte:
    input:
        raw="data/raw",
        code=code("matte.py"),
    output:
        directory("data/matted"),
    params:
        cfg=P("matte"),
    threads: MODEL_THREADS
    log:
        "logs/matte.log",
    script:
        "../scripts/matte.py"


rule export_backbone:
    input:
        code=code("export_backbone.py"),
    output:
        "models/{backbone}.onnx",
    params:
        cfg=lambda wildcards: P(f"backbones.{BACKBONES[wildcards.backbone]}"),
        kind=lambda wildcards: BACKBONES[wildcards.backbone],
    threads: 1
    log:
        "logs/export_backbone_{backbone}.log",
    script:
        "../scripts/export_backbone.py"


rule features:
    input:
        images="data/matted",
        dinov2="models/dinov2_small.onnx",
        depth="models/depth_anything_v2_small.onnx",
        code=code("features.py"),
    output:
        directory("data/features"),
    params:
        cfg=P("features"),
    resources:
        **gpu_job("features"),
    threads: MODEL_THREADS
    log:
        "logs/features.log",
    script:
        "../scripts/features.py"


rule vlm:
    input:
        images="data/matted",
        code=code("vlm.py"),
    output:
        directory("data/vlm"),
    params:
        cfg=P("vlm"),
    threads: 1
    log:
        "logs/vlm.log",
    script:
        "../scripts/vlm.py"


rule shards:
    input:
        unpack(lambda wildcards: {"vlm": "data/vlm"} if config["vlm"]["use_vlm"] else {}),  # density maps when on
        images="data/matted",
        features="data/features",
        code=code("shards.py"),
    output:
        directory("data/shards"),
    params:
        cfg=P("shards"),
    threads: 1
    log:
        "logs/shards.log",
    script:
        "../scripts/shards.py"
