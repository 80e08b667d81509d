"""LTX-2.5's duration head (``ltx_core/duration_head/``) and the reference's snapping of its
prediction to a frame count (``DurationPredictor`` in ``ltx_pipelines/utils/blocks.py``,
``seconds_to_clamped_num_frames`` in ``ltx_pipelines/utils/helpers.py``).

The head reads the positive prompt's connector outputs (registers included, every token valid,
so no mask): each stream is projected to a shared width and tagged with a learned modality
embedding, learned queries cross-attend over the concatenated tokens (video first) with torch's
``nn.MultiheadAttention``, and a small MLP predicts log-seconds, exponentiated here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn

from ..config import parse_metadata
from ..loading import COMPONENTS, CheckpointError, load_strict, read_safetensors_header
from .activations import gelu_tanh_rounded_once

# ``AutoDuration()``'s range (ltx_pipelines/utils/types.py): the default clamp of a prediction
AUTO_DURATION_MIN_SECONDS = 1.0
AUTO_DURATION_MAX_SECONDS = 20.0
# the causal video VAE's temporal factor: frame counts live on the 8k + 1 grid
VIDEO_TIME_SCALE = 8


@dataclass(frozen=True)
class DurationHeadConfig:
    """``DurationHeadConfigurator.from_metadata``: the input widths are the transformer's connector
    widths; the head's own sizes come from an optional ``config.duration_head`` section, with the
    reference's defaults for what it lacks (it has no finalized schema yet)."""

    video_cross_attention_dim: int = 4096
    audio_cross_attention_dim: int = 2048
    pooler_hidden_dim: int = 256
    num_queries: int = 1
    num_pooler_heads: int = 4
    mlp_hidden: int = 256

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> DurationHeadConfig:
        config = metadata.get("config") or {}
        transformer = config.get("transformer") or {}
        head = config.get("duration_head") or {}
        d = cls()
        return cls(
            video_cross_attention_dim=transformer.get("cross_attention_dim", d.video_cross_attention_dim),
            audio_cross_attention_dim=transformer.get("audio_cross_attention_dim", d.audio_cross_attention_dim),
            pooler_hidden_dim=head.get("pooler_hidden_dim", d.pooler_hidden_dim),
            num_queries=head.get("num_queries", d.num_queries),
            num_pooler_heads=head.get("num_pooler_heads", d.num_pooler_heads),
            mlp_hidden=head.get("mlp_hidden", d.mlp_hidden),
        )


