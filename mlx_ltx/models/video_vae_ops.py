"""Building blocks shared by the video VAE encoder and decoder (``ltx_core/model/video_vae/``:
``convolution.py``, ``resnet.py``, ``sampling.py``, ``ops.py``; PixelNorm from
``model/common/normalization.py``).

Everything inside runs channels-last, ``(B, F, H, W, C)``, the layout ``mx.conv3d`` wants; the
public encoder/decoder calls convert from and to the reference's ``(B, C, F, H, W)``.

Two channel packings live here and must not be confused (``video_vae/ops.py`` :: ``patchify``,
``video_vae/sampling.py`` :: ``SpaceToDepthDownsample`` / ``DepthToSpaceUpsample``):
pixel (un)patchify packs ``(c, w-offset, h-offset)`` (einops ``c r q`` with q the height
offset), SpaceToDepth/DepthToSpace pack ``(c, t-offset, h-offset, w-offset)``.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from ..config import ConfigError
from .activations import silu_rounded_once

PADDING_MODES = ("zeros", "reflect")

COMPUTE_DTYPE_NOTE = """Activations default to float32 whatever the weights' dtype. Rounding every conv
input to bfloat16 is amplified through the deep conv stacks: on the test fixtures the reference's
own bf16 run is up to 3.6 % (decode) and 6.6 % (decode of encode) off its float32 output (max
abs error over max abs value), ours alike; float32 activations over the same bf16 weights stay
within 1e-5. ``compute_dtype=mx.bfloat16`` halves the activation memory at that accuracy."""
PIXEL_NORM_EPS = 1e-8  # the video VAE's PixelNorm default (the audio VAE uses 1e-6)


def conv_weight_to_mlx(value: mx.array) -> mx.array:
    """PyTorch Conv3d kernel (O, I, kt, kh, kw) -> MLX (O, kt, kh, kw, I)."""
    return value.transpose(0, 2, 3, 4, 1) if value.ndim == 5 else value


def pixel_norm(x: mx.array, eps: float = PIXEL_NORM_EPS) -> mx.array:
    """x / sqrt(mean_C(x²) + eps) over the channel (last) axis, without weights.
    The statistic is taken in float32 whatever the activations' dtype (bf16 squares and sums
    would add rounding for no memory saving: the statistic is one value per position)."""
    x32 = x.astype(mx.float32)
    return (x32 * mx.rsqrt(mx.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def patchify(x: mx.array, patch_size: int) -> mx.array:
    """(B, F, H, W, C) -> (B, F, H/p, W/p, C·p·p), channel index (c·p + w_off)·p + h_off."""
    if patch_size == 1:
        return x
    B, F, H, W, C = x.shape
    p = patch_size
    x = x.reshape(B, F, H // p, p, W // p, p, C)
    return x.transpose(0, 1, 2, 4, 6, 5, 3).reshape(B, F, H // p, W // p, C * p * p)


def unpatchify(x: mx.array, patch_size: int) -> mx.array:
    """Inverse of :func:`patchify`."""
    if patch_size == 1:
        return x
    B, F, H, W, CP = x.shape
    p = patch_size
    x = x.reshape(B, F, H, W, CP // (p * p), p, p)
    return x.transpose(0, 1, 2, 6, 3, 5, 4).reshape(B, F, H * p, W * p, CP // (p * p))


def space_to_depth(x: mx.array, stride: tuple[int, int, int]) -> mx.array:
    """(B, F, H, W, C) -> (B, F/s0, H/s1, W/s2, C·s0·s1·s2), packing (c, t, h, w) with c slowest."""
    B, F, H, W, C = x.shape
    s0, s1, s2 = stride
    x = x.reshape(B, F // s0, s0, H // s1, s1, W // s2, s2, C)
    return x.transpose(0, 1, 3, 5, 7, 2, 4, 6).reshape(B, F // s0, H // s1, W // s2, C * s0 * s1 * s2)


def depth_to_space(x: mx.array, stride: tuple[int, int, int]) -> mx.array:
    """Inverse of :func:`space_to_depth`."""
    B, F, H, W, CP = x.shape
    s0, s1, s2 = stride
    C = CP // (s0 * s1 * s2)
    x = x.reshape(B, F, H, W, C, s0, s1, s2)
    return x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(B, F * s0, H * s1, W * s2, C)


def check_padding_mode(mode: str, what: str) -> str:
    if mode not in PADDING_MODES:
        raise ConfigError(f"vae config: {what}={mode!r} is not supported (supported: {PADDING_MODES})")
    return mode


def _materialized(x: mx.array, materialize: bool) -> mx.array:
    """``x`` evaluated now when ``materialize`` (see :data:`MATERIALIZE_NOTE`)."""
    if materialize:
        mx.eval(x)
    return x


MATERIALIZE_NOTE = """``materialize=True`` evaluates around every convolution (``mx.eval``), same values.
MLX allocates an operation's buffers when the main thread schedules it, and on the CPU backend that
thread runs up to ten tasks (about a hundred kernel dispatches) ahead of the worker that computes
them; a buffer is released only once the worker is past it. A conv3d on CPU unfolds its input
(27 taps × input channels × output positions, float32 whatever the dtype: 108 bytes per value) and
a res stage evaluated as one graph had the buffers of about four convolutions allocated at once
(~530 bytes per value of the stage measured, against ~125 for one convolution). Evaluating each
convolution's padded input and output on its own keeps one convolution's buffers alive at a time.
The arithmetic is untouched: every result is bit-identical to the lazily evaluated graph."""


class CausalConv3d(nn.Module):
    """Stride-1 3-D convolution whose temporal padding is done by hand: ``causal`` prepends
    kt−1 copies of frame 0 (every encoder conv); otherwise frame 0 and the last frame are each
    repeated (kt−1)/2 times (the non-causal 2.3/19B decoder). Spatial padding is the conv's own,
    zeros or reflect, by kh//2 and kw//2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3,
                 spatial_padding_mode: str = "zeros"):
        super().__init__()
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        self.time_kernel_size = k[0]
        self._pad_hw = (k[1] // 2, k[2] // 2)
        self._reflect = check_padding_mode(spatial_padding_mode, "spatial_padding_mode") == "reflect"
        self.conv = nn.Conv3d(in_channels, out_channels, k,
                              padding=(0, 0, 0) if self._reflect else (0, *self._pad_hw))

    def __call__(self, x: mx.array, causal: bool = True, materialize: bool = False) -> mx.array:
        kt = self.time_kernel_size
        if causal and kt > 1:
            x = mx.concatenate([mx.repeat(x[:, :1], kt - 1, axis=1), x], axis=1)
        elif kt > 1:
            half = (kt - 1) // 2
            x = mx.concatenate([mx.repeat(x[:, :1], half, axis=1), x, mx.repeat(x[:, -1:], half, axis=1)], axis=1)
        if self._reflect and any(self._pad_hw):
            ph, pw = self._pad_hw
            x = mx.pad(x, [(0, 0), (0, 0), (ph, ph), (pw, pw), (0, 0)], mode="reflect")
        if materialize:  # the padded input alone: its producers' temporaries are gone before the conv's
            mx.eval(x)
        return _materialized(self.conv(x), materialize)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(silu_rounded_once(self.linear_1(x)))


def timestep_sinusoid(t: mx.array, dim: int = 256, max_period: float = 10000.0) -> mx.array:
    """``get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)`` in
    float32: [cos, sin] of t·exp(−ln(max_period)·i/(dim/2))."""
    half = dim // 2
    freqs = mx.exp(-math.log(max_period) * mx.arange(half, dtype=mx.float32) / half)
    args = t.astype(mx.float32)[:, None] * freqs[None]
    return mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1)


