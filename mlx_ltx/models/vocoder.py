"""Mel spectrogram -> stereo waveform: the reference's ``Vocoder`` and ``VocoderWithBWE``
(``ltx_core/model/audio_vae/vocoder.py``, built by ``VocoderConfigurator``).

* LTX-2 19B: one HiFi-GAN ``Vocoder`` (resblock "1", LeakyReLU), mel -> 24 kHz, tanh at the end.
  The reference runs it in its build dtype; here it computes in the dtype of the mel it is given.
* LTX-2.3: ``VocoderWithBWE``: a BigVGAN-v2 ``Vocoder`` (AMP1 resblocks, anti-aliased SnakeBeta)
  makes 16 kHz, a causal log-mel of that wave (STFT and mel bases loaded from the checkpoint)
  feeds a second generator whose output is a residual added to a Hann-sinc ×3 resampled copy of
  the 16 kHz wave, then clamp to [-1, 1] -> 48 kHz. The reference forces float32 for the whole
  pass (bf16 accumulation through ~100 convolutions degrades the spectrum), so this does too,
  whatever the weight or input dtype; the result is cast back to the input's dtype, as there.

Public layouts are the reference's: mel ``[B, 2, T, n_mels]`` (stereo, time, mel bins), waveform
``[B, 2, S]``. Inside, activations are channels-last ``(B, T, C)``.
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn

from ..config import ConfigError, HifiGanConfig, VocoderConfig
from ..loading import Checkpoint, load_component
from .activations import LeakyReLURoundedOnce, leaky_relu_rounded_once
from .vocoder_blocks import (
    LRELU_SLOPE,
    Activation1d,
    AMPBlock1,
    Conv1d,
    ConvTranspose1d,
    ResBlock1,
    SnakeBeta,
    UpSample1d,
)

# The reference hard-codes a stereo vocoder: 2 channels x 64 mel bins in, 2 channels out.
_STEREO = 2
_IN_CHANNELS = 128


def _sanitize_by_layer(root: nn.Module, key: str, value: mx.array) -> mx.array:
    """PyTorch -> MLX layout for ``key``: the owning layer's ``from_torch`` decides (convolution
    kernels, the STFT basis); everything else is taken as stored."""
    *path, leaf = key.split(".")
    layer = root
    for part in path:
        layer = layer[int(part)] if isinstance(layer, list) else layer[part]
    from_torch = getattr(layer, "from_torch", None)
    return from_torch(leaf, value) if from_torch is not None else value


def _mel_to_channels_last(mel: mx.array) -> mx.array:
    """[B, 2, T, M] -> (B, T, 2·M), channel index s·M + m: the reference's (stereo, mel) order."""
    if mel.ndim != 4 or mel.shape[1] != _STEREO:
        raise ValueError(f"vocoder input must be a stereo mel [B, 2, T, mel_bins], got shape {tuple(mel.shape)}")
    b, s, t, m = mel.shape
    return mel.transpose(0, 2, 1, 3).reshape(b, t, s * m)


