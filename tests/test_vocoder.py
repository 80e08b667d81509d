"""Vocoder parity with the reference (golden_vocoder): LTX-2.3 ``VocoderWithBWE`` (16 kHz
BigVGAN v2 + bandwidth extension to 48 kHz) and LTX-2 19B's HiFi-GAN ``Vocoder`` (24 kHz).

bf16 means weights stored in bfloat16. The 19B vocoder then also computes in bfloat16 (fed a
bf16 mel), as the reference runs it in its build dtype. The 2.3 one computes in float32 whatever
the dtypes, as the reference forces; it is compared on the golden float32 mel, because these
random-weight fixtures amplify a bf16 rounding of the input mel: the reference itself drifts
3.0e-2 (real23) / 2.7e-2 (alt) from its own golden when fed the bf16-rounded mel, so that
comparison cannot show anything about the port.
"""

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_BF16, TOL_F32, rel_err

from mlx_ltx.config import ConfigError, VocoderConfig
from mlx_ltx.models.vocoder import Vocoder, VocoderWithBWE, build_vocoder, load_vocoder
from mlx_ltx.models.vocoder_blocks import Conv1d, Snake, SnakeBeta


def _run(fixture_set, dtype):
    g = fixture_set.golden("vocoder")
    model = load_vocoder(fixture_set.checkpoint, dtype=dtype)
    mel = mx.array(g["in.mel"])
    if isinstance(model, Vocoder):
        mel = mel.astype(dtype)
    out = {"waveform": model(mel)}
    if isinstance(model, VocoderWithBWE):
        out["vocoder_only_16k"] = model.vocoder(mel)
    mx.eval(out)
    return model, g, out


@pytest.fixture(scope="module")
def f32_run(fixture_set):
    return _run(fixture_set, mx.float32)


@pytest.fixture(scope="module")
def bf16_run(fixture_set):
    return _run(fixture_set, mx.bfloat16)


def test_builds_the_reference_class(fixture_set, f32_run):
    model, g, _ = f32_run
    cfg = fixture_set.checkpoint.config.vocoder
    assert isinstance(model, VocoderWithBWE if "bwe" in cfg.raw else Vocoder)
    assert model.output_sampling_rate == int(g["meta.output_sampling_rate"][0]) == cfg.output_sampling_rate
    if isinstance(model, VocoderWithBWE):
        rate_16k = int(g["meta.vocoder_sampling_rate"][0])
        assert model.vocoder.output_sampling_rate == model.input_sampling_rate == rate_16k


def test_vocoder_parity_f32(f32_run):
    model, g, out = f32_run
    assert out["waveform"].dtype == mx.float32
    assert rel_err(out["waveform"], g["out.waveform"]) <= TOL_F32
    if isinstance(model, VocoderWithBWE):
        assert rel_err(out["waveform"], g["out.waveform_48k"]) <= TOL_F32
        assert rel_err(out["vocoder_only_16k"], g["out.vocoder_only_16k"]) <= TOL_F32
    else:
        key = f"out.waveform_{model.output_sampling_rate // 1000}k"
        assert rel_err(out["waveform"], g[key]) <= TOL_F32


def test_vocoder_parity_bf16_weights(bf16_run):
    model, g, out = bf16_run
    generator = model.vocoder if isinstance(model, VocoderWithBWE) else model
    assert generator.conv_pre.weight.dtype == mx.bfloat16
    if isinstance(model, VocoderWithBWE):
        # float32 compute on bf16-stored weights (exact: the file holds bf16): float32 tolerance
        assert out["waveform"].dtype == mx.float32
        assert rel_err(out["waveform"], g["out.waveform"]) <= TOL_F32
        assert rel_err(out["vocoder_only_16k"], g["out.vocoder_only_16k"]) <= TOL_F32
    else:
        assert out["waveform"].dtype == mx.bfloat16
        assert rel_err(out["waveform"], g["out.waveform"]) <= TOL_BF16


def test_bwe_computes_in_float32_for_bf16_input(fixture_set, bf16_run):
    """A bf16 mel goes through the same float32 pass; only the result is cast back to bf16."""
    model, g, _ = bf16_run
    if not isinstance(model, VocoderWithBWE):
        pytest.skip("the 19B vocoder computes in its input's dtype, like the reference")
    mel16 = mx.array(g["in.mel"]).astype(mx.bfloat16)
    out16 = model(mel16)
    out32 = model(mel16.astype(mx.float32))
    assert out16.dtype == mx.bfloat16
    assert mx.array_equal(out16, out32.astype(mx.bfloat16)).item()


def test_unsupported_config_values_raise(fixture_set):
    raw = fixture_set.checkpoint.config.vocoder.raw
    if "bwe" in raw:
        cases = [("bwe", "activation", "snake"), ("vocoder", "resblock", "1"), ("bwe", "stereo", None)]
    else:
        cases = [(None, "resblock", "AMP1"), (None, "stereo", None)]
    for section, key, value in cases:
        bad = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
        target = bad[section] if section else bad
        if value is None:
            target.pop(key)
        else:
            target[key] = value
        with pytest.raises(ConfigError, match=key):
            build_vocoder(VocoderConfig.from_section(bad))
    assert isinstance(build_vocoder(VocoderConfig.from_section(raw)), VocoderWithBWE if "bwe" in raw else Vocoder)


def test_snake_is_snakebeta_with_beta_equal_alpha():
    rng = np.random.default_rng(0)
    x = mx.array(rng.standard_normal((2, 9, 5)).astype(np.float32))
    alpha = mx.array(rng.standard_normal(5).astype(np.float32) * 0.3)
    snake, snake_beta = Snake(5), SnakeBeta(5)
    snake.alpha = alpha
    snake_beta.alpha = snake_beta.beta = alpha
    assert mx.allclose(snake(x), snake_beta(x), rtol=0, atol=0).item()
    snake_beta.beta = alpha + 1.0
    assert not mx.allclose(snake(x), snake_beta(x)).item()


def test_dilated_conv_matches_mlx_conv1d():
    """Conv1d's CPU route for dilated kernels (one GEMM over gathered taps) against mx.conv1d."""
    rng = np.random.default_rng(1)
    for length, ch, k, d in ((50, 8, 3, 3), (40, 6, 7, 5), (64, 4, 4, 2)):
        conv = Conv1d(ch, ch + 1, k, dilation=d, padding=(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2))
        conv.weight = mx.array(rng.standard_normal(conv.weight.shape).astype(np.float32))
        conv.bias = mx.array(rng.standard_normal(ch + 1).astype(np.float32))
        x = mx.array(rng.standard_normal((2, length, ch)).astype(np.float32))
        left, right = conv.padding
        want = mx.conv1d(mx.pad(x, [(0, 0), (left, right), (0, 0)]), conv.weight, dilation=d) + conv.bias
        assert conv(x).shape == want.shape
        assert mx.allclose(conv(x), want, rtol=1e-5, atol=1e-5).item()


def test_golden_depends_on_the_mel(fixture_set, f32_run):
    """Guards the fixture itself: if the random weights let the biases drown the input, the
    parity above would not test the mel path (the 19B sets once had that flaw)."""
    model, g, out = f32_run
    silent = model(mx.zeros_like(mx.array(g["in.mel"])))
    assert rel_err(silent, g["out.waveform"]) > 1e-2
