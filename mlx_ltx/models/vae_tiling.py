"""Tiled VAE decoding and encoding: the reference's ``ltx_core/tiling.py`` (size-based
``TileSizeConfig``, ``split_by_size`` / ``split_temporal_causal``, trapezoidal blend masks), the
streaming loop of ``ConvVideoDecoder.tiled_decode``, ``VideoEncoder.tiled_encode``, and an
automatic tile choice from a memory budget.

The latent is cut into overlapping tiles on the latent grid; each tile is decoded on its own,
multiplied by separable 1-D masks (linear ramps over the overlaps) and accumulated. Tiles are
grouped by temporal slice; a group's frames are yielded once no later group can touch them.
Temporal tiles after the first start one latent frame early (their first latent frame decodes
to a single pixel frame, the causal first frame), as ``split_temporal_causal``.

Because tiles form a full cartesian grid, the blend weights are separable too: the dense weight
volume the reference accumulates equals the outer product of three 1-D sums, kept here as
vectors. When every axis' masks sum to 1 (the usual case) no division happens at all, as in
the reference (``masks_are_complementary``).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .video_vae_ops import DepthToSpaceUpsample, UNetMidBlock3D


@dataclass(frozen=True)
class AxisTiling:
    """Tile size and overlap along one axis, in pixels (or frames); ``tile_size=0`` = untiled."""

    tile_size: int = 0
    overlap: int = 0

    def __post_init__(self):
        if self.tile_size < 0 or self.overlap < 0:
            raise ValueError(f"tile_size and overlap must be >= 0; got {self.tile_size}, {self.overlap}")
        if self.tile_size == 0 and self.overlap:
            raise ValueError("an untiled axis (tile_size=0) must have overlap=0")
        if self.tile_size and self.overlap >= self.tile_size:
            raise ValueError(f"overlap must be smaller than the tile size; got {self.overlap} >= {self.tile_size}")

    def is_tiled(self) -> bool:
        return self.tile_size > 0


@dataclass(frozen=True)
class TilingConfig:
    """The reference's ``TileSizeConfig``: sizes and overlaps in pixel frames / pixels, each a
    multiple of the VAE factor of its axis (8 frames, 32 px for the released VAEs)."""

    frames: AxisTiling = AxisTiling()
    height: AxisTiling = AxisTiling()
    width: AxisTiling = AxisTiling()

    @classmethod
    def default(cls) -> TilingConfig:
        """``TileSizeConfig.default()``: 80 frames / overlap 24, 768 px / overlap 64."""
        return cls(AxisTiling(80, 24), AxisTiling(768, 64), AxisTiling(768, 64))

    @classmethod
    def in_latents(cls, scale_factors: tuple[int, int, int], frames: tuple[int, int] = (0, 0),
                   height: tuple[int, int] = (0, 0), width: tuple[int, int] = (0, 0)) -> TilingConfig:
        """The same layout given as (tile, overlap) pairs in latent units (0 = untiled)."""
        axes = [AxisTiling(size * f, overlap * f) for (size, overlap), f in zip((frames, height, width), scale_factors)]
        return cls(*axes)

    def latent_sizes(self, scale_factors: tuple[int, int, int]) -> list[tuple[int, int] | None]:
        """(tile, overlap) per axis in latent units, None when untiled (``to_splitters``)."""
        out = []
        for name, cfg, f in zip(("frames", "height", "width"), (self.frames, self.height, self.width), scale_factors):
            if not cfg.is_tiled():
                out.append(None)
                continue
            if cfg.tile_size < 2 * f or cfg.tile_size % f or cfg.overlap % f:
                raise ValueError(f"tiling {name}: tile_size must be a multiple of {f} and >= {2 * f}, overlap a "
                                 f"multiple of {f}; got tile_size={cfg.tile_size}, overlap={cfg.overlap}")
            overlap = cfg.overlap // f
            out.append((max(2, overlap + 1, cfg.tile_size // f), overlap))
        return out


@dataclass(frozen=True)
class Interval:
    start: int
    end: int
    left_ramp: int
    right_ramp: int


def split_by_size(length: int, size: int, overlap: int, min_tile_size: int | None = None) -> list[Interval]:
    """``split_by_size``: tiles of ``size`` sharing ``overlap`` cells; the last one may be short, or,
    with ``min_tile_size``, is grown leftward to it (the overlap with the one before widens), and an
    axis shorter than ``min_tile_size`` is not split."""
    if length <= size or (min_tile_size is not None and length < min_tile_size):
        return [Interval(0, length, 0, 0)]
    amount = (length + size - 2 * overlap - 1) // (size - overlap)
    step = size - overlap
    tiles = ([Interval(0, size, 0, overlap)]
             + [Interval(i * step, i * step + size, overlap, overlap) for i in range(1, amount - 1)]
             + [Interval((amount - 1) * step, length, overlap, 0)])
    last = tiles[-1]
    if min_tile_size is not None and len(tiles) > 1 and last.end - last.start < min_tile_size:
        start = last.end - min_tile_size  # _grow_last_tile_to_min
        prev = tiles[-2]
        tiles[-2:] = [Interval(prev.start, prev.end, prev.left_ramp, prev.end - start),
                      Interval(start, last.end, prev.end - start, 0)]
        if start < tiles[-2].start:
            raise ValueError(f"tiles of {size} with overlap {overlap} cannot give every tile of a {length}-long "
                             f"axis at least {min_tile_size}: use larger tiles")
    return tiles


def split_temporal_causal(length: int, size: int, overlap: int) -> list[Interval]:
    """``split_temporal_causal``: every tile after the first starts one latent frame earlier,
    with a left ramp one longer."""
    tiles = split_by_size(length, size, overlap)
    return tiles[:1] + [Interval(t.start - 1, t.end, t.left_ramp + 1, t.right_ramp) for t in tiles[1:]]


def trapezoidal_mask(length: int, ramp_left: int, ramp_right: int, left_starts_from_0: bool = False) -> np.ndarray:
    """``compute_trapezoidal_mask_1d``: linear fade-in / fade-out (end points excluded, except a
    causal left ramp that starts at 0)."""
    ramp_left = max(0, min(ramp_left, length))
    ramp_right = max(0, min(ramp_right, length))
    mask = np.ones(length, dtype=np.float32)
    if ramp_left > 0:
        fade_in = np.linspace(0.0, 1.0, ramp_left + (1 if left_starts_from_0 else 2), dtype=np.float32)[:-1]
        mask[:ramp_left] *= fade_in if left_starts_from_0 else fade_in[1:]
    if ramp_right > 0:
        mask[-ramp_right:] *= np.linspace(1.0, 0.0, ramp_right + 2, dtype=np.float32)[1:-1]
    return np.clip(mask, 0.0, 1.0)


def _map_spatial(iv: Interval, scale: int) -> tuple[slice, np.ndarray]:
    """``map_spatial_slice``."""
    start, stop = iv.start * scale, iv.end * scale
    return slice(start, stop), trapezoidal_mask(stop - start, iv.left_ramp * scale, iv.right_ramp * scale)


def _map_temporal(iv: Interval, scale: int) -> tuple[slice, np.ndarray]:
    """``map_temporal_slice``: latent frames [a, b) decode to pixel frames [a·s, 1+(b−1)·s)."""
    start, stop = iv.start * scale, 1 + (iv.end - 1) * scale
    left = 0 if iv.left_ramp == 0 else 1 + (iv.left_ramp - 1) * scale
    return slice(start, stop), trapezoidal_mask(stop - start, left, iv.right_ramp * scale, True)


def axis_tiles(length: int, scale: int, sizes: tuple[int, int] | None, temporal: bool):
    """[(latent slice, output slice, 1-D mask)] along one axis."""
    if sizes is None:
        out_len = (length - 1) * scale + 1 if temporal else length * scale
        return [(slice(0, length), slice(0, out_len), np.ones(out_len, dtype=np.float32))]
    split = split_temporal_causal if temporal else split_by_size
    mapper = _map_temporal if temporal else _map_spatial
    return [(slice(iv.start, iv.end), *mapper(iv, scale)) for iv in split(length, *sizes)]


def _axis_weights(tiles, out_len: int) -> np.ndarray:
    w = np.zeros(out_len, dtype=np.float32)
    for _, out, mask in tiles:
        w[out] += mask
    return w


def tiled_apply(decode_fn: Callable[..., mx.array | None], latent_shape, scale_factors: tuple[int, int, int],
                tiling: TilingConfig | None, out_channels: int, sharing=None,
                dtype: mx.Dtype | None = None) -> Iterator[mx.array]:
    """Decode ``decode_fn(latent index tuple) -> (B, out_channels, T, H, W)`` tile by tile and
    yield the blended output in temporal chunks (float32 accumulation, cast back to the
    tiles' dtype). ``sharing`` (``distributed.TileSharing``, a tiled decode only): each rank decodes
    its tiles of a temporal group, ``decode_fn(coords, run=False)`` making just the tile's random
    draws for the others', then the group's tiles are exchanged; ``dtype``: the decoder's, which the
    chunks are cast back to then."""
    B, _, F, H, W = latent_shape
    st, sh, sw = scale_factors
    if tiling is None:
        yield decode_fn((slice(None),) * 5)
        return
    lt, lh, lw = tiling.latent_sizes(scale_factors)
    t_tiles = axis_tiles(F, st, lt, temporal=True)
    h_tiles = axis_tiles(H, sh, lh, temporal=False)
    w_tiles = axis_tiles(W, sw, lw, temporal=False)
    T_out, H_out, W_out = (F - 1) * st + 1, H * sh, W * sw
    wt, wh, ww = _axis_weights(t_tiles, T_out), _axis_weights(h_tiles, H_out), _axis_weights(w_tiles, W_out)
    complementary = all(np.allclose(w, 1.0, rtol=0.0, atol=1e-5) for w in (wt, wh, ww))
    index = 0

    def finish(buf: np.ndarray, frames: slice) -> mx.array:
        if not complementary:
            denom = np.maximum(wt[frames][:, None, None] * wh[:, None] * ww[None, :], 1e-8)
            buf = buf / denom
        return mx.array(buf).astype(dtype)

    prev = None  # (buffer, output frame slice)
    for t_in, t_out, t_mask in t_tiles:
        buf = np.zeros((B, out_channels, t_out.stop - t_out.start, H_out, W_out), dtype=np.float32)
        group = list(itertools.product(h_tiles, w_tiles))
        coords = [(slice(None), slice(None), t_in, h_in, w_in) for (h_in, _, _), (w_in, _, _) in group]
        sizes = [(t_out.stop - t_out.start, h.stop - h.start, w.stop - w.start) for (_, h, _), (_, w, _) in group]
        tiles = (map(decode_fn, coords) if sharing is None else
                 sharing.group(index, len(group), lambda i, run: decode_fn(coords[i], run=run),
                               lambda i: (B, out_channels, *sizes[i])))
        for ((_, h_out, h_mask), (_, w_out, w_mask)), tile in zip(group, tiles):
            dtype = tile.dtype if sharing is None else dtype  # an exchanged tile is float32
            mask = t_mask[:, None, None] * h_mask[:, None] * w_mask[None, :]
            buf[:, :, :, h_out, w_out] += np.array(tile.astype(mx.float32)) * mask
        index += len(group)
        if prev is not None:
            prev_buf, prev_out = prev
            overlap = prev_out.stop - t_out.start
            if overlap > 0:
                buf[:, :, :overlap] += prev_buf[:, :, t_out.start - prev_out.start:]
            done = slice(prev_out.start, t_out.start)
            yield finish(prev_buf[:, :, : done.stop - done.start], done)
        prev = (buf, t_out)
    yield finish(prev[0], prev[1])


def tiled_encode_apply(encode_fn: Callable[[tuple], mx.array], video_shape, scale_factors: tuple[int, int, int],
                       tiling: TilingConfig, latent_channels: int) -> mx.array:
    """``VideoEncoder.tiled_encode``: tiles cut on the latent grid, each encoded from its pixel
    region (``map_temporal_slice`` / ``map_spatial_slice`` give the pixel slices) and blended on
    the latent grid with trapezoidal masks. A temporal tile after the first starts one latent
    early; its first latent frame, encoded from a lone pixel frame, gets weight 0 (the causal left
    ramp starts at 0). The reference demands overlaps of at least 16 frames and 64 pixels."""
    for name, cfg, minimum in (("frames", tiling.frames, 16), ("height", tiling.height, 64),
                               ("width", tiling.width, 64)):
        if cfg.is_tiled() and cfg.overlap < minimum:
            raise ValueError(f"tiled encode: {name} overlap {cfg.overlap} is below the required {minimum}")
    B, _, T, H, W = video_shape
    st, sh, sw = scale_factors
    dims = ((T - 1) // st + 1, H // sh, W // sw)
    axes = []
    for axis, (n, f, sizes) in enumerate(zip(dims, scale_factors, tiling.latent_sizes(scale_factors))):
        temporal = axis == 0
        if sizes is None:
            axes.append([(slice(0, n), slice(None), np.ones(n, dtype=np.float32))])
            continue
        split = split_temporal_causal if temporal else split_by_size
        tiles = []
        for iv in split(n, *sizes):
            pixels = (slice(iv.start * f, 1 + (iv.end - 1) * f) if temporal else slice(iv.start * f, iv.end * f))
            tiles.append((slice(iv.start, iv.end), pixels,
                          trapezoidal_mask(iv.end - iv.start, iv.left_ramp, iv.right_ramp, temporal)))
        axes.append(tiles)
    weights = [_axis_weights([(None, lat, m) for lat, _, m in tiles], n) for tiles, n in zip(axes, dims)]
    complementary = all(np.allclose(w, 1.0, rtol=0.0, atol=1e-5) for w in weights)
    acc = np.zeros((B, latent_channels, *dims), dtype=np.float32)
    dtype = None
    for (t_lat, t_px, mt), (h_lat, h_px, mh), (w_lat, w_px, mw) in itertools.product(*axes):
        tile = encode_fn((slice(None), slice(None), t_px, h_px, w_px))
        dtype = tile.dtype
        acc[:, :, t_lat, h_lat, w_lat] += np.array(tile.astype(mx.float32)) * (mt[:, None, None] * mh[:, None] * mw)
    if not complementary:
        wt, wh, ww = weights
        acc /= np.maximum(wt[:, None, None] * wh[:, None] * ww[None, :], 1e-8)
    return mx.array(acc).astype(dtype)


# ---------------------------------------------------------------------------------------------
# memory estimate and automatic tile choice

# Peak-memory model of one tile decode. The decoder evaluates around every convolution
# (``video_vae_ops.MATERIALIZE_NOTE``), so the peak is that of the costliest single convolution and
# what is alive beside it, plus one float32 copy of a convolution's weights.
#
# CPU backend (measured, MLX 0.32): a conv3d (``explicit_gemm_conv_ND_cpu``) holds its input (our
# temporally padded concatenation, T+2 frames, activation dtype), a float32 zero-padded copy of it
# ((T+2)(H+2)(W+2) positions), the float32 unfolded input (CONV_TAPS = 27 taps x input channels x
# output positions: 108 bytes per input value, the bulk) and its output (float32 for the GEMM, plus
# the activation-dtype copy when that is not float32). Beside a res block's convolution live
# RES_LIVE_COPIES activations of the stage (the residual input, the norm output, the previous
# convolution's output; float32 copies, measured 4.2 at real widths, 5.0 on one-frame tiles); beside
# an upsampler's, its input, the depth-to-space copy and the residual path's; beside conv_out, two
# copies of its input and the unpatchified output. Weights
# stored in another dtype than the activations (the pipelines load bfloat16 weights and compute in
# float32) are cast to float32 per convolution, each while its own convolution runs: the running
# conv's 27 x in x out x 4 bytes join that conv's buffers (``weight_cast``; the big casts are at the
# narrow low-resolution stages, the big activations at the wide high-resolution ones).
# Calibration (tests/test_decode_memory.py, CPU): measured peak / estimate on the fixture decoders
# and the full-width LTX-2.3 decoder (random weights), float32 and bfloat16: see that test's output.
# Before the per-convolution evaluation the lazily evaluated graph held ~4 convolutions' buffers:
# ~530 bytes per value of the widest res stage against ~140 now.
#
# Metal: NOT measured here. Its implicit-GEMM conv3d has no unfolded copy; the estimate keeps the
# former rule of thumb, ACTIVATION_COPIES activations of the widest stage in the dtype's size.
ACTIVATION_COPIES = 12  # Metal only
CONV_TAPS = 27
RES_LIVE_COPIES = 6  # measured 4.2-5.0 (CPU, 5.0 at one-frame tiles); 6 leaves a margin


def _cpu_conv_bytes(c_in: int, c_out: int, dims: tuple[int, int, int], size: int) -> int:
    """One CPU conv3d (3x3x3, stride 1) over ``dims`` output positions: its temporally padded input
    (activation dtype), MLX's float32 zero-padded copy and unfolded input, and its output."""
    t, h, w = dims
    p = t * h * w
    f32 = CONV_TAPS * c_in * p + c_in * (t + 2) * (h + 2) * (w + 2) + c_out * p
    return 4 * f32 + size * c_in * (t + 2) * h * w + (size * c_out * p if size != 4 else 0)


def estimate_decode_bytes(stages, latent_tile: tuple[int, int, int], dtype: mx.Dtype = mx.bfloat16,
                          cpu: bool | None = None, weight_cast: bool = True) -> int:
    """Estimated peak memory (bytes) of decoding one latent tile (f, h, w), weights excluded (but,
    on CPU with ``weight_cast``, the float32 copy of the running convolution's weight counted).
    ``stages`` is ``VideoDecoder.stage_widths()``; ``cpu`` defaults to the current device."""
    f, h, w = latent_tile
    if cpu is None:
        cpu = mx.default_device() == mx.cpu
    dims = [((f - 1) * t + 1, h * uh, w * uw) for _, (t, uh, uw), _ in stages]
    if not cpu:  # Metal: not measured here (see above)
        size = mx.zeros((), dtype=dtype).itemsize
        return max(ACTIVATION_COPIES * ch * math.prod(d) * size for (ch, _, _), d in zip(stages, dims))
    size = mx.zeros((), dtype=dtype).itemsize

    def cast(c_in: int, c_out: int) -> int:  # the conv's weight cast to float32, alive while it runs
        return CONV_TAPS * c_in * c_out * 4 if weight_cast else 0

    peak = 0
    *res, (c_out, _, c_last) = stages
    for i, ((ch, _, c_in), d) in enumerate(zip(res, dims)):
        p = math.prod(d)
        peak = max(peak, _cpu_conv_bytes(c_in, ch, d, size) + RES_LIVE_COPIES * 4 * ch * p + cast(c_in, ch))
        if i + 1 < len(res):  # the next stage's upsampler: a conv at this stage's positions
            conv = _upsampler_conv_width(stages, i)
            peak = max(peak, _cpu_conv_bytes(ch, conv, d, size) + 4 * p * (ch + 2 * conv) + cast(ch, conv))
    p = math.prod(dims[-1])
    return max(peak, _cpu_conv_bytes(c_last, c_out, dims[-1], size) + 4 * p * (2 * c_last + c_out)
               + cast(c_last, c_out))


def _upsampler_conv_width(stages, i: int) -> int:
    """Output width of the conv of the upsampler between stages i and i+1 (next width x stride volume)."""
    (_, (t0, h0, w0), _), (nxt, (t1, h1, w1), _) = stages[i], stages[i + 1]
    return nxt * (t1 // t0) * (h1 // h0) * (w1 // w0)


def default_memory_budget() -> int:
    """Half of the memory the device can give MLX (the GPU's recommended working set on Metal,
    physical RAM otherwise): room for the weights and the output next to the tile."""
    try:
        if mx.metal.is_available():
            info = mx.metal.device_info()
            return int(info.get("max_recommended_working_set_size", info["memory_size"])) // 2
    except (AttributeError, KeyError, RuntimeError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def auto_tiling(decoder, latent_shape, memory_budget: int | None = None, dtype: mx.Dtype | None = None,
                overlap: tuple[int, int] = (3, 2), cpu: bool | None = None) -> TilingConfig | None:
    """The tile layout with the least decoding work (latent cells decoded, overlaps counted once
    per tile that holds them) among those whose largest tile's :func:`estimate_decode_bytes` fits
    ``memory_budget`` (default :func:`default_memory_budget`); None when the whole latent fits,
    i.e. an untiled decode. ``overlap`` is (frames, spatial) in latent units: the reference's
    defaults, 24 frames and 64 px."""
    budget = default_memory_budget() if memory_budget is None else memory_budget
    dtype = decoder.dtype if dtype is None else dtype
    stages = decoder.stage_widths()
    _, _, F, H, W = latent_shape
    if estimate_decode_bytes(stages, (F, H, W), dtype, cpu) <= budget:
        return None
    ot, osp = overlap

    def lengths(n: int, size: int, ov: int, temporal: bool) -> list[int]:
        if size >= n:
            return [n]
        split = split_temporal_causal if temporal else split_by_size
        return [iv.end - iv.start for iv in split(n, size, ov)]

    best = None
    for tf in range(min(F, ot + 1), F + 1):
        t_len = lengths(F, tf, ot, True)
        for ts in range(min(max(H, W), osp + 1), max(H, W) + 1):
            tile = (tf, min(ts, H), min(ts, W))
            if estimate_decode_bytes(stages, tile, dtype, cpu) > budget:
                break  # larger spatial tiles only need more
            h_len, w_len = lengths(H, ts, osp, False), lengths(W, ts, osp, False)
            work = sum(t_len) * sum(h_len) * sum(w_len)
            count = len(t_len) * len(h_len) * len(w_len)
            if best is None or (work, count) < best[0]:
                best = ((work, count), tf, ts)
    if best is None:  # nothing fits: the smallest legal tiles, the closest one can get
        tf, ts = min(F, ot + 1), min(max(H, W), osp + 1)
    else:
        _, tf, ts = best
    return TilingConfig.in_latents(
        decoder.video_scale_factors,
        frames=(tf, ot) if tf < F else (0, 0),
        height=(ts, osp) if ts < H else (0, 0),
        width=(ts, osp) if ts < W else (0, 0),
    )


def receptive_radius(decoder) -> tuple[float, float, float]:
    """How far (in latent cells, per axis t, h, w) an output value can see: each 3-tap conv at a
    stage upscaled u times reaches (k//2)/u latent cells further (k−1 backwards in time for a
    causal decoder). Outputs farther than this from every tile edge are exact; nearer ones are
    blended (the overlap setting trades work for that seam region)."""
    reach = [0.0, 0.0, 0.0]
    up = [1, 1, 1]

    def conv(c):
        k = c.conv.weight.shape[1:4]
        for a in range(3):
            taps = (k[a] - 1) if (a == 0 and decoder.causal) else k[a] // 2
            reach[a] += taps / up[a]

    conv(decoder.conv_in)
    for block in decoder.up_blocks:
        if isinstance(block, UNetMidBlock3D):
            for res in block.res_blocks:
                conv(res.conv1)
                conv(res.conv2)
        elif isinstance(block, DepthToSpaceUpsample):
            conv(block.conv)
            up = [u * s for u, s in zip(up, block.stride)]
    conv(decoder.conv_out)
    return tuple(reach)
