"""NeuroPBR in fresnel: reconstruct four PBR maps (albedo, roughness, metallic, normal) of a
flat material from three rendered views, with a multi-view teacher GAN distilled into a
mobile student that exports to Core ML.

Module map:
- maps: map conventions (channels, number of views, packed 8-channel targets, PNG encoding,
  load/save).
- shader: differentiable metallic-roughness GGX shading, view / held-out lightings and the
  display tone map.
- synth: procedural tileable materials (7 families) and the on-disk dataset in the guide's
  layout, clean and dirty renders.
- data: PBRDataset (render curriculum 0/1/2), view normalisation, split by material.
- evaluate: per-map PSNR/SSIM (fresnel.metrics)/MAE/RMSE, normal angle statistics,
  re-render error under held-out lights, the mean-map baseline and the
  teacher/student/baseline report (fresnel.metrics.write_table).
- config, teacher, discriminator, losses, train: the teacher model, its presets, its loss
  and its training loop.
- teacher_shards: fp16 teacher-prediction shards for distillation.
- student_config, student: the student's options and presets; its models and checkpoints.
- student_data, distill_loss, distill: the shard-backed dataset and sampler, the
  distillation loss, and distillation training.
Training plumbing (AMP, checkpoints, run log, seeds) is fresnel.training's, options loading
fresnel.config's, metrics fresnel.metrics'.
- inference: preview a checkpoint on a dataset entry or three custom renders.
- coreml, onnx_export: export of a trained student.
- stages: the pipeline steps (dataset, training, shards, evaluation) the workflow runs.
"""
