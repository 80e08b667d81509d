"""Gemma hidden states -> text features: the reference's ``FeatureExtractorV1`` / ``V2``
(``ltx_core/text_encoders/gemma/feature_extractor.py``).

Both stack the Gemma hidden states (embeddings + every layer) to (B, T, D, L), normalise,
flatten D-major / L-minor (feature index d·L + l) and apply one linear layer per stream.
V2 (LTX-2.3) normalises each token per layer (RMS) and has a video and an audio projection;
V1 (LTX-2 19B) normalises each layer by its masked mean and range, and both streams share one
bias-free projection to the Gemma width.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from ..config import TransformerConfig


def _stack(hidden_states) -> mx.array:
    if isinstance(hidden_states, (list, tuple)):
        return mx.stack(list(hidden_states), axis=-1)
    return hidden_states


def norm_and_concat_per_token_rms(encoded: mx.array, attention_mask: mx.array) -> mx.array:
    """(B, T, D, L) -> (B, T, D·L): RMS over D per token and layer, padded tokens zeroed."""
    B, T, D, L = encoded.shape
    variance = mx.mean(encoded * encoded, axis=2, keepdims=True)
    normed = (encoded * mx.rsqrt(variance + 1e-6)).reshape(B, T, D * L)
    return mx.where(attention_mask.astype(mx.bool_)[..., None], normed, mx.zeros_like(normed))


def norm_and_concat_padded_batch(encoded: mx.array, attention_mask: mx.array) -> mx.array:
    """(B, T, D, L) -> (B, T, D·L): per sample and layer, 8·(x − mean)/(max − min) over the
    valid tokens and all of D (eps 1e-6 as the reference), padded tokens zeroed."""
    B, T, D, L = encoded.shape
    eps = 1e-6
    valid = attention_mask.astype(mx.bool_)[:, :, None, None]
    lengths = attention_mask.astype(encoded.dtype).sum(axis=-1).reshape(B, 1, 1, 1)
    masked = mx.where(valid, encoded, mx.zeros_like(encoded))
    mean = masked.sum(axis=(1, 2), keepdims=True) / (lengths * D + eps)
    x_min = mx.where(valid, encoded, mx.array(float("inf"), encoded.dtype)).min(axis=(1, 2), keepdims=True)
    x_max = mx.where(valid, encoded, mx.array(float("-inf"), encoded.dtype)).max(axis=(1, 2), keepdims=True)
    normed = (8 * (encoded - mean) / (x_max - x_min + eps)).reshape(B, T, D * L)
    return mx.where(valid.reshape(B, T, 1), normed, mx.zeros_like(normed))


class FeatureExtractorV2(nn.Module):
    """LTX-2.3: per-token RMS norm, rescale by sqrt(out/D), video and audio aggregate embeds."""

    def __init__(self, flat_dim: int, video_dim: int, audio_dim: int):
        super().__init__()
        self.video_aggregate_embed = nn.Linear(flat_dim, video_dim, bias=True)
        self.audio_aggregate_embed = nn.Linear(flat_dim, audio_dim, bias=True)

    def __call__(self, hidden_states, attention_mask: mx.array) -> tuple[mx.array, mx.array]:
        encoded = _stack(hidden_states)
        D = encoded.shape[2]  # Gemma width: the rescale is relative to it, not to D·L
        normed = norm_and_concat_per_token_rms(encoded, attention_mask).astype(encoded.dtype)
        v_dim = self.video_aggregate_embed.weight.shape[0]
        a_dim = self.audio_aggregate_embed.weight.shape[0]
        video = self.video_aggregate_embed(normed * math.sqrt(v_dim / D))
        audio = self.audio_aggregate_embed(normed * math.sqrt(a_dim / D))
        return video, audio


class FeatureExtractorV1(nn.Module):
    """LTX-2 19B: masked mean/range norm, one projection to the Gemma width shared by both
    streams (the transformer's caption projections then widen it)."""

    def __init__(self, flat_dim: int, embedding_dim: int):
        super().__init__()
        self.aggregate_embed = nn.Linear(flat_dim, embedding_dim, bias=False)

    def __call__(self, hidden_states, attention_mask: mx.array) -> tuple[mx.array, mx.array]:
        encoded = _stack(hidden_states)
        normed = norm_and_concat_padded_batch(encoded, attention_mask).astype(encoded.dtype)
        features = self.aggregate_embed(normed)
        return features, features


def build_text_projection(
    config: TransformerConfig, gemma_hidden_size: int, gemma_num_layers: int
) -> FeatureExtractorV1 | FeatureExtractorV2:
    """The feature extractor the reference's ``_create_feature_extractor`` selects: V2 when the
    config carries the four LTX-2.3 ``caption_proj*`` keys, V1 when it carries none.
    ``gemma_num_layers`` counts transformer layers; the embeddings add one more state."""
    flat_dim = gemma_hidden_size * (gemma_num_layers + 1)
    if config.text_projection_version == 2:
        return FeatureExtractorV2(flat_dim, config.inner_dim, config.audio_inner_dim)
    return FeatureExtractorV1(flat_dim, gemma_hidden_size)


def text_projection_from_checkpoint(checkpoint) -> FeatureExtractorV1 | FeatureExtractorV2:
    """Build the (unloaded) feature extractor with the input width its weights have; the Gemma
    width the rescale needs is read from the hidden states at call time."""
    cfg = checkpoint.config.transformer
    names = checkpoint.component_keys("text_projection")
    if cfg.text_projection_version == 2:
        key = names.get("video_aggregate_embed.weight")
        if key is None:
            raise ValueError(f"{checkpoint.path}: missing 'text_embedding_projection.video_aggregate_embed.weight'")
        return FeatureExtractorV2(checkpoint.shapes[key][1], cfg.inner_dim, cfg.audio_inner_dim)
    key = names.get("aggregate_embed.weight")
    if key is None:
        raise ValueError(f"{checkpoint.path}: missing 'text_embedding_projection.aggregate_embed.weight'")
    out_dim, flat_dim = checkpoint.shapes[key]
    return FeatureExtractorV1(flat_dim, out_dim)
