"""MP4s of rendered frames: odd-sized PNGs encode to H.264 that decodes back to the same frames,
a clear error when no ffmpeg exists, and ffmpeg's own message when it fails."""

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fresnel import video
from fresnel.video import VideoUnavailable, ffmpeg_exe, write_video

WIDTH, HEIGHT = 33, 31  # odd on purpose: yuv420p needs padding to 34 x 32
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (40, 40, 40)]


def solid_frames(folder, colours=COLOURS, size=(WIDTH, HEIGHT)):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, colour in enumerate(colours):
        path = folder / f"frame_{index}.png"
        Image.new("RGB", size, colour).save(path)
        paths.append(path)
    return paths


def decode_rgb(path):
    """All frames of a video as (n, H, W, 3) uint8, decoded by ffmpeg itself."""
    command = [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-"]  # fmt: skip
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, HEIGHT + 1, WIDTH + 1, 3)


def test_odd_sized_frames_make_a_decodable_mp4(tmp_path):
    out = write_video(solid_frames(tmp_path / "renders"), tmp_path / "renders.mp4", fps=30)
    assert out == tmp_path / "renders.mp4"
    assert out.read_bytes()[4:8] == b"ftyp"  # the MP4 file-type box comes first
    assert not list(tmp_path.glob(".tmp-*"))
    null = subprocess.run([ffmpeg_exe(), "-i", str(out), "-f", "null", "-"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert int(re.findall(r"frame=\s*(\d+)", null.stderr)[-1]) == len(COLOURS)
    assert re.search(r"h264 .*yuv420p.* 34x32", null.stderr)
    frames = decode_rgb(out)
    assert len(frames) == len(COLOURS)
    centres = frames[:, HEIGHT // 2, WIDTH // 2].astype(int)
    assert np.abs(centres - np.array(COLOURS)).max() < 24


def test_frames_keep_the_given_order(tmp_path):
    """Names that sort differently from the list order: the list wins."""
    paths = solid_frames(tmp_path / "renders", colours=COLOURS[:3])
    order = [paths[2], paths[0], paths[1]]
    frames = decode_rgb(write_video(order, tmp_path / "v.mp4"))
    expected = np.array([COLOURS[2], COLOURS[0], COLOURS[1]])
    assert np.abs(frames[:, 10, 10].astype(int) - expected).max() < 24


def test_no_frames_or_mixed_sizes_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "v.mp4")
    mixed = solid_frames(tmp_path / "a", COLOURS[:1]) + solid_frames(
        tmp_path / "b", COLOURS[:1], size=(20, 20)
    )
    with pytest.raises(ValueError, match=r"\(20, 20\)"):
        write_video(mixed, tmp_path / "v.mp4")
    assert not (tmp_path / "v.mp4").exists()


def test_ffmpeg_on_path_is_the_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now raises ImportError
    monkeypatch.setattr(video.shutil, "which", lambda name: f"/opt/bin/{name}")
    assert ffmpeg_exe() == "/opt/bin/ffmpeg"


def test_no_ffmpeg_anywhere_is_video_unavailable(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    monkeypatch.setattr(video.shutil, "which", lambda name: None)
    with pytest.raises(VideoUnavailable, match=r"imageio-ffmpeg.*PATH"):
        ffmpeg_exe()
    with pytest.raises(VideoUnavailable):
        write_video(solid_frames(tmp_path / "renders"), tmp_path / "v.mp4")
    assert not (tmp_path / "v.mp4").exists()


def test_ffmpeg_failure_surfaces_its_last_stderr_line(monkeypatch, tmp_path):
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'some progress' >&2\necho 'Unknown encoder libx264' >&2\n"
                    "exit 1\n")  # fmt: skip
    fake.chmod(0o755)
    monkeypatch.setattr(video, "ffmpeg_exe", lambda: str(fake))
    with pytest.raises(RuntimeError, match=r"exit 1\): Unknown encoder libx264$"):
        write_video(solid_frames(tmp_path / "renders"), tmp_path / "v.mp4")
    assert not (tmp_path / "v.mp4").exists()
    assert not list(tmp_path.glob(".tmp-*"))
