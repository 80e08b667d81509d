"""Video VAE encoder: the reference's ``VideoEncoder`` (``ltx_core/model/video_vae/video_vae.py``).

Pixels (B, 3, 1+8k, H, W) in [−1, 1] -> normalised latent means (B, C, 1+k, H/32, W/32) for
the released block lists. A single image is a one-frame video (k = 0).

Widths come from the weights: a SpaceToDepthDownsample conv has out/prod(stride) channels, not
the block's declared width out = in·multiplier (128→64 for the 2.3 ``compress_space_res``,
1024→128 for its last ``compress_all_res``), and its skip path averages groups of in/conv
space-to-depth channels. With a checkpoint at hand every conv width is read from
``checkpoint.shapes`` and the group size follows from it; the reference's derivation is only the
fallback of a weightless build.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from ..config import ConfigError, VideoVAEConfig
from ..loading import Checkpoint, load_component, open_checkpoint
from . import vae_tiling
from .activations import silu_rounded_once
from .video_vae_ops import (
    CausalConv3d,
    PerChannelStatistics,
    SpaceToDepthDownsample,
    UNetMidBlock3D,
    block_params,
    check_padding_mode,
    conv_weight_to_mlx,
    patchify,
    pixel_norm,
    width_from,
)

_DOWNSAMPLE_STRIDES = {
    "compress_time_res": (2, 1, 1),
    "compress_space_res": (1, 2, 2),
    "compress_all_res": (2, 2, 2),
}
# conv_out width for C latent channels, per latent_log_var (the means are always the first C)
_LOG_VAR_WIDTH = {"per_channel": lambda c: 2 * c, "uniform": lambda c: c + 1, "constant": lambda c: c + 1,
                  "none": lambda c: c}


def check_vae_config(cfg: VideoVAEConfig, decoder: bool = True) -> None:
    """Reject the configurations this port does not implement, naming the value. The encoder is the
    same convolutional one in LTX-2.5's diffusion VAE (``decoder=False``); its decoder is not this one."""
    cls = cfg.raw.get("_class_name", "CausalVideoAutoencoder")
    if decoder and cls != "CausalVideoAutoencoder":
        raise ConfigError(f"vae config: _class_name={cls!r} has no convolutional decoder (LTX-2.5's diffusion VAE "
                          f"is decoded by models/diffusion_video_decoder.py)")
    if cls not in ("CausalVideoAutoencoder", "CausalDiffusionVAE"):
        raise ConfigError(f"vae config: _class_name={cls!r}; known: CausalVideoAutoencoder, CausalDiffusionVAE")
    if cfg.dims != 3:
        raise ConfigError(f"vae config: dims={cfg.dims!r}; only 3-D convolutions are supported")
    if cfg.norm_layer != "pixel_norm":
        raise ConfigError(f"vae config: norm_layer={cfg.norm_layer!r}; only 'pixel_norm' is supported")


def video_scale_factors(blocks, patch_size: int) -> tuple[int, int, int]:
    """(time, height, width) factors of a block list, as ``SpatioTemporalScaleFactors.from_blocks``."""
    t = s = 0
    for block in blocks:
        name = block[0]
        s += name.startswith(("compress_space", "compress_all"))
        t += name.startswith(("compress_time", "compress_all"))
    return 2**t, patch_size * 2**s, patch_size * 2**s


def check_video_size(num_frames: int, height: int, width: int, factors: tuple[int, int, int],
                     what: str = "video") -> None:
    """ValueError unless frames = 1 + t·k and H, W are positive multiples of the spatial factor;
    the message names the nearest sizes that work."""
    t, sh, sw = factors
    if num_frames < 1 or (num_frames - 1) % t:
        lo = (num_frames - 1) // t * t + 1
        ok = " or ".join(str(n) for n in (lo, lo + t) if n >= 1)
        raise ValueError(f"{what}: num_frames must be {t}k+1; got {num_frames}, {ok} would work")
    for name, size, f in (("height", height, sh), ("width", width, sw)):
        if size < f or size % f:
            lo = size // f * f
            ok = " or ".join(str(n) for n in (lo, lo + f) if n >= f)
            raise ValueError(f"{what}: {name} must be a multiple of {f}; got {size}, {ok} would work")


