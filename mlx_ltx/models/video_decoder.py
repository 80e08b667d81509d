"""Video VAE decoder: the reference's ``ConvVideoDecoder``
(``ltx_core/model/video_vae/conv_video_decoder.py``), with tiled decoding.

Latent (B, C, F, H, W) -> pixels (B, 3, 1+8(F−1), 32H, 32W) for the released block lists,
nominally in [−1, 1] and not clamped. The config lists decoder blocks pixel-end first; they are
built reversed. Widths are read from the weights (``conv_in``, every DepthToSpaceUpsample conv,
``conv_out``), the reference's derivation being the fallback for a weightless build.

LTX-2 (19B) decoders are timestep-conditioned: the latent is first blended with noise,
``x = s·n + (1−s)·x`` (s = ``noise_scale``, default 0.025), and every res block and the output
norm are modulated by the embedding of ``timestep · timestep_scale_multiplier`` (default
timestep 0.05; the multiplier is a learned 0-d weight, read from the checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn

from ..config import ConfigError, VideoVAEConfig
from ..loading import Checkpoint, load_component, open_checkpoint
from . import vae_tiling
from .activations import silu_rounded_once
from .video_vae import check_vae_config, video_scale_factors
from .video_vae_ops import (
    CausalConv3d,
    DepthToSpaceUpsample,
    PerChannelStatistics,
    PixArtAlphaCombinedTimestepSizeEmbeddings,
    UNetMidBlock3D,
    block_params,
    check_padding_mode,
    conv_weight_to_mlx,
    pixel_norm,
    unpatchify,
    width_from,
)

_UPSAMPLE_STRIDES = {"compress_time": (2, 1, 1), "compress_space": (1, 2, 2), "compress_all": (2, 2, 2)}
DECODE_TIMESTEP = 0.05  # ConvVideoDecoder.decode_timestep
DECODE_NOISE_SCALE = 0.025  # ConvVideoDecoder.decode_noise_scale
# noise(shape, dtype) -> standard normal array: one call per decoded tile (the reference's per-tile torch.randn)
NoiseSource = Callable[[tuple, mx.Dtype], mx.array]


def _bottleneck_channels(base_channels: int, blocks) -> int:
    """``_decoder_bottleneck_channels``: base width times every upsampler's multiplier."""
    mult = 1
    for block in blocks:
        name, params = block_params(block)
        if name in _UPSAMPLE_STRIDES:
            mult *= params.get("multiplier", 1)
    return base_channels * mult


