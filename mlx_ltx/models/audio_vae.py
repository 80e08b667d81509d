"""Audio VAE: the reference's ``AudioEncoder`` / ``AudioDecoder``
(``ltx_core/model/audio_vae/audio_vae.py``), plus the audio length and token-time rules of
``AudioLatentShape`` (``ltx_core/types.py``) and ``AudioPatchifier``
(``ltx_core/components/patchifiers.py``).

Log-mel (B, 2, T, 64) <-> normalised latent (B, Ca, T', M) with T' = (T − 1)/4 + 1 for the
causal released configs (two stride-2 stages on time, each with causal padding), M = 64/4.
The latent statistics act on patchified tokens (feature c·M + m), not per channel.
"""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..config import AudioVAEConfig, ConfigError
from ..loading import Checkpoint, load_component, open_checkpoint
from .activations import silu_rounded_once
from .audio_vae_ops import (
    CausalConv2d,
    Downsample,
    MidBlock,
    PerChannelStatistics,
    ResnetBlock,
    Stage,
    Upsample,
    build_normalization_layer,
    causality_axis_of,
    check_audio_vae_config,
    conv_weight_to_mlx,
    make_attn,
    patchify,
    unpatchify,
)

# mel frames per latent frame; a constant of the reference, not a config value
LATENT_DOWNSAMPLE_FACTOR = 4
# Activations stay float32 whatever the weights' dtype (bf16 weights are upcast inside each conv).
# A pure bf16 forward drifts ~2e-2 from float32 over the ~20 convs: the reference's own bf16 run
# misses the project's 2e-2 tolerance on the real19b fixture (0.0207). The cost is small: the
# audio VAE is a few 128-channel convs over a (T_mel, 64) plane.
COMPUTE_DTYPE = mx.float32


def _statistics_width(shapes: dict[str, tuple[int, ...]] | None, config: AudioVAEConfig) -> int:
    # the reference sizes the statistics by ``ch``, which only coincides with Ca·M; the weight decides
    if shapes is not None and "per_channel_statistics.mean-of-means" in shapes:
        return int(shapes["per_channel_statistics.mean-of-means"][0])
    return config.ch


class AudioEncoder(nn.Module):
    """``AudioEncoder``: conv_in → down path → mid → norm → SiLU → conv_out → the first
    ``z_channels`` outputs (means) → token-space normalisation."""

    def __init__(self, config: AudioVAEConfig, shapes: dict[str, tuple[int, ...]] | None = None):
        super().__init__()
        check_audio_vae_config(config)
        if not config.double_z:
            # torch.chunk(·, 2) would still halve the channels and the statistics would not fit
            raise ConfigError("audio_vae config: double_z=false; the reference encoder always keeps the first half "
                              "of conv_out's channels, so only double_z=true is consistent")
        axis = causality_axis_of(config)
        norm, ch, mult = config.norm_type, config.ch, tuple(config.ch_mult)
        self.z_channels = config.z_channels
        self.per_channel_statistics = PerChannelStatistics(_statistics_width(shapes, config))
        self.conv_in = CausalConv2d(config.in_channels, ch, 3, axis)
        self.down = []
        curr_res = config.resolution
        in_mult = (1, *mult)
        for level, m in enumerate(mult):
            block_in, block_out = ch * in_mult[level], ch * m
            blocks, attns = [], []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, norm, axis))
                block_in = block_out
                if curr_res in config.attn_resolutions:
                    attn = make_attn(block_in, config.attn_type, norm)
                    if attn is not None:
                        attns.append(attn)
            stage = Stage(blocks, attns)
            if level != len(mult) - 1:
                stage.downsample = Downsample(block_in, config.resamp_with_conv, axis)
                curr_res //= 2
            self.down.append(stage)
        self.mid = MidBlock(block_in, norm, axis, config.attn_type, config.mid_block_add_attention)
        self.norm_out = build_normalization_layer(block_in, norm)
        self.conv_out = CausalConv2d(block_in, 2 * config.z_channels, 3, axis)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint | str, dtype: mx.Dtype = mx.float32) -> AudioEncoder:
        ckpt = open_checkpoint(checkpoint)
        model = cls(ckpt.config.audio_vae, ckpt.component_shapes("audio_vae_encoder"))
        return load_component(ckpt, "audio_vae_encoder", model, dtype=dtype)

    def sanitize(self, key: str, value: mx.array) -> mx.array:
        return conv_weight_to_mlx(value) if key.endswith("weight") else value

    @property
    def dtype(self) -> mx.Dtype:
        return self.conv_in.conv.weight.dtype

    def __call__(self, spectrogram: mx.array) -> mx.array:
        """Log-mel (B, in_channels, T, mel_bins) -> normalised latent means (B, Ca, T', M)."""
        if spectrogram.ndim != 4:
            raise ValueError(f"AudioEncoder: expected a mel spectrogram (B, C, T, mel_bins), got {spectrogram.shape}")
        h = self.conv_in(spectrogram.astype(COMPUTE_DTYPE).transpose(0, 2, 3, 1))
        for level, stage in enumerate(self.down):
            h = stage.run_blocks(h)
            if level != len(self.down) - 1:
                h = stage.downsample(h)
        h = self.mid(h)
        h = self.conv_out(silu_rounded_once(self.norm_out(h)))
        means = h[..., : self.z_channels].transpose(0, 3, 1, 2)
        C, M = means.shape[1], means.shape[3]
        return unpatchify(self.per_channel_statistics.normalize(patchify(means)), C, M).astype(self.dtype)


