#!/usr/bin/env python
"""LTX-2.5 diffusion video decoder fixtures: a tiny random-weight ``CausalDiffusionVAE`` file in the release key
layout, and goldens from the official reference (ltx-core 1.2.0, imported, never copied). Format: FORMAT-DIFFVAE.md.

    .venv-reference/bin/python tests/reference/make_ref_diffvae.py --seed 1234 \\
        --out tests/reference/fixtures/diffvae-s1234

What it does:
1. builds the decoder and encoder with the reference's configurators from a nested ``config.vae``, randomizes them
   (make_ref.randomize_: norm gains ~1, values pre-rounded to bf16), rewrites the decoder state dict into the release
   layout (fused ``attn.qkv``, ``t_embedder.mlp.{0,2}``, static ``diff_blocks.{n}.gate_{msa,mlp,ctx}`` != 1, a
   ``coarse_*`` preview head, bare ``decoder.``/``encoder.``/``per_channel_statistics.`` prefixes) and writes it in bf16;
2. ``golden_na3d``: the reference's eager tiled-SDPA ``na3d`` (what ``apply.py`` installs without natten) on random
   q, k, v, cross-checked against a brute-force window gather;
3. ``golden_diffvae``: the decoder reloaded in float32 through ``video_decoder_sd_ops_for_checkpoint`` (qkv split,
   gate fold in f32 then cast back to the file's bf16, coarse drop) in two modes: ``chunked_eager`` (the pipelines'
   default, installed by ``build_diffvae_mode_op``; on CPU it resolves to eager NA) and the combined full-volume block
   (the module's own default build with the eager NA installed on every NA module, since ``combined_compile`` itself
   requires natten). Records the latent, per-stage outputs, the injected x_t noise, per-step sampler tensors and the
   decoded pixels.

Same seed => byte-identical files (all but REPORT.txt). Seeds: weights `seed`, gates/coarse head `seed+1`,
na3d inputs `seed+2`, decode latent `seed+3`, sampler generator `seed+4`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import make_ref as mr  # noqa: E402, F401  (installs the torchaudio / OpenImageIO shims before any reference import)
import torch  # noqa: E402
from make_ref import canonicalize_header, persistent_sd, randomize_  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from ltx_core.loader import SingleGPUModelBuilder  # noqa: E402
from ltx_core.model.video_vae import (  # noqa: E402
    VAE_ENCODER_COMFY_KEYS_FILTER,
    VideoDecoderConfigurator,
    VideoEncoderConfigurator,
)
from ltx_core.model.video_vae import diffusion_tiling  # noqa: E402
from ltx_core.model.video_vae.model_configurator import video_decoder_sd_ops_for_checkpoint  # noqa: E402
from ltx_core.model.video_vae.transformer.apply import build_diffvae_mode_op, resolve_attention_for_host  # noqa: E402
from ltx_core.model.video_vae.transformer.attention import NeighborhoodAttention3D, natten_available  # noqa: E402
from ltx_core.model.video_vae.transformer.config import DiffVAEMode  # noqa: E402
from ltx_core.model.video_vae.transformer.fallback_na import EagerSdpaAttention  # noqa: E402
from ltx_core.model.video_vae.transformer.fallback_na.eager import na3d as eager_na3d  # noqa: E402
from ltx_core.tiling import DimensionSizeConfig, TileSizeConfig  # noqa: E402
from ltx_core.types import VideoLatentShape  # noqa: E402

F32 = torch.float32
CPU = torch.device("cpu")
REFERENCE = "ltx-core 1.2.0 / ltx-pipelines 1.2.0 (Lightricks/LTX-2 400fd31)"
VAE_FILE = "vae/tiny-diffusion-video-vae-bf16.safetensors"
NA3D_FILE = "golden_na3d.safetensors"
DECODE_FILE = "golden_diffvae.safetensors"

LATENT_C = 32
# Nested CausalDiffusionVAE config. The default `upsamples` reductions (2,2,1,2) force the widths (c, c/2, c/4, c/4,
# c/8); head_dim 16 gives the RoPE split (4,6,6). Every decoder field the configurator reads is written explicitly.
DECODER_CFG = {
    "in_channels": LATENT_C,
    "out_channels": 3,
    "patch_size": 4,
    "head_dim": 16,
    "stage_channels": [128, 64, 32, 32, 16],
    "stage_depths": [1, 1, 1, 1, 2],
    # stage 1 attends along T only (K_h = K_w = 1) so the latent floor is (3, 2, 2) and the pixel volumes stay small;
    # the 5th entry is unused (stage 5 uses stage5_kernel).
    "stage_kernels": [[3, 1, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "upsamples": [[[1, 2, 2], 2], [[2, 1, 1], 2], [[2, 2, 2], 1], [[2, 2, 2], 2]],
    "stage5_kernel": [3, 5, 5],
    "t_emb_dim": 64,
    "default_num_inference_steps": 3,
    "timestep_scale_multiplier": 1000.0,
}
ENCODER_CFG = {
    "dims": 3,
    "in_channels": 3,
    "out_channels": LATENT_C,
    "patch_size": 4,
    "norm_layer": "pixel_norm",
    "latent_log_var": "uniform",
    "spatial_padding_mode": "zeros",
    "blocks": [
        ["res_x", {"num_layers": 1}],
        ["compress_space_res", {"multiplier": 1}],
        ["compress_time_res", {"multiplier": 1}],
        ["compress_all_res", {"multiplier": 1}],
        ["compress_all_res", {"multiplier": 1}],
    ],
}
VAE_CFG = {
    "_class_name": "CausalDiffusionVAE",
    "latent_channels": LATENT_C,
    "model_output_type": "v",
    "encoder": ENCODER_CFG,
    "decoder": DECODER_CFG,
}
METADATA = {"config": {"vae": VAE_CFG}, "model_version": "2.5.0"}

# The bundled preview head a port must drop (the reference's SDOps drop every post-rename key starting `coarse_`).
COARSE_SHAPES = {
    "coarse_norm_out.weight": (16,),
    "coarse_conv_out.weight": (48, 16),
    "coarse_conv_out.bias": (48,),
}

# na3d cases: (B, T, H, W, heads, D), kernel (Kt, Kh, Kw). Odd sizes: windows shift at both borders of every axis;
# L == K on one axis in cases 1, 2 and 4 (every window is the whole axis), K == 1 on one axis in case 4.
NA3D_CASES = [
    ((1, 5, 7, 9, 2, 16), (3, 3, 3)),
    ((1, 3, 9, 11, 1, 16), (3, 5, 7)),
    ((2, 7, 6, 5, 2, 8), (5, 3, 5)),
    ((1, 4, 13, 10, 2, 8), (3, 7, 7)),
    ((1, 3, 5, 7, 1, 32), (1, 5, 3)),
    ((1, 7, 9, 11, 1, 8), (3, 5, 5)),
]

# Decode latents (B, C, T, H, W). main: at the latent floor (3, 2, 2): 17 frames of 64x64 pixels, stage-5 grid 16x16
# (W in 4 chunks of 4). floor: one latent frame, T below the floor (repeat-last padded, pixels cropped back to 1 frame).
DECODE_CASES = {"main": (1, LATENT_C, 3, 2, 2), "floor": (1, LATENT_C, 1, 2, 2)}
# tiled: stages 4-5 per tile on the stage-4 grid (9, 8, 12) of this latent: 2 x 2 x 2 tiles (pixel sizes / overlaps
# below; the overlaps are the reference's minimum for this decoder, recommended_pixel_overlaps), so a non-origin
# temporal tile (no leading-frame drop), trailing ghost frames, a short last tile and the trapezoid blend on every
# axis all occur. Pixels (17, 64, 96).
TILED_LATENT = (1, LATENT_C, 3, 2, 3)
TILED_TILING = {"frames": (16, 8), "height": (48, 32), "width": (64, 32)}


# ------------------------------------------------------------------------------------------------------- helpers
def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict | None, dtype: torch.dtype) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().clone() for k, v in sorted(tensors.items())}
    md = None if metadata is None else {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    save_file(t, path, metadata=md)
    canonicalize_header(path)


def bf16r(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(F32)


def release_decoder_sd(dec_sd: dict[str, torch.Tensor], gates: dict[str, torch.Tensor],
                       coarse: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The in-memory (split, ungated) decoder state dict -> release-layout keys (without any prefix)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in dec_sd.items():
        if ".attn.qkv.to_" in k:
            if ".attn.qkv.to_q." not in k:
                continue
            base, leaf = k.split(".attn.qkv.to_q.")
            parts = [dec_sd[f"{base}.attn.qkv.to_{p}.{leaf}"] for p in "qkv"]
            out[f"{base}.attn.qkv.{leaf}"] = torch.cat(parts, dim=0)
            continue
        k2 = k.replace("t_embedder.timestep_embedder.linear_1.", "t_embedder.mlp.0.")
        k2 = k2.replace("t_embedder.timestep_embedder.linear_2.", "t_embedder.mlp.2.")
        out[k2] = v
    out.update(gates)
    out.update(coarse)
    return out


def folded_products(dec_sd: dict[str, torch.Tensor], gates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each gate-folded tensor's unrounded f32 product g * W (per output row)."""
    out = {}
    for gk, g in gates.items():
        blk, gname = gk.rsplit(".", 1)
        target = {"gate_msa": "attn.proj", "gate_mlp": "mlp.w_down", "gate_ctx": "context_proj"}[gname]
        for leaf in ("weight", "bias"):
            if f"{blk}.{target}.{leaf}" not in dec_sd:  # mlp.w_down has no bias
                continue
            w = dec_sd[f"{blk}.{target}.{leaf}"].float()
            out[f"{blk}.{target}.{leaf}"] = g[:, None] * w if w.ndim == 2 else g * w
    return out


