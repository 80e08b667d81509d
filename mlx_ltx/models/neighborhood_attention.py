"""3-D neighborhood attention with ``natten.na3d`` semantics (the LTX-2.5 diffusion video decoder).

Semantics (REFERENCE-MAP-2.5.md §4.5): q, k, v are ``(B, T, H, W, heads, D)``; dilation 1, non-causal.
Along each axis of length L with kernel K, query i attends to keys ``[s, s + K)`` with
``s = clamp(i − K//2, 0, L − K)``: the window shifts inward at the borders and never shrinks, so every
query sees exactly Kt·Kh·Kw keys. ``L < K`` has no such window and is an error (the reference's
``NeighborhoodAttention3D.forward`` raises too; its eager fallback would silently shrink the kernel).

MLX has no neighborhood-attention op, and gathering every query's Kt·Kh·Kw neighbours would multiply
K/V by up to 147 — impossible at the decoder's stage 5 (~12 M tokens × 128 channels). Instead, as the
reference's eager fallback does, the queries are cut into tiles; a tile's queries jointly see only a
small "halo box" of keys (tile extent + K − 1 per axis, shifted inward at the borders like the windows),
so one dense ``mx.fast.scaled_dot_product_attention`` per tile over that box, with an additive mask
hiding the box keys outside each query's own window, is exact.

Two observations make this cheap in MLX:

* Tiles with the same *relative* window geometry (each query's window start minus the box start, per
  axis) need the same mask. All interior tiles share one; only tiles touching a border differ. Geometry
  is separable, so it is classified per axis and the 3-D groups are products of per-axis classes.
* Along each axis, consecutive tiles of one class form a *run* of equal-length tiles. A 3-D block (one
  run per axis) then needs no scatter: its queries are a plain slice of q reshaped into tiles, its K/V
  boxes are three ``mx.take`` calls with (tiles, box) index matrices, and its output reshapes straight
  back into a slice of the result. Blocks tile the volume as a grid, so the result is concatenated.

Runs are capped in length so one block's working set (gathered K/V, q, output, scores) stays under an
element budget; the budget bounds peak memory regardless of the volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

_AXES = ("T", "H", "W")

# Elements (not bytes) one block may hold at once: its q tiles and output, its gathered K and V boxes
# and its scores (materialized by the unfused SDPA on CPU; the fused Metal kernel avoids them, so the
# bound is conservative there). 2**26 keeps a block near 256 MB in float32.
DEFAULT_BLOCK_BUDGET = 2**26


def na_block_bytes(dtype: mx.Dtype = mx.float32, budget: int = DEFAULT_BLOCK_BUDGET) -> int:
    """Bytes one na3d block may hold at its element budget (the decoder's memory estimate adds it)."""
    return budget * mx.zeros((), dtype).itemsize


def window_starts(length: int, kernel: int) -> np.ndarray:
    """Start of each query's window along one axis: ``clamp(i − K//2, 0, L − K)``."""
    return np.clip(np.arange(length) - kernel // 2, 0, length - kernel)


def default_tile_size(dims: tuple[int, int, int], kernel_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """Query-tile extent per axis: K (at most L).

    The trade-off per axis is between wasted scores and gather traffic. A tile of S queries scores
    S + K − 1 box keys where each query needs K (waste (S+K−1)/K), while gathering its box copies
    (S+K−1)/S keys per query. S = K balances the two (≈2× each per axis) and keeps a tile's query count
    (Kt·Kh·Kw: 147 for 3×7×7, 75 for 3×5×5) large enough for SDPA to run efficiently. An axis with
    K = 1 needs no halo at all, so its tiles are one slice thick.
    """
    return tuple(min(d, k) for d, k in zip(dims, kernel_size))


@dataclass(frozen=True)
class _Run:
    """Consecutive tiles along one axis sharing one relative window geometry."""

    q0: int  # first query position
    tile: int  # queries per tile
    count: int  # tiles in the run
    box: int  # keys per tile's halo box
    box_starts: tuple[int, ...]  # each tile's box start (absolute)
    rel: tuple[int, ...]  # per query in a tile: window start − box start (the mask's geometry)


def _axis_runs(length: int, kernel: int, tile: int, max_count: int) -> list[_Run]:
    """Cut one axis into tiles, classify them by relative geometry, and group consecutive tiles of one
    class (at most ``max_count``) into runs. Interior tiles all share ``rel = 0..tile−1``."""
    starts = window_starts(length, kernel)
    runs: list[_Run] = []
    for q0 in range(0, length, tile):
        q1 = min(q0 + tile, length)
        b0 = int(starts[q0])
        rel = tuple(int(s) - b0 for s in starts[q0:q1])
        box = rel[-1] + kernel  # windows are nondecreasing, so the last query's window ends the box
        last = runs[-1] if runs else None
        if last is not None and last.rel == rel and last.count < max_count:
            runs[-1] = _Run(last.q0, last.tile, last.count + 1, box, last.box_starts + (b0,), rel)
        else:
            runs.append(_Run(q0, q1 - q0, 1, box, (b0,), rel))
    return runs


def _axis_visible(rel: tuple[int, ...], box: int, kernel: int) -> np.ndarray:
    """(tile, box) bool: box key j lies in query i's window."""
    j = np.arange(box)[None, :]
    r = np.asarray(rel)[:, None]
    return (j >= r) & (j < r + kernel)


def _block_mask(runs: tuple[_Run, _Run, _Run], kernel: tuple[int, ...], dtype, cache: dict) -> mx.array | None:
    """Additive (Nq, Nk) mask for one 3-D geometry, or None when every query sees its whole box
    (e.g. an axis with L == K everywhere, or K = 1 tiles). Cached per geometry: interior blocks and all
    chunks of one run share it."""
    key = tuple(r.rel for r in runs)
    if key in cache:
        return cache[key]
    vis = [_axis_visible(r.rel, r.box, k) for r, k in zip(runs, kernel)]
    if all(v.all() for v in vis):
        mask = None
    else:
        # Outer product over (t, h, w) for queries and keys, flattened in the same t-major order as the
        # tiles' reshape below.
        full = (
            vis[0][:, None, None, :, None, None]
            & vis[1][None, :, None, None, :, None]
            & vis[2][None, None, :, None, None, :]
        )
        nq = full.shape[0] * full.shape[1] * full.shape[2]
        # A large finite negative, not −inf: each query keeps Kt·Kh·Kw ≥ 1 visible keys, so the masked
        # ones vanish after softmax either way, and finite values cannot make NaNs in any backend.
        neg = float(mx.finfo(dtype).min)
        mask = mx.array(np.where(full.reshape(nq, -1), 0.0, neg), dtype=dtype)
    cache[key] = mask
    return mask


def _max_counts(dims, kernel, tile, heads: int, head_dim: int, batch: int, budget: int) -> list[int]:
    """Largest tiles-per-run per axis keeping an interior block under ``budget`` elements. Cut T first,
    then H, then W: the output is concatenated along those, and long W runs keep gathers contiguous."""
    counts = [math.ceil(d / s) for d, s in zip(dims, tile)]
    nq = math.prod(tile)
    nk = math.prod(min(d, s + k - 1) for d, s, k in zip(dims, tile, kernel))
    per_tile = batch * heads * (2 * nq * head_dim + 2 * nk * head_dim + nq * nk)
    for axis in range(3):
        while counts[axis] > 1 and math.prod(counts) * per_tile > budget:
            counts[axis] = (counts[axis] + 1) // 2
    return counts


def _gather_boxes(x: mx.array, runs: tuple[_Run, _Run, _Run]) -> mx.array:
    """K or V boxes of a block: (B, nT, bt, nH, bh, nW, bw, heads, D)."""
    # Slice to the block's overall key range first, so the takes below only touch that part of x.
    lo = [r.box_starts[0] for r in runs]
    hi = [r.box_starts[-1] + r.box for r in runs]
    x = x[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    for i, r in enumerate(runs):
        if r.count == 1 and hi[i] - lo[i] == r.box:
            x = mx.expand_dims(x, 1 + 2 * i)  # one box covering the slice: no copy needed
            continue
        idx = (np.asarray(r.box_starts)[:, None] - lo[i]) + np.arange(r.box)[None, :]
        x = mx.take(x, mx.array(idx.astype(np.int32)), axis=1 + 2 * i)
    return x


def na3d(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    kernel_size: tuple[int, int, int] | list[int],
    scale: float = 1.0,
    *,
    tile_size: tuple[int, int, int] | None = None,
    block_budget: int = DEFAULT_BLOCK_BUDGET,
) -> mx.array:
    """3-D neighborhood attention, ``natten.na3d(q, k, v, kernel_size, scale=scale)`` with dilation 1,
    non-causal. q, k, v: ``(B, T, H, W, heads, D)`` of one dtype; returns the same shape and dtype.

    ``scale`` multiplies q·k (the LTX decoder passes 1.0: its q is pre-scaled). ``tile_size`` sets the
    query-tile extent per axis (default :func:`default_tile_size`); any tile size gives the same result
    up to float rounding. ``block_budget`` bounds one block's working set in elements.
    """
    if q.ndim != 6 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"na3d: q, k, v must share one (B, T, H, W, heads, D) shape; got {q.shape}, {k.shape}, {v.shape}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"na3d: q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    kernel = tuple(int(x) for x in kernel_size)
    if len(kernel) != 3 or min(kernel) < 1:
        raise ValueError(f"na3d: kernel_size must be three positive ints; got {kernel_size}")
    batch, *dims, heads, head_dim = q.shape
    dims = tuple(dims)
    for name, length, kern in zip(_AXES, dims, kernel):
        if length < kern:
            raise ValueError(
                f"na3d: axis {name} has length {length} < kernel {kern} "
                f"(kernel_size={kernel}, volume (T,H,W)={dims}); "
                "neighborhood windows never shrink, so every axis needs length >= its kernel"
            )
    if tile_size is None:
        tile = default_tile_size(dims, kernel)
    else:
        tile = tuple(max(1, min(int(s), d)) for s, d in zip(tile_size, dims))

    counts = _max_counts(dims, kernel, tile, heads, head_dim, batch, block_budget)
    runs = [_axis_runs(d, kk, s, c) for d, kk, s, c in zip(dims, kernel, tile, counts)]
    masks: dict = {}

    # Blocks are visited T-run-major; each block's output is a (B, t, h, w, heads, D) slab and the slabs
    # concatenate back to the volume (W within an H-row, H within a T-slab, then T).
    t_slabs = []
    for rt in runs[0]:
        h_rows = []
        for rh in runs[1]:
            w_parts = []
            for rw in runs[2]:
                w_parts.append(_block(q, k, v, (rt, rh, rw), kernel, scale, masks))
            h_rows.append(w_parts[0] if len(w_parts) == 1 else mx.concatenate(w_parts, axis=3))
        t_slabs.append(h_rows[0] if len(h_rows) == 1 else mx.concatenate(h_rows, axis=2))
    return t_slabs[0] if len(t_slabs) == 1 else mx.concatenate(t_slabs, axis=1)


def _block(q, k, v, runs: tuple[_Run, _Run, _Run], kernel, scale: float, masks: dict) -> mx.array:
    """Attention for one block: a run of equal tiles per axis, all sharing one mask."""
    rt, rh, rw = runs
    batch, heads, head_dim = q.shape[0], q.shape[4], q.shape[5]
    n = (rt.count, rh.count, rw.count)
    s = (rt.tile, rh.tile, rw.tile)
    b = (rt.box, rh.box, rw.box)
    g = batch * n[0] * n[1] * n[2]

    # Queries of contiguous equal tiles: a slice reshaped into (tiles, tile) per axis, no gather.
    qb = q[:, rt.q0 : rt.q0 + n[0] * s[0], rh.q0 : rh.q0 + n[1] * s[1], rw.q0 : rw.q0 + n[2] * s[2]]
    qb = qb.reshape(batch, n[0], s[0], n[1], s[1], n[2], s[2], heads, head_dim)

    def to_sdpa(x, ext):
        # (B, nT, et, nH, eh, nW, ew, heads, D) -> (B·tiles, heads, et·eh·ew, D)
        x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6, 8)
        return x.reshape(g, heads, ext[0] * ext[1] * ext[2], head_dim)

    mask = _block_mask(runs, kernel, q.dtype, masks)
    kb = to_sdpa(_gather_boxes(k, runs), b)
    vb = to_sdpa(_gather_boxes(v, runs), b)
    out = mx.fast.scaled_dot_product_attention(to_sdpa(qb, s), kb, vb, scale=scale, mask=mask)
    out = out.reshape(batch, n[0], n[1], n[2], heads, s[0], s[1], s[2], head_dim)
    out = out.transpose(0, 1, 5, 2, 6, 3, 7, 4, 8)
    return out.reshape(batch, n[0] * s[0], n[1] * s[1], n[2] * s[2], heads, head_dim)
