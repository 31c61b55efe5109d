"""Pictures of a density result, as the guide's ``vlm_guidance.py --visualize`` writes them.

``save_visualization(image, result, out_dir, name)`` writes

* ``{name}_density.png``: the image with the density as a heat map over it (inferno,
  bilinearly resized to the image) and a colour bar in units of the mean (1 = average);
* ``{name}_density.npy``: the raw float32 density, exactly ``result.density``;
* ``{name}_segments.png``: importance levels (low / medium / high / critical, see
  ``density.importance_levels``) as coloured regions with a legend; grid answers show the
  grid and, up to 8 x 8, each cell's value; face answers show the landmarks and face box.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot state), so it is safe from
worker threads and needs no display.
"""

from __future__ import annotations

import io as pyio
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from PIL import Image

from fresnel import io
from fresnel.vlm.density import LEVELS, DensityResult, importance_levels

LEVEL_COLOURS = {
    "low": "#3b4cc0",
    "medium": "#5cb85c",
    "high": "#f0a030",
    "critical": "#d7191c",
}


def density_at_image_size(density: np.ndarray, width: int, height: int) -> np.ndarray:
    """The density map bilinearly resized to the image's pixel grid."""
    field = Image.fromarray(np.asarray(density, dtype=np.float32), mode="F")
    return np.asarray(field.resize((width, height), Image.Resampling.BILINEAR))


def _figure(image: Image.Image) -> tuple[Figure, object]:
    width, height = image.size
    scale = 6.0 / max(width, height)
    fig = Figure(figsize=(width * scale + 2.2, height * scale + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.04, 0.7, 0.88))
    ax.imshow(np.asarray(image.convert("RGB")))
    ax.set_axis_off()
    return fig, ax


def _save_figure(fig: Figure, path: Path) -> None:
    buffer = pyio.BytesIO()
    fig.savefig(buffer, format="png")
    io.write_bytes(path, buffer.getvalue())


def _title(result: DensityResult) -> str:
    grid = f", grid {result.grid_size}" if result.branch == "grid" and result.grid_size else ""
    return f"{result.provider} ({result.branch}{grid})"


def save_density_png(image: Image.Image, result: DensityResult, path) -> None:
    """Heat map of `result.density` over `image`, with a colour bar."""
    fig, ax = _figure(image)
    field = density_at_image_size(result.density, *image.size)
    heat = ax.imshow(field, cmap="inferno", alpha=0.6, vmin=0, vmax=max(float(field.max()), 1.0))
    bar_ax = fig.add_axes((0.76, 0.1, 0.04, 0.76))
    fig.colorbar(heat, cax=bar_ax, label="density (mean = 1)")
    ax.set_title(_title(result), fontsize=9)
    _save_figure(fig, Path(path))


def _draw_grid(ax, result: DensityResult, width: int, height: int) -> None:
    values = np.asarray(result.grid, dtype=np.float64)
    n = values.shape[0]
    for k in range(n + 1):
        ax.axhline(k * height / n, color="white", linewidth=0.5, alpha=0.8)
        ax.axvline(k * width / n, color="white", linewidth=0.5, alpha=0.8)
    if n > 8:
        return
    for (row, col), value in np.ndenumerate(values):
        x, y = (col + 0.5) * width / n, (row + 0.5) * height / n
        ax.text(x, y, f"{value:g}", color="white", ha="center", va="center", fontsize=7)


def _draw_face(ax, result: DensityResult, width: int, height: int) -> None:
    if result.face_box is not None:
        x0, y0, x1, y1 = result.face_box
        box = Rectangle(
            (x0 * width, y0 * height), (x1 - x0) * width, (y1 - y0) * height,
            fill=False, edgecolor="white", linewidth=1,
        )  # fmt: skip
        ax.add_patch(box)
    for name, (x, y) in (result.landmarks or {}).items():
        ax.plot(x * width, y * height, marker="+", color="white", markersize=8)
        ax.annotate(name, (x * width, y * height), xytext=(4, -4), textcoords="offset points",
                    color="white", fontsize=7)  # fmt: skip


def save_segments_png(image: Image.Image, result: DensityResult, path) -> None:
    """Importance levels as coloured regions over `image`, with a legend."""
    fig, ax = _figure(image)
    width, height = image.size
    if result.branch == "grid" and result.grid is not None:
        grid_levels = importance_levels(np.asarray(result.grid, dtype=np.float64))
        levels = np.asarray(
            Image.fromarray(grid_levels).resize((width, height), Image.Resampling.NEAREST)
        )
    else:
        levels = importance_levels(density_at_image_size(result.density, width, height))
    cmap = ListedColormap([LEVEL_COLOURS[name] for name in LEVELS])
    ax.imshow(levels, cmap=cmap, vmin=-0.5, vmax=len(LEVELS) - 0.5, alpha=0.45,
              interpolation="nearest")  # fmt: skip
    if result.branch == "grid" and result.grid is not None:
        _draw_grid(ax, result, width, height)
    _draw_face(ax, result, width, height)
    handles = [Patch(color=LEVEL_COLOURS[name], label=name) for name in reversed(LEVELS)]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.74, 0.5), title="importance",
               fontsize=8)  # fmt: skip
    ax.set_title(_title(result), fontsize=9)
    _save_figure(fig, Path(path))


def save_visualization(
    image: Image.Image, result: DensityResult, out_dir: str | os.PathLike, name: str
) -> dict[str, Path]:
    """Write {name}_density.png, {name}_density.npy and {name}_segments.png; return the paths."""
    out_dir = Path(out_dir)
    paths = {
        "density_png": out_dir / f"{name}_density.png",
        "density_npy": out_dir / f"{name}_density.npy",
        "segments_png": out_dir / f"{name}_segments.png",
    }
    save_density_png(image, result, paths["density_png"])
    with io.atomic_path(paths["density_npy"]) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.asarray(result.density, dtype=np.float32))
    save_segments_png(image, result, paths["segments_png"])
    return paths