def expected_folded(dec_sd: dict[str, torch.Tensor], gates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the reference's loader must hold after the gate fold: bf16(g * W) computed in f32 (file dtype bf16)."""
    return {k: bf16r(f) for k, f in folded_products(dec_sd, gates).items()}


def brute_na3d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    """Independent check of the window rule: start = clamp(i - K//2, 0, L - K), window [start, start + K), scale 1."""
    b, t, h, w, nh, d = q.shape
    out = torch.empty_like(q, dtype=torch.float64)
    qd, kd, vd = q.double(), k.double(), v.double()

    def st(i: int, L: int, K: int) -> int:
        return min(max(i - K // 2, 0), L - K)

    for it in range(t):
        t0 = st(it, t, kernel[0])
        for ih in range(h):
            h0 = st(ih, h, kernel[1])
            for iw in range(w):
                w0 = st(iw, w, kernel[2])
                kk = kd[:, t0:t0 + kernel[0], h0:h0 + kernel[1], w0:w0 + kernel[2]].reshape(b, -1, nh, d)
                vv = vd[:, t0:t0 + kernel[0], h0:h0 + kernel[1], w0:w0 + kernel[2]].reshape(b, -1, nh, d)
                s = torch.einsum("bhd,bnhd->bhn", qd[:, it, ih, iw], kk)
                p = torch.softmax(s, dim=-1)
                out[:, it, ih, iw] = torch.einsum("bhn,bnhd->bhd", p, vv)
    return out


def write_diffusion_vae(path: str, metadata: dict, seed: int, encoder: torch.nn.Module | None = None):
    """Build a random ``CausalDiffusionVAE`` from ``metadata`` with the reference's configurators and write it in the
    release layout (bf16). Weights from generator ``seed`` (decoder, then the encoder unless ``encoder`` is given),
    static gates and the coarse head from ``seed + 1``. One ``per_channel_statistics`` in the file: the decoder's
    copied into the new encoder, or ``encoder``'s copied into the decoder (a conv file's encoder reused).
    Returns (decoder state dict, encoder state dict, gates, coarse head, file tensors)."""
    dec0 = VideoDecoderConfigurator.from_metadata(metadata)
    assert type(dec0).__name__ == "DiffusionVideoDecoder", type(dec0)
    g = torch.Generator().manual_seed(seed)
    randomize_(dec0, g)
    with torch.no_grad():
        if encoder is None:
            encoder = VideoEncoderConfigurator.from_metadata(metadata)
            randomize_(encoder, g)
            src, dst = dec0, encoder
        else:
            src, dst = encoder, dec0
        for name in ("std-of-means", "mean-of-means"):
            dst.per_channel_statistics.get_buffer(name).copy_(src.per_channel_statistics.get_buffer(name))
    dec_sd = persistent_sd(dec0)
    enc_sd = persistent_sd(encoder)
    g1 = torch.Generator().manual_seed(seed + 1)
    c5 = metadata["config"]["vae"]["decoder"]["stage_channels"][-1]
    gates = {}
    for n in range(len(dec0.diff_blocks)):
        for gname in ("gate_msa", "gate_mlp", "gate_ctx"):
            # |g| in [0.5, 1.5], a few negative: never 1, so an unfolded port is visibly off.
            v = 0.5 + torch.rand(c5, generator=g1)
            v = torch.where(torch.rand(c5, generator=g1) < 0.15, -v, v)
            gates[f"diff_blocks.{n}.{gname}"] = bf16r(v)
    coarse = {k: bf16r(torch.randn(s, generator=g1) * 0.1) for k, s in COARSE_SHAPES.items()}
    rel = release_decoder_sd(dec_sd, gates, coarse)
    file_sd: dict[str, torch.Tensor] = {}
    for k, v in rel.items():
        file_sd[k if k.startswith("per_channel_statistics.") else "decoder." + k] = v
    for k, v in enc_sd.items():
        if not k.startswith("per_channel_statistics."):
            file_sd["encoder." + k] = v
    write_safetensors(path, file_sd, metadata, torch.bfloat16)
    return dec_sd, enc_sd, gates, coarse, file_sd


def nested_vae_config(latent_c: int, flat_vae: dict, decoder: dict) -> dict:
    """A ``CausalDiffusionVAE`` config whose nested encoder is the flat 2.3-style ``flat_vae``'s encoder (so the
    conv file's encoder weights load into it unchanged) and whose decoder is ``decoder``."""
    enc = {"dims": flat_vae.get("dims", 3), "in_channels": flat_vae.get("in_channels", 3), "out_channels": latent_c,
           "patch_size": flat_vae["patch_size"], "norm_layer": flat_vae.get("norm_layer", "pixel_norm"),
           "latent_log_var": flat_vae.get("latent_log_var", "uniform"),
           "spatial_padding_mode": flat_vae.get("spatial_padding_mode",
                                                flat_vae.get("encoder_spatial_padding_mode", "zeros")),
           "blocks": flat_vae["encoder_blocks"]}
    return {"_class_name": "CausalDiffusionVAE", "latent_channels": latent_c, "model_output_type": "v",
            "encoder": enc, "decoder": {**decoder, "in_channels": latent_c}}


def build_decoder(path: str, mode: str, dtype: torch.dtype = F32) -> torch.nn.Module:
    """Reload the decoder in float32 through the reference's configurator + SD ops.
    mode "chunked_eager": the pipelines' default DiffVAE op (VideoDecoder in ltx_pipelines/utils/blocks.py);
    mode "combined": the module's own default build (CombinedDiffusionNABlock, full-volume NA) with the reference's
    eager NA installed on every NA module (natten's default backend is absent here)."""
    module_ops = (build_diffvae_mode_op(DiffVAEMode.CHUNKED_EAGER),) if mode == "chunked_eager" else ()
    dec = SingleGPUModelBuilder(
        model_class_configurator=VideoDecoderConfigurator,
        model_path=path,
        model_sd_ops=video_decoder_sd_ops_for_checkpoint(path),
        module_ops=module_ops,
    ).build(device=CPU, dtype=dtype).eval()
    if mode == "combined":
        for m in dec.modules():
            if isinstance(m, NeighborhoodAttention3D):
                m.attention_function = EagerSdpaAttention()
                m.natten_backend = None
    meta = [n for n, p in list(dec.named_parameters()) + list(dec.named_buffers()) if p.device.type == "meta"]
    assert not meta, f"uninitialized after load: {meta[:5]}"
    return dec


def decode_with_capture(dec: torch.nn.Module, latent: torch.Tensor, gen_seed: int, tiling=None):
    """decode_video(latent, tiling, generator) with hooks recording stage outputs and every sampler step."""
    rec: dict[str, torch.Tensor] = {}
    hooks = []
    for i in range(3):
        hooks.append(dec.upsamples[i].register_forward_hook(
            lambda _m, _a, out, i=i: rec.__setitem__(f"stage{i + 1}.out", out.detach().clone())))
    hooks.append(dec.conv_in.register_forward_hook(
        lambda _m, _a, out: rec.__setitem__("stage0.conv_in", out.detach().clone())))
    steps: list[tuple] = []
    stage4: list[torch.Tensor] = []
    orig_euler = dec._euler_step
    orig_s4 = dec.forward_stage_4

    def euler(x_t, model_out, t_now, t_next):  # noqa: ANN001, ANN202
        out = orig_euler(x_t, model_out, t_now, t_next)
        steps.append((x_t.detach().clone(), model_out.detach().clone(), t_now.clone(), t_next.clone(),
                      out.detach().clone()))
        return out

    def s4(x, *a, **kw):  # noqa: ANN001, ANN202
        out = orig_s4(x, *a, **kw)
        stage4.append(out.detach().clone())
        return out

    dec._euler_step = euler
    dec.forward_stage_4 = s4
    gen = torch.Generator(device="cpu").manual_seed(gen_seed)
    with torch.no_grad():
        chunks = list(dec.decode_video(latent, tiling, gen))
    del dec._euler_step, dec.forward_stage_4
    for h in hooks:
        h.remove()
    return torch.cat(chunks, dim=0), rec, steps, stage4


def decode_raw(dec: torch.nn.Module, latent: torch.Tensor, gen_seed: int, tiling=None,
               noise: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
    """``_decode_pixels`` (what ``decode_video`` maps with ``(x+1)/2`` and a clamp): the blended, content-cropped
    raw output ``(B, 3, F, H, W)`` chunk by chunk, concatenated; and the chunk frame counts (the temporal groups
    ``decode_video`` streams). ``noise``: returned by the decoder's one ``torch.randn`` instead of a draw."""
    gen = torch.Generator(device="cpu").manual_seed(gen_seed)
    with torch.no_grad(), contextlib.ExitStack() as st:
        if noise is not None:
            real = torch.randn

            def randn(*a, **k):  # noqa: ANN002, ANN003, ANN202
                assert tuple(a[0]) == tuple(noise.shape), (a[0], noise.shape)
                return noise.to(k.get("dtype", F32)).clone()

            torch.randn = randn
            st.callback(setattr, torch, "randn", real)
        chunks = list(dec._decode_pixels(latent, tiling, gen))
    return torch.cat(chunks, dim=2), [c.shape[2] for c in chunks]


def check_decode_video(dec: torch.nn.Module, latent: torch.Tensor, gen_seed: int, tiling, raw: torch.Tensor) -> None:
    """decode_video's frames are ``clamp((raw + 1) / 2)`` of the raw chunks, (F, H, W, 3)."""
    gen = torch.Generator(device="cpu").manual_seed(gen_seed)
    with torch.no_grad():
        pix = torch.cat(list(dec.decode_video(latent, tiling, gen)), dim=0)
    want = ((raw[0].float() + 1) * 0.5).clamp(0, 1).permute(1, 2, 3, 0)
    assert torch.equal(pix.float(), want.to(pix.dtype).float()), "decode_video != clamp((raw + 1) / 2)"


def tile_schedule(dec: torch.nn.Module, latent_shape: tuple, tiling) -> list[dict]:
    """The reference's tiles (prepare_tile_schedule) for the manifest: stage-4 in-coords, pixel out-coords."""
    s = [tuple(u.stride) for u in dec.upsamples]
    s4 = diffusion_tiling.stage4_thw_from_latent(s, *latent_shape[2:], drop_leading_frame=True)
    tiles = diffusion_tiling.prepare_tile_schedule(
        torch.Size([latent_shape[0], latent_shape[1], *s4]), tiling, upsample3_stride=s[3],
        patch_size=dec.patch_size, min_tile_size=dec.tile_min_sizes, tile_halos=dec.tile_halos)
    out = []
    for t in tiles:
        out.append({"in": [[c.start, c.stop] for c in t.in_coords[1:4]],
                    "out": [[c.start, c.stop] for c in t.out_coords[2:5]]})
    return out


def decode_case(gold: dict, report: list[str], case: str, latent: torch.Tensor, gen_seed: int,  # noqa: PLR0913
                dec_c: torch.nn.Module, dec_f: torch.nn.Module, *, full: bool) -> dict:
    """One untiled decode in both modes; keys `{case}.*` (FORMAT-DIFFVAE.md)."""
    p = f"{case}."
    gold[p + "latent"] = latent
    work, (_tp, hp, wp) = diffusion_tiling.ensure_min_latent_shape(latent, dec_c.stage_min_tile_sizes)
    full_shape = VideoLatentShape.from_torch_shape(work.shape).upscale(dec_c.video_downscale_factors)
    target_shape = tuple(full_shape._replace(channels=3).to_torch_shape())
    noise = torch.randn(target_shape, dtype=F32, generator=torch.Generator(device="cpu").manual_seed(gen_seed))
    gold[p + "x_t_noise"] = noise
    if full:
        gold[p + "latent_work"] = work
        gold[p + "latent_ghost_padded"] = diffusion_tiling.pad_trailing_latent_for_natten_border(
            work, dec_c._natten_trailing_pad_latent_frames)
    n_steps = len(dec_c.default_inference_timesteps)
    for mode, dec in (("chunked_eager", dec_c), ("combined", dec_f)):
        pix, rec, steps, s4 = decode_with_capture(dec, latent, gen_seed)
        assert len(s4) == 1 and len(steps) == n_steps
        if work.shape == latent.shape:  # no size floor: the stage-5 canvas is the noise volume itself
            assert torch.equal(steps[0][0], noise), f"{case} {mode}: sampler x_t != recorded noise"
        if full:
            for key in ("stage0.conv_in", "stage1.out", "stage2.out", "stage3.out"):
                if mode == "chunked_eager":
                    gold[p + key] = rec[key]
                else:  # stages 1-3 are mode-independent
                    d_ = (rec[key] - gold[p + key]).abs().max().item()
                    assert d_ == 0.0, f"{key} differs between modes ({d_})"
            if mode == "chunked_eager":
                gold[p + "stage4.features"] = s4[0]  # deferred: NA blocks only, ghost crop at stage-4 resolution
            else:
                gold[p + "stage5.context"] = s4[0]   # combined: + upsamples.3, ghost crop = stage-5 context
            # the last Euler step's output: the raw stage-5 pixels before crop, (x+1)/2 and clamp (B, 3, F, H, W)
            gold[f"{p}{mode}.x0"] = steps[-1][4]
            assert torch.equal(pix, ((steps[-1][4][0] + 1) * 0.5).clamp(0, 1).permute(1, 2, 3, 0)), "pixels != x0"
            mo0 = steps[0][1]
            report.append(f"  {case} {mode}: step0 model_out std {mo0.std():.3f}; x0 std {steps[-1][4].std():.3f}; "
                          f"clamped pixel fraction {((pix == 0) | (pix == 1)).float().mean():.3f}")
        else:
            gold[f"{p}{mode}.pixels"] = pix
            # the latent is floor-padded before the noise draw, so the stage-5 canvas is again the noise itself
            assert torch.equal(steps[0][0], noise), f"{case} {mode}: stage-5 x_t canvas != recorded noise"
        report.append(f"decode {case} {mode}: latent {tuple(latent.shape)} (work {tuple(work.shape)}) -> pixels "
                      f"{tuple(pix.shape)} range [{pix.min():.3f}, {pix.max():.3f}]")
    last = "x0" if full else "pixels"
    d_modes = (gold[f"{p}chunked_eager.{last}"] - gold[f"{p}combined.{last}"]).abs()
    cols = d_modes.amax(dim=(0, 1, 2, 3)) if full else d_modes.amax(dim=(0, 1, 3))
    report.append(f"decode {case}: chunked_eager vs combined {last} max|diff| {d_modes.max():.3e}; W columns differing by "
                  f"> 1e-5: {torch.nonzero(cols > 1e-5).flatten().tolist()}")
    return {"work_latent_shape": list(work.shape), "x_t_noise_shape": list(target_shape),
            "h_pad": None if hp is None else [hp.before, hp.after],
            "w_pad": None if wp is None else [wp.before, wp.after],
            "pixel_shape_fhwc": [latent.shape[2] * 8 - 7, latent.shape[3] * 32, latent.shape[4] * 32, 3]}


# --------------------------------------------------------------------------------------------------------- main
def main() -> None:  # noqa: PLR0915
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    seed, out_dir = args.seed, args.out
    os.makedirs(os.path.join(out_dir, "vae"), exist_ok=True)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    report: list[str] = [f"reference: {REFERENCE}", f"seed {seed}", f"natten available: {natten_available()}"]
    t_start = time.time()

    # ------------------------------------------------------------------ 1. tiny file
    vae_path = os.path.join(out_dir, VAE_FILE)
    dec_sd, enc_sd, gates, coarse, file_sd = write_diffusion_vae(vae_path, METADATA, seed)
    n_params = sum(v.numel() for v in file_sd.values())
    report.append(f"{VAE_FILE}: {len(file_sd)} tensors, {n_params} values, {os.path.getsize(vae_path)} bytes")

    # reload checks: the encoder exactly; the decoder = folded/split weights
    enc = SingleGPUModelBuilder(model_class_configurator=VideoEncoderConfigurator, model_path=vae_path,
                                model_sd_ops=VAE_ENCODER_COMFY_KEYS_FILTER).build(device=CPU, dtype=F32).eval()
    enc_back = persistent_sd(enc)
    assert set(enc_back) == set(enc_sd), set(enc_back) ^ set(enc_sd)
    assert all(torch.equal(enc_back[k], enc_sd[k]) for k in enc_sd), "encoder reload differs"
    report.append("encoder reload (VAE_ENCODER_COMFY_KEYS_FILTER): exact")

    dec_c = build_decoder(vae_path, "chunked_eager")
    dec_f = build_decoder(vae_path, "combined")
    resolved = resolve_attention_for_host(DiffVAEMode.CHUNKED_EAGER.resolve())
    report.append(f"chunked_eager resolves on this host to: {resolved}")
    exp = expected_folded(dec_sd, gates)
    for name, dec in (("chunked_eager", dec_c), ("combined", dec_f)):
        back = persistent_sd(dec)
        for k in [k for k in back if ".stage4_upsample." in k]:  # chunked blocks alias upsamples.3
            assert torch.equal(back.pop(k), back["upsamples.3." + k.split(".stage4_upsample.")[1]])
        assert set(back) == set(dec_sd), set(back) ^ set(dec_sd)
        n_fold = 0
        for k, v in dec_sd.items():
            want = exp.get(k, v)
            n_fold += k in exp
            assert torch.equal(back[k], want), f"{name}: {k} differs after load"
        report.append(f"decoder reload ({name}): {len(back)} tensors; {n_fold} gate-folded tensors == bf16(g*W) "
                      "computed in f32; all others exact; coarse_* and gate_* dropped")
        cls = {type(b).__name__ for b in dec.diff_blocks}
        report.append(f"  {name}: diff_blocks class {cls}, deferred_stage4_upsample={dec.deferred_stage4_upsample}, "
                      f"w_chunks={[m.w_chunks for m in dec.diff_blocks.modules() if isinstance(m, NeighborhoodAttention3D)]}")
    # the fold is not a no-op at bf16: how many folded values differ from the unrounded product
    n_round = sum(int((exp[k] != raw).sum()) for k, raw in folded_products(dec_sd, gates).items())
    report.append(f"gate fold: {n_round} of {sum(v.numel() for v in exp.values())} folded values change under the "
                  "bf16 cast-back (a port folding in f32 without it is off by one bf16 rounding there)")

    # ------------------------------------------------------------------ 2. na3d goldens
    g2 = torch.Generator().manual_seed(seed + 2)
    na: dict[str, torch.Tensor] = {}
    for i, (shape, kernel) in enumerate(NA3D_CASES):
        d = shape[-1]
        q = torch.randn(shape, generator=g2) * d ** -0.5 * 2.0   # q already scaled (the decoder calls NA with scale 1)
        k = torch.randn(shape, generator=g2)
        v = torch.randn(shape, generator=g2)
        o = eager_na3d(q, k, v, kernel_size=list(kernel), is_causal=None, scale=1.0)
        ob = brute_na3d(q, k, v, kernel)
        err = (o.double() - ob).abs().max().item()
        assert err < 1e-5, f"na3d case {i}: eager vs brute force {err}"
        na.update({f"case{i}.in.q": q, f"case{i}.in.k": k, f"case{i}.in.v": v,
                   f"case{i}.kernel": torch.tensor(kernel, dtype=torch.int32), f"case{i}.out": o})
        report.append(f"na3d case{i}: shape {shape} kernel {kernel}: eager vs brute-force gather max|diff| {err:.2e}")
    write_safetensors(os.path.join(out_dir, NA3D_FILE), na, {"format": "mlx_ltx-diffvae-na3d"}, F32)

    # ------------------------------------------------------------------ 3. decoder goldens
    g3 = torch.Generator().manual_seed(seed + 3)
    timesteps = dec_c.default_inference_timesteps.clone()
    gold: dict[str, torch.Tensor] = {"timesteps": timesteps.to(F32)}
    decode_info = {}
    for ci, (case, shape) in enumerate(DECODE_CASES.items()):
        latent = torch.randn(shape, generator=g3)
        gen_seed = seed + 4 + ci
        info = decode_case(gold, report, case, latent, gen_seed, dec_c, dec_f, full=(case == "main"))
        decode_info[case] = {"latent_shape": list(shape), "sampler_generator_seed": gen_seed, **info}

    # tiled, both modes: stages 1-3 once, stages 4-5 per tile, trapezoid blend, streamed per temporal group
    tiling = TileSizeConfig(**{a: DimensionSizeConfig(tile_size=sz, overlap=ov) for a, (sz, ov) in TILED_TILING.items()})
    latent = torch.randn(TILED_LATENT, generator=g3)
    gen_seed = seed + 4 + len(DECODE_CASES)
    gold["tiled.latent"] = latent
    work_shape = VideoLatentShape.from_torch_shape(latent.shape).upscale(dec_c.video_downscale_factors)
    gold["tiled.x_t_noise"] = torch.randn(tuple(work_shape._replace(channels=3).to_torch_shape()), dtype=F32,
                                          generator=torch.Generator(device="cpu").manual_seed(gen_seed))
    untiled, _ = decode_raw(dec_c, latent, gen_seed)
    for mode, dec in (("chunked_eager", dec_c), ("combined", dec_f)):
        raw, chunk_frames = decode_raw(dec, latent, gen_seed, tiling)
        check_decode_video(dec, latent, gen_seed, tiling, raw)
        gold[f"tiled.{mode}.raw"] = raw
        gold[f"tiled.{mode}.chunk_frames"] = torch.tensor(chunk_frames, dtype=torch.int32)
        report.append(f"decode tiled {mode}: {len(tile_schedule(dec, latent.shape, tiling))} tiles, chunks of "
                      f"{chunk_frames} frames; raw {tuple(raw.shape)}")
    report.append(f"decode tiled: tiled vs untiled (chunked_eager) raw max|diff| "
                  f"{(gold['tiled.chunked_eager.raw'] - untiled).abs().max():.3e} (tiles see less context)")
    decode_info["tiled"] = {"latent_shape": list(TILED_LATENT), "sampler_generator_seed": gen_seed,
                            "x_t_noise_shape": list(gold["tiled.x_t_noise"].shape),
                            "tiling": {a: {"tile_size": sz, "overlap": ov} for a, (sz, ov) in TILED_TILING.items()},
                            "tiles": tile_schedule(dec_c, latent.shape, tiling)}

    # model_output_type "x0": the same weights, the sampler's x0 branch (to_velocity between steps, raw last output)
    main_latent, main_seed = gold["main.latent"], decode_info["main"]["sampler_generator_seed"]
    dec_c.model_output_type = "x0"
    gold["x0type.chunked_eager.raw"], _ = decode_raw(dec_c, main_latent, main_seed)
    dec_c.model_output_type = VAE_CFG["model_output_type"]
    decode_info["x0type"] = {"latent": "main.latent", "noise": "main.x_t_noise", "model_output_type": "x0"}

    # bfloat16 (the pipelines' build): noise drawn in bf16 from the generator, accumulator fp16, output bf16
    dec_b = build_decoder(vae_path, "chunked_eager", torch.bfloat16)
    lat_b = main_latent.to(torch.bfloat16)
    noise_b = gold["main.x_t_noise"].to(torch.bfloat16)  # injected: what a bf16 pipeline's draw would be cast to
    raw_b, _ = decode_raw(dec_b, lat_b, main_seed, noise=noise_b)
    # the same inputs in float32: how far the reference's own bf16 build lands from its f32 one
    raw_f, _ = decode_raw(dec_c, lat_b.float(), main_seed, noise=noise_b.float())
    ref_err = ((raw_b.float() - raw_f).abs().max() / raw_f.abs().max()).item()
    gold["bf16.chunked_eager.raw"] = raw_b.float()
    gold["bf16.ref_err"] = torch.tensor([ref_err], dtype=F32)
    report.append(f"decode bf16 chunked_eager: reference bf16 vs f32 raw, relative max|diff| {ref_err:.3e}")
    decode_info["bf16"] = {"latent": "main.latent (cast to bf16)", "noise": "main.x_t_noise (cast to bf16)",
                           "dtype": "bfloat16", "accumulator": "float16"}
    write_safetensors(os.path.join(out_dir, DECODE_FILE), gold, {"format": "mlx_ltx-diffvae"}, F32)

    # ------------------------------------------------------------------ manifest / report
    manifest = {
        "generation": "diffvae",
        "reference": REFERENCE,
        "seed": seed,
        "seeds": {"weights": seed, "gates_coarse": seed + 1, "na3d": seed + 2, "latents": seed + 3,
                  "sampler_generator": "seed + 4 + case index"},
        "files": {"vae": VAE_FILE, "golden_na3d": NA3D_FILE, "golden_diffvae": DECODE_FILE},
        "vae_metadata": METADATA,
        "decoder": {
            "default_num_inference_steps": DECODER_CFG["default_num_inference_steps"],
            "model_output_type": VAE_CFG["model_output_type"],
            "timestep_scale_multiplier": DECODER_CFG["timestep_scale_multiplier"],
            "timesteps": [float(x) for x in timesteps],
            "rope_dim_split": list(dec_c.det_stages[0][0].attn.rope_dim_split),
            "stage_min_tile_sizes": list(dec_c.stage_min_tile_sizes),
            "tile_min_sizes": list(dec_c.tile_min_sizes),
            "tile_halos": [list(h) for h in dec_c.tile_halos],
            "natten_trailing_pad_latent_frames": dec_c._natten_trailing_pad_latent_frames,
            "chunked_w_chunks": resolved.w_chunks,
            "gate_keys": sorted(gates),
            "coarse_keys": sorted("decoder." + k for k in coarse),
        },
        "na3d_cases": [{"shape": list(s), "kernel": list(k), "scale": 1.0} for s, k in NA3D_CASES],
        "decode": {
            "cases": decode_info,
            "x_t_noise_draw": "torch.randn(x_t_noise_shape, dtype=float32, generator=Generator('cpu')"
                              ".manual_seed(sampler_generator_seed)), the first draw of decode_video",
            "dtype": "float32",
            "tiling": None,
            "modes": {"chunked_eager": "build_diffvae_mode_op(CHUNKED_EAGER) (eager NA fallback on CPU)",
                      "combined": "default CombinedDiffusionNABlock build + EagerSdpaAttention on every NA module "
                                  "(combined_compile itself needs natten)"},
        },
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(out_dir) for fn in fns)
    report.append(f"total size {total} bytes; {time.time() - t_start:.1f} s")
    with open(os.path.join(out_dir, "REPORT.txt"), "w") as f:
        f.write("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
