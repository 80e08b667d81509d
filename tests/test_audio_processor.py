"""The reference's AudioProcessor (torchaudio resample + MelSpectrogram, log clamp) and the audio encode
path, against goldens of tests/reference/media_goldens.py (fixture set media-s1234, generation "media",
loaded directly: reference_data.fixture_dirs() lists only model sets). The reference's decoded waveforms
are the inputs here, so these tests check the processor alone; tests/test_media_inputs.py checks decoding."""

import json
from pathlib import Path

import numpy as np
import pytest
from reference_data import TOL_F32, rel_err
from safetensors.numpy import load_file

from mlx_ltx.loading import Checkpoint
from mlx_ltx.models.audio_processor import AudioProcessor, encode_audio, resample
from mlx_ltx.models.audio_vae import AudioEncoder

MEDIA = Path(__file__).parent / "reference" / "fixtures" / "media-s1234"
MANIFEST = json.loads((MEDIA / "manifest.json").read_text())


@pytest.fixture(scope="module")
def golden():
    return load_file(MEDIA / "golden_media.safetensors")


def _decoded(golden, name):
    return golden[f"audio.decoded.{name}"], int(golden[f"audio.rate.{name}"][0])


@pytest.mark.parametrize("orig,new", [tuple(p) for p in MANIFEST["resample_pairs"]])
def test_resample_matches_torchaudio(golden, orig, new):
    out = resample(golden["resample.in"], orig, new)
    assert out.dtype == np.float32
    assert rel_err(out, golden[f"resample.{orig}.{new}"]) <= TOL_F32


def test_resample_same_rate_is_identity(golden):
    x = golden["resample.in"]
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)


@pytest.mark.parametrize("name", list(MANIFEST["audio_cases"]))
def test_resample_audio(golden, name):
    proc = AudioProcessor(**MANIFEST["processors"]["tiny"])
    wave, sr = _decoded(golden, name)
    assert rel_err(proc.resample_audio(wave, sr), golden[f"audio.resampled.tiny.{name}"]) <= TOL_F32


@pytest.mark.parametrize("processor", list(MANIFEST["processors"]))
@pytest.mark.parametrize("name", list(MANIFEST["audio_cases"]))
def test_waveform_to_mel(golden, processor, name):
    proc = AudioProcessor(**MANIFEST["processors"][processor])
    wave, sr = _decoded(golden, name)
    mel = proc.waveform_to_mel(wave[None], sr)
    assert mel.dtype.size == 4
    assert rel_err(mel, golden[f"audio.mel.{processor}.{name}"]) <= TOL_F32


@pytest.mark.parametrize("fixture", ["tiny", "real23"])
def test_processor_settings_come_from_the_checkpoint(fixture):
    ckpt = Checkpoint(MEDIA / MANIFEST["checkpoints"][fixture])
    proc = AudioProcessor.from_config(ckpt.config.audio_vae)
    assert {"target_sample_rate": proc.target_sample_rate, "mel_bins": proc.mel_bins,
            "mel_hop_length": proc.mel_hop_length, "n_fft": proc.n_fft} == MANIFEST["processors"][fixture]


@pytest.mark.parametrize("fixture", ["tiny", "real23"])
def test_encode_audio_latent(golden, fixture):
    ckpt = Checkpoint(MEDIA / MANIFEST["checkpoints"][fixture])
    encoder = AudioEncoder.from_checkpoint(ckpt)
    proc = AudioProcessor.from_config(ckpt.config.audio_vae)
    keys = [k for k in golden if k.startswith(f"audio.latent.{fixture}.")]
    assert keys
    for key in keys:
        wave, sr = _decoded(golden, key.rsplit(".", 1)[1])
        assert rel_err(encode_audio(wave, sr, encoder, proc), golden[key]) <= TOL_F32, key


def test_mono_audio_is_refused_by_the_encoder(golden):
    """The reference fails inside conv_in on a mono mel; here the error names the fix."""
    ckpt = Checkpoint(MEDIA / MANIFEST["checkpoints"]["tiny"])
    wave, sr = _decoded(golden, "wav24_full")
    with pytest.raises(ValueError, match="channels=2"):
        encode_audio(wave, sr, AudioEncoder.from_checkpoint(ckpt), AudioProcessor.from_config(ckpt.config.audio_vae))


def test_too_short_for_the_stft_is_an_error():
    with pytest.raises(ValueError, match="n_fft // 2"):
        AudioProcessor(16000, 64, 160, 1024).waveform_to_mel(np.zeros((2, 100), np.float32), 16000)
