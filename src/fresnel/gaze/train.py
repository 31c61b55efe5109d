"""Step 2 of the guide: train GazeGaussian on a trained MeshHead.

    fresnel train_gazegaussian --batch_size 1 --name gazegaussian_dit --img_dir ./data/ETH-XGaze \
        --num_epochs 30 --num_workers 2 --lr 0.0001 --clip_grad \
        --load_meshhead_checkpoint ./work_dirs/meshhead_<timestamp>/checkpoints/meshhead_epoch_10.pth

writes `work_dirs/<name>_<timestamp>/` (or `--run_dir`): `checkpoints/gazegaussian_epoch_N.pth`
every `save_every` epochs and at the end, `checkpoints/last.pth` every epoch (a rerun resumes
from it), `log.txt` with the guide's start-up and loss lines, `history.json` and `curves.png`.

What the fork could not do, done here: a VAE that is frozen only with trained weights (from
`--vae_weights`, else trained here on the training images first and saved beside the
checkpoints); an angular loss through a gaze estimator loaded from `--gaze_estimator` or trained
here on the training frames; an orthogonality loss on the learned condition embeddings; a VGG
(LPIPS-VGG) loss only with weights from a file, otherwise "unavailable" and excluded.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from fresnel import metrics
from fresnel.gaze.data import XGazeDataset, collate
from fresnel.gaze.embeddings import mean_abs_cosine, orthogonality_loss
from fresnel.gaze.eyes import angular_error_deg
from fresnel.gaze.model import GazeGaussian, GazeGaussianConfig
from fresnel.gaze.options import EstimatorOptions, GazeGaussianOptions
from fresnel.gaze.renderer import VAE, frozen_vae
from fresnel.training import (
    Checkpointer,
    CheckpointNames,
    LogFile,
    Panel,
    Progress,
    RunLog,
    epoch_generator,
)
from fresnel.training.checkpoint import CheckpointError, read_checkpoint

NAMES = CheckpointNames(last="last.pth", best="best.pth", periodic="gazegaussian_epoch_{epoch}.pth")
PANELS = (Panel("loss", ("train_loss", "val_loss"), log_scale=True),
          Panel("angular error (deg)", ("train_angular", "val_angular")),
          Panel("mean |cos| of embeddings", ("train_mean_abs_cos",)))  # fmt: skip


def model_config(opt: GazeGaussianOptions, data: XGazeDataset) -> GazeGaussianConfig:
    info = data.files[0]
    return GazeGaussianConfig(**opt.renderer_options(), iden_dims=info.iden_dims,
                              expr_dims=info.expr_dims)  # fmt: skip


def run_directory(opt: GazeGaussianOptions) -> Path:
    if opt.run_dir:
        return Path(opt.run_dir)
    return Path(opt.work_dir) / f"{opt.name}_{time.strftime('%Y%m%d_%H%M%S')}"


def meshhead_init(path: str | None, limit: int, code: Tensor) -> tuple[Tensor, Tensor]:
    """The face stream's start from the trained MeshHead: its neutral mesh's canonical vertices
    (thinned evenly to `limit`) and their colours for latent `code`, seen from the front."""
    from fresnel.gaze.meshhead import load_meshhead, vertex_normals

    if not path:
        raise CheckpointError("--load_meshhead_checkpoint is required: train step 1 first "
                              "(fresnel train_meshhead) and pass its meshhead_epoch_N.pth")  # fmt: skip
    meshhead = load_meshhead(path)
    with torch.no_grad():
        vertices, faces = meshhead.extract()
        if len(vertices) == 0:
            raise CheckpointError(f"{path}: the MeshHead's mesh is empty; train step 1 longer")
        colors = meshhead.colors(vertices, vertex_normals(vertices, faces), code)
    stride = max(1, math.ceil(len(vertices) / limit))
    return vertices[::stride].float(), colors[::stride].float()


def mean_eye_centers(data: XGazeDataset) -> tuple[Tensor, float]:
    """The subjects' mean eyeball centres (2, 3) and radius: one canonical head for all."""
    found = [data.eye_centers(s) for s in data.subjects]
    return torch.stack([c for c, _ in found]).mean(0), sum(r for _, r in found) / len(found)


