"""An MP4 of rendered frames, as the guide makes from `renders/%05d.png` with ffmpeg.

H.264 in yuv420p at 30 fps by default (`-c:v libx264 -pix_fmt yuv420p`), the format every
browser and player accepts. The ffmpeg binary comes from the `imageio-ffmpeg` wheel, which
bundles one, so no system package is needed; an `ffmpeg` on PATH is the fallback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from fresnel.io import atomic_path

# yuv420p subsamples chroma 2x2, so libx264 needs even sizes: pad odd ones by a black pixel.
EVEN_PAD = "pad=ceil(iw/2)*2:ceil(ih/2)*2"


class VideoUnavailable(RuntimeError):
    """No ffmpeg binary could be found."""

    def __init__(self) -> None:
        super().__init__(
            "no ffmpeg found: install imageio-ffmpeg (pip install 'imageio-ffmpeg>=0.5') "
            "or put an ffmpeg binary on PATH"
        )


def ffmpeg_exe() -> str:
    """imageio-ffmpeg's bundled binary, else `ffmpeg` on PATH; VideoUnavailable if neither."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):  # not installed, or its binary is missing
        pass
    found = shutil.which("ffmpeg")
    if found is None:
        raise VideoUnavailable()
    return found


def write_video(frames: Sequence[str | os.PathLike], out: str | os.PathLike, fps: int = 30) -> Path:
    """Encode same-size image frames, in the given order, into an H.264 yuv420p MP4 at `out`.

    Written atomically; raises ValueError on no frames (or frames of different sizes) and
    RuntimeError carrying ffmpeg's last stderr line when ffmpeg fails."""
    frames = [Path(frame) for frame in frames]
    if not frames:
        raise ValueError(f"no frames to make {out} from")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    _check_same_size(frames)
    exe = ffmpeg_exe()
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="fresnel-video-") as tmp, atomic_path(out) as part:
        pattern = _numbered_sequence(frames, Path(tmp))
        _run_ffmpeg(_encode_command(exe, pattern, part, fps), out)
    return out


def _check_same_size(frames: list[Path]) -> None:
    """Only the headers are read, so this is cheap even for long sequences."""
    with Image.open(frames[0]) as first:
        size = first.size
    for frame in frames[1:]:
        with Image.open(frame) as image:
            if image.size != size:
                raise ValueError(f"{frame} is {image.size}, but {frames[0]} is {size}")


def _numbered_sequence(frames: list[Path], folder: Path) -> str:
    """Link the frames as folder/00000<ext>, 00001<ext>, ... (the image2 demuxer's input
    order is its numbering, whatever the original names) and return the %05d pattern."""
    suffix = frames[0].suffix.lower() or ".png"
    for index, frame in enumerate(frames):
        link = folder / f"{index:05d}{suffix}"
        try:
            link.symlink_to(frame.resolve())
        except OSError:  # no symlinks on this filesystem
            shutil.copyfile(frame, link)
    return str(folder / f"%05d{suffix}")


def _encode_command(exe: str, pattern: str, out: Path, fps: int) -> list[str]:
    return [
        exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-framerate", str(fps), "-start_number", "0", "-i", pattern,
        "-vf", EVEN_PAD, "-c:v", "libx264", "-pix_fmt", "yuv420p",
        "-movflags", "+faststart",
        "-f", "mp4", str(out),  # the temp name has no .mp4 suffix to infer the muxer from
    ]  # fmt: skip


def _run_ffmpeg(command: list[str], out: Path) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        last = lines[-1].strip() if lines else "(no output)"
        raise RuntimeError(f"ffmpeg failed making {out} (exit {result.returncode}): {last}")
