"""Pose of held-out queries with a trained VPOG model, scored with BOP's AR, beside a baseline
that picks a random template and an oracle that gives the pose stage perfect network outputs.

For one query and its object's N templates:
1. correspondences, for every template (d_ref = that template's viewing direction, S = 1):
   each object patch of the query whose best class is a template patch gives its anchor pixel
   and the object point the template shows at that patch's centre plus the predicted residual
   (the template's depth, back-projected and moved to the object frame).
2. retrieval by geometric verification: PnP-RANSAC on each template's correspondences, with an
   inlier threshold of one patch (they are patch matches); the template with the most inliers
   wins, ties broken by the mean over the query's object patches of p(seen) = 1 - p(unseen).
   (Scoring by that mean alone picked a template among the S_p nearest about as often as a
   random draw did in a first trial on 24 queries: 5 vs 6.) Retrieval is right when the
   winner is among the S_p templates nearest to the ground truth by out-of-plane angle
   (S_p = num_positive_templates of the training config), and exact when it is the nearest.
3. pose: the winner's PnP-RANSAC estimate, then BOP's VSD, MSSD and MSPD errors and their
   average recalls (`fresnel.vpog.bop`; VSD's delta is 15 mm, written in metres here; MSSD and
   MSPD over the model's vertices and its symmetries, as bop_toolkit), plus the rotation,
   translation and in-plane errors. A failed PnP counts as an error of infinity.
The baseline runs steps 2-3 on a template drawn at random (seeded) instead of step 1's. The
oracle runs step 3 on the nearest template with the ground-truth labels in place of the
network's outputs (`oracle_correspondences`): its AR is what the pose stage reaches when the
network is perfect, so a low AR with a high oracle AR says the network is undertrained, and a
low oracle AR says the pose stage (or the templates) is wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fresnel.vpog import bop
from fresnel.vpog.flow import BACKGROUND, compute_flow_labels
from fresnel.vpog.geometry import in_plane_angle, out_of_plane_angle, viewing_direction
from fresnel.vpog.lightning_module import anchor_uv, object_coordinates
from fresnel.vpog.mesh_render import render_mesh
from fresnel.vpog.objects import ObjectMesh
from fresnel.vpog.pose import rotation_error_deg, solve_pnp_ransac, translation_error

METHODS = ("vpog", "random_template", "oracle")
VSD_DELTA_M = bop.VSD_DELTA_MM / 1000.0
CHUNK = 32  # templates matched per forward pass


@dataclass
class QueryResult:
    key: str
    object_id: str
    method: str
    template: int
    nearest: int
    retrieval_ok: bool
    retrieval_exact: bool
    correspondences: int
    inliers: int
    rotation_error_deg: float
    translation_error: float | None  # None when PnP failed
    inplane_error_deg: float
    ar: float
    ar_vsd: float
    ar_mssd: float
    ar_mspd: float


@torch.no_grad()
def match_templates(model, query_rgb: Tensor, templates) -> tuple[Tensor, list, Tensor]:
    """The query against each of the N templates (S = 1, d_ref = the template's direction):
    (logits [N, Nq, Nt+1], the model's features per chunk of CHUNK templates, directions)."""
    rgb = templates.rgb.float() / 255
    query = query_rgb.float()[None] / 255
    directions = _viewing_directions(templates.poses)
    logits, features = [], []
    for start in range(0, len(rgb), CHUNK):
        chunk = rgb[start : start + CHUNK]
        images = torch.stack((query.expand(len(chunk), -1, -1, -1), chunk), dim=1)
        dirs = directions[start : start + CHUNK]
        out = model(images, dirs, dirs[:, None])
        logits.append(model.classify(out)[:, 0])
        features.append(out)
    return torch.cat(logits), features, directions


def template_scores(logits: Tensor, query_patch_mask: Tensor) -> Tensor:
    """[N] mean over the query's object patches of the probability of being seen (step 1)."""
    seen = 1 - logits.softmax(-1)[..., -1]  # [N, Nq]
    weights = query_patch_mask.float()
    return (seen * weights).sum(-1) / weights.sum().clamp_min(1)


@torch.no_grad()
def correspondences(model, features, template: int, logits: Tensor, query_patch_mask: Tensor,
                    templates, patch_size: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(points_3d [M, 3] object frame, points_2d [M, 2] query pixels) for one template, from
    the model's best patch class and flow residual of each query patch."""
    out = features[template // CHUNK]
    n_patches = logits.shape[-2]
    best = logits[template].argmax(-1)  # [Nq]
    buddy = best.clamp(max=n_patches - 1)
    residual = model.flow(_select(out, template % CHUNK), buddy[None, None])[0, 0]  # [Nq, 2]
    use = query_patch_mask & (best < n_patches)
    return matched_points(template, buddy, residual, use, templates, patch_size)


def oracle_correspondences(query, template: int, templates,
                           patch_size: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """`correspondences` with the ground truth in place of the network: each query patch's
    buddy label and its anchor's offset in the buddy patch (`flow.compute_flow_labels`), the
    targets the model is trained to predict, through the same steps after it."""
    flow = compute_flow_labels(query.depth.double(), query.mask, query.K.double(),
                               query.pose.double(), templates.depth[template].double(),
                               templates.mask[template], templates.K.double(),
                               templates.poses[template].double(), patch_size)  # fmt: skip
    labels = flow.labels.reshape(-1)
    centre = patch_size // 2
    residual = flow.dense_flow[:, :, centre, centre].reshape(-1, 2).nan_to_num(0.0)
    use = (labels != BACKGROUND) & (labels < flow.unseen_label)
    return matched_points(template, labels.clamp(min=0), residual, use, templates, patch_size)


def matched_points(template: int, buddy: Tensor, residual: Tensor, use: Tensor, templates,
                   patch_size: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The object point that `template` shows where each used query patch's match lands (its
    buddy patch's centre + residual, patch units), paired with the query patch's anchor pixel."""
    height, width = templates.rgb.shape[-2:]
    grid_w = width // patch_size
    centre = torch.stack(((buddy % grid_w + 0.5), (buddy // grid_w + 0.5)), -1)
    uv = centre * patch_size + residual * patch_size
    xyz = object_coordinates(templates.depth[template][None].double(),
                             templates.mask[template][None], templates.K[None].double(),
                             templates.poses[template][None].double())[0]  # fmt: skip
    rows = uv[:, 1].floor().long().clamp(0, height - 1)
    cols = uv[:, 0].floor().long().clamp(0, width - 1)
    use = use & templates.mask[template][rows, cols]
    anchors = anchor_uv(height // patch_size, grid_w, patch_size).double()
    return xyz[rows, cols][use].numpy(), anchors[use].numpy()


def _select(features, index: int):
    """The `index`-th item of a batch of model features (a dataclass of [B, ...] tensors)."""
    fields = {name: value[index : index + 1] for name, value in features.__dict__.items()}
    return type(features)(**fields)


def _viewing_directions(poses: Tensor) -> Tensor:
    return viewing_direction(poses[:, :3, :3].double()).float()


def query_patch_mask(mask: Tensor, patch_size: int) -> Tensor:
    """[Nq] bool: the query patches whose anchor pixel is on the object."""
    offset = patch_size // 2
    return mask[offset::patch_size, offset::patch_size].reshape(-1)


def score(
    query, template: int, points: tuple[np.ndarray, np.ndarray], templates, obj: ObjectMesh,
    symmetries, nearest: int, positives: set[int], method: str, patch_size: int,
) -> QueryResult:  # fmt: skip
    """PnP on the correspondences, then every error and recall of the estimate. MSSD and MSPD
    run over the model's vertices, as bop_toolkit does, and over its symmetries (or None)."""
    points_3d, points_2d = points
    K = query.K.numpy()
    R_g, t_g = query.pose[:3, :3].numpy(), query.pose[:3, 3].numpy()
    estimate = None
    if len(points_3d) >= 6:
        estimate = solve_pnp_ransac(points_3d, points_2d, K, reprojection_error=patch_size)
    common = dict(key=query.key, object_id=query.object_id, method=method, template=template,
                  nearest=nearest, retrieval_ok=template in positives,
                  retrieval_exact=template == nearest, correspondences=len(points_3d))  # fmt: skip
    if estimate is None or not estimate.success:
        return QueryResult(**common, inliers=0, rotation_error_deg=180.0,
                           translation_error=None, inplane_error_deg=180.0,
                           ar=0.0, ar_vsd=0.0, ar_mssd=0.0, ar_mspd=0.0)  # fmt: skip
    height, width = query.depth.shape
    depth_est = _render_depth(obj, query.K, estimate.R, estimate.t, width, height)
    depth_gt = _render_depth(obj, query.K, R_g, t_g, width, height)
    scores = bop.score_pose(estimate.R, estimate.t, R_g, t_g, K, obj.vertices.numpy(),
                            obj.diameter, depth_est, depth_gt,
                            query.depth.numpy().astype(np.float64), symmetries,
                            delta=VSD_DELTA_M)  # fmt: skip
    return QueryResult(
        **common,
        inliers=int(estimate.inliers.sum()),
        rotation_error_deg=rotation_error_deg(estimate.R, R_g),
        translation_error=translation_error(estimate.t, t_g),
        inplane_error_deg=_inplane_error(estimate.R, R_g, templates.poses[template, :3, :3]),
        ar=scores.ar, ar_vsd=scores.ar_vsd, ar_mssd=scores.ar_mssd, ar_mspd=scores.ar_mspd,
    )  # fmt: skip


def _render_depth(obj: ObjectMesh, K, R, t, width: int, height: int) -> np.ndarray:
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3], pose[:3, 3] = torch.as_tensor(R), torch.as_tensor(t)
    render = render_mesh(obj.vertices.double(), obj.faces, torch.as_tensor(K), pose, width, height)
    return render.depth.numpy().astype(np.float64)


def _inplane_error(R_est, R_gt, R_template: Tensor) -> float:
    """|in-plane angle of the estimate - that of the ground truth|, both against the template."""
    R_template = R_template.double()
    estimated = in_plane_angle(torch.as_tensor(R_est, dtype=torch.float64), R_template)
    truth = in_plane_angle(torch.as_tensor(R_gt, dtype=torch.float64), R_template)
    difference = float(estimated - truth)
    return abs(math.degrees(math.atan2(math.sin(difference), math.cos(difference))))


def evaluate_query(model, query, templates, obj: ObjectMesh, symmetries, patch_size: int,
                   num_positive: int, rng: np.random.Generator) -> list[QueryResult]:  # fmt: skip
    """One result per method (`METHODS`) for one query; `symmetries` of the object or None."""
    angles = out_of_plane_angle(query.pose[:3, :3].double(), templates.poses[:, :3, :3].double())
    order = torch.sort(angles, stable=True).indices
    nearest, positives = int(order[0]), {int(i) for i in order[:num_positive]}
    mask = query_patch_mask(query.mask, patch_size)
    logits, features, _ = match_templates(model, query.rgb, templates)
    points = [correspondences(model, features, t, logits, mask, templates, patch_size)
              for t in range(len(logits))]  # fmt: skip
    chosen = {
        "vpog": retrieve(points, template_scores(logits, mask), query.K.numpy(), patch_size),
        "random_template": int(rng.integers(len(templates.rgb))),
        "oracle": nearest,
    }
    matches = {method: points[template] for method, template in chosen.items()}
    matches["oracle"] = oracle_correspondences(query, nearest, templates, patch_size)
    return [
        score(
            query,
            template,
            matches[method],
            templates,
            obj,
            symmetries,
            nearest,
            positives,
            method,
            patch_size,
        )
        for method, template in chosen.items()
    ]


def retrieve(points: list[tuple[np.ndarray, np.ndarray]], scores: Tensor, K: np.ndarray,
             patch_size: int) -> int:  # fmt: skip
    """The template whose correspondences agree best with one pose: the most PnP-RANSAC
    inliers (geometric verification), ties broken by the seen score."""

    def key(template: int) -> tuple[int, float]:
        points_3d, points_2d = points[template]
        inliers = 0
        if len(points_3d) >= 6:
            estimate = solve_pnp_ransac(points_3d, points_2d, K, reprojection_error=patch_size)
            inliers = int(estimate.inliers.sum()) if estimate.success else 0
        return inliers, float(scores[template])

    return max(range(len(points)), key=key)


def summarize(results: list[QueryResult]) -> dict[str, dict[str, float]]:
    """Per method: AR and its parts, retrieval accuracy, median rotation and in-plane error."""
    summary = {}
    for method in METHODS:
        rows = [r for r in results if r.method == method]
        if not rows:
            continue
        summary[method] = {
            "queries": len(rows),
            "AR": float(np.mean([r.ar for r in rows])),
            "AR_VSD": float(np.mean([r.ar_vsd for r in rows])),
            "AR_MSSD": float(np.mean([r.ar_mssd for r in rows])),
            "AR_MSPD": float(np.mean([r.ar_mspd for r in rows])),
            "retrieval_accuracy": float(np.mean([r.retrieval_ok for r in rows])),
            "retrieval_exact": float(np.mean([r.retrieval_exact for r in rows])),
            "rotation_error_deg_median": float(np.median([r.rotation_error_deg for r in rows])),
            "inplane_error_deg_median": float(np.median([r.inplane_error_deg for r in rows])),
        }
    return summary


def table_markdown(summary: dict, title: str) -> str:
    columns = ("AR", "AR_VSD", "AR_MSSD", "AR_MSPD", "retrieval_accuracy", "retrieval_exact",
               "rotation_error_deg_median", "inplane_error_deg_median")  # fmt: skip
    lines = [f"# {title}", "", "| method | queries | " + " | ".join(columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]  # fmt: skip
    for method, row in summary.items():
        cells = " | ".join(f"{row[c]:.3f}" if c.startswith(("AR", "ret")) else f"{row[c]:.1f}"
                           for c in columns)  # fmt: skip
        lines.append(f"| {method} | {row['queries']} | {cells} |")
    return "\n".join(lines) + "\n"


def evaluate(module, queries, templates_by_object: dict, objects: dict, out_dir: str | Path,
             num_positive: int, seed: int = 0, progress: bool = True,
             symmetries: dict | None = None) -> dict:  # fmt: skip
    """Score every query, write per_query.json, metrics.json, table.md; the summary.
    `symmetries`: per object id, its symmetry transformations (`fresnel.vpog.bop`), if any."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module.eval()
    patch_size = int(module.cfg["model"]["patch_size"])
    rng = np.random.default_rng(seed)
    symmetries = symmetries or {}
    results = []
    for query in tqdm(list(queries), desc="vpog evaluate", disable=not progress):
        templates = templates_by_object[query.object_id]
        results += evaluate_query(module.model, query, templates, objects[query.object_id],
                                  symmetries.get(query.object_id), patch_size, num_positive,
                                  rng)  # fmt: skip
    summary = summarize(results)
    (out_dir / "per_query.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "table.md").write_text(table_markdown(summary, "VPOG on held-out queries"))
    return summary, results


def evaluate_run(run_dir, web_dir, templates_dir, out_dir, max_queries: int | None = None,
                 seed: int = 0, progress: bool = True) -> dict:  # fmt: skip
    """Evaluate a `vpog_train` save_dir's last checkpoint on the query shards in `web_dir`,
    with the templates and meshes in `templates_dir`; writes pictures beside the tables."""
    from itertools import islice

    from fresnel.vpog.lightning_module import VPOGModule
    from fresnel.vpog.synthetic import load_objects, load_symmetries
    from fresnel.vpog.templates import load_templates
    from fresnel.vpog.train import LAST_CHECKPOINT
    from fresnel.vpog.webdata import read_shards

    checkpoint = Path(run_dir) / LAST_CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no trained VPOG model; run fresnel vpog_train")
    module = VPOGModule.load_from_checkpoint(checkpoint, map_location="cpu")
    objects = load_objects(templates_dir)
    templates = {name: load_templates(Path(templates_dir) / name) for name in objects}
    queries = [q for q in read_shards(web_dir) if q.object_id in objects]
    queries = list(islice(queries, max_queries))
    num_positive = int(module.cfg["data"]["dataloader"]["num_positive_templates"])
    symmetries = {name: load_symmetries(templates_dir, name) for name in objects}
    summary, results = evaluate(module, queries, templates, objects, out_dir, num_positive, seed,
                                progress, symmetries)  # fmt: skip
    chosen = {r.key: r.template for r in results if r.method == "vpog"}
    shown = queries[:4]
    save_figures(module, shown, [chosen[q.key] for q in shown], templates, Path(out_dir))
    return summary


def save_figures(module, queries, chosen: list[int], templates_by_object: dict, out_dir: Path):
    """retrieval.png: each query beside the template VPOG retrieved and the nearest one;
    flow.png: the same queries with the predicted patch matches as HSV flow (patch units)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fresnel.vpog.visualize import flow_to_rgb

    patch_size = int(module.cfg["model"]["patch_size"])
    retrieval, r_axes = plt.subplots(len(queries), 3, figsize=(6, 2 * len(queries)), squeeze=False)
    flow, f_axes = plt.subplots(len(queries), 3, figsize=(6, 2 * len(queries)), squeeze=False)
    for query, template, r_row, f_row in zip(queries, chosen, r_axes, f_axes, strict=True):
        templates = templates_by_object[query.object_id]
        angles = out_of_plane_angle(
            query.pose[:3, :3].double(), templates.poses[:, :3, :3].double()
        )
        nearest = int(angles.argmin())
        logits, _, _ = match_templates(module.model, query.rgb,
                                       _subset(templates, template))  # fmt: skip
        matches = flow_to_rgb(*_predicted_flow(logits[0], query_patch_mask(query.mask, patch_size),
                                               query.rgb.shape[-1], patch_size))  # fmt: skip
        _show(r_row, (query.rgb, templates.rgb[template], templates.rgb[nearest]),
              ("query", f"retrieved {template} ({math.degrees(angles[template]):.0f} deg off)",
               f"nearest {nearest}"))  # fmt: skip
        _show(f_row, (query.rgb, templates.rgb[template], matches),
              ("query", f"template {template}", "predicted matches (HSV)"))  # fmt: skip
    for fig, name in ((retrieval, "retrieval.png"), (flow, "flow.png")):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)


def _subset(templates, index: int):
    """The template set reduced to one template (same fields, a batch of one)."""
    fields = dict(templates.__dict__)
    for name in ("rgb", "depth", "mask", "poses"):
        fields[name] = fields[name][index : index + 1]
    return type(templates)(**fields)


def _show(axes, images, titles) -> None:
    for ax, image, title in zip(axes, images, titles, strict=True):
        image = torch.as_tensor(image)
        ax.imshow(image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image.numpy())
        ax.set_title(title, fontsize=7)
        ax.axis("off")


def _predicted_flow(logits: Tensor, mask: Tensor, size: int, patch_size: int):
    """(flow [H, W, 2], valid [H, W]) in patch units from each query patch to the centre of
    its best-scoring template patch, one value per patch."""
    from fresnel.vpog.visualize import blocks

    grid = size // patch_size
    best = logits.argmax(-1)
    valid = mask & (best < logits.shape[-1] - 1)
    target = torch.stack(((best % grid).float(), (best // grid).float()), -1)
    source = torch.stack((torch.arange(grid * grid) % grid, torch.arange(grid * grid) // grid), -1)
    flow = (target - source.float()).reshape(grid, grid, 2)
    return blocks(flow, patch_size), blocks(valid.reshape(grid, grid), patch_size)