def train_vae(data: XGazeDataset, epochs: int, batch_size: int, seed: int, out: Path,
              progress: bool) -> tuple[Path, float]:  # fmt: skip
    """Train the renderer's VAE as an autoencoder of the training images; save its weights."""
    torch.manual_seed(seed)
    vae = VAE()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    loader = DataLoader(data, batch_size=max(8, batch_size), shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    recon = math.nan
    for _ in tqdm(range(epochs), desc="VAE", disable=not progress):
        total, count = 0.0, 0
        for batch in loader:
            image = batch["image"]
            decoded, mean, logvar = vae(image)
            l1 = (decoded - image).abs().mean()
            loss = l1 + 1e-6 * VAE.kl(mean, logvar)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + float(l1.detach()) * len(image), count + len(image)
        recon = total / count
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(vae.state_dict(), out)
    return out, recon


class Losses:
    """The guide's loss components; `vgg` is None (and excluded) without weights."""

    def __init__(self, opt: GazeGaussianOptions, estimator, vgg):
        self.opt, self.estimator, self.vgg = opt, estimator, vgg

    def __call__(self, out: dict, batch: dict, epoch: int) -> tuple[Tensor, dict]:
        opt, rgb, image = self.opt, out["rgb"], batch["image"]
        eye = (batch["left_eye_mask"] + batch["right_eye_mask"]).clamp(max=1)
        terms = {
            "l1": (rgb - image).abs().mean(),
            "raw_rgb": (out["features"][:, :3] - image).abs().mean(),
            "eye": ((rgb - image).abs() * eye).sum() / (3 * eye.sum()).clamp(min=1),
            "ssim": 1 - metrics.ssim(rgb.clamp(0, 1), image),
            "orthogonality": orthogonality_loss(out["embeddings"]),
        }
        predicted = self.estimator(rgb.clamp(0, 1))[:, :2]
        angular = angular_error_deg(predicted, batch["gaze"])
        terms["angular"] = angular.mean()
        total = (opt.l1_importance * terms["l1"] + opt.eye_loss_importance * terms["eye"]
                 + opt.ssim_importance * terms["ssim"]
                 + opt.raw_rgb_importance * terms["raw_rgb"])  # fmt: skip
        if self.vgg is not None:
            terms["vgg"] = self.vgg(rgb * 2 - 1, image * 2 - 1).mean()
            total = total + opt.vgg_importance * terms["vgg"]
        if epoch >= opt.angular_loss_begin:
            total = total + opt.gaze_loss_importance * torch.deg2rad(angular).mean()
        if opt.use_orthogonality_loss:
            total = total + opt.orthogonality_importance * terms["orthogonality"]
        terms["mean_abs_cos"] = mean_abs_cosine(out["embeddings"])
        terms["total"] = total
        return total, {k: float(v.detach()) for k, v in terms.items()}


def loss_lines(values: dict, vgg_note: str | None) -> str:
    """The guide's `[Loss Components]` block."""
    vgg = f"{values['vgg']:.4f}" if "vgg" in values else vgg_note
    return "\n".join([
        "[Loss Components]",
        f"  - VGG Loss: {vgg}",
        f"  - L1 Loss: {values['l1']:.4f}",
        f"  - SSIM Loss: {values['ssim']:.4f}",
        f"  - Angular Loss: {values['angular']:.2f} (degrees)",
        f"  - Orthogonality Loss: {values['orthogonality']:.4f}",
    ])  # fmt: skip


def _vgg_loss(opt: GazeGaussianOptions):
    try:
        return metrics.load_lpips(opt.vgg_weights, "--vgg_weights", net="vgg"), None
    except metrics.MetricUnavailable as exc:
        return None, f"unavailable ({exc}); excluded from the loss"


def _estimator(opt: GazeGaussianOptions, data: XGazeDataset, run: Path, say, progress: bool):
    from fresnel.gaze import estimator as gaze_estimator

    if opt.gaze_estimator:
        say(f"[Gaze Estimator] loaded from {opt.gaze_estimator}")
        return gaze_estimator.load_estimator(opt.gaze_estimator)
    path = run / "checkpoints" / "gaze_estimator.pth"
    if path.is_file():  # a resumed run keeps the estimator it trained
        return gaze_estimator.load_estimator(path)
    options = EstimatorOptions(epochs=opt.estimator_epochs, seed=opt.seed)
    model, stats = gaze_estimator.train_estimator(data, options, progress=progress)
    gaze_estimator.save_estimator(model, path, {"trained_on": data.subjects, **stats})
    say(
        f"[Gaze Estimator] no --gaze_estimator given: trained here on the training frames "
        f"of {len(data.subjects)} subject(s) for {opt.estimator_epochs} epochs, saved to {path}"
    )
    return gaze_estimator.load_estimator(path)


def _vae(opt: GazeGaussianOptions, data: XGazeDataset, run: Path, say, progress: bool):
    if not opt.use_vae:
        return None
    path = Path(opt.vae_weights) if opt.vae_weights else run / "checkpoints" / "vae.pth"
    if not opt.vae_weights and not path.is_file():
        _, recon = train_vae(data, opt.vae_epochs, opt.batch_size, opt.seed, path, progress)
        say(
            f"[VAE] no --vae_weights given: trained here on {len(data)} training images for "
            f"{opt.vae_epochs} epochs (reconstruction L1 {recon:.4f}), saved to {path}"
        )
    return frozen_vae(path)


def build(opt: GazeGaussianOptions, data: XGazeDataset, vae: VAE | None) -> GazeGaussian:
    torch.manual_seed(opt.seed)
    code = torch.stack([data[k]["latent_code"] for k in range(0, len(data), 8)]).mean(0)
    points, colors = meshhead_init(opt.load_meshhead_checkpoint, opt.max_face_gaussians, code)
    centres, radius = mean_eye_centers(data)
    return GazeGaussian(model_config(opt, data), points, centres, radius, vae=vae,
                        face_colors=colors)  # fmt: skip


def train_gazegaussian(opt: GazeGaussianOptions, progress: bool = True) -> dict:
    run = run_directory(opt)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    say = LogFile(run / "log.txt")
    train_data = XGazeDataset(opt.img_dir, "train", frames="train",
                              val_fraction=opt.val_fraction, max_frames=opt.max_frames)  # fmt: skip
    val_data = XGazeDataset(opt.img_dir, "train", frames="val",
                            val_fraction=opt.val_fraction, max_frames=opt.max_frames)  # fmt: skip
    say(
        f"[Data] {len(train_data)} training / {len(val_data)} validation frames of "
        f"{len(train_data.subjects)} training subject(s) from {opt.img_dir}"
    )
    vae = _vae(opt, train_data, run, say, progress)
    model = build(opt, train_data, vae)
    say(model.describe())
    say(
        f"[Gaussians] face {len(model.face.rest)} (from {opt.load_meshhead_checkpoint}), "
        f"eyes 2 x {len(model.eyes[0].rest)}"
    )
    estimator = _estimator(opt, train_data, run, say, progress)
    vgg, vgg_note = _vgg_loss(opt)
    if vgg is None:
        say(f"[VGG Loss] {vgg_note}")
    losses = Losses(opt, estimator, vgg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=opt.lr)
    ckpt = Checkpointer(run / "checkpoints", NAMES, model=model, optimizer=optimizer)
    progress_state = Progress()
    last = run / "checkpoints" / NAMES.last
    if last.is_file():
        progress_state, _ = ckpt.load(last)
        say(f"[Resume] from {last} at epoch {progress_state.epoch}")
    runlog = RunLog(run, resume_epoch=progress_state.epoch, panels=PANELS,
                    meta={"options": opt.as_dict()})  # fmt: skip
    extra = {"face_points": model.face.rest, "eye_centers": model.eye_centers,
             "eye_radius": model.eye_radius, "model_config": model.cfg.as_dict()}  # fmt: skip
    for epoch in range(progress_state.epoch + 1, opt.num_epochs + 1):
        torch.manual_seed(opt.seed + epoch)
        # the epoch's order from (seed, epoch), so a resumed run shuffles as an uninterrupted one
        loader = DataLoader(train_data, batch_size=opt.batch_size, shuffle=True,
                            collate_fn=collate, num_workers=opt.num_workers,
                            generator=epoch_generator(opt.seed, epoch))  # fmt: skip
        started = time.perf_counter()
        train_values = _train_epoch(model, loader, losses, optimizer, trainable, opt, epoch,
                                    progress)  # fmt: skip
        progress_state.global_step += len(loader)
        val_values = evaluate_losses(model, val_data, losses, epoch, opt.batch_size)
        say(
            f"epoch {epoch}/{opt.num_epochs} train_loss {train_values['total']:.4f} "
            f"val_loss {val_values['total']:.4f} val_angular {val_values['angular']:.2f}"
        )
        say(loss_lines(train_values, vgg_note))
        record = {"epoch": epoch, "seconds": time.perf_counter() - started,
                  **{f"train_{k}": v for k, v in train_values.items()},
                  **{f"val_{k}": v for k, v in val_values.items()},
                  "train_loss": train_values["total"], "val_loss": val_values["total"]}  # fmt: skip
        improved = progress_state.finish_epoch(record, val_values["total"])
        periodic = epoch % opt.save_every == 0 or epoch == opt.num_epochs
        written = ckpt.save_epoch(progress_state, opt.as_dict(), improved=improved,
                                  periodic=periodic, extra=extra)  # fmt: skip
        runlog.epoch(record)
        if "periodic" in written:
            say(f"[Checkpoint] {written['periodic']}")
    runlog.close()
    say(f"[Done] {progress_state.epoch} epochs in {run}")
    final = run / "checkpoints" / NAMES.epoch(opt.num_epochs)
    history = progress_state.history
    return {"run_dir": str(run), "checkpoint": str(final), "epochs": progress_state.epoch,
            "final": history[-1] if history else {}}  # fmt: skip


def _train_epoch(model, loader, losses, optimizer, trainable, opt, epoch, progress) -> dict:
    model.train()
    sums: dict[str, float] = {}
    count = 0
    for batch in tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False):
        out = model(batch)
        loss, values = losses(out, batch, epoch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch}: loss is {float(loss)}; lower --lr")
        optimizer.zero_grad()
        loss.backward()
        if opt.clip_grad:
            torch.nn.utils.clip_grad_norm_(trainable, opt.clip_norm)
        optimizer.step()
        n = len(batch["image"])
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v * n
        count += n
    return {k: v / count for k, v in sums.items()}


