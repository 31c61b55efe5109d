"""The guide's Python usage ("Usage in Training") as docs/vpog.md gives it, run verbatim from a
folder laid out as the default config expects."""

import re
from pathlib import Path

from fresnel.vpog.synthetic import render_object_templates, write_synthetic_split

DOC = Path(__file__).parents[2] / "docs" / "vpog.md"


def guide_snippet() -> str:
    match = re.search(r"<!-- python: guide usage -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/vpog.md lost its guide usage block"
    return match.group(1)


def test_the_guides_usage_snippet_runs_on_the_default_config(tmp_path, monkeypatch):
    # the default config: train_dataset_id 0 = datasets/gso/..., 224 px, 16 px patches
    render_object_templates(["box"], tmp_path / "datasets/templates/gso", level=0, image_size=224)
    write_synthetic_split(["box"], tmp_path / "datasets/gso/train_pbr_web", "train",
                          {"train": 3}, image_size=224)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(guide_snippet(), str(DOC), "exec"), scope)
    assert scope["batch_idx"] == 0 and len(scope["batch"]) == 3
