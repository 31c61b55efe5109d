"""GaussianAvatars training: Gaussians bound to the driving head's faces, the head's
per-timestep parameters fine-tuned with them, 3DGS losses and densification, and the guide's
five additions and AMP, each behind its flag.

One iteration (3DGS / GaussianAvatars): a random training view (one camera at one timestep),
pose the mesh with that timestep's parameters, move the Gaussians with it, render, loss =
(1 - lambda_dssim) L1 + lambda_dssim D-SSIM + the xyz and scale regularisers (+ the additions'
terms), one Adam step. Between densify_from_iter and densify_until_iter, every
densification_interval iterations Gaussians are cloned / split by view-space gradient (3DGS's
threshold, or the guide's percentiles) and pruned (never a face's last one); opacities are
reset every opacity_reset_interval.

The model folder (`-m OUT`) is the guide's: `chkpnt{N}.pth` (resumed with --start_checkpoint,
and automatically by a rerun of a DAG job), `point_cloud/iteration_N/point_cloud.ply` with the
fine-tuned `flame_param.npz` beside it, TensorBoard events, `history.json` and `curves.png`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from fresnel import metrics
from fresnel.avatars import densify, regions
from fresnel.avatars.binding import BoundGaussians
from fresnel.avatars.calibration import ColorCalibration
from fresnel.avatars.contrastive import PatchContrastive
from fresnel.avatars.data import Frame
from fresnel.avatars.options import AvatarOptions
from fresnel.avatars.ply import save_ply
from fresnel.avatars.scene import Scene, load_scene
from fresnel.avatars.schedule import ResolutionSchedule, downscale
from fresnel.device import Target
from fresnel.io import write_bytes, write_json
from fresnel.render import TileBasedRenderer, sh
from fresnel.training.amp import Amp, check_finite
from fresnel.training.checkpoint import CheckpointError, read_checkpoint, serialize
from fresnel.training.runlog import Panel, RunLog

log = logging.getLogger("fresnel")

FORMAT = "fresnel.avatars/2"  # 2: local parameters in GaussianAvatars' face frame
CHECKPOINT = re.compile(r"chkpnt(\d+)\.pth")
HEAD_LRS = {"expr": "flame_expr_lr", "rotation": "flame_pose_lr", "neck_pose": "flame_pose_lr",
            "jaw_pose": "flame_pose_lr", "eyes_pose": "flame_pose_lr",
            "translation": "flame_trans_lr"}  # fmt: skip
PANELS = (Panel("PSNR (dB)", ("val_psnr", "test_psnr")), Panel("L1", ("val_l1", "test_l1")),
          Panel("Gaussians", ("total_points",)))  # fmt: skip


def checkpoint_path(model_dir, iteration: int) -> Path:
    return Path(model_dir) / f"chkpnt{iteration}.pth"


def latest_checkpoint(model_dir) -> Path | None:
    found = [(int(m.group(1)), p) for p in Path(model_dir).glob("chkpnt*.pth")
             if (m := CHECKPOINT.fullmatch(p.name))]  # fmt: skip
    return max(found)[1] if found else None


def point_cloud_dir(model_dir, iteration: int) -> Path:
    return Path(model_dir) / "point_cloud" / f"iteration_{iteration}"


def exponential_lr(step: int, init: float, final: float, max_steps: int) -> float:
    """3DGS's position learning rate: log-linear from init to final over max_steps."""
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp((1 - t) * math.log(init) + t * math.log(final))


