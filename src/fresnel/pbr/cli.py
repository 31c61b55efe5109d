"""NeuroPBR subcommands of `fresnel`, with the guide's script names and flags:
train.py -> pbr_train, teacher_infer.py -> teacher_infer, student/train.py -> student_train,
coreml/converter.py -> coreml_convert, coreml/run_inference.py -> coreml_inference,
run_inference.py -> run_inference."""

from __future__ import annotations

import argparse
import json

from fresnel import device


def _print(result) -> None:
    print(json.dumps(result, indent=2, default=str))


def _make_dataset(args) -> None:
    from fresnel.pbr.synth import prepare_dataset

    _print(prepare_dataset(args.data_root, "synthetic", args.materials, args.samples_per_material,
                           args.size, args.dirty, args.seed))  # fmt: skip


def _train(args) -> None:
    from fresnel.pbr.config import apply_overrides, get_config
    from fresnel.pbr.train import train

    cfg = None
    if not args.resume or args.config:
        overrides = {"training.batch_size": args.batch_size, "data.render_curriculum":
                     2 if args.use_dirty else args.render_curriculum}  # fmt: skip
        cfg = apply_overrides(get_config(args.config or "default"),
                              {k: v for k, v in overrides.items() if v is not None})  # fmt: skip
    # --target not given: the config's training.device (the [Data] line says what it chose)
    _print(train(cfg, args.input_dir, args.output_dir, args.checkpoint_dir, resume=args.resume,
                 device=args.target))  # fmt: skip


def _teacher_infer(args) -> None:
    from fresnel.pbr.teacher_shards import teacher_infer

    _print(teacher_infer(
        args.checkpoint, args.input_dir, args.output_dir, args.shards_dir,
        shard_output_size=args.shard_output_size, shard_size=args.shard_size,
        batch_size=args.batch_size, device=device.announce(args.target).name,
        render_curriculum=args.render_curriculum,
        metadata_path=args.metadata_path, data_root=args.data_root, num_workers=args.num_workers,
    ))  # fmt: skip


def _student_train(args) -> None:
    from fresnel.pbr.distill import train_student
    from fresnel.pbr.student_config import apply_overrides, get_student_config

    cfg = get_student_config(args.config)
    flags = ("epochs", "batch_size", "alpha", "temperature")
    overrides = {f"training.{k}": getattr(args, k) for k in flags if getattr(args, k) is not None}
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    _print(train_student(
        cfg, args.shards_dir, args.input_dir, args.output_dir, args.checkpoint_dir,
        resume=args.resume, device=device.announce(args.target).name,
        metadata_path=args.metadata_path,
        num_workers=args.num_workers,
    ))  # fmt: skip


def _coreml(args) -> None:
    from fresnel.config import options_from_args
    from fresnel.pbr.coreml import convert
    from fresnel.pbr.student_config import CoreMLOptions

    _print(convert(args.checkpoint, args.output, options_from_args(args, CoreMLOptions)))


def _coreml_inference(args) -> None:
    from fresnel.pbr import coreml_inference

    _print(coreml_inference.run(args.package, args.input, args.output))


def _onnx(args) -> None:
    from fresnel.pbr.onnx_export import export_onnx

    _print(export_onnx(args.checkpoint, args.output, opset=args.opset, atol=args.atol,
                       input_size=args.test_resolution, use_sr=not args.no_sr))  # fmt: skip


def _inference(args) -> None:
    from fresnel.pbr.inference import run_inference

    _print(run_inference(args.checkpoint, args.out_dir, sample_idx=args.sample_idx,
                         input_dir=args.input_dir, data_root=args.data_root,
                         device=device.announce(args.target).name))  # fmt: skip


def _evaluate(args) -> None:
    from fresnel.pbr.evaluate import evaluate_models

    _print(evaluate_models(args.data_root, args.teacher, args.student, args.out_dir,
                           args.heldout_lights, device.announce(args.target).name))  # fmt: skip


def _add_teacher_infer(sub) -> None:
    p = sub.add_parser("teacher_infer", help="NeuroPBR: fp16 teacher shards for distillation")
    p.add_argument("--checkpoint", required=True, help="teacher checkpoint (best_model.pth)")
    p.add_argument("--data-root", help="dataset root holding input/ and output/")
    p.add_argument("--input-dir", help="renders folder (default DATA_ROOT/input)")
    p.add_argument("--output-dir", help="material maps folder (default DATA_ROOT/output)")
    p.add_argument("--metadata-path", help="default INPUT_DIR/render_metadata.json")
    p.add_argument("--shards-dir", required=True)
    p.add_argument("--shard-output-size", type=int, help="resize teacher outputs to this side")
    p.add_argument("--shard-size", type=int, default=8, help="samples per shard file")
    p.add_argument("--batch-size", type=int, default=4)
    device.add_target_argument(p)
    p.add_argument("--num-workers", type=int, default=0, help="PNG-decoding processes")
    p.add_argument("--render-curriculum", type=int, choices=(0, 1, 2),
                   help="default: the teacher config's curriculum")  # fmt: skip
    p.set_defaults(func=_teacher_infer)