class Vocoder(nn.Module):
    """HiFi-GAN (resblock "1") or BigVGAN v2 (resblock "AMP1") generator: ``conv_pre``, per
    upsample stage a transposed conv and the MEAN of ``len(resblock_kernel_sizes)`` resblocks,
    ``act_post``, ``conv_post``, then tanh or clamp unless ``apply_final_activation`` is off."""

    def __init__(
        self,
        resblock_kernel_sizes=(3, 7, 11),
        upsample_rates=(6, 5, 2, 2, 2),
        upsample_kernel_sizes=(16, 15, 8, 4, 4),
        resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        upsample_initial_channel: int = 1024,
        resblock: str = "1",
        output_sampling_rate: int = 24000,
        activation: str = "snake",
        use_tanh_at_final: bool = True,
        apply_final_activation: bool = True,
        use_bias_at_final: bool = True,
    ):
        super().__init__()
        if resblock not in ("1", "AMP1"):
            raise ConfigError(f"vocoder resblock={resblock!r}: only '1' (HiFi-GAN) and 'AMP1' (BigVGAN v2) exist")
        if activation not in ("snake", "snakebeta"):
            raise ConfigError(f"vocoder activation={activation!r}: only 'snake' and 'snakebeta' exist")
        if len(upsample_rates) != len(upsample_kernel_sizes):
            raise ConfigError(f"vocoder: {len(upsample_rates)} upsample_rates but "
                              f"{len(upsample_kernel_sizes)} upsample_kernel_sizes")
        if len(resblock_kernel_sizes) != len(resblock_dilation_sizes):
            raise ConfigError(f"vocoder: {len(resblock_kernel_sizes)} resblock_kernel_sizes but "
                              f"{len(resblock_dilation_sizes)} resblock_dilation_sizes")
        self.output_sampling_rate = output_sampling_rate
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.use_tanh_at_final = use_tanh_at_final
        self.apply_final_activation = apply_final_activation
        self.is_amp = resblock == "AMP1"

        self.conv_pre = Conv1d(_IN_CHANNELS, upsample_initial_channel, 7, padding=3)
        self.ups = [
            ConvTranspose1d(upsample_initial_channel // 2**i, upsample_initial_channel // 2 ** (i + 1), k, u,
                            padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes))
        ]
        self.resblocks = []
        for i in range(self.num_upsamples):
            ch = upsample_initial_channel // 2 ** (i + 1)
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(AMPBlock1(ch, k, tuple(d), activation=activation) if self.is_amp
                                      else ResBlock1(ch, k, tuple(d)))
        final_channels = upsample_initial_channel // 2**self.num_upsamples
        # AMP1's post activation is SnakeBeta whatever ``activation`` says; the HiFi-GAN one is a
        # bare torch nn.LeakyReLU(), i.e. slope 0.01, not the 0.1 used inside the stages
        self.act_post = Activation1d(SnakeBeta(final_channels)) if self.is_amp else LeakyReLURoundedOnce(0.01)
        self.conv_post = Conv1d(final_channels, _STEREO, 7, padding=3, bias=use_bias_at_final)

    @classmethod
    def from_config(cls, cfg: HifiGanConfig, apply_final_activation: bool = True) -> Vocoder:
        """``_vocoder_from_config``: ``apply_final_activation`` is the caller's, not the file's."""
        return cls(
            resblock_kernel_sizes=cfg.resblock_kernel_sizes,
            upsample_rates=cfg.upsample_rates,
            upsample_kernel_sizes=cfg.upsample_kernel_sizes,
            resblock_dilation_sizes=cfg.resblock_dilation_sizes,
            upsample_initial_channel=cfg.upsample_initial_channel,
            resblock=cfg.resblock,
            output_sampling_rate=cfg.output_sampling_rate,
            activation=cfg.activation,
            use_tanh_at_final=cfg.use_tanh_at_final,
            apply_final_activation=apply_final_activation,
            use_bias_at_final=cfg.use_bias_at_final,
        )

    def sanitize(self, key: str, value: mx.array) -> mx.array:
        return _sanitize_by_layer(self, key, value)

    def forward_channels_last(self, mel: mx.array) -> mx.array:
        """[B, 2, T, M] mel -> (B, S, 2) waveform, computed in ``mel.dtype``."""
        x = self.conv_pre(_mel_to_channels_last(mel))
        for i in range(self.num_upsamples):
            if not self.is_amp:
                x = leaky_relu_rounded_once(x, LRELU_SLOPE)
            x = self.ups[i](x)
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = mx.mean(mx.stack([block(x) for block in blocks], axis=0), axis=0)
        x = self.conv_post(self.act_post(x))
        if self.apply_final_activation:
            x = mx.tanh(x) if self.use_tanh_at_final else mx.clip(x, -1, 1)
        return x

    def __call__(self, mel: mx.array) -> mx.array:
        """[B, 2, T, M] mel -> [B, 2, S] waveform at ``output_sampling_rate``. Computes in the
        mel's dtype (the reference runs in its weight dtype: pass a mel of that dtype)."""
        return self.forward_channels_last(mel).transpose(0, 2, 1)


class _STFTFn(nn.Module):
    """Causal STFT as a strided convolution with ``forward_basis`` (DFT rows x Hann window,
    real parts then imaginary parts), loaded from the checkpoint: the BWE generator was trained
    on mels made with exactly these bf16 bases, so they are never recomputed."""

    def __init__(self, filter_length: int, hop_length: int, win_length: int):
        super().__init__()
        self.hop_length = hop_length
        self.win_length = win_length
        n_freqs = filter_length // 2 + 1
        self.forward_basis = mx.zeros((n_freqs * 2, filter_length, 1))
        # unused by the forward pass, but a persistent buffer of the reference: loaded so the
        # strict key check holds, and kept in the PyTorch layout
        self.inverse_basis = mx.zeros((n_freqs * 2, 1, filter_length))

    @staticmethod
    def from_torch(leaf: str, value: mx.array) -> mx.array:
        return value.transpose(0, 2, 1) if leaf == "forward_basis" else value

    def __call__(self, y: mx.array) -> mx.array:
        """(N, L, 1) waveforms -> (N, frames, n_freqs) magnitudes. Only left padding of
        win − hop samples, so a frame never looks ahead. (The reference also returns the
        phase; the BWE discards it.)"""
        left_pad = max(0, self.win_length - self.hop_length)
        y = mx.pad(y, [(0, 0), (left_pad, 0), (0, 0)])
        spec = mx.conv1d(y, self.forward_basis.astype(y.dtype), stride=self.hop_length)
        n_freqs = spec.shape[-1] // 2
        real, imag = spec[..., :n_freqs], spec[..., n_freqs:]
        return mx.sqrt(real * real + imag * imag)


