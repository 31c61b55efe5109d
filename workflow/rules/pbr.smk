# NeuroPBR (guide 002): PBR materials -> multi-view teacher -> fp16 teacher shards ->
# distilled student -> Core ML .mlpackage and ONNX, plus an evaluation of both models.
# Later stages use each run's final weights (fresnel.training.final_checkpoint: latest*.pth),
# never the checkpoint with the best validation loss: the held-out materials are monitored,
# not used to choose.

rule pbr_dataset:
    input:
        unpack(sources("pbr.dataset")),
        code=code("pbr_dataset.py"),
    output:
        directory("data/pbr"),
    params:
        cfg=P("pbr.dataset"),
    threads: MODEL_THREADS
    log:
        "logs/pbr_dataset.log",
    script:
        "../scripts/pbr_dataset.py"


rule pbr_teacher:
    input:
        unpack(sources("pbr.teacher")),
        data="data/pbr",
        code=code("pbr_teacher.py"),
    output:
        report(
            directory("results/pbr_teacher"),
            patterns=["curves.png"],
            caption="../report/pbr_teacher.rst",
            category="NeuroPBR",
        ),
    params:
        cfg=P("pbr.teacher"),
    resources:
        **gpu_job("pbr_teacher"),
    threads: MODEL_THREADS
    log:
        "logs/pbr_teacher.log",
    script:
        "../scripts/pbr_teacher.py"


rule pbr_teacher_shards:
    input:
        data="data/pbr",
        teacher="results/pbr_teacher",
        code=code("pbr_teacher_shards.py"),
    output:
        directory("data/pbr_shards"),
    params:
        cfg=P("pbr.teacher_shards"),
    resources:
        **gpu_job("pbr_teacher_shards"),
    threads: MODEL_THREADS
    log:
        "logs/pbr_teacher_shards.log",
    script:
        "../scripts/pbr_teacher_shards.py"


rule pbr_student:
    input:
        unpack(sources("pbr.student")),
        data="data/pbr",
        shards="data/pbr_shards",
        code=code("pbr_student.py"),
    output:
        report(
            directory("results/pbr_student"),
            patterns=["curves.png"],
            caption="../report/pbr_student.rst",
            category="NeuroPBR",
        ),
    params:
        cfg=P("pbr.student"),
    resources:
        **gpu_job("pbr_student"),
    threads: MODEL_THREADS
    log:
        "logs/pbr_student.log",
    script:
        "../scripts/pbr_student.py"


rule pbr_coreml:
    input:
        student="results/pbr_student",
        code=code("pbr_coreml.py"),
    output:
        directory("results/pbr_student.mlpackage"),
    params:
        cfg=P("pbr.coreml"),
    threads: 1
    log:
        "logs/pbr_coreml.log",
    script:
        "../scripts/pbr_coreml.py"


rule pbr_onnx:
    input:
        student="results/pbr_student",
        code=code("pbr_onnx.py"),
    output:
        "results/pbr_student.onnx",
    params:
        cfg=P("pbr.onnx"),
    threads: 1
    log:
        "logs/pbr_onnx.log",
    script:
        "../scripts/pbr_onnx.py"


rule pbr_evaluate:
    input:
        data="data/pbr",
        teacher="results/pbr_teacher",
        student="results/pbr_student",
        code=code("pbr_evaluate.py"),
    output:
        report(
            directory("results/pbr_eval"),
            patterns=["table.md", "metrics.png", "per_item.csv"],
            caption="../report/pbr_evaluate.rst",
            category="NeuroPBR",
        ),
    params:
        cfg=P("pbr.evaluate"),
    threads: MODEL_THREADS
    log:
        "logs/pbr_evaluate.log",
    script:
        "../scripts/pbr_evaluate.py"
