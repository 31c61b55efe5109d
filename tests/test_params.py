import pytest
import yaml

from fresnel import params
from support.workspace import REPO


def demo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


PAPER_OVERLAYS = sorted((REPO / "configs").glob("*_paper.yaml"))


def merged(base: dict, overlay: dict) -> dict:
    """Snakemake's --configfile merge: mappings key by key, any other value replaced."""
    out = dict(base)
    for key, value in overlay.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = merged(base[key], value) if both else value
    return out


def test_committed_params_are_valid():
    params.load(REPO / "params.yaml")


def test_a_paper_overlay_for_every_family_each_valid_on_the_demo_params(tmp_path, monkeypatch):
    """(The NeuroPBR check looks for its rendered dataset's two folders: here empty ones.)"""
    from fresnel.registry import families, params_checks

    assert len(PAPER_OVERLAYS) == len(families())
    monkeypatch.chdir(tmp_path)
    for folder in ("input", "output"):
        (tmp_path / "data/neuropbr_renders" / folder).mkdir(parents=True)
    for overlay in PAPER_OVERLAYS:
        config = merged(demo_params(), yaml.safe_load(overlay.read_text()))
        params.validate(config, source=overlay.name, checks=params_checks())


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("shards.shard_size", "fast", "shards.shard_size: 'fast' is not of type 'integer'"),
        ("features.batch_size", 0, "features.batch_size: 0 is less than the minimum of 1"),
        ("download.source", "imagenet", "download.source: 'imagenet' does not match"),
        ("backbones.dinov2.typo", 1, "backbones.dinov2.typo: unknown key"),
        ("nonsense", {}, "nonsense: unknown key"),
    ],
)
def test_invalid_values_name_the_key_path(path, value, message):
    cfg = demo_params()
    *parents, key = path.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[key] = value
    with pytest.raises(params.ParamsError, match=r"params\.yaml is invalid") as err:
        params.validate(cfg)
    assert message in str(err.value)


def test_missing_key_is_named():
    cfg = demo_params()
    del cfg["matte"]["size"]
    with pytest.raises(params.ParamsError, match=r"matte\.size: required key is missing"):
        params.validate(cfg)


def test_every_problem_is_reported_at_once():
    cfg = demo_params()
    cfg["shards"]["resolution"] = "big"
    cfg["matte"]["extra"] = True
    with pytest.raises(params.ParamsError) as err:
        params.validate(cfg)
    assert "shards.resolution" in str(err.value) and "matte.extra" in str(err.value)


def test_vlm_guidance_without_the_vlm_stage_is_an_error():
    cfg = demo_params()
    cfg["decoder"]["train"]["use_vlm_guidance"] = True
    cfg["vlm"]["use_vlm"] = False
    with pytest.raises(
        params.ParamsError, match=r"decoder\.train\.use_vlm_guidance: needs vlm\.use_vlm"
    ):
        params.validate(cfg)


def test_credentials_in_the_vlm_url_are_refused_without_echoing_them():
    cfg = demo_params()
    cfg["vlm"]["vlm_url"] = "http://user:s3cret-token@vlm.local:1234/v1/chat/completions"
    with pytest.raises(params.ParamsError, match=r"vlm\.vlm_url: holds credentials") as err:
        params.validate(cfg)
    assert "s3cret-token" not in str(err.value)


def test_nested_command_line_values_get_their_schema_types():
    cfg = demo_params()
    cfg["decoder"]["train"].update(epochs="5", lr="3e-4", use_amp="false", max_images="null")
    cfg["download"]["source"] = "sample"
    fixed = params.parse_command_line_values(cfg)
    train = fixed["decoder"]["train"]
    assert (train["epochs"], train["lr"], train["use_amp"]) == (5, 3e-4, False)
    assert train["max_images"] is None and fixed["download"]["source"] == "sample"
    cfg["decoder"]["train"]["epochs"] = "five"  # no YAML value fits: validate names it
    with pytest.raises(params.ParamsError, match=r"decoder\.train\.epochs: 'five' is not of type"):
        params.validate(params.parse_command_line_values(cfg))


def test_pbr_configs_overrides_and_local_datasets_are_checked_at_load(tmp_path):
    from fresnel.pbr.stage_params import problems

    cfg = demo_params()
    cfg["pbr"]["teacher"]["overrides"] = {"model": {"nope": 1}}
    cfg["pbr"]["student"]["config"] = "tiny_studnet"
    cfg["pbr"]["dataset"]["source"] = f"local:{tmp_path}"
    with pytest.raises(params.ParamsError) as err:
        params.validate(cfg, checks=[problems])
    message = str(err.value)
    assert "pbr.teacher: unknown option 'model.nope'" in message
    assert "pbr.student: unknown config 'tiny_studnet'" in message
    assert f"pbr.dataset.source: {tmp_path} has no input or output folder" in message
    assert problems(demo_params()) == []
