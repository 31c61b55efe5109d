"""Flow labels between a query image and one rendered template of the same object (VPOG).

Conventions
- Images are (H, W). Pixel (row i, col j) has its centre at (u, v) = (j + 0.5, i + 0.5), and the
  continuous point (u, v) lies in pixel (floor(v), floor(u)).
- Cameras are OpenCV pinholes (x right, y down, z forward): [u, v, 1]^T ~ K [X, Y, Z]^T.
- Depth is the camera-frame Z of the surface (not the length of the ray); 0 means background.
- T_q and T_t are 4x4 object-to-camera poses: X_cam = R X_obj + t.
- A query pixel is *foreground* when its mask is set and its depth is positive.
- Flows are (x, y) = (du, dv) pairs in *patch units*: pixels / patch_size.
- Patches: an (H, W) image is cut into (Hp, Wp) = (H // ps, W // ps) patches of ps x ps pixels,
  indexed row-major, index = row * Wp + col. H and W must be multiples of ps; the template may
  have another size than the query (its own grid Hp_t x Wp_t).

Pixel labels
- `pixel_flow` (H, W, 2): template position minus query position of each query pixel, in patch
  units. Finite for every foreground pixel whose object point lies in front of the template
  camera, also when that point is occluded or outside the template image (the displacement is
  still the geometric one; `pixel_visible` says whether to trust it); NaN elsewhere.
- `pixel_visible` (H, W) bool: foreground, and the projection lies inside the template image,
  on a template pixel whose mask is set and whose depth agrees with the projected depth z:
  |template_depth - z| <= depth_tolerance * z (a relative tolerance, so it holds for any depth
  unit). The template is sampled at the pixel containing the projection (its nearest pixel
  centre), without interpolation.

Patch labels
- Each query patch is represented by its *anchor pixel*, (row * ps + ps // 2, col * ps + ps // 2):
  the centre pixel for odd ps, the lower-right of the four central pixels for even ps. A patch is
  background exactly when its anchor pixel is not foreground, whatever its other pixels are.
- `labels` (Hp, Wp) long, with n = Hp_t * Wp_t template patches:
    BACKGROUND = -1    the anchor pixel is not foreground;
    0 .. n - 1         the anchor pixel is visible; the index of the template patch containing
                       its projection (the *buddy* patch);
    n (unseen_label)   the anchor pixel is foreground but not visible in the template (occluded,
                       failing the depth test, or projecting outside the template image).
- `patch_flow` (Hp, Wp, 2): `pixel_flow` at the anchor pixel (an exact one-patch shift gives
  exactly (1, 0) or (0, 1) up to sign). NaN where the anchor's pixel flow is NaN.
- `dense_flow` (Hp, Wp, ps, ps, 2), indexed [row, col, row in patch, col in patch]: where every
  pixel of the query patch projects, relative to the centre of the buddy patch, in patch units;
  in [-0.5, 0.5) exactly when the projection stays inside the buddy patch. NaN for patches
  without a buddy (background or unseen) and for pixels whose `pixel_flow` is NaN.
- `dense_visible` (Hp, Wp, ps, ps) bool: the pixel is visible and its projection lies in the
  buddy patch.
- `patch_visibility` (Hp, Wp): the number of `dense_visible` pixels over the number of foreground
  pixels of the patch; 0 for patches without a buddy.

Everything is vectorised and computed in float64 on the query depth's device; float outputs take
the query depth's dtype (float32 for a non-float depth).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BACKGROUND = -1
DEFAULT_DEPTH_TOLERANCE = 0.01  # relative: 1 cm at 1 m


@dataclass(frozen=True)
class FlowLabels:
    """Flow labels of one (query, template) pair; see the module docstring for each field."""

    pixel_flow: Tensor
    pixel_visible: Tensor
    labels: Tensor
    patch_flow: Tensor
    dense_flow: Tensor
    dense_visible: Tensor
    patch_visibility: Tensor
    unseen_label: int


def compute_flow_labels(
    query_depth: Tensor,
    query_mask: Tensor,
    K_q: Tensor,
    T_q: Tensor,
    tmpl_depth: Tensor,
    tmpl_mask: Tensor,
    K_t: Tensor,
    T_t: Tensor,
    patch_size: int = 16,
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
) -> FlowLabels:
    """Flow, visibility and buddy-patch labels from the query to the template."""
    _check_image(query_depth, query_mask, patch_size, "query")
    _check_image(tmpl_depth, tmpl_mask, patch_size, "template")
    out_dtype = query_depth.dtype if query_depth.is_floating_point() else torch.float32
    device = query_depth.device
    K_q, T_q, K_t, T_t, query_depth, tmpl_depth = (
        tensor.to(device=device, dtype=torch.float64)
        for tensor in (K_q, T_q, K_t, T_t, query_depth, tmpl_depth)
    )
    query_mask, tmpl_mask = query_mask.to(device).bool(), tmpl_mask.to(device).bool()

    foreground = query_mask & (query_depth > 0)
    uv_query = pixel_centres(*query_depth.shape, device=device)
    uv_tmpl, z_tmpl = _project_query(query_depth, foreground, uv_query, K_q, T_q, K_t, T_t)
    tmpl_pixel = pixel_containing(uv_tmpl, *tmpl_depth.shape)
    visible = foreground & passes_depth_test(
        tmpl_pixel, z_tmpl, tmpl_depth, tmpl_mask, depth_tolerance
    )
    pixel_flow = (uv_tmpl - uv_query) / patch_size

    anchor_rows, anchor_cols = anchor_pixels(query_depth.shape, patch_size, device)
    buddy = torch.div(tmpl_pixel[anchor_rows, anchor_cols], patch_size, rounding_mode="floor")
    labels, unseen = _buddy_labels(
        buddy,
        foreground[anchor_rows, anchor_cols],
        visible[anchor_rows, anchor_cols],
        tmpl_depth.shape[1] // patch_size,
        tmpl_depth.numel() // patch_size**2,
    )
    has_buddy = (labels >= 0) & (labels < unseen)
    dense_flow, dense_visible = _dense_labels(
        uv_tmpl, tmpl_pixel, visible, buddy, has_buddy, patch_size
    )
    foreground_count = to_patches(foreground, patch_size).sum(dim=(2, 3))
    patch_visibility = dense_visible.sum(dim=(2, 3)) / foreground_count.clamp_min(1)
    return FlowLabels(
        pixel_flow=pixel_flow.to(out_dtype),
        pixel_visible=visible,
        labels=labels,
        patch_flow=pixel_flow[anchor_rows, anchor_cols].to(out_dtype),
        dense_flow=dense_flow.to(out_dtype),
        dense_visible=dense_visible,
        patch_visibility=patch_visibility.to(out_dtype),
        unseen_label=unseen,
    )


def _project_query(
    query_depth: Tensor,
    foreground: Tensor,
    uv_query: Tensor,
    K_q: Tensor,
    T_q: Tensor,
    K_t: Tensor,
    T_t: Tensor,
) -> tuple[Tensor, Tensor]:
    """Template (u, v), NaN off the foreground or behind the template camera, and camera z."""
    points = back_project(query_depth, K_q, uv_query)
    uv_tmpl, z_tmpl = project(K_t, transform(T_t @ invert_rigid(T_q), points))
    uv_tmpl = torch.where((foreground & (z_tmpl > 0))[..., None], uv_tmpl, torch.nan)
    return uv_tmpl, z_tmpl


def _buddy_labels(
    buddy: Tensor,
    anchor_foreground: Tensor,
    anchor_visible: Tensor,
    tmpl_grid_width: int,
    tmpl_patch_count: int,
) -> tuple[Tensor, int]:
    """(Hp, Wp) labels from the anchors' buddy (row, col), and the unseen label."""
    unseen = tmpl_patch_count
    labels = buddy[..., 0] * tmpl_grid_width + buddy[..., 1]
    labels = torch.where(anchor_visible, labels, unseen)
    return torch.where(anchor_foreground, labels, BACKGROUND), unseen


