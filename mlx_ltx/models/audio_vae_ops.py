"""Building blocks of the audio VAE (``ltx_core/model/audio_vae/``: ``causal_conv_2d.py``,
``resnet.py``, ``attention.py``, ``downsample.py``, ``upsample.py``, ``ops.py``; the norms of
``model/common/normalization.py``).

Everything inside runs channels-last, ``(B, T, M, C)``: time where the reference has "height",
mel bins where it has "width". The encoder/decoder convert from and to the reference's
``(B, C, T, M)`` at their public calls.
"""

from __future__ import annotations

from typing import ClassVar

import mlx.core as mx
import mlx.nn as nn

from ..config import AudioVAEConfig, ConfigError
from .activations import silu_rounded_once

# ``build_normalization_layer``: PixelNorm(eps=1e-6) here, not the PixelNorm class default 1e-8
# (which the video VAE uses); GroupNorm also 1e-6.
NORM_EPS = 1e-6
GROUP_NORM_GROUPS = 32
CAUSALITY_AXES = ("none", "width", "height", "width-compatibility")
NORM_TYPES = ("pixel", "group")
ATTN_TYPES = ("vanilla", "none")


def causality_axis_of(config: AudioVAEConfig) -> str:
    """``CausalityAxis(value)`` as a string; JSON null is the reference's ``CausalityAxis.NONE``."""
    axis = "none" if config.causality_axis is None else config.causality_axis
    if axis not in CAUSALITY_AXES:
        raise ConfigError(f"audio_vae config: causality_axis={config.causality_axis!r} (expected one of "
                          f"{['height', 'width', 'width-compatibility', None]})")
    return axis


def check_audio_vae_config(config: AudioVAEConfig) -> None:
    """Reject what the reference rejects (or does not implement), naming the value."""
    axis = causality_axis_of(config)
    if config.norm_type not in NORM_TYPES:
        raise ConfigError(f"audio_vae config: norm_type={config.norm_type!r} (expected one of {list(NORM_TYPES)})")
    if config.norm_type == "group" and axis != "none":
        raise ConfigError(f"audio_vae config: norm_type='group' with causality_axis={config.causality_axis!r}; "
                          f"the reference's ResnetBlock refuses a causal block with GroupNorm")
    if config.attn_type not in ATTN_TYPES:
        raise ConfigError(f"audio_vae config: attn_type={config.attn_type!r}; the reference implements "
                          f"{list(ATTN_TYPES)} only (its 'linear' attention is an unimplemented stub)")
    if not config.resamp_with_conv and axis != "none":
        raise ConfigError(f"audio_vae config: resamp_with_conv=false with causality_axis={config.causality_axis!r}; "
                          f"the reference's Downsample allows pooling only without causality")


def conv_weight_to_mlx(value: mx.array) -> mx.array:
    """PyTorch Conv2d kernel (O, I, kh, kw) -> MLX (O, kh, kw, I)."""
    return value.transpose(0, 2, 3, 1) if value.ndim == 4 else value


class PixelNorm(nn.Module):
    """x / sqrt(mean_C(x²) + 1e-6) over channels, no weights. The statistic is taken in float32:
    a bf16 mean of squares drifts from the reference's float32 run."""

    def __call__(self, x: mx.array) -> mx.array:
        x32 = x.astype(mx.float32)
        return (x32 * mx.rsqrt(mx.mean(x32 * x32, axis=-1, keepdims=True) + NORM_EPS)).astype(x.dtype)


def build_normalization_layer(channels: int, norm_type: str) -> nn.Module:
    if norm_type == "pixel":
        return PixelNorm()
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=NORM_EPS, affine=True, pytorch_compatible=True)


def _pad_hw(x: mx.array, top: int, bottom: int, left: int, right: int) -> mx.array:
    if top == bottom == left == right == 0:
        return x
    return mx.pad(x, [(0, 0), (top, bottom), (left, right), (0, 0)])


class CausalConv2d(nn.Module):
    """Zero padding chosen by the causality axis, then an unpadded conv (weights under ``.conv``).
    "height" = time: the whole kernel overhang goes before the first frame."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, causality_axis: str):
        super().__init__()
        pad = kernel_size - 1
        sym = (pad // 2, pad - pad // 2)
        # (top, bottom, left, right) = (time before, time after, mel before, mel after)
        self._padding = {
            "none": (*sym, *sym),
            "width": (*sym, pad, 0),
            "width-compatibility": (*sym, pad, 0),
            "height": (pad, 0, *sym),
        }[causality_axis]
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(_pad_hw(x, *self._padding))


class ResnetBlock(nn.Module):
    """norm → SiLU → conv1 → norm → SiLU → conv2, plus the input (through a 1×1 ``nin_shortcut``
    when the width changes). No timestep embedding: the VAE builds it with ``temb_channels=0``."""

    def __init__(self, in_channels: int, out_channels: int, norm_type: str, causality_axis: str):
        super().__init__()
        self.norm1 = build_normalization_layer(in_channels, norm_type)
        self.conv1 = CausalConv2d(in_channels, out_channels, 3, causality_axis)
        self.norm2 = build_normalization_layer(out_channels, norm_type)
        self.conv2 = CausalConv2d(out_channels, out_channels, 3, causality_axis)
        if in_channels != out_channels:
            self.nin_shortcut = CausalConv2d(in_channels, out_channels, 1, causality_axis)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv1(silu_rounded_once(self.norm1(x)))
        h = self.conv2(silu_rounded_once(self.norm2(h)))
        if "nin_shortcut" in self:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all T·M positions, 1×1 convs for q/k/v/proj_out (plain
    ``Conv2d`` keys in the checkpoint, no ``.conv`` level), scale C^-½."""

    def __init__(self, channels: int, norm_type: str):
        super().__init__()
        self.norm = build_normalization_layer(channels, norm_type)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def __call__(self, x: mx.array) -> mx.array:
        B, T, M, C = x.shape
        h = self.norm(x)
        q, k, v = (layer(h).reshape(B, 1, T * M, C) for layer in (self.q, self.k, self.v))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=C**-0.5)
        return x + self.proj_out(out.reshape(B, T, M, C))


