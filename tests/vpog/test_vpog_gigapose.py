"""GigaPose's templates (nv-nguyen/gigapose) imported here: an independent writer of its layout,
the import, and the same renders in this package's own layout, scored alike.

GigaPose's layout, from its code (`render_bop_templates.py` and `call_panda3d.py` write it;
`src/dataloader/template.py` `TemplateData` and `src/custom_megapose/template_dataset.py`
read it back):
    templates/<dataset>/object_poses/{obj_id:06d}.npy    (V, 4, 4) float64, object -> camera,
                                                         OpenCV axes, translation in mm
    templates/<dataset>/{obj_id:06d}/{view:06d}.png       RGBA uint8; alpha = mask * 255
    templates/<dataset>/{obj_id:06d}/{view:06d}_depth.png uint16 depth in mm, rounded
                                                         (bop_toolkit's save_depth), 0 = none
    camera: 640 x 480, K = [[572.4114, 0, 320], [0, 573.57043, 240], [0, 0, 1]], hard-coded
BOP models: models/obj_{obj_id:06d}.ply in mm, models/models_info.json keyed by str(obj_id).
"""

import json
import math

import numpy as np
import pytest
import torch
import trimesh
from omegaconf import OmegaConf
from PIL import Image

from fresnel.vpog.config import compose
from fresnel.vpog.evaluate import evaluate
from fresnel.vpog.geometry import template_poses
from fresnel.vpog.gigapose import import_templates, square_crop
from fresnel.vpog.lightning_module import VPOGModule
from fresnel.vpog.objects import box, load_mesh, load_object, save_object
from fresnel.vpog.synthetic import load_symmetries, render_object_templates
from fresnel.vpog.templates import TemplateSet, load_templates, render_view, save_templates
from fresnel.vpog.webdata import render_queries

OBJ_ID, NAME, SIZE, PATCH = 7, "obj_000007", 64, 8
K_GIGAPOSE = torch.tensor([[572.4114, 0, 320], [0, 573.57043, 240], [0, 0, 1]], dtype=torch.float64)
HALF_TURN_Z = [-1.0, 0, 0, 0, 0, -1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0]  # the box's own symmetry


def write_gigapose_object(root, obj_id: int, templates: TemplateSet) -> None:
    """GigaPose's files for one object, from renders in metres."""
    (root / "object_poses").mkdir(parents=True, exist_ok=True)
    poses = templates.poses.clone()
    poses[:, :3, 3] *= 1000.0
    np.save(root / "object_poses" / f"{obj_id:06d}.npy", poses.numpy())
    folder = root / f"{obj_id:06d}"
    folder.mkdir()
    for view in range(len(templates)):
        alpha = templates.mask[view].numpy().astype(np.uint8) * 255
        rgba = np.dstack([templates.rgb[view].permute(1, 2, 0).numpy(), alpha])
        Image.fromarray(rgba, "RGBA").save(folder / f"{view:06d}.png")
        depth_mm = np.round(templates.depth[view].double().numpy() * 1000.0).astype(np.uint16)
        Image.fromarray(depth_mm).save(folder / f"{view:06d}_depth.png")


@pytest.fixture(scope="module")
def both_layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("gigapose")
    obj = box()
    models = root / "models"
    models.mkdir()
    mesh = trimesh.Trimesh(obj.vertices.double().numpy() * 1000.0, obj.faces.numpy(), process=False)
    mesh.export(models / f"{NAME}.ply")
    entry = {"diameter": obj.diameter * 1000.0, "symmetries_discrete": [HALF_TURN_Z]}
    (models / "models_info.json").write_text(json.dumps({str(OBJ_ID): entry}))
    poses = template_poses(0, radius=0.4, upper_hemisphere=True)
    views = [render_view(obj, K_GIGAPOSE, pose, 640, 480) for pose in poses]
    rgb, depth, mask = (torch.stack(parts) for parts in zip(*views, strict=True))
    depth = (depth.double() * 1000).round().div(1000).float()  # what GigaPose's files can hold
    renders = TemplateSet(rgb, depth, mask, poses, K_GIGAPOSE, NAME, 0, False)
    write_gigapose_object(root / "templates" / "lmo", OBJ_ID, renders)

    counts = import_templates(root / "templates" / "lmo", models, root / "imported", SIZE)
    ours = save_templates(square_crop(renders, SIZE), root / "ours")
    save_object(load_mesh(models / f"{NAME}.ply", scale=0.001), ours / "mesh.pt")
    return root, counts, obj


