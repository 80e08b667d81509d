#!/usr/bin/env python
"""LTX-2.5 fixture generator: tiny random-weight LTX-2.5 checkpoints in the official *split* layout, and the
goldens a port is tested against (FORMAT-25.md). Every module is built by the reference's own configurators
(ltx-core / ltx-pipelines 1.2.0, imported, never copied), randomized with make_ref.randomize_, written in bf16,
loaded back through the reference's own builders + SDOps and checked against the in-memory modules; the
goldens come from the reloaded modules in float32.

    for v in tiny25 real25; do
        .venv-reference/bin/python tests/reference/make_ref_25.py --variant $v --seed 1234 \\
            --out tests/reference/fixtures/$v-s1234
    done

Same variant + seed => byte-identical files (all but REPORT.txt). Flags: --no-e2e.
Seeds: weights `seed`, Gemma-4 weights `seed+7`, transformer-golden inputs `seed+1`, ancestral golden `seed+11`
(the loop's own generator: `seed+10000`, as DistilledPipeline seeds it), distilled LoRA `seed+41`, e2e as
e2e_goldens (the pipelines seed themselves with `seed`; images `seed+31`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import make_ref as mr  # noqa: E402  (installs the torchaudio / OpenImageIO shims before any reference import)
import torch  # noqa: E402
from make_ref import (  # noqa: E402
    bf16_copy,
    bf16_ref_err,
    bf16_report,
    build_back,
    canonicalize_header,
    check_same,
    damp_vocoder_,
    persistent_sd,
    randomize_,
    transformer_golden,
)
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from variants_25 import VARIANTS_25, get_variant_25  # noqa: E402

from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier  # noqa: E402
from ltx_core.duration_head.model_configurator import DURATION_HEAD_KEY_OPS, DurationHeadConfigurator  # noqa: E402
from ltx_core.loader import SingleGPUModelBuilder  # noqa: E402
from ltx_core.model.audio_vae import (  # noqa: E402
    AUDIO_VAE_DECODER_COMFY_KEYS_FILTER,
    AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER,
    VOCODER_COMFY_KEYS_FILTER,
    AudioDecoderConfigurator,
    AudioEncoderConfigurator,
    VocoderConfigurator,
)
from ltx_core.model.transformer import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator  # noqa: E402
from ltx_core.model.upsampler import LatentUpsamplerConfigurator  # noqa: E402
from ltx_core.model.video_vae import (  # noqa: E402
    VAE_DECODER_COMFY_KEYS_FILTER,
    VAE_ENCODER_COMFY_KEYS_FILTER,
    VideoDecoderConfigurator,
    VideoEncoderConfigurator,
)
from ltx_core.text_encoders.gemma import gemma_assets  # noqa: E402
from ltx_core.text_encoders.gemma.embeddings_connector import (  # noqa: E402
    AudioEmbeddings1DConnectorConfigurator,
    Embeddings1DConnectorConfigurator,
)
from ltx_core.text_encoders.gemma.embeddings_processor import EmbeddingsProcessor  # noqa: E402
from ltx_core.text_encoders.gemma.encoders import encoder_configurator as ec  # noqa: E402
from ltx_core.types import SpatioTemporalScaleFactors  # noqa: E402

F32 = torch.float32
CPU = torch.device("cpu")
REFERENCE = "ltx-core 1.2.0 / ltx-pipelines 1.2.0 (Lightricks/LTX-2 400fd31)"
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


def file_names(tag: str) -> dict[str, str]:
    return {
        "transformer": f"diffusion_models/ltx-2.5-{tag}-dev-transformer-bf16.safetensors",
        "text_encoder": f"text_encoders/gemma4-{tag}-with-proj-ltx-2.5-bf16.safetensors",
        "video_vae": f"vae/ltx-2.5-{tag}-video-vae-conv-bf16.safetensors",
        "audio_vae": f"vae/ltx-2.5-{tag}-audio-vae-bf16.safetensors",
        "duration_head": f"model_patches/ltx-2.5-{tag}-duration-head-bf16.safetensors",
        "spatial-x2": f"latent_upscale_models/ltx-2.5-{tag}-spatial-x2-upscaler.safetensors",
        "distilled_lora": f"loras/ltx-2.5-{tag}-distilled-lora-bf16.safetensors",
        # the release's default video VAE, a diffusion VAE; outside the scanned folders, so the set opens with the conv
        # one (the tests put it into a copy of the folder)
        "diffusion_video_vae": f"extra/vae/ltx-2.5-{tag}-video-vae-bf16.safetensors",
    }


def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict | None) -> None:
    """bf16 (floating tensors), metadata values JSON-encoded unless strings, header keys sorted."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    md = None if metadata is None else {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    save_file(t, path, metadata=md)
    canonicalize_header(path)