class MultiheadAttention(nn.Module):
    """torch ``nn.MultiheadAttention`` (batch_first, no mask, no dropout) with its packed
    parameters: ``in_proj_weight`` is [Wq; Wk; Wv] stacked on the output axis."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"duration head: pooler_hidden_dim {embed_dim} is not divisible by num_pooler_heads "
                             f"{num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = mx.zeros((3 * embed_dim, embed_dim))
        self.in_proj_bias = mx.zeros((3 * embed_dim,))
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def __call__(self, query: mx.array, key_value: mx.array) -> mx.array:
        B, Lq, E = query.shape
        Lk = key_value.shape[1]
        H = self.num_heads
        w_q, w_kv = self.in_proj_weight[:E], self.in_proj_weight[E:]
        b_q, b_kv = self.in_proj_bias[:E], self.in_proj_bias[E:]
        q = mx.addmm(b_q, query, w_q.T)
        k, v = mx.split(mx.addmm(b_kv, key_value, w_kv.T), 2, axis=-1)
        q = q.reshape(B, Lq, H, E // H).transpose(0, 2, 1, 3)
        k = k.reshape(B, Lk, H, E // H).transpose(0, 2, 1, 3)
        v = v.reshape(B, Lk, H, E // H).transpose(0, 2, 1, 3)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(E // H))
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, Lq, E))


class AttentionPooler(nn.Module):
    def __init__(self, hidden_dim: int, num_queries: int, num_heads: int):
        super().__init__()
        self.query_tokens = mx.zeros((num_queries, hidden_dim))
        self.cross_attn = MultiheadAttention(hidden_dim, num_heads)

    def __call__(self, tokens: mx.array) -> mx.array:
        queries = mx.broadcast_to(self.query_tokens[None], (tokens.shape[0], *self.query_tokens.shape))
        return self.cross_attn(queries, tokens)  # (B, num_queries, hidden)


class DurationHead(nn.Module):
    def __init__(self, config: DurationHeadConfig):
        super().__init__()
        self.config = config
        c = config
        self.video_input_proj = nn.Linear(c.video_cross_attention_dim, c.pooler_hidden_dim)
        self.video_modality_emb = mx.zeros((c.pooler_hidden_dim,))
        self.audio_input_proj = nn.Linear(c.audio_cross_attention_dim, c.pooler_hidden_dim)
        self.audio_modality_emb = mx.zeros((c.pooler_hidden_dim,))
        self.attention_pooler = AttentionPooler(c.pooler_hidden_dim, c.num_queries, c.num_pooler_heads)
        self.mlp_hidden = nn.Linear(c.pooler_hidden_dim * c.num_queries, c.mlp_hidden)
        self.mlp_out = nn.Linear(c.mlp_hidden, 1)

    @property
    def dtype(self) -> mx.Dtype:
        return self.mlp_out.weight.dtype

    def __call__(self, video_tokens: mx.array | None = None, audio_tokens: mx.array | None = None) -> mx.array:
        """(B, T_v, Dv) and/or (B, T_a, Da) connector outputs -> (B,) seconds."""
        if video_tokens is None and audio_tokens is None:
            raise ValueError("DurationHead needs at least one of video_tokens / audio_tokens")
        groups = []
        if video_tokens is not None:
            groups.append(self.video_input_proj(video_tokens) + self.video_modality_emb)
        if audio_tokens is not None:
            groups.append(self.audio_input_proj(audio_tokens) + self.audio_modality_emb)
        pooled = self.attention_pooler(mx.concatenate(groups, axis=1))
        hidden = gelu_tanh_rounded_once(self.mlp_hidden(pooled.reshape(pooled.shape[0], -1)))
        return mx.exp(self.mlp_out(hidden).squeeze(-1))

    def predict_seconds(self, video_encoding: mx.array | None, audio_encoding: mx.array | None) -> float:
        """The predicted clip length of one prompt, in seconds. The encodings are cast to the
        head's dtype (the reference runs both in the pipeline's dtype, bfloat16)."""
        given = [x for x in (video_encoding, audio_encoding) if x is not None]
        if not given:
            raise ValueError("predict_seconds needs at least one of video_encoding / audio_encoding")
        for x in given:
            if x.ndim != 3 or x.shape[0] != 1:
                raise ValueError(f"predict_seconds takes one prompt's encodings, shaped (1, T, D); got {x.shape} "
                                 f"(the reference predicts single-item batches only)")
        cast = lambda x: None if x is None else x.astype(self.dtype)  # noqa: E731
        return self(cast(video_encoding), cast(audio_encoding)).item()


def duration_head_from_metadata(metadata: dict[str, Any]) -> DurationHead:
    """The unloaded head built from a file's parsed ``__metadata__``."""
    return DurationHead(DurationHeadConfig.from_metadata(metadata))


def load_duration_head(path: str, dtype: mx.Dtype = mx.bfloat16) -> DurationHead:
    """The duration head of ``path`` (its own file, or any file holding ``duration_head.*`` keys),
    loaded strictly and cast to ``dtype``."""
    header = read_safetensors_header(str(path))
    head = duration_head_from_metadata(parse_metadata(header.get("__metadata__")))
    ops = COMPONENTS["duration_head"]
    weights, origin = {}, {}
    for key, value in mx.load(str(path)).items():  # lazy: other components' tensors are never read
        name = ops.apply(key)
        if name is not None:
            weights[name], origin[name] = value, key
    if not weights:
        raise CheckpointError(f"{path}: no duration head (no keys starting with 'duration_head.'); auto duration "
                              f"needs an LTX-2.5 duration-head file, or pass the frame count explicitly")
    return load_strict(head, weights, source=str(path), dtype=dtype,
                       origin=lambda k: origin.get(k) or ops.source_key(k))


