"""Rule export_decoder: ONNX with a parity gate (logic in fresnel.decoder.export)."""

from fresnel.decoder.export import export_onnx, held_out_inputs
from fresnel.decoder.train import final_checkpoint
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    checkpoint = final_checkpoint(snakemake.input.run)
    features, depth = held_out_inputs(checkpoint, snakemake.input.shards)
    rec.stats = export_onnx(checkpoint, snakemake.output[0], features, depth, opset=cfg["opset"],
                            atol=cfg["atol"], min_psnr=cfg["min_render_psnr"])  # fmt: skip