class AvatarTraining:
    """The state of one run (model, head parameters, optimiser, statistics) and its steps."""

    def __init__(self, scene: Scene, options: AvatarOptions, target: Target):
        self.scene, self.opt, self.target = scene, options, target
        self.device = target.torch_device()
        self.head = scene.head.to(self.device)
        self.faces = self.head.faces
        self.generator = torch.Generator().manual_seed(options.seed)
        self.gaussians = BoundGaussians.on_mesh(
            self.head.rest_vertices(), self.faces, options.gaussians_per_face,
            generator=torch.Generator(self.device).manual_seed(options.seed),
            sh_degree=options.sh_degree,
        ).to(self.device)  # fmt: skip
        self.params = scene.params.to(self.device).trainable(HEAD_LRS)
        self.calibration = self._calibration()
        self.optimizer = torch.optim.Adam(self._groups(), lr=0.0, eps=1e-15)
        self.stats = densify.GradientStats(len(self.gaussians), self.device)
        self.amp = Amp(target, options.use_amp)
        self.renderer = TileBasedRenderer()
        self.background = torch.ones(3) if options.white_background else torch.zeros(3)
        self.schedule = self._schedule()
        self.contrastive = (PatchContrastive(cache_size=options.contrastive_cache_size)
                            if options.use_contrastive_reg else None)  # fmt: skip
        self.region_weights = regions.region_weights(
            options.region_weight_eyes, options.region_weight_mouth, options.region_weight_nose
        )
        self.train_cameras = {f.camera_index for f in scene.frames["train"]}
        self.iteration = 0
        self.active_sh = 0
        self._weight_maps: dict[tuple[Path, float], Tensor] = {}

    def _calibration(self) -> ColorCalibration | None:
        if not self.opt.use_color_calibration:
            return None
        cameras = 1 + max(f.camera_index for f in self.scene.frames["train"])
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG untouched
            torch.manual_seed(self.opt.seed)
            network = ColorCalibration(self.opt.color_net_hidden_dim, num_embeddings=cameras)
        return network.to(self.device)

    def _schedule(self) -> ResolutionSchedule:
        if not self.opt.use_progressive_resolution:
            return ResolutionSchedule((1.0,), ())
        return ResolutionSchedule.parse(
            self.opt.resolution_schedule, self.opt.resolution_milestones
        )

    def _groups(self) -> list[dict]:
        o = self.opt
        lrs = {"local_means": o.position_lr_init, "log_scales": o.scaling_lr,
               "local_quats": o.rotation_lr, "opacity_logits": o.opacity_lr, "sh": o.feature_lr}  # fmt: skip
        groups = self.gaussians.optimizer_groups(lrs)
        groups += [{"name": f"flame_{k}", "params": [v], "lr": getattr(o, HEAD_LRS[k])}
                   for k, v in self.params.named_parameters()]  # fmt: skip
        if self.calibration is not None:
            groups.append({"name": "color_net", "params": list(self.calibration.parameters()),
                           "lr": 1e-3})  # fmt: skip
        return groups

    # ------------------------------------------------------------------ one iteration
    def step(self) -> dict[str, float]:
        start = time.perf_counter()
        self.iteration += 1
        it, o = self.iteration, self.opt
        self._update_lr()
        if it % o.sh_degree_interval == 0 and self.active_sh < self.gaussians.sh_degree:
            self.active_sh += 1
        if (scale := self.schedule.switches(it)) is not None:
            log.info("[ITER %d] Switching to resolution scale %s", it, scale)
        frames = self.scene.frames["train"]
        frame = frames[int(torch.randint(len(frames), (1,), generator=self.generator))]
        target, camera = downscale(self.scene.image(frame).to(self.device), frame.camera,
                                   self.schedule.scale_at(it))  # fmt: skip
        with self.amp.autocast():
            out, vertices = self.render(frame, camera)
            image = self._calibrate(out.image, frame)
            losses = self.losses(image, target, frame, camera)
        dssim = self.opt.lambda_dssim
        total = sum(v * {"l1": 1 - dssim, "ssim": dssim}.get(k, 1.0) for k, v in losses.items())
        check_finite(total, f"loss at iteration {it}")
        self.optimizer.zero_grad(set_to_none=True)
        self.amp.backward(total, self.optimizer)
        if it < o.densify_until_iter:
            self.stats.add(out.means2d.grad, out.radii, densify.loss_scale(self.amp),
                           image_size=(camera.width, camera.height))  # fmt: skip
        self.amp.apply(self.optimizer)
        self._densify(vertices.detach())
        values = {f"{k}_loss": float(v.detach()) for k, v in losses.items()}
        values["total_loss"] = float(total.detach())
        values["iter_time"] = 1000 * (time.perf_counter() - start)  # ms, as the guide plots it
        return values

    def render(self, frame: Frame, camera, params=None):
        params = self.params if params is None else params
        vertices = self.head.vertices(params.select(frame.timestep))[0]
        means, scales, quats = self.gaussians.world(vertices, self.faces)
        colours = sh.view_colors(means, self.gaussians.sh, self.active_sh, frame.viewmat.to(means))
        out = self.renderer(means, scales, quats, self.gaussians.opacities, colours, camera,
                            frame.viewmat.to(means), self.background.to(means))  # fmt: skip
        return out, vertices

    def _calibrate(self, image: Tensor, frame: Frame) -> Tensor:
        """The colour calibration, the same at train and eval time: a training camera's own
        embedding, the zero embedding for a camera never trained on (novel views)."""
        if self.calibration is None:
            return image
        index = frame.camera_index if frame.camera_index in self.train_cameras else None
        return self.calibration(image.float(), index)

    def losses(self, image: Tensor, target: Tensor, frame: Frame, camera) -> dict[str, Tensor]:
        o = self.opt
        image, target = image.float(), target.float()
        error = (image - target).abs()
        if o.use_region_adaptive_loss:
            weights = self._weight_map(frame, camera)
            l1 = (error * weights).mean() / weights.mean()
        else:
            l1 = error.mean()
        ssim = 1 - metrics.ssim(image[None], target[None])
        out = {"l1": l1, "ssim": ssim}  # weighted by (1 - lambda_dssim), lambda_dssim in `total`
        g = self.gaussians
        out["xyz"] = o.lambda_xyz * F.relu(g.local_means.norm(dim=1) - o.threshold_xyz).mean()
        out["scale"] = (
            o.lambda_scale * F.relu(torch.exp(g.log_scales) - o.threshold_scale).norm(dim=1).mean()
        )
        if self.calibration is not None:
            out["color_reg"] = o.lambda_color_reg * self.calibration.regularizer()
        if self.contrastive is not None:
            out["contrastive"] = o.lambda_contrastive * self.contrastive.loss(
                image, target, generator=self.generator
            )
        return out

    def _weight_map(self, frame: Frame, camera) -> Tensor:
        """Region weights per pixel, from the tracked mesh of the frame's timestep (cached:
        the fine-tuned parameters move the mesh by far less than a pixel)."""
        key = (frame.image, camera.width)
        if key not in self._weight_maps:
            with torch.no_grad():
                vertices = self.head.vertices(
                    self.scene.params.to(self.device).select(frame.timestep)
                )[0]
                face_ids = regions.rasterize_faces(
                    vertices, self.faces, camera, frame.viewmat.to(vertices)
                )
                self._weight_maps[key] = regions.region_weight_map(
                    face_ids, self.head.face_regions, self.region_weights.to(vertices)
                )
        return self._weight_maps[key]

    def _update_lr(self) -> None:
        o = self.opt
        lr = exponential_lr(self.iteration, o.position_lr_init, o.position_lr_final, o.iterations)
        for group in self.optimizer.param_groups:
            if group["name"] == "local_means":
                group["lr"] = lr

    # ------------------------------------------------------------------ densification
    def _densify(self, vertices: Tensor) -> None:
        o, it = self.opt, self.iteration
        if not (o.densify_from_iter < it < o.densify_until_iter):
            return
        if it % o.densification_interval == 0:
            self.densify_and_prune(vertices)
        if it % o.opacity_reset_interval == 0:
            self.reset_opacity()

    @torch.no_grad()
    def densify_and_prune(self, vertices: Tensor) -> dict[str, int]:
        o, g = self.opt, self.gaussians
        _, scales, _ = g.world(vertices, self.faces)
        max_scale = scales.amax(dim=1)
        grads = self.stats.mean()
        if o.use_smart_densification:
            clone, split = densify.percentile(
                grads, max_scale, o.densify_percentile_clone, o.densify_percentile_split,
                self.scene.extent, o.percent_dense, self.stats.visible(),
                min_grad=0.25 * o.densify_grad_threshold,
            )  # fmt: skip
        else:
            clone, split = densify.classic(grads, max_scale, o.densify_grad_threshold,
                                           self.scene.extent, o.percent_dense)  # fmt: skip
        radii = self.stats.max_radii  # rows follow the Gaussians: clones copy, children start at 0
        cloned = g.clone(clone, self.optimizer)
        radii = torch.cat((radii, radii[clone]))
        split = torch.cat((split, split.new_zeros(cloned)))
        children = g.split(split, 2, generator=self.generator, optimizer=self.optimizer)
        radii = torch.cat((radii[~split], radii.new_zeros(children)))
        prune = g.opacities < o.min_opacity
        if self.iteration > o.opacity_reset_interval:  # 3DGS: size pruning after the first reset
            _, scales, _ = g.world(vertices, self.faces)
            prune |= (radii > o.max_screen_size) | (scales.amax(1) > 0.1 * self.scene.extent)
        before = len(g)
        spared = g.prune(prune, self.optimizer)
        self.stats.reset(len(g))
        return {"cloned": cloned, "split": int(split.sum()), "pruned": before - len(g),
                "spared": spared}  # fmt: skip

    @torch.no_grad()
    def reset_opacity(self) -> None:
        """3DGS: opacities down to at most 0.01, their Adam moments zeroed."""
        logits = self.gaussians.opacity_logits
        logits.copy_(torch.minimum(logits, torch.logit(torch.tensor(0.01)).to(logits)))
        for value in self.optimizer.state.get(logits, {}).values():
            if torch.is_tensor(value) and value.shape == logits.shape:
                value.zero_()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str, lpips_model=None, params=None) -> dict[str, float]:
        """Mean L1, PSNR, SSIM (and LPIPS when its weights exist) over a split's frames."""
        rows = []
        for frame in self.scene.frames[split]:
            image = self.render_frame(frame, params)
            target = self.scene.image(frame).to(image)
            rows.append(frame_metrics(image, target, lpips_model))
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}

    @torch.no_grad()
    def render_frame(self, frame: Frame, params=None) -> Tensor:
        out, _ = self.render(frame, frame.camera, params)
        return self._calibrate(out.image, frame).clamp(0, 1)

    # ------------------------------------------------------------------ files
    def state(self) -> dict:
        return {
            "format": FORMAT,
            "config": self.opt.as_dict(),
            "iteration": self.iteration,
            "active_sh": self.active_sh,
            "num_faces": self.gaussians.num_faces,
            "gaussians": self.gaussians.state_dict(),
            "head_params": {k: v.detach() for k, v in self.params.as_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "stats": self.stats.state_dict(),
            "scaler": self.amp.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "calibration": self.calibration.state_dict() if self.calibration else None,
            "contrastive": self.contrastive.state_dict() if self.contrastive else None,
        }

    def restore(self, state: dict, source: Path) -> None:
        if state.get("format") == "fresnel.avatars/1":
            raise CheckpointError(
                f"{source}: written before this package took GaussianAvatars' face frame, so "
                "its local parameters would land elsewhere; retrain, or render its "
                "point_cloud/iteration_N/point_cloud.ply, which loads converted"
            )
        if state.get("format") != FORMAT:
            raise CheckpointError(
                f"{source}: not a GaussianAvatars checkpoint (format {state.get('format')!r})"
            )
        self.gaussians = BoundGaussians.from_state_dict(state["gaussians"], state["num_faces"]).to(
            self.device
        )
        self.params = (
            type(self.params).from_dict(state["head_params"]).to(self.device).trainable(HEAD_LRS)
        )
        if self.calibration is not None:
            self.calibration.load_state_dict(state["calibration"])
        if self.contrastive is not None and state.get("contrastive"):
            self.contrastive.load_state_dict(state["contrastive"])
        self.optimizer = torch.optim.Adam(self._groups(), lr=0.0, eps=1e-15)
        self.optimizer.load_state_dict(state["optimizer"])
        self.stats.load_state_dict(state["stats"])
        self.amp.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.iteration, self.active_sh = state["iteration"], state["active_sh"]

    def save_checkpoint(self, model_dir) -> Path:
        path = checkpoint_path(model_dir, self.iteration)
        write_bytes(path, serialize(self.state()))
        return path

    def save_point_cloud(self, model_dir) -> Path:
        folder = point_cloud_dir(model_dir, self.iteration)
        save_ply(folder / "point_cloud.ply", self.gaussians)
        self.params.detach().save_npz(folder / "flame_param.npz", self.head.num_vertices)
        if self.calibration is not None:
            write_bytes(folder / "color_calibration.pth", serialize(self.calibration.state_dict()))
        return folder


def frame_metrics(image: Tensor, target: Tensor, lpips_model=None) -> dict[str, float]:
    row = {"l1": float((image - target).abs().mean()),
           "psnr": float(metrics.psnr(image[None], target[None])),
           "ssim": float(metrics.ssim(image[None], target[None]))}  # fmt: skip
    if lpips_model is not None:
        row["lpips"] = float(lpips_model(image[None] * 2 - 1, target[None] * 2 - 1).mean())
    return row


def announce(options: AvatarOptions, training: AvatarTraining) -> None:
    """The guide's start-up lines: one per addition, then AMP."""
    o = options
    if o.use_progressive_resolution:
        log.info(training.schedule.describe())
    if o.use_region_adaptive_loss:
        log.info("[Innovation] Region-adaptive loss enabled (eyes=%s, mouth=%s, nose=%s)",
                 o.region_weight_eyes, o.region_weight_mouth, o.region_weight_nose)  # fmt: skip
    if o.use_smart_densification:
        log.info("[Innovation] Smart densification enabled (clone=%.1f%%, split=%.1f%%)",
                 o.densify_percentile_clone, o.densify_percentile_split)  # fmt: skip
    if o.use_color_calibration:
        log.info("[Innovation] Color calibration network enabled")
    if training.contrastive is not None:
        log.info(training.contrastive.describe())
    if o.use_amp and training.amp.enabled:
        log.info("[AMP] Automatic Mixed Precision enabled (%s)", training.amp.describe())
    elif o.use_amp:
        log.info("[AMP] requested, but target %s trains in float32 (AMP off)", training.target.name)


def train(source, model_dir, options: AvatarOptions, target: Target,
          start_checkpoint=None, progress: bool = True) -> dict:  # fmt: skip
    """Train on the dataset at `source` into `model_dir`; returns the run's summary."""
    options.check()
    if not options.bind_to_mesh:
        raise ValueError("this trainer binds every Gaussian to the head mesh: pass --bind_to_mesh")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    scene = load_scene(source, options.flame_model_path, options.flame_masks_path)
    training = AvatarTraining(scene, options, target)
    if start_checkpoint:
        training.restore(read_checkpoint(start_checkpoint), Path(start_checkpoint))
        log.info("resuming from %s at iteration %d", start_checkpoint, training.iteration)
    write_json(model_dir / "cfg_args", {"source_path": str(source), **options.as_dict()})
    announce(options, training)
    split_sizes = {k: len(v) for k, v in scene.frames.items()}
    log.info("Loading Training Cameras: %s (%d Gaussians on %d faces)", split_sizes,
             len(training.gaussians), training.gaussians.num_faces)  # fmt: skip
    lpips_model, lpips_note = metrics.lpips_or_unavailable(
        options.lpips_weights or None, "lpips_weights"
    )
    runlog = RunLog(model_dir, resume_epoch=training.iteration, panels=PANELS, tensorboard_dir=model_dir,
                    meta={"options": options.as_dict()})  # fmt: skip
    # seconds count the whole run: a resume adds to those of the records it keeps
    started = time.perf_counter() - (runlog.records[-1]["seconds"] if runlog.records else 0.0)
    bar = tqdm(total=options.iterations, initial=training.iteration, desc="Training progress",
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    try:
        while training.iteration < options.iterations:
            values = training.step()
            it = training.iteration
            runlog.scalars(it, {k: values[k] for k in values if k not in ("iter_time",)},
                           prefix="train_loss_patches/")  # fmt: skip
            runlog.scalars(
                it, {"iter_time": values["iter_time"], "total_points": len(training.gaussians)}
            )
            bar.update(1)
            if it % 10 == 0:
                bar.set_postfix(loss=f"{values['total_loss']:.4f}", points=len(training.gaussians))
            if it % options.interval == 0 or it == options.iterations:
                record = evaluation_record(training, lpips_model, lpips_note, options.eval)
                runlog.epoch({**record, "seconds": round(time.perf_counter() - started, 2)})
                training.save_point_cloud(model_dir)
                training.save_checkpoint(model_dir)
    finally:
        bar.close()
        runlog.close()
    summary = {"iterations": training.iteration, "gaussians": len(training.gaussians),
               "seconds": round(time.perf_counter() - started, 2),
               "additions": options.enabled(), "lpips": lpips_note or "available",
               **(runlog.records[-1] if runlog.records else {})}  # fmt: skip
    write_json(model_dir / "train_summary.json", summary)
    return summary


def evaluation_record(training: AvatarTraining, lpips_model, lpips_note, held_out: bool) -> dict:
    record = {"epoch": training.iteration, "total_points": len(training.gaussians)}
    for split in ("val", "test") if held_out else ("train",):
        scores = training.evaluate(split, lpips_model)
        if not scores:
            continue
        record.update({f"{split}_{k}": v for k, v in scores.items()})
        lpips = f"{scores['lpips']:.3f}" if "lpips" in scores else "unavailable"
        log.info("[ITER %d] Evaluating %s: L1 %.4f PSNR %.2f SSIM %.3f LPIPS %s", training.iteration,
                 split, scores["l1"], scores["psnr"], scores["ssim"], lpips)  # fmt: skip
    if lpips_note and training.iteration == training.opt.interval:
        log.info("LPIPS %s", lpips_note)
    return record
