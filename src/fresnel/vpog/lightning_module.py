"""The Lightning module that trains VPOG: classification over template patches, buddy-relative
flow, and the Monte Carlo KL pose loss on the nearest positive template.

Per batch (a `VPOGBatch`, query at index 0, templates 1..S):
- classification: cross-entropy of every query patch over the template's patches + unseen;
- flow: the query anchor's position inside its ground-truth buddy patch (patch units), L1 or
  Huber where the label is a visible buddy;
- pose: for the first positive (the nearest template), each visible query patch gives a 2D-3D
  correspondence: its anchor pixel, and the object point the template shows at the buddy centre
  plus the predicted residual. The correspondence weight is the predicted probability of the
  ground-truth buddy over the patch size (reprojection errors count in patch units), so
  confident, accurate patches lower the loss. (A learned global weight scale, as EPro-PnP has,
  made the loss unbounded below here: the points are nearly exact, so the scale grew, the
  pose term reached -33 and its gradient swamped the classification loss, which rose.)
  The 3D points are detached: the pose loss trains the weights only. With gradients to the
  points it sharpens the pose posterior by spreading them apart instead of placing them right
  (overfitting one batch, the flow loss then rose from 0.0175 to 0.0204 while the pose term fell).
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from fresnel.vpog.dataset import VPOGBatch
from fresnel.vpog.flow import BACKGROUND
from fresnel.vpog.losses import (
    LossWeights,
    buddy_residual,
    classification_loss,
    flow_loss,
    monte_carlo_pose_loss,
)
from fresnel.vpog.model import VPOGModel, VPOGModelConfig


class VPOGModule(L.LightningModule):
    """`VPOGModule(cfg)` with the composed config as a plain dict (saved in checkpoints)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.save_hyperparameters({"cfg": cfg})
        self.cfg = cfg
        self.model = VPOGModel(VPOGModelConfig(**cfg["model"]))
        loss = cfg["loss"]
        self.weights = LossWeights(loss["classification"], loss["flow"], loss["pose"])
        self.patch_size = int(cfg["model"]["patch_size"])

    # -- one batch -------------------------------------------------------------------------
    def losses(self, batch: VPOGBatch) -> dict[str, Tensor]:
        features = self.model(batch.images, batch.d_ref, batch.template_dirs)
        logits = self.model.classify(features)
        labels = batch.labels.flatten(2)
        n_patches = logits.shape[2]
        buddy = torch.where((labels >= 0) & (labels < n_patches), labels, 0)
        residual = self.model.flow(features, buddy)
        target = buddy_residual(batch.flows, batch.labels, self.patch_size)
        losses = {
            "classification": classification_loss(logits, batch.labels),
            "flow": flow_loss(
                residual,
                target,
                batch.flow_valid,
                kind=self.cfg["loss"]["flow_kind"],
                huber_delta=self.cfg["loss"]["huber_delta"],
            ),
        }
        if self.weights.pose > 0:
            losses["pose"] = self.pose_loss(batch, logits, residual, buddy)
        losses["total"] = sum(getattr(self.weights, name) * value for name, value in losses.items())
        losses["accuracy"] = patch_accuracy(logits.detach(), batch.labels)
        return losses

    def pose_loss(
        self, batch: VPOGBatch, logits: Tensor, residual: Tensor, buddy: Tensor
    ) -> Tensor:
        x2d, x3d, w2d = pose_correspondences(batch, logits, residual, buddy, self.patch_size)
        generator = torch.Generator(device="cpu").manual_seed(int(self.global_step))
        per_sample = monte_carlo_pose_loss(
            x2d, x3d, w2d, batch.K[:, 0], batch.poses[:, 0, :3, :3], batch.poses[:, 0, :3, 3],
            num_samples=int(self.cfg["loss"]["pose_samples"]), generator=generator,
        )  # fmt: skip
        has_points = (w2d.detach().sum(dim=(1, 2)) > 0).float()
        return (per_sample * has_points).sum() / has_points.sum().clamp_min(1)

    # -- Lightning hooks -------------------------------------------------------------------
    def training_step(self, batch: VPOGBatch, batch_idx: int):
        losses = self.losses(batch)
        self._log("train", losses, batch)
        self._maybe_visualize(batch)
        return losses["total"]

    def validation_step(self, batch: VPOGBatch, batch_idx: int) -> None:
        self._log("val", self.losses(batch), batch)

    def configure_optimizers(self):
        opt = self.cfg["optimizer"]
        return torch.optim.AdamW(self.parameters(), lr=opt["lr"], weight_decay=opt["weight_decay"])

    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            datamodule.set_epoch(self.current_epoch)

    def _log(self, stage: str, losses: dict[str, Tensor], batch: VPOGBatch) -> None:
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value.detach(), batch_size=len(batch),
                     prog_bar=name in ("total", "accuracy"), sync_dist=True,
                     on_step=stage == "train", on_epoch=True)  # fmt: skip

    def _maybe_visualize(self, batch: VPOGBatch) -> None:
        vis = self.cfg["visualization"]
        if not vis["enabled"] or self.global_rank != 0:
            return
        if self.global_step % int(vis["save_frequency"]):
            return
        from fresnel.vpog.visualize import save_batch_figure

        with torch.no_grad():
            features = self.model(batch.images, batch.d_ref, batch.template_dirs)
            predicted = self.model.classify(features).argmax(-1)
        save_batch_figure(batch, predicted, f"{vis['save_dir']}/step_{self.global_step:07d}.png")


