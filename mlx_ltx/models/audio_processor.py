"""Waveform -> log-mel for the audio VAE encoder: the reference's ``AudioProcessor``
(``ltx_core/model/audio_vae/ops.py``) and ``encode_audio`` (``audio_vae.py``), with the two torchaudio
pieces it calls rebuilt in numpy: ``functional.resample`` (windowed-sinc, Hann, width 6, rolloff 0.99)
and ``transforms.MelSpectrogram`` (periodic Hann window, centred reflect padding, magnitude (power 1),
slaney mel scale and norm), followed by ``log(clamp(mel, 1e-5))``.

The resampling kernel is built in float32, as torchaudio builds it in the waveform's dtype; the STFT
and the filterbank product run in float64 and are rounded once to float32 (torch's float32 FFT
differs from both by ~1e-7 relative). The mel comes out (B, C, T, mel_bins), the encoder's layout.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from ..config import AudioVAEConfig

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
LOG_CLAMP = 1e-5


# ---------------------------------------------------------------------------------------------
# torchaudio.functional.resample


def _sinc_resample_kernel(orig: int, new: int) -> tuple[np.ndarray, int]:
    """(new, 2·width + orig) float32 polyphase kernel for reduced rates ``orig`` -> ``new``."""
    base = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base)
    f32 = np.float32
    idx = np.arange(-width, width + orig, dtype=f32)[None] / f32(orig)
    t = np.arange(0, -new, -1, dtype=f32)[:, None] / f32(new) + idx
    t = np.clip(t * f32(base), -LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH).astype(f32)
    window = np.cos(t * f32(math.pi / LOWPASS_FILTER_WIDTH / 2)).astype(f32) ** 2
    t = t * f32(math.pi)
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(t == 0, f32(1.0), np.sin(t) / t).astype(f32)
    return (kernel * (window * f32(base / orig))).astype(f32), width


def resample(waveform: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """float32 (..., S) at ``orig_freq`` -> (..., ceil(S · new / orig)) at ``new_freq``."""
    orig_freq, new_freq = int(orig_freq), int(new_freq)
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive; got {orig_freq} -> {new_freq}")
    x = np.asarray(waveform, dtype=np.float32)
    if orig_freq == new_freq:
        return x
    g = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // g, new_freq // g
    kernel, width = _sinc_resample_kernel(orig, new)
    lead, length = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, length)
    padded = np.pad(flat, [(0, 0), (width, width + orig)])
    # a strided conv1d: frame n covers padded[n·orig : n·orig + K] and yields ``new`` outputs
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1], axis=1)[:, ::orig]
    out = (frames.astype(np.float64) @ kernel.T.astype(np.float64)).astype(np.float32).reshape(flat.shape[0], -1)
    # torch.as_tensor(python float) is float32 before the ceil
    target = int(np.ceil(np.float32(new * length / orig)))
    return out[:, :target].reshape(*lead, -1)


# ---------------------------------------------------------------------------------------------
# torchaudio.transforms.MelSpectrogram (slaney scale and norm, power 1)


def _hz_to_mel_slaney(freq: float) -> float:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    if freq >= min_log_hz:
        return min_log_mel + math.log(freq / min_log_hz) / logstep
    return freq / f_sp


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


def melscale_fbanks(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> np.ndarray:
    """(n_freqs, n_mels) triangular slaney filterbank with slaney (area) normalisation."""
    all_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    m_pts = np.linspace(_hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2)
    f_pts = _mel_to_hz_slaney(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    return fb * (2.0 / (f_pts[2:n_mels + 2] - f_pts[:n_mels]))[None]


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann (``torch.hann_window(n)``)."""
    return 0.5 - 0.5 * np.cos(2.0 * math.pi * np.arange(n) / n)


def magnitude_spectrogram(waveform: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """(..., S) -> (..., n_fft // 2 + 1, T) |STFT|: centred (reflect padding of n_fft // 2),
    periodic Hann window of n_fft samples, T = 1 + S // hop_length."""
    x = np.asarray(waveform, dtype=np.float64)
    pad = n_fft // 2
    if x.shape[-1] <= pad:
        raise ValueError(f"the waveform has {x.shape[-1]} samples; the mel transform's reflect padding needs more "
                         f"than n_fft // 2 = {pad}")
    x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop_length, :]
    spec = np.abs(np.fft.rfft(frames * hann_window(n_fft), axis=-1))
    return np.swapaxes(spec, -1, -2)


class AudioProcessor:
    """``AudioProcessor``: resample to ``target_sample_rate``, then log-mel (B, C, T, mel_bins)."""

    def __init__(self, target_sample_rate: int, mel_bins: int, mel_hop_length: int, n_fft: int):
        self.target_sample_rate = int(target_sample_rate)
        self.mel_bins = int(mel_bins)
        self.mel_hop_length = int(mel_hop_length)
        self.n_fft = int(n_fft)
        self.mel_fb = melscale_fbanks(self.n_fft // 2 + 1, 0.0, self.target_sample_rate / 2.0, self.mel_bins,
                                      self.target_sample_rate)

    @classmethod
    def from_config(cls, config: AudioVAEConfig) -> AudioProcessor:
        """The processor ``encode_audio`` builds from the encoder (the checkpoint's audio_vae config)."""
        if config.mel_bins is None:
            raise ValueError("audio_vae config has no mel_bins (ddconfig.mel_bins, preprocessing.mel.n_mel_channels "
                             "or variables.mel_bins); the mel transform needs it")
        return cls(config.sampling_rate, config.mel_bins, config.mel_hop_length, config.n_fft)

    def resample_audio(self, waveform, sample_rate: int) -> np.ndarray:
        """float32 (..., S) at ``sample_rate`` -> at ``target_sample_rate`` (unchanged if equal)."""
        return resample(np.asarray(waveform, dtype=np.float32), sample_rate, self.target_sample_rate)

    def waveform_to_mel(self, waveform, sample_rate: int) -> mx.array:
        """float32 waveform (B, C, S) or (C, S) at ``sample_rate`` -> log-mel float32 (B, C, T, mel_bins)."""
        x = np.asarray(waveform, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise ValueError(f"waveform_to_mel: expected a waveform (B, C, S) or (C, S); got shape {x.shape}")
        x = self.resample_audio(x, sample_rate)
        spec = magnitude_spectrogram(x, self.n_fft, self.mel_hop_length)  # (B, C, F, T)
        mel = np.swapaxes(spec, -1, -2) @ self.mel_fb  # (B, C, T, mel_bins)
        mel = np.log(np.maximum(mel.astype(np.float32), np.float32(LOG_CLAMP)))
        return mx.array(mel.astype(np.float32))


def encode_audio(waveform, sample_rate: int, audio_encoder, audio_processor: AudioProcessor) -> mx.array:
    """``encode_audio``: waveform (B, C, S) or (C, S) -> mel -> the encoder's normalised latent
    (B, Ca, T', M). The encoder takes as many channels as its ``conv_in`` (2 in every release): the
    reference has no mono rule and fails there; here that is an error naming the fix."""
    mel = audio_processor.waveform_to_mel(waveform, sample_rate)
    want = audio_encoder.conv_in.conv.weight.shape[-1]
    if mel.shape[1] != want:
        raise ValueError(f"the audio encoder takes {want}-channel audio; this waveform has {mel.shape[1]} "
                         f"channel(s): load it with mlx_ltx.media_inputs.load_audio(..., channels={want}) or media_inputs.to_stereo")
    return audio_encoder(mel.astype(audio_encoder.dtype))
