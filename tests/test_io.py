import subprocess
import sys

import numpy as np
import pytest

from fresnel import io


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_never_leaves_a_finished_looking_file(tmp_path):
    target = tmp_path / "big.bin"
    code = (
        "import os, fresnel.io as io\n"
        f"with io.atomic_path({str(target)!r}) as t:\n"
        "    t.write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == -9
    assert not target.exists()


def test_f32_bin_round_trip_and_shape_check(tmp_path):
    array = np.arange(37 * 37 * 384, dtype=np.float32).reshape(37, 37, 384)
    io.write_f32_bin(tmp_path / "a_dinov2.bin", array)
    assert (tmp_path / "a_dinov2.bin").stat().st_size == 37 * 37 * 384 * 4
    np.testing.assert_array_equal(io.read_f32_bin(tmp_path / "a_dinov2.bin", (37, 37, 384)), array)
    with pytest.raises(ValueError, match=r"a_dinov2.bin: holds 525696 float32 values"):
        io.read_f32_bin(tmp_path / "a_dinov2.bin", (256, 256))


def test_sha256_file_matches_known_digest(tmp_path):
    (tmp_path / "x").write_bytes(b"abc")
    assert io.sha256_file(tmp_path / "x").startswith("ba7816bf8f01cfea")