def make_attn(channels: int, attn_type: str, norm_type: str) -> AttnBlock | None:
    """``attn_type='none'`` is an Identity in the reference: nothing to build or load."""
    return AttnBlock(channels, norm_type) if attn_type == "vanilla" else None


class Downsample(nn.Module):
    """Stride-2 3×3 conv after the axis-dependent zero padding of the reference (a plain
    ``Conv2d``, not a CausalConv2d: its weights sit at ``downsample.conv.*``); 2×2 average
    pooling without a conv (only allowed without causality)."""

    # (top, bottom, left, right) = (time before, time after, mel before, mel after)
    _PADS: ClassVar[dict[str, tuple[int, int, int, int]]] = {
        "none": (0, 1, 0, 1), "width": (0, 1, 2, 0), "height": (2, 0, 0, 1), "width-compatibility": (0, 1, 1, 0)}

    def __init__(self, channels: int, with_conv: bool, causality_axis: str):
        super().__init__()
        self.with_conv = with_conv
        self._pad = self._PADS[causality_axis]
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def __call__(self, x: mx.array) -> mx.array:
        if self.with_conv:
            return self.conv(_pad_hw(x, *self._pad))
        B, T, M, C = x.shape
        x = x[:, : T // 2 * 2, : M // 2 * 2]
        return x.reshape(B, T // 2, 2, M // 2, 2, C).mean(axis=(2, 4))


class Upsample(nn.Module):
    """Nearest ×2 on both axes, causal conv, then the first row on the causal axis is dropped
    (it saw only padding and the first input), so a length n becomes 2n − 1, undoing the
    encoder's causal padding."""

    def __init__(self, channels: int, with_conv: bool, causality_axis: str):
        super().__init__()
        self.with_conv = with_conv
        self._axis = causality_axis
        if with_conv:
            self.conv = CausalConv2d(channels, channels, 3, causality_axis)

    def __call__(self, x: mx.array) -> mx.array:
        x = mx.repeat(mx.repeat(x, 2, axis=1), 2, axis=2)
        if self.with_conv:
            x = self.conv(x)
            if self._axis == "height":
                x = x[:, 1:]
            elif self._axis == "width":
                x = x[:, :, 1:]
        return x


class MidBlock(nn.Module):
    """``build_mid_block``: two ResnetBlocks around an optional attention (``attn_1``)."""

    def __init__(self, channels: int, norm_type: str, causality_axis: str, attn_type: str, add_attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, norm_type, causality_axis)
        attn = make_attn(channels, attn_type, norm_type) if add_attention else None
        if attn is not None:
            self.attn_1 = attn
        self.block_2 = ResnetBlock(channels, channels, norm_type, causality_axis)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.block_1(x)
        if "attn_1" in self:
            x = self.attn_1(x)
        return self.block_2(x)


class Stage(nn.Module):
    """One resolution level: ``block.{i}`` with ``attn.{i}`` after each when the level's nominal
    resolution is in ``attn_resolutions``, then the optional ``downsample`` / ``upsample``."""

    def __init__(self, blocks: list[ResnetBlock], attns: list[AttnBlock]):
        super().__init__()
        self.block = blocks
        self.attn = attns

    def run_blocks(self, x: mx.array) -> mx.array:
        for i, block in enumerate(self.block):
            x = block(x)
            if self.attn:
                x = self.attn[i](x)
        return x


class PerChannelStatistics(nn.Module):
    """Latent statistics ``std-of-means`` / ``mean-of-means`` (the checkpoint's names), applied on
    the last axis of patchified tokens: feature c·M + m of ``b c t m -> b t (c m)``."""

    def __init__(self, features: int):
        super().__init__()
        self["std-of-means"] = mx.ones((features,))
        self["mean-of-means"] = mx.zeros((features,))

    def normalize(self, x: mx.array) -> mx.array:
        return (x - self["mean-of-means"].astype(x.dtype)) / self["std-of-means"].astype(x.dtype)

    def un_normalize(self, x: mx.array) -> mx.array:
        return x * self["std-of-means"].astype(x.dtype) + self["mean-of-means"].astype(x.dtype)


def patchify(latent: mx.array) -> mx.array:
    """``AudioPatchifier.patchify``: (B, C, T, M) -> (B, T, C·M)."""
    B, C, T, M = latent.shape
    return latent.transpose(0, 2, 1, 3).reshape(B, T, C * M)


def unpatchify(tokens: mx.array, channels: int, mel_bins: int) -> mx.array:
    """``AudioPatchifier.unpatchify``: (B, T, C·M) -> (B, C, T, M)."""
    B, T, _ = tokens.shape
    return tokens.reshape(B, T, channels, mel_bins).transpose(0, 2, 1, 3)
