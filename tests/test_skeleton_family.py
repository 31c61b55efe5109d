"""A model family written only from the kit (fresnel.training, fresnel.metrics, fresnel.config,
fresnel.device): it trains, checkpoints, resumes exactly and writes the standard table. The
proof that a new family copies nothing from the decoder or NeuroPBR."""

import json
import time
from dataclasses import asdict, dataclass

import torch

from fresnel import device, metrics
from fresnel.config import apply_overrides, get_config
from fresnel.training import (
    Amp,
    Checkpointer,
    CheckpointNames,
    Panel,
    Progress,
    RunLog,
    epoch_generator,  # fmt: skip
    final_checkpoint,
    read_checkpoint,
)

NAMES = CheckpointNames(last="toy_last.pt", best="toy_best.pt", periodic="toy_epoch{epoch}.pt")


@dataclass
class ToyConfig:
    epochs: int = 6
    lr: float = 0.03
    batch_size: int = 4
    save_every: int = 2
    use_amp: bool = True
    seed: int = 0


PRESETS = {"tiny": ToyConfig}


def make_data(seed: int, n: int = 16):
    """Smooth images (targets) and noisy copies of them (inputs): a denoising task."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    targets = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear")
    return (targets + 0.15 * torch.randn(targets.shape, generator=g)).clamp(0, 1), targets


def train(cfg: ToyConfig, out_dir, resume=None, stop_after=None) -> Progress:
    amp = Amp(device.resolve("cpu"), cfg.use_amp)
    torch.manual_seed(cfg.seed)
    model = torch.nn.Conv2d(3, 3, 5, padding=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ckpt = Checkpointer(out_dir, NAMES, model=model, optimizer=optimizer, scaler=amp.scaler)
    progress, _ = ckpt.load(resume) if resume else (Progress(), {})
    log = RunLog(
        out_dir,
        resume_epoch=progress.epoch,
        panels=[Panel("loss", ("train_loss",), True), Panel("PSNR", ("val_psnr",))],
    )
    inputs, targets = make_data(cfg.seed)
    try:
        for epoch in range(progress.epoch + 1, cfg.epochs + 1):
            started, losses = time.perf_counter(), []
            order = torch.randperm(len(inputs), generator=epoch_generator(cfg.seed, epoch))
            for idx in order.split(cfg.batch_size):
                with amp.autocast():
                    pred = model(inputs[idx])
                loss = (pred.float() - targets[idx]).abs().mean()
                amp.step(loss, optimizer, model.parameters(), clip=1.0)
                losses.append(float(loss.detach()))
            with torch.no_grad():
                val = float(metrics.psnr(model(inputs), targets).mean())
            record = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "val_psnr": val,
                      "seconds": time.perf_counter() - started}  # fmt: skip
            improved = progress.finish_epoch(record, monitored=-val)
            ckpt.save_epoch(progress, asdict(cfg), improved=improved,
                            periodic=epoch % cfg.save_every == 0)  # fmt: skip
            log.epoch(record)
            if epoch == stop_after:
                break
    finally:
        log.close()
    return progress


def evaluate(run_dir, out_dir) -> dict:
    state = read_checkpoint(final_checkpoint(run_dir, NAMES))
    model = torch.nn.Conv2d(3, 3, 5, padding=2)
    model.load_state_dict(state["model"])
    inputs, targets = make_data(ToyConfig(**state["config"]).seed)
    with torch.no_grad():
        preds = {"model": model(inputs), "noisy input": inputs}
    rows, summary = [], {}
    for method, pred in preds.items():
        psnrs, ssims = metrics.psnr(pred, targets), metrics.ssim(pred.clamp(0, 1), targets, True)
        rows += [{"item": i, "method": method, "psnr": float(p), "ssim": float(s)}
                 for i, (p, s) in enumerate(zip(psnrs, ssims, strict=True))]  # fmt: skip
        summary[method] = {"psnr": metrics.describe(psnrs), "ssim": metrics.describe(ssims)}
    cells = [
        [m, f"{s['psnr']['mean']:.2f}", f"{s['ssim']['mean']:.4f}"] for m, s in summary.items()
    ]
    table = metrics.markdown_table(["method", "PSNR", "SSIM"], cells, note="toy denoising")
    metrics.write_table(out_dir, rows, summary, table)
    return summary


def test_config_presets_and_overrides_come_from_the_kit():
    cfg = apply_overrides(get_config("tiny", PRESETS, ToyConfig), {"epochs": "3", "lr": 1})
    assert (cfg.epochs, cfg.lr) == (3, 1.0) and isinstance(cfg.lr, float)


def test_trains_and_beats_the_noisy_input_in_the_standard_table(tmp_path):
    progress = train(ToyConfig(), tmp_path / "run")
    assert progress.history[-1]["train_loss"] < progress.history[0]["train_loss"]
    assert "seconds" not in progress.history[0]  # wall clock stays out of checkpoints
    summary = evaluate(tmp_path / "run", tmp_path / "eval")
    assert summary["model"]["psnr"]["mean"] > summary["noisy input"]["psnr"]["mean"] + 1.0
    table = (tmp_path / "eval/table.md").read_text()
    assert table.startswith("toy denoising\n\n| method | PSNR | SSIM |") and "| model |" in table
    assert (tmp_path / "eval/per_item.csv").read_text().count("\n") == 1 + 2 * 16
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"toy_last.pt", "toy_best.pt", "toy_epoch2.pt", "toy_epoch6.pt"} <= files
    assert {"history.json", "curves.png", "tensorboard"} <= files


def test_a_stopped_run_resumes_to_the_same_bytes_as_an_uninterrupted_one(tmp_path):
    train(ToyConfig(), tmp_path / "whole")
    train(ToyConfig(), tmp_path / "parts", stop_after=3)
    train(ToyConfig(), tmp_path / "parts", resume=tmp_path / "parts/toy_last.pt")
    for name in ("toy_last.pt", "toy_best.pt", "toy_epoch6.pt"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "parts" / name).read_bytes()
    history = json.loads((tmp_path / "parts/history.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
