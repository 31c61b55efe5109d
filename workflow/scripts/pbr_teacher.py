"""Rule pbr_teacher: train MultiViewPBRGenerator (logic in fresnel.pbr.train)."""

from fresnel.pbr.config import apply_overrides, get_config
from fresnel.pbr.data import dataset_dirs
from fresnel.pbr.train import train
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    config = apply_overrides(get_config(cfg["config"]), cfg.get("overrides", {}))
    input_dir, output_dir = dataset_dirs(snakemake.input.data)
    rec.stats = train(config, input_dir, output_dir, snakemake.output[0], device=rec.device)
