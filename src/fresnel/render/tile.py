"""Tile-based differentiable 3D Gaussian splatting in pure PyTorch (3DGS / gsplat semantics).

Pipeline: shared EWA projection (autograd) -> per-tile depth-sorted Gaussian lists (no grad) ->
one custom autograd Function that blends the lists front to back in chunks.

Per-tile lists: every visible Gaussian is expanded over the tiles its SIGMA_EXTENT box
overlaps, giving (tile, Gaussian) pairs; one argsort of the key tile * N + depth_rank orders
them by tile and, within a tile, by depth (ties by index, like a stable depth sort). Each tile's
list is then a contiguous run of the sorted array, read through (starts, counts).

Blending: tiles with work are sorted by list length and batched into groups of similar
lengths; each group walks its lists `chunk_size` Gaussians at a time, evaluating a (tiles,
pixels, chunk) block and carrying per-pixel transmittance to the next chunk. Tiles whose lists
are exhausted or whose pixels have all stopped drop out of later chunks, and a group ends when
none remain. No tensor is larger than one block (max_chunk_elements), the pair list or the image:
nothing grows with N x H x W, even when a few huge Gaussians cover every tile.

Backward walks the chunks in reverse, carrying per pixel the gradient terms of everything
blended later. It reuses forward intermediates up to `cache_bytes` and recomputes the other
chunks from their saved input transmittance (as the CUDA kernels do); besides that budget it
keeps one (tiles x pixels) transmittance snapshot per chunk step.

The per-pixel falloff and the blending avoid boolean tensors in the hot path (F.threshold
instead of masks): bool kernels are several times slower than arithmetic ones on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from fresnel.render.constants import ALPHA_MAX, TILE_SIZE, TRANSMITTANCE_MIN
from fresnel.render.projection import (
    Camera,
    RenderOutput,
    below,
    finish,
    gaussian_power,
    pixel_centers,
    project_gaussians,
    splat_alpha,
    validate_inputs,
)

CHUNK_SIZE = 32  # Gaussians per tile per blending step
CACHE_BYTES = 2**28  # forward intermediates kept for backward; the rest is recomputed
# Elements (tiles x chunk x pixels) per step: small on CPU to stay in cache, larger on GPUs.
MAX_CHUNK_ELEMENTS = {"cpu": 2**18, "default": 2**22}


@dataclass
class TileLists:
    """Per-tile depth-sorted Gaussian lists: tile t holds ids[starts[t] : starts[t] + counts[t]]."""

    ids: Tensor  # (pairs,) Gaussian indices sorted by (tile, depth)
    starts: Tensor  # (tiles,)
    counts: Tensor  # (tiles,)
    tiles_x: int
    tiles_y: int
    tile_size: int


def build_tile_lists(
    means2d: Tensor, extents: Tensor, depths: Tensor, radii: Tensor, camera: Camera, tile_size: int
) -> TileLists:
    """Expand visible Gaussians over the tiles their box overlaps; sort pairs by (tile, depth)."""
    tiles_x, tiles_y = math.ceil(camera.width / tile_size), math.ceil(camera.height / tile_size)
    device, n = means2d.device, means2d.shape[0]
    ids = (radii > 0).nonzero().squeeze(1)
    lo = torch.floor((means2d[ids] - extents[ids]) / tile_size)
    hi = torch.floor((means2d[ids] + extents[ids]) / tile_size)
    limit = torch.tensor([tiles_x - 1, tiles_y - 1], device=device)
    lo = torch.minimum(lo.clamp(min=0).long(), limit)
    hi = torch.minimum(hi.clamp(min=0).long(), limit)
    span = hi - lo + 1
    per_gaussian = span[:, 0] * span[:, 1]
    total = int(per_gaussian.sum())
    owner = torch.repeat_interleave(torch.arange(len(ids), device=device), per_gaussian,
                                    output_size=total)  # fmt: skip
    offset = torch.arange(total, device=device) - (per_gaussian.cumsum(0) - per_gaussian)[owner]
    width = span[owner, 0]
    tile = (lo[owner, 1] + offset // width) * tiles_x + lo[owner, 0] + offset % width
    rank = torch.empty(n, dtype=torch.long, device=device)
    rank[torch.argsort(depths, stable=True)] = torch.arange(n, device=device)
    gaussian = ids[owner]
    order = torch.argsort(tile * max(n, 1) + rank[gaussian])
    every = torch.arange(tiles_x * tiles_y, device=device)
    sorted_tiles = tile[order]
    starts = torch.searchsorted(sorted_tiles, every)
    counts = torch.searchsorted(sorted_tiles, every, right=True) - starts
    return TileLists(gaussian[order], starts, counts, tiles_x, tiles_y, tile_size)


class TileBasedRenderer:
    """Differentiable tile-based rasteriser; see the module docstring for the design.

    tile_size: tile side in pixels. chunk_size: Gaussians per tile per blending step.
    max_chunk_elements: cap on tiles x pixels x chunk per step (default per device type).
    cache_bytes: forward intermediates kept for backward, at most this many bytes; chunks
    beyond it are recomputed in backward (0 = always recompute).
    """

    def __init__(
        self,
        tile_size: int = TILE_SIZE,
        chunk_size: int = CHUNK_SIZE,
        max_chunk_elements: int | None = None,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.tile_size = tile_size
        self.chunk_size = chunk_size
        self.max_chunk_elements = max_chunk_elements
        self.cache_bytes = cache_bytes

    def render(
        self,
        means: Tensor,
        scales: Tensor,
        quats: Tensor,
        opacities: Tensor,
        colors: Tensor,
        camera: Camera,
        viewmat: Tensor | None = None,
        background: Tensor | None = None,
    ) -> RenderOutput:
        """Render one scene of N Gaussians (camera space unless viewmat is given)."""
        validate_inputs(means, scales, quats, opacities, colors)
        proj = project_gaussians(means, scales, quats, camera, viewmat)
        with torch.no_grad():
            lists = build_tile_lists(proj.means2d.detach(), proj.extents, proj.depths.detach(),
                                     proj.radii, camera, self.tile_size)  # fmt: skip
        features = torch.cat((colors, proj.depths.unsqueeze(-1)), -1)
        blended, trans = _Blend.apply(proj.means2d, proj.conics, opacities, features,
                                      self._plan(lists, camera, opacities))  # fmt: skip
        image = _untile(blended, lists, camera)
        trans = _untile(trans.unsqueeze(-1), lists, camera)[0]
        return finish(image[:-1], image[-1], trans, background, proj.means2d, proj.radii)

    __call__ = render

    def _plan(self, lists: TileLists, camera: Camera, opacities: Tensor) -> _Plan:
        budget = self.max_chunk_elements or MAX_CHUNK_ELEMENTS.get(
            opacities.device.type, MAX_CHUNK_ELEMENTS["default"]
        )
        tiles_per_group = max(1, budget // (self.chunk_size * self.tile_size**2))
        clamp = len(opacities) > 0 and bool(opacities.max() > ALPHA_MAX)
        cache = self.cache_bytes if torch.is_grad_enabled() else 0
        return _Plan(lists, camera, self.chunk_size, tiles_per_group, clamp, cache)


@dataclass
class _Plan:
    lists: TileLists
    camera: Camera
    chunk_size: int
    tiles_per_group: int
    clamp: bool  # whether any opacity exceeds ALPHA_MAX
    cache_bytes: int


def _untile(x: Tensor, lists: TileLists, camera: Camera) -> Tensor:
    """(tiles, P, C) tile layout -> (C, H, W) image layout."""
    ts, ty, tx = lists.tile_size, lists.tiles_y, lists.tiles_x
    x = x.reshape(ty, tx, ts, ts, x.shape[-1]).permute(4, 0, 2, 1, 3)
    return x.reshape(-1, ty * ts, tx * ts)[:, : camera.height, : camera.width]


def _initial_transmittance(lists: TileLists, camera: Camera, like: Tensor) -> Tensor:
    """(tiles, P): 1 inside the image, 0 for padding pixels (terminated from the start)."""
    ts, ty, tx = lists.tile_size, lists.tiles_y, lists.tiles_x
    full = torch.zeros(ty * ts, tx * ts, dtype=like.dtype, device=like.device)
    full[: camera.height, : camera.width] = 1
    return full.reshape(ty, ts, tx, ts).permute(0, 2, 1, 3).reshape(ty * tx, ts * ts)


@dataclass
class _Group:
    """Tiles blended together, with their lists padded to a multiple of the chunk size."""

    tiles: Tensor  # (B,)
    ids: Tensor  # (B, L) Gaussian indices (clamped for padding entries)
    params: Tensor  # (6, B, L) mean x, mean y, conic a, b, c, opacity (0 for padding)
    cols: Tensor  # (B, ts) pixel-centre x of each tile column
    rows: Tensor  # (B, ts) pixel-centre y of each tile row


def _groups(plan: _Plan, packed: Tensor) -> list[_Group]:
    """Tiles with work, longest lists first, batched so lengths within a group are similar."""
    lists, k, ts = plan.lists, plan.chunk_size, plan.lists.tile_size
    busy = (lists.counts > 0).nonzero().squeeze(1)
    busy = busy[torch.argsort(lists.counts[busy], descending=True, stable=True)]
    local = pixel_centers(ts, packed)
    groups = []
    for tiles in busy.split(plan.tiles_per_group) if len(busy) else ():
        pos = torch.arange(-(-int(lists.counts[tiles[0]]) // k) * k, device=tiles.device)
        slots = (lists.starts[tiles, None] + pos).clamp(max=len(lists.ids) - 1)
        ids = lists.ids[slots]
        params = packed[:, ids]
        params[5] *= pos < lists.counts[tiles, None]  # padding entries: opacity 0
        cols = ((tiles % lists.tiles_x) * ts).to(local)[:, None] + local
        rows = ((tiles // lists.tiles_x) * ts).to(local)[:, None] + local
        groups.append(_Group(tiles, ids, params, cols, rows))
    return groups


@dataclass
class _Chunk:
    """One blending step over B tiles x P pixels x K list entries (layout (B, P, K))."""

    ids: Tensor  # (B, K)
    params: Tensor  # (6, B, K)
    dx: Tensor  # (B, ts, K) pixel-column centre minus mean x
    dy: Tensor  # (B, ts, K) pixel-row centre minus mean y
    kept: Tensor  # (B, P, K) alpha before the ALPHA_MAX clamp
    one_minus_alpha: Tensor
    trans: Tensor  # (B, P, K + 1) transmittance before each entry, then after the last
    weights: Tensor  # (B, P, K) blend weights alpha_i T_i of included entries
    stopped: tuple[Tensor, Tensor]  # (b, p) of pixels where some entry is not included
    included: Tensor  # (len(stopped[0]), K) bool: which entries those pixels include

    def nbytes(self) -> int:
        big = (self.kept, self.one_minus_alpha, self.trans, self.weights)
        return sum(t.numel() * t.element_size() for t in big)


def _chunk(plan: _Plan, group: _Group, live, start: int, carry: Tensor) -> _Chunk:
    """Evaluate list entries [start, start + K) of the group's live tiles (row indices, or
    None for all) against their pixels."""
    ts, k = plan.lists.tile_size, plan.chunk_size
    window = slice(start, start + k)
    if live is None:
        ids, params = group.ids[:, window], group.params[:, :, window].contiguous()
        cols, rows = group.cols, group.rows
    else:
        ids, params = group.ids[live, window], group.params[:, live, window]
        cols, rows = group.cols[live], group.rows[live]
    dx = cols[:, :, None] - params[0][:, None, :]  # (B, ts, K) per column
    dy = rows[:, :, None] - params[1][:, None, :]  # per row
    conics = params[2:5].permute(1, 2, 0)[:, None, None]
    power = gaussian_power(dx[:, None], dy[:, :, None], conics).reshape(len(ids), ts * ts, k)
    alpha, kept = splat_alpha(power, params[5][:, None, :], plan.clamp)
    steps = alpha.new_empty(*alpha.shape[:-1], k + 1)  # carry, then 1 - alpha per entry
    steps[..., 0] = carry
    one_minus = torch.sub(alpha.new_ones(()), alpha, out=steps[..., 1:])
    trans = torch.cumprod(steps, -1)
    weights = alpha * trans[..., :-1]
    # Entries are included while transmittance after them stays >= TRANSMITTANCE_MIN; only
    # pixels whose transmittance ends below it need masking (few: done on that subset).
    stopped = (trans[..., -1] < TRANSMITTANCE_MIN).nonzero(as_tuple=True)
    included = trans[stopped][:, 1:] >= TRANSMITTANCE_MIN
    weights[stopped] *= included
    return _Chunk(ids, params, dx, dy, kept, one_minus, trans, weights, stopped, included)


def _pack(means2d: Tensor, conics: Tensor, opacities: Tensor) -> Tensor:
    """(6, N) per-Gaussian parameters, gathered with one index per group."""
    return torch.cat((means2d.T, conics.T, opacities[None]))


class _Blend(torch.autograd.Function):
    """Front-to-back alpha blending of the per-tile lists; returns per-tile blended features
    (tiles, P, F) and final transmittance (tiles, P)."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, plan: _Plan):
        # running: product of (1 - alpha) over all entries so far, which decides inclusion (a
        # pixel stops for good once it would drop below TRANSMITTANCE_MIN); final: product
        # over the included entries only, the transmittance the image uses.
        running = _initial_transmittance(plan.lists, plan.camera, means2d)
        final = running.clone()
        out = means2d.new_zeros(*running.shape, features.shape[1])
        groups = _groups(plan, _pack(means2d, conics, opacities))
        keep = any(ctx.needs_input_grad[:4])  # nothing to keep for inference
        steps, cache_left = [], plan.cache_bytes if keep else 0
        for g, group in enumerate(groups):
            carry, done = running[group.tiles], final[group.tiles]
            counts = plan.lists.counts[group.tiles]
            for start in range(0, group.ids.shape[1], plan.chunk_size):
                live = (counts > start) & (carry.amax(1) >= TRANSMITTANCE_MIN)
                live = None if bool(live.all()) else live.nonzero().squeeze(1)
                if live is not None and len(live) == 0:
                    break
                rows = slice(None) if live is None else live
                c = _chunk(plan, group, live, start, carry[rows])
                out[group.tiles[rows]] += torch.bmm(c.weights, features[c.ids])
                cache_left -= c.nbytes()
                if keep:
                    cached = c if cache_left >= 0 else None
                    steps.append((g, live, start, carry[rows].clone(), cached))
                done[rows] = _final_transmittance(c, done[rows])
                carry[rows] = c.trans[..., -1]
            running[group.tiles], final[group.tiles] = carry, done
        ctx.plan, ctx.groups, ctx.steps = plan, groups, steps
        ctx.save_for_backward(means2d, conics, opacities, features, final)
        return out, final

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_trans):
        means2d, conics, opacities, features, trans = ctx.saved_tensors
        grads = [torch.zeros_like(t) for t in (means2d, conics, opacities, features)]
        suffix = grad_trans * trans  # per pixel: gradient terms of everything blended later
        for g, live, start, carry, cached in reversed(ctx.steps):
            group = ctx.groups[g]
            c = cached or _chunk(ctx.plan, group, live, start, carry)
            tiles = group.tiles if live is None else group.tiles[live]
            g_alpha = _alpha_grad(c, grad_out[tiles], tiles, suffix, features, grads[3])
            _falloff_grad(c, g_alpha, ctx.plan.clamp, grads)
        return (*grads, None)


