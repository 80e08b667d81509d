"""Building blocks of the vocoders (``ltx_core/model/audio_vae/vocoder.py`` and ``resnet.py``):
1-D convolutions with the reference's paddings, the anti-aliased (BigVGAN v2) activation path
and the two residual block types.

Layout inside: channels-last ``(B, T, C)``. Every layer computes in the dtype of its input and
casts its weights to it, like ``torch.autocast``; the callers decide that dtype (the 2.3
vocoder forces float32, the 19B one runs in its weight dtype). PyTorch weights are converted
in ``from_torch`` (called by the vocoder's ``sanitize``), never renamed.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .activations import leaky_relu_rounded_once

LRELU_SLOPE = 0.1  # resnet.py: the slope inside ResBlock1 and before each upsample


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return int((kernel_size * dilation - dilation) / 2)


def _same_padding(kernel_size: int, dilation: int) -> tuple[int, int]:
    # torch padding="same": the odd sample of an even total goes to the right
    total = dilation * (kernel_size - 1)
    return total // 2, total - total // 2


def _cast(w: mx.array, x: mx.array) -> mx.array:
    return w if w.dtype == x.dtype else w.astype(x.dtype)


class Conv1d(nn.Module):
    """torch.nn.Conv1d; weight stored MLX-style (O, K, I)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | tuple[int, int] = 0, dilation: int = 1, bias: bool = True):
        super().__init__()
        self.stride = stride
        self.dilation = dilation
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.weight = mx.zeros((out_channels, kernel_size, in_channels))
        if bias:
            self.bias = mx.zeros((out_channels,))

    @staticmethod
    def from_torch(leaf: str, value: mx.array) -> mx.array:
        return value.transpose(0, 2, 1) if leaf == "weight" else value

    def __call__(self, x: mx.array) -> mx.array:
        left, right = self.padding
        w = _cast(self.weight, x)
        if self.dilation > 1 and self.stride == 1 and mx.default_device() == mx.cpu:
            y = _dilated_conv_im2col(mx.pad(x, [(0, 0), (left, right), (0, 0)]), w, self.dilation)
        else:
            if left != right:
                x = mx.pad(x, [(0, 0), (left, right), (0, 0)])
                left = 0
            y = mx.conv1d(x, w, stride=self.stride, padding=left, dilation=self.dilation)
        return y + _cast(self.bias, y) if "bias" in self else y


def _dilated_conv_im2col(x: mx.array, weight: mx.array, dilation: int) -> mx.array:
    """Unpadded stride-1 dilated conv as one GEMM over the gathered taps. MLX's CPU backend
    runs dilated kernels on a naive path about 5x slower than this; the result is the same
    (its fast path is this very im2col GEMM)."""
    out_ch, k, in_ch = weight.shape
    length = x.shape[1] - dilation * (k - 1)
    cols = mx.concatenate([x[:, i * dilation:i * dilation + length] for i in range(k)], axis=-1)
    return cols @ weight.reshape(out_ch, k * in_ch).T