# ---------------------------------------------------------------------------------------------------- Gemma 4
def tiny_wordlevel_tokenizer(vocab_size: int, extra_texts: list[str]) -> str:
    """A ``tokenizers`` WordLevel tokenizer.json: the 2.3 tiny tokenizer's vocabulary (same ids; its 4 special
    tokens <pad> 0, <eos> 1, <bos> 2, <unk> 3) plus the Metaspace words of ``extra_texts`` that it lacks; NFKC,
    Metaspace pre-tokenizer, no post-processor (like Gemma 4's tokenizer it adds no BOS: LTXGemmaTokenizer
    prepends it). Words outside the vocabulary become <unk>."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    with open(os.path.join(ASSETS, "tiny_tokenizer", "tokenizer.json")) as f:
        vocab = dict(json.load(f)["model"]["vocab"])
    norm = normalizers.NFKC()
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    for text in extra_texts:
        for piece, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            vocab.setdefault(piece, len(vocab))
    assert len(vocab) <= vocab_size, (len(vocab), vocab_size)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<pad>", "<eos>", "<bos>", "<unk>")])
    return tok.to_str()


TOKENIZER_CONFIG = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
                    "tokenizer_class": "GemmaTokenizer", "padding_side": "left"}


def hf_checkpoint_key(k: str) -> str:
    """transformers' gemma4_unified module names -> its checkpoint names (inverse of the conversion mapping
    transformers applies on load; the reference's TE packer expects the checkpoint names)."""
    if k.startswith("model.embed_vision.multimodal_embedder.embedding_projection."):
        return k.replace("model.embed_vision.multimodal_embedder.", "model.embed_vision.")
    if k.startswith("model.embed_vision."):
        return k.replace("model.embed_vision.", "model.vision_embedder.")
    return k


def build_gemma4(V: dict, seed: int):  # noqa: ANN201
    """The tiny gemma4_unified model (transformers), randomized like every module here (norm gains 1 + 0.2·randn;
    make_ref.NORM_TYPES extended by Gemma4UnifiedRMSNorm for the call), ``layer_scalar`` in [0.6, 1.4]."""
    from transformers import AutoModelForImageTextToText
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.gemma4_unified.modeling_gemma4_unified import Gemma4UnifiedRMSNorm

    cfg = CONFIG_MAPPING["gemma4_unified"].from_dict(copy.deepcopy(V["gemma4"]))
    torch.manual_seed(seed + 7)
    hf = AutoModelForImageTextToText.from_config(cfg).eval()
    g = torch.Generator().manual_seed(seed + 7)
    saved = mr.NORM_TYPES
    mr.NORM_TYPES = saved + (Gemma4UnifiedRMSNorm,)
    try:
        randomize_(hf, g)
    finally:
        mr.NORM_TYPES = saved
    with torch.no_grad():
        for layer in hf.model.language_model.layers:
            layer.layer_scalar.copy_((0.6 + 0.8 * torch.rand(layer.layer_scalar.shape, generator=g)).to(torch.bfloat16))
    return cfg, hf


def pack_text_encoder(path: str, cfg, hf, extra: dict[str, torch.Tensor], tokenizer_json: str) -> None:  # noqa: ANN001
    """An HF root (config.json, model.safetensors in checkpoint naming, tokenizer.json, tokenizer_config.json,
    a placeholder processor_config.json) packed by the reference's own TE packer (Comfy-flat keys)."""
    with tempfile.TemporaryDirectory() as root:
        sd = {hf_checkpoint_key(k): v.to(torch.bfloat16).contiguous() for k, v in hf.state_dict().items()
              if k != "lm_head.weight"}  # tied to embed_tokens; not in the checkpoint
        save_file(sd, os.path.join(root, "model.safetensors"))
        with open(os.path.join(root, "config.json"), "w") as f:
            f.write(cfg.to_json_string())
        with open(os.path.join(root, "tokenizer.json"), "w") as f:
            f.write(tokenizer_json)
        with open(os.path.join(root, "tokenizer_config.json"), "w") as f:
            json.dump(TOKENIZER_CONFIG, f, indent=1)
        with open(os.path.join(root, "processor_config.json"), "w") as f:
            json.dump({"processor_class": "Gemma4UnifiedProcessor"}, f)
        tensors, metadata = gemma_assets.build_text_encoder_tensors_from_gemma_root(
            root, {k: v.to(torch.bfloat16).contiguous() for k, v in extra.items()},
            gemma_version=cfg.gemma_version)
    gemma_assets.save_text_encoder_safetensors(path, tensors, metadata)
    canonicalize_header(path)


def build_text_encoder_back(te_path: str):  # noqa: ANN201
    """The reference's Gemma text-encoder build (PromptEncoder's Builder arguments), without the ProcessorLoad
    module op: Gemma4UnifiedProcessor needs torchvision, and encoding never uses the processor."""
    sd_ops, module_ops = ec.get_gemma_ops(te_path)
    module_ops = tuple(op for op in module_ops if op.name != "ProcessorLoad")
    model = SingleGPUModelBuilder(
        model_path=gemma_assets.resolve_gemma_weight_paths(te_path),
        model_class_configurator=ec.GemmaTextEncoderConfigurator.with_gemma_model_path(te_path),
        model_sd_ops=sd_ops, module_ops=module_ops,
    ).build(device=CPU, dtype=F32)
    meta = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.device.type == "meta"]
    assert not meta, f"text encoder: uninitialized after load: {meta[:5]}"
    return model.eval()


