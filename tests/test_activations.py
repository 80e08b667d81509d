"""mlx_ltx.models.activations: torch's single rounding of SiLU / GELU(tanh) / sigmoid / LeakyReLU
on bfloat16 (computed in float32, rounded once), and float32 results unchanged."""

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlx_ltx.models.activations import (
    LeakyReLURoundedOnce,
    gelu_tanh_rounded_once,
    leaky_relu_rounded_once,
    sigmoid_rounded_once,
    silu_rounded_once,
)

CASES = [
    (silu_rounded_once, nn.silu),
    (gelu_tanh_rounded_once, nn.gelu_approx),
    (sigmoid_rounded_once, mx.sigmoid),
    (lambda x: leaky_relu_rounded_once(x, 0.1), lambda x: nn.leaky_relu(x, 0.1)),
    (LeakyReLURoundedOnce(0.01), nn.LeakyReLU(0.01)),
]


def _inputs(dtype):
    x = mx.random.normal((4096,), key=mx.random.key(0)) * 4
    return mx.concatenate([x, mx.array([0.0, -0.0, 80.0, -80.0, 1e4, -1e4])]).astype(dtype)


@pytest.mark.parametrize("ours,mlx_fn", CASES)
def test_float32_is_the_mlx_activation(ours, mlx_fn):
    x = _inputs(mx.float32)
    assert ours(x).dtype == mx.float32
    assert mx.array_equal(ours(x), mlx_fn(x)).item()


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
@pytest.mark.parametrize("ours,mlx_fn", CASES)
def test_low_precision_rounds_once(ours, mlx_fn, dtype):
    x = _inputs(dtype)
    out = ours(x)
    assert out.dtype == dtype
    assert mx.array_equal(out, mlx_fn(x.astype(mx.float32)).astype(dtype)).item()


@pytest.mark.parametrize("ours,mlx_fn", CASES)
def test_mlx_bf16_activation_rounds_more_than_once(ours, mlx_fn):
    """Why the helpers exist: MLX's own bf16 activation is not the once-rounded value."""
    x = _inputs(mx.bfloat16)
    assert not mx.array_equal(ours(x), mlx_fn(x)).item()
