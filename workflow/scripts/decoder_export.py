"""Rule decoder_export: ONNX with a parity gate (logic in fresnel.decoder.export)."""

from fresnel.decoder.export import export_onnx, held_out_inputs
from fresnel.decoder.train import checkpoint_names
from fresnel.pipeline.adapter import stage
from fresnel.training import final_checkpoint

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    names = checkpoint_names(int(snakemake.wildcards.exp))
    checkpoint = final_checkpoint(snakemake.input.run, names)
    features, depth = held_out_inputs(checkpoint, snakemake.input.shards)
    rec.stats = export_onnx(checkpoint, snakemake.output[0], features, depth, opset=cfg["opset"],
                            atol=cfg["atol"], min_psnr=cfg["min_render_psnr"])  # fmt: skip
