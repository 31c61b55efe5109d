"""fresnel.pipeline.locks: a lock is removed only when no snakemake runs in its directory, and
inside a DVC stage a live run is refused in one line that does not advise `--unlock`."""

import subprocess
import sys
import time

import pytest

from fresnel.pipeline import locks


@pytest.fixture
def locked(tmp_path, monkeypatch):
    """A directory holding a snakemake lock, as the current directory."""
    (tmp_path / locks.LOCKS).mkdir(parents=True)
    (tmp_path / locks.LOCKS / "0.input.lock").write_text("results/x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return tmp_path


def fake_snakemake(bin_dir, cwd) -> subprocess.Popen:
    """A process whose command line names `snakemake`, running in `cwd`."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "snakemake"
    script.write_text("import time\ntime.sleep(120)\n")
    process = subprocess.Popen([sys.executable, str(script)], cwd=cwd)
    deadline = time.monotonic() + 10
    while not any(p.pid == process.pid for p in locks.live_runs(cwd)):
        assert time.monotonic() < deadline, "the fake run never showed up"
        time.sleep(0.02)
    return process


def test_the_lock_of_a_live_run_stays_and_a_dead_runs_lock_goes(locked, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    other = fake_snakemake(elsewhere / "bin", elsewhere)  # another directory's run
    live = fake_snakemake(locked / "bin", locked)
    try:
        assert [p.pid for p in locks.release_dead_lock()] == [live.pid]
        assert (locked / locks.LOCKS / "0.input.lock").is_file()
    finally:
        live.kill()
        live.wait()
    try:
        assert locks.release_dead_lock() == []
        assert not (locked / locks.LOCKS).exists()
    finally:
        other.kill()
        other.wait()


def test_inside_a_dvc_stage_a_live_run_is_one_line_without_unlock_advice(locked, monkeypatch):
    live = fake_snakemake(locked / "bin", locked)
    monkeypatch.setenv("DVC_STAGE", "decoder_train-2")
    try:
        with pytest.raises(SystemExit) as refused:
            locks.release_dead_lock()
    finally:
        live.kill()
        live.wait()
    message = str(refused.value)
    assert message.startswith("error: another snakemake run is building in this directory")
    assert f"pid {live.pid}" in message and "\n" not in message
    assert "--unlock" not in message
    assert (locked / locks.LOCKS / "0.input.lock").is_file()