def _final_transmittance(c: _Chunk, before: Tensor) -> Tensor:
    """(B, P) transmittance after the last included entry so far (before: up to this chunk)."""
    final = c.trans[..., -1].clone()
    count = c.included.sum(1, keepdim=True)
    final[c.stopped] = c.trans[c.stopped].gather(1, count).squeeze(1)
    return torch.where(c.trans[..., 0] < TRANSMITTANCE_MIN, before, final)


def _alpha_grad(c: _Chunk, grad: Tensor, tiles, suffix, features, g_features) -> Tensor:
    """dL/dalpha (B, P, K) of one chunk; accumulates feature grads, updates suffix sums.

    With s_i = dL/dw_i: dL/dalpha_i = T_i s_i - (sum_{j>i} w_j s_j + T_final dL/dT_final)
    / (1 - alpha_i) for included entries, 0 otherwise."""
    g_features.index_add_(0, c.ids.reshape(-1),
                          torch.bmm(c.weights.transpose(1, 2), grad).flatten(0, 1))  # fmt: skip
    s = torch.bmm(grad, features[c.ids].transpose(1, 2))
    later = c.weights * s
    total = later.sum(-1, keepdim=True)
    later = torch.sub(suffix[tiles].unsqueeze(-1) + total, later.cumsum_(-1), out=later)
    suffix[tiles] += total.squeeze(-1)
    g_alpha = s.mul_(c.trans[..., :-1]).addcdiv_(later, c.one_minus_alpha, value=-1)
    g_alpha[c.stopped] *= c.included
    return g_alpha


