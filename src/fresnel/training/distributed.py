"""Data-parallel training over processes: one process per device, one `World` per process.

Launch: `torchrun --nproc_per_node N ...` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT; under Slurm, `srun` with N tasks sets SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID, and the batch script exports MASTER_ADDR and MASTER_PORT. A process started
any other way is a world of one, and nothing below changes what it computes.

The rule that makes N ranks equal to one process: every rank walks the same global batches
and trains on its contiguous share of each (`share`); after backward the gradients are
summed over ranks, each weighted by its share of the global batch (`reduce_gradients`), so
every rank takes the step one process takes on the whole batch, up to float summation
order. Backends: NCCL on CUDA, gloo elsewhere. Rank 0 validates, logs and writes the
checkpoints; every rank resumes from the same file.

`EmulatedWorld(n)` is the exact reference of a run on n ranks, in one process: it computes
every rank's share in rank order and sums their weighted gradients as the all-reduce does.
For 2 ranks that is the ranks' arithmetic to the bit (the sum of two floats does not depend
on their order), given the same number of threads in each process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fresnel.device import deterministic_on_cpu

# (rank, world size, local rank) variables of each launcher, torchrun's first
LAUNCHERS = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


class DistributedSetupError(RuntimeError):
    """A multi-process launch that cannot form its process group (what to set is said)."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def ranks_here(self) -> list[World]:
        """The ranks whose share this process computes: its own."""
        return [self]

    def share(self, n: int) -> slice:
        """This rank's contiguous part of n global items (sizes differ by at most one)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def reduce_gradients(self, params, weight: float) -> None:
        """grad <- sum over ranks of weight_r * grad_r (weight: local items / global items).
        A rank without items passes weight 0 and no gradients."""
        if self.size == 1:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params]) * weight
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def weighted_sum(self, values: dict[str, float], weight: float) -> dict[str, float]:
        """Sum over ranks of weight_r * value (the global mean of per-rank means)."""
        if self.size == 1:
            return values
        keys = sorted(values)
        flat = torch.tensor([values[k] * weight for k in keys], dtype=torch.float64)
        dist.all_reduce(flat)
        return dict(zip(keys, flat.tolist(), strict=True))

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the body first (e.g. writes a cache), the other ranks after it."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def check_same_weights(self, model: torch.nn.Module) -> str:
        """Raise unless every rank holds bit-identical weights; returns their digest."""
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        mine = digest.hexdigest()
        if self.size == 1:
            return mine
        every: list[str] = [""] * self.size
        dist.all_gather_object(every, mine)
        if len(set(every)) != 1:
            raise RuntimeError(f"ranks hold different weights: {every}")
        return mine


@dataclass(frozen=True)
class EmulatedWorld(World):
    """`size` ranks computed in this process one after the other (see module doc)."""

    def ranks_here(self) -> list[World]:
        return [World(rank, self.size) for rank in range(self.size)]

    def reduce_gradients(self, params, weight: float) -> None:
        raise RuntimeError("an emulated world sums its ranks' gradients with ShareSum")

    def weighted_sum(self, values: dict[str, float], weight: float) -> dict[str, float]:
        raise RuntimeError("an emulated world sums its ranks' values with ShareSum")

    def barrier(self) -> None:
        pass

    def check_same_weights(self, model: torch.nn.Module) -> str:
        return World.check_same_weights(World(), model)


class ShareSum:
    """What the all-reduce computes, for the ranks one process computes in rank order (an
    EmulatedWorld): after each rank's backward `add(weight)` keeps weight x its gradients
    and values; `assign()` then sets the parameters' gradients to the sum."""

    def __init__(self, params):
        self.params = [p for p in params if p.requires_grad]
        self.grads: torch.Tensor | None = None
        self.values: dict[str, torch.Tensor] = {}

    def add(self, weight: float, values: dict[str, float]) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads]) * weight
        self.grads = flat if self.grads is None else self.grads + flat
        for key in sorted(values):
            part = torch.tensor(values[key] * weight, dtype=torch.float64)
            self.values[key] = part if key not in self.values else self.values[key] + part

    def assign(self) -> dict[str, float]:
        offset = 0
        for p in self.params:
            p.grad = self.grads[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        return {key: float(value) for key, value in self.values.items()}


def from_environment(env=os.environ) -> World:
    """The World a launcher described in `env` (a world of one when none did)."""
    for rank, size, local in LAUNCHERS:
        if size in env and int(env[size]) > 1 and rank in env:
            return World(int(env[rank]), int(env[size]), int(env.get(local, 0)))
    return World()


def init(device: torch.device, env=os.environ) -> World:
    """Join the process group the launcher set up (see module doc); returns this rank's World."""
    world = from_environment(env)
    deterministic_on_cpu()  # every rank computes as the emulated world does (module doc)
    if world.size == 1 or dist.is_initialized():
        return world
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise DistributedSetupError(
            f"{world.size} tasks but {' and '.join(missing)} not set: torchrun sets them; "
            "under srun export MASTER_ADDR (the first node) and MASTER_PORT in the job script"
        )
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    return world


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device this rank trains on: its own GPU on CUDA, else `device`."""
    if device.type == "cuda" and world.size > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return device