# ---------------------------------------------------------------------------------------------------- goldens
def gemma_golden(R_te, hf, R_proc, processor, prompts: list[str], report: list[str]):  # noqa: ANN001, ANN201
    out: dict[str, torch.Tensor] = {}
    raw = R_te.encode(prompts)  # one batched forward, as PromptEncoder runs it
    # the reference's own bf16 encoder on the same prompts: how far bf16 alone moves the states
    # (bf16_ref_err over the valid rows, the ones a port compares), so ports get a bound, not a guess
    raw16 = bf16_copy(R_te).encode(prompts)
    results = []
    for i, (prompt, (hs, mask)) in enumerate(zip(prompts, raw, strict=True)):
        ids = torch.tensor([[t for t, _ in R_te.tokenizer.tokenize_with_weights(prompt)["gemma"]]], dtype=torch.int64)
        ref = hf.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for j, (h, h0) in enumerate(zip(hs, ref, strict=True)):
            check_same(f"gemma.p{i}.hidden_states.{j}", h, h0, report)
        res = R_proc.process_hidden_states(hs, mask)
        check_same(f"gemma.p{i}.video_encoding", res.video_encoding,
                   processor.process_hidden_states(hs, mask).video_encoding, report)
        out[f"p{i}.input_ids"] = ids
        out[f"p{i}.attention_mask"] = mask.to(torch.int64)
        out.update({f"p{i}.hidden_states.{j}": h for j, h in enumerate(hs)})
        valid = mask[0].bool()
        for j, (h16, h) in enumerate(zip(raw16[i][0], hs, strict=True)):
            out[f"bf16_ref_err.p{i}.hidden_states.{j}"] = bf16_ref_err(h16[:, valid], h[:, valid])
        out[f"p{i}.video_encoding"] = res.video_encoding
        out[f"p{i}.audio_encoding"] = res.audio_encoding
        out[f"p{i}.binary_mask"] = res.attention_mask
        n_valid = int(mask.sum())
        n_unk = int((ids == R_te.tokenizer.tokenizer.unk_token_id).sum())
        report.append(f"gemma.p{i}: {n_valid} valid tokens of {ids.shape[1]} ({n_unk} <unk>), {len(hs)} hidden states "
                      f"{tuple(hs[0].shape)}, video_encoding {tuple(res.video_encoding.shape)}")
        results.append(res)
    return out, results


SNAP_CASES = [  # (seconds, fps, min_seconds, max_seconds)
    (0.2, 24.0, 1.0, 20.0),      # clamp low: 5 -> 24 frames -> floor 17 < 24 -> bumped up to 25
    (35.0, 24.0, 1.0, 20.0),     # clamp high: 840 -> 480 -> floor 473
    (3.3, 24.0, 1.0, 20.0),      # 79.2 -> 79 -> floor 73
    (5.0416666666666667, 24.0, 1.0, 20.0),  # 121 frames: already on the 8k+1 grid
    (1.0, 30.0, 1.0, 20.0),      # 30 -> floor 25 < 30 -> bumped up to 33
    (2.5, 25.0, 1.0, 20.0),      # 62.5 -> round half to even 62 -> floor 57
    (0.5, 25.0, 1.5, 20.0),      # min 1.5 s at 25 fps: round(37.5) = 38 (half to even); 12 -> 38 -> floor 33 -> up 41
    (7.3, 25.0, 2.0, 6.0),       # max 6 s = 150 frames: 182.5 -> 182 -> 150 -> floor 145
]


def duration_golden(R_head, head, v_enc, a_enc, fps: float, report: list[str]):  # noqa: ANN001, ANN201
    """DurationHead on prompt 0's connector outputs; frame snapping through the reference's own
    ``resolve_num_frames`` -> ``DurationPredictor.__call__`` -> ``seconds_to_clamped_num_frames``."""
    from ltx_pipelines.utils.blocks import DurationPredictor, resolve_num_frames
    from ltx_pipelines.utils.types import AutoDuration

    seconds = R_head(v_enc, a_enc)
    check_same("duration_head", seconds, head(v_enc, a_enc), report)
    n_auto = resolve_num_frames(AutoDuration(), DurationPredictor(R_head), video_encoding=v_enc, audio_encoding=a_enc,
                                frame_rate=fps)
    out = {"in.video_encoding": v_enc, "in.audio_encoding": a_enc, "out.seconds": seconds,
           "in.frame_rate": torch.tensor([fps], dtype=torch.float64),
           "out.num_frames": torch.tensor([n_auto], dtype=torch.int64)}
    rows, res = [], []
    for s, f, lo, hi in SNAP_CASES:
        class _Head:  # the prediction, as DurationHead would return it (shape (1,))
            def __call__(self, v, a, _s=s):  # noqa: ANN001, ANN204
                return torch.tensor([_s], dtype=torch.float64)
        n = resolve_num_frames(AutoDuration(lo, hi), DurationPredictor(_Head()), video_encoding=v_enc,
                               audio_encoding=a_enc, frame_rate=f)
        rows.append([s, f, lo, hi])
        res.append(n)
    out["snap.in"] = torch.tensor(rows, dtype=torch.float64)
    out["snap.out"] = torch.tensor(res, dtype=torch.int64)
    report.append(f"duration: head {float(seconds):.4f} s -> {n_auto} frames at {fps} fps (AutoDuration 1..20 s); "
                  f"snap cases {len(rows)}: " + ", ".join(f"{r[0]:g}s@{r[1]:g}[{r[2]:g},{r[3]:g}]->{n}"
                                                         for r, n in zip(rows, res, strict=True)))
    return out