class PixArtAlphaCombinedTimestepSizeEmbeddings(nn.Module):
    """The decoder's timestep embedder (``size_emb_dim=0``: only the timestep MLP)."""

    def __init__(self, embedding_dim: int, proj_dim: int = 256):
        super().__init__()
        self._proj_dim = proj_dim
        self.timestep_embedder = TimestepEmbedding(proj_dim, embedding_dim)

    def __call__(self, timestep: mx.array, dtype: mx.Dtype) -> mx.array:
        return self.timestep_embedder(timestep_sinusoid(timestep, self._proj_dim).astype(dtype))


class ResnetBlock3D(nn.Module):
    """PixelNorm → SiLU → conv1 → PixelNorm → SiLU → conv2, plus the identity. With timestep
    conditioning, ``scale_shift_table`` (rows shift1, scale1, shift2, scale2) plus the block's
    timestep embedding modulates both norms."""

    def __init__(self, channels: int, spatial_padding_mode: str, timestep_conditioning: bool = False):
        super().__init__()
        self.conv1 = CausalConv3d(channels, channels, 3, spatial_padding_mode)
        self.conv2 = CausalConv3d(channels, channels, 3, spatial_padding_mode)
        self.timestep_conditioning = timestep_conditioning
        if timestep_conditioning:
            self.scale_shift_table = mx.zeros((4, channels))

    def __call__(self, x: mx.array, causal: bool = True, timestep_embed: mx.array | None = None,
                 materialize: bool = False) -> mx.array:
        h = pixel_norm(x)
        if self.timestep_conditioning:
            B, C = x.shape[0], x.shape[-1]
            # (B, 4·C) embedding read row-major as (B, 4, C), like the reference's reshape
            ada = (self.scale_shift_table[None] + timestep_embed.reshape(B, 4, C)).astype(x.dtype)
            ada = ada[:, :, None, None, None, :]
            shift1, scale1, shift2, scale2 = ada[:, 0], ada[:, 1], ada[:, 2], ada[:, 3]
            h = h * (1 + scale1) + shift1
        h = self.conv1(silu_rounded_once(h), causal=causal, materialize=materialize)
        h = pixel_norm(h)
        if self.timestep_conditioning:
            h = h * (1 + scale2) + shift2
        h = self.conv2(silu_rounded_once(h), causal=causal, materialize=materialize)
        return _materialized(x + h, materialize)