def _falloff_grad(c: _Chunk, g_alpha, clamp: bool, grads) -> None:
    """Chain dL/dalpha through alpha = opacity * exp(power(dx, dy)) into means2d, conics and
    opacities. Pixel sums of dL/dpower times dx, dy, dx^2, ... use the separable grid: row and
    column sums first, then (B, ts, K)-sized products."""
    g_means, g_conics, g_opacities = grads[:3]
    if clamp:  # clamped entries (kept > ALPHA_MAX) have no gradient
        unclamped = F.threshold(-c.kept, below(-ALPHA_MAX, c.kept.dtype), 0.0, inplace=True)
        g_power = g_alpha.mul_(unclamped).neg_()
    else:
        g_power = g_alpha.mul_(c.kept)  # skipped entries have kept == 0
    ts = c.dx.shape[1]
    g_power = g_power.view(len(c.ids), ts, ts, -1)  # (B, rows, cols, K)
    per_col, per_row = g_power.sum(1), g_power.sum(2)  # (B, ts, K)
    row_x = (g_power * c.dx[:, None]).sum(2)  # sum over columns of dL/dpower * dx
    m0 = per_col.sum(1)
    sx, sxx = (per_col * c.dx).sum(1), (per_col * c.dx * c.dx).sum(1)
    sy, syy = (per_row * c.dy).sum(1), (per_row * c.dy * c.dy).sum(1)
    sxy = (row_x * c.dy).sum(1)
    _, _, a, b, cc, opacity = c.params
    flat = c.ids.reshape(-1)
    # power = -0.5 (a dx^2 + 2 b dx dy + c dy^2), dx = pixel x - mean x
    g_means.index_add_(0, flat, torch.stack((a * sx + b * sy, b * sx + cc * sy), -1).flatten(0, 1))
    g_conics.index_add_(0, flat, torch.stack((-0.5 * sxx, -sxy, -0.5 * syy), -1).flatten(0, 1))
    opacity = opacity.clamp(min=torch.finfo(opacity.dtype).tiny)
    g_opacities.index_add_(0, flat, (m0 / opacity).reshape(-1))
