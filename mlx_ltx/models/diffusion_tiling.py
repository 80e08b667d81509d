"""Tiled decoding for LTX-2.5's diffusion video decoder: the reference's ``diffusion_tiling.py``
(tile schedule on the stage-4 grid, interval propagation through the last upsample and the
unpatchify, stage-5 canvases, the minimum overlaps) and a tile choice from a memory budget.

Stages 1–3 run once on the whole ghost-padded latent and their output (the stage-4 input) stays
resident; stages 4 and 5 run per tile of that grid, in isolation. Tiles overlap by at least what
stages 4 and 5 can see (``tile_halos``: each NA block reaches K//2 further), and the decoded pixel
tiles are blended with symmetric trapezoid ramps, which sum to one across an overlap, so the blend
needs no weight buffer. Tiles are grouped by temporal slice; a group's frames are streamed out as
soon as no later group can touch them, so only about two temporal tiles of pixels are alive.

The pixel size of a tile along time follows the upsample's frame map: a temporal stride of 2 maps
stage-4 frames [s, e) to pixel frames [2s − 1, 2e − 1) (the first tile, which holds t = 0, drops its
leading frame instead: [0, 2e − 1)); spatial axes scale by stride × patch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .vae_tiling import AxisTiling, Interval, TilingConfig, split_by_size, trapezoidal_mask


@dataclass(frozen=True)
class DiffTile:
    """One tile: its stage-4 grid slices (content frames), the pixel slices of the work volume it
    decodes to, and a 1-D blend mask per pixel axis."""

    s4: tuple[slice, slice, slice]
    out: tuple[slice, slice, slice]
    masks: tuple[np.ndarray, np.ndarray, np.ndarray]

    @property
    def is_origin(self) -> bool:
        """The tile holds frame 0: its upsample drops the duplicated leading frame."""
        return self.s4[0].start == 0


def stage4_thw_from_latent(upsamples, t: int, h: int, w: int) -> tuple[int, int, int]:
    """``stage4_thw_from_latent``: the stage-4 input grid after the first three upsample hops
    (a temporal stride of 2 drops the leading frame)."""
    for (st, sh, sw), _ in upsamples[:3]:
        t, h, w = t * st - (st == 2), h * sh, w * sw
    return t, h, w


def pixel_scale(cfg) -> tuple[int, int, int]:
    """``stage4_to_pixel_scale_factors``: pixels per stage-4 cell (last upsample × patch)."""
    st, sh, sw = cfg.upsamples[3][0]
    return st, sh * cfg.patch_size, sw * cfg.patch_size


def tile_min_sizes(cfg) -> tuple[int, int, int]:
    """``compute_tile_min_size``: the smallest stage-4 tile in which stages 4 and 5 each see ≥ K."""
    k4, k5, up = cfg.stage_kernels[3], cfg.stage5_kernel, cfg.upsamples[3][0]
    return tuple(max(k4[a], -(-k5[a] // up[a])) for a in range(3))


def tile_halos(cfg) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``compute_tile_halos``: one-sided reach of stage 4 and of stage 5, in stage-4 cells."""
    k4, k5, up = cfg.stage_kernels[3], cfg.stage5_kernel, cfg.upsamples[3][0]
    d4, d5 = cfg.stage_depths[3], cfg.stage_depths[-1]
    return (tuple(d4 * (k4[a] // 2) for a in range(3)),
            tuple(-(-(d5 * (k5[a] // 2)) // up[a]) for a in range(3)))


def recommended_pixel_overlaps(cfg) -> tuple[int, int]:
    """``recommended_pixel_overlaps``: (frames, pixels) every tiled axis must overlap by at least,
    rounded up to the VAE grid (8 frames, 32 px)."""
    halos, scale = tile_halos(cfg), pixel_scale(cfg)
    dominant = [max(h[a] for h in halos) for a in range(3)]
    return _round_up(dominant[0] * scale[0], 8), _round_up(max(dominant[1], dominant[2]) * scale[1], 32)


def check_tiling(cfg, tiling: TilingConfig) -> None:
    """``_validate_overlap``: an overlap below what the tile's stages can see is refused."""
    frames, pixels = recommended_pixel_overlaps(cfg)
    for name, axis, need, unit in (("frames", tiling.frames, frames, "frames"), ("height", tiling.height, pixels, "px"),
                                   ("width", tiling.width, pixels, "px")):
        if axis.is_tiled() and axis.overlap < need:
            raise ValueError(f"diffusion decoder tiling: {name} overlap {axis.overlap} {unit} is below the required "
                             f"{need} {unit} (what stages 4 and 5 reach across a tile border)")


def _propagate(iv: Interval, stride: int, causal: bool) -> Interval:
    """``_propagate_interval_through_upsample_hops`` for one hop."""
    start, end = iv.start * stride, iv.end * stride
    if causal and stride == 2:
        end -= 1
        start -= iv.start != 0
    return Interval(start, end, iv.left_ramp * stride, iv.right_ramp * stride)


def _axis_specs(length: int, sizes: tuple[int, int] | None, min_size: int, stride: int, patch: int,
                temporal: bool) -> list[tuple[slice, slice, np.ndarray]]:
    """[(stage-4 slice, pixel slice, mask)] along one axis; one untiled entry when not split."""
    intervals = [Interval(0, length, 0, 0)] if sizes is None else split_by_size(length, *sizes, min_tile_size=min_size)
    out = []
    for iv in intervals:
        px = _propagate(iv, stride, temporal)
        if patch > 1:
            px = _propagate(px, patch, False)
        out.append((slice(iv.start, iv.end), slice(px.start, px.end),
                    trapezoidal_mask(px.end - px.start, px.left_ramp, px.right_ramp)))
    return out


def prepare_tile_schedule(cfg, s4_thw: tuple[int, int, int], tiling: TilingConfig | None) -> list[DiffTile]:
    """``prepare_tile_schedule``: the tiles, frames slowest (as the reference's product order)."""
    if tiling is not None:
        check_tiling(cfg, tiling)
    scale = pixel_scale(cfg)
    strides = cfg.upsamples[3][0]
    sizes = tiling.latent_sizes(scale) if tiling is not None else [None, None, None]
    mins = tile_min_sizes(cfg)
    axes = [_axis_specs(n, sz, m, s, 1 if a == 0 else cfg.patch_size, a == 0)
            for a, (n, sz, m, s) in enumerate(zip(s4_thw, sizes, mins, strides))]
    return [DiffTile((t[0], h[0], w[0]), (t[1], h[1], w[1]), (t[2], h[2], w[2]))
            for t, h, w in itertools.product(*axes)]


def stage5_canvas(cfg, content: tuple[int, int, int], is_origin: bool, pad_trailing: bool) -> tuple[int, int, int]:
    """``stage5_pixel_shape_from_stage4``: the (F, H, W) a stage-4 tile decodes to; a tile at the
    clip's end keeps at least stage 5's temporal kernel."""
    st, sh, sw = cfg.upsamples[3][0]
    t, h, w = content
    frames = t * st - 1 if is_origin and st == 2 else t * st
    if pad_trailing:
        frames = max(frames, cfg.stage5_kernel[0])
    return frames, h * sh * cfg.patch_size, w * sw * cfg.patch_size


def group_by_frames(tiles: list[DiffTile]) -> list[list[DiffTile]]:
    """``group_tiles_by_temporal_slice``: consecutive tiles with one pixel-frame slice."""
    groups: list[list[DiffTile]] = []
    for tile in tiles:
        if groups and groups[-1][0].out[0] == tile.out[0]:
            groups[-1].append(tile)
        else:
            groups.append([tile])
    return groups


def axis_weights(tiles: list[DiffTile], shape: tuple[int, int, int]) -> list[np.ndarray]:
    """The summed blend weight per pixel axis (each distinct slice counted once; tiles form a grid,
    so the dense weight volume is the outer product of these)."""
    out = []
    for axis, n in enumerate(shape):
        w = np.zeros(n, dtype=np.float32)
        for sl, mask in {(t.out[axis].start, t.out[axis].stop): t.masks[axis] for t in tiles}.items():
            w[sl[0]:sl[1]] += mask
        out.append(w)
    return out


# ---------------------------------------------------------------------------------------------
# memory estimate and the tile choice

# Peak bytes of the decode, activations only (weights are counted by the caller). An NA block holds
# up to DET_BYTES_PER_VALUE bytes per (token × channel) of its stage at its peak (the input, norm,
# q/k/v with their float32 RoPE copies, the attention output and the 4×-wide SwiGLU hidden states),
# stage 5 up to S5_BYTES_PER_VALUE per (token × stage-5 channel) with the sampler's x_t, the context
# and the float32 step, plus na3d's block buffer at its full element budget. Per float32 value;
# bfloat16 activations need 3/4 of that (the RoPE rotation and the sampler step stay float32).
# Checked on the CPU backend (MLX 0.32, the release's kernels and depths at a quarter of its widths,
# float32 and bfloat16, untiled and tiled): measured peak ÷ this estimate 0.45–0.65, i.e. it errs
# on the safe side (bench/diffusion_decoder_bench.py, bench/README.md). Not measured on Metal.
DET_BYTES_PER_VALUE = 40
S5_BYTES_PER_VALUE = 48


def _stage_volumes(cfg, latent_thw: tuple[int, int, int]) -> list[tuple[int, int]]:
    """(tokens, channels) of stages 1–4 on the whole ghost-padded latent (their largest volume: after
    the stage's upsample, which the next stage then holds)."""
    t, h, w = latent_thw
    t += cfg.natten_trailing_pad_latent_frames
    out = []
    for s, ((st, sh, sw), _) in enumerate(cfg.upsamples):
        out.append((t * h * w, cfg.stage_channels[s]))
        t, h, w = t * st - (st == 2), h * sh, w * sw
    return out


def estimate_decode_bytes(cfg, latent_thw: tuple[int, int, int], tile_px: tuple[int, int, int] | None,
                          itemsize: int = 4, block_bytes: int = 0) -> int:
    """Peak activation bytes of a diffusion decode of a (T, H, W) work latent with pixel tiles of
    ``tile_px`` (frames, H, W; None = one tile of the whole clip): the larger of stages 1–3 on the
    whole volume, and a tile's stages 4–5 beside the resident stage-4 input, the sampler's noise
    over the whole pixel volume (drawn once, sliced per tile) and the blend buffer (full frame, two
    tiles long: the group being decoded and the previous one's overlap)."""
    scale = (itemsize + 4) / 8  # bfloat16 halves the activations but not the float32 RoPE / sampler copies
    vols = _stage_volumes(cfg, latent_thw)
    stages13 = max(DET_BYTES_PER_VALUE * n * c for n, c in vols[:3]) * scale
    s4_tokens, c4 = vols[3]
    resident = s4_tokens * c4 * itemsize
    T, H, W = latent_thw
    F, Hp, Wp = (T - 1) * 8 + 1, H * 32, W * 32
    f, h, w = (F, Hp, Wp) if tile_px is None else tile_px
    st, sh, sw = pixel_scale(cfg)
    s4_tile = (-(-f // st) + cfg.natten_trailing_pad_latent_frames * 8 // st) * -(-h // sh) * -(-w // sw)
    tokens5 = f * (h // cfg.patch_size) * (w // cfg.patch_size)
    tile = (DET_BYTES_PER_VALUE * s4_tile * c4 + S5_BYTES_PER_VALUE * tokens5 * cfg.c5) * scale + block_bytes
    accumulator = 2 * min(2 * f, F) * Hp * Wp * 3 * itemsize
    noise = 3 * F * Hp * Wp * itemsize
    return int(max(stages13, resident + noise + accumulator + tile))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def auto_tiling(cfg, latent_thw: tuple[int, int, int], budget: int, itemsize: int = 4,
                block_bytes: int = 0) -> TilingConfig | None:
    """The tiling a decode of a (T, H, W) work latent should use under ``budget`` activation bytes:
    None (one tile) when the whole clip fits, else ``recommended_decode_tiling_config``'s choice —
    tile sizes on the grid of the stage-4 cell and the VAE factor, overlaps the minimum, the fitting
    layout with the least recomputed volume, then the fewest tiles. When not even the smallest
    tiles fit (stages 1–3, never tiled, may alone be too big), the smallest tiles, the closest one
    can get: the preflight compares their estimate with the device and advises the conv decoder."""
    if estimate_decode_bytes(cfg, latent_thw, None, itemsize, block_bytes) <= budget:
        return None
    T, H, W = latent_thw
    F, Hp, Wp = (T - 1) * 8 + 1, H * 32, W * 32
    overlap_t, overlap_hw = recommended_pixel_overlaps(cfg)
    scale, mins = pixel_scale(cfg), tile_min_sizes(cfg)
    steps = (math.lcm(scale[0], 8), math.lcm(scale[1], 32), math.lcm(scale[2], 32))
    floors = (max(2 * scale[0], 2 * overlap_t, mins[0] * scale[0], 16),
              max(2 * scale[1], 2 * overlap_hw, mins[1] * scale[1], 64),
              max(2 * scale[2], 2 * overlap_hw, mins[2] * scale[2], 64))
    cands = [_axis_candidates(n, ov, _round_up(fl, st), st, sc)
             for n, ov, fl, st, sc in zip((F, Hp, Wp), (overlap_t, overlap_hw, overlap_hw), floors, steps, scale)]
    best = None
    for (tf, nf), (th, nh), (tw, nw) in itertools.product(*cands):
        if estimate_decode_bytes(cfg, latent_thw, (min(tf, F), min(th, Hp), min(tw, Wp)), itemsize,
                                 block_bytes) > budget:
            continue
        key = (nf * nh * nw * tf * th * tw / (F * Hp * Wp), -tf * th * tw, nf * nh * nw)
        if best is None or key < best[0]:
            best = (key, tf, th, tw)
    _, tf, th, tw = best if best is not None else (None, *(c[0][0] for c in cands))
    return TilingConfig(AxisTiling(tf, overlap_t), AxisTiling(th, overlap_hw), AxisTiling(tw, overlap_hw))


def _axis_candidates(length: int, overlap: int, floor: int, step: int, cell: int) -> list[tuple[int, int]]:
    """``_axis_candidates``: (tile size, tile count) for every legal size from ``floor`` up to the
    first that holds the whole axis, counted as the decode would split the stage-4 grid."""
    cells = -(-length // cell)
    out = []
    for size in range(floor, max(_round_up(length, step), floor) + step, step):
        if size <= overlap:
            continue
        tile, ov = max(2, overlap // cell + 1, size // cell), overlap // cell
        out.append((size, len(split_by_size(cells, tile, ov))))
    return out
