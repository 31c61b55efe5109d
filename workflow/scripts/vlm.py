"""Rule vlm: one density map per image from a VLM or the offline provider (fresnel.vlm)."""

from fresnel.pipeline.adapter import stage
from fresnel.vlm.stage import run

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    rec.stats = run(
        snakemake.input.images, snakemake.output[0],
        provider=cfg["provider"], url=cfg["vlm_url"], model=cfg["model"],
        grid_size=cfg["vlm_grid_size"], smart=cfg["smart"], on_failure=cfg["on_failure"],
        size=cfg["density_size"], temperature=cfg["temperature"], max_tokens=cfg["max_tokens"],
        connect_timeout=cfg["connect_timeout"], read_timeout=cfg["read_timeout"],
        max_in_flight=cfg["max_in_flight"], retries=cfg["retries"],
        api_key_env=cfg["api_key_env"],
    )  # fmt: skip