def ancestral_golden(R_tr, V: dict, scale, latent_c: int, audio_z: int, audio_mel_lat: int, v_ctx, a_ctx,  # noqa: ANN001, PLR0913
                     seed: int, report: list[str]) -> dict[str, torch.Tensor]:
    """DistilledPipeline stage 1 at >= 2.5: the reference's euler_ancestral_denoising_loop with its own
    EulerAncestralDiffusionStep(eta, s_noise), SimpleDenoiser, X0Model in BatchSplitAdapter (as DiffusionStage
    wraps it), DISTILLED_SIGMAS, a frame-0 VideoConditionByLatentIndex; the initial noise injected (as
    pipeline_goldens), the loop's draws recorded through its ``new_noise_fn`` parameter."""
    from pipeline_goldens import InjectedNoiser, RecordingDenoiser

    from ltx_core.batch_split import BatchSplitAdapter
    from ltx_core.components.diffusion_steps import EulerAncestralDiffusionStep
    from ltx_core.conditioning import VideoConditionByLatentIndex
    from ltx_core.model.transformer import X0Model
    from ltx_core.tools import AudioLatentTools, VideoLatentTools
    from ltx_core.types import AudioLatentShape, VideoLatentShape, VideoPixelShape
    from ltx_pipelines.distilled import ANCESTRAL_ETA, ANCESTRAL_NOISE_SEED_OFFSET, ANCESTRAL_S_NOISE
    from ltx_pipelines.utils.constants import DISTILLED_SIGMAS
    from ltx_pipelines.utils.denoisers import SimpleDenoiser
    from ltx_pipelines.utils.helpers import create_noised_state, state_with_conditionings
    from ltx_pipelines.utils.samplers import _get_plain_noise, euler_ancestral_denoising_loop

    g = torch.Generator().manual_seed(seed + 11)
    fps = float(V["fps"])
    acfg = V["metadata"]["config"]["audio_vae"]
    f, h, w = V["pipe_grid"]
    px = VideoPixelShape(batch=1, frames=(f - 1) * scale.time + 1, height=h * scale.height, width=w * scale.width,
                         fps=fps)
    vt = VideoLatentTools(VideoLatentPatchifier(patch_size=1),
                          VideoLatentShape.from_pixel_shape(px, latent_channels=latent_c, scale_factors=scale), fps,
                          scale_factors=scale)
    at = AudioLatentTools(AudioPatchifier(patch_size=1), AudioLatentShape.from_video_pixel_shape(
        px, channels=audio_z, mel_bins=audio_mel_lat, sample_rate=acfg["model"]["params"]["sampling_rate"],
        hop_length=acfg["preprocessing"]["stft"]["hop_length"],
        audio_latent_downsample_factor=2 ** (len(acfg["model"]["params"]["ddconfig"]["ch_mult"]) - 1)))
    cond_latent = torch.randn(1, latent_c, 1, h, w, generator=g)
    strength = 0.9
    conds = [VideoConditionByLatentIndex(latent=cond_latent, strength=strength, latent_idx=0)]
    shp_v = state_with_conditionings(vt.create_initial_state(CPU, F32), conds, vt).latent.shape
    shp_a = at.create_initial_state(CPU, F32).latent.shape
    nv, na = torch.randn(shp_v, generator=g), torch.randn(shp_a, generator=g)
    noiser = InjectedNoiser([nv, na])  # DiffusionStage builds video first, then audio
    vs = create_noised_state(vt, conds, noiser, F32, CPU, noise_scale=1.0, initial_latent=None)
    as_ = create_noised_state(at, [], noiser, F32, CPU, noise_scale=1.0, initial_latent=None)
    sig = DISTILLED_SIGMAS.to(F32)
    draws: list[torch.Tensor] = []

    def new_noise(x, generator):  # noqa: ANN001, ANN202
        n = _get_plain_noise(x, generator)
        draws.append(n.detach().clone())
        return n

    rec = RecordingDenoiser(SimpleDenoiser(v_ctx, a_ctx))
    noise_seed = seed + ANCESTRAL_NOISE_SEED_OFFSET
    vf, af = euler_ancestral_denoising_loop(
        sigmas=sig, video_state=vs, audio_state=as_,
        stepper=EulerAncestralDiffusionStep(eta=ANCESTRAL_ETA, s_noise=ANCESTRAL_S_NOISE),
        transformer=BatchSplitAdapter(X0Model(R_tr).eval(), max_batch_size=1), denoiser=rec,
        noise_seed=noise_seed, new_noise_fn=new_noise, model_dtype=F32)
    out = {"in.sigmas": sig, "in.eta": torch.tensor([ANCESTRAL_ETA], dtype=F32),
           "in.s_noise": torch.tensor([ANCESTRAL_S_NOISE], dtype=F32),
           "in.noise_seed": torch.tensor([noise_seed], dtype=torch.int64),
           "in.video.noise": nv, "in.audio.noise": na,
           "in.video.latent": vs.latent, "in.audio.latent": as_.latent,
           "in.video.denoise_mask": vs.denoise_mask, "in.audio.denoise_mask": as_.denoise_mask,
           "in.video.clean_latent": vs.clean_latent, "in.video.keyframes_mask": vs.keyframes_mask,
           "in.video.positions": vs.positions, "in.audio.positions": as_.positions,
           "in.video.context": v_ctx, "in.audio.context": a_ctx,
           "in.video.cond_latent": cond_latent, "in.cond.strength": torch.tensor([strength], dtype=F32),
           "in.cond.latent_idx": torch.tensor([0], dtype=torch.int64)}
    n_steps = len(rec.log)
    assert len(draws) == 2 * (n_steps - 1), (len(draws), n_steps)  # video then audio per non-terminal step
    for k in range(n_steps - 1):
        out[f"draw{k}.video"], out[f"draw{k}.audio"] = draws[2 * k], draws[2 * k + 1]
    for i, e in enumerate(rec.log):
        out[f"step{i}.video.denoised"] = e["rv"].denoised
        out[f"step{i}.audio.denoised"] = e["ra"].denoised
        nxt = rec.log[i + 1] if i + 1 < n_steps else None
        out[f"step{i}.video.latent"] = nxt["v_in"] if nxt else vf.latent
        out[f"step{i}.audio.latent"] = nxt["a_in"] if nxt else af.latent
    out["out.video.latent"], out["out.audio.latent"] = vf.latent, af.latent
    out["out.video.latent_5d"] = vt.unpatchify(vt.clear_conditioning(vf)).latent
    out["out.audio.latent_4d"] = at.unpatchify(at.clear_conditioning(af)).latent
    report.append(f"ancestral: {n_steps} steps ({len(sig)} sigmas), {len(draws)} draws (video, audio per non-terminal "
                  f"step), video tokens {vs.latent.shape[1]}, audio tokens {as_.latent.shape[1]}, first-frame "
                  f"strength {strength} (first-frame denoise_mask {float(vs.denoise_mask[0, 0, 0]):g}), keyframes_mask marks "
                  f"{int(vs.keyframes_mask.sum())} tokens")
    return out