class FrameCount(NamedTuple):
    """A prediction snapped to a frame count, and what the reference logs about it."""

    num_frames: int
    seconds: float  # the raw prediction
    fps: float
    min_seconds: float
    max_seconds: float

    @property
    def clamped(self) -> bool:
        """The raw prediction fell outside [min_seconds, max_seconds] (the reference's test)."""
        return self.seconds > self.max_seconds or self.seconds < self.min_seconds

    def message(self) -> str:
        """The reference's log line (a warning when clamped, info otherwise)."""
        if self.clamped:
            return (f"DurationHead prediction clamped: raw {self.seconds:.2f}s outside [{self.min_seconds:.2f}s, "
                    f"{self.max_seconds:.2f}s], using {self.num_frames / self.fps:.2f}s ({self.num_frames} frames) "
                    f"@ {self.fps:.2f} fps")
        return f"DurationHead predicted {self.seconds:.2f}s ({self.num_frames} frames @ {self.fps:.2f} fps)"


def validate_auto_duration(min_seconds: float, max_seconds: float, fps: float | None = None) -> None:
    """Errors that say what to change, for the CLI and the public API."""
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"frame rate must be a positive number of frames per second, got {fps}")
    if not (math.isfinite(min_seconds) and math.isfinite(max_seconds)):
        raise ValueError(f"auto duration bounds must be finite seconds, got [{min_seconds}, {max_seconds}]")
    if min_seconds < 0:
        raise ValueError(f"auto duration MIN_SECONDS must be >= 0, got {min_seconds}")
    if min_seconds > max_seconds:
        raise ValueError(f"auto duration MIN_SECONDS ({min_seconds}) must be <= MAX_SECONDS ({max_seconds}); "
                         f"swap them or widen the range")


def seconds_to_clamped_num_frames(seconds: float, fps: float, min_frames: int, max_frames: int) -> int:
    """The reference's snapping: round to frames, clamp to [min_frames, max_frames], floor to
    8k + 1, and if that fell below min_frames take the next grid point up, capped at max_frames.
    The cap wins over the grid: a window holding no 8k + 1 count yields an off-grid count, as in
    the reference."""
    raw = max(min_frames, min(round(seconds * fps), max_frames))  # Python round: halves to even
    if raw < 1:
        raise ValueError(f"a {seconds:.4g}s prediction at {fps} fps rounds to {raw} frames; raise the auto duration "
                         f"MIN_SECONDS to at least one frame ({1 / fps:.4g}s)")
    frames = (raw - 1) // VIDEO_TIME_SCALE * VIDEO_TIME_SCALE + 1
    if frames < min_frames:
        frames = min(-(-(min_frames - 1) // VIDEO_TIME_SCALE) * VIDEO_TIME_SCALE + 1, max_frames)
    return frames


def resolve_num_frames(
    seconds: float,
    fps: float,
    min_seconds: float = AUTO_DURATION_MIN_SECONDS,
    max_seconds: float = AUTO_DURATION_MAX_SECONDS,
) -> FrameCount:
    """A predicted duration as the frame count the reference's ``DurationPredictor`` returns: the
    bounds are turned into frames by rounding (``round(min_seconds·fps)``) before clamping."""
    seconds, fps, min_seconds, max_seconds = float(seconds), float(fps), float(min_seconds), float(max_seconds)
    validate_auto_duration(min_seconds, max_seconds, fps)
    if not math.isfinite(seconds):
        raise ValueError(f"the duration head predicted {seconds} seconds (are the prompt encodings finite?); pass "
                         f"the frame count explicitly")
    num_frames = seconds_to_clamped_num_frames(seconds, fps, round(min_seconds * fps), round(max_seconds * fps))
    return FrameCount(num_frames, seconds, fps, min_seconds, max_seconds)
