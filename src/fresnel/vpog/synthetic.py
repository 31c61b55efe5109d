"""The objects, templates and query shards of VPOG's DAG and CLI, by object name.

Objects are named as in params.yaml `vpog.objects`: a built-in (`box`, `cylinder`, `tetra`,
`fresnel.vpog.objects`) or a mesh file (e.g. a Google Scanned Objects `.obj` in metres, or a BOP
model `.../models/obj_NNNNNN.ply` in mm beside its `models_info.json`, through trimesh,
centred, in metres). Templates go to `<dir>/<object>/` (`fresnel.vpog.templates`) with the object's mesh
beside them as `mesh.pt`, which evaluation renders for VSD, and, for a BOP model
(`.../models/obj_NNNNNN.ply` with `models_info.json` beside it) that declares symmetries,
`symmetries.json` (that entry's symmetry keys, in the centred mesh's frame). Query splits draw
their poses from their own seeds, so train and test never share a pose by construction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from fresnel.vpog.bop import MM
from fresnel.vpog.objects import BUILTIN, ObjectMesh, load_mesh, load_object, save_object

SPLIT_SEEDS = {"train": 0, "test": 1_000_003}  # added to the configured seed
MESH_FILE = "mesh.pt"
SYMMETRIES_FILE = "symmetries.json"
BOP_MODEL_NAME = re.compile(r"obj_(\d+)")


def make_objects(names: Sequence[str]) -> list[ObjectMesh]:
    objects = []
    for name in names:
        if name in BUILTIN:
            objects.append(BUILTIN[name]())
        elif Path(name).is_file():
            scale = MM if bop_entry(name) is not None else 1.0  # BOP's models are in mm
            objects.append(load_mesh(name, scale=scale, center=True))
        else:
            raise FileNotFoundError(
                f"VPOG object {name!r}: neither a built-in ({', '.join(BUILTIN)}) nor a mesh "
                "file; fix params.yaml vpog.objects"
            )
    return objects


def render_object_templates(
    objects: Sequence[str], output_dir: str | Path, level: int = 1, image_size: int = 224,
    upper_hemisphere: bool = True, progress: bool = False,
) -> dict:  # fmt: skip
    """Templates and mesh of every object under `output_dir`; counts for the provenance."""
    from fresnel.vpog.templates import render_templates, save_templates

    counts = {}
    for name, obj in zip(objects, make_objects(objects), strict=True):
        templates = render_templates(obj, level=level, image_size=image_size,
                                     upper_hemisphere=upper_hemisphere, progress=progress)  # fmt: skip
        save_templates(templates, output_dir)
        save_object(obj, Path(output_dir) / obj.name / MESH_FILE)
        symmetries = bop_symmetries(name) if Path(name).is_file() else None
        if symmetries:
            (Path(output_dir) / obj.name / SYMMETRIES_FILE).write_text(json.dumps(symmetries))
        counts[obj.name] = len(templates.rgb)
    return {"templates": counts}


def load_objects(templates_dir: str | Path) -> dict[str, ObjectMesh]:
    """The meshes saved beside the templates, by object id."""
    paths = sorted(Path(templates_dir).glob(f"*/{MESH_FILE}"))
    if not paths:
        raise FileNotFoundError(
            f"{templates_dir}: no <object>/{MESH_FILE}; render the templates with "
            "fresnel vpog_render_templates (or the vpog_templates stage)"
        )
    return {path.parent.name: load_object(path) for path in paths}


def bop_entry(mesh_path: str | Path) -> dict | None:
    """A BOP model's (`obj_NNNNNN.ply` in mm) entry of the `models_info.json` beside it; None
    for any other mesh."""
    path = Path(mesh_path)
    info, number = path.with_name("models_info.json"), BOP_MODEL_NAME.fullmatch(path.stem)
    if not info.is_file() or number is None:
        return None
    return json.loads(info.read_text()).get(str(int(number[1])), {})


def bop_symmetries(mesh_path: str | Path) -> dict | None:
    """The symmetries a BOP model's `models_info.json` entry declares, moved as `make_objects`
    moves the model (mm -> m, centred); None when there are none."""
    import trimesh

    from fresnel.vpog.bop import move_models_info_symmetries

    entry = bop_entry(mesh_path)
    if entry is None:
        return None
    low, high = trimesh.load(str(mesh_path), force="mesh", process=False).bounds
    return move_models_info_symmetries(entry, MM, MM * (low + high) / 2)


def load_symmetries(templates_dir: str | Path, object_id: str):
    """The object's symmetry transformations (`fresnel.vpog.bop`), None when it has none."""
    from fresnel.vpog.bop import symmetries_from_models_info

    path = Path(templates_dir) / object_id / SYMMETRIES_FILE
    return symmetries_from_models_info(json.loads(path.read_text())) if path.is_file() else None


def write_synthetic_split(
    objects: Sequence[str], output_dir: str | Path, split: str, queries_per_object: dict,
    image_size: int = 224, seed: int = 0, inplane_range_deg: float = 180.0,
    samples_per_shard: int = 256,
) -> dict:  # fmt: skip
    """Query shards of one split (`queries_per_object[split]` renders of each object, rotated
    in-plane by up to +-inplane_range_deg)."""
    from fresnel.vpog.webdata import render_queries, write_shards

    samples = []
    for index, obj in enumerate(make_objects(objects)):
        split_seed = seed + SPLIT_SEEDS[split] + 7919 * index
        samples += render_queries(obj, int(queries_per_object[split]), image_size=image_size,
                                  seed=split_seed, inplane_range_deg=inplane_range_deg)  # fmt: skip
    shards = write_shards(samples, output_dir, samples_per_shard=samples_per_shard)
    return {"queries": len(samples), "shards": len(shards)}
