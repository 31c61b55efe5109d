"""Gaze and head-pose redirection with a trained GazeGaussian: the guide's samples and metrics.

    fresnel test_gazegaussian --load_gazegaussian_checkpoint .../gazegaussian_epoch_30.pth \
        --img_dir ./data/ETH-XGaze --output_dir ./results/redirected_samples

Samples: per source frame one picture: original, reconstruction, 5 redirected gazes, 3
redirected head poses. Metrics (held-out frames of the training subjects by default): the
redirected gaze's angular error measured by an evaluation estimator (one not trained on these
subjects' images), against the no-redirection baseline (the source image measured against the
same targets); the same for head pose; reconstruction PSNR / SSIM, LPIPS where its weights exist
and FID "unavailable" (no Inception weights offline).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from fresnel import metrics
from fresnel.gaze.data import XGazeDataset, collate
from fresnel.gaze.eyes import angular_error_deg, pitchyaw_to_vector
from fresnel.io import atomic_path, write_json
from fresnel.render.projection import rotation_between_directions

GAZE_TARGETS = ((0.0, 0.0), (0.3, 0.0), (-0.3, 0.0), (0.0, 0.4), (0.0, -0.4))  # pitch, yaw
HEAD_TARGETS = ((0.0, -0.3), (0.0, 0.0), (0.0, 0.3))
FID_NOTE = "unavailable: FID needs Inception weights, which are not available offline"


def redirect_head(w2c: Tensor, head_pose: Tensor, target: Tensor) -> Tensor:
    """w2c (4, 4) with the head turned about its origin from `head_pose` to `target` (pitch,
    yaw): the minimal camera-frame rotation between the two facing directions, applied first."""
    turn = rotation_between_directions(pitchyaw_to_vector(head_pose.double()),
                                       pitchyaw_to_vector(target.double())).to(w2c)  # fmt: skip
    out = w2c.clone()
    out[:3, :3] = turn @ w2c[:3, :3]
    return out


def with_targets(batch: dict, gaze: Tensor | None = None, head_pose: Tensor | None = None) -> dict:
    """A copy of the batch asking for other gazes (B, 2) and/or head poses (B, 2)."""
    out = dict(batch)
    if gaze is not None:
        out["gaze"] = gaze.to(batch["gaze"])
    if head_pose is not None:
        head_pose = head_pose.to(batch["head_pose"])
        out["w2c"] = torch.stack([redirect_head(w, h, t) for w, h, t in
                                  zip(batch["w2c"], batch["head_pose"], head_pose, strict=True)])  # fmt: skip
        out["head_pose"] = head_pose
    return out


@torch.no_grad()
def render(model, batch: dict) -> Tensor:
    return model(batch)["rgb"].clamp(0, 1)


def _tile(images: list[Tensor], labels: list[str]) -> Image.Image:
    size = images[0].shape[-1]
    sheet = Image.new("RGB", (size * len(images), size + 12), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        array = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        sheet.paste(Image.fromarray(array), (i * size, 12))
        draw.text((i * size + 1, 0), label, fill="black")
    return sheet


def write_samples(model, data: XGazeDataset, output_dir, count: int = 4) -> list[Path]:
    """The guide's sample pictures: original, reconstruction, 5 gazes, 3 head poses."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    step = max(1, len(data) // count)
    paths = []
    for k in range(0, min(len(data), step * count), step):
        batch = collate([data[k]])
        images = [batch["image"][0], render(model, batch)[0]]
        labels = ["original", "recon"]
        for g in GAZE_TARGETS:
            images.append(render(model, with_targets(batch, gaze=torch.tensor([g])))[0])
            labels.append(f"g {math.degrees(g[0]):+.0f},{math.degrees(g[1]):+.0f}")
        for h in HEAD_TARGETS:
            images.append(render(model, with_targets(batch, head_pose=torch.tensor([h])))[0])
            labels.append(f"h {math.degrees(h[1]):+.0f}")
        path = output_dir / f"{batch['subject'][0]}_frame{int(batch['frame'][0]):04d}.png"
        with atomic_path(path) as tmp:
            _tile(images, labels).save(tmp, format="PNG")
        paths.append(path)
    return paths