def patch_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Share of labelled (non-background) query patches whose predicted class is right."""
    labels = labels.flatten(2)
    labelled = labels != BACKGROUND
    correct = (logits.argmax(-1) == labels) & labelled
    return correct.sum() / labelled.sum().clamp_min(1)


def pose_correspondences(
    batch: VPOGBatch, logits: Tensor, residual: Tensor, buddy: Tensor, patch_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(x2d [B,N,2], x3d [B,N,3], w2d [B,N,2]) for the first template; weight 0 where the
    query patch has no visible buddy."""
    B, _, N, _ = logits.shape
    H, W = batch.images.shape[-2:]
    grid_w = W // patch_size
    valid = batch.flow_valid[:, 0].flatten(1)  # [B, N]
    anchors = anchor_uv(H // patch_size, grid_w, patch_size, logits.device)  # [N, 2]
    buddy0 = buddy[:, 0]  # [B, N]
    centre = torch.stack(((buddy0 % grid_w + 0.5), (buddy0 // grid_w + 0.5)), -1) * patch_size
    tmpl_uv = centre + residual[:, 0] * patch_size  # [B, N, 2]
    xyz = object_coordinates(
        batch.depths[:, 1], batch.masks[:, 1], batch.K[:, 1], batch.poses[:, 1]
    )
    x3d = sample_bilinear(xyz, tmpl_uv.detach())
    probability = logits[:, 0].softmax(-1).gather(-1, buddy0[..., None])  # [B, N, 1]
    w2d = torch.where(valid[..., None], probability / patch_size, 0.0).expand(B, N, 2)
    x3d = torch.where(valid[..., None], x3d, 0.0)
    return anchors.expand(B, N, 2), x3d, w2d


def anchor_uv(rows: int, cols: int, patch_size: int, device=None) -> Tensor:
    """(rows * cols, 2) (u, v) of the patches' anchor pixel centres (`fresnel.vpog.flow`)."""
    offset = patch_size // 2 + 0.5
    v, u = torch.meshgrid(
        torch.arange(rows, device=device) * patch_size + offset,
        torch.arange(cols, device=device) * patch_size + offset,
        indexing="ij",
    )
    return torch.stack((u, v), -1).reshape(-1, 2).float()


def object_coordinates(depth: Tensor, mask: Tensor, K: Tensor, pose: Tensor) -> Tensor:
    """[B, H, W, 3] object-frame points the template pixels show (0 off the object)."""
    H, W = depth.shape[1:]
    v, u = torch.meshgrid(
        torch.arange(H, device=depth.device) + 0.5,
        torch.arange(W, device=depth.device) + 0.5,
        indexing="ij",
    )
    uv1 = torch.stack((u, v, torch.ones_like(u)), -1).to(depth.dtype)  # [H, W, 3]
    rays = uv1 @ torch.linalg.inv(K).transpose(1, 2)[:, None]  # [B, H, W, 3]
    camera = rays / rays[..., 2:] * depth[..., None]
    R, t = pose[:, :3, :3], pose[:, :3, 3]
    points = (camera - t[:, None, None]) @ R[:, None]  # R^T (X - t), row vectors
    return torch.where(mask[..., None], points, 0.0)


def sample_bilinear(image: Tensor, uv: Tensor) -> Tensor:
    """[B, N, C] values of a [B, H, W, C] map at (u, v) positions [B, N, 2] (pixel units)."""
    H, W = image.shape[1:3]
    grid = torch.stack((uv[..., 0] / W * 2 - 1, uv[..., 1] / H * 2 - 1), -1)[:, :, None]
    sampled = F.grid_sample(image.permute(0, 3, 1, 2), grid, align_corners=False,
                            padding_mode="border")  # fmt: skip
    return sampled[..., 0].transpose(1, 2)
