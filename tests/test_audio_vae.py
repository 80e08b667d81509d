"""Audio VAE parity with the reference (golden_audio_vae) and the audio length / token-time rules
(golden_pipeline)."""

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_BF16, TOL_F32, rel_err

from mlx_ltx.config import ConfigError
from mlx_ltx.loading import CheckpointError, load_component
from mlx_ltx.models.audio_vae import (LATENT_DOWNSAMPLE_FACTOR, AudioDecoder, AudioEncoder, AudioLatentShape,
                                     audio_positions)

DTYPES = [(mx.float32, TOL_F32), (mx.bfloat16, TOL_BF16)]


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=["f32", "bf16"])
def test_audio_decoder_parity(fixture_set, dtype, tol):
    g = fixture_set.golden("audio_vae")
    decoder = AudioDecoder.from_checkpoint(fixture_set.checkpoint, dtype)
    latent = g["decode.in.latent"]
    mel = decoder(mx.array(latent).astype(dtype))
    assert mel.dtype == dtype
    # the causal decoder's length rule, read from the reference output rather than assumed
    assert mel.shape[2] == decoder.target_frames(latent.shape[2])
    assert rel_err(mel, g["decode.out.mel"]) <= tol


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=["f32", "bf16"])
def test_audio_encoder_parity(fixture_set, dtype, tol):
    g = fixture_set.golden("audio_vae")
    encoder = AudioEncoder.from_checkpoint(fixture_set.checkpoint, dtype)
    latent = encoder(mx.array(g["encode.in.mel"]).astype(dtype))
    assert latent.dtype == dtype
    assert rel_err(latent, g["encode.out.latent"]) <= tol


def test_audio_latent_shape_and_positions(fixture_set):
    g = fixture_set.golden("pipeline")
    cfg = fixture_set.checkpoint.config.audio_vae
    frames = int(g["geom.video.pixel_shape"][0])
    fps = float(g["geom.fps"][0])
    shape = AudioLatentShape.from_video_pixel_shape(frames, fps, cfg)
    assert list(shape) == g["geom.audio.latent_shape"].tolist()
    positions = audio_positions(shape.frames, cfg)
    assert positions.dtype == mx.float32
    np.testing.assert_array_equal(np.array(positions), g["audio.positions"])


def test_encode_of_decode_keeps_the_latent_length(fixture_set):
    """The decoder's 4T − 3 mel frames (causal) encode back to T latent frames."""
    g = fixture_set.golden("audio_vae")
    latent = mx.array(g["decode.in.latent"])
    mel = AudioDecoder.from_checkpoint(fixture_set.checkpoint)(latent)
    assert AudioEncoder.from_checkpoint(fixture_set.checkpoint)(mel).shape == latent.shape


def test_mismatched_checkpoint_is_named(fixture_set):
    """A module built with another width must fail loudly, naming the tensor (strict loading)."""
    ckpt = fixture_set.checkpoint
    cfg = ckpt.config.audio_vae
    wrong = type(cfg)(**{**cfg.__dict__, "ch": cfg.ch * 2})
    with pytest.raises(CheckpointError, match="conv_in"):
        load_component(ckpt, "audio_vae_decoder", AudioDecoder(wrong))


def test_unsupported_config_values_raise(fixture_set):
    cfg = fixture_set.checkpoint.config.audio_vae
    for field, value in (("attn_type", "linear"), ("norm_type", "layer"), ("causality_axis", "diagonal")):
        bad = type(cfg)(**{**cfg.__dict__, field: value})
        with pytest.raises(ConfigError, match=field):
            AudioDecoder(bad)
    with pytest.raises(ConfigError, match="double_z"):
        AudioEncoder(type(cfg)(**{**cfg.__dict__, "double_z": False}))


def test_audio_spans_the_video(fixture_set):
    """25 frames at 24 fps: latent length by the reference's formula, decoded to mel and
    waveform, then fitted to exactly the video's duration (the reference's own waveform is
    up to one latent frame short at this length, as at 97: the shortfall repeats with period 24
    frames, and at 9, 33, 57, ... frames it is 4.5 ms more than one latent frame)."""
    from mlx_ltx.media import fit_audio_to_video
    from mlx_ltx.models.vocoder import load_vocoder

    cfg = fixture_set.checkpoint.config.audio_vae
    frames, fps = 25, 24.0
    shape = AudioLatentShape.from_video_pixel_shape(frames, fps, cfg)
    latent = mx.random.normal(tuple(shape), key=mx.random.key(0))
    mel = AudioDecoder.from_checkpoint(fixture_set.checkpoint)(latent)
    vocoder = load_vocoder(fixture_set.checkpoint)
    wave = vocoder(mel)
    rate = vocoder.output_sampling_rate
    assert mel.shape[2] == 4 * shape.frames - 3
    if wave.shape[-1] * cfg.sampling_rate != mel.shape[2] * cfg.mel_hop_length * rate:
        pytest.skip("this fixture's vocoder rates do not turn one mel hop into one hop of audio (toy config)")
    short_by = frames / fps - wave.shape[-1] / rate
    assert 0 <= short_by < LATENT_DOWNSAMPLE_FACTOR * cfg.mel_hop_length / cfg.sampling_rate
    fitted = fit_audio_to_video(wave, frames, fps, rate)
    assert fitted.shape[-1] / rate == pytest.approx(frames / fps, abs=0.5 / rate)
    assert np.array_equal(fitted[..., : wave.shape[-1]], np.array(wave))
    longer = fit_audio_to_video(np.ones((2, rate * 5)), frames, fps, rate)
    assert longer.shape == (2, round(frames / fps * rate))