def _angles(estimator, images: Tensor) -> tuple[Tensor, Tensor]:
    out = estimator(images)
    return out[:, :2], out[:, 2:4]


@torch.no_grad()
def evaluate_redirection(model, data: XGazeDataset, estimator, seed: int = 0,
                         lpips_weights: str | None = None, batch_size: int = 8) -> dict:  # fmt: skip
    """Redirect every frame of `data` to the gaze and head pose of another frame (a seeded
    derangement) and measure with `estimator`; see the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    order = (torch.arange(n) + 1 + torch.randint(max(n - 1, 1), (n,), generator=gen)) % n
    lpips_model, lpips_note = metrics.lpips_or_unavailable(lpips_weights, "--lpips_weights")
    rows: dict[str, list[Tensor]] = {k: [] for k in ("gaze", "gaze_base", "head", "head_base",
                                                     "floor", "psnr", "ssim", "lpips")}  # fmt: skip
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        batch = collate([data[i] for i in idx])
        targets = collate([data[int(order[i])] for i in idx])
        recon = render(model, batch)
        image = batch["image"]
        gaze_img = render(model, with_targets(batch, gaze=targets["gaze"]))
        head_img = render(model, with_targets(batch, head_pose=targets["head_pose"]))
        src_gaze, src_head = _angles(estimator, image)
        rows["gaze"].append(angular_error_deg(_angles(estimator, gaze_img)[0], targets["gaze"]))
        rows["gaze_base"].append(angular_error_deg(src_gaze, targets["gaze"]))
        rows["head"].append(angular_error_deg(_angles(estimator, head_img)[1],
                                              targets["head_pose"]))  # fmt: skip
        rows["head_base"].append(angular_error_deg(src_head, targets["head_pose"]))
        rows["floor"].append(angular_error_deg(src_gaze, batch["gaze"]))
        mse = (recon - image).square().flatten(1).mean(1)
        rows["psnr"].append(metrics.mse_to_psnr(mse))
        rows["ssim"].append(metrics.ssim(recon, image, per_item=True))
        if lpips_model is not None:
            rows["lpips"].append(lpips_model(recon * 2 - 1, image * 2 - 1).flatten())
    mean = {k: float(torch.cat(v).mean()) for k, v in rows.items() if v}
    return {
        "frames": n,
        "gaze_error_deg": mean["gaze"],
        "gaze_error_no_redirection_deg": mean["gaze_base"],
        "head_pose_error_deg": mean["head"],
        "head_pose_error_no_redirection_deg": mean["head_base"],
        "estimator_error_on_real_deg": mean["floor"],
        "psnr": mean["psnr"],
        "ssim": mean["ssim"],
        "lpips": mean.get("lpips", lpips_note),
        "fid": FID_NOTE,
    }


def test_gazegaussian(checkpoint, img_dir, output_dir, estimator_path: str | None = None,
                      split: str = "train", frames: str = "val", num_samples: int = 4,
                      lpips_weights: str | None = None, seed: int = 0) -> dict:  # fmt: skip
    """The guide's test_gazegaussian: sample pictures, plus metrics when an evaluation
    estimator is given (else the metrics say why they are missing)."""
    from fresnel.gaze.estimator import load_estimator
    from fresnel.gaze.train import load_gazegaussian

    model, opt = load_gazegaussian(checkpoint)
    data = XGazeDataset(img_dir, split, frames=frames, val_fraction=opt.val_fraction,
                        max_frames=opt.max_frames)  # fmt: skip
    paths = write_samples(model, data, output_dir, num_samples)
    result: dict = {"checkpoint": str(checkpoint), "samples": [str(p) for p in paths],
                    "split": split, "frames": frames, "subjects": data.subjects}  # fmt: skip
    if estimator_path:
        result["metrics"] = evaluate_redirection(model, data, load_estimator(estimator_path),
                                                 seed, lpips_weights)  # fmt: skip
        result["estimator"] = str(estimator_path)
    else:
        result["metrics"] = (
            "unavailable: pass --gaze_estimator (an estimator not trained on "
            "these subjects) to measure redirection"
        )
    write_json(Path(output_dir) / "metrics.json", result)
    return result