def test_the_import_reads_gigapose_units_frames_and_masks(both_layouts):
    root, counts, _ = both_layouts
    assert counts == {NAME: 26}
    imported, ours = load_templates(root / "imported" / NAME), load_templates(root / "ours" / NAME)
    scale = SIZE / 480
    expected_K = torch.tensor([[572.4114 * scale, 0, 240 * scale], [0, 573.57043 * scale, 240 * scale],
                               [0, 0, 1]], dtype=torch.float64)  # fmt: skip
    torch.testing.assert_close(imported.K, expected_K, rtol=0, atol=1e-12)
    torch.testing.assert_close(imported.poses, ours.poses, rtol=0, atol=1e-12)
    assert math.isclose(float(imported.poses[0, :3, 3].norm()), 0.4, rel_tol=1e-9)
    assert torch.equal(imported.rgb, ours.rgb) and torch.equal(imported.mask, ours.mask)
    assert imported.mask.float().mean() > 0.05
    torch.testing.assert_close(imported.depth, ours.depth, rtol=0, atol=1e-7)


def test_the_models_symmetries_come_along_in_metres(both_layouts):
    root, _, obj = both_layouts
    symmetries = load_symmetries(root / "imported", NAME)
    assert len(symmetries) == 2
    R, t = symmetries[1]
    points = obj.vertices.double().numpy()
    moved = points @ R.T + t
    assert np.linalg.norm(moved[:, None] - points[None], axis=-1).min(1).max() < 1e-6


def test_both_layouts_score_the_same_ar(both_layouts, tmp_path):
    root, _, _ = both_layouts
    mesh = load_mesh(root / "models" / f"{NAME}.ply", scale=0.001)
    queries = render_queries(mesh, 4, image_size=SIZE, seed=5)
    cfg = compose([f"data.dataloader.image_size={SIZE}", f"data.dataloader.patch_size={PATCH}",
                   "model.embed_dim=32", "model.encoder_depth=1", "model.num_heads=2",
                   "model.cross_depth=1", "model.flow_hidden=32"])  # fmt: skip
    torch.manual_seed(0)
    module = VPOGModule(OmegaConf.to_container(cfg))
    symmetries = {NAME: load_symmetries(root / "imported", NAME)}
    summaries = []
    for layout in ("imported", "ours"):
        templates = {NAME: load_templates(root / layout / NAME)}
        summary, _ = evaluate(module, queries, templates, {NAME: mesh}, tmp_path / layout, 2,
                              progress=False, symmetries=symmetries)  # fmt: skip
        summaries.append(summary)
    imported, ours = summaries
    assert imported == ours  # every method, the oracle among them
    assert imported["oracle"]["AR"] > 0.5  # the pose stage works on these templates


def test_templates_of_a_bop_model_carry_its_symmetries_into_the_centred_frame(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    centre = np.array([40.0, -25.0, 10.0])  # mm; BOP's frame need not sit at the box's centre
    vertices = box().vertices.double().numpy() * 1000.0 + centre
    trimesh.Trimesh(vertices, box().faces.numpy(), process=False).export(models / f"{NAME}.ply")
    half_turn = np.array(HALF_TURN_Z).reshape(4, 4)
    half_turn[:3, 3] = centre - half_turn[:3, :3] @ centre  # about the box's own axis
    info = {str(OBJ_ID): {"diameter": 130.0, "symmetries_discrete": [half_turn.ravel().tolist()]}}
    (models / "models_info.json").write_text(json.dumps(info))
    render_object_templates([str(models / f"{NAME}.ply")], tmp_path / "templates", level=0,
                            image_size=16)  # fmt: skip
    mesh = load_object(tmp_path / "templates" / NAME / "mesh.pt").vertices.double().numpy()
    (_, _), (R, t) = load_symmetries(tmp_path / "templates", NAME)
    assert np.abs(mesh.max(0) + mesh.min(0)).max() < 1e-7  # centred, in metres
    assert np.linalg.norm(mesh @ R.T + t - mesh[[6, 7, 4, 5, 2, 3, 0, 1]], axis=1).max() < 1e-6
