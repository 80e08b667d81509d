"""Latent shapes, tokens, positions and initial states of the diffusion loops, as the
reference's ``ltx_core/tools.py`` (``VideoLatentTools``, ``AudioLatentTools``),
``ltx_core/components/patchifiers.py``, ``ltx_core/components/noisers.py`` (``GaussianNoiser``:
:func:`noise_state` with the draws of :class:`SeededNoise`, the one source of noise of every
pipeline) and ``ltx_pipelines/utils/helpers.py`` (``create_noised_state``).

Layouts (patch size 1, the only one the released models use):
video latent [B, C, F, H, W] <-> tokens [B, F·H·W, C] (token (f·H + h)·W + w);
audio latent [B, C, T, M] <-> tokens [B, T, C·M] (feature c·M + m).
Video positions [B, 3, N, 2]: [start, end) of (time in seconds, row in pixels, column in pixels);
audio positions [B, 1, T, 2] in seconds. Per-token tensors (``denoise_mask``) are [B, N, 1].

Noise order: a pipeline stage draws the video noise first, then the audio noise, from one
generator (the reference's ``DiffusionStage`` builds the video state before the audio state);
:class:`SeededNoise` keeps that order when both states draw from the same instance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import mlx.core as mx
import numpy as np

from .config import AudioVAEConfig, LTXConfig
from .models.audio_vae import AudioLatentShape, audio_positions
from .models.audio_vae_ops import patchify as patchify_audio
from .models.audio_vae_ops import unpatchify as _unpatchify_audio
from .models.video_vae import check_video_size


@dataclass
class LatentState:
    """One modality's denoising state (twin of ``ltx_core.types.LatentState``).

    Token layout as the transformer takes it: ``latent`` and ``clean_latent`` [B,T,C], ``denoise_mask``
    [B,T,1] (1 = denoise fully, 0 = keep ``clean_latent``), ``positions`` [B,axes,T,2], optional
    ``attention_mask`` [B,T,T] in [0,1] for guiding tokens. ``frozen``: the stream is held fixed
    (mask all 0) and its scalar σ is forced to 0 for the prompt adaLN and the other stream's gate.
    """

    latent: mx.array
    denoise_mask: mx.array
    positions: mx.array
    clean_latent: mx.array
    attention_mask: mx.array | None = None
    frozen: bool = False
    # [B,T,1]: 1 on tokens whose latent encodes a single pixel frame (the first latent frame); the
    # transformer adds its keyframe embedding there (LTX-2.5), models without one ignore it
    keyframes_mask: mx.array | None = None

    def replace(self, **changes) -> LatentState:
        return replace(self, **changes)


def timesteps_from_mask(denoise_mask: mx.array, sigma: float) -> mx.array:
    return denoise_mask.astype(mx.float32) * sigma


class VideoLatentShape(NamedTuple):
    """(batch, channels, frames, height, width) of a video latent, as ``ltx_core.types``."""

    batch: int
    channels: int
    frames: int
    height: int
    width: int

    @staticmethod
    def from_pixel_shape(frames: int, height: int, width: int, channels: int,
                         scale_factors: tuple[int, int, int], batch: int = 1) -> VideoLatentShape:
        """The latent of a ``frames``×``height``×``width`` video. The reference floors sizes that
        do not fit the VAE grid; here they are an error naming the sizes that work."""
        check_video_size(frames, height, width, scale_factors, "video size")
        t, sh, sw = scale_factors
        return VideoLatentShape(batch, channels, (frames - 1) // t + 1, height // sh, width // sw)

    def pixel_shape(self, scale_factors: tuple[int, int, int]) -> tuple[int, int, int]:
        """(frames, height, width) in pixels (``VideoLatentShape.upscale``)."""
        t, sh, sw = scale_factors
        return (self.frames - 1) * t + 1, self.height * sh, self.width * sw

    def token_count(self) -> int:
        return self.frames * self.height * self.width


def patchify_video(latent: mx.array) -> mx.array:
    """``VideoLatentPatchifier.patchify``: [B, C, F, H, W] -> [B, F·H·W, C]."""
    B, C, F, H, W = latent.shape
    return latent.transpose(0, 2, 3, 4, 1).reshape(B, F * H * W, C)


def unpatchify_video(tokens: mx.array, shape: VideoLatentShape) -> mx.array:
    """``VideoLatentPatchifier.unpatchify``: [B, F·H·W, C] -> [B, C, F, H, W]."""
    B, N, C = tokens.shape
    if N != shape.token_count():
        raise ValueError(f"unpatchify: {N} tokens but the grid {shape.frames}x{shape.height}x{shape.width} "
                         f"has {shape.token_count()} (drop appended tokens with clear_conditioning first)")
    return tokens.reshape(B, shape.frames, shape.height, shape.width, C).transpose(0, 4, 1, 2, 3)


def unpatchify_audio(tokens: mx.array, shape: AudioLatentShape) -> mx.array:
    """``AudioPatchifier.unpatchify``: [B, T, C·M] -> [B, C, T, M]."""
    return _unpatchify_audio(tokens, shape.channels, shape.mel_bins)


def get_patch_grid_bounds(shape: VideoLatentShape) -> np.ndarray:
    """``VideoLatentPatchifier.get_patch_grid_bounds``: int64 [B, 3, F·H·W, 2], the [start, end)
    latent index of every token along (frame, row, column), in token order."""
    f, h, w = np.meshgrid(np.arange(shape.frames), np.arange(shape.height), np.arange(shape.width),
                          indexing="ij")
    starts = np.stack([f, h, w]).reshape(3, -1).astype(np.int64)
    bounds = np.stack([starts, starts + 1], axis=-1)
    return np.broadcast_to(bounds[None], (shape.batch, *bounds.shape)).copy()


def get_pixel_coords(latent_coords: np.ndarray, scale_factors: tuple[int, int, int],
                     causal_fix: bool) -> np.ndarray:
    """Latent [start, end) bounds -> pixel bounds (still integers). The causal VAE encodes pixel
    frame 0 alone into latent frame 0, so with ``causal_fix`` latent frame k spans pixel frames
    [max(0, 8k − 7), 8k + 1) and frame 0 is [0, 1)."""
    coords = latent_coords * np.asarray(scale_factors, dtype=np.int64).reshape(1, 3, 1, 1)
    if causal_fix:
        coords[:, 0] = np.maximum(coords[:, 0] + 1 - scale_factors[0], 0)
    return coords


def video_positions(shape: VideoLatentShape, scale_factors: tuple[int, int, int], fps: float,
                    causal_fix: bool = True) -> mx.array:
    """float32 [B, 3, N, 2]: time in seconds (pixel frame / fps), rows and columns in pixels."""
    pos = get_pixel_coords(get_patch_grid_bounds(shape), scale_factors, causal_fix).astype(np.float32)
    # integer pixel bounds -> float32 first, then one float32 division, as the reference
    pos[:, 0] = pos[:, 0] / np.float32(fps)
    return mx.array(pos)


def lerp(start: mx.array, end: mx.array, weight) -> mx.array:
    """``torch.lerp``'s two-sided formula (exact at weight 0 and 1): ``start + w·(end − start)``
    for |w| < 0.5, else ``end − (end − start)·(1 − w)``."""
    diff = end - start
    if isinstance(weight, (int, float)):
        return start + weight * diff if abs(weight) < 0.5 else end - diff * (1.0 - weight)
    return mx.where(mx.abs(weight) < 0.5, start + weight * diff, end - diff * (1.0 - weight))


def noise_state(state: LatentState, noise: mx.array, noise_scale: float = 1.0) -> LatentState:
    """``GaussianNoiser.__call__`` with the draw given: in float32,
    ``x = lerp(clean, lerp(latent, noise, noise_scale), denoise_mask)``, cast to the latent's
    dtype. Tokens with mask 0 stay exactly at ``clean``; appended guiding tokens (zero-filled
    latent) start at ``lerp(clean, noise·noise_scale, mask)``."""
    if tuple(noise.shape) != tuple(state.latent.shape):
        raise ValueError(f"noise shape {tuple(noise.shape)} != latent state shape {tuple(state.latent.shape)}")
    f32 = mx.float32
    x = lerp(state.latent.astype(f32), noise.astype(f32), noise_scale)
    x = lerp(state.clean_latent.astype(f32), x, state.denoise_mask.astype(f32))
    return replace(state, latent=x.astype(state.latent.dtype))


# noise(shape, dtype, label) -> array; labels "stage{k}.video" / "stage{k}.audio", "decoder", ...
NoiseProvider = Callable[[tuple[int, ...], mx.Dtype, str], mx.array]


class SeededNoise:
    """The whole generation's randomness from one seed (the reference's single ``torch.Generator``):
    every draw splits the key, in the order the stages ask. MLX's generator is not torch's, so a
    seed gives other numbers than the reference (tests inject the reference's draws through a
    :data:`NoiseProvider`); the order (video before audio, stage 1 before stage 2, then the
    decoder) is the reference's. Drawn in the state's dtype, as ``GaussianNoiser``."""

    def __init__(self, seed: int):
        self.seed = seed
        self._key = mx.random.key(seed % 2**64)

    def offset(self, n: int) -> SeededNoise:
        """A separate stream seeded ``seed + n`` (the reference's extra generators: the ancestral
        loop's seed + 10000)."""
        return SeededNoise(self.seed + n)

    def __call__(self, shape: tuple[int, ...], dtype: mx.Dtype, label: str = "") -> mx.array:
        self._key, sub = mx.random.split(self._key)
        return mx.random.normal(shape, dtype=dtype, key=sub)


def _initial_state(tokens: mx.array, positions: mx.array) -> LatentState:
    B, N, _ = tokens.shape
    return LatentState(latent=tokens, denoise_mask=mx.ones((B, N, 1), dtype=mx.float32), positions=positions,
                       clean_latent=tokens, attention_mask=None)


def _check_initial(initial_latent: mx.array | None, expected: tuple[int, ...]) -> None:
    if initial_latent is not None and tuple(initial_latent.shape) != tuple(expected):
        raise ValueError(f"initial latent shape {tuple(initial_latent.shape)} != target shape {tuple(expected)}")


def extend_keyframes_mask(state: LatentState, num_new_tokens: int, marked: bool = False) -> mx.array | None:
    """``extend_keyframes_mask``: the mask over ``num_new_tokens`` appended tokens. Given content
    (image guiding tokens, reference latents) is never marked; None stays None when unmarked."""
    existing = state.keyframes_mask
    if existing is None and not marked:
        return None
    if existing is None:
        existing = mx.zeros_like(state.denoise_mask)
    pad = (mx.ones if marked else mx.zeros)((existing.shape[0], num_new_tokens, existing.shape[2]), existing.dtype)
    return mx.concatenate([existing, pad], axis=1)


def _clear_conditioning(state: LatentState, num_tokens: int) -> LatentState:
    """Keep the first ``num_tokens`` (the target grid); conditioning items only ever append."""
    B = state.latent.shape[0]
    return replace(state, latent=state.latent[:, :num_tokens], denoise_mask=mx.ones((B, num_tokens, 1), mx.float32),
                   positions=state.positions[:, :, :num_tokens], clean_latent=state.clean_latent[:, :num_tokens],
                   attention_mask=None, keyframes_mask=None)


@dataclass(frozen=True)
class VideoLatentTools:
    """Builds and converts video latent states of one target grid (``VideoLatentTools``)."""

    target_shape: VideoLatentShape
    fps: float
    scale_factors: tuple[int, int, int]
    causal_fix: bool = True

    @classmethod
    def from_pixel_shape(cls, config: LTXConfig, frames: int, height: int, width: int, fps: float,
                         batch: int = 1) -> VideoLatentTools:
        """Tools for a ``frames``×``height``×``width`` video at ``fps``; latent channels and the VAE
        scale factors come from the checkpoint's config."""
        factors = tuple(config.vae.scale_factors)
        shape = VideoLatentShape.from_pixel_shape(frames, height, width, config.vae.latent_channels, factors, batch)
        return cls(shape, float(fps), factors)

    @property
    def token_count(self) -> int:
        return self.target_shape.token_count()

    def positions(self) -> mx.array:
        return video_positions(self.target_shape, self.scale_factors, self.fps, self.causal_fix)

    def patchify(self, latent: mx.array) -> mx.array:
        s = self.target_shape
        _check_initial(latent, (s.batch, s.channels, s.frames, s.height, s.width))
        return patchify_video(latent)

    def unpatchify(self, tokens: mx.array) -> mx.array:
        return unpatchify_video(tokens, self.target_shape)

    def create_initial_state(self, dtype: mx.Dtype = mx.float32,
                             initial_latent: mx.array | None = None) -> LatentState:
        """Tokens of ``initial_latent`` (zeros without one) as both ``latent`` and ``clean_latent``,
        ``denoise_mask`` 1 (float32), positions of the grid, and the first latent frame's tokens
        marked in ``keyframes_mask``: the causal encoder gives that frame one pixel frame, every
        later one ``t_scale``; the reference marks it always (``_first_frame_keyframes_mask``)."""
        s = self.target_shape
        if initial_latent is None:
            initial_latent = mx.zeros((s.batch, s.channels, s.frames, s.height, s.width), dtype=dtype)
        state = _initial_state(self.patchify(initial_latent), self.positions())
        per_frame = s.height * s.width
        marks = (mx.arange(state.latent.shape[1]) < per_frame).astype(mx.float32)
        return replace(state, keyframes_mask=mx.broadcast_to(marks[None, :, None], state.denoise_mask.shape))

    @property
    def tokens_per_latent_frame(self) -> int:
        return self.target_shape.height * self.target_shape.width

    def clear_conditioning(self, state: LatentState) -> LatentState:
        """Drop appended guiding tokens and the attention mask; mask back to 1."""
        return _clear_conditioning(state, self.token_count)


@dataclass(frozen=True)
class AudioLatentTools:
    """Builds and converts audio latent states (``AudioLatentTools``)."""

    target_shape: AudioLatentShape
    config: AudioVAEConfig

    @classmethod
    def from_video_pixel_shape(cls, config: LTXConfig, frames: int, fps: float, batch: int = 1) -> AudioLatentTools:
        """Tools for the audio spanning a video of ``frames`` pixel frames at ``fps``."""
        return cls(AudioLatentShape.from_video_pixel_shape(frames, fps, config.audio_vae, batch), config.audio_vae)

    @property
    def token_count(self) -> int:
        return self.target_shape.frames

    def positions(self) -> mx.array:
        return audio_positions(self.target_shape.frames, self.config, batch=self.target_shape.batch)

    def patchify(self, latent: mx.array) -> mx.array:
        _check_initial(latent, tuple(self.target_shape))
        return patchify_audio(latent)

    def unpatchify(self, tokens: mx.array) -> mx.array:
        return unpatchify_audio(tokens, self.target_shape)

    def create_initial_state(self, dtype: mx.Dtype = mx.float32,
                             initial_latent: mx.array | None = None) -> LatentState:
        if initial_latent is None:
            initial_latent = mx.zeros(tuple(self.target_shape), dtype=dtype)
        return _initial_state(self.patchify(initial_latent), self.positions())

    def clear_conditioning(self, state: LatentState) -> LatentState:
        return _clear_conditioning(state, self.token_count)


def create_noised_state(tools: VideoLatentTools | AudioLatentTools, conditionings, noise,
                        noise_scale: float = 1.0, initial_latent: mx.array | None = None,
                        dtype: mx.Dtype = mx.float32, label: str = "") -> LatentState:
    """``create_noised_state``: initial state, then each conditioning item's ``apply_to`` in
    order, then the noise. ``noise`` is an array shaped like the conditioned state's tokens
    (injected) or a :data:`NoiseProvider` (e.g. :class:`SeededNoise`), asked with ``label`` for a
    draw of that shape in the state's dtype. Build the video state before the audio state from the
    same provider to keep the reference's draw order."""
    state = tools.create_initial_state(dtype, initial_latent)
    for item in conditionings:
        state = item.apply_to(state, tools)
    if callable(noise):
        noise = noise(tuple(state.latent.shape), state.latent.dtype, label)
    return noise_state(state, noise, noise_scale)
