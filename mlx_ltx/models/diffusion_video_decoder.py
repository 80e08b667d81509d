"""LTX-2.5's diffusion video decoder: the reference's ``DiffusionVideoDecoder``
(``ltx_core/model/video_vae/diffusion_video_decoder.py``), untiled.

Latent (B, C, T, H, W) → pixels (B, 1+8(T−1), 32H, 32W, 3) in [0, 1]. Stages 1–4 are
neighborhood-attention transformers with pixel-shuffle upsamples that turn the latent into a
context volume at (8T−7, 8H, 8W); stage 5 is a small pixel-space flow model, sampled for
``default_num_inference_steps`` Euler steps from noise over the whole padded pixel volume
(injected here: the reference draws it with the pipeline's generator), conditioned on that context.

Geometry as the reference (``diffusion_tiling.py``): a latent below the stages' kernel floor is
edge-padded (T repeat-last, H/W symmetric) and the pixels cropped back; ``(K_t//2)·2`` copies of the
last latent frame ride through stages 1–4 and are cropped before stage 5 (natten's last-frame
window shift). Stage 5 runs in the reference pipelines' default border mode, ``chunked_eager``
(W slabs whose outer halo is edge-replicated), or with ``border="full"`` on the full volume
(natten semantics, the reference's ``combined`` build).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..config import ConfigError
from ..loading import COMPONENTS, Checkpoint, CheckpointError, load_strict
from .diffusion_tiling import (
    auto_tiling,
    axis_weights,
    group_by_frames,
    prepare_tile_schedule,
    stage4_thw_from_latent,
    stage5_canvas,
)
from .neighborhood_attention import na_block_bytes
from .diffusion_decoder_blocks import (
    AdaLNZero,
    DiffusionNABlock,
    LinearPixelShuffleUpsample,
    NABlock,
    pixel_shuffle,
)
from .vae_tiling import TilingConfig
from .video_vae_ops import PerChannelStatistics, PixArtAlphaCombinedTimestepSizeEmbeddings, patchify, unpatchify

VIDEO_SCALE = (8, 32, 32)  # SpatioTemporalScaleFactors.default(): the decoder's frame/pixel scale
CHUNKED_W_CHUNKS = 4  # chunked/attn.py: stage-5 W slabs of the chunked_eager mode
BORDERS = ("chunked_eager", "full")
_GATE_TARGETS = {  # model_configurator._GATE_FOLD_TARGETS: folded Linear → its static gate
    ".attn.proj.weight": ".gate_msa", ".attn.proj.bias": ".gate_msa",
    ".mlp.w_down.weight": ".gate_mlp", ".mlp.w_down.bias": ".gate_mlp",
    ".context_proj.weight": ".gate_ctx", ".context_proj.bias": ".gate_ctx",
}
_RENAMES = (("t_embedder.mlp.0.", "t_embedder.timestep_embedder.linear_1."),
            ("t_embedder.mlp.2.", "t_embedder.timestep_embedder.linear_2."))


@dataclass(frozen=True)
class DiffusionDecoderConfig:
    """``config.vae.decoder`` (+ the sibling ``model_output_type``), with the reference's code defaults
    (``diffusion_video_decoder.py`` :35-59, ``model_configurator._build_diffusion_video_decoder``)."""

    in_channels: int = 128
    out_channels: int = 3
    patch_size: int = 4
    head_dim: int = 64
    stage_channels: tuple[int, ...] = (1024, 512, 256, 256, 128)
    stage_depths: tuple[int, ...] = (4, 6, 4, 2, 8)
    stage_kernels: tuple[tuple[int, int, int], ...] = ((3, 7, 7), (3, 7, 7), (3, 5, 5), (3, 5, 5), (3, 3, 3))
    upsamples: tuple[tuple[tuple[int, int, int], int], ...] = (
        ((1, 2, 2), 2), ((2, 1, 1), 2), ((2, 2, 2), 1), ((2, 2, 2), 2))
    stage5_kernel: tuple[int, int, int] = (3, 7, 7)
    stage5_channels: int | None = None
    t_emb_dim: int = 384
    default_num_inference_steps: int = 2
    timestep_scale_multiplier: float = 1.0
    model_output_type: str = "v"

    @classmethod
    def from_vae_section(cls, vae: dict[str, Any]) -> DiffusionDecoderConfig:
        dec = vae.get("decoder", vae)
        kw: dict[str, Any] = {"in_channels": dec.get("in_channels", vae.get("latent_channels", 128)),
                              "head_dim": dec.get("head_dim", dec.get("na_head_dim", 64)),
                              "model_output_type": vae.get("model_output_type", "v")}
        for name in ("out_channels", "patch_size", "t_emb_dim", "default_num_inference_steps",
                     "timestep_scale_multiplier", "stage5_channels"):
            if name in dec:
                kw[name] = dec[name]
        for name in ("stage_channels", "stage_depths"):
            if name in dec:
                kw[name] = tuple(int(c) for c in dec[name])
        if "stage_kernels" in dec:
            kw["stage_kernels"] = tuple(tuple(int(k) for k in kern) for kern in dec["stage_kernels"])
        if "upsamples" in dec:
            kw["upsamples"] = tuple((tuple(int(s) for s in stride), int(r)) for stride, r in dec["upsamples"])
        if "stage5_kernel" in dec:
            kw["stage5_kernel"] = tuple(int(k) for k in dec["stage5_kernel"])
        cfg = cls(**kw)
        cfg.check()
        return cfg

    def check(self) -> None:
        n = len(self.stage_channels)
        if not (len(self.stage_depths) == len(self.stage_kernels) == n and len(self.upsamples) == n - 1 == 4):
            raise ConfigError(f"vae.decoder: stage_channels/depths/kernels need 5 entries and upsamples 4; got "
                              f"{self.stage_channels}, {self.stage_depths}, {self.stage_kernels}, {self.upsamples}")
        for i, (stride, r) in enumerate(self.upsamples):
            if self.stage_channels[i] // r != self.stage_channels[i + 1]:
                raise ConfigError(f"vae.decoder: upsamples[{i}] reduces {self.stage_channels[i]} channels by {r}, "
                                  f"but stage_channels[{i + 1}] is {self.stage_channels[i + 1]}")
        for c in (*self.stage_channels, self.c5):
            if c % self.head_dim:
                raise ConfigError(f"vae.decoder: width {c} is not a multiple of head_dim={self.head_dim}")
        if self.model_output_type not in ("v", "x0"):
            raise ConfigError(f"vae.model_output_type={self.model_output_type!r}; the reference knows 'v' and 'x0'")
        if self.default_num_inference_steps < 1:
            raise ConfigError(f"vae.decoder.default_num_inference_steps={self.default_num_inference_steps}")

    @property
    def c5(self) -> int:
        return self.stage5_channels if self.stage5_channels is not None else self.stage_channels[-1]

    @property
    def natten_trailing_pad_latent_frames(self) -> int:
        return (self.stage_kernels[0][0] // 2) * 2

    @property
    def stage_min_tile_sizes(self) -> tuple[int, int, int]:
        """``all_stages_min_tile_size``: the latent floor at which every stage's NA sees ≥ its kernel."""
        mins, cum = [1, 1, 1], (1, 1, 1)
        for i, (stride, _) in enumerate(self.upsamples):
            mins = [max(m, -(-self.stage_kernels[i][a] // cum[a])) for a, m in enumerate(mins)]
            cum = tuple(c * s for c, s in zip(cum, stride))
        return tuple(max(m, -(-self.stage5_kernel[a] // cum[a])) for a, m in enumerate(mins))

    def work_latent_thw(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The (T, H, W) a decode of ``latent_shape`` works at: raised to the size floor."""
        return tuple(max(n, f) for n, f in zip(latent_shape[2:], self.stage_min_tile_sizes))

    def timesteps(self) -> np.ndarray:
        """``torch.linspace(1, 1/N, N)`` in float32, with torch's two-sided rule (the upper half is
        computed back from the end), so the values match bit for bit."""
        n = self.default_num_inference_steps
        start, end = np.float32(1.0), np.float32(1.0 / n)
        if n == 1:
            return np.array([start], dtype=np.float32)
        step = (end - start) / np.float32(n - 1)
        return np.array([start + np.float32(i) * step if i < n // 2 else end - np.float32(n - 1 - i) * step
                         for i in range(n)], dtype=np.float32)


def resize_axis(x: mx.array, axis: int, size: int, mode: str) -> tuple[mx.array, tuple[int, int]]:
    """``diffusion_tiling.resize_axis``: pad (``repeat_last`` appends the last slice; ``symmetric``
    repeats both edges, the odd one at the end) or crop (from the end, or both sides) to ``size``.
    Returns the array and the (before, after) count."""
    length = x.shape[axis]
    if length == size:
        return x, (0, 0)
    need = abs(size - length)
    before = 0 if mode == "repeat_last" else need // 2
    after = need - before
    if length > size:
        return mx.take(x, mx.arange(before, before + size), axis=axis), (before, after)
    idx = np.concatenate([np.zeros(before, np.int32), np.arange(length, dtype=np.int32),
                          np.full(after, length - 1, np.int32)])
    return mx.take(x, mx.array(idx), axis=axis), (before, after)


class DiffusionVideoDecoder(nn.Module):
    """The diffusion VAE's decoder. Weights and activations are float32 by default."""

    def __init__(self, config: DiffusionDecoderConfig):
        super().__init__()
        self.config = cfg = config
        self.dtype = mx.float32  # of the weights and activations (from_checkpoint sets it)
        self.patch_size = cfg.patch_size
        self.out_channels = cfg.out_channels
        self.per_channel_statistics = PerChannelStatistics(cfg.in_channels)
        self.conv_in = nn.Linear(cfg.in_channels, cfg.stage_channels[0])
        self.det_stages = [[NABlock(cfg.stage_channels[s], cfg.stage_kernels[s], cfg.head_dim)
                            for _ in range(cfg.stage_depths[s])] for s in range(4)]
        self.upsamples = [LinearPixelShuffleUpsample(cfg.stage_channels[s], *cfg.upsamples[s]) for s in range(4)]
        self.t_embedder = PixArtAlphaCombinedTimestepSizeEmbeddings(cfg.t_emb_dim)
        c5, c_ctx, pix = cfg.c5, cfg.stage_channels[-1], cfg.out_channels * cfg.patch_size ** 2
        self.conv_in_x_t = nn.Linear(pix, c5)
        self.shared_adaln = AdaLNZero(c5, cfg.t_emb_dim)
        self.diff_blocks = [DiffusionNABlock(c5, cfg.stage5_kernel, c_ctx, cfg.head_dim)
                            for _ in range(cfg.stage_depths[-1])]
        self.norm_out = nn.RMSNorm(c5, eps=1e-6)
        self.conv_out = nn.Linear(c5, pix)

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint | str | os.PathLike, dtype: mx.Dtype = mx.float32
                        ) -> DiffusionVideoDecoder:
        """Build from the file's ``config.vae`` and load strictly, with the reference's rewrites
        (``video_decoder_sd_ops_for_checkpoint``): ``t_embedder.mlp.0/2`` renamed, ``coarse_*`` (the
        preview head) dropped, fused ``attn.qkv`` split in thirds, static ``gate_{msa,mlp,ctx}`` folded
        into their Linears in float32 and rounded back to the file's dtype, then cast to ``dtype``."""
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
        vae = (ckpt.metadata.get("config") or {}).get("vae")
        if not isinstance(vae, dict):
            raise CheckpointError(f"{ckpt.path}: no config.vae in __metadata__")
        model = cls(DiffusionDecoderConfig.from_vae_section(vae))
        weights, origin = ckpt.component_weights("vae_decoder")
        if not weights:
            raise CheckpointError(f"{ckpt.path}: no decoder tensors (keys decoder.* or vae.decoder.*)")
        bare = any(v.startswith("decoder.") for v in origin.values())  # the file's own prefix style
        weights, origin = rewrite_checkpoint_weights(weights, origin)
        model = load_strict(model, weights, source=ckpt.path, dtype=dtype,
                            origin=lambda k: origin.get(k) or _expected_source_key(k, bare))
        model.dtype = dtype
        return model

    # -- stages 1–4 ------------------------------------------------------------------------------

    def prepare_latent(self, latent: mx.array) -> tuple[mx.array, tuple[tuple[int, int], ...]]:
        """The size floor (``ensure_min_latent_shape``): (work latent, (t, h, w) pads in latent units)."""
        pads = []
        for axis, floor, mode in zip((2, 3, 4), self.config.stage_min_tile_sizes,
                                     ("repeat_last", "symmetric", "symmetric")):
            pad = (0, 0)
            if latent.shape[axis] < floor:
                latent, pad = resize_axis(latent, axis, floor, mode)
            pads.append(pad)
        return latent, tuple(pads)

    def ghost_pad(self, latent: mx.array) -> mx.array:
        """``pad_trailing_latent_for_natten_border``: + (K_t//2)·2 copies of the last frame."""
        n = self.config.natten_trailing_pad_latent_frames
        return resize_axis(latent, 2, latent.shape[2] + n, "repeat_last")[0] if n > 0 else latent

    def conv_in_stage(self, latent: mx.array) -> mx.array:
        """un_normalize, channels-last, ``conv_in``: (B, C, T, H, W) → (B, T, H, W, C0)."""
        x = self.per_channel_statistics.un_normalize(latent.astype(self.dtype), axis=1)
        return self.conv_in(x.transpose(0, 2, 3, 4, 1))

    def run_det_stage(self, x: mx.array, stage: int, upsample: bool = True) -> mx.array:
        for block in self.det_stages[stage]:
            x = block(x)
            mx.eval(x)
        return self.upsamples[stage](x) if upsample else x

    def forward_stages_1_to_3(self, latent_padded: mx.array) -> mx.array:
        """Ghost-padded work latent → the stage-4 input, channels-last."""
        x = self.conv_in_stage(latent_padded)
        for s in range(3):
            x = self.run_det_stage(x, s)
        return x

    def forward_stage_4(self, x: mx.array, deferred: bool = False, drop_leading_frame: bool = True,
                        pad_trailing: bool = True) -> mx.array:
        """Stage 4 on a stage-4 tile and the ghost crop (when the tile ends the clip). ``deferred=False``
        (combined): NA blocks, ``upsamples.3``, crop at pixel-frame resolution → the stage-5 context.
        ``deferred=True`` (chunked): NA blocks only, crop at stage-4 resolution; the upsample then
        runs per stage-5 block (:meth:`context_from_stage4`). ``drop_leading_frame``: the tile holds t = 0."""
        cfg = self.config
        for block in self.det_stages[3]:
            x = block(x)
            mx.eval(x)
        up_t = cfg.upsamples[3][0][0]
        if deferred:
            return _crop_ghost(x, cfg.natten_trailing_pad_latent_frames * (VIDEO_SCALE[0] // up_t),
                               max(1, -(-cfg.stage5_kernel[0] // up_t))) if pad_trailing else x
        x = self.upsamples[3](x, drop_leading_frame)
        return _crop_ghost(x, cfg.natten_trailing_pad_latent_frames * VIDEO_SCALE[0],
                           cfg.stage5_kernel[0]) if pad_trailing else x

    def context_from_stage4(self, features: mx.array, drop_leading_frame: bool = True) -> mx.array:
        """The deferred ``upsamples.3`` of the chunked path (a per-position Linear and a shuffle, so
        one pass equals the reference's per-W-slab passes)."""
        up = self.upsamples[3]
        return pixel_shuffle(up.proj(features), up.stride, drop_leading_frame)

    # -- stage 5 ---------------------------------------------------------------------------------

    def forward_diff_step(self, x_t: mx.array, context: mx.array, t: float, border: str) -> mx.array:
        """The stage-5 model on ``x_t (B, F, H, W, 3)`` channels-last at time ``t``; same layout out."""
        cfg = self.config
        B = x_t.shape[0]
        x = self.conv_in_x_t(patchify(x_t.astype(self.dtype), self.patch_size))
        t_in = mx.full((B,), cfg.timestep_scale_multiplier, dtype=mx.float32) * mx.array(t, dtype=mx.float32)
        modulation = self.shared_adaln(self.t_embedder(t_in, x.dtype))
        w_chunks = CHUNKED_W_CHUNKS if border == "chunked_eager" else 1
        for block in self.diff_blocks:
            x = block(x, context, modulation, w_chunks)
            mx.eval(x)
        return unpatchify(self.conv_out(self.norm_out(x)), self.patch_size)

    def sample(self, context: mx.array, x_t: mx.array, border: str) -> mx.array:
        """``_decode_one_tile``'s sampler from ``x_t`` at t = 1 (channels-last): Euler steps over
        ``linspace(1, 1/N, N)`` in float32, the state kept in the decoder's dtype between steps, the
        last step to t = 0, or the raw output when the model predicts x0."""
        cfg = self.config
        ts = [float(t) for t in cfg.timesteps()]
        x = x_t.astype(self.dtype)
        for i, t in enumerate(ts):
            out = self.forward_diff_step(x, context, t, border).astype(mx.float32)
            if i == len(ts) - 1 and cfg.model_output_type == "x0":
                return out
            x32 = x.astype(mx.float32)
            v = out if cfg.model_output_type == "v" else (x32 - out) / t
            t_next = ts[i + 1] if i + 1 < len(ts) else 0.0
            x = (x32 - float(np.float32(t) - np.float32(t_next)) * v).astype(self.dtype)
            mx.eval(x)
        return x

    def decode_tile(self, feat: mx.array, x_t: mx.array, is_origin: bool, pad_trailing: bool,
                    border: str) -> mx.array:
        """Stages 4–5 of one stage-4 tile (``_decode_one_tile``): pixels ``(B, F, H, W, 3)``."""
        if border == "chunked_eager":
            context = self.context_from_stage4(
                self.forward_stage_4(feat, True, is_origin, pad_trailing), is_origin)
        else:
            context = self.forward_stage_4(feat, False, is_origin, pad_trailing)
        mx.eval(context)
        return self.sample(context, x_t, border)

    # -- decode ----------------------------------------------------------------------------------

    def work_pixel_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
        """(B, 3, F, H, W) of the noise a decode of ``latent_shape`` needs: the padded pixel volume
        (``x_t_noise_shape`` of the reference), after the size floor."""
        T, H, W = self.config.work_latent_thw(latent_shape)
        return latent_shape[0], self.out_channels, (T - 1) * VIDEO_SCALE[0] + 1, H * VIDEO_SCALE[1], W * VIDEO_SCALE[2]

    def plan_tiling(self, latent_shape: tuple[int, ...], budget: int) -> TilingConfig | None:
        """The tiling for a decode of ``latent_shape`` whose activations must stay under ``budget`` bytes
        (``diffusion_tiling.auto_tiling``; None: one tile; the smallest tiles when none fits)."""
        return auto_tiling(self.config, self.config.work_latent_thw(latent_shape), budget,
                           mx.zeros((), self.dtype).itemsize, na_block_bytes(self.dtype))

    def iter_decode(self, latent: mx.array, noise=None, tiling: TilingConfig | None = None,
                    border: str = "chunked_eager", key: mx.array | None = None, sharing=None) -> Iterator[mx.array]:
        """Decode, yielding the blended pixels ``(B, 3, f, H, W)`` (raw ``[−1, 1]`` scale, cropped to the
        latent's own size) chunk by chunk in frame order (``_decode_pixels``). Stages 1–3 run once;
        stages 4–5 per tile of ``tiling`` (None: one tile). ``noise``: the sampler's start, standard
        normal over :meth:`work_pixel_shape` — an array, or ``noise(shape, dtype)`` called once (the
        reference's one ``torch.randn`` from the pipeline generator), or None (``key`` / the global RNG).
        A one-step x0 model draws per tile instead, as the reference. ``sharing``
        (``distributed.TileSharing``): the tiles are divided among the ranks, every rank drawing every
        tile's noise in order."""
        if border not in BORDERS:
            raise ValueError(f"border={border!r}; expected one of {BORDERS}")
        cfg = self.config
        B, _, T, H, W = latent.shape
        work, (_, h_pad, w_pad) = self.prepare_latent(latent)
        work_shape = self.work_pixel_shape(latent.shape)
        s4 = stage4_thw_from_latent(cfg.upsamples, *work.shape[2:])
        tiles = prepare_tile_schedule(cfg, s4, tiling)
        feat = self.forward_stages_1_to_3(self.ghost_pad(work))
        mx.eval(feat)

        def draw(shape):
            if callable(noise):
                n = noise(shape, self.dtype)
            elif noise is not None:
                n = noise
            else:
                n = mx.random.normal(shape, key=key)
            if tuple(n.shape) != tuple(shape):
                raise ValueError(f"noise of shape {tuple(n.shape)}; this latent needs {tuple(shape)} (the padded "
                                 f"pixel volume)")
            return n

        per_tile = cfg.default_num_inference_steps == 1 and cfg.model_output_type == "x0"
        x_init = None if per_tile else draw(work_shape).transpose(0, 2, 3, 4, 1)  # channels-last
        acc = np.float16 if self.dtype == mx.bfloat16 else np.float32  # as the reference's accumulator
        weights = axis_weights(tiles, work_shape[2:])
        complementary = all(np.allclose(w, 1.0, rtol=0.0, atol=1e-5) for w in weights)
        F = (T - 1) * VIDEO_SCALE[0] + 1
        h0, w0 = h_pad[0] * VIDEO_SCALE[1], w_pad[0] * VIDEO_SCALE[2]

        def emit(buf: np.ndarray, start: int) -> mx.array | None:
            keep = min(buf.shape[2], F - start)
            if keep < 1:
                return None
            x = buf[:, :, :keep]
            if not complementary:
                wt = weights[0][start:start + keep][:, None, None] * weights[1][:, None] * weights[2][None, :]
                x = x / np.maximum(wt, 1e-8)
            x = x[:, :, :, h0:h0 + H * VIDEO_SCALE[1], w0:w0 + W * VIDEO_SCALE[2]]
            return mx.array(np.ascontiguousarray(x)).astype(self.dtype)

        def tile_pixels(tile, run: bool = True) -> mx.array | None:
            """The tile's decoded pixels, channels-last, over its output region (``run=False``: only its draw)."""
            t0, t1 = tile.s4[0].start, tile.s4[0].stop
            pad_trailing = t1 == s4[0]
            content = (t1 - t0, tile.s4[1].stop - tile.s4[1].start, tile.s4[2].stop - tile.s4[2].start)
            canvas = stage5_canvas(cfg, content, tile.is_origin, pad_trailing)
            if per_tile:
                x_t = draw((B, self.out_channels, *canvas)).transpose(0, 2, 3, 4, 1)
            elif run:
                x_t = x_init[:, tile.out[0], tile.out[1], tile.out[2]]
                for axis, size, mode in zip((1, 2, 3), canvas, ("repeat_last", "symmetric", "symmetric")):
                    x_t, _ = resize_axis(x_t, axis, size, mode)
            if not run:
                return None
            feat_tile = feat[:, t0:feat.shape[1] if pad_trailing else t1, tile.s4[1], tile.s4[2]]
            out = self.decode_tile(feat_tile, x_t, tile.is_origin, pad_trailing, border)
            out, _ = resize_axis(out, 1, tile.out[0].stop - tile.out[0].start, "repeat_last")
            return out

        prev: tuple[np.ndarray, int] | None = None
        first = 0
        for group in group_by_frames(tiles):
            g0, g1 = group[0].out[0].start, group[0].out[0].stop
            buf = np.zeros((B, self.out_channels, g1 - g0, *work_shape[3:]), dtype=acc)
            outs = (map(tile_pixels, group) if sharing is None or len(tiles) == 1 else
                    sharing.group(first, len(group), lambda i, run: tile_pixels(group[i], run),
                                  lambda i: (B, *(s.stop - s.start for s in group[i].out), self.out_channels)))
            first += len(group)
            for tile, out in zip(group, outs):
                px = np.array(out.astype(mx.float32)).astype(acc).astype(np.float32).transpose(0, 4, 1, 2, 3)
                mask = tile.masks[0][:, None, None] * tile.masks[1][:, None] * tile.masks[2][None, :]
                region = buf[:, :, :, tile.out[1], tile.out[2]]
                buf[:, :, :, tile.out[1], tile.out[2]] = (region.astype(np.float32) + px * mask).astype(acc)
            if prev is not None:
                pbuf, p0 = prev
                overlap = p0 + pbuf.shape[2] - g0
                if overlap > 0:
                    buf[:, :, :overlap] = (buf[:, :, :overlap].astype(np.float32)
                                           + pbuf[:, :, g0 - p0:].astype(np.float32)).astype(acc)
                chunk = emit(pbuf[:, :, :g0 - p0], p0)
                if chunk is not None:
                    yield chunk
            prev = (buf, g0)
        chunk = emit(*prev)
        if chunk is not None:
            yield chunk

    def decode_raw(self, latent: mx.array, noise=None, tiling: TilingConfig | None = None,
                   border: str = "chunked_eager", key: mx.array | None = None) -> mx.array:
        """:meth:`iter_decode`'s chunks joined: ``(B, 3, F, H, W)`` before ``(x+1)/2`` and the clamp."""
        return mx.concatenate(list(self.iter_decode(latent, noise, tiling, border, key)), axis=2)

    def __call__(self, latent: mx.array, noise=None, border: str = "chunked_eager",
                 tiling: TilingConfig | None = None) -> mx.array:
        """Decode to pixels ``(B, F, H, W, 3)`` in [0, 1], cropped to the latent's own size
        (1+8(T−1), 32H, 32W). (The reference's ``decode_video`` yields batch 0 only, as (F, H, W, 3).)"""
        x = self.decode_raw(latent, noise, tiling, border).astype(mx.float32)
        return mx.clip((x.transpose(0, 2, 3, 4, 1) + 1) * 0.5, 0, 1)


def _crop_ghost(x: mx.array, ghost: int, kernel_t: int) -> mx.array:
    """``crop_trailing_context_natten_pad``: drop the ghost frames, keeping at least ``kernel_t``."""
    if ghost <= 0:
        return x
    keep = min(x.shape[1], max(max(x.shape[1] - ghost, 1), kernel_t))
    return resize_axis(x, 1, keep, "repeat_last")[0]


def _expected_source_key(module_key: str, bare: bool) -> str:
    """The checkpoint key a module key comes from (for naming a missing tensor); ``bare``: the file
    names keys ``decoder.*`` rather than ``vae.decoder.*``."""
    key = module_key
    for src, dst in _RENAMES:
        if key.startswith(dst):
            key = src + key[len(dst):]
    for leaf in ("to_q", "to_k", "to_v"):
        key = key.replace(f".attn.qkv.{leaf}.", ".attn.qkv.")
    src = COMPONENTS["vae_decoder"].source_key(key)
    return src.removeprefix("vae.") if bare else src


def rewrite_checkpoint_weights(weights: dict[str, mx.array], origin: dict[str, str]
                               ) -> tuple[dict[str, mx.array], dict[str, str]]:
    """The reference's decoder SDOps on module keys (prefixes already stripped). A gate whose Linear
    is absent stays in, so the strict load reports it as unexpected."""
    gates = {k: v for k, v in weights.items() if k.endswith((".gate_msa", ".gate_mlp", ".gate_ctx"))}
    used: set[str] = set()
    out: dict[str, mx.array] = {}
    src: dict[str, str] = {}
    for key, value in weights.items():
        if key.startswith("coarse_") or key in gates:
            continue
        new = key
        for a, b in _RENAMES:
            if new.startswith(a):
                new = b + new[len(a):]
        leaf = next((lf for lf in _GATE_TARGETS if new.endswith(lf)), None)
        gate_key = new[: -len(leaf)] + _GATE_TARGETS[leaf] if leaf else None
        if gate_key in gates:
            g = gates[gate_key].astype(mx.float32)
            folded = (g[:, None] if value.ndim == 2 else g) * value.astype(mx.float32)
            value = folded.astype(value.dtype)  # rounded back to the file's dtype, as the reference
            used.add(gate_key)
        if new.endswith((".attn.qkv.weight", ".attn.qkv.bias")):
            if value.shape[0] % 3:
                raise CheckpointError(f"fused qkv {origin.get(key, key)!r}: leading dim {value.shape[0]} "
                                      f"is not divisible by 3")
            d = value.shape[0] // 3
            stem, leaf_name = new.rsplit(".", 1)
            for j, part in enumerate(("to_q", "to_k", "to_v")):
                out[f"{stem}.{part}.{leaf_name}"] = value[j * d:(j + 1) * d]
                src[f"{stem}.{part}.{leaf_name}"] = origin.get(key, key)
            continue
        out[new] = value
        src[new] = origin.get(key, key)
    for k in gates.keys() - used:
        out[k] = gates[k]
        src[k] = origin.get(k, k)
    return out, src
