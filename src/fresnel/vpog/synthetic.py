"""The objects, templates and query shards of VPOG's DAG and CLI, by object name.

Objects are named as in params.yaml `vpog.objects`: a built-in (`box`, `cylinder`, `tetra`,
`fresnel.vpog.objects`) or a mesh file (e.g. a Google Scanned Objects `.obj`, through trimesh,
centred). Templates go to `<dir>/<object>/` (`fresnel.vpog.templates`) with the object's mesh
beside them as `mesh.pt`, which evaluation renders for VSD. Query splits draw their poses
from their own seeds, so train and test never share a pose by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fresnel.vpog.objects import BUILTIN, ObjectMesh, load_mesh, load_object, save_object

SPLIT_SEEDS = {"train": 0, "test": 1_000_003}  # added to the configured seed
MESH_FILE = "mesh.pt"


def make_objects(names: Sequence[str]) -> list[ObjectMesh]:
    objects = []
    for name in names:
        if name in BUILTIN:
            objects.append(BUILTIN[name]())
        elif Path(name).is_file():
            objects.append(load_mesh(name, center=True))
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
    for obj in make_objects(objects):
        templates = render_templates(obj, level=level, image_size=image_size,
                                     upper_hemisphere=upper_hemisphere, progress=progress)  # fmt: skip
        save_templates(templates, output_dir)
        save_object(obj, Path(output_dir) / obj.name / MESH_FILE)
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
