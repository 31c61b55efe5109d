"""The one place that maps a GPU target name to torch device, dtype, AMP policy,
environment variables and ONNX Runtime providers.

A target this torch build cannot serve is an error that names the target and the
environment file to install from; nothing silently falls back to the CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

TARGETS = ("cpu", "cuda", "rocm", "mps")
AUTO = "auto"  # the GPU this torch build sees, else the CPU
TARGET_ENV_VAR = "FRESNEL_TARGET"

# Environment each target needs in every job (the profiles put the same values in job_env).
TARGET_ENV = {"rocm": {"HSA_OVERRIDE_GFX_VERSION": "11.0.0"}}

ORT_PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "rocm": ("ROCMExecutionProvider", "MIGraphXExecutionProvider", "CPUExecutionProvider"),
    "mps": ("CoreMLExecutionProvider", "CPUExecutionProvider"),
}


class TargetUnavailable(RuntimeError):
    """The requested target cannot run with the installed torch build."""


@dataclass(frozen=True)
class Target:
    name: str
    device: str  # torch device string
    amp_dtype: str | None  # autocast dtype name, None = AMP off
    grad_scaler: bool  # fp16 AMP needs loss scaling
    env: dict = field(default_factory=dict)

    def torch_device(self):
        import torch

        return torch.device(self.device)

    def autocast(self):
        """Context manager for the forward pass under this target's AMP policy."""
        import contextlib

        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        device_type = "cuda" if self.device.startswith("cuda") else self.device
        return torch.autocast(device_type=device_type, dtype=getattr(torch, self.amp_dtype))


def requested_target() -> str:
    return os.environ.get(TARGET_ENV_VAR, "cpu")


def _install_hint(name: str) -> str:
    return f"install the {name} torch build: `make venv TARGET={name}` (envs/{name}.txt)"


def resolve(name: str | None = None) -> Target:
    """Check that `name` (default: $FRESNEL_TARGET, else cpu) can run here and describe it."""
    import torch

    name = (name or requested_target()).lower()
    if name == AUTO:
        return resolve(auto_target())
    if name not in TARGETS:
        raise TargetUnavailable(
            f"unknown target {name!r}; choose one of {', '.join((*TARGETS, AUTO))}"
        )
    if name == "cpu":
        return Target("cpu", "cpu", None, False)
    if name in ("cuda", "rocm"):
        is_rocm_build = getattr(torch.version, "hip", None) is not None
        if (name == "rocm") != is_rocm_build:
            build = "ROCm" if is_rocm_build else f"CUDA {torch.version.cuda or 'none'}"
            raise TargetUnavailable(
                f"target {name!r} needs a {name.upper()} torch build, but torch "
                f"{torch.__version__} is a {build} build; {_install_hint(name)}"
            )
        if not torch.cuda.is_available():
            raise TargetUnavailable(
                f"target {name!r}: torch {torch.__version__} sees no GPU "
                f"(driver missing or no device visible); {_install_hint(name)} on a GPU machine"
            )
        bf16 = name == "cuda" and torch.cuda.is_bf16_supported()
        return Target(
            name, "cuda", "bfloat16" if bf16 else "float16", not bf16, TARGET_ENV.get(name, {})
        )
    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TargetUnavailable(
            f"target 'mps' needs macOS on Apple silicon with an MPS-enabled torch; "
            f"torch {torch.__version__} here has no MPS device; {_install_hint('mps')}"
        )
    return Target("mps", "mps", "float16", False)


def auto_target() -> str:
    """The target `auto` means here: this torch build's GPU when it sees one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return "rocm" if getattr(torch.version, "hip", None) else "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def deterministic_on_cpu() -> None:
    """CPU runs are deterministic: with torch's default algorithms, a few CPU kernels
    (accumulating index_put_, the backward of advanced indexing) sum in thread order, so two
    runs on 2 threads differed after one MeshHead epoch. Where no GPU is visible, every
    process of the project turns torch's deterministic algorithms on (a warning, not an
    error, for an op without one)."""
    import torch

    if not torch.cuda.is_available():
        torch.use_deterministic_algorithms(True, warn_only=True)


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, and a Slurm job's cpus-per-task (a node
    without CPU binding shows every core)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        count = min(count, int(os.environ["SLURM_CPUS_PER_TASK"]))
    return max(1, count or 1)


def use_threads(count: int) -> int:
    """Compute on `count` threads (at most `usable_cpus()`): torch's pool, the OpenMP and BLAS
    pools loaded so far (numpy's), onnxruntime sessions made with `onnx_session_options`,
    and processes started from here (their variables). Returns the count used.

    Jobs run side by side, each on the threads Snakemake gave it; a library's default of
    one thread per core in every job oversubscribes the machine."""
    import torch
    from threadpoolctl import threadpool_limits

    count = max(1, min(count, usable_cpus()))
    os.environ.update({name: str(count) for name in THREAD_ENV})
    torch.set_num_threads(count)
    threadpool_limits(count)
    return count


def onnx_session_options():
    """onnxruntime session options on this process's threads (torch's count: `use_threads`
    in a job, one per core in a hand-run command)."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return options


def describe(target: Target) -> str:
    if target.amp_dtype is None:
        amp = "AMP off (float32)"
    else:
        amp = f"AMP {target.amp_dtype} autocast" + (" + GradScaler" if target.grad_scaler else "")
    return f"target {target.name}: torch device {target.device}, {amp}"


def announce(name: str | None = None) -> Target:
    """Resolve a target for a hand-run command and say, at start, what it means."""
    target = resolve(name)
    logging.getLogger("fresnel").info(describe(target))
    return target


def add_target_argument(parser, default: str | None = AUTO) -> None:
    """The hand-run commands' --target (alias --device, the guides' name)."""
    parser.add_argument(
        "--target", "--device", dest="target", default=default, choices=(AUTO, *TARGETS),
        help="auto: this torch build's GPU when it sees one, else the CPU (said at start)",
    )  # fmt: skip


def onnx_providers(name: str, available: list[str]) -> tuple[list[str], str | None]:
    """ONNX Runtime providers for a target, best first, and a note when the GPU one is absent.

    The features stage may run on the CPU provider when onnxruntime lacks the target's GPU
    provider (a different wheel); the note goes into provenance and the log.
    """
    wanted = [p for p in ORT_PROVIDERS[name] if p in available]
    gpu_wanted = [p for p in ORT_PROVIDERS[name] if p != "CPUExecutionProvider"]
    note = None
    if gpu_wanted and not any(p in available for p in gpu_wanted):
        note = (
            f"onnxruntime has none of {gpu_wanted} for target {name!r}; features ran on "
            f"CPUExecutionProvider (install the onnxruntime build listed in envs/{name}.txt)"
        )
    return wanted or ["CPUExecutionProvider"], note
