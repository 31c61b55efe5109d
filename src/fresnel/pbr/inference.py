"""Preview a trained checkpoint (the guide's run_inference.py).

Input: one dataset entry by index (data_root, or input/output dirs) or a directory holding
exactly three PNG renders (used in alphabetical order). The renders are resized and
normalised as the checkpoint's config says (image_size, transform mean/std), so custom
renders see the training preprocessing. Output in `out_dir`: albedo.png, roughness.png,
metallic.png, normal.png (fresnel.pbr.maps.save_maps), input_view_{0,1,2}.png (the
denormalised model inputs), ground_truth/ (dataset entries only) and inference.json.

Works for teacher checkpoints ("generator_state_dict", or the guide's exported
{"config", "model_state_dict"}) and student checkpoints ("model_state_dict" whose config
has a student `model.arch`), which normalise with the ImageNet statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from fresnel.images import IMAGENET_MEAN, IMAGENET_STD, save_png
from fresnel.io import write_json
from fresnel.pbr.data import (
    PBRDataset,
    dataset_dirs,
    denormalize_views,
    load_views,
    normalize_views,
)
from fresnel.pbr.maps import save_maps, split_maps, to_uint8
from fresnel.pbr.teacher import load_generator
from fresnel.training import read_checkpoint


@dataclass
class LoadedModel:
    model: torch.nn.Module
    kind: str  # "teacher" | "student"
    image_size: int
    output_size: int
    mean: tuple
    std: tuple
    curriculum: int


def is_student_checkpoint(ckpt: dict) -> bool:
    if "generator_state_dict" in ckpt:
        return False
    model_cfg = ckpt.get("config", {}).get("model", {})
    return "model_state_dict" in ckpt and "arch" in model_cfg


def load_model(checkpoint: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Teacher or student checkpoint -> model in eval mode plus its preprocessing."""
    if is_student_checkpoint(read_checkpoint(checkpoint)):
        from fresnel.pbr.student import load_student

        model, scfg = load_student(checkpoint, device)
        return LoadedModel(
            model,
            "student",
            scfg.data.image_size,
            scfg.data.output_size,
            IMAGENET_MEAN,
            IMAGENET_STD,
            0,
        )
    model, cfg = load_generator(checkpoint, device)
    return LoadedModel(
        model,
        "teacher",
        cfg.data.image_size,
        cfg.output_size,
        tuple(cfg.transform.mean),
        tuple(cfg.transform.std),
        cfg.curriculum,
    )


def render_paths(input_dir: str | os.PathLike) -> list[Path]:
    """The three PNGs of a custom-render directory, sorted alphabetically."""
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: input directory not found")
    pngs = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if len(pngs) != 3:
        raise ValueError(
            f"{folder}: holds {len(pngs)} PNG files {[p.name for p in pngs]}; it must hold "
            "exactly three renders of the material (one per view)"
        )
    return pngs


def run_inference(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    sample_idx: int = 0,
    input_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    data_input_dir: str | os.PathLike | None = None,
    data_output_dir: str | os.PathLike | None = None,
    device: str = "cpu",
) -> dict:
    """Predict the four maps for one input and write them (see module docstring)."""
    loaded = load_model(checkpoint, device)
    out_dir = Path(out_dir)
    target = None
    if input_dir is not None:
        paths = render_paths(input_dir)
        views = normalize_views(load_views(paths, loaded.image_size), loaded.mean, loaded.std)
        source = {"input_dir": str(input_dir), "renders": [p.name for p in paths]}
    else:
        views, target, source = dataset_entry(
            loaded, sample_idx, data_root, data_input_dir, data_output_dir
        )
    device_obj = next(loaded.model.parameters()).device
    with torch.no_grad():
        pred = loaded.model(views.unsqueeze(0).to(device_obj))
    maps = {k: v[0].detach().float().cpu() for k, v in pred.items()}
    save_maps(maps, out_dir)
    shown = denormalize_views(views, loaded.mean, loaded.std).clamp(0, 1)
    for i, view in enumerate(shown):
        save_png(Image.fromarray(to_uint8(view), "RGB"), out_dir / f"input_view_{i}.png")
    if target is not None:
        save_maps(split_maps(target), out_dir / "ground_truth")
    info = {
        "checkpoint": str(checkpoint),
        "model": loaded.kind,
        "input_size": loaded.image_size,
        "output_size": int(maps["albedo"].shape[-1]),
        **source,
    }
    write_json(out_dir / "inference.json", info)
    return info


def dataset_entry(loaded: LoadedModel, index: int, data_root, data_input_dir, data_output_dir):
    input_dir, output_dir = dataset_dirs(data_root, data_input_dir, data_output_dir)
    dataset = PBRDataset(
        input_dir,
        output_dir,
        transform_mean=loaded.mean,
        transform_std=loaded.std,
        image_size=loaded.image_size,
        output_size=loaded.output_size,
        curriculum_mode=loaded.curriculum,
    )
    if not 0 <= index < len(dataset):
        raise IndexError(
            f"sample index {index} out of range: {input_dir} has {len(dataset)} entries "
            f"for curriculum {loaded.curriculum}"
        )
    views, target = dataset[index]
    sample, render_source = dataset.entries[index]
    info = {"sample": sample, "source": render_source, "material": dataset.material_of(sample)}
    return views, target, info
