"""Fixtures every test folder shares; the code behind them is in tests/support/."""

import os

import pytest

from support.workspace import make_workspace

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _share_the_cores() -> None:
    """Under pytest-xdist, each worker and the jobs it starts get its share of the cores:
    torch's default (every core in every process) made the renderer 3-11x slower with two
    processes on two cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = threads


_share_the_cores()


def pytest_collection_modifyitems(items):
    """End-to-end (slow) modules first, so that no long module starts last on a worker."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def workspace(tmp_path):
    return make_workspace(tmp_path / "ws")


@pytest.fixture(scope="module")
def one_torch_thread():
    """For tests of many small ops: with intra-op threads on a busy 2-core machine each
    parallel region can wait milliseconds for a descheduled worker (a tiny-model epoch took
    0.5 s on one thread, 4.7 s on two). Restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
