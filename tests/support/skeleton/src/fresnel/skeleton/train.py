"""The toy: smooth images and noisy copies of them, a 5x5 convolution that denoises."""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fresnel import device, metrics
from fresnel.config import apply_overrides
from fresnel.io import atomic_path
from fresnel.training import (
    Amp,
    Checkpointer,
    CheckpointNames,
    Panel,
    Progress,
    RunLog,
    epoch_generator,
    final_checkpoint,
    read_checkpoint,
)

NAMES = CheckpointNames(last="toy_last.pt", best="toy_best.pt", periodic="toy_epoch{epoch}.pt")


class ToyDataError(ValueError):
    """A data file that is not the toy's."""


@dataclass
class ToyConfig:
    epochs: int = 6
    lr: float = 0.03
    batch_size: int = 4
    save_every: int = 2
    use_amp: bool = True
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> "ToyConfig":
        return apply_overrides(cls(), values)


def make_data(seed: int, n: int = 16):
    """Smooth images (targets) and noisy copies of them (inputs): a denoising task."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    targets = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear")
    return (targets + 0.15 * torch.randn(targets.shape, generator=g)).clamp(0, 1), targets


def save_data(path, seed: int = 0, n: int = 16) -> None:
    inputs, targets = make_data(seed, n)
    with atomic_path(path) as tmp:
        torch.save({"inputs": inputs, "targets": targets}, tmp)


def load_data(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no toy data; write it with fresnel skeleton_make_data")
    data = torch.load(path, weights_only=True)
    if not isinstance(data, dict) or set(data) != {"inputs", "targets"}:
        raise ToyDataError(f"{path}: not toy data (keys inputs, targets)")
    return data["inputs"], data["targets"]


def _model(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, 3, 5, padding=2)


def train(cfg: ToyConfig, out_dir, data=None, resume=None, stop_after=None) -> Progress:
    amp = Amp(device.resolve("cpu"), cfg.use_amp)
    model = _model(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ckpt = Checkpointer(out_dir, NAMES, model=model, optimizer=optimizer, scaler=amp.scaler)
    progress, _ = ckpt.load(resume) if resume else (Progress(), {})
    log = RunLog(
        out_dir,
        resume_epoch=progress.epoch,
        panels=[Panel("loss", ("train_loss",), True), Panel("PSNR", ("val_psnr",))],
    )
    inputs, targets = load_data(data) if data else make_data(cfg.seed)
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


def evaluate(run_dir, out_dir, data=None) -> dict:
    state = read_checkpoint(final_checkpoint(run_dir, NAMES))
    model = torch.nn.Conv2d(3, 3, 5, padding=2)
    model.load_state_dict(state["model"])
    inputs, targets = load_data(data) if data else make_data(ToyConfig(**state["config"]).seed)
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
    return json.loads(json.dumps(summary))
