"""Student distillation (fresnel.pbr.distill, distill_loss, student_data): the loss's known
answers, the shard-backed dataset, a tiny student that moves toward a fixed random teacher,
exact resume and byte-identical checkpoints of identical runs."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch
from test_pbr_shards import N_MATERIALS, make_data, make_teacher_checkpoint

from fresnel.pbr import distill, distill_loss, student_data
from fresnel.pbr.maps import MAP_CHANNELS, MAPS, normalize_normals
from fresnel.pbr.student import load_student
from fresnel.pbr.student_config import get_student_config
from fresnel.pbr.teacher_shards import TeacherShardError, teacher_infer
from support.workspace import tree_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_maps(seed: int, batch: int = 2, size: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    maps = {m: torch.rand(batch, MAP_CHANNELS[m], size, size, generator=g) for m in MAPS}
    maps["normal"] = normalize_normals(torch.randn(batch, 3, size, size, generator=g))
    return maps


# ----------------------------------------------------------------------------- loss
def test_temperature_one_is_identity_and_higher_softens_towards_half():
    maps = random_maps(0)
    maps["roughness"][0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # saturated ends
    same = distill_loss.soften(maps, 1.0)
    for m in MAPS:
        torch.testing.assert_close(same[m], maps[m], rtol=0, atol=2e-6)
    soft = distill_loss.soften(maps, 3.0)
    for m in distill_loss.SCALAR_MAPS:
        assert ((soft[m] - 0.5).abs() <= (maps[m] - 0.5).abs() + 1e-6).all()
        order = maps[m].flatten().argsort()
        assert (soft[m].flatten()[order].diff() >= 0).all()  # monotone: ranking is kept
    # known value: logit(0.9) / 2 -> sigmoid = 3 / (3 + 1) = 0.75
    value = distill_loss.soften({**maps, "metallic": torch.full((1, 1, 1, 1), 0.9)}, 2.0)[
        "metallic"
    ]
    torch.testing.assert_close(value, torch.full((1, 1, 1, 1), 0.75))
    assert soft["normal"] is maps["normal"]


def test_reconstruction_loss_known_answers():
    ref = random_maps(1)
    weights = {m: 1.0 for m in MAPS} | {"albedo": 2.0}
    total, parts = distill_loss.reconstruction_loss(ref, ref, 1.0, 0.3, 0.5, weights)
    assert float(total) == pytest.approx(0.0, abs=1e-6)
    shifted = {**ref, "albedo": ref["albedo"] * 0.5 + 0.25, "normal": -ref["normal"]}
    _, parts = distill_loss.reconstruction_loss(shifted, ref, 1.0, 0.0, 1.0, weights)
    albedo_l1 = float((shifted["albedo"] - ref["albedo"]).abs().mean())
    normal_l1 = 2.0 * float(ref["normal"].abs().mean())  # |-n - n| = 2|n| per component
    assert parts["l1"] == pytest.approx(2.0 * albedo_l1 + normal_l1, rel=1e-5)
    assert parts["normal"] == pytest.approx(2.0, rel=1e-5)  # 1 - cos(180 deg)


def test_alpha_mixes_teacher_and_ground_truth_terms():
    pred, teacher, target = random_maps(2), random_maps(3), random_maps(4)
    w = (1.0, 0.3, 0.5)
    soft, _ = distill_loss.reconstruction_loss(pred, teacher, *w, {m: 1.0 for m in MAPS})
    hard, _ = distill_loss.reconstruction_loss(pred, target, *w, {m: 1.0 for m in MAPS})
    total, parts = distill_loss.DistillationLoss(0.25, 1.0, *w)(pred, teacher, target)
    assert float(total) == pytest.approx(0.25 * float(soft) + 0.75 * float(hard), rel=1e-5)
    assert parts["teacher_loss"] == pytest.approx(float(soft), rel=1e-5)


def test_temperature_keeps_the_optimum_at_the_teacher():
    teacher, target = random_maps(9), random_maps(10)
    loss_fn = distill_loss.DistillationLoss(1.0, temperature=3.0)
    at_teacher, _ = loss_fn(teacher, teacher, target)
    assert float(at_teacher) == pytest.approx(0.0, abs=1e-5)  # both sides are softened
    # a student that outputs the flattened teacher is not at the optimum
    assert float(loss_fn(distill_loss.soften(teacher, 3.0), teacher, target)[0]) > 1e-3


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_zero_ignores_the_teacher(alpha):
    pred, target = random_maps(5), random_maps(6)
    for m in MAPS:
        pred[m].requires_grad_(True)
    teacher = {m: v.clone().requires_grad_(True) for m, v in random_maps(7).items()}
    loss_fn = distill_loss.DistillationLoss(alpha, temperature=2.0)
    total, _ = loss_fn(pred, teacher, target)
    total.backward()
    other_teacher = random_maps(8)
    changed, _ = loss_fn(pred, other_teacher, target)
    grads = [teacher[m].grad for m in MAPS]
    if alpha == 0.0:
        assert all(g is None or not g.any() for g in grads)
        assert float(changed.detach()) == float(total.detach())
    else:  # the control: with alpha = 1 the teacher does matter
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
        assert float(changed.detach()) != float(total.detach())


# ----------------------------------------------------------------------------- data + training
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """6 entries (3 materials x clean/dirty) of a fixed random teacher, upsampled to 64 px."""
    root = tmp_path_factory.mktemp("pbr_distill")
    data = make_data(root / "data")
    checkpoint = make_teacher_checkpoint(root / "teacher.pth", seed=0)
    teacher_infer(
        checkpoint,
        data / "input",
        data / "output",
        root / "shards",
        shard_output_size=64,
        shard_size=4,
        batch_size=2,
    )
    return root / "shards", data


def tiny_cfg(**training):
    cfg = get_student_config("tiny_student")  # 32 px in -> 64 px out via SR x2
    for key, value in training.items():
        setattr(cfg.training, key, value)
    return cfg


def test_dataset_reads_shards_and_pngs_at_the_configured_sizes(shards):
    shards_dir, data = shards
    ds = student_data.StudentShardDataset(shards_dir, data / "input", data / "output", 32, 64)
    assert len(ds) == 2 * N_MATERIALS
    inputs, targets, teacher = ds[5]
    assert inputs.shape == (3, 3, 32, 32) and targets.shape == (8, 64, 64)
    assert teacher.shape == (8, 64, 64) and teacher.dtype == torch.float32
    half = student_data.StudentShardDataset(shards_dir, data / "input", data / "output", 32, 32)
    _, targets32, teacher32 = half[5]
    assert targets32.shape == teacher32.shape == (8, 32, 32)
    # 64 -> 32 is area resampling: the mean of each 2x2 block (normals renormalised)
    torch.testing.assert_close(
        teacher32[:5], torch.nn.functional.avg_pool2d(teacher[None, :5], 2)[0]
    )
    one = student_data.StudentShardDataset(
        shards_dir, data / "input", data / "output", 32, 64, samples=["sample_0001"]
    )
    assert [(e["sample"], e["source"]) for e in one.entries] == [
        ("sample_0001", "clean"),
        ("sample_0001", "dirty"),
    ]


def test_sampler_reads_each_shard_once_per_epoch(shards):
    shards_dir, data = shards
    ds = student_data.StudentShardDataset(shards_dir, data / "input", data / "output", 32, 64)
    sampler = student_data.ShardGroupedSampler(ds, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(len(ds)))
    runs = [ds.shard_of(i) for i in first]
    assert sum(a != b for a, b in itertools.pairwise(runs)) == len(set(runs)) - 1  # contiguous
    assert list(sampler) == first  # same epoch, same order
    orders = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        orders.add(tuple(sampler))
    assert len(orders) > 1


def test_changed_renders_are_detected(shards, tmp_path):
    shards_dir, data = shards
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    view = copy / "input" / "clean" / "sample_0000" / "0.png"
    shutil.copy(copy / "input" / "clean" / "sample_0001" / "0.png", view)
    with pytest.raises(TeacherShardError, match="rerun teacher_infer"):
        student_data.StudentShardDataset(shards_dir, copy / "input", copy / "output", 32, 64)


def test_student_moves_toward_a_fixed_teacher(shards, tmp_path):
    shards_dir, data = shards
    cfg = tiny_cfg(epochs=4, batch_size=2, lr=1e-2, alpha=1.0, val_ratio=0.0, seed=0)
    out = tmp_path / "ckpt"
    summary = distill.train_student(cfg, shards_dir, data / "input", data / "output", out)
    before, after = summary["initial"]["val_teacher_l1"], summary["final"]["val_teacher_l1"]
    print(f"teacher-student L1 on the training entries: {before:.4f} -> {after:.4f}")
    assert summary["val_on"] == "train"  # val_ratio 0: metrics are on the training entries
    assert after < 0.6 * before
    for name in (
        "best_student.pth",
        "latest_student.pth",
        "student_epoch_0004.pth",
        "history.json",
        "curves.png",
    ):
        assert (out / name).is_file(), name
    assert list((out / "logs").glob("events.out.tfevents.*"))
    # the saved student reproduces the logged metric, and its SR output is twice its input
    model, loaded_cfg = load_student(out / "latest_student.pth")
    ds = student_data.StudentShardDataset(shards_dir, data / "input", data / "output", 32, 64)
    loss_fn = distill_loss.DistillationLoss.from_config(loaded_cfg)
    again = distill.evaluate_student(model, ds, loss_fn, batch_size=3)
    assert again["teacher_l1"] == pytest.approx(after, rel=1e-5)
    with torch.no_grad():
        views = ds[0][0][None]
        assert model(views)["albedo"].shape[-1] == 2 * views.shape[-1] == 64


def test_resume_repeats_an_uninterrupted_run_and_split_is_by_material(
    shards, tmp_path, monkeypatch
):
    shards_dir, data = shards
    args = (shards_dir, data / "input", data / "output")
    cfg = tiny_cfg(epochs=2, batch_size=3, val_ratio=0.34, alpha=0.5, seed=1)
    whole = distill.train_student(cfg, *args, tmp_path / "whole", clock_dir=tmp_path / "c1")
    assert whole["val_on"] == "val" and whole["val_entries"] == 2
    distill.train_student(cfg, *args, tmp_path / "again", clock_dir=tmp_path / "c2")
    assert "student_epoch_0002.pth" in tree_bytes(tmp_path / "whole")
    assert tree_bytes(tmp_path / "again") == tree_bytes(tmp_path / "whole")  # wall clock: c1, c2
    assert list((tmp_path / "c1" / "logs").glob("events.out.tfevents.*"))
    assert whole["train_entries"] + whole["val_entries"] == 2 * N_MATERIALS
    trainer = distill.StudentTrainer(cfg, *args, tmp_path / "x")
    train_mats = {e["material"] for e in trainer.train_set.entries}
    assert not train_mats & {e["material"] for e in trainer.val_set.entries}

    real_epoch = distill.StudentTrainer.train_epoch

    def killed_in_epoch_two(self):
        if self.epoch == 1:
            raise KeyboardInterrupt("killed")
        return real_epoch(self)

    monkeypatch.setattr(distill.StudentTrainer, "train_epoch", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        distill.train_student(cfg, *args, tmp_path / "part")
    monkeypatch.setattr(distill.StudentTrainer, "train_epoch", real_epoch)
    latest = tmp_path / "part" / "latest_student.pth"
    assert torch.load(latest, weights_only=True)["epoch"] == 1
    resumed = distill.train_student(cfg, *args, tmp_path / "part", resume=latest)
    a = torch.load(tmp_path / "whole" / "latest_student.pth", weights_only=True)
    b = torch.load(latest, weights_only=True)
    assert resumed["epochs"] == a["epoch"] == b["epoch"] == 2
    assert [h["val_loss"] for h in b["history"]] == pytest.approx(
        [h["val_loss"] for h in a["history"]], rel=1e-6
    )
    for key, value in a["model_state_dict"].items():
        torch.testing.assert_close(b["model_state_dict"][key], value, rtol=0, atol=1e-6)


def test_output_size_mismatch_is_explained(shards, tmp_path):
    shards_dir, data = shards
    cfg = tiny_cfg(epochs=1)
    cfg.data.output_size = 32  # the SR student makes 64 px maps
    with pytest.raises(ValueError, match=r"data\.output_size"):
        distill.train_student(cfg, shards_dir, data / "input", data / "output", tmp_path)
