"""Timestep embedding and adaLN-single of the LTX transformer
(``ltx_core/model/transformer/timestep_embedding.py``, ``adaln.py``).

The sinusoid is computed in float32 whatever the model dtype (the reference's
``get_timestep_embedding`` runs on float timesteps) and cast to the model dtype only at the
first linear layer. Channel order is [cos, sin] (``flip_sin_to_cos=True``), frequency shift 0.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .activations import silu_rounded_once

# Rows per block table: (shift, scale, gate) for self-attention and feed-forward, plus
# (shift_q, scale_q, gate) for the text cross-attention when ``cross_attention_adaln`` is on.
ADALN_NUM_BASE_PARAMS = 6
ADALN_NUM_CROSS_ATTN_PARAMS = 3


def adaln_embedding_coefficient(cross_attention_adaln: bool) -> int:
    return ADALN_NUM_BASE_PARAMS + (ADALN_NUM_CROSS_ATTN_PARAMS if cross_attention_adaln else 0)


def get_timestep_embedding(
    timesteps: mx.array,
    embedding_dim: int,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    max_period: int = 10000,
) -> mx.array:
    """(N,) -> (N, embedding_dim) float32 sinusoidal embedding."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D, got shape {timesteps.shape}")
    half = embedding_dim // 2
    exponent = -math.log(max_period) * mx.arange(0, half, dtype=mx.float32)
    exponent = exponent / (half - downscale_freq_shift)
    emb = timesteps.astype(mx.float32)[:, None] * mx.exp(exponent)[None, :]
    sin, cos = mx.sin(emb), mx.cos(emb)
    emb = mx.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if embedding_dim % 2:
        emb = mx.pad(emb, [(0, 0), (0, 1)])
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim, bias=True)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim, bias=True)

    def __call__(self, sample: mx.array) -> mx.array:
        return self.linear_2(silu_rounded_once(self.linear_1(sample)))


class PixArtAlphaCombinedTimestepSizeEmbeddings(nn.Module):
    """Only the timestep branch exists in LTX (no size/aspect embeddings)."""

    num_channels = 256

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(self.num_channels, embedding_dim)

    def __call__(self, timestep: mx.array, hidden_dtype: mx.Dtype) -> mx.array:
        proj = get_timestep_embedding(timestep, self.num_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.timestep_embedder(proj.astype(hidden_dtype))


class AdaLayerNormSingle(nn.Module):
    """adaLN-single (PixArt-α): returns ``(linear(silu(e)), e)`` where ``e`` is the embedded
    timestep; the block tables read the first, the output modulation the second."""

    def __init__(self, embedding_dim: int, embedding_coefficient: int = 6):
        super().__init__()
        self.emb = PixArtAlphaCombinedTimestepSizeEmbeddings(embedding_dim)
        self.linear = nn.Linear(embedding_dim, embedding_coefficient * embedding_dim, bias=True)

    def __call__(self, timestep: mx.array, hidden_dtype: mx.Dtype) -> tuple[mx.array, mx.array]:
        embedded_timestep = self.emb(timestep, hidden_dtype)
        return self.linear(silu_rounded_once(embedded_timestep)), embedded_timestep
