"""3-D neighborhood attention (mlx_ltx/models/neighborhood_attention.py) against a slow, obviously
correct numpy reference: gather each query's own window, softmax, weighted sum. The grid covers odd
volumes (windows shift at both borders), L == K on an axis (every window is the whole axis), K = 1,
kernels 3/5/7, and tile sizes that do and do not divide the volume."""

import mlx.core as mx
import numpy as np
import pytest
from reference_data import fixture_dirs

from mlx_ltx.models.neighborhood_attention import na3d, window_starts



def _rel(actual, expected) -> float:
    a = np.asarray(actual.astype(mx.float32), dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape
    return float(np.abs(a - e).max() / np.abs(e).max())


def brute_na3d(q, k, v, kernel, scale=1.0):
    """One query at a time: its window per axis is [clamp(i − K//2, 0, L − K), … + K)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    b, t, h, w, nh, d = q.shape
    out = np.empty_like(q)
    for it in range(t):
        t0 = min(max(it - kernel[0] // 2, 0), t - kernel[0])
        for ih in range(h):
            h0 = min(max(ih - kernel[1] // 2, 0), h - kernel[1])
            for iw in range(w):
                w0 = min(max(iw - kernel[2] // 2, 0), w - kernel[2])
                box = (slice(None), slice(t0, t0 + kernel[0]), slice(h0, h0 + kernel[1]), slice(w0, w0 + kernel[2]))
                kk = k[box].reshape(b, -1, nh, d)
                vv = v[box].reshape(b, -1, nh, d)
                s = np.einsum("bnd,bjnd->bnj", q[:, it, ih, iw], kk) * scale
                p = np.exp(s - s.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                out[:, it, ih, iw] = np.einsum("bnj,bjnd->bnd", p, vv)
    return out


def _inputs(shape, seed):
    rng = np.random.default_rng(seed)
    # Scores of spread ~3: softmax far from uniform, so a wrong window shows.
    return [rng.standard_normal(shape).astype(np.float32) * (1.3 if i < 2 else 1.0) for i in range(3)]


# (T, H, W), kernel, tile_size (None = default)
CASES = [
    ((5, 9, 11), (3, 3, 3), None),
    ((5, 9, 11), (3, 5, 7), None),
    ((5, 9, 11), (3, 5, 7), (2, 4, 3)),  # tiles divide no axis
    ((4, 8, 9), (3, 5, 5), (2, 4, 3)),  # some divide, some do not
    ((3, 7, 13), (3, 7, 7), None),  # L == K on T and H
    ((3, 7, 13), (3, 7, 7), (1, 3, 5)),  # L == K with tiles smaller than K
    ((7, 5, 6), (5, 5, 3), (3, 2, 4)),
    ((6, 10, 7), (1, 3, 7), None),  # K = 1 on T, L == K on W
    ((5, 8, 9), (3, 3, 5), (5, 8, 9)),  # one tile: the whole volume
    ((5, 8, 9), (3, 3, 5), (1, 1, 1)),  # one query per tile
]


@pytest.mark.parametrize("dims,kernel,tile", CASES, ids=[f"{d}-k{k}-t{t}" for d, k, t in CASES])
def test_matches_bruteforce_f32(dims, kernel, tile):
    shape = (2, *dims, 2, 8)
    q, k, v = _inputs(shape, seed=sum(dims) + sum(kernel))
    expected = brute_na3d(q, k, v, kernel, scale=0.7)
    out = na3d(mx.array(q), mx.array(k), mx.array(v), kernel, scale=0.7, tile_size=tile)
    assert out.shape == shape and out.dtype == mx.float32
    assert _rel(out, expected) <= 1e-5


@pytest.mark.parametrize("tile", [None, (2, 3, 4)])
def test_matches_bruteforce_bf16(tile):
    dims, kernel = (5, 9, 11), (3, 5, 7)
    q, k, v = _inputs((2, *dims, 2, 16), seed=3)
    qb, kb, vb = (mx.array(x).astype(mx.bfloat16) for x in (q, k, v))
    # The reference sees the bf16-rounded inputs, so only the attention's own rounding is measured. The
    # scale is the decoder's D**-0.5 (its q arrives pre-scaled by it): bf16 scores carry ~2**-9 relative
    # rounding, so with scale 1 and |score| ~ 10 the logits alone would be off by ~0.02 in any bf16 SDPA.
    expected = brute_na3d(*(np.asarray(x.astype(mx.float32)) for x in (qb, kb, vb)), kernel, scale=0.25)
    out = na3d(qb, kb, vb, kernel, scale=0.25, tile_size=tile)
    assert out.dtype == mx.bfloat16
    assert _rel(out, expected) <= 2e-2


def test_small_block_budget_gives_same_result():
    """A tiny budget splits runs into many blocks (many concatenations); the result must not move."""
    dims, kernel = (7, 9, 10), (3, 5, 5)
    q, k, v = (mx.array(x) for x in _inputs((2, *dims, 2, 8), seed=5))
    full = na3d(q, k, v, kernel)
    split = na3d(q, k, v, kernel, tile_size=(2, 3, 3), block_budget=1)
    assert _rel(split, np.asarray(full)) <= 1e-6
    assert _rel(full, brute_na3d(*(np.asarray(x) for x in (q, k, v)), kernel)) <= 1e-5


def test_window_starts_shift_inward():
    assert window_starts(7, 3).tolist() == [0, 0, 1, 2, 3, 4, 4]
    assert window_starts(5, 5).tolist() == [0] * 5
    assert window_starts(4, 1).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("dims,axis", [((2, 9, 9), "T"), ((5, 4, 9), "H"), ((5, 9, 6), "W")])
def test_axis_shorter_than_kernel_raises(dims, axis):
    x = mx.zeros((1, *dims, 1, 4))
    with pytest.raises(ValueError, match=rf"axis {axis} has length {dims['THW'.index(axis)]} < kernel"):
        na3d(x, x, x, (3, 5, 7))


_DIFFVAE = fixture_dirs("diffvae")


@pytest.mark.parametrize("fixture", _DIFFVAE, ids=[d.name for d in _DIFFVAE])
def test_golden_na3d(fixture):
    """The reference's eager tiled-SDPA na3d (tests/reference/make_ref_diffvae.py, FORMAT-DIFFVAE.md)."""
    g = mx.load(str(fixture / "golden_na3d.safetensors"))
    cases = sorted({int(key.split(".")[0][4:]) for key in g if key.startswith("case")})
    assert cases
    for i in cases:
        kernel = tuple(int(x) for x in np.asarray(g[f"case{i}.kernel"]).reshape(-1))
        out = na3d(g[f"case{i}.in.q"], g[f"case{i}.in.k"], g[f"case{i}.in.v"], kernel, scale=1.0)
        err = _rel(out, np.asarray(g[f"case{i}.out"].astype(mx.float32)))
        assert err <= 1e-5, f"case{i} kernel {kernel}: {err:.2e}"