def _add_student_train(sub) -> None:
    p = sub.add_parser("student_train", help="NeuroPBR: distil the student from teacher shards")
    p.add_argument("--config", default="tiny_student", help="preset name or config .py file")
    p.add_argument("--shards-dir", required=True, help="teacher shards (teacher_infer)")
    p.add_argument("--input-dir", required=True, help="renders folder (input/)")
    p.add_argument("--output-dir", required=True, help="material maps folder (output/)")
    p.add_argument("--metadata-path", help="default INPUT_DIR/render_metadata.json")
    p.add_argument("--checkpoint-dir", default="./checkpoints_student")
    p.add_argument("--resume", help="latest_student.pth or student_epoch_NNNN.pth")
    device.add_target_argument(p)
    p.add_argument("--num-workers", type=int, default=0, help="PNG-decoding processes")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--alpha", type=float, help="weight of the teacher term")
    p.add_argument("--temperature", type=float)
    p.set_defaults(func=_student_train)


def add_commands(sub) -> None:
    from fresnel.config import add_option_flags
    from fresnel.pbr.student_config import CoreMLOptions

    p = sub.add_parser("pbr_make_dataset", help="NeuroPBR: synthetic materials and renders")
    p.add_argument("--data-root", default="./data", help="writes DATA_ROOT/{input,output}")
    p.add_argument("--materials", type=int, default=10)
    p.add_argument("--samples-per-material", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dirty", action=argparse.BooleanOptionalAction, default=True,
                   help="also the dirty renders (curriculum 2); --no-dirty skips them")  # fmt: skip
    p.set_defaults(func=_make_dataset)

    p = sub.add_parser("pbr_train", help="NeuroPBR: train the multi-view teacher (train.py)")
    p.add_argument("--input-dir", default="./data/input")
    p.add_argument("--output-dir", default="./data/output")
    p.add_argument("--config", default=None,
                   help="default | quick_test | lightweight | tiny | a config .py file")  # fmt: skip
    p.add_argument("--render-curriculum", type=int, choices=[0, 1, 2], default=None)
    p.add_argument("--use-dirty", action="store_true", help="legacy: curriculum 2")
    p.add_argument("--checkpoint-dir", default=None, help="default: the config's")
    p.add_argument("--resume", default=None, help="checkpoint_epoch_NNNN.pth or latest.pth")
    device.add_target_argument(p, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.set_defaults(func=_train)

    _add_teacher_infer(sub)
    _add_student_train(sub)

    p = sub.add_parser("coreml_convert", help="NeuroPBR: student checkpoint -> .mlpackage")
    p.add_argument("checkpoint")
    p.add_argument("--output", default="pbr_model.mlpackage")
    add_option_flags(p, CoreMLOptions, "negatable", dash=True,
                     help={"fp16": "FP16 weights and activations; --no-fp16 keeps FP32",
                           "palettization": "8-bit k-means weight clusters",
                           "test_resolution": "convert at this input side (bypasses SR unless "
                                              "--use-sr)",
                           "use_sr": "keep SR at --test-resolution"})  # fmt: skip
    p.set_defaults(func=_coreml)

    p = sub.add_parser("coreml_inference",
                       help="NeuroPBR: .mlpackage on three renders -> four 2048 maps (macOS)")  # fmt: skip
    p.add_argument("package", help="the converted student .mlpackage")
    p.add_argument("--input", required=True, help="folder with three renders (png/jpg, sorted)")
    p.add_argument("--output", default="inference_results")
    p.set_defaults(func=_coreml_inference)

    p = sub.add_parser("export_student_onnx", help="NeuroPBR: student checkpoint -> ONNX")
    p.add_argument("checkpoint")
    p.add_argument("--output", default="pbr_student.onnx")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--test-resolution", type=int, default=None, help="input side")
    p.add_argument("--no-sr", action="store_true", help="bypass the SR head")
    p.add_argument("--atol", type=float, default=0.001, help="max |ONNX Runtime - torch|")
    p.set_defaults(func=_onnx)

    p = sub.add_parser("run_inference", help="NeuroPBR: four maps from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="teacher or student checkpoint")
    p.add_argument("--sample-idx", type=int, default=0, help="dataset sample (no --input-dir)")
    p.add_argument("--input-dir", default=None, help="a folder with exactly three PNG renders")
    p.add_argument("--data-root", default="./data", help="dataset for --sample-idx")
    p.add_argument("--out-dir", default="inference_outputs")
    device.add_target_argument(p)
    p.set_defaults(func=_inference)

    p = sub.add_parser("pbr_evaluate", help="NeuroPBR: teacher vs student vs mean-map baseline")
    p.add_argument("--data-root", required=True)
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--student", required=True, help="student checkpoint")
    p.add_argument("--out-dir", default="pbr_eval")
    p.add_argument("--heldout-lights", type=int, default=4)
    device.add_target_argument(p)
    p.set_defaults(func=_evaluate)