class AudioDecoder(nn.Module):
    """``AudioDecoder``: token-space un-normalisation → conv_in → mid → up path → norm → SiLU →
    conv_out, then cropped / zero-padded to (B, out_ch, 4T − 3, mel_bins) (4T without causality)."""

    def __init__(self, config: AudioVAEConfig, shapes: dict[str, tuple[int, ...]] | None = None):
        super().__init__()
        check_audio_vae_config(config)
        axis = causality_axis_of(config)
        self.causal = axis != "none"
        norm, ch, mult = config.norm_type, config.ch, tuple(config.ch_mult)
        self.out_ch = config.out_ch
        self.mel_bins = config.mel_bins
        self.per_channel_statistics = PerChannelStatistics(_statistics_width(shapes, config))
        block_in = ch * mult[-1]
        self.conv_in = CausalConv2d(config.z_channels, block_in, 3, axis)
        # the decoder's attention type and resampling are fixed in the reference, not read from the config
        self.mid = MidBlock(block_in, norm, axis, "vanilla", config.mid_block_add_attention)
        levels: list[Stage] = []
        curr_res = config.resolution // 2 ** (len(mult) - 1)
        for level in reversed(range(len(mult))):
            block_out = ch * mult[level]
            blocks, attns = [], []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, norm, axis))
                block_in = block_out
                if curr_res in config.attn_resolutions:
                    attns.append(make_attn(block_in, "vanilla", norm))
            stage = Stage(blocks, attns)
            if level != 0:
                stage.upsample = Upsample(block_in, True, axis)
                curr_res *= 2
            levels.insert(0, stage)
        self.up = levels
        self.norm_out = build_normalization_layer(block_in, norm)
        self.conv_out = CausalConv2d(block_in, config.out_ch, 3, axis)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint | str, dtype: mx.Dtype = mx.float32) -> AudioDecoder:
        ckpt = open_checkpoint(checkpoint)
        model = cls(ckpt.config.audio_vae, ckpt.component_shapes("audio_vae_decoder"))
        return load_component(ckpt, "audio_vae_decoder", model, dtype=dtype)

    def sanitize(self, key: str, value: mx.array) -> mx.array:
        return conv_weight_to_mlx(value) if key.endswith("weight") else value

    @property
    def dtype(self) -> mx.Dtype:
        return self.conv_in.conv.weight.dtype

    def target_frames(self, latent_frames: int) -> int:
        """Mel frames of a decode of ``latent_frames`` latents (``_denormalize_latents``)."""
        frames = latent_frames * LATENT_DOWNSAMPLE_FACTOR
        return max(frames - (LATENT_DOWNSAMPLE_FACTOR - 1), 1) if self.causal else frames

    def __call__(self, sample: mx.array) -> mx.array:
        """Normalised latent (B, Ca, T, M) -> log-mel (B, out_ch, 4T − 3, mel_bins)."""
        if sample.ndim != 4:
            raise ValueError(f"AudioDecoder: expected a latent (B, C, T, M), got {sample.shape}")
        _, C, T, M = sample.shape
        sample = unpatchify(self.per_channel_statistics.un_normalize(patchify(sample.astype(COMPUTE_DTYPE))), C, M)
        h = self.conv_in(sample.transpose(0, 2, 3, 1))
        h = self.mid(h)
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            h = stage.run_blocks(h)
            if level != 0:
                h = stage.upsample(h)
        h = self.conv_out(silu_rounded_once(self.norm_out(h)))
        mel = self._adjust_output_shape(h.transpose(0, 3, 1, 2), self.target_frames(T),
                                        self.mel_bins if self.mel_bins is not None else M)
        return mel.astype(self.dtype)

    def _adjust_output_shape(self, x: mx.array, frames: int, mel_bins: int) -> mx.array:
        x = x[:, : self.out_ch, :frames, :mel_bins]
        pad_t, pad_m = frames - x.shape[2], mel_bins - x.shape[3]
        if pad_t > 0 or pad_m > 0:
            x = mx.pad(x, [(0, 0), (0, 0), (0, max(pad_t, 0)), (0, max(pad_m, 0))])
        return x