class UNetMidBlock3D(nn.Module):
    """``res_x``: a stack of same-width ResnetBlock3D sharing one timestep embedding."""

    def __init__(self, channels: int, num_layers: int, spatial_padding_mode: str,
                 timestep_conditioning: bool = False):
        super().__init__()
        self.timestep_conditioning = timestep_conditioning
        if timestep_conditioning:
            self.time_embedder = PixArtAlphaCombinedTimestepSizeEmbeddings(4 * channels)
        self.res_blocks = [ResnetBlock3D(channels, spatial_padding_mode, timestep_conditioning)
                           for _ in range(num_layers)]

    def __call__(self, x: mx.array, causal: bool = True, timestep: mx.array | None = None,
                 materialize: bool = False) -> mx.array:
        embed = None
        if self.timestep_conditioning:
            if timestep is None:
                raise ValueError("this decoder is timestep-conditioned: a timestep is required")
            embed = self.time_embedder(timestep, x.dtype)
        for block in self.res_blocks:
            x = block(x, causal=causal, timestep_embed=embed, materialize=materialize)
        return x


class SpaceToDepthDownsample(nn.Module):
    """Encoder ``compress_*_res``. The conv's width is its own (``conv_channels``, read from the
    weight: out/prod(stride) in the reference); the block outputs conv_channels·prod(stride)
    channels, and the skip path averages groups of in/conv_channels consecutive space-to-depth
    channels so both paths have that width."""

    def __init__(self, in_channels: int, conv_channels: int, stride: tuple[int, int, int],
                 spatial_padding_mode: str):
        super().__init__()
        if in_channels % conv_channels:
            raise ConfigError(f"SpaceToDepthDownsample: input width {in_channels} is not a multiple of the conv "
                              f"width {conv_channels}; the skip path cannot average equal channel groups")
        self.stride = tuple(stride)
        self.group_size = in_channels // conv_channels
        self.out_channels = conv_channels * math.prod(stride)
        self.conv = CausalConv3d(in_channels, conv_channels, 3, spatial_padding_mode)

    def __call__(self, x: mx.array, causal: bool = True) -> mx.array:
        if self.stride[0] == 2:
            # frame 0 doubled so the 1 + 8k frames pair up; the latent's first frame sees frame 0 alone
            x = mx.concatenate([x[:, :1], x], axis=1)
        skip = space_to_depth(x, self.stride)
        if self.group_size > 1:
            skip = skip.reshape(*skip.shape[:-1], self.out_channels, self.group_size).mean(axis=-1)
        return space_to_depth(self.conv(x, causal=causal), self.stride) + skip