class MelSTFT(nn.Module):
    """Causal log-mel: ``_STFTFn`` magnitudes projected on the checkpoint's ``mel_basis``
    [n_mels, n_freqs], then log(max(·, 1e-5))."""

    def __init__(self, filter_length: int, hop_length: int, win_length: int, n_mel_channels: int):
        super().__init__()
        self.stft_fn = _STFTFn(filter_length, hop_length, win_length)
        self.mel_basis = mx.zeros((n_mel_channels, filter_length // 2 + 1))

    def mel_spectrogram(self, y: mx.array) -> mx.array:
        """(N, L, 1) waveforms -> (N, frames, n_mels) log-mel. (The reference also returns the
        magnitude, phase and energy, which the BWE does not use.)"""
        magnitude = self.stft_fn(y)
        mel = magnitude @ self.mel_basis.astype(magnitude.dtype).T
        return mx.log(mx.maximum(mel, 1e-5))


class VocoderWithBWE(nn.Module):
    """LTX-2.3's 16 kHz ``vocoder`` + bandwidth extension to ``output_sampling_rate``."""

    def __init__(self, vocoder: Vocoder, bwe_generator: Vocoder, mel_stft: MelSTFT,
                 input_sampling_rate: int, output_sampling_rate: int, hop_length: int):
        super().__init__()
        if output_sampling_rate % input_sampling_rate:
            raise ConfigError(f"vocoder bwe: output_sampling_rate {output_sampling_rate} is not a multiple of "
                              f"input_sampling_rate {input_sampling_rate}")
        self.vocoder = vocoder
        self.bwe_generator = bwe_generator
        self.mel_stft = mel_stft
        self.input_sampling_rate = input_sampling_rate
        self.output_sampling_rate = output_sampling_rate
        self.hop_length = hop_length
        # the skip path's sinc filter is non-persistent in the reference: computed, not loaded
        self.resampler = UpSample1d(output_sampling_rate // input_sampling_rate, window_type="hann")

    @classmethod
    def from_config(cls, config: VocoderConfig) -> VocoderWithBWE:
        bwe = config.bwe
        return cls(
            vocoder=Vocoder.from_config(config.vocoder),
            bwe_generator=Vocoder.from_config(bwe, apply_final_activation=False),
            # win_length = n_fft as in the configurator (the file's win_size is not read)
            mel_stft=MelSTFT(bwe.n_fft, bwe.hop_length, bwe.n_fft, bwe.num_mels),
            input_sampling_rate=bwe.input_sampling_rate,
            output_sampling_rate=bwe.output_sampling_rate,
            hop_length=bwe.hop_length,
        )

    def sanitize(self, key: str, value: mx.array) -> mx.array:
        return _sanitize_by_layer(self, key, value)

    def _compute_mel(self, audio: mx.array) -> mx.array:
        """(B, L, C) waveform -> [B, C, frames, n_mels] log-mel, the generator's input layout."""
        b, length, c = audio.shape
        flat = audio.transpose(0, 2, 1).reshape(b * c, length, 1)
        mel = self.mel_stft.mel_spectrogram(flat)
        return mel.reshape(b, c, mel.shape[1], mel.shape[2])

    def __call__(self, mel_spec: mx.array) -> mx.array:
        """[B, 2, T, M] mel -> [B, 2, S] waveform at ``output_sampling_rate``, in [-1, 1].
        Computed in float32 whatever the weight and input dtypes; returned in the input dtype."""
        x = self.vocoder.forward_channels_last(mel_spec.astype(mx.float32))
        length_low_rate = x.shape[1]
        output_length = length_low_rate * self.output_sampling_rate // self.input_sampling_rate
        remainder = length_low_rate % self.hop_length
        if remainder:
            # zero-pad to whole hops so the mel has exactly length/hop frames
            x = mx.pad(x, [(0, 0), (0, self.hop_length - remainder), (0, 0)])
        residual = self.bwe_generator.forward_channels_last(self._compute_mel(x))
        skip = self.resampler(x)
        if residual.shape != skip.shape:
            raise ValueError(f"vocoder bwe: residual {tuple(residual.shape)} != skip {tuple(skip.shape)}; the "
                             f"bwe upsample_rates must multiply to hop_length x the rate ratio")
        y = mx.clip(residual + skip, -1, 1)[:, :output_length]
        return y.transpose(0, 2, 1).astype(mel_spec.dtype)


def build_vocoder(config: VocoderConfig) -> Vocoder | VocoderWithBWE:
    """The module ``VocoderConfigurator`` builds: ``VocoderWithBWE`` when the config has a
    ``bwe`` section, the flat HiFi-GAN ``Vocoder`` otherwise (unloaded)."""
    config.check_supported()
    if config.bwe is not None:
        return VocoderWithBWE.from_config(config)
    return Vocoder.from_config(config.vocoder)


def vocoder_from_checkpoint(checkpoint) -> Vocoder | VocoderWithBWE:
    """The (unloaded) vocoder a checkpoint's config describes."""
    return build_vocoder(checkpoint.config.vocoder)


def load_vocoder(checkpoint, dtype: mx.Dtype = mx.float32) -> Vocoder | VocoderWithBWE:
    """Build and strictly load the vocoder of ``checkpoint`` (a ``Checkpoint`` or a path),
    weights stored in ``dtype``. The 2.3 vocoder computes in float32 whatever ``dtype`` is."""
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = Checkpoint(checkpoint)
    module = vocoder_from_checkpoint(checkpoint)
    load_component(checkpoint, "vocoder", module, dtype=dtype)
    return module