def distilled_lora(path: str, R_tr, seed: int) -> None:  # noqa: ANN001
    """A random rank-4 "distilled" LoRA (format of make_ref's test LoRAs: ``diffusion_model.<path>.lora_{A,B}.weight``,
    bf16, metadata lora_rank/note) over every Linear of the transformer blocks."""
    gl = torch.Generator().manual_seed(seed + 41)
    rank = 4
    sd = {}
    for n, m in R_tr.named_modules():
        if isinstance(m, torch.nn.Linear) and n.startswith("transformer_blocks."):
            out_f, in_f = m.weight.shape
            sd[f"diffusion_model.{n}.lora_A.weight"] = torch.randn(rank, in_f, generator=gl) / math.sqrt(in_f)
            sd[f"diffusion_model.{n}.lora_B.weight"] = torch.randn(out_f, rank, generator=gl) * 0.15
    write_safetensors(path, sd, {"lora_rank": str(rank), "note": "random distilled LoRA (make_ref_25.py)"})


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:  # noqa: PLR0915
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="output dir (default /tmp/oracle-out/<variant>-s<seed>)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--variant", default="tiny25", choices=sorted(VARIANTS_25))
    ap.add_argument("--no-e2e", action="store_true", help="skip golden_e2e.safetensors (the pipeline classes)")
    ap.add_argument("--no-diffusion-vae", action="store_true",
                    help="skip the diffusion video VAE file and golden_e2e_diffvae.safetensors")
    args = ap.parse_args()
    V = get_variant_25(args.variant)
    SEED = args.seed
    CONFIG = V["metadata"]["config"]
    T, VAE = CONFIG["transformer"], CONFIG["vae"]
    LATENT_C = VAE["latent_channels"]
    ad = CONFIG["audio_vae"]["model"]["params"]["ddconfig"]
    A_Z, A_MEL_LAT = ad["z_channels"], ad["mel_bins"] // (2 ** (len(ad["ch_mult"]) - 1))
    out_dir = args.out or f"/tmp/oracle-out/{args.variant}-s{SEED}"
    os.makedirs(out_dir, exist_ok=True)
    names = file_names(V["tag"])
    P = {k: os.path.join(out_dir, v) for k, v in names.items()}
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    report: list[str] = [f"variant={args.variant} seed={SEED} (base {V['base_variant']}) connectors in "
                         f"{V['connectors_in']} file"]

    # ----------------------------------------------------------------- build in memory
    tr_meta = {"config": {"transformer": T}}
    transformer = LTXModelConfigurator.from_metadata(tr_meta).eval()
    v_conn = Embeddings1DConnectorConfigurator.from_metadata(tr_meta).float()
    a_conn = AudioEmbeddings1DConnectorConfigurator.from_metadata(tr_meta).float()
    gcfg, hf = build_gemma4(V, SEED)
    feat = ec._create_feature_extractor(T, gcfg.text_config)
    processor = EmbeddingsProcessor(feature_extractor=feat, video_connector=v_conn, audio_connector=a_conn).eval()
    vae_meta = {"config": {"vae": VAE}}
    v_enc = VideoEncoderConfigurator.from_metadata(vae_meta).eval()
    v_dec = VideoDecoderConfigurator.from_metadata(vae_meta).eval()
    au_meta = {"config": {"audio_vae": CONFIG["audio_vae"], "vocoder": CONFIG["vocoder"]}}
    a_enc = AudioEncoderConfigurator.from_metadata(au_meta).eval()
    a_dec = AudioDecoderConfigurator.from_metadata(au_meta).eval()
    vocoder = VocoderConfigurator.from_metadata(au_meta).eval()
    dh_meta = {"config": {"transformer": T, **({"duration_head": V["duration_head"]} if V["duration_head"] else {})}}
    head = DurationHeadConfigurator.from_metadata(dh_meta).eval()
    for m in (transformer, processor, v_enc, v_dec, a_enc, a_dec, vocoder, head):
        randomize_(m, gen)
    damp_vocoder_(vocoder, v_dec, V)
    v_dec.per_channel_statistics.load_state_dict(v_enc.per_channel_statistics.state_dict())
    a_dec.per_channel_statistics.load_state_dict(a_enc.per_channel_statistics.state_dict())
    kf = transformer.keyframes_abs_pos_embedding
    assert kf is not None and kf.abs().max() > 0, "keyframes_abs_pos_embedding must be random, not the reference's zeros"
    up_cfg = V["upsamplers"]["spatial-x2"]
    up = LatentUpsamplerConfigurator.from_metadata({"config": up_cfg}).eval()
    randomize_(up, gen)

    # ----------------------------------------------------------------- split files (official layout)
    conn = {**{"model.diffusion_model.video_embeddings_connector." + k: v for k, v in persistent_sd(v_conn).items()},
            **{"model.diffusion_model.audio_embeddings_connector." + k: v for k, v in persistent_sd(a_conn).items()}}
    tr_sd = {"model.diffusion_model." + k: v for k, v in persistent_sd(transformer).items()}
    if V["connectors_in"] == "transformer":
        tr_sd.update(conn)
    write_safetensors(P["transformer"], tr_sd, {
        "config": {"transformer": T}, "model_version": V["model_version"],
        "gemma_source_checkpoint": {"gemma_version": gcfg.gemma_version}})
    te_extra = {"text_embedding_projection." + k: v for k, v in persistent_sd(feat).items()}
    if V["connectors_in"] == "text_encoder":
        te_extra.update(conn)
    pack_text_encoder(P["text_encoder"], gcfg, hf, te_extra,
                      tiny_wordlevel_tokenizer(gcfg.text_config.vocab_size, [V["prompts"][0], _e2e_texts()[1]]))
    vae_sd = {("" if k.startswith("per_channel_statistics.") else "encoder.") + k: v
              for k, v in persistent_sd(v_enc).items()}
    vae_sd.update({"decoder." + k: v for k, v in persistent_sd(v_dec).items()
                   if not k.startswith("per_channel_statistics.")})
    write_safetensors(P["video_vae"], vae_sd, {"config": {"vae": VAE}, "model_version": V["model_version"]})
    au_sd = {("audio_vae." if k.startswith("per_channel_statistics.") else "audio_vae.encoder.") + k: v
             for k, v in persistent_sd(a_enc).items()}
    au_sd.update({"audio_vae.decoder." + k: v for k, v in persistent_sd(a_dec).items()
                  if not k.startswith("per_channel_statistics.")})
    au_sd.update({"vocoder." + k: v for k, v in persistent_sd(vocoder).items()})
    write_safetensors(P["audio_vae"], au_sd, {"config": au_meta["config"]})
    write_safetensors(P["duration_head"], {"duration_head." + k: v for k, v in persistent_sd(head).items()},
                      {"config": dh_meta["config"]})
    write_safetensors(P["spatial-x2"], persistent_sd(up), {"config": up_cfg})

    # ----------------------------------------------------------------- load back with the reference's builders
    R_tr = build_back(LTXModelConfigurator, P["transformer"], LTXV_MODEL_COMFY_RENAMING_MAP)
    assert torch.equal(R_tr.keyframes_abs_pos_embedding, kf), "keyframes_abs_pos_embedding did not load"
    R_te = build_text_encoder_back(P["text_encoder"])
    R_proc = build_back(ec.EmbeddingsProcessorConfigurator.with_gemma_model_path(P["text_encoder"]),
                        (P["transformer"], P["text_encoder"]), ec.EMBEDDINGS_PROCESSOR_KEY_OPS)
    R_venc = build_back(VideoEncoderConfigurator, P["video_vae"], VAE_ENCODER_COMFY_KEYS_FILTER)
    R_vdec = build_back(VideoDecoderConfigurator, P["video_vae"], VAE_DECODER_COMFY_KEYS_FILTER)
    R_aenc = build_back(AudioEncoderConfigurator, P["audio_vae"], AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER)
    R_adec = build_back(AudioDecoderConfigurator, P["audio_vae"], AUDIO_VAE_DECODER_COMFY_KEYS_FILTER)
    R_voc = build_back(VocoderConfigurator, P["audio_vae"], VOCODER_COMFY_KEYS_FILTER)
    R_head = build_back(DurationHeadConfigurator, P["duration_head"], DURATION_HEAD_KEY_OPS)
    R_up = build_back(LatentUpsamplerConfigurator, P["spatial-x2"], None)
    for tag, a, b in (("video_vae", R_venc, v_enc), ("video_vae.decoder", R_vdec, v_dec), ("audio_vae", R_aenc, a_enc),
                      ("audio_vae.decoder", R_adec, a_dec), ("vocoder", R_voc, vocoder), ("upsampler", R_up, up),
                      ("duration_head", R_head, head), ("embeddings_processor", R_proc, processor)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), f"{tag}: reload differs"
    report.append("reload: video VAE, audio VAE, vocoder, upsampler, duration head, embeddings processor state dicts "
                  "equal the in-memory ones")
    distilled_lora(P["distilled_lora"], R_tr, SEED)

    gold: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        gold["gemma"], enc = gemma_golden(R_te, hf, R_proc, processor, V["prompts"], report)
        v_ctx, a_ctx = enc[0].video_encoding, enc[0].audio_encoding
        gold["duration"] = duration_golden(R_head, head, v_ctx, a_ctx, float(V["fps"]), report)
        scale = SpatioTemporalScaleFactors.from_blocks(VAE["encoder_blocks"], VAE["patch_size"])
        g = torch.Generator().manual_seed(SEED + 1)
        gold["transformer"], video, audio = transformer_golden(
            R_tr, transformer, v_ctx, a_ctx, V=V, latent_c=LATENT_C, audio_z=A_Z, audio_mel_lat=A_MEL_LAT,
            scale=scale, g=g, report=report, keyframes=True)
        from dataclasses import replace

        d = (R_tr(replace(video, keyframes_mask=None), audio, None)[0] - gold["transformer"]["out.video"]).abs().max()
        assert d > 0, "the keyframe embedding does not move the transformer golden"
        report.append(f"transformer: without keyframes_mask out.video moves by {float(d):.3e} (the embedding matters)")
        gold["ancestral"] = ancestral_golden(R_tr, V, scale, LATENT_C, A_Z, A_MEL_LAT, v_ctx, a_ctx, SEED, report)
    del R_te, hf

    e2e_meta = None
    if not args.no_e2e:
        from e2e_goldens import e2e_golden

        from ltx_pipelines.utils.model_paths import ModelPaths

        paths = ModelPaths.from_split(transformer_path=P["transformer"], text_encoder_path=P["text_encoder"],
                                      video_vae_path=P["video_vae"], audio_vae_path=P["audio_vae"],
                                      duration_head_path=P["duration_head"])
        gold["e2e"], e2e_meta = e2e_golden(
            out_dir=out_dir, prefix=V["tag"], ckpt_path=None, upsampler_path=P["spatial-x2"],
            lora_path=P["distilled_lora"], gemma_dir=None, V=V, seed=SEED, latent_c=LATENT_C, audio_z=A_Z,
            audio_mel_lat=A_MEL_LAT, report=report, model_paths=paths)

    diffvae_meta = None
    if not args.no_diffusion_vae:
        diffvae_meta = diffusion_vae_goldens(args, V, P, v_enc, SEED, LATENT_C, A_Z, A_MEL_LAT, out_dir, gold, report)

    for name, tensors in gold.items():
        save_file({k: v.detach().clone().contiguous() for k, v in tensors.items() if v is not None},
                  os.path.join(out_dir, f"golden_{name}.safetensors"))
    files = {k: names[k] for k in ("transformer", "text_encoder", "video_vae", "audio_vae", "duration_head")}
    manifest = {
        "variant": args.variant, "seed": SEED, "generation": "2.5", "reference": REFERENCE, "layout": "split",
        "model_version": V["model_version"], "connectors_in": V["connectors_in"],
        "files": files, "upsamplers": {"spatial-x2": names["spatial-x2"]},
        "loras": {"distilled": names["distilled_lora"]},
        "goldens": sorted(f"golden_{n}.safetensors" for n in gold),
        "gemma": {"prompts": V["prompts"], "max_length": gemma_assets.TOKENIZER_MAX_LENGTH},
        "duration": {"frame_rate": float(V["fps"]), "auto_duration": [1.0, 20.0]},
        "ancestral": {"grid": list(V["pipe_grid"]), "fps": float(V["fps"])},
    }
    if e2e_meta is not None:
        manifest["e2e"] = e2e_meta
    if diffvae_meta is not None:
        manifest["diffusion_vae"] = diffvae_meta
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    with open(os.path.join(out_dir, "keys.txt"), "w") as f:  # file \t key \t shape \t dtype, for humans
        for comp, rel in sorted({**files, "spatial-x2": names["spatial-x2"],
                                 "distilled_lora": names["distilled_lora"]}.items()):
            with safe_open(os.path.join(out_dir, rel), "pt") as sf:
                for k in sorted(sf.keys()):
                    sl = sf.get_slice(k)
                    f.write(f"{rel}\t{k}\t{list(sl.get_shape())}\t{sl.get_dtype()}\n")
    report.append(f"total {time.time() - t0:.1f}s")
    with open(os.path.join(out_dir, "REPORT.txt"), "w") as f:
        f.write("\n".join(report) + "\n")
    print("\n".join(report))


