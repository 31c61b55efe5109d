# VPOG (guide 003): templates of every object -> query shards (train, test) -> training
# (Lightning, on the Hydra config that params.yaml `vpog.train` overrides) -> BOP AR and
# retrieval on the held-out queries, against a random-template baseline.



rule vpog_templates:
    input:
        code=code("vpog_templates.py"),
    output:
        directory("data/vpog/templates"),
    params:
        cfg=P("vpog.templates"),
        objects=P("vpog", "objects"),
    threads: MODEL_THREADS
    log:
        "logs/vpog_templates.log",
    script:
        "../scripts/vpog_templates.py"


rule vpog_queries:
    input:
        code=code("vpog_queries.py"),
    output:
        directory("data/vpog/{split}_pbr_web"),
    wildcard_constraints:
        split="train|test",
    params:
        cfg=P("vpog.queries"),
        objects=P("vpog", "objects"),
    threads: MODEL_THREADS
    log:
        "logs/vpog_queries_{split}.log",
    script:
        "../scripts/vpog_queries.py"


rule vpog_train:
    input:
        templates="data/vpog/templates",
        queries="data/vpog/train_pbr_web",
        code=code("vpog_train.py"),
    output:
        directory("results/vpog/run"),
    params:
        cfg=P("vpog.train"),
    resources:
        **gpu_job("vpog_train"),
    threads: MODEL_THREADS
    log:
        "logs/vpog_train.log",
    script:
        "../scripts/vpog_train.py"


rule vpog_evaluate:
    input:
        run="results/vpog/run",
        templates="data/vpog/templates",
        queries="data/vpog/test_pbr_web",
        code=code("vpog_evaluate.py"),
    output:
        report(
            directory("results/vpog/eval"),
            patterns=["table.md", "retrieval.png", "flow.png"],
            caption="../report/vpog_evaluate.rst",
            category="VPOG",
        ),
    params:
        cfg=P("vpog.evaluate"),
    threads: MODEL_THREADS
    log:
        "logs/vpog_evaluate.log",
    script:
        "../scripts/vpog_evaluate.py"