class VideoEncoder(nn.Module):
    """``VideoEncoder``: patchify → conv_in → down blocks → PixelNorm → SiLU → conv_out →
    the first ``latent_channels`` outputs (means) → per-channel normalise."""

    def __init__(self, config: VideoVAEConfig, shapes: dict[str, tuple[int, ...]] | None = None,
                 compute_dtype: mx.Dtype = mx.float32):
        super().__init__()
        check_vae_config(config, decoder=False)
        self.compute_dtype = compute_dtype
        pad = check_padding_mode(config.encoder_padding_mode, "encoder spatial_padding_mode")
        self.patch_size = config.patch_size
        self.latent_log_var = config.latent_log_var
        if self.latent_log_var not in _LOG_VAR_WIDTH:
            raise ConfigError(f"vae config: latent_log_var={self.latent_log_var!r} (expected one of "
                              f"{sorted(_LOG_VAR_WIDTH)})")
        self.latent_channels = width_from(shapes, "per_channel_statistics.mean-of-means", config.latent_channels)
        self.video_scale_factors = video_scale_factors(config.encoder_blocks, config.patch_size)
        self.per_channel_statistics = PerChannelStatistics(self.latent_channels)

        width = width_from(shapes, "conv_in.conv.weight", self.latent_channels)
        self.conv_in = CausalConv3d(config.in_channels * self.patch_size**2, width, 3, pad)
        self.down_blocks = []
        for i, block in enumerate(config.encoder_blocks):
            name, params = block_params(block)
            if name == "res_x":
                self.down_blocks.append(UNetMidBlock3D(width, params["num_layers"], pad))
            elif name in _DOWNSAMPLE_STRIDES:
                stride = _DOWNSAMPLE_STRIDES[name]
                declared = width * params.get("multiplier", 2)
                conv = width_from(shapes, f"down_blocks.{i}.conv.conv.weight", declared // math.prod(stride))
                block = SpaceToDepthDownsample(width, conv, stride, pad)
                self.down_blocks.append(block)
                width = block.out_channels
            else:
                raise ConfigError(f"vae config: encoder block {name!r} (encoder_blocks[{i}]) is not supported; the "
                                  f"released encoders use res_x and compress_{{space,time,all}}_res")
        derived_out = _LOG_VAR_WIDTH[self.latent_log_var](self.latent_channels)
        out = width_from(shapes, "conv_out.conv.weight", derived_out)
        if out != derived_out:
            raise ConfigError(f"vae encoder: conv_out has {out} outputs but latent_log_var={self.latent_log_var!r} "
                              f"with {self.latent_channels} latent channels needs {derived_out}")
        self.conv_out = CausalConv3d(width, out, 3, pad)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint | str, dtype: mx.Dtype = mx.float32,
                        compute_dtype: mx.Dtype = mx.float32) -> VideoEncoder:
        """Build with every width read from the checkpoint's tensors, then load strictly with
        weights in ``dtype``. Activations are ``compute_dtype``, float32 by default whatever the
        weights' dtype (``video_vae_ops.COMPUTE_DTYPE_NOTE`` says why)."""
        ckpt = open_checkpoint(checkpoint)
        model = cls(ckpt.config.vae, ckpt.component_shapes("vae_encoder"), compute_dtype=compute_dtype)
        return load_component(ckpt, "vae_encoder", model, dtype=dtype)

    def sanitize(self, key: str, value: mx.array) -> mx.array:
        return conv_weight_to_mlx(value) if key.endswith("conv.weight") else value

    @property
    def dtype(self) -> mx.Dtype:
        """The activations' dtype (``compute_dtype``), not necessarily the weights'."""
        return self.compute_dtype

    def normalize(self, latent: mx.array) -> mx.array:
        """Raw latent means (B, C, F, H, W) -> normalised (``per_channel_statistics.normalize``)."""
        return self.per_channel_statistics.normalize(latent, axis=1)

    def un_normalize(self, latent: mx.array) -> mx.array:
        """Normalised latent (B, C, F, H, W) -> raw means (``per_channel_statistics.un_normalize``)."""
        return self.per_channel_statistics.un_normalize(latent, axis=1)

    def __call__(self, pixels: mx.array) -> mx.array:
        """(B, 3, F, H, W) in [−1, 1] -> normalised latent (B, C, F', H', W') in the input's dtype.
        The reference crops a frame count that is not 1 + 8k; here it is an error that names the
        sizes that work, so no frame is dropped silently."""
        if pixels.ndim != 5:
            raise ValueError(f"encoder input must be (B, C, F, H, W); got shape {tuple(pixels.shape)}")
        check_video_size(pixels.shape[2], pixels.shape[3], pixels.shape[4], self.video_scale_factors, "encode")
        x = pixels.astype(self.dtype).transpose(0, 2, 3, 4, 1)
        x = self.conv_in(patchify(x, self.patch_size))
        for block in self.down_blocks:
            x = block(x)
        x = self.conv_out(silu_rounded_once(pixel_norm(x)))
        means = x[..., : self.latent_channels]
        latent = self.per_channel_statistics.normalize(means, axis=-1).transpose(0, 4, 1, 2, 3)
        return latent.astype(pixels.dtype)

    def tiled_encode(self, pixels: mx.array, tiling: vae_tiling.TilingConfig | None = None) -> mx.array:
        """``VideoEncoder.tiled_encode``: encode overlapping tiles and blend them on the latent grid
        (:func:`vae_tiling.tiled_encode_apply`); None = one tile. The pipelines encode conditioning
        videos this way with ``TilingConfig.default()`` (80 frames, 768 px)."""
        check_video_size(pixels.shape[2], pixels.shape[3], pixels.shape[4], self.video_scale_factors, "encode")
        if tiling is None:
            return self(pixels)
        return vae_tiling.tiled_encode_apply(lambda c: self(pixels[c]), pixels.shape, self.video_scale_factors,
                                             tiling, self.latent_channels)
