"""Rotary position embeddings of LTX (``ltx_core/model/transformer/rope.py``), split layout.

The reference builds one frequency ladder over the **whole inner dim** (not per head): with
``n`` position axes it makes ``F = dim // (2n)`` base frequencies, multiplies each by every
axis' position (angle vector ordered frequency-major, axis-minor), front-pads the vector
to ``dim / 2`` with cos = 1 / sin = 0, and only then cuts it into one slice per head. So
every head sees a different part of the frequency/axis ladder; computing RoPE per head
with a head-sized ladder would be a different model.

Precision follows the reference: the frequency grid is computed in float64 (numpy) when
the config says ``frequencies_precision: "float64"`` and rounded to float32; positions,
angles, cos and sin are float32; cos/sin are cast to the model dtype before use.
"""

from __future__ import annotations

import math
from functools import lru_cache

import mlx.core as mx
import numpy as np

from ..config import ConfigError

SUPPORTED_ROPE_TYPES = ("split",)


def check_rope_type(rope_type: str) -> None:
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"transformer config rope_type={rope_type!r} is not supported (only 'split', which every "
                          f"LTX-2 / LTX-2.3 release uses; 'interleaved' is the reference's legacy mode)")


@lru_cache(maxsize=16)
def _freq_grid_np(theta: float, n_axes: int, dim: int, double_precision: bool) -> np.ndarray:
    """(π/2)·θ^linspace(0, 1, dim // (2·n_axes)) as float32, like ``generate_freq_grid_np``
    (float64 math, rounded once) or ``generate_freq_grid_pytorch`` (float32 throughout)."""
    count = dim // (2 * n_axes)
    if double_precision:
        grid = np.power(theta, np.linspace(0.0, 1.0, count, dtype=np.float64))
        return (grid * math.pi / 2).astype(np.float32)
    # Not bit-matched: torch's float32 linspace/pow kernels round an ulp differently, which the
    # highest frequencies (~1.6e4 rad) turn into ~4e-3 in cos/sin. Every release config asks
    # for "float64" (exact here); this path only serves checkpoints without the key.
    exps = np.linspace(0.0, 1.0, count, dtype=np.float64).astype(np.float32)
    grid = np.power(np.float32(theta), exps, dtype=np.float32)
    return (grid * np.float32(math.pi / 2)).astype(np.float32)


def freq_grid(theta: float, n_axes: int, dim: int, double_precision: bool) -> mx.array:
    return mx.array(_freq_grid_np(float(theta), int(n_axes), int(dim), bool(double_precision)))


def _fractional_positions(positions: mx.array, max_pos, use_middle_indices_grid: bool) -> mx.array:
    """(B, n_axes, T[, 2]) -> (B, T, n_axes) positions divided by each axis' max_pos."""
    positions = positions.astype(mx.float32)
    if use_middle_indices_grid:
        if positions.ndim != 4 or positions.shape[-1] != 2:
            raise ValueError(f"positions must be (B, n_axes, T, 2) [start, end) bounds, got {positions.shape}")
        positions = (positions[..., 0] + positions[..., 1]) / 2.0
    elif positions.ndim == 4:
        positions = positions[..., 0]
    n_axes = positions.shape[1]
    if n_axes != len(max_pos):
        raise ValueError(f"positions have {n_axes} axes but max_pos has {len(max_pos)} ({list(max_pos)})")
    return mx.stack([positions[:, i] / float(max_pos[i]) for i in range(n_axes)], axis=-1)


def precompute_freqs_cis(
    positions: mx.array,
    dim: int,
    out_dtype: mx.Dtype,
    num_attention_heads: int,
    theta: float = 10000.0,
    max_pos=(20, 2048, 2048),
    use_middle_indices_grid: bool = True,
    double_precision: bool = True,
) -> tuple[mx.array, mx.array]:
    """cos, sin of shape (B, H, T, dim / (2H)) in ``out_dtype`` for the split layout."""
    n_axes = positions.shape[1]
    indices = freq_grid(theta, n_axes, dim, double_precision)
    frac = _fractional_positions(positions, max_pos, use_middle_indices_grid)  # (B, T, n_axes)
    B, T, _ = frac.shape
    # (B, T, n_axes, F) -> (B, T, F, n_axes): the angle index is k·n_axes + axis
    freqs = indices * (frac[..., None] * 2 - 1)
    freqs = freqs.transpose(0, 1, 3, 2).reshape(B, T, -1)
    cos, sin = mx.cos(freqs), mx.sin(freqs)
    pad = dim // 2 - freqs.shape[-1]
    if pad < 0:
        raise ValueError(f"RoPE: {freqs.shape[-1]} angles do not fit in dim {dim}")
    if pad:
        cos = mx.concatenate([mx.ones((B, T, pad), dtype=cos.dtype), cos], axis=-1)
        sin = mx.concatenate([mx.zeros((B, T, pad), dtype=sin.dtype), sin], axis=-1)
    if (dim // 2) % num_attention_heads:
        raise ValueError(f"RoPE: dim/2 = {dim // 2} is not divisible by {num_attention_heads} heads")
    cos = cos.reshape(B, T, num_attention_heads, -1).transpose(0, 2, 1, 3)
    sin = sin.reshape(B, T, num_attention_heads, -1).transpose(0, 2, 1, 3)
    return cos.astype(out_dtype), sin.astype(out_dtype)


def apply_split_rotary_emb(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate-half RoPE on heads-first ``x`` (B, H, T, D): element i pairs with i + D/2,
    both halves share the angle (cos/sin are (B or 1, H, T, D/2))."""
    half = x.shape[-1] // 2
    if cos.shape[-1] != half:
        raise ValueError(f"RoPE: head dim {x.shape[-1]} needs {half} angles per head, got {cos.shape[-1]}")
    x1, x2 = x[..., :half], x[..., half:]
    out1 = x1 * cos - sin * x2
    out2 = x2 * cos + sin * x1
    return mx.concatenate([out1, out2], axis=-1)