class ConvTranspose1d(nn.Module):
    """torch.nn.ConvTranspose1d; PyTorch keeps (I, O, K), MLX wants (O, K, I)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.weight = mx.zeros((out_channels, kernel_size, in_channels))
        self.bias = mx.zeros((out_channels,))

    @staticmethod
    def from_torch(leaf: str, value: mx.array) -> mx.array:
        return value.transpose(1, 2, 0) if leaf == "weight" else value

    def __call__(self, x: mx.array) -> mx.array:
        y = mx.conv_transpose1d(x, _cast(self.weight, x), stride=self.stride, padding=self.padding)
        return y + _cast(self.bias, y)


def depthwise_conv(x: mx.array, taps: mx.array, stride: int) -> mx.array:
    """The same 1-D filter on every channel (torch ``conv1d(groups=C)`` with an expanded
    filter), as a sum of strided slices: several times faster than a grouped convolution on
    the CPU backend, and these filters run twice per anti-aliased activation."""
    k = taps.shape[0]
    n = (x.shape[1] - k) // stride + 1
    span = stride * (n - 1) + 1
    y = x[:, 0:span:stride] * taps[0]
    for i in range(1, k):
        y = y + x[:, i:i + span:stride] * taps[i]
    return y


def depthwise_conv_transpose(x: mx.array, taps: mx.array, stride: int) -> mx.array:
    """torch ``conv_transpose1d(groups=C)`` with one filter for all channels, full output
    length ``(T-1)·stride + K``, computed per output phase (polyphase) so no zeros are
    multiplied."""
    k = taps.shape[0]
    j = -(-k // stride)
    if j * stride != k:
        taps = mx.concatenate([taps, mx.zeros((j * stride - k,), taps.dtype)])
    t = x.shape[1]
    xz = mx.pad(x, [(0, 0), (j - 1, j - 1), (0, 0)])
    q = t + j - 1
    phases = []
    for r in range(stride):
        y = xz[:, j - 1:j - 1 + q] * taps[r]
        for m in range(1, j):
            y = y + xz[:, j - 1 - m:j - 1 - m + q] * taps[r + stride * m]
        phases.append(y)
    y = mx.stack(phases, axis=2).reshape(x.shape[0], q * stride, x.shape[2])
    return y[:, :(t - 1) * stride + k]


def _replicate_pad(x: mx.array, left: int, right: int) -> mx.array:
    return mx.pad(x, [(0, 0), (left, right), (0, 0)], mode="edge")


class LowPassFilter1d(nn.Module):
    """Kaiser-sinc low-pass; ``filter`` [1, 1, K] is a persistent buffer, so it is loaded from
    the checkpoint, not recomputed."""

    def __init__(self, stride: int = 1, kernel_size: int = 12):
        super().__init__()
        even = kernel_size % 2 == 0
        self.pad_left = kernel_size // 2 - int(even)
        self.pad_right = kernel_size // 2
        self.stride = stride
        self.filter = mx.zeros((1, 1, kernel_size))

    def __call__(self, x: mx.array) -> mx.array:
        x = _replicate_pad(x, self.pad_left, self.pad_right)
        return depthwise_conv(x, _cast(self.filter.reshape(-1), x), self.stride)


class DownSample1d(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.lowpass = LowPassFilter1d(stride=ratio, kernel_size=kernel_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.lowpass(x)


class UpSample1d(nn.Module):
    """Zero-stuffing upsampler: replicate-pad, transposed conv with a sinc filter, scale by the
    ratio, crop. Kaiser window (anti-aliased activations): ``filter`` is a persistent buffer,
    loaded. Hann window (the BWE skip path, the twin of ``torchaudio.functional.resample``):
    the reference registers it non-persistent, so it is computed here, under ``_filter``."""

    def __init__(self, ratio: int = 2, kernel_size: int | None = None, window_type: str = "kaiser"):
        super().__init__()
        self.ratio = ratio
        if window_type == "hann":
            rolloff, lowpass_filter_width = 0.99, 6
            width = math.ceil(lowpass_filter_width / rolloff)
            self.kernel_size = 2 * width * ratio + 1
            self.pad = width
            self.pad_left = 2 * width * ratio
            self.pad_right = self.kernel_size - ratio
            self._filter = _hann_sinc_filter(ratio, self.kernel_size, width, rolloff, lowpass_filter_width)
        elif window_type == "kaiser":
            self.kernel_size = int(6 * ratio // 2) * 2 if kernel_size is None else kernel_size
            self.pad = self.kernel_size // ratio - 1
            self.pad_left = self.pad * ratio + (self.kernel_size - ratio) // 2
            self.pad_right = self.pad * ratio + (self.kernel_size - ratio + 1) // 2
            self.filter = mx.zeros((1, 1, self.kernel_size))
        else:
            raise ValueError(f"UpSample1d: unsupported window_type {window_type!r} (kaiser or hann)")

    def __call__(self, x: mx.array) -> mx.array:
        taps = self._filter if "filter" not in self else self.filter.reshape(-1)
        x = _replicate_pad(x, self.pad, self.pad)
        y = self.ratio * depthwise_conv_transpose(x, _cast(taps, x), self.ratio)
        return y[:, self.pad_left:y.shape[1] - self.pad_right]


def _hann_sinc_filter(ratio: int, kernel_size: int, width: int, rolloff: float, lowpass_filter_width: int) -> mx.array:
    # float32 throughout, step by step as the reference's torch ops, so the taps agree bit-for-bit
    # up to the last ulp of sin/cos
    f32 = np.float32
    time_axis = (np.arange(kernel_size, dtype=f32) / f32(ratio) - f32(width)) * f32(rolloff)
    clamped = np.clip(time_axis, -lowpass_filter_width, lowpass_filter_width).astype(f32)
    window = np.cos(clamped * f32(math.pi) / f32(lowpass_filter_width) / f32(2)).astype(f32) ** 2
    pix = time_axis * f32(math.pi)
    sinc = np.where(time_axis == 0, f32(1), np.sin(pix) / np.where(pix == 0, f32(1), pix)).astype(f32)
    return mx.array((sinc * window * f32(rolloff) / f32(ratio)).astype(f32))


class Snake(nn.Module):
    """x + 1/α · sin²(αx), α stored as log α when ``alpha_logscale`` (the reference default)."""

    def __init__(self, in_features: int, alpha_logscale: bool = True):
        super().__init__()
        self.alpha_logscale = alpha_logscale
        self.alpha = mx.zeros((in_features,)) if alpha_logscale else mx.ones((in_features,))
        self.eps = 1e-9

    def __call__(self, x: mx.array) -> mx.array:
        alpha = _cast(self.alpha, x)
        if self.alpha_logscale:
            alpha = mx.exp(alpha)
        return x + (1.0 / (alpha + self.eps)) * mx.square(mx.sin(x * alpha))


class SnakeBeta(nn.Module):
    """x + 1/β · sin²(αx), with separate log-scale α (frequency) and β (magnitude)."""

    def __init__(self, in_features: int, alpha_logscale: bool = True):
        super().__init__()
        self.alpha_logscale = alpha_logscale
        init = mx.zeros if alpha_logscale else mx.ones
        self.alpha = init((in_features,))
        self.beta = init((in_features,))
        self.eps = 1e-9

    def __call__(self, x: mx.array) -> mx.array:
        alpha, beta = _cast(self.alpha, x), _cast(self.beta, x)
        if self.alpha_logscale:
            alpha, beta = mx.exp(alpha), mx.exp(beta)
        return x + (1.0 / (beta + self.eps)) * mx.square(mx.sin(x * alpha))


class Activation1d(nn.Module):
    """Anti-aliased activation: ×2 upsample, activation, ×2 low-pass downsample."""

    def __init__(self, activation: nn.Module, up_ratio: int = 2, down_ratio: int = 2,
                 up_kernel_size: int = 12, down_kernel_size: int = 12):
        super().__init__()
        self.act = activation
        self.upsample = UpSample1d(up_ratio, up_kernel_size)
        self.downsample = DownSample1d(down_ratio, down_kernel_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.downsample(self.act(self.upsample(x)))


class AMPBlock1(nn.Module):
    """BigVGAN v2 residual block: three (act, dilated conv, act, conv) branches, added in turn.
    Paddings are ``get_padding`` (symmetric), not "same"."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: tuple = (1, 3, 5), activation: str = "snake"):
        super().__init__()
        act_cls = SnakeBeta if activation == "snakebeta" else Snake
        self.convs1 = [Conv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d))
                       for d in dilation]
        self.convs2 = [Conv1d(channels, channels, kernel_size, dilation=1, padding=get_padding(kernel_size, 1))
                       for _ in dilation]
        self.acts1 = [Activation1d(act_cls(channels)) for _ in dilation]
        self.acts2 = [Activation1d(act_cls(channels)) for _ in dilation]

    def __call__(self, x: mx.array) -> mx.array:
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.acts1, self.acts2):
            x = x + c2(a2(c1(a1(x))))
        return x


class ResBlock1(nn.Module):
    """HiFi-GAN resblock "1" (``resnet.py``): LeakyReLU(0.1) around dilated "same" convs."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: tuple = (1, 3, 5)):
        super().__init__()
        self.convs1 = [Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
                       for d in dilation]
        self.convs2 = [Conv1d(channels, channels, kernel_size, dilation=1, padding=_same_padding(kernel_size, 1))
                       for _ in dilation]

    def __call__(self, x: mx.array) -> mx.array:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            xt = conv1(leaky_relu_rounded_once(x, LRELU_SLOPE))
            x = conv2(leaky_relu_rounded_once(xt, LRELU_SLOPE)) + x
        return x