class DepthToSpaceUpsample(nn.Module):
    """Decoder ``compress_*``: conv to ``conv_channels`` (read from the weight:
    prod(stride)·in/multiplier in the reference), then depth-to-space; a time stride drops the
    first output frame (the encoder's doubled frame 0). ``residual`` adds the depth-to-space of
    the input, its channels tiled out to the output width."""

    def __init__(self, in_channels: int, conv_channels: int, stride: tuple[int, int, int], residual: bool,
                 spatial_padding_mode: str):
        super().__init__()
        self.stride = tuple(stride)
        prod = math.prod(stride)
        if conv_channels % prod:
            raise ConfigError(f"DepthToSpaceUpsample: conv width {conv_channels} is not a multiple of the stride "
                              f"volume {prod}")
        self.out_channels = conv_channels // prod
        self.residual = residual
        if residual:
            if in_channels % prod or self.out_channels % (in_channels // prod):
                raise ConfigError(f"DepthToSpaceUpsample: residual path cannot map {in_channels} channels to "
                                  f"{self.out_channels} with stride {stride}")
            self.num_repeat = self.out_channels // (in_channels // prod)
        self.conv = CausalConv3d(in_channels, conv_channels, 3, spatial_padding_mode)

    def __call__(self, x: mx.array, causal: bool = True, materialize: bool = False) -> mx.array:
        if self.residual:
            # torch .repeat tiles the whole channel block: channel r·C + c holds c
            x_in = mx.tile(depth_to_space(x, self.stride), (1, 1, 1, 1, self.num_repeat))
            if self.stride[0] == 2:
                x_in = x_in[:, 1:]
        y = depth_to_space(self.conv(x, causal=causal, materialize=materialize), self.stride)
        if self.stride[0] == 2:
            y = y[:, 1:]
        return _materialized(y + x_in if self.residual else y, materialize)


class PerChannelStatistics(nn.Module):
    """Latent statistics ``mean-of-means`` / ``std-of-means`` (the checkpoint's names, hyphens
    included). ``axis`` is the channel axis: 1 for the reference layout (B, C, F, H, W)."""

    def __init__(self, latent_channels: int):
        super().__init__()
        self["std-of-means"] = mx.ones((latent_channels,))
        self["mean-of-means"] = mx.zeros((latent_channels,))

    def _view(self, name: str, x: mx.array, axis: int) -> mx.array:
        shape = [1] * x.ndim
        shape[axis] = -1
        return self[name].astype(x.dtype).reshape(shape)

    def normalize(self, x: mx.array, axis: int = 1) -> mx.array:
        return (x - self._view("mean-of-means", x, axis)) / self._view("std-of-means", x, axis)

    def un_normalize(self, x: mx.array, axis: int = 1) -> mx.array:
        return x * self._view("std-of-means", x, axis) + self._view("mean-of-means", x, axis)


def block_params(block) -> tuple[str, dict]:
    """A config block entry ``[name, int | dict]`` as (name, dict); an int is ``num_layers``."""
    name, params = block
    return name, ({"num_layers": params} if isinstance(params, int) else dict(params or {}))


def width_from(shapes: dict[str, tuple[int, ...]] | None, key: str, derived: int, axis: int = 0) -> int:
    """A layer width from its checkpoint weight when known (the rule: weights beat derivations),
    else the reference's derivation."""
    if shapes is not None and key in shapes:
        return int(shapes[key][axis])
    return derived