class AudioLatentShape(NamedTuple):
    """(batch, channels, frames, mel_bins) of an audio latent, as ``ltx_core.types``."""

    batch: int
    channels: int
    frames: int
    mel_bins: int

    @staticmethod
    def from_duration(batch: int, duration: float, config: AudioVAEConfig) -> AudioLatentShape:
        """``round(duration · sr / hop / 4)`` latent frames (Python's round: halves go to even)."""
        per_second = float(config.sampling_rate) / float(config.mel_hop_length) / float(LATENT_DOWNSAMPLE_FACTOR)
        return AudioLatentShape(batch, config.z_channels, round(duration * per_second), config.latent_mel_bins)

    @staticmethod
    def from_video_pixel_shape(num_frames: int, fps: float, config: AudioVAEConfig,
                               batch: int = 1) -> AudioLatentShape:
        """The audio latent that spans a video of ``num_frames`` pixel frames at ``fps``."""
        return AudioLatentShape.from_duration(batch, float(num_frames) / float(fps), config)


def audio_latent_time_in_sec(start_latent: int, end_latent: int, config: AudioVAEConfig) -> np.ndarray:
    """``AudioPatchifier._get_audio_latent_time_in_sec``: seconds at which latent frames start.
    Causal: latent l covers mel frames from max(4l + 1 − 4, 0), the first fully available one.
    float32 throughout, like the reference's arange and arithmetic."""
    mel = np.arange(start_latent, end_latent, dtype=np.float32) * np.float32(LATENT_DOWNSAMPLE_FACTOR)
    if config.is_causal:
        mel = np.clip(mel + np.float32(1) - np.float32(LATENT_DOWNSAMPLE_FACTOR), 0, None)
    return (mel * np.float32(config.mel_hop_length) / np.float32(config.sampling_rate)).astype(np.float32)


def audio_positions(num_latent_frames: int, config: AudioVAEConfig, batch: int = 1, shift: int = 0) -> mx.array:
    """``AudioPatchifier.get_patch_grid_bounds``: (B, 1, T, 2) float32 [start, end) seconds."""
    start = audio_latent_time_in_sec(shift, num_latent_frames + shift, config)
    end = audio_latent_time_in_sec(shift + 1, num_latent_frames + shift + 1, config)
    bounds = np.stack([start, end], axis=-1)[None, None]
    return mx.array(np.broadcast_to(bounds, (batch, 1, num_latent_frames, 2)).copy())