# The tiny25 diffusion VAE's decoder: make_ref_diffvae's tiny decoder at this set's latent width, with stages 1-2
# attending along H, W only (K_t = 1): the latent floor is then (2, 2, 2), so the e2e clips' two latent frames need no
# padding and the sampler's noise volume (stored per pipeline) is 9 frames, not 17. (No ghost frames either: the
# diffvae set covers the floor and the ghosts.)
DIFFUSION_DECODER_25 = {"stage_kernels": [[1, 1, 1], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]}
DIFFUSION_TILED_PIPELINE = "dev-two-stage"
DIFFUSION_TILING = {"frames": (16, 8), "height": (64, 32), "width": (96, 32)}  # 2 x 3 x 3 tiles at 128 x 192


def diffusion_vae_goldens(args, V: dict, P: dict, v_enc, seed: int, latent_c: int, audio_z: int,  # noqa: ANN001, PLR0913
                          audio_mel_lat: int, out_dir: str, gold: dict, report: list[str]) -> dict:
    """The diffusion video VAE file (the conv file's encoder and statistics, a tiny random diffusion decoder), and
    golden_e2e_diffvae: the four pipeline classes with it as ``video_vae_path`` (untiled decode: the reference's auto
    tiling cannot size tiles on CPU), plus the tiled decode of one pipeline (keys ``tiled.<pipeline>.*``). The
    denoising is the conv run's (same encoder): asserted bit for bit, so only the decode differs."""
    from e2e_goldens import e2e_golden
    from make_ref_diffvae import DECODER_CFG, nested_vae_config, write_diffusion_vae

    from ltx_core.model.video_vae import VAE_ENCODER_COMFY_KEYS_FILTER, VideoEncoderConfigurator
    from ltx_core.tiling import DimensionSizeConfig, TileSizeConfig
    from ltx_pipelines.utils.model_paths import ModelPaths

    vae_cfg = nested_vae_config(latent_c, V["metadata"]["config"]["vae"], {**DECODER_CFG, **DIFFUSION_DECODER_25})
    meta = {"config": {"vae": vae_cfg}, "model_version": V["model_version"]}
    write_diffusion_vae(P["diffusion_video_vae"], meta, seed + 20, encoder=v_enc)
    enc_back = build_back(VideoEncoderConfigurator, P["diffusion_video_vae"], VAE_ENCODER_COMFY_KEYS_FILTER)
    sa, sb = enc_back.state_dict(), v_enc.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), "diffusion-VAE encoder != conv's"
    report.append(f"diffusion VAE {os.path.relpath(P['diffusion_video_vae'], out_dir)}: its encoder reloads equal to "
                  "the conv file's")
    if args.no_e2e:
        return {"file": os.path.relpath(P["diffusion_video_vae"], out_dir)}
    paths = ModelPaths.from_split(transformer_path=P["transformer"], text_encoder_path=P["text_encoder"],
                                  video_vae_path=P["diffusion_video_vae"], audio_vae_path=P["audio_vae"],
                                  duration_head_path=P["duration_head"])
    common = {"out_dir": out_dir, "prefix": V["tag"], "ckpt_path": None, "upsampler_path": P["spatial-x2"],
              "lora_path": P["distilled_lora"], "gemma_dir": None, "V": V, "seed": seed, "latent_c": latent_c,
              "audio_z": audio_z, "audio_mel_lat": audio_mel_lat, "report": report, "model_paths": paths}
    full, _ = e2e_golden(**common, tiling_config=None, decoder_draw_dtype=torch.bfloat16)
    tiling = TileSizeConfig(**{a: DimensionSizeConfig(tile_size=sz, overlap=ov)
                               for a, (sz, ov) in DIFFUSION_TILING.items()})
    tiled, _ = e2e_golden(**common, pipelines=(DIFFUSION_TILED_PIPELINE,), tiling_config=tiling, key_prefix="tiled.",
                          decoder_draw_dtype=torch.bfloat16)
    full.update({k: v for k, v in tiled.items() if k.startswith("tiled.")})
    conv = gold["e2e"]
    out: dict[str, torch.Tensor] = {}
    for name in E2E_NAMES:
        for prefix in ("", "tiled.") if name == DIFFUSION_TILED_PIPELINE else ("",):
            p = f"{prefix}{name}."
            for key in ("decode.video.latent", "decode.audio.latent", "out.waveform"):
                assert torch.equal(full[p + key], conv[f"{name}.{key}"]), \
                    f"{p}{key}: the diffusion-VAE run denoised differently from the conv run"
            draws = sorted((int(k[len(p + "draw"):].split(".")[0]), k) for k in full if k.startswith(p + "draw"))
            conv_draws = sorted((int(k[len(name) + 5:].split(".")[0]), k) for k in conv if k.startswith(name + ".draw"))
            assert [k.rsplit(".", 1)[1] for _, k in draws[:-1]] == [k.rsplit(".", 1)[1] for _, k in conv_draws], p
            assert all(torch.equal(full[a], conv[b]) for (_, a), (_, b) in zip(draws, conv_draws)), p
            last = draws[-1][1]
            assert last.endswith(".decoder"), f"{p}: the decoder's draw is not the last ({last})"
            if prefix:
                assert torch.equal(full[last], out[f"{name}.decoder_draw"]), "the tiled run drew other noise"
            else:
                out[p + "decoder_draw"] = full[last].to(torch.bfloat16)  # bf16-valued (decoder_draw_dtype)
            out[p + "out.frames_u16"] = full[p + "out.frames_u16"]
    report.append("e2e_diffvae: latents, waveforms and every denoising draw equal the conv-VAE run's bit for bit (only "
                  "the decode differs); the decoder's draw is the last, one per run (the tiled run's equals the "
                  "untiled one's)")
    gold["e2e_diffvae"] = out
    return {"file": os.path.relpath(P["diffusion_video_vae"], out_dir), "untiled": list(E2E_NAMES),
            "tiled": {"pipeline": DIFFUSION_TILED_PIPELINE,
                      "tiling": {a: {"tile_size": sz, "overlap": ov} for a, (sz, ov) in DIFFUSION_TILING.items()}},
            "border": "chunked_eager"}


E2E_NAMES = ("distilled", "dev", "dev-two-stage", "dev-two-stage-hq")


def _e2e_texts() -> tuple[str, str]:
    from e2e_goldens import NEGATIVE_PROMPT, PROMPT

    return PROMPT, NEGATIVE_PROMPT


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
