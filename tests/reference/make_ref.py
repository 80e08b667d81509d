#!/usr/bin/env python
"""Fixture generator for mlx_ltx: tiny LTX checkpoints and golden outputs from the official reference.

Builds TINY random-weight LTX-2.3 / LTX-2 modules with the official PyTorch reference
(ltx-core 1.2.0, imported, not copied), writes a single-file checkpoint laid out like the
official ``ltx-2.3-22b-*.safetensors`` (same key prefixes, JSON ``config`` in ``__metadata__``),
loads it back through the reference's own SingleGPUModelBuilder + configurators + SDOps, checks
that the loaded modules reproduce the in-memory ones, and writes golden input/output tensors.
Every file and key is specified in tests/reference/FORMAT.md; pipeline goldens come from
pipeline_goldens.py, variants from variants.py.

Install the reference (about 2 minutes; keep the venv out of git):

    python3 -m venv .venv-reference
    .venv-reference/bin/pip install torch==2.13.0   # the CPU wheel; plain `torch` pulls GBs of CUDA
    .venv-reference/bin/pip install numpy einops safetensors scipy accelerate "transformers==5.14.1" \\
        av pillow cloudpickle tqdm
    git clone https://github.com/Lightricks/LTX-2 /tmp/ltx2   # at 400fd31 (ltx-core 1.2.0)
    .venv-reference/bin/pip install --no-deps /tmp/ltx2/packages/ltx-core /tmp/ltx2/packages/ltx-pipelines

Regenerate the committed fixture sets (byte-identical for the same variant and seed, except
REPORT.txt):

    for v in tiny ltx2-19b real23 real19b; do
        .venv-reference/bin/python tests/reference/make_ref.py --variant $v --seed 1234 \\
            --out tests/reference/fixtures/$v-s1234
    done

Any other variant/seed makes a set for ``MLX_LTX_REFERENCE_DIR`` (e.g. ``--variant alt --seed 7``).
LTX-2.5 split-layout sets (tiny25, real25) come from make_ref_25.py (FORMAT-25.md), which imports this module.
Flags: --no-gemma, --no-pipeline, --no-e2e, --no-more-pipelines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import types

import torch

# --- torchaudio shim -------------------------------------------------------
# ltx_core.model.audio_vae/__init__ imports .ops, which does `import torchaudio` (only used by
# AudioProcessor: MelSpectrogram + resample for *encoding* raw waveforms). No torchaudio wheel
# matches torch 2.13 CPU here, so install an inert stub; anything that really touches it raises.
try:
    import torchaudio  # noqa: F401
except Exception:  # pragma: no cover
    # transformers probes find_spec("torchaudio") (lru-cached): probe it before the stub exists.
    from transformers.utils import import_utils as _tf_iu

    _tf_iu.is_torchaudio_available()
    _stub = types.ModuleType("torchaudio")

    def _missing(*_a, **_k):
        raise RuntimeError("torchaudio stub: not available in the oracle venv")

    _stub.transforms = types.SimpleNamespace(MelSpectrogram=_missing)
    _stub.functional = types.SimpleNamespace(resample=_missing)
    sys.modules["torchaudio"] = _stub
# ltx_pipelines.utils.media_io imports OpenImageIO (EXR/HDR I/O only). Inert stub if it is absent.
try:
    import OpenImageIO  # noqa: F401
except Exception:  # pragma: no cover
    sys.modules["OpenImageIO"] = types.ModuleType("OpenImageIO")

from safetensors.torch import save_file  # noqa: E402

from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier  # noqa: E402
from ltx_core.components.schedulers import LTX2Scheduler  # noqa: E402
from ltx_core.loader import SDOps, SingleGPUModelBuilder  # noqa: E402
from ltx_core.model.audio_vae import (  # noqa: E402
    AUDIO_VAE_DECODER_COMFY_KEYS_FILTER,
    AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER,
    VOCODER_COMFY_KEYS_FILTER,
    AudioDecoderConfigurator,
    AudioEncoderConfigurator,
    VocoderConfigurator,
)
from ltx_core.model.transformer import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator  # noqa: E402
from ltx_core.model.transformer.modality import Modality  # noqa: E402
from ltx_core.model.upsampler import LatentUpsamplerConfigurator, upsample_video  # noqa: E402
from ltx_core.model.video_vae import (  # noqa: E402
    VAE_DECODER_COMFY_KEYS_FILTER,
    VAE_ENCODER_COMFY_KEYS_FILTER,
    VideoDecoderConfigurator,
    VideoEncoderConfigurator,
)
from ltx_core.model.video_vae.attention import _RMSNorm2D as _VAERMSNorm2D  # noqa: E402
from ltx_core.text_encoders.gemma.embeddings_connector import (  # noqa: E402
    AudioEmbeddings1DConnectorConfigurator,
    Embeddings1DConnectorConfigurator,
)
from ltx_core.text_encoders.gemma.embeddings_processor import EmbeddingsProcessor  # noqa: E402
from ltx_core.text_encoders.gemma.encoders import encoder_configurator as ec  # noqa: E402
from ltx_core.tools import AudioLatentTools, VideoLatentTools  # noqa: E402
from ltx_core.types import AudioLatentShape, SpatioTemporalScaleFactors, VideoLatentShape  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from variants import VARIANTS, get_variant  # noqa: E402
from lora_layouts import lora_layouts_golden  # noqa: E402

# ---------------------------------------------------------------------------
# Normalization layers, by type. Their gains (every parameter but a bias) start around 1: at ~0.1 the
# attention q/k RMSNorms would shrink queries and keys so much that softmax is nearly uniform and
# wrong RoPE / positions / masks would barely move the goldens.
NORM_TYPES = (torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.GroupNorm, _VAERMSNorm2D)


def randomize_(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Deterministic, non-degenerate random weights; values pre-rounded to bf16 so the bf16
    checkpoint and the in-memory fp32 module hold identical numbers. Norm gains are 1 + 0.2·randn."""
    norm_gains = set()
    for mname, m in module.named_modules():
        owned = [pn for pn, _ in m.named_parameters(recurse=False)]
        if isinstance(m, NORM_TYPES):
            norm_gains.update(f"{mname}.{pn}" if mname else pn for pn in owned if pn != "bias")
        elif owned and mname.rsplit(".", 1)[-1].endswith("norm"):  # guard: a norm class missing from NORM_TYPES
            raise TypeError(f"{mname} ({type(m).__name__}) looks like a norm layer; add its type to NORM_TYPES")
    with torch.no_grad():
        persistent = set(module.state_dict().keys())  # never touch non-persistent (computed) buffers
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if name not in persistent or not p.is_floating_point():
                continue
            if name in norm_gains:
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            elif name.endswith("std-of-means"):
                v = 0.5 + torch.rand(p.shape, generator=gen)
            elif name.endswith("mel_basis"):
                v = torch.rand(p.shape, generator=gen) * 0.2
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=gen) / math.sqrt(max(fan_in, 1))
            else:
                v = torch.randn(p.shape, generator=gen) * 0.1
            p.copy_(v.to(torch.bfloat16).to(p.dtype))


