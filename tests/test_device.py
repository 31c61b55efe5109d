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