class VideoDecoder(nn.Module):
    """``ConvVideoDecoder``: un-normalise → conv_in → up blocks → PixelNorm (+ timestep
    scale/shift) → SiLU → conv_out → unpatchify."""

    def __init__(self, config: VideoVAEConfig, shapes: dict[str, tuple[int, ...]] | None = None,
                 compute_dtype: mx.Dtype = mx.float32):
        super().__init__()
        check_vae_config(config)
        self.compute_dtype = compute_dtype
        # evaluate around every convolution (video_vae_ops.MATERIALIZE_NOTE): the same values with
        # one convolution's buffers alive at a time instead of about four; False = one lazy graph
        self.materialize = True
        pad = check_padding_mode(config.spatial_padding_mode, "spatial_padding_mode")
        self.patch_size = config.patch_size
        self.causal = bool(config.causal_decoder)
        self.timestep_conditioning = bool(config.timestep_conditioning)
        self.video_scale_factors = video_scale_factors(config.decoder_blocks, config.patch_size)
        latent = width_from(shapes, "per_channel_statistics.mean-of-means", config.latent_channels)
        self.per_channel_statistics = PerChannelStatistics(latent)

        width = width_from(shapes, "conv_in.conv.weight",
                           _bottleneck_channels(config.decoder_base_channels, config.decoder_blocks))
        self.conv_in = CausalConv3d(latent, width, 3, pad)
        self.up_blocks = []
        blocks = list(reversed(config.decoder_blocks))
        for i, block in enumerate(blocks):
            name, params = block_params(block)
            where = f"decoder_blocks[{len(blocks) - 1 - i}]"
            if name == "res_x":
                if params.get("inject_noise", False):
                    raise ConfigError(f"vae config: {where} res_x with inject_noise=true is not supported")
                self.up_blocks.append(UNetMidBlock3D(width, params["num_layers"], pad, self.timestep_conditioning))
            elif name in _UPSAMPLE_STRIDES:
                stride = _UPSAMPLE_STRIDES[name]
                derived = math.prod(stride) * width // params.get("multiplier", 1)
                conv = width_from(shapes, f"up_blocks.{i}.conv.conv.weight", derived)
                # the reference passes ``residual`` to compress_all only; the others ignore the key
                residual = name == "compress_all" and bool(params.get("residual", False))
                block = DepthToSpaceUpsample(width, conv, stride, residual, pad)
                self.up_blocks.append(block)
                width = block.out_channels
            else:
                raise ConfigError(f"vae config: decoder block {name!r} ({where}) is not supported; the released "
                                  f"decoders use res_x and compress_{{space,time,all}}")
        out = width_from(shapes, "conv_out.conv.weight", config.out_channels * self.patch_size**2)
        self.out_channels = out // self.patch_size**2
        self.conv_out = CausalConv3d(width, out, 3, pad)
        if self.timestep_conditioning:
            # a learned 0-d weight (init 1000, 928.0 in the test fixture): loaded, never assumed
            self.timestep_scale_multiplier = mx.array(1000.0)
            self.last_time_embedder = PixArtAlphaCombinedTimestepSizeEmbeddings(2 * width)
            self.last_scale_shift_table = mx.zeros((2, width))

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint | str, dtype: mx.Dtype = mx.float32,
                        compute_dtype: mx.Dtype = mx.float32) -> VideoDecoder:
        """Build with every width read from the checkpoint's tensors, then load strictly with
        weights in ``dtype``. Activations are ``compute_dtype``, float32 by default whatever the
        weights' dtype (``video_vae_ops.COMPUTE_DTYPE_NOTE`` says why)."""
        ckpt = open_checkpoint(checkpoint)
        model = cls(ckpt.config.vae, ckpt.component_shapes("vae_decoder"), compute_dtype=compute_dtype)
        return load_component(ckpt, "vae_decoder", model, dtype=dtype)

    def sanitize(self, key: str, value: mx.array) -> mx.array:
        return conv_weight_to_mlx(value) if key.endswith("conv.weight") else value

    @property
    def dtype(self) -> mx.Dtype:
        """The activations' dtype (``compute_dtype``), not necessarily the weights'."""
        return self.compute_dtype

    def stage_widths(self) -> list[tuple[int, tuple[int, int, int], int]]:
        """(channels, cumulative (t, h, w) upscale, conv input channels) of the activations after
        conv_in, after every upsampler and out of conv_out: the inputs of the memory estimate
        (:func:`vae_tiling.estimate_decode_bytes`)."""
        width = self.conv_in.conv.weight.shape[0]
        stages = [(width, (1, 1, 1), width)]
        for block in self.up_blocks:
            if isinstance(block, DepthToSpaceUpsample):
                t, h, w = stages[-1][1]
                s = block.stride
                stages.append((block.out_channels, (t * s[0], h * s[1], w * s[2]), block.out_channels))
        stages.append((self.conv_out.conv.weight.shape[0], stages[-1][1], stages[-1][0]))
        return stages

    def _mix_noise(self, x: mx.array, noise: NoiseSource | mx.array | None, noise_scale: float,
                   key: mx.array | None) -> mx.array:
        if callable(noise):  # one draw per forward, as the reference's torch.randn (even at scale 0)
            noise = noise(tuple(x.shape), self.dtype)
        if noise_scale == 0:
            return x
        if noise is None:
            noise = mx.random.normal(x.shape, key=key)
        elif tuple(noise.shape) != tuple(x.shape):
            raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(x.shape)}")
        # blended in float32: bf16 would round the 0.975-scaled latent before the statistics
        return noise.astype(mx.float32) * noise_scale + (1.0 - noise_scale) * x.astype(mx.float32)

    def __call__(self, latent: mx.array, timestep: float | mx.array | None = None,
                 noise: NoiseSource | mx.array | None = None, noise_scale: float | None = None,
                 key: mx.array | None = None) -> mx.array:
        """(B, C, F, H, W) latent -> (B, 3, F', H', W') pixels in the latent's dtype.

        Timestep-conditioned decoders only (others ignore these, as the reference does):
        ``timestep`` (scalar or (B,), default 0.05), ``noise`` (B, C, F, H, W) standard normal
        (drawn with ``key`` when None; a callable ``noise(shape, dtype)`` is called once) and
        ``noise_scale`` (default 0.025; 0 = no noise)."""
        if latent.ndim != 5:
            raise ValueError(f"decoder input must be (B, C, F, H, W); got shape {tuple(latent.shape)}")
        out_dtype = latent.dtype
        B = latent.shape[0]
        x = latent
        scaled_t = None
        if self.timestep_conditioning:
            s = DECODE_NOISE_SCALE if noise_scale is None else float(noise_scale)
            x = self._mix_noise(x, noise, s, key)
            t = mx.array(DECODE_TIMESTEP if timestep is None else timestep, dtype=mx.float32).reshape(-1)
            if t.size not in (1, B):
                raise ValueError(f"timestep must be a scalar or have one value per batch item ({B}); got {t.size}")
            # float32 here although the reference multiplies in the weights' dtype: a bf16 0.05·928
            # becomes 46.5 instead of 46.4, a shift of the whole conditioning for no gain
            scaled_t = mx.broadcast_to(t, (B,)) * self.timestep_scale_multiplier.astype(mx.float32)
        m = self.materialize
        x = self.per_channel_statistics.un_normalize(x.astype(self.dtype), axis=1)
        x = self.conv_in(x.transpose(0, 2, 3, 4, 1), causal=self.causal, materialize=m)
        for block in self.up_blocks:
            if isinstance(block, UNetMidBlock3D):
                x = block(x, causal=self.causal, timestep=scaled_t, materialize=m)
            else:
                x = block(x, causal=self.causal, materialize=m)
        x = pixel_norm(x)
        if self.timestep_conditioning:
            C = x.shape[-1]
            ada = self.last_scale_shift_table[None] + self.last_time_embedder(scaled_t, x.dtype).reshape(B, 2, C)
            ada = ada.astype(x.dtype)[:, :, None, None, None, :]
            x = x * (1 + ada[:, 1]) + ada[:, 0]
        x = self.conv_out(silu_rounded_once(x), causal=self.causal, materialize=m)
        return unpatchify(x, self.patch_size).transpose(0, 4, 1, 2, 3).astype(out_dtype)

    def iter_tiled_decode(self, latent: mx.array, tiling: vae_tiling.TilingConfig | str | None = "auto", *,
                          timestep=None, noise: NoiseSource | mx.array | None = None,
                          noise_scale: float | None = None, key: mx.array | None = None,
                          memory_budget: int | None = None, sharing=None) -> Iterator[mx.array]:
        """Decode tile by tile, yielding finished (B, 3, T, H, W) chunks in frame order (the
        reference's ``tiled_decode`` generator). ``tiling``: a :class:`vae_tiling.TilingConfig`,
        ``"auto"`` (:func:`vae_tiling.auto_tiling`: the least decoding work whose estimated peak
        fits ``memory_budget`` bytes, default half the device memory) or None (one tile).

        Noise (timestep-conditioned decoders only; others never draw): as the reference, which
        runs ``forward`` once per tile and so calls ``torch.randn(tile latent shape)`` per tile,
        in tile order (frames slowest, then height, then width), one fresh draw per tile:
        ``noise`` a callable ``noise(shape, dtype) -> array`` is called once per tile with the
        tile's latent shape and the decoder's dtype (the dtype the reference draws in), even when
        ``noise_scale`` is 0 (the reference draws then too), so a caller can replay the
        reference's draws; otherwise, with ``noise=None``, each tile draws a standard normal with
        its own key (``key`` split once per tile in tile order; the global RNG when None).
        ``noise`` an array of the latent's shape is sliced per tile instead (tiled and untiled
        decodes then see the same noise; not the reference's draws).
        ``sharing`` (``distributed.TileSharing``): the tiles are divided among the ranks
        (``vae_tiling.tiled_apply``); every rank makes every tile's draws."""
        if noise is not None and not callable(noise) and tuple(noise.shape) != tuple(latent.shape):
            raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(latent.shape)}")
        tile_key = key

        def tile_noise(coords, shape):
            nonlocal tile_key
            if not self.timestep_conditioning:
                return None
            if callable(noise):
                return noise(shape, self.dtype)
            if noise is not None:
                return noise[coords]
            if noise_scale == 0:
                return None
            if tile_key is None:
                return mx.random.normal(shape)
            tile_key, sub = mx.random.split(tile_key)
            return mx.random.normal(shape, key=sub)

        if isinstance(tiling, str):
            if tiling != "auto":
                raise ValueError(f"tiling must be a TilingConfig, 'auto' or None; got {tiling!r}")
            tiling = vae_tiling.auto_tiling(self, latent.shape, memory_budget=memory_budget, dtype=self.dtype)

        def decode_tile(coords, run: bool = True):
            sub = latent[coords]
            tile_draw = tile_noise(coords, tuple(sub.shape))  # in tile order on every rank, decoded or not
            return self(sub, timestep=timestep, noise=tile_draw, noise_scale=noise_scale) if run else None

        yield from vae_tiling.tiled_apply(decode_tile, latent.shape, self.video_scale_factors, tiling,
                                          out_channels=self.out_channels, sharing=sharing, dtype=self.dtype)

    def tiled_decode(self, latent: mx.array, tiling: vae_tiling.TilingConfig | str | None = "auto",
                     **kwargs) -> mx.array:
        """:meth:`iter_tiled_decode` with the chunks joined along time: (B, 3, F', H', W')."""
        chunks = list(self.iter_tiled_decode(latent, tiling, **kwargs))
        return chunks[0] if len(chunks) == 1 else mx.concatenate(chunks, axis=2)


ConvVideoDecoder = VideoDecoder  # the reference's class name