def canonicalize_header(path: str) -> None:
    """safetensors serialises __metadata__ from a Rust HashMap, so with 2+ metadata keys their order in the
    header differs from run to run. Rewrite the header with sorted metadata keys (tensor entries, offsets and
    data untouched) so that the same seed gives byte-identical files."""
    import struct

    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])


def persistent_sd(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def build_back(configurator, path: str, sd_ops: SDOps | None):
    model = SingleGPUModelBuilder(
        model_class_configurator=configurator, model_path=path, model_sd_ops=sd_ops
    ).build(device=torch.device("cpu"), dtype=torch.float32)
    meta = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.device.type == "meta"]
    assert not meta, f"{configurator.__name__}: uninitialized after load: {meta[:5]}"
    return model.eval()


def bf16_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A bfloat16 copy of a loaded reference module (the original stays float32; draws no random numbers)."""
    import copy

    return copy.deepcopy(module).to(torch.bfloat16).eval()


def bf16_ref_err(ref_bf16: torch.Tensor, ref_f32: torch.Tensor) -> torch.Tensor:
    """max|ref_bf16 − ref_f32| / max|ref_f32| as a float32 [1] tensor (the golden key bf16_ref_err.<key>)."""
    err = (ref_bf16.float() - ref_f32.float()).abs().max() / ref_f32.float().abs().max().clamp_min(1e-12)
    return err.reshape(1).to(torch.float32)


def bf16_report(tag: str, errs: dict[str, torch.Tensor]) -> str:
    """One REPORT line: the largest bf16_ref_err.* of a golden, and each of them."""
    k_max = max(errs, key=lambda k: float(errs[k]))
    each = ", ".join(f"{k.removeprefix('bf16_ref_err.')} {float(e):.2e}" for k, e in errs.items())
    return (f"{tag}: the reference's own bf16 run vs its f32 golden, max rel err {float(errs[k_max]):.3e} "
            f"({k_max.removeprefix('bf16_ref_err.')}); {each}")


def check_same(tag: str, a: torch.Tensor, b: torch.Tensor, report: list[str]) -> None:
    diff = (a.float() - b.float()).abs().max().item()
    report.append(f"{tag}: reload max|diff| = {diff:.3e}  shape={tuple(a.shape)}")
    assert diff <= 1e-5 * max(1.0, a.abs().max().item()), f"{tag}: reloaded model differs ({diff})"


def main() -> None:  # noqa: PLR0915
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="output dir (default /tmp/oracle-out/<variant>-s<seed>)")
    ap.add_argument("--seed", type=int, default=1234, help="seeds weights (seed), inputs (seed+1), ...")
    ap.add_argument("--variant", default="tiny", choices=sorted(VARIANTS))
    ap.add_argument("--no-gemma", action="store_true")
    ap.add_argument("--no-pipeline", action="store_true", help="skip golden_pipeline.safetensors")
    ap.add_argument("--no-e2e", action="store_true", help="skip golden_e2e.safetensors (the pipeline classes)")
    ap.add_argument("--no-more-pipelines", action="store_true",
                    help="skip the issue-14 pipelines' goldens (pipeline_goldens_14.py, FORMAT.md §7)")
    args = ap.parse_args()
    V = get_variant(args.variant)
    SEED = args.seed
    METADATA = V["metadata"]
    TRANSFORMER = METADATA["config"]["transformer"]
    VAE = METADATA["config"]["vae"]
    LATENT_C = VAE["latent_channels"]
    GEMMA_HIDDEN = V["gemma"]["hidden"]
    GEMMA_LAYERS = V["gemma"]["layers"]
    TEXT_LEN = V["text_len"]
    PREFIX = V["prefix"]
    ad = METADATA["config"]["audio_vae"]["model"]["params"]["ddconfig"]
    A_Z = ad["z_channels"]
    A_MEL_LAT = ad["mel_bins"] // (2 ** (len(ad["ch_mult"]) - 1))
    if args.out is None:
        args.out = f"/tmp/oracle-out/{args.variant}-s{SEED}"
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    report: list[str] = [f"variant={args.variant} seed={SEED} prefix={PREFIX}"]

    # ----------------------------------------------------------------- build in memory
    transformer = LTXModelConfigurator.from_metadata(METADATA).eval()
    for attr in ("caption_projection", "audio_caption_projection"):  # V1 (19B): built on the meta device
        if getattr(transformer, attr, None) is not None:
            setattr(transformer, attr, getattr(transformer, attr).to_empty(device="cpu"))
    v_conn = Embeddings1DConnectorConfigurator.from_metadata(METADATA).float()
    a_conn = AudioEmbeddings1DConnectorConfigurator.from_metadata(METADATA).float()

    class _TC:  # only hidden_size / num_hidden_layers are read
        hidden_size = GEMMA_HIDDEN
        num_hidden_layers = GEMMA_LAYERS

    feat = ec._create_feature_extractor(TRANSFORMER, _TC())
    processor = EmbeddingsProcessor(feature_extractor=feat, video_connector=v_conn, audio_connector=a_conn).eval()
    v_enc = VideoEncoderConfigurator.from_metadata(METADATA).eval()
    v_dec = VideoDecoderConfigurator.from_metadata(METADATA).eval()
    a_enc = AudioEncoderConfigurator.from_metadata(METADATA).eval()
    a_dec = AudioDecoderConfigurator.from_metadata(METADATA).eval()
    vocoder = VocoderConfigurator.from_metadata(METADATA).eval()
    for m in (transformer, processor, v_enc, v_dec, a_enc, a_dec, vocoder):
        randomize_(m, gen)
    damp_vocoder_(vocoder, v_dec, V)
    # encoder and decoder share vae.per_channel_statistics in the checkpoint
    v_dec.per_channel_statistics.load_state_dict(v_enc.per_channel_statistics.state_dict())
    a_dec.per_channel_statistics.load_state_dict(a_enc.per_channel_statistics.state_dict())

    # ----------------------------------------------------------------- checkpoint (official layout)
    ckpt: dict[str, torch.Tensor] = {}
    for k, v in persistent_sd(transformer).items():
        ckpt["model.diffusion_model." + k] = v
    for k, v in persistent_sd(v_conn).items():
        ckpt["model.diffusion_model.video_embeddings_connector." + k] = v
    for k, v in persistent_sd(a_conn).items():
        ckpt["model.diffusion_model.audio_embeddings_connector." + k] = v
    for k, v in persistent_sd(feat).items():
        ckpt["text_embedding_projection." + k] = v
    for k, v in persistent_sd(v_enc).items():
        ckpt[("vae." + k) if k.startswith("per_channel_statistics.") else ("vae.encoder." + k)] = v
    for k, v in persistent_sd(v_dec).items():
        if not k.startswith("per_channel_statistics."):
            ckpt["vae.decoder." + k] = v
    for k, v in persistent_sd(a_enc).items():
        ckpt[("audio_vae." + k) if k.startswith("per_channel_statistics.") else ("audio_vae.encoder." + k)] = v
    for k, v in persistent_sd(a_dec).items():
        if not k.startswith("per_channel_statistics."):
            ckpt["audio_vae.decoder." + k] = v
    for k, v in persistent_sd(vocoder).items():
        ckpt["vocoder." + k] = v
    ckpt = {k: v.to(torch.bfloat16).contiguous() for k, v in ckpt.items()}
    ckpt_path = os.path.join(args.out, f"{PREFIX}.safetensors")
    save_file(ckpt, ckpt_path, metadata={k: json.dumps(v) if not isinstance(v, str) else v
                                         for k, v in METADATA.items()})
    canonicalize_header(ckpt_path)
    with open(os.path.join(args.out, f"{PREFIX}.config.json"), "w") as f:
        json.dump(METADATA, f, indent=1)
    with open(os.path.join(args.out, f"{PREFIX}.keys.txt"), "w") as f:
        for k in sorted(ckpt):
            f.write(f"{k}\t{list(ckpt[k].shape)}\t{str(ckpt[k].dtype).replace('torch.', '')}\n")

    up_paths = {}
    up_mem = {}
    for name, ucfg in V["upsamplers"].items():
        up = LatentUpsamplerConfigurator.from_metadata({"config": ucfg}).eval()
        randomize_(up, gen)
        up_mem[name] = up
        p = os.path.join(args.out, f"{PREFIX}-{name}-upscaler.safetensors")
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in persistent_sd(up).items()}, p,
                  metadata={"config": json.dumps(ucfg)})
        up_paths[name] = p

    # ----------------------------------------------------------------- load back with the reference loader
    R_tr = build_back(LTXModelConfigurator, ckpt_path, LTXV_MODEL_COMFY_RENAMING_MAP)
    # EmbeddingsProcessorConfigurator needs a Gemma root for the HF config; an equivalent
    # subclass reads the tiny Gemma dims instead (same connectors/feature extractor/SDOps).
    class _EPConf(ec.EmbeddingsProcessorConfigurator):
        @classmethod
        def from_metadata(cls, metadata):
            return EmbeddingsProcessor(
                video_connector=Embeddings1DConnectorConfigurator.from_metadata(metadata),
                audio_connector=AudioEmbeddings1DConnectorConfigurator.from_metadata(metadata),
                feature_extractor=ec._create_feature_extractor(metadata["config"]["transformer"], _TC()),
            )

    R_proc = build_back(_EPConf, ckpt_path, ec.EMBEDDINGS_PROCESSOR_KEY_OPS)
    R_venc = build_back(VideoEncoderConfigurator, ckpt_path, VAE_ENCODER_COMFY_KEYS_FILTER)
    R_vdec = build_back(VideoDecoderConfigurator, ckpt_path, VAE_DECODER_COMFY_KEYS_FILTER)
    R_aenc = build_back(AudioEncoderConfigurator, ckpt_path, AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER)
    R_adec = build_back(AudioDecoderConfigurator, ckpt_path, AUDIO_VAE_DECODER_COMFY_KEYS_FILTER)
    R_voc = build_back(VocoderConfigurator, ckpt_path, VOCODER_COMFY_KEYS_FILTER)
    R_up = {n: build_back(LatentUpsamplerConfigurator, p, None) for n, p in up_paths.items()}

    gold: dict[str, dict[str, torch.Tensor]] = {}
    g = torch.Generator().manual_seed(SEED + 1)

    with torch.no_grad():
        # ---- text projection (FeatureExtractorV2) + connectors (EmbeddingsProcessor)
        n_valid = V["n_valid_text"]
        mask = torch.zeros(1, TEXT_LEN, dtype=torch.int64)
        mask[:, TEXT_LEN - n_valid:] = 1  # Gemma tokenizer pads on the LEFT
        hidden = [torch.randn(1, TEXT_LEN, GEMMA_HIDDEN, generator=g) * 3 for _ in range(GEMMA_LAYERS + 1)]
        hidden_t = tuple(h * mask[..., None] for h in hidden)
        v_feat, a_feat = R_proc.feature_extractor(hidden_t, mask, "left")
        check_same("text_projection.video", v_feat, processor.feature_extractor(hidden_t, mask, "left")[0], report)
        from ltx_core.text_encoders.gemma.embeddings_processor import convert_to_additive_mask

        add_mask = convert_to_additive_mask(mask, v_feat.dtype)
        v_ctx, a_ctx, bin_mask = R_proc.create_embeddings(v_feat, a_feat, add_mask)
        check_same("connector.video", v_ctx, processor.create_embeddings(v_feat, a_feat, add_mask)[0], report)
        full = R_proc.process_hidden_states(hidden_t, mask, "left")
        check_same("process_hidden_states.video", full.video_encoding, v_ctx, report)
        gold["text_projection"] = {
            **{f"in.hidden_states.{i}": h for i, h in enumerate(hidden_t)},
            "in.attention_mask": mask,
            "in.hidden_states_stacked": torch.stack(hidden_t, dim=-1),
            "out.video_features": v_feat,
            "out.audio_features": a_feat,
        }
        gold["connector"] = {
            "in.video_features": v_feat,
            "in.audio_features": a_feat,
            "in.additive_mask": add_mask,
            "in.binary_mask": mask,
            "out.video_encoding": v_ctx,
            "out.audio_encoding": a_ctx,
            "out.binary_mask": bin_mask,
            # raw connector call on right-padded input (what Embeddings1DConnector itself expects)
        }
        from ltx_core.text_encoders.gemma.embeddings_processor import _apply_right_pad_order, _compute_right_pad_order

        idx, rp_mask = _compute_right_pad_order(add_mask)
        rp_v = _apply_right_pad_order(v_feat, idx)
        raw_v, raw_m = R_proc.video_connector(rp_v, rp_mask)
        gold["connector"].update({"raw.in.video_features_right_padded": rp_v, "raw.in.additive_mask_right_padded": rp_mask,
                                  "raw.out.video": raw_v, "raw.out.mask": raw_m})

        # ---- transformer: video (first latent frame = conditioning, timestep 0) + audio
        scale = SpatioTemporalScaleFactors.from_blocks(VAE["encoder_blocks"], VAE["patch_size"])
        gold["transformer"], video, audio = transformer_golden(
            R_tr, transformer, v_ctx, a_ctx, V=V, latent_c=LATENT_C, audio_z=A_Z, audio_mel_lat=A_MEL_LAT,
            scale=scale, g=g, report=report)

        # ---- LoRA fusion: random test LoRAs, fused by the reference's own builder path
        gold["lora"], lora_files = lora_golden(args.out, PREFIX, ckpt_path, R_tr, video, audio, SEED, report)
        gold["lora_layouts"], layout_files = lora_layouts_golden(args.out, PREFIX, ckpt_path, lora_files, report,
                                                                 canonicalize_header)  # lora_layouts.py
        lora_files = {**lora_files, **layout_files}

        # ---- video VAE encode / decode (SpaceToDepth + DepthToSpace, causal convs)
        vf, vh, vw = V["vae_grid"]
        pix = torch.rand(1, 3, 1 + scale.time * (vf - 1), scale.height * vh, scale.width * vw, generator=g) * 2 - 1
        lat = R_venc(pix)
        check_same("vae.encode", lat, v_enc(pix), report)
        dec_in = torch.randn(1, LATENT_C, vf, vh, vw, generator=g)
        dkw = lambda: {}  # noqa: E731
        if R_vdec.timestep_conditioning:  # 19B decoder: noise injection + timestep conditioning
            d_seed = SEED + 21
            d_ts = torch.full((1,), float(R_vdec.decode_timestep))
            d_noise = torch.randn(dec_in.shape, generator=torch.Generator().manual_seed(d_seed))
            dkw = lambda: {"timestep": d_ts, "generator": torch.Generator().manual_seed(d_seed)}  # noqa: E731
        dec = R_vdec(dec_in, **dkw())
        check_same("vae.decode", dec, v_dec(dec_in, **dkw()), report)
        dec_enc = R_vdec(lat, **dkw())
        gold["video_vae"] = {"encode.in.pixels": pix, "encode.out.latent": lat,
                             "decode.in.latent": dec_in, "decode.out.pixels": dec,
                             "decode_of_encode.out.pixels": dec_enc}
        if R_vdec.timestep_conditioning:
            ns = float(R_vdec.decode_noise_scale)
            R_vdec.decode_noise_scale = 0.0  # timestep conditioning alone (noise term vanishes)
            dec_t = R_vdec(dec_in, **dkw())
            R_vdec.decode_noise_scale = ns
            gold["video_vae"].update({
                "decode.in.timestep": d_ts, "decode.in.noise": d_noise,
                "decode.in.noise_scale": torch.tensor([ns]),
                "decode.in.timestep_scale_multiplier": R_vdec.timestep_scale_multiplier.detach().reshape(1).clone(),
                "decode_noiseless.out.pixels": dec_t})
            report.append(f"vae.decode: timestep_conditioning, timestep {float(d_ts)}, noise_scale {ns} "
                          f"(noise = decode.in.noise; decode_noiseless = same timestep, noise_scale 0)")

        # ---- the reference's own tiled decode / encode, tiles smaller than the input on every axis.
        # Own generator (every other golden stays byte-identical); the encoder's input is an analytic
        # pattern (variants.tiled_pixels) so the golden need not store a video of pixels.
        from ltx_core.tiling import DimensionSizeConfig, TileSizeConfig

        from variants import tiled_pixels

        gt = torch.Generator().manual_seed(SEED + 31)
        st, sh, sw = scale.time, scale.height, scale.width
        t_lat = torch.randn(1, LATENT_C, 3, 3, 4, generator=gt)
        t_pix = torch.from_numpy(tiled_pixels(1 + 3 * st, 4 * sh, 5 * sw))[None]
        dec_tiles = (2 * st, st, 2 * sh, sh, 2 * sw, sw)
        enc_tiles = (3 * st, 2 * st, 3 * sh, 2 * sh, 4 * sw, 2 * sw)

        def _tile_cfg(v):
            return TileSizeConfig(frames=DimensionSizeConfig(v[0], v[1]), height=DimensionSizeConfig(v[2], v[3]),
                                  width=DimensionSizeConfig(v[4], v[5]))

        tkw = {}
        if R_vdec.timestep_conditioning:  # noise scale 0: tiles draw their own noise, so keep it out
            ns = float(R_vdec.decode_noise_scale)
            R_vdec.decode_noise_scale = 0.0
            tkw = {"timestep": d_ts, "generator": torch.Generator().manual_seed(SEED + 32)}
        t_dec = torch.cat(list(R_vdec.tiled_decode(t_lat, _tile_cfg(dec_tiles), **tkw)), dim=2)
        t_full = R_vdec(t_lat, **tkw)
        if R_vdec.timestep_conditioning:
            R_vdec.decode_noise_scale = ns
        gold["video_vae"].update({
            "tiled.in.latent": t_lat, "tiled.decode.tiles": torch.tensor(dec_tiles, dtype=torch.int64),
            "tiled.decode.out.pixels": t_dec,
            "tiled.encode.pixel_shape": torch.tensor(t_pix.shape[2:], dtype=torch.int64),
            "tiled.encode.tiles": torch.tensor(enc_tiles, dtype=torch.int64),
            "tiled.encode.out.latent": R_venc.tiled_encode(t_pix, _tile_cfg(enc_tiles))})
        report.append(f"vae.tiled: decode tiles {dec_tiles}, encode tiles {enc_tiles} (frames/overlap, h, w in "
                      f"pixels); tiled vs untiled decode max|diff| {(t_dec - t_full).abs().max().item():.3e}")
        if R_vdec.timestep_conditioning:
            # the same tiled decode WITH the decoder noise (decode_noise_scale kept): forward runs once per
            # tile, so torch.randn is drawn per tile, in the tile's latent shape, in tile order. Every draw the
            # reference makes is recorded as consumed. Own generator (SEED + 23): nothing else changes.
            draws = []
            real_randn = torch.randn

            def recording_randn(*a, **k):
                out = real_randn(*a, **k)
                draws.append(out.detach().clone())
                return out

            torch.randn = recording_randn
            try:
                tn_dec = torch.cat(list(R_vdec.tiled_decode(
                    t_lat, _tile_cfg(dec_tiles), timestep=d_ts,
                    generator=torch.Generator().manual_seed(SEED + 23))), dim=2)
            finally:
                torch.randn = real_randn
            n_tiles = len(R_vdec._prepare_tiles(t_lat, _tile_cfg(dec_tiles)))
            assert len(draws) == n_tiles, f"tiled decode drew {len(draws)} noises for {n_tiles} tiles"
            gold["video_vae"].update({"tiled_noise.decode.out.pixels": tn_dec, "tiled_noise.in.timestep": d_ts,
                                      "tiled_noise.in.noise_scale": torch.tensor([float(R_vdec.decode_noise_scale)])})
            gold["video_vae"].update({f"tiled_noise.in.noise.{k}": d for k, d in enumerate(draws)})
            report.append(f"vae.tiled_noise: tiles {dec_tiles}, noise_scale {float(R_vdec.decode_noise_scale)}: "
                          f"{n_tiles} tiles, {len(draws)} noise draws of shapes "
                          f"{sorted({tuple(d.shape) for d in draws})}; vs the noiseless tiled decode max|diff| "
                          f"{(tn_dec - t_dec).abs().max().item():.3e}")

        # ---- latent upsamplers (upsample_video = un_normalize -> upsampler -> normalize with VAE stats)
        gold["upsampler"] = {"in.latent": dec_in}
        for n, up in R_up.items():
            raw = up(dec_in)
            check_same(f"upsampler.{n}", raw, up_mem[n](dec_in), report)
            gold["upsampler"][f"{n}.out.raw"] = raw
            gold["upsampler"][f"{n}.out.upsample_video"] = upsample_video(dec_in, R_venc, up)
        # the reference's own bfloat16 run (bf16 copies of upsampler and encoder statistics, latent in bf16)
        R_venc16, lat16, up_err = bf16_copy(R_venc), dec_in.to(torch.bfloat16), {}
        for n, up in R_up.items():
            up16 = bf16_copy(up)
            for k, o in ((f"{n}.out.raw", up16(lat16)),
                         (f"{n}.out.upsample_video", upsample_video(lat16, R_venc16, up16))):
                up_err[f"bf16_ref_err.{k}"] = bf16_ref_err(o, gold["upsampler"][k])
        gold["upsampler"].update(up_err)
        del R_venc16
        report.append(bf16_report("upsampler", up_err))

        # ---- audio VAE decode (+ encode) and vocoder (+BWE)
        a_lat = torch.randn(1, A_Z, V["audio_frames"], A_MEL_LAT, generator=g)
        mel = R_adec(a_lat)
        check_same("audio_vae.decode", mel, a_dec(a_lat), report)
        a_in = torch.randn(*mel.shape, generator=g)
        a_z = R_aenc(a_in)
        gold["audio_vae"] = {"decode.in.latent": a_lat, "decode.out.mel": mel,
                             "encode.in.mel": a_in, "encode.out.latent": a_z}
        wav = R_voc(mel)
        check_same("vocoder", wav, vocoder(mel), report)
        out_sr = int(R_voc.output_sampling_rate)
        gold["vocoder"] = {"in.mel": mel, "out.waveform": wav,
                           "meta.output_sampling_rate": torch.tensor([out_sr], dtype=torch.int64)}
        if hasattr(R_voc, "bwe_generator"):  # LTX-2.3 VocoderWithBWE: 16 kHz vocoder + 48 kHz BWE
            wav_lo = R_voc.vocoder(mel)
            gold["vocoder"].update({"out.waveform_48k": wav, "out.vocoder_only_16k": wav_lo,
                                    "meta.vocoder_sampling_rate": torch.tensor([int(R_voc.input_sampling_rate)])})
        else:  # LTX-2 legacy Vocoder: mel -> 24 kHz directly
            gold["vocoder"][f"out.waveform_{out_sr // 1000}k"] = wav

        # ---- scheduler sigmas
        sch = LTX2Scheduler()
        gold["schedulers"] = {
            "distilled_sigmas": torch.tensor([1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0]),
            "stage2_distilled_sigmas": torch.tensor([0.909375, 0.725, 0.421875, 0.0]),
            "dev_ltx2scheduler_steps30_default_tokens": sch.execute(steps=30),
            "dev_ltx2scheduler_steps40_default_tokens": sch.execute(steps=40),
            "dev_ltx2scheduler_steps30_latent_1x128x16x16x24": sch.execute(steps=30, latent=torch.zeros(1, 128, 16, 16, 24)),
            "dev_ltx2scheduler_steps8_nostretch": sch.execute(steps=8, stretch=False),
            # the few-step schedules tests and small runs use; each value must match to the bit
            **{f"dev_ltx2scheduler_steps{n}_{kind}": sch.execute(steps=n, **kw)
               for n in range(2, 13) for kind, kw in (
                   ("default_tokens", {}), ("nostretch", {"stretch": False}),
                   ("latent_1x8x2x4x6", {"latent": torch.zeros(1, 8, 2, 4, 6)}),
                   ("latent_1x8x3x16x24", {"latent": torch.zeros(1, 8, 3, 16, 24)}))},
        }
        try:  # cross-check the hard-coded lists with ltx-pipelines if it is importable
            from ltx_pipelines.utils import constants as pc  # type: ignore

            assert torch.equal(pc.DISTILLED_SIGMAS.float(), gold["schedulers"]["distilled_sigmas"])
            assert torch.equal(pc.STAGE_2_DISTILLED_SIGMAS.float(), gold["schedulers"]["stage2_distilled_sigmas"])
            report.append("schedulers: distilled lists match ltx_pipelines.utils.constants")
        except ImportError:
            report.append("schedulers: distilled lists copied from ltx-pipelines 1.2.0 utils/constants.py")

    if not args.no_pipeline:
        from pipeline_goldens import pipeline_golden

        with torch.no_grad():  # negative prompt embeddings: same processor, other hidden states
            n_neg = V["n_valid_negative"]
            mask_n = torch.zeros(1, TEXT_LEN, dtype=torch.int64)
            mask_n[:, TEXT_LEN - n_neg:] = 1
            hid_n = tuple(torch.randn(1, TEXT_LEN, GEMMA_HIDDEN, generator=g) * 3 * mask_n[..., None]
                          for _ in range(GEMMA_LAYERS + 1))
            neg = R_proc.process_hidden_states(hid_n, mask_n, "left")
        gold["pipeline"] = pipeline_golden(
            R_tr=R_tr, R_venc=R_venc, R_up_x2=R_up["spatial-x2"], ckpt_path=ckpt_path, V=V, seed=SEED, scale=scale,
            latent_c=LATENT_C, audio_z=A_Z, audio_mel_lat=A_MEL_LAT, v_ctx=v_ctx, a_ctx=a_ctx,
            v_ctx_n=neg.video_encoding, a_ctx_n=neg.audio_encoding, report=report)
        gold["pipeline"].update({f"in.negative.hidden_states.{i}": h for i, h in enumerate(hid_n)})
        gold["pipeline"]["in.negative.attention_mask"] = mask_n

    if not args.no_gemma:
        gold["gemma"] = gemma_golden(args.out, R_proc, report, V, SEED)

    e2e_meta = None
    if not (args.no_gemma or args.no_pipeline or args.no_e2e):  # the reference's pipeline classes, end to end
        from e2e_goldens import e2e_golden

        gold["e2e"], e2e_meta = e2e_golden(
            out_dir=args.out, prefix=PREFIX, ckpt_path=ckpt_path,
            upsampler_path=os.path.join(args.out, f"{PREFIX}-spatial-x2-upscaler.safetensors"),
            lora_path=os.path.join(args.out, lora_files["test"]), gemma_dir=os.path.join(args.out, "tiny-gemma3"),
            V=V, seed=SEED, latent_c=LATENT_C, audio_z=A_Z, audio_mel_lat=A_MEL_LAT, report=report)

    more_meta = {}
    if e2e_meta is not None and not args.no_more_pipelines:  # keyframe interpolation, IC-LoRA, a2vid, retake, t2a
        from pipeline_goldens_14 import more_pipeline_goldens

        more, more_meta = more_pipeline_goldens(
            out_dir=args.out, prefix=PREFIX, ckpt_path=ckpt_path,
            upsampler_path=os.path.join(args.out, f"{PREFIX}-spatial-x2-upscaler.safetensors"),
            lora_path=os.path.join(args.out, lora_files["test"]), gemma_dir=os.path.join(args.out, "tiny-gemma3"),
            V=V, seed=SEED, latent_c=LATENT_C, audio_z=A_Z, audio_mel_lat=A_MEL_LAT, report=report)
        gold.update(more)

    for name, tensors in gold.items():
        save_file({k: v.detach().clone().contiguous() for k, v in tensors.items() if v is not None},
                  os.path.join(args.out, f"golden_{name}.safetensors"))
    manifest = {
        "variant": args.variant, "seed": SEED, "reference": "ltx-core 1.2.0 / ltx-pipelines 1.2.0 (Lightricks/LTX-2 400fd31)",
        "checkpoint": f"{PREFIX}.safetensors",
        "upsamplers": {n: f"{PREFIX}-{n}-upscaler.safetensors" for n in V["upsamplers"]},
        "gemma_dir": None if args.no_gemma else "tiny-gemma3",
        "goldens": sorted(f"golden_{n}.safetensors" for n in gold),
        "loras": lora_files,
    }
    if e2e_meta is not None:
        manifest["e2e"] = e2e_meta
    manifest.update(more_meta)  # FORMAT.md §7: one section per pipeline, and "inputs"
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    report.append(f"total {time.time() - t0:.1f}s")
    with open(os.path.join(args.out, "REPORT.txt"), "w") as f:
        f.write("\n".join(report) + "\n")
    print("\n".join(report))


def damp_vocoder_(vocoder: torch.nn.Module, v_dec: torch.nn.Module, V: dict) -> None:
    """Keep the vocoder output inside (-1, 1) so the clamp does not flatten the golden (scales the upsampling
    and final convs, bf16-rounded); a timestep-conditioned decoder gets a bf16-exact multiplier 928, not 1000."""
    with torch.no_grad():
        post_v, post_bwe = V.get("vocoder_post_scale", (0.5, 0.05))  # real23 (6-stage vocoder) needs smaller ones
        pairs = ((vocoder.vocoder, post_v), (vocoder.bwe_generator, post_bwe)) if hasattr(vocoder, "bwe_generator") \
            else ((vocoder, post_v),)
        for gen_, post in pairs:
            ups_scale = V.get("vocoder_ups_scale", 0.15)  # the 19B HiFi-GAN needs more, or biases drown the mel
            for conv, f in [(u, ups_scale) for u in gen_.ups] + [(gen_.conv_post, post)]:
                conv.weight.mul_(f).copy_(conv.weight.to(torch.bfloat16).float())
        if getattr(v_dec, "timestep_conditioning", False):  # 0-d scalar: a bf16-exact value, not 1000 (catch hard-coding)
            v_dec.timestep_scale_multiplier.fill_(928.0)


def transformer_golden(R_tr, transformer, v_ctx, a_ctx, *, V: dict, latent_c: int, audio_z: int,  # noqa: ANN001, PLR0913
                       audio_mel_lat: int, scale, g: torch.Generator, report: list[str], keyframes: bool = False
                       ) -> tuple[dict[str, torch.Tensor], Modality, Modality]:
    """golden_transformer (FORMAT.md §3): the reloaded transformer vs the in-memory one on one video+audio call
    (first latent frame = conditioning), the video-only and uniform-timestep passes, and the reference's own bf16
    run. Draws the latents from ``g`` (video, then audio). ``keyframes``: pass the state's ``keyframes_mask``
    (first latent frame marked) in the video Modality and store it as ``in.video.keyframes_mask`` (LTX-2.5)."""
    LATENT_C, A_Z, A_MEL_LAT = latent_c, audio_z, audio_mel_lat
    gold: dict[str, dict[str, torch.Tensor]] = {}

    tf, th, tw = V["tr_grid"]
    vshape = VideoLatentShape(batch=1, channels=LATENT_C, frames=tf, height=th, width=tw)
    vtools = VideoLatentTools(VideoLatentPatchifier(patch_size=1), vshape, fps=V["fps"], scale_factors=scale)
    vstate = vtools.create_initial_state(torch.device("cpu"), torch.float32,
                                         torch.randn(vshape.to_torch_shape(), generator=g))
    tpf = vtools.tokens_per_latent_frame
    dmask = vstate.denoise_mask.clone()
    dmask[:, :tpf] = 0.0  # conditioning frame -> per-token timestep 0
    ashape = AudioLatentShape(batch=1, channels=A_Z, frames=V["audio_frames"], mel_bins=A_MEL_LAT)
    atools = AudioLatentTools(AudioPatchifier(patch_size=1), ashape)
    astate = atools.create_initial_state(torch.device("cpu"), torch.float32,
                                         torch.randn(ashape.to_torch_shape(), generator=g))
    sigma = torch.tensor([0.725])
    v_ts = (dmask * sigma.view(-1, 1, 1)).squeeze(-1) if dmask.ndim == 3 else dmask * sigma.view(-1, 1)
    a_ts = (astate.denoise_mask * sigma.view(-1, 1, 1)).squeeze(-1) if astate.denoise_mask.ndim == 3 \
        else astate.denoise_mask * sigma.view(-1, 1)
    kf = {"keyframes_mask": vstate.keyframes_mask} if keyframes else {}
    video = Modality(latent=vstate.latent, sigma=sigma, timesteps=v_ts, positions=vstate.positions,
                     context=v_ctx, context_mask=None, **kf)
    audio = Modality(latent=astate.latent, sigma=sigma, timesteps=a_ts, positions=astate.positions,
                     context=a_ctx, context_mask=None)
    vx, ax = R_tr(video, audio, None)
    vx0, ax0 = transformer(video, audio, None)
    check_same("transformer.video", vx, vx0, report)
    check_same("transformer.audio", ax, ax0, report)
    gold["transformer"] = {
        "in.video.latent": vstate.latent, "in.video.timesteps": v_ts, "in.video.positions": vstate.positions,
        "in.video.context": v_ctx, "in.video.denoise_mask": dmask, "in.sigma": sigma,
        "in.audio.latent": astate.latent, "in.audio.timesteps": a_ts, "in.audio.positions": astate.positions,
        "in.audio.context": a_ctx,
        "in.video.latent_5d": vstate.clean_latent if vstate.clean_latent.ndim == 5 else vtools.unpatchify(vstate).latent,
        "in.audio.latent_4d": atools.unpatchify(astate).latent,
        "out.video": vx, "out.audio": ax,
    }
    if keyframes:
        gold["transformer"]["in.video.keyframes_mask"] = vstate.keyframes_mask
    # audio-only pass (video disabled) and video-only pass: exercises the enabled=False paths
    from dataclasses import replace

    vx_vo, ax_vo = R_tr(video, replace(audio, enabled=False), None)
    gold["transformer"].update({"out.video_only.video": vx_vo})
    # uniform timesteps (no conditioning token): ltx-core 1.0.0 and 1.2.0 agree on this one; with
    # per-token timesteps they differ in the A/V cross-attention scale/shift AdaLN (see README)
    v_uni = replace(video, timesteps=torch.full_like(v_ts, float(sigma)))
    vx_u, ax_u = R_tr(v_uni, audio, None)
    gold["transformer"].update({"in.uniform.video.timesteps": v_uni.timesteps,
                                "out.uniform.video": vx_u, "out.uniform.audio": ax_u})
    # the reference's own bfloat16 run of the same calls (bf16 copy; latents and contexts in bf16,
    # sigma/timesteps/positions float32 as its pipelines pass them): bf16_ref_err.<key> bounds the bf16 tests
    R_tr16 = bf16_copy(R_tr)

    def _bf(m):
        return replace(m, latent=m.latent.to(torch.bfloat16), context=m.context.to(torch.bfloat16))

    v16, a16 = _bf(video), _bf(audio)
    tr16 = dict(zip(("out.video", "out.audio"), R_tr16(v16, a16, None)))
    tr16["out.video_only.video"] = R_tr16(v16, replace(a16, enabled=False), None)[0]
    tr16.update(zip(("out.uniform.video", "out.uniform.audio"),
                    R_tr16(replace(v16, timesteps=v_uni.timesteps), a16, None)))
    tr_err = {f"bf16_ref_err.{k}": bf16_ref_err(o, gold["transformer"][k]) for k, o in tr16.items()}
    gold["transformer"].update(tr_err)
    del R_tr16, tr16
    report.append(bf16_report("transformer", tr_err))
    return gold["transformer"], video, audio


def lora_golden(out_dir: str, prefix: str, ckpt_path: str, R_tr, video, audio, SEED: int, report: list[str]
                ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Two random LoRAs in the official key layout (``diffusion_model.<path>.lora_{A,B}.weight``, bf16),
    fused into freshly built transformers by ``SingleGPUModelBuilder(..., loras=...)`` (the pipelines' path:
    ``apply_loras`` + ``bf16_fuse_rule`` on the file's state dict, then the cast to the build dtype).
    Own generator (SEED + 41): every other golden stays byte-identical."""
    from safetensors import safe_open

    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps

    gl = torch.Generator().manual_seed(SEED + 41)
    linears = {n: m for n, m in R_tr.named_modules() if isinstance(m, torch.nn.Linear)}
    last = len(R_tr.transformer_blocks) - 1
    b0 = "transformer_blocks.0."
    t1 = sorted(n for n in linears if n.startswith(b0) and n.endswith((".to_q", ".to_v", "ff.net.0.proj", "ff.net.2")))
    t1 += [f"transformer_blocks.{last}.audio_attn1.to_k", "patchify_proj"]
    t2 = [b0 + "attn1.to_q", b0 + "attn1.to_out.0"]
    # a connector target: the reference fuses it into the transformer's state dict (its SDOps keep the
    # connector keys), then load_state_dict(strict=False) drops it, so it changes nothing
    conn = "video_embeddings_connector.transformer_1d_blocks.0.attn1.to_q"

    def make(targets, rank, extra=()):
        sd = {}
        for n in targets:
            out_f, in_f = linears[n].weight.shape
            sd[f"diffusion_model.{n}.lora_A.weight"] = torch.randn(rank, in_f, generator=gl) / math.sqrt(in_f)
            sd[f"diffusion_model.{n}.lora_B.weight"] = torch.randn(out_f, rank, generator=gl) * 0.15
        for n, (out_f, in_f) in extra:
            sd[f"diffusion_model.{n}.lora_A.weight"] = torch.randn(rank, in_f, generator=gl) / math.sqrt(in_f)
            sd[f"diffusion_model.{n}.lora_B.weight"] = torch.randn(out_f, rank, generator=gl) * 0.15
        return {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}

    with safe_open(ckpt_path, "pt") as f:
        conn_shape = tuple(f.get_slice(f"model.diffusion_model.{conn}.weight").get_shape())
    files = {"test": f"{prefix}-lora.safetensors", "test2": f"{prefix}-lora2.safetensors"}
    paths = {}
    for name, sd in (("test", make(t1, 4, [(conn, conn_shape)])), ("test2", make(t2, 2))):
        paths[name] = os.path.join(out_dir, files[name])
        rank = sd[next(iter(sd))].shape[0]
        save_file(sd, paths[name], metadata={"lora_rank": str(rank), "note": "random test LoRA (make_ref.py)"})
        canonicalize_header(paths[name])

    def fused(loras, dtype=torch.float32):
        return SingleGPUModelBuilder(
            model_class_configurator=LTXModelConfigurator, model_path=ckpt_path,
            model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
            loras=tuple(LoraPathStrengthAndSDOps(paths[n], s, LTXV_LORA_COMFY_RENAMING_MAP) for n, s in loras),
        ).build(device=torch.device("cpu"), dtype=dtype).eval()

    out: dict[str, torch.Tensor] = {"in.strengths": torch.tensor([0.5, 1.0]),
                                    "in.mix.strengths": torch.tensor([0.5, -0.75])}
    cases = {"s050": ([("test", 0.5)], t1), "s100": ([("test", 1.0)], t1),
             "mix": ([("test", 0.5), ("test2", -0.75)], sorted(set(t1) | set(t2)))}
    for tag, (loras, touched) in cases.items():
        m = fused(loras)
        mods = dict(m.named_modules())
        for n in touched:
            out[f"{tag}.weight.{n}"] = mods[n].weight.detach().clone()
        vx, ax = m(video, audio, None)
        out[f"{tag}.out.video"], out[f"{tag}.out.audio"] = vx, ax
        base = dict(R_tr.named_modules())
        d = max((mods[n].weight - base[n].weight).abs().max().item() for n in touched)
        report.append(f"lora.{tag}: {loras}, {len(touched)} layers, max|dW| {d:.3e}, "
                      f"out.video max|diff| vs base {(vx - R_tr(video, audio, None)[0]).abs().max().item():.3e}")
        del m
    # the bf16 build fuses the same bf16 state dict before the cast: identical fused weights
    m16 = dict(fused([("test", 1.0)], torch.bfloat16).named_modules())
    assert all(torch.equal(m16[n].weight.float(), out[f"s100.weight.{n}"]) for n in t1), "bf16 build fuses differently"
    report.append("lora: the bf16 build's fused weights equal the float32 build's (fusion happens before the cast)")
    return out, files