def _dense_labels(
    uv_tmpl: Tensor,
    tmpl_pixel: Tensor,
    visible: Tensor,
    buddy: Tensor,
    has_buddy: Tensor,
    patch_size: int,
) -> tuple[Tensor, Tensor]:
    """Per-pixel positions relative to the buddy patch centre, and whether each stays in it."""
    buddy_centre_uv = (buddy.flip(-1).to(uv_tmpl.dtype) + 0.5) * patch_size
    uv_in_patches = to_patches(uv_tmpl, patch_size)
    dense_flow = (uv_in_patches - buddy_centre_uv[:, :, None, None, :]) / patch_size
    dense_flow = torch.where(has_buddy[:, :, None, None, None], dense_flow, torch.nan)
    tmpl_patch = torch.div(to_patches(tmpl_pixel, patch_size), patch_size, rounding_mode="floor")
    in_buddy = (tmpl_patch == buddy[:, :, None, None, :]).all(dim=-1)
    dense_visible = to_patches(visible, patch_size) & in_buddy & has_buddy[:, :, None, None]
    return dense_flow, dense_visible


def pixel_centres(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """(H, W, 2) float64 (u, v) centres of the pixels."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=device) + 0.5,
        torch.arange(width, dtype=torch.float64, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack((u, v), dim=-1)


def back_project(depth: Tensor, K: Tensor, uv: Tensor) -> Tensor:
    """(H, W, 3) camera-frame points at the given z-depths along the pixels' rays."""
    homogeneous = torch.cat((uv, torch.ones_like(uv[..., :1])), dim=-1)
    rays = homogeneous @ torch.linalg.inv(K).T
    return rays / rays[..., 2:] * depth[..., None]


def transform(T: Tensor, points: Tensor) -> Tensor:
    """Points (..., 3) mapped by the 4x4 rigid transform T."""
    return points @ T[:3, :3].T + T[:3, 3]


def invert_rigid(T: Tensor) -> Tensor:
    """The inverse of a 4x4 rotation-plus-translation, exact up to rounding."""
    inverse = torch.eye(4, dtype=T.dtype, device=T.device)
    inverse[:3, :3] = T[:3, :3].T
    inverse[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inverse


def project(K: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
    """(u, v) image positions (..., 2) and camera z (...) of camera-frame points (..., 3)."""
    z = points[..., 2]
    projected = points @ K.T
    return projected[..., :2] / projected[..., 2:], z


def pixel_containing(uv: Tensor, height: int, width: int) -> Tensor:
    """(..., 2) long (row, col) of the pixel containing each (u, v); (-1, -1) when outside.

    NaN positions count as outside.
    """
    inside = (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    # Clamp before the cast: NaN or huge values have no meaningful integer value.
    col = uv[..., 0].nan_to_num(0.0).clamp(0, width - 1).floor().long()
    row = uv[..., 1].nan_to_num(0.0).clamp(0, height - 1).floor().long()
    row_col = torch.stack((row, col), dim=-1)
    return torch.where(inside[..., None], row_col, -1)


def passes_depth_test(
    tmpl_pixel: Tensor,
    z: Tensor,
    tmpl_depth: Tensor,
    tmpl_mask: Tensor,
    depth_tolerance: float,
) -> Tensor:
    """Whether each projection hits a template pixel on the object at the same depth."""
    inside = tmpl_pixel[..., 0] >= 0
    rows, cols = tmpl_pixel[..., 0].clamp_min(0), tmpl_pixel[..., 1].clamp_min(0)
    surface = tmpl_depth[rows, cols]
    same_depth = (surface - z).abs() <= depth_tolerance * z
    return inside & tmpl_mask[rows, cols] & (surface > 0) & same_depth


def anchor_pixels(
    shape: torch.Size | tuple[int, int], patch_size: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """(Hp, 1) rows and (1, Wp) cols of the patches' anchor pixels, ready for indexing."""
    offset = patch_size // 2
    rows = torch.arange(shape[0] // patch_size, device=device) * patch_size + offset
    cols = torch.arange(shape[1] // patch_size, device=device) * patch_size + offset
    return rows[:, None], cols[None, :]


def to_patches(image: Tensor, patch_size: int) -> Tensor:
    """(H, W, ...) -> (Hp, Wp, ps, ps, ...), indexed [row, col, row in patch, col in patch]."""
    height, width = image.shape[:2]
    rest = image.shape[2:]
    grid = image.reshape(height // patch_size, patch_size, width // patch_size, patch_size, *rest)
    return grid.transpose(1, 2)


def _check_image(depth: Tensor, mask: Tensor, patch_size: int, name: str) -> None:
    if depth.ndim != 2 or depth.shape != mask.shape:
        raise ValueError(
            f"{name} depth {tuple(depth.shape)} and mask {tuple(mask.shape)} must be the same (H, W)"
        )
    if depth.shape[0] % patch_size or depth.shape[1] % patch_size:
        raise ValueError(
            f"{name} size {tuple(depth.shape)} is not a multiple of patch_size {patch_size}"
        )
