# GaussianAvatars (guide 004): a subject's dataset -> one training job per (subject, run) ->
# its evaluation -> tables of runs (the guide's presets, its cumulative ablation, its
# sensitivity sweep). A run reads params.yaml `avatars.train` plus the flags of the additions
# it turns on, so editing one addition's flags reruns only the runs that use it.
from fresnel.avatars.options import run_options, run_param_paths

wildcard_constraints:
    subject="[A-Za-z0-9_-]+",
    avatar_run="[A-Za-z0-9_.]+",
    table="|".join(config["avatars"]["tables"]),


rule avatars_dataset:
    input:
        code=code("avatars_dataset.py"),
    output:
        directory("data/avatars/{subject}"),
    params:
        cfg=P("avatars.synthetic"),
    threads: MODEL_THREADS
    log:
        "logs/avatars_dataset_{subject}.log",
    script:
        "../scripts/avatars_dataset.py"


rule avatars_train:
    input:
        data=lambda wildcards: local_or(config["avatars"]["subjects"][wildcards.subject], f"data/avatars/{wildcards.subject}"),
        code=code("avatars_train.py"),
    output:
        directory("results/avatars/{subject}/runs/{avatar_run}"),
    params:
        cfg=lambda wildcards: Section(
            run_param_paths(config["avatars"], wildcards.avatar_run),
            run_options(config["avatars"], wildcards.avatar_run),
        ),
    resources:
        **gpu_job("avatars_train"),
    threads: MODEL_THREADS
    log:
        "logs/avatars_train_{subject}_{avatar_run}.log",
    script:
        "../scripts/avatars_train.py"


rule avatars_evaluate:
    input:
        run="results/avatars/{subject}/runs/{avatar_run}",
        data=lambda wildcards: local_or(config["avatars"]["subjects"][wildcards.subject], f"data/avatars/{wildcards.subject}"),
        code=code("avatars_evaluate.py"),
    output:
        report(
            directory("results/avatars/{subject}/eval/{avatar_run}"),
            patterns=["held_out.png"],
            caption="../report/avatars_evaluate.rst",
            category="GaussianAvatars",
            subcategory="{subject}",
        ),
    params:
        cfg=P("avatars.evaluate"),
    threads: MODEL_THREADS
    log:
        "logs/avatars_evaluate_{subject}_{avatar_run}.log",
    script:
        "../scripts/avatars_evaluate.py"


rule avatars_table:
    input:
        evaluations=lambda wc: expand(
            "results/avatars/{subject}/eval/{avatar_run}",
            subject=wc.subject,
            avatar_run=config["avatars"]["tables"][wc.table],
        ),
        code=code("avatars_table.py"),
    output:
        report(
            directory("results/avatars/{subject}/{table}"),
            patterns=["table.md", "table.png"],
            caption="../report/avatars_table.rst",
            category="GaussianAvatars",
            subcategory="{subject}",
        ),
    params:
        cfg=lambda wildcards: Section(
            [f"avatars.tables.{wildcards.table}"], {"runs": config["avatars"]["tables"][wildcards.table]}
        ),
        title=lambda wc: f"GaussianAvatars {wc.table}: {wc.subject}",
    threads: 1
    log:
        "logs/avatars_table_{subject}_{table}.log",
    script:
        "../scripts/avatars_table.py"
