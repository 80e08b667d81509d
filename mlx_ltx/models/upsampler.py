"""Latent upsamplers: the reference's ``LatentUpsampler`` and ``upsample_video``
(``ltx_core/model/upsampler/``).

One network, three released variants picked by the file's flat ``config``:

* spatial x2: a per-frame Conv2d to 4·mid channels, then a 2-D pixel shuffle;
* spatial x1.5 (``rational_resampler``): ``SpatialRationalResampler``, a per-frame Conv2d to
  num²·mid channels, a pixel shuffle by num, then a fixed binomial blur with stride den;
* temporal x2: a Conv3d to 2·mid channels, a pixel shuffle over time, and the first frame
  dropped (F -> 2F-1), since latent frame 0 stands for a single pixel frame.

Public tensors are channel-first ``[B, C, F, H, W]``; inside, activations are channels-last,
which is what MLX convolutions take.
"""

from __future__ import annotations

import math
import os

import mlx.core as mx
import mlx.nn as nn

from ..config import UpsamplerConfig
from ..loading import Checkpoint, CheckpointError, load_component, load_strict, open_checkpoint
from .activations import silu_rounded_once
from .video_vae_ops import PerChannelStatistics

GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-5  # torch.nn.GroupNorm's default, which the reference keeps

# ``_rational_for_scale``: the only scales the reference's resampler accepts
RATIONAL_SCALES = {0.75: (3, 4), 1.5: (3, 2), 2.0: (2, 1), 4.0: (4, 1)}


