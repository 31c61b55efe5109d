from fresnel.pipeline.codedeps import code_files
from support.workspace import REPO


def test_script_code_deps_follow_fresnel_imports(monkeypatch):
    monkeypatch.chdir(REPO)
    files = code_files("workflow/scripts/shards.py")
    assert "workflow/scripts/shards.py" in files
    assert "src/fresnel/data/shards.py" in files  # imported directly
    assert "src/fresnel/io.py" in files  # imported by fresnel.data.shards
    assert "src/fresnel/provenance.py" in files  # via fresnel.pipeline.adapter
    assert "src/fresnel/backbones.py" not in files  # never imported