@torch.no_grad()
def evaluate_losses(model, data, losses, epoch: int, batch_size: int) -> dict:
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    for batch in DataLoader(data, batch_size=max(batch_size, 4), collate_fn=collate):
        _, values = losses(model(batch), batch, epoch)
        n = len(batch["image"])
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v * n
        count += n
    return {k: v / count for k, v in sums.items()}


def final_gazegaussian(run_dir) -> Path:
    """The checkpoint of a finished run's last epoch (train_gazegaussian always saves it)."""
    found = sorted((Path(run_dir) / "checkpoints").glob("gazegaussian_epoch_*.pth"),
                   key=lambda p: int(p.stem.rsplit("_", 1)[1]))  # fmt: skip
    if not found:
        raise FileNotFoundError(f"{run_dir}: no checkpoints/gazegaussian_epoch_N.pth; "
                                "train it first (fresnel train_gazegaussian)")  # fmt: skip
    return found[-1]


def load_gazegaussian(path) -> tuple[GazeGaussian, GazeGaussianOptions]:
    """A trained model (eval mode) and its options from a gazegaussian_epoch_N.pth."""
    state = read_checkpoint(path)
    if "model" not in state or "face_points" not in state.get("extra", {}):
        raise CheckpointError(f"{path}: not a GazeGaussian checkpoint; pass a "
                         "checkpoints/gazegaussian_epoch_N.pth of train_gazegaussian")  # fmt: skip
    opt = GazeGaussianOptions.from_dict(state["config"])
    extra = state["extra"]
    cfg = GazeGaussianConfig(**extra["model_config"])
    vae = VAE() if cfg.use_vae else None
    model = GazeGaussian(cfg, extra["face_points"], extra["eye_centers"], extra["eye_radius"], vae)
    model.load_state_dict(state["model"])
    return model.eval().requires_grad_(False), opt
