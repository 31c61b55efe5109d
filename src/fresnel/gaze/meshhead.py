"""Step 1 of the guide: MeshHead, a canonical head mesh fitted to the training frames.

    fresnel train_meshhead --batch_size 1 --name meshhead --img_dir ./data/ETH-XGaze \
        --num_epochs 10 --num_workers 8 --early_stopping --patience 5

The model (GazeGaussian's MeshHead, in pure torch): an SDF on a tetrahedral grid (an MLP over
the grid vertices on top of a sphere prior, so the first surface exists), DMTet's learned grid
deformation, surface extraction by differentiable marching tetrahedra, an expression
deformation MLP (canonical point + expression code -> offset), a colour MLP (canonical point,
camera-frame normal, latent code -> RGB) and learned canonical 3D landmarks. Rendering:
`fresnel.render.soft_mesh` (soft silhouette, interpolated colours). Losses as the fork's:
RGB L1 on a white background, silhouette (1 - soft IoU), landmark deformation (MSE to the
frame's canonical landmarks), landmarks on the surface (|SDF|), offsets, Laplacian smoothness.

Writes `work_dirs/<name>_<timestamp>/` (or `--run_dir`): `checkpoints/meshhead_epoch_N.pth`
every epoch, `best.pth` (lowest validation loss: what step 2 loads by default) and `last.pth`
(a rerun resumes from it), `log.txt`, `history.json` and `curves.png`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fresnel.gaze.data import XGazeDataset, collate
from fresnel.gaze.dmtet import marching_tetrahedra, tet_grid
from fresnel.gaze.model import positional_encoding
from fresnel.gaze.options import MeshHeadOptions
from fresnel.render.projection import Camera
from fresnel.render.soft_mesh import render_attributes, soft_silhouette
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

NAMES = CheckpointNames(last="last.pth", best="best.pth", periodic="meshhead_epoch_{epoch}.pth")
PANELS = (Panel("loss", ("train_loss", "val_loss"), log_scale=True),
          Panel("mesh to ground truth (mm)", ("mesh_gt_distance_mm",)))  # fmt: skip
LOSS_WEIGHTS = {
    "rgb": 1.0,
    "sil": 1.0,
    "def": 0.1,
    "offset": 0.01,
    "lmk": 1.0,
    "lap": 1.0,
    "sdf_smooth": 1000.0,
}
# Geometric terms are measured in units of the head's size (10 cm), the scale the fork's
# weights were set for; in metres they would be 10-100x too small to matter.
UNIT = 0.1


@dataclass
class MeshHeadConfig:
    resolution: int = 20  # grid cubes per axis
    extent: tuple[float, float, float] = (0.10, 0.12, 0.11)  # metres, half sizes of the box
    init_radius: float = 0.085  # the SDF prior: a sphere of this radius
    hidden: int = 64
    pe_frequencies: int = 4
    iden_dims: int = 9
    expr_dims: int = 3
    num_landmarks: int = 68
    max_expression_offset: float = 0.01
    sigma: float = 0.1  # soft silhouette sharpness, pixels; 0.1 fits closer than 0.5
    # (one subject, 10 epochs: 2.44 vs 2.96 mm to the ground truth)

    def as_dict(self) -> dict:
        return {**asdict(self), "extent": list(self.extent)}


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                        nn.Linear(hidden, d_out))  # fmt: skip
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class MeshHead(nn.Module):
    def __init__(self, cfg: MeshHeadConfig):
        super().__init__()
        self.cfg = cfg
        grid, tets = tet_grid(cfg.resolution, cfg.extent)
        self.register_buffer("grid", grid)
        self.register_buffer("tets", tets)
        self.cell = 2 * min(cfg.extent) / cfg.resolution
        pe = 3 + 6 * cfg.pe_frequencies
        # The SDF is a value per grid vertex (DMTet's), starting as the sphere prior.
        prior = grid.norm(dim=-1) - cfg.init_radius
        self.register_buffer("sdf_prior", prior)
        self.sdf_values = nn.Parameter(prior.clone())
        self.grid_offsets = nn.Parameter(torch.zeros_like(grid))
        self.expression_mlp = _mlp(pe + cfg.expr_dims, cfg.hidden, 3)
        self.color_mlp = _mlp(pe + 3 + cfg.iden_dims + cfg.expr_dims, cfg.hidden, 3)
        self.landmarks = nn.Parameter(torch.zeros(cfg.num_landmarks, 3))

    def _pe(self, x: Tensor) -> Tensor:
        return positional_encoding(x, self.cfg.pe_frequencies)

    def sdf_at(self, points: Tensor) -> Tensor:
        """(N,) signed distance (metres, negative inside) at canonical points (N, 3): the grid
        values interpolated trilinearly (the undeformed grid is a regular lattice)."""
        n = self.cfg.resolution + 1
        volume = self.sdf_values.reshape(1, 1, n, n, n)  # axes (x, y, z) as tet_grid lays them
        extent = points.new_tensor(self.cfg.extent)
        where = (points / extent).flip(-1).reshape(1, -1, 1, 1, 3)  # grid_sample wants (z, y, x)
        sampled = nn.functional.grid_sample(volume, where, align_corners=True,
                                            padding_mode="border")  # fmt: skip
        return sampled.reshape(-1)

    def sdf_roughness(self) -> Tensor:
        """Mean squared second difference (along each axis, in units of the head's size) of
        the SDF's change from the prior: per-vertex values otherwise leave terraces."""
        n = self.cfg.resolution + 1
        change = ((self.sdf_values - self.sdf_prior) / UNIT).reshape(n, n, n)
        return sum(change.diff(n=2, dim=d).square().mean() for d in range(3))

    def deformed_grid(self) -> Tensor:
        """DMTet's grid deformation, bounded to half a cell so no tet inverts."""
        return self.grid + 0.5 * self.cell * torch.tanh(self.grid_offsets)

    def expression_offset(self, points: Tensor, expr_code: Tensor) -> Tensor:
        """(N, 3) offsets, zero for the neutral code (0): otherwise the MLP can take over the
        shape (measured: the posed meshes fit the silhouettes while the neutral one did not)."""
        pe = self._pe(points)

        def field(code: Tensor) -> Tensor:
            x = torch.cat([pe, code.expand(len(points), -1)], -1)
            return self.cfg.max_expression_offset * torch.tanh(self.expression_mlp(x))

        return field(expr_code) - field(torch.zeros_like(expr_code))

    def extract(self, expr_code: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The canonical mesh (vertices, faces), deformed by an expression code when given."""
        grid = self.deformed_grid()
        vertices, faces = marching_tetrahedra(grid, self.tets, self.sdf_values)
        if expr_code is not None and len(vertices):
            vertices = vertices + self.expression_offset(vertices, expr_code)
        return vertices, faces

    def colors(self, canonical: Tensor, normals_cam: Tensor, code: Tensor) -> Tensor:
        x = torch.cat([self._pe(canonical), normals_cam, code.expand(len(canonical), -1)], -1)
        return torch.sigmoid(self.color_mlp(x))


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """(V, 3) unit normals: the area-weighted sum of the adjacent faces' normals."""
    p = vertices[faces]
    face_n = torch.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1)
    normals = torch.zeros_like(vertices).index_add(0, faces.reshape(-1),
                                                   face_n.repeat_interleave(3, 0))  # fmt: skip
    return nn.functional.normalize(normals, dim=-1, eps=1e-12)


def laplacian_loss(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean squared distance of each vertex from its neighbours' centroid (uniform weights)."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = torch.unique(torch.sort(edges, 1).values, dim=0)
    i, j = torch.cat([edges[:, 0], edges[:, 1]]), torch.cat([edges[:, 1], edges[:, 0]])
    total = torch.zeros_like(vertices).index_add(0, i, vertices[j])
    count = torch.zeros(len(vertices), 1, dtype=vertices.dtype).index_add(
        0, i, torch.ones(len(i), 1, dtype=vertices.dtype)
    )
    return (vertices - total / count.clamp(min=1)).square().sum(-1).mean()


def sample_surface(vertices: Tensor, faces: Tensor, count: int, seed: int = 0) -> Tensor:
    """(count, 3) points on the mesh, uniform in area (seeded)."""
    p = vertices[faces]
    area = torch.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1).norm(dim=-1)
    gen = torch.Generator().manual_seed(seed)
    face = torch.multinomial(area, count, replacement=True, generator=gen)
    u, v = torch.rand(count, generator=gen), torch.rand(count, generator=gen)
    flip = u + v > 1
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    a, b, c = p[face].unbind(1)
    return a + u[:, None] * (b - a) + v[:, None] * (c - a)


def point_to_mesh_distance(points: Tensor, vertices: Tensor, faces: Tensor,
                           candidates: int = 32) -> Tensor:  # fmt: skip
    """(N,) distance from each point to the nearest triangle of the mesh, exact among the
    `candidates` triangles with the nearest centroids (the nearest triangle is one of them
    unless triangles are far larger than their spacing)."""
    tri = vertices[faces]  # (F, 3, 3)
    k = min(candidates, len(faces))
    near = torch.cdist(points, tri.mean(1)).topk(k, largest=False).indices  # (N, k)
    p = points[:, None]
    return (_closest_on_triangles(p, tri[near]) - p).norm(dim=-1).min(1).values


def _closest_on_triangles(p: Tensor, tri: Tensor) -> Tensor:
    """(n, k, 3) closest points to the points p (n, 1, 3) of their triangles tri (n, k, 3, 3):
    the projection onto the plane when it falls inside, else the closest edge point."""
    a, b, c = tri[:, :, 0], tri[:, :, 1], tri[:, :, 2]
    n = torch.cross(b - a, c - a, dim=-1)
    area = n.norm(dim=-1, keepdim=True)
    n = n / area.clamp(min=1e-12)
    proj = p - ((p - a) * n).sum(-1, keepdim=True) * n

    def side(u, v):
        return (torch.cross(v - u, proj - u, dim=-1) * n).sum(-1)

    # A degenerate (zero-area) triangle has no plane: only its edges count.
    inside = (side(a, b) >= 0) & (side(b, c) >= 0) & (side(c, a) >= 0) & (area[..., 0] > 1e-12)
    candidates = torch.stack([_closest_on_segment(p, a, b), _closest_on_segment(p, b, c),
                              _closest_on_segment(p, c, a)])  # fmt: skip
    nearest = (candidates - p).norm(dim=-1).argmin(0)
    on_edge = candidates.gather(0, nearest[None, ..., None].expand(1, *nearest.shape, 3))[0]
    return torch.where(inside[..., None], proj, on_edge)


def _closest_on_segment(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    ab = b - a
    t = ((p - a) * ab).sum(-1, keepdim=True) / (ab * ab).sum(-1, keepdim=True).clamp(min=1e-12)
    return a + t.clamp(0, 1) * ab


def mesh_to_mesh_distance(verts_a, faces_a, verts_b, faces_b, samples: int = 1000,
                          front_only: bool = True, seed: int = 0) -> float:  # fmt: skip
    """Symmetric mean distance (metres) from area-uniform surface samples of each mesh to the
    other mesh's triangles (exact point-to-triangle, so no sampling floor). front_only keeps
    samples with z < 0, the half of the head the camera sees (the back of the head is in no
    frame, so no method could recover it)."""
    va, vb = verts_a.detach().float(), verts_b.detach().float()
    pa, pb = sample_surface(va, faces_a, samples, seed), sample_surface(vb, faces_b, samples, seed)
    if front_only:
        pa, pb = pa[pa[:, 2] < 0], pb[pb[:, 2] < 0]
    if len(pa) == 0 or len(pb) == 0:
        return math.inf
    a_to_b = point_to_mesh_distance(pa, vb, faces_b).mean()
    b_to_a = point_to_mesh_distance(pb, va, faces_a).mean()
    return float((a_to_b + b_to_a) / 2)


def _camera(K: Tensor, size: int) -> Camera:
    k = K.detach().double().tolist()
    return Camera(k[0][0], k[1][1], k[0][2], k[1][2], size, size)


def frame_losses(model: MeshHead, batch: dict) -> dict[str, Tensor]:
    """The fork's loss terms, averaged over the batch."""
    vertices, faces = model.extract()
    size = batch["image"].shape[-1]
    terms: dict[str, list[Tensor]] = {k: [] for k in LOSS_WEIGHTS}
    for k in range(len(batch["image"])):
        expr = batch["expr_code"][k]
        code = torch.cat([batch["iden_code"][k], expr])
        posed = vertices + model.expression_offset(vertices, expr)
        w2c, camera = batch["w2c"][k], _camera(batch["K"][k], size)
        normals = vertex_normals(posed, faces) @ w2c[:3, :3].T
        # Colour trains the colour MLP only: through barycentrics it moved the vertices away
        # from the surface (measured: 5.3 -> 8.9 mm in 6 epochs on one subject).
        rgb, covered = render_attributes(posed.detach(), faces,
                                         model.colors(vertices, normals, code).float(),
                                         camera, w2c)  # fmt: skip
        mask = batch["head_mask"][k, 0]
        target = batch["image"][k].permute(1, 2, 0) * mask[..., None] + (1 - mask[..., None])
        rendered = torch.where(covered[..., None], rgb, torch.ones_like(rgb))
        terms["rgb"].append((rendered - target).abs().mean())
        soft = soft_silhouette(posed, faces, camera, w2c, model.cfg.sigma)
        iou = (soft * mask).sum() / (soft + mask - soft * mask).sum().clamp(min=1e-6)
        terms["sil"].append(1 - iou)
        lmk = model.landmarks + model.expression_offset(model.landmarks, expr)
        terms["def"].append(((lmk - batch["landmarks_3d"][k]) / UNIT).square().sum(-1).mean())
        offset = model.expression_offset(vertices, expr) / UNIT
        terms["offset"].append(offset.square().sum(-1).mean())
    out = {k: torch.stack(v).mean() for k, v in terms.items() if v}
    out["lmk"] = model.sdf_at(model.landmarks).abs().mean() / UNIT
    grid_offset = (model.deformed_grid() - model.grid) / UNIT
    out["offset"] = out["offset"] + grid_offset.square().sum(-1).mean()
    out["lap"] = laplacian_loss(vertices / UNIT, faces)
    out["sdf_smooth"] = model.sdf_roughness()
    out["total"] = sum(LOSS_WEIGHTS[k] * out[k] for k in LOSS_WEIGHTS)
    return out


def gt_distance(model: MeshHead, data: XGazeDataset) -> float | None:
    """Mean over subjects of the neutral mesh's distance to their ground truth (synthetic)."""
    meshes = [data.gt_mesh(s) for s in data.subjects]
    if any(m is None for m in meshes):
        return None
    with torch.no_grad():
        vertices, faces = model.extract()
    if len(faces) == 0:
        return math.inf
    return sum(mesh_to_mesh_distance(vertices, faces, v, f) for v, f in meshes) / len(meshes)


def build(data: XGazeDataset, cfg: MeshHeadConfig | None = None) -> MeshHead:
    info = data.files[0]
    cfg = cfg or MeshHeadConfig(iden_dims=info.iden_dims, expr_dims=info.expr_dims)
    model = MeshHead(cfg)
    with torch.no_grad():
        model.landmarks.copy_(data[0]["landmarks_3d"])
    return model


def _epoch(model, loader, optimizer, progress: bool, desc: str) -> dict:
    sums: dict[str, float] = {}
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        terms = frame_losses(model, batch)
        if optimizer is not None:
            optimizer.zero_grad()
            terms["total"].backward()
            optimizer.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
    return {k: v / max(len(loader), 1) for k, v in sums.items()}


def train_meshhead(opt: MeshHeadOptions, progress: bool = True) -> dict:
    """Fit a MeshHead to the training subjects of opt.img_dir; see the module docstring."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    run = Path(opt.run_dir) if opt.run_dir else Path(opt.work_dir) / f"{opt.name}_{stamp}"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opt.seed)
    train = XGazeDataset(opt.img_dir, "train", frames="train", max_frames=opt.max_frames)
    val = XGazeDataset(opt.img_dir, "train", frames="val", max_frames=opt.max_frames)
    model = build(train)
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.lr)
    ckpt = Checkpointer(run / "checkpoints", NAMES, model=model, optimizer=optimizer)
    state = Progress()
    if (run / "checkpoints" / NAMES.last).is_file():
        state, _ = ckpt.load(run / "checkpoints" / NAMES.last)
    runlog = RunLog(run, resume_epoch=state.epoch, panels=PANELS,
                    meta={"model": model.cfg.as_dict()})  # fmt: skip
    say = LogFile(run / "log.txt")
    start = gt_distance(model, train)
    say(
        f"[MeshHead] {len(train)} training / {len(val)} validation frames of "
        f"{len(train.subjects)} subject(s); grid {model.cfg.resolution}^3 x 6 tets; "
        f"{'resumed at epoch ' + str(state.epoch) if state.epoch else 'sphere prior'}"
        + (f"; mesh to ground truth {1000 * start:.2f} mm" if start is not None else "")
    )
    val_loader = DataLoader(val, batch_size=max(opt.batch_size, 4), collate_fn=collate)
    stale = 0
    for epoch in range(state.epoch + 1, opt.num_epochs + 1):
        # the epoch's order from (seed, epoch), so a resumed run shuffles as an uninterrupted one
        loader = DataLoader(train, batch_size=opt.batch_size, shuffle=True, collate_fn=collate,
                            num_workers=opt.num_workers,
                            generator=epoch_generator(opt.seed, epoch))  # fmt: skip
        started = time.perf_counter()
        model.train()
        train_terms = _epoch(model, loader, optimizer, progress, f"meshhead epoch {epoch}")
        model.eval()
        with torch.no_grad():
            val_terms = _epoch(model, val_loader, None, False, "val")
        distance = gt_distance(model, train)
        record = {"epoch": epoch, "seconds": time.perf_counter() - started,
                  "train_loss": train_terms["total"], "val_loss": val_terms["total"],
                  **{f"train_{k}": v for k, v in train_terms.items() if k != "total"},
                  "mesh_gt_distance_mm": None if distance is None else 1000 * distance}  # fmt: skip
        improved = state.finish_epoch(record, val_terms["total"])
        stale = 0 if improved else stale + 1
        ckpt.save_epoch(state, {"model": model.cfg.as_dict()}, improved=improved, periodic=True)
        runlog.epoch(record)
        gt = "unavailable" if distance is None else f"{1000 * distance:.2f} mm"
        say(
            f"epoch {epoch} train_loss {train_terms['total']:.4f} val_loss "
            f"{val_terms['total']:.4f} mesh_gt_distance {gt} "
            f"({record['seconds']:.1f} s) -> {NAMES.epoch(epoch)}"
        )
        if opt.early_stopping and stale >= opt.patience:
            say(f"[Early stopping] no validation improvement for {opt.patience} epochs")
            break
    runlog.close()
    return {"run_dir": str(run), "best": str(final_checkpoint(run)), "epochs": state.epoch,
            "best_epoch": state.best_epoch, "initial_gt_distance_mm": _mm(start),
            "final_gt_distance_mm": _mm(gt_distance(model, train))}  # fmt: skip


def _mm(distance: float | None) -> float | None:
    return None if distance is None else 1000 * distance


def final_checkpoint(run_dir) -> Path:
    """The checkpoint step 2 loads: the epoch with the lowest validation loss."""
    path = Path(run_dir) / "checkpoints" / NAMES.best
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no checkpoints/{NAMES.best}; train the MeshHead first "
                              "(fresnel train_meshhead)")  # fmt: skip
    return path


def load_meshhead(path) -> MeshHead:
    """A trained MeshHead from any of its checkpoints (meshhead_epoch_N.pth, best.pth)."""
    state = read_checkpoint(path)
    if "model" not in state or "model" not in state.get("config", {}):
        raise CheckpointError(f"{path}: not a MeshHead checkpoint; pass a "
                              "checkpoints/meshhead_epoch_N.pth of fresnel train_meshhead")  # fmt: skip
    cfg = state["config"]["model"]
    model = MeshHead(MeshHeadConfig(**{**cfg, "extent": tuple(cfg["extent"])}))
    model.load_state_dict(state["model"])
    return model.eval()
