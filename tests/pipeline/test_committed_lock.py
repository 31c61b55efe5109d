"""The committed dvc.yaml and dvc.lock agree with the code and params.yaml of this commit."""

import hashlib
import os

import yaml

from fresnel.params import read_yaml
from support.workspace import REPO

REGENERATE = "run `make demo` (it reruns the stale stages) and commit dvc.lock"


def test_committed_dvc_yaml_matches_the_dag(monkeypatch):
    monkeypatch.chdir(REPO)
    from fresnel.pipeline import dvcgen, glue

    assert dvcgen.write("dvc.yaml", check=True), "dvc.yaml is stale: run `fresnel dvc-yaml`"
    assert glue.SKIP_ENV not in os.environ  # left set, later snakemake runs skip the DVC sync


def lock_disagreements(root) -> list[str]:
    """Each stage of `root`/dvc.lock whose code files or params differ from the tree's."""
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    defined = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    params = read_yaml(root / "params.yaml")
    found = [f"{name}: no longer in dvc.yaml" for name in stages if name not in defined]
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            path = root / dep["path"]
            if dep["path"].startswith(("src/", "workflow/")) and (
                not path.is_file() or hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]
            ):
                found.append(f"{name}: {dep['path']}")
        for key, value in stage.get("params", {}).get("params.yaml", {}).items():
            node = params
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node != value:
                found.append(f"{name}: params.yaml {key}")
    return found


def test_the_committed_dvc_lock_matches_the_code_and_params():
    found = lock_disagreements(REPO)
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    assert not found, f"dvc.lock disagrees with this commit ({shown}): {REGENERATE}"


def test_the_check_sees_a_changed_code_file_and_a_changed_param(tmp_path):
    for name in ("dvc.lock", "dvc.yaml", "params.yaml"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    stage = lock["stages"]["shards"]
    code = next(dep for dep in stage["deps"] if dep["path"].startswith("src/"))
    (tmp_path / code["path"]).parent.mkdir(parents=True)
    (tmp_path / code["path"]).write_text("# changed\n")
    stage["params"]["params.yaml"]["shards"]["shard_size"] = -1
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    found = lock_disagreements(tmp_path)
    assert f"shards: {code['path']}" in found and "shards: params.yaml shards" in found
