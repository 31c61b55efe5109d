import json
import os
import subprocess
import sys

import pytest
import torch

from fresnel import device


def test_cpu_target_runs_in_float32_without_amp():
    target = device.resolve("cpu")
    assert target.torch_device() == torch.device("cpu")
    assert target.amp_dtype is None and not target.grad_scaler


@pytest.mark.parametrize("name", ["cuda", "rocm", "mps"])
def test_unservable_target_fails_naming_target_and_install(name):
    if name in ("cuda", "rocm") and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(device.TargetUnavailable) as err:
        device.resolve(name)
    message = str(err.value)
    assert repr(name) in message and f"envs/{name}.txt" in message


def test_unknown_target_is_rejected():
    with pytest.raises(device.TargetUnavailable, match="unknown target 'tpu'"):
        device.resolve("tpu")


def test_target_comes_from_environment(monkeypatch):
    monkeypatch.setenv(device.TARGET_ENV_VAR, "cpu")
    assert device.resolve().name == "cpu"


def test_onnx_providers_prefer_gpu_and_note_a_missing_one():
    providers, note = device.onnx_providers(
        "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert providers == ["CUDAExecutionProvider", "CPUExecutionProvider"] and note is None
    providers, note = device.onnx_providers("rocm", ["CPUExecutionProvider"])
    assert providers == ["CPUExecutionProvider"] and "envs/rocm.txt" in note
    assert device.onnx_providers("cpu", ["CPUExecutionProvider"]) == (
        ["CPUExecutionProvider"],
        None,
    )


THREADS_PROBE = """
import json, os, sys
import numpy as np, torch
from threadpoolctl import threadpool_info
from fresnel.device import onnx_session_options, usable_cpus, use_threads
from fresnel.training.launch import rank_threads
for asked in map(int, sys.argv[1:]):
    used = use_threads(asked)
    print(json.dumps({
        "asked": asked, "used": used, "usable": usable_cpus(), "torch": torch.get_num_threads(),
        "omp": os.environ["OMP_NUM_THREADS"], "pools": [p["num_threads"] for p in threadpool_info()],
        "onnx": onnx_session_options().intra_op_num_threads, "two_ranks": rank_threads(2),
    }))
"""


def test_a_job_computes_on_its_threads_capped_at_usable_cpus(monkeypatch):
    """In a fresh interpreter (the thread pools are process-wide), asking 1, 2 and 10000."""
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    out = subprocess.run([sys.executable, "-c", THREADS_PROBE, "1", "2", "10000"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    for probe in map(json.loads, out.splitlines()):
        expected = min(probe["asked"], probe["usable"])
        assert probe["used"] == probe["torch"] == probe["onnx"] == int(probe["omp"]) == expected
        assert probe["pools"] and set(probe["pools"]) == {expected}  # numpy's BLAS/OpenMP pools
        assert probe["two_ranks"]["OMP_NUM_THREADS"] == str(max(1, expected // 2))


def test_a_slurm_jobs_cpus_per_task_caps_the_usable_cpus(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert device.usable_cpus() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "100000")
    assert device.usable_cpus() == len(os.sched_getaffinity(0))