def gemma_golden(out_dir: str, proc: EmbeddingsProcessor, report: list[str], V: dict, SEED: int
                 ) -> dict[str, torch.Tensor]:
    """Tiny random Gemma-3 (transformers) -> all hidden states -> LTX feature extractor + connectors."""
    from transformers import AutoModelForImageTextToText, Gemma3Config

    from ltx_core.text_encoders.gemma.encoders.base_encoder import LTXGemmaTextEncoder

    G = V["gemma"]
    TEXT_LEN = V["text_len"]
    cfg = Gemma3Config(
        text_config={
            "vocab_size": 512, "hidden_size": G["hidden"], "intermediate_size": G["intermediate"],
            "num_hidden_layers": G["layers"], "num_attention_heads": G["heads"], "num_key_value_heads": G["kv_heads"],
            "head_dim": G["head_dim"], "sliding_window": 8, "max_position_embeddings": max(512, TEXT_LEN),
            "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            "layer_types": G["layer_types"], "query_pre_attn_scalar": G["head_dim"],
        },
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        mm_tokens_per_image=4,
    )
    torch.manual_seed(SEED + 7)
    hf = AutoModelForImageTextToText.from_config(cfg).eval()
    enc = LTXGemmaTextEncoder(model=hf)
    g = torch.Generator().manual_seed(SEED + 3)
    n_valid = V["n_valid_gemma"]
    ids = torch.zeros(1, TEXT_LEN, dtype=torch.int64)  # pad id 0, left padding
    ids[:, TEXT_LEN - n_valid:] = torch.randint(3, 512, (1, n_valid), generator=g)
    ids[:, TEXT_LEN - n_valid] = 2  # BOS
    mask = (torch.arange(TEXT_LEN) >= TEXT_LEN - n_valid).to(torch.int64)[None]
    with torch.no_grad():
        # same call LTXGemmaTextEncoder.encode() makes after tokenizing
        out = enc.model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hs = out.hidden_states
        res = proc.process_hidden_states(hs, mask, "left")
    # weights in the original google/gemma-3 checkpoint naming (what ltx-core's GEMMA3 key ops expect)
    sd = {}
    for k, v in hf.state_dict().items():
        if k.startswith("model.language_model."):
            sd["language_model.model." + k[len("model.language_model."):]] = v
        elif k.startswith("model.vision_tower."):
            sd["vision_tower.vision_model." + k[len("model.vision_tower."):]] = v
        elif k.startswith("model.multi_modal_projector."):
            sd["multi_modal_projector." + k[len("model.multi_modal_projector."):]] = v
    gdir = os.path.join(out_dir, "tiny-gemma3")
    os.makedirs(gdir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(gdir, "model.safetensors"))
    with open(os.path.join(gdir, "config.json"), "w") as f:
        f.write(cfg.to_json_string())
    report.append(f"gemma: {len(hs)} hidden states of {tuple(hs[0].shape)}; video_encoding {tuple(res.video_encoding.shape)}")
    g_out = {"in.input_ids": ids, "in.attention_mask": mask,
             "out.video_encoding": res.video_encoding, "out.audio_encoding": res.audio_encoding,
             "out.attention_mask": res.attention_mask}
    for i, h in enumerate(hs):
        g_out[f"out.hidden_states.{i}"] = h
    return g_out


if __name__ == "__main__":
    main()
