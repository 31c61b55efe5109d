# Data stages of the flagship chain: images in, training-ready teacher shards out.


rule download:
    output:
        directory("data/raw"),
    input:
        unpack(sources("download")),
        code=code("download.py"),
    params:
        cfg=P("download"),
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
    log:
        "logs/matte.log",
    script:
        "../scripts/matte.py"


rule export_dinov2:
    input:
        code=code("export_backbone.py"),
    output:
        "models/dinov2_small.onnx",
    params:
        cfg=P("backbones.dinov2"),
        kind="dinov2",
    log:
        "logs/export_dinov2.log",
    script:
        "../scripts/export_backbone.py"


rule export_depth:
    input:
        code=code("export_backbone.py"),
    output:
        "models/depth_anything_v2_small.onnx",
    params:
        cfg=P("backbones.depth"),
        kind="depth",
    log:
        "logs/export_depth.log",
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
        gpu=1,
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
    log:
        "logs/vlm.log",
    script:
        "../scripts/vlm.py"


rule shards:
    input:
        unpack(vlm_density_input),
        images="data/matted",
        features="data/features",
        code=code("shards.py"),
    output:
        directory("data/shards"),
    params:
        cfg=P("shards"),
    log:
        "logs/shards.log",
    script:
        "../scripts/shards.py"
