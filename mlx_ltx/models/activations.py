"""Elementwise activations rounded once, as torch rounds them.

torch's SiLU, GELU(tanh), sigmoid and LeakyReLU on a bfloat16 (or float16) tensor compute in
float32 and round the result to the tensor's dtype once. MLX's ``nn.silu``, ``nn.gelu_approx``,
``mx.sigmoid`` and ``nn.leaky_relu`` on a bfloat16 array round every intermediate instead (the
sigmoid, then the product; GELU's and LeakyReLU's constants are even rounded to bfloat16 first).
The extra roundings add up: the LTX-2.3 temporal ×2 upsampler missed the reference's float32
output by 5.2e-2 in bfloat16 (the reference's own bfloat16 run: 2.2e-2), 2.5e-2 once its SiLUs
rounded once (and exactly the reference's bf16 output once its convolutions did too, see
``upsampler.py``).

Each helper below casts a low-precision input to float32, applies the MLX activation and casts
back: one rounding, like torch. The chain is ``mx.compile``d so that it fuses into one
elementwise kernel and the float32 temporaries never reach memory (peak memory as MLX's own
bf16 activation: the output only). A float32 input calls the very same MLX function as before,
so float32 results are bit-identical to the uncast activations.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn


@partial(mx.compile, shapeless=True)
def _silu_f32(x: mx.array) -> mx.array:
    return nn.silu(x.astype(mx.float32)).astype(x.dtype)


# not shapeless: MLX 0.32 (CPU) leaves a shapeless cast + GELU chain unfused, with two float32
# temporaries of the input's size; compiled per shape it fuses (retracing a new shape: < 1 ms)
@mx.compile
def _gelu_approx_f32(x: mx.array) -> mx.array:
    return nn.gelu_approx(x.astype(mx.float32)).astype(x.dtype)


@partial(mx.compile, shapeless=True)
def _sigmoid_f32(x: mx.array) -> mx.array:
    return mx.sigmoid(x.astype(mx.float32)).astype(x.dtype)


@partial(mx.compile, shapeless=True)
def _leaky_relu_f32(x: mx.array, negative_slope: mx.array) -> mx.array:
    return nn.leaky_relu(x.astype(mx.float32), negative_slope).astype(x.dtype)


def silu_rounded_once(x: mx.array) -> mx.array:
    """``x·sigmoid(x)`` (torch ``SiLU``), computed in float32 and rounded once to ``x.dtype``."""
    return nn.silu(x) if x.dtype == mx.float32 else _silu_f32(x)


def gelu_tanh_rounded_once(x: mx.array) -> mx.array:
    """torch ``GELU(approximate="tanh")``, computed in float32 and rounded once to ``x.dtype``."""
    return nn.gelu_approx(x) if x.dtype == mx.float32 else _gelu_approx_f32(x)


def sigmoid_rounded_once(x: mx.array) -> mx.array:
    """torch ``sigmoid``, computed in float32 and rounded once to ``x.dtype``."""
    return mx.sigmoid(x) if x.dtype == mx.float32 else _sigmoid_f32(x)


def leaky_relu_rounded_once(x: mx.array, negative_slope: float = 0.01) -> mx.array:
    """torch ``leaky_relu`` (slope taken in float32), computed in float32 and rounded once to
    ``x.dtype``."""
    if x.dtype == mx.float32:
        return nn.leaky_relu(x, negative_slope)
    return _leaky_relu_f32(x, mx.array(negative_slope, mx.float32))


class LeakyReLURoundedOnce(nn.Module):
    """torch ``nn.LeakyReLU`` as a module, via ``leaky_relu_rounded_once``."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self._negative_slope = negative_slope

    def __call__(self, x: mx.array) -> mx.array:
        return leaky_relu_rounded_once(x, self._negative_slope)