class GroupNorm(nn.Module):
    """``torch.nn.GroupNorm`` on channels-last input: groups are runs of adjacent channels
    (several per group once mid > 32), statistics over the group and every non-batch axis.
    Statistics are taken in float32 so a bfloat16 model does not lose them to rounding."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = GROUP_NORM_EPS):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.weight = mx.ones((num_channels,))
        self.bias = mx.zeros((num_channels,))

    def __call__(self, x: mx.array) -> mx.array:
        shape = x.shape
        g = x.astype(mx.float32).reshape(shape[0], -1, self.num_groups, shape[-1] // self.num_groups)
        mean = mx.mean(g, axis=(1, 3), keepdims=True)
        var = mx.var(g, axis=(1, 3), keepdims=True)
        g = (g - mean) * mx.rsqrt(var + self.eps)
        y = g.reshape(shape) * self.weight.astype(mx.float32) + self.bias.astype(mx.float32)
        return y.astype(x.dtype)


def _conv_rounded_once(conv: nn.Module, x: mx.array, conv_fn) -> mx.array:
    """Convolution + bias rounded once to a low-precision ``x.dtype``, as torch rounds it: torch
    adds the bias to the float32 accumulator before its one rounding, MLX rounds the bf16
    convolution and then the bias sum again. So the input and weights are upcast (exactly) and
    convolved in float32. (With the activations rounded once too, the upsampler's bf16 outputs
    equal the reference's own bf16 run on most fixture outputs.) The float32 copies are
    transient and latent-sized (input, output, one conv's weights). Float32 inputs keep MLX's conv."""
    y = conv_fn(x.astype(mx.float32), conv.weight.astype(mx.float32), conv.stride, conv.padding, conv.dilation)
    if "bias" in conv:
        y = y + conv.bias.astype(mx.float32)
    return y.astype(x.dtype)


class Conv2dRoundedOnce(nn.Conv2d):
    """``nn.Conv2d`` rounding a bf16 result once (``_conv_rounded_once``)."""

    def __call__(self, x: mx.array) -> mx.array:
        return super().__call__(x) if x.dtype == mx.float32 else _conv_rounded_once(self, x, mx.conv2d)


class Conv3dRoundedOnce(nn.Conv3d):
    """``nn.Conv3d`` rounding a bf16 result once (``_conv_rounded_once``)."""

    def __call__(self, x: mx.array) -> mx.array:
        return super().__call__(x) if x.dtype == mx.float32 else _conv_rounded_once(self, x, mx.conv3d)


def _conv(dims: int, in_channels: int, out_channels: int) -> nn.Module:
    # every convolution of the upsampler is k3, zero padding 1 (not the VAE's causal padding)
    cls = Conv2dRoundedOnce if dims == 2 else Conv3dRoundedOnce
    return cls(in_channels, out_channels, kernel_size=3, padding=1)


class ResBlock(nn.Module):
    """conv, GN, SiLU, conv, GN, then SiLU of the sum with the input (the activation comes
    after the residual add, unlike the VAE's blocks)."""

    def __init__(self, channels: int, dims: int = 3):
        super().__init__()
        self.conv1 = _conv(dims, channels, channels)
        self.norm1 = GroupNorm(GROUP_NORM_GROUPS, channels)
        self.conv2 = _conv(dims, channels, channels)
        self.norm2 = GroupNorm(GROUP_NORM_GROUPS, channels)

    def __call__(self, x: mx.array) -> mx.array:
        h = silu_rounded_once(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return silu_rounded_once(h + x)


class PixelShuffleND(nn.Module):
    """Channels-last twin of the reference's einops pixel shuffle. The reference splits the
    channel axis as (c, p1, p2, p3), factors minor, so the factor index varies fastest.

    dims 3: (B, D, H, W, c·p1·p2·p3) -> (B, D·p1, H·p2, W·p3, c)
    dims 2: (N, H, W, c·p1·p2) -> (N, H·p1, W·p2, c)
    dims 1: (B, F, H, W, c·p1) -> (B, F·p1, H, W, c)
    """

    def __init__(self, dims: int, upscale_factors: tuple[int, ...] = (2, 2, 2)):
        super().__init__()
        if dims not in (1, 2, 3):
            raise ValueError(f"PixelShuffleND: dims must be 1, 2 or 3, got {dims}")
        self.dims = dims
        self.upscale_factors = tuple(upscale_factors)

    def __call__(self, x: mx.array) -> mx.array:
        p = self.upscale_factors
        if self.dims == 3:
            b, d, h, w, ct = x.shape
            c = ct // (p[0] * p[1] * p[2])
            x = x.reshape(b, d, h, w, c, p[0], p[1], p[2]).transpose(0, 1, 5, 2, 6, 3, 7, 4)
            return x.reshape(b, d * p[0], h * p[1], w * p[2], c)
        if self.dims == 2:
            n, h, w, ct = x.shape
            c = ct // (p[0] * p[1])
            x = x.reshape(n, h, w, c, p[0], p[1]).transpose(0, 1, 4, 2, 5, 3)
            return x.reshape(n, h * p[0], w * p[1], c)
        b, f, h, w, ct = x.shape
        c = ct // p[0]
        x = x.reshape(b, f, h, w, c, p[0]).transpose(0, 1, 5, 2, 3, 4)
        return x.reshape(b, f * p[0], h, w, c)


def binomial_kernel(kernel_size: int) -> mx.array:
    """The reference's normalised 2-D binomial blur (a Pascal-triangle row, outer product)."""
    row = mx.array([math.comb(kernel_size - 1, k) for k in range(kernel_size)], dtype=mx.float32)
    k2d = row[:, None] * row[None, :]
    return k2d / k2d.sum()


class BlurDownsample(nn.Module):
    """Anti-aliased downsampling of H, W by an integer stride: a depthwise blur, stride
    ``stride``, zero padding k//2. The reference registers the kernel as a persistent buffer,
    so the released files store it and it is loaded like any weight (the oracle's fixture files
    even store a random one, and the reference blurs with that); the binomial kernel computed
    here is only the initial value, as in the reference."""

    def __init__(self, dims: int, stride: int, kernel_size: int = 5):
        super().__init__()
        if dims not in (2, 3) or stride < 1 or kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"BlurDownsample: unsupported dims={dims}, stride={stride}, kernel_size={kernel_size}")
        self.dims = dims
        self.stride = stride
        self.kernel_size = kernel_size
        self.kernel = binomial_kernel(kernel_size)[None, None]

    def __call__(self, x: mx.array) -> mx.array:
        if self.stride == 1:
            return x
        lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
        x = x.reshape(-1, h, w, c)  # dims 3: every frame on its own
        weight = mx.broadcast_to(self.kernel.reshape(1, self.kernel_size, self.kernel_size, 1).astype(x.dtype),
                                 (c, self.kernel_size, self.kernel_size, 1))
        y = mx.conv2d(x, weight, stride=self.stride, padding=self.kernel_size // 2, groups=c)
        return y.reshape(*lead, *y.shape[1:])


class SpatialRationalResampler(nn.Module):
    """Spatial scaling by num/den: per-frame conv to num²·mid channels, pixel shuffle by num,
    blur-downsample by den. Takes (B, F, H, W, C)."""

    def __init__(self, mid_channels: int, scale: float):
        super().__init__()
        self.scale = float(scale)
        if self.scale not in RATIONAL_SCALES:
            raise ValueError(f"upsampler config spatial_scale={scale} with rational_resampler: the reference "
                             f"supports only {sorted(RATIONAL_SCALES)}")
        self.num, self.den = RATIONAL_SCALES[self.scale]
        self.conv = Conv2dRoundedOnce(mid_channels, self.num**2 * mid_channels, kernel_size=3, padding=1)
        self.pixel_shuffle = PixelShuffleND(2, upscale_factors=(self.num, self.num))
        self.blur_down = BlurDownsample(dims=2, stride=self.den)

    def __call__(self, x: mx.array) -> mx.array:
        b, f = x.shape[:2]
        y = self.blur_down(self.pixel_shuffle(self.conv(x.reshape(b * f, *x.shape[2:]))))
        return y.reshape(b, f, *y.shape[1:])


def check_upsampler_config(config: UpsamplerConfig) -> None:
    """Reject what the reference cannot build or run, naming the config key."""
    if config.dims not in (2, 3):
        raise ValueError(f"upsampler config dims={config.dims}: must be 2 or 3")
    if not (config.spatial_upsample or config.temporal_upsample):
        raise ValueError("upsampler config: either spatial_upsample or temporal_upsample must be true")
    if config.dims == 2 and config.temporal_upsample:
        # the reference applies a Conv3d to per-frame 4-D tensors there: not a working model
        raise ValueError("upsampler config dims=2 with temporal_upsample=true is not supported (the reference "
                         "cannot run it either)")
    if config.dims == 2 and config.spatial_upsample and config.rational_resampler:
        raise ValueError("upsampler config dims=2 with rational_resampler=true is not supported (the "
                         "reference's resampler needs 5-D latents)")
    if config.mid_channels % GROUP_NORM_GROUPS:
        raise ValueError(f"upsampler config mid_channels={config.mid_channels}: GroupNorm needs a multiple of "
                         f"{GROUP_NORM_GROUPS}")


class LatentUpsampler(nn.Module):
    """Upsamples video latents [B, C, F, H, W] spatially and/or temporally (not normalised:
    ``upsample_video`` wraps it with the VAE's latent statistics)."""

    def __init__(self, config: UpsamplerConfig):
        super().__init__()
        check_upsampler_config(config)
        self.config = config
        self.in_channels = config.in_channels
        self.dims = config.dims
        self.temporal_upsample = config.temporal_upsample
        mid, dims = config.mid_channels, config.dims

        self.initial_conv = _conv(dims, config.in_channels, mid)
        self.initial_norm = GroupNorm(GROUP_NORM_GROUPS, mid)
        self.res_blocks = [ResBlock(mid, dims) for _ in range(config.num_blocks_per_stage)]

        # the reference's branch order; spatial+temporal shuffles all three axes at once
        self.rational = False
        if config.spatial_upsample and config.temporal_upsample:
            self.upsampler = [Conv3dRoundedOnce(mid, 8 * mid, kernel_size=3, padding=1), PixelShuffleND(3)]
        elif config.spatial_upsample:
            if config.rational_resampler:
                self.rational = True
                self.upsampler = SpatialRationalResampler(mid, config.spatial_scale)
            else:
                # spatial_scale is not read here by the reference either: this branch is always x2
                self.upsampler = [Conv2dRoundedOnce(mid, 4 * mid, kernel_size=3, padding=1), PixelShuffleND(2)]
        else:
            self.upsampler = [Conv3dRoundedOnce(mid, 2 * mid, kernel_size=3, padding=1), PixelShuffleND(1)]

        self.post_upsample_res_blocks = [ResBlock(mid, dims) for _ in range(config.num_blocks_per_stage)]
        self.final_conv = _conv(dims, mid, config.in_channels)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, dtype: mx.Dtype = mx.float32) -> "LatentUpsampler":
        config = checkpoint.upsampler_config
        model = cls(config)
        load_component(checkpoint, "upsampler", model, dtype=dtype)
        return model

    @classmethod
    def from_file(cls, path: str | os.PathLike, dtype: mx.Dtype = mx.float32) -> "LatentUpsampler":
        return cls.from_checkpoint(Checkpoint(path), dtype=dtype)

    def sanitize(self, key: str, value: mx.array) -> mx.array:
        # PyTorch conv kernels (O, I, *k) -> MLX (O, *k, I); the blur buffer keeps its shape
        if key.endswith(".weight") and value.ndim == 5:
            return value.transpose(0, 2, 3, 4, 1)
        if key.endswith(".weight") and value.ndim == 4:
            return value.transpose(0, 2, 3, 1)
        return value

    def _upsample(self, x: mx.array) -> mx.array:
        if self.rational:
            return self.upsampler(x)
        conv, shuffle = self.upsampler
        if self.temporal_upsample:
            return shuffle(conv(x))[:, 1:]
        if self.dims == 2:
            return shuffle(conv(x))
        b, f = x.shape[:2]
        y = shuffle(conv(x.reshape(b * f, *x.shape[2:])))
        return y.reshape(b, f, *y.shape[1:])

    def __call__(self, latent: mx.array) -> mx.array:
        if latent.ndim != 5 or latent.shape[1] != self.in_channels:
            raise ValueError(f"LatentUpsampler: expected a latent [B, {self.in_channels}, F, H, W], got shape "
                             f"{tuple(latent.shape)}")
        b, _, f = latent.shape[:3]
        x = latent.transpose(0, 2, 3, 4, 1)
        if self.dims == 2:
            # dims 2 runs every frame alone, so even the GroupNorm statistics are per frame
            x = x.reshape(b * f, *x.shape[2:])
        x = silu_rounded_once(self.initial_norm(self.initial_conv(x)))
        for block in self.res_blocks:
            x = block(x)
        x = self._upsample(x)
        for block in self.post_upsample_res_blocks:
            x = block(x)
        x = self.final_conv(x)
        if self.dims == 2:
            x = x.reshape(b, f, *x.shape[1:])
        return x.transpose(0, 4, 1, 2, 3)


def load_latent_statistics(checkpoint: Checkpoint | str | os.PathLike,
                           dtype: mx.Dtype = mx.float32) -> PerChannelStatistics:
    """Only the video VAE's per-channel latent statistics (``vae.per_channel_statistics.*``),
    strictly loaded from the main checkpoint without building the VAE: the two-stage hand-off
    needs them while the encoder itself can stay unloaded."""
    ckpt = open_checkpoint(checkpoint)
    prefix = "per_channel_statistics."
    names = {k: v for k, v in ckpt.component_keys("vae_encoder").items() if k.startswith(prefix)}
    key = prefix + "mean-of-means"
    if key not in names:  # (a split video-VAE file holds them unprefixed)
        raise CheckpointError(f"{ckpt.path}: missing the video VAE latent statistics 'vae.{key}'")
    stats = PerChannelStatistics(ckpt.shapes[names[key]][0])
    arrays, _ = ckpt.component_weights("vae_encoder")  # lazy: only the two statistics are read
    weights = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    # the reference casts the statistics to the build dtype like every other tensor
    return load_strict(stats, weights, source=ckpt.path, dtype=dtype,
                       origin=lambda k: names.get(prefix + k, "vae." + prefix + k))


def upsample_video(latent: mx.array, statistics, upsampler: LatentUpsampler) -> mx.array:
    """Normalised latent [B, C, F, H, W] -> upsampled normalised latent: the upsampler works
    on raw VAE means, so un-normalise first and normalise after. ``statistics`` is anything
    with ``normalize``/``un_normalize`` over axis 1: the statistics of
    :func:`load_latent_statistics` or the video encoder (the reference passes the encoder)."""
    return statistics.normalize(upsampler(statistics.un_normalize(latent)))
