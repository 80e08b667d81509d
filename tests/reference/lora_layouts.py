"""golden_lora_layouts (FORMAT.md): the test LoRA in the other published key layouts, and the
reference's fusion of each, of two LoRAs at once and of a q8-quantized transformer.

The reference (``ltx_core``) reads one layout only: the official trainer's
``diffusion_model.<module>.lora_A.weight`` [r, in] / ``.lora_B.weight`` [out, r], no alpha
(``LTXV_LORA_COMFY_RENAMING_MAP`` strips ``diffusion_model.``; ``fuse_loras.py`` uses the pairs as
they are). The other layouts are written here from the ``test`` LoRA, and converted back to the
trainer layout with plain key renames and one scale per factor, and that converted file is what
the reference builder fuses: the goldens are the reference's fusion, not a port's.

* ComfyUI: ``diffusion_model.<module>.lora_down.weight`` (= A) / ``.lora_up.weight`` (= B) and a
  scalar ``diffusion_model.<module>.alpha``. Convention (ComfyUI's ``weight_adapter/lora.py``): the
  delta is ``(alpha / rank) · up @ down`` with ``rank = lora_down.shape[0]`` (no ``alpha``: scale 1).
  Back to the trainer layout: ``lora_B = float32(lora_up) · (alpha / rank)`` (kept float32 in the
  converted file; the reference casts every factor to bf16 before its products, as for any file).
* diffusers (``LTX2VideoTransformer3DModel``): ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight``,
  module names as diffusers' LTX-2 conversion renames them (``DIFFUSERS_MODULES``: the top-level
  ``patchify_proj`` -> ``proj_in``, ``adaln_single`` -> ``time_embed``, ...; block layers keep their
  names), PEFT's ``lora_adapter_metadata`` JSON in ``__metadata__`` with ``transformer.r`` and
  ``transformer.lora_alpha``: delta ``(lora_alpha / r) · B @ A``. No connector layers (diffusers keeps
  the connectors outside the transformer). Back: inverse rename, ``lora_B = float32(B) · (lora_alpha / r)``.

Scales: ComfyUI alpha 3 at rank 4 (0.75: ``lora_up = bf16(B / 0.75)`` is rounded, so its effective
LoRA is the test LoRA to bf16 precision and the golden checks the scale convention itself);
diffusers lora_alpha 8 at r 4 (2: exact, its effective LoRA is the test LoRA's).
"""

from __future__ import annotations

import json
import os
import re
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

COMFY_ALPHA = 3.0
DIFFUSERS_LORA_ALPHA = 8
STRENGTH = 0.8
TWO = (("comfy", 0.8), ("test2", -0.3))  # case ``two``: a ComfyUI-layout LoRA and a trainer-layout one
Q_GROUP, Q_BITS = 32, 8
# reference (trainer) top-level module -> diffusers LTX2VideoTransformer3DModel module
DIFFUSERS_MODULES = {
    "patchify_proj": "proj_in", "audio_patchify_proj": "audio_proj_in",
    "adaln_single": "time_embed", "audio_adaln_single": "audio_time_embed",
    "prompt_adaln_single": "prompt_adaln", "audio_prompt_adaln_single": "audio_prompt_adaln",
    "av_ca_video_scale_shift_adaln_single": "av_cross_attn_video_scale_shift",
    "av_ca_audio_scale_shift_adaln_single": "av_cross_attn_audio_scale_shift",
    "av_ca_a2v_gate_adaln_single": "av_cross_attn_video_a2v_gate",
    "av_ca_v2a_gate_adaln_single": "av_cross_attn_audio_v2a_gate",
}
CONNECTORS = ("video_embeddings_connector.", "audio_embeddings_connector.")
# convert.py's quantized layers (mlx_ltx/convert.py _QUANTIZED_LINEAR), as module paths
QUANTIZED = re.compile(r"^transformer_blocks\.\d+\.((attn1|attn2|audio_attn1|audio_attn2|audio_to_video_attn|"
                       r"video_to_audio_attn)\.(to_q|to_k|to_v|to_out\.0)|(ff|audio_ff)\.net\.(0\.proj|2))$")
A, B = ".lora_A.weight", ".lora_B.weight"


def _pairs(sd: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Trainer layout -> {module: (A, B)}."""
    return {k[len("diffusion_model."):-len(A)]: (v, sd[k[:-len(A)] + B]) for k, v in sd.items() if k.endswith(A)}


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).contiguous()


def to_comfy(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for m, (a, b) in _pairs(sd).items():
        scale = COMFY_ALPHA / a.shape[0]
        out[f"diffusion_model.{m}.lora_down.weight"] = _bf16(a)
        out[f"diffusion_model.{m}.lora_up.weight"] = _bf16(b.float() / scale)
        out[f"diffusion_model.{m}.alpha"] = torch.tensor(COMFY_ALPHA, dtype=torch.float32)
    return out


def comfy_to_trainer(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, down in sd.items():
        if not k.endswith(".lora_down.weight"):
            continue
        base = k[:-len(".lora_down.weight")]
        alpha = sd.get(base + ".alpha")
        scale = 1.0 if alpha is None else alpha.item() / down.shape[0]
        out[base + A] = down
        out[base + B] = sd[base + ".lora_up.weight"].float() * scale
    return out


def _rename_first(module: str, mapping: dict[str, str]) -> str:
    head, _, rest = module.partition(".")
    return ".".join(p for p in (mapping.get(head, head), rest) if p)


def to_diffusers(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    out, ranks = {}, set()
    for m, (a, b) in _pairs(sd).items():
        if m.startswith(CONNECTORS):
            continue
        ranks.add(a.shape[0])
        name = "transformer." + _rename_first(m, DIFFUSERS_MODULES)
        out[name + A] = _bf16(a)
        out[name + B] = _bf16(b.float() / (DIFFUSERS_LORA_ALPHA / a.shape[0]))
    (r,) = ranks
    meta = {"transformer.r": r, "transformer.lora_alpha": DIFFUSERS_LORA_ALPHA}
    return out, {"lora_adapter_metadata": json.dumps(meta, sort_keys=True), "format": "pt"}


def diffusers_to_trainer(sd: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    meta = json.loads(metadata["lora_adapter_metadata"])
    scale = meta["transformer.lora_alpha"] / meta["transformer.r"]
    inverse = {v: k for k, v in DIFFUSERS_MODULES.items()}
    out = {}
    for k, a in sd.items():
        if not k.endswith(A):
            continue
        base = "diffusion_model." + _rename_first(k[len("transformer."):-len(A)], inverse)
        out[base + A] = a
        out[base + B] = sd[k[:-len(A)] + B].float() * scale
    return out


# ---------------------------------------------------------------- MLX's affine quantization, in NumPy
def mlx_affine_quantize(w: np.ndarray, group: int = Q_GROUP, bits: int = Q_BITS):
    """``mx.quantize(w, group, bits)`` (affine) of a float32 array holding bf16 values: codes (uint8,
    unpacked), and scales / biases in float32 (MLX stores them in the input's dtype: bf16 here).
    Per group: the edge value of larger magnitude sets the sign of the scale and is hit exactly (the
    zero point is rounded to a code); codes round (w − bias) / scale with the unrounded float32 scale."""
    n_bins = np.float32(2 ** bits - 1)
    g = w.astype(np.float32).reshape(w.shape[0], -1, group)
    w_max, w_min = g.max(-1, keepdims=True), g.min(-1, keepdims=True)
    mask = np.abs(w_min) > np.abs(w_max)
    scale = np.maximum((w_max - w_min) / n_bins, np.float32(1e-7)).astype(np.float32)
    scale = np.where(mask, scale, -scale)
    edge = np.where(mask, w_min, w_max)
    q0 = np.round(edge / scale)
    scale = np.where(q0 != 0, edge / q0, scale).astype(np.float32)
    bias = np.where(q0 == 0, np.float32(0), edge).astype(np.float32)
    codes = np.clip(np.round((g - bias) / scale), 0, n_bins).astype(np.uint8).reshape(w.shape)
    return codes, scale[..., 0], bias[..., 0]


def _to_bf16(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)


def mlx_dequantize_bf16(codes: np.ndarray, scales: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
    """``mx.dequantize`` of a bf16 layer: ``bf16(bf16(q · s) + b)`` per element (MLX's bf16 arithmetic)."""
    g = torch.from_numpy(codes.astype(np.float32)).reshape(codes.shape[0], -1, Q_GROUP)
    prod = (g * scales.float()[..., None]).to(torch.bfloat16)
    return (prod.float() + biases.float()[..., None]).to(torch.bfloat16).reshape(codes.shape)


# ---------------------------------------------------------------- the golden
def lora_layouts_golden(out_dir: str, prefix: str, ckpt_path: str, lora_files: dict[str, str], report: list[str],
                        canonicalize_header) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Writes ``<prefix>-lora-comfy.safetensors`` and ``<prefix>-lora-diffusers.safetensors`` next to the
    test LoRA and returns (golden tensors, {manifest name: file}). ``canonicalize_header``: make_ref's."""
    from safetensors.torch import load_file

    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps, SingleGPUModelBuilder
    from ltx_core.model.transformer import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator

    test = load_file(os.path.join(out_dir, lora_files["test"]))
    files = {"comfy": f"{prefix}-lora-comfy.safetensors", "diffusers": f"{prefix}-lora-diffusers.safetensors"}
    comfy = to_comfy(test)
    diffusers, diffusers_meta = to_diffusers(test)
    note = "the test LoRA in the {} layout (lora_layouts.py)"
    save_file(comfy, os.path.join(out_dir, files["comfy"]), metadata={"note": note.format("ComfyUI")})
    save_file(diffusers, os.path.join(out_dir, files["diffusers"]),
              metadata={**diffusers_meta, "note": note.format("diffusers")})
    for f in files.values():
        canonicalize_header(os.path.join(out_dir, f))

    with tempfile.TemporaryDirectory() as tmp:
        # what the reference fuses: the trainer layout (the test LoRA itself, or a layout converted back)
        with safe_open(os.path.join(out_dir, files["diffusers"]), "pt") as f:
            read_meta = f.metadata()
        trainer_files = {"trainer": os.path.join(out_dir, lora_files["test"]),
                         "test2": os.path.join(out_dir, lora_files["test2"])}
        for name, sd in (("comfy", comfy_to_trainer(load_file(os.path.join(out_dir, files["comfy"])))),
                         ("diffusers", diffusers_to_trainer(load_file(os.path.join(out_dir, files["diffusers"])),
                                                            read_meta))):
            trainer_files[name] = os.path.join(tmp, f"{name}-as-trainer.safetensors")
            save_file(sd, trainer_files[name])

        def fused(loras, model_path=ckpt_path):
            m = SingleGPUModelBuilder(
                model_class_configurator=LTXModelConfigurator, model_path=model_path,
                model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
                loras=tuple(LoraPathStrengthAndSDOps(trainer_files[n], s, LTXV_LORA_COMFY_RENAMING_MAP)
                            for n, s in loras),
            ).build(device=torch.device("cpu"), dtype=torch.float32).eval()
            return dict(m.named_modules())

        touched = sorted(m for m in _pairs(test) if not m.startswith(CONNECTORS))
        touched2 = sorted(set(touched) | set(_pairs(load_file(trainer_files["test2"]))))
        out: dict[str, torch.Tensor] = {"in.strength": torch.tensor([STRENGTH]),
                                        "in.two.strengths": torch.tensor([s for _, s in TWO])}
        for case, loras, paths in (("trainer", [("trainer", STRENGTH)], touched),
                                   ("comfy", [("comfy", STRENGTH)], touched),
                                   ("diffusers", [("diffusers", STRENGTH)], touched),
                                   ("two", list(TWO), touched2)):
            mods = fused(loras)
            for p in paths:
                out[f"{case}.weight.{p}"] = mods[p].weight.detach().clone()
        d_comfy = max((out[f"comfy.weight.{p}"] - out[f"trainer.weight.{p}"]).abs().max().item() for p in touched)
        same_diffusers = all(torch.equal(out[f"diffusers.weight.{p}"], out[f"trainer.weight.{p}"]) for p in touched)
        report.append(f"lora_layouts: ComfyUI (alpha {COMFY_ALPHA:g}, rank 4) fused max|diff| vs trainer "
                      f"{d_comfy:.3e} (lora_up rounded to bf16 at alpha/rank 0.75); diffusers (lora_alpha "
                      f"{DIFFUSERS_LORA_ALPHA}, r 4) identical to trainer: {same_diffusers}")

        # q8: the checkpoint's quantizable touched layers quantized as convert.py --quantize q8 --group-size 32
        # does (mx.quantize of the bf16 weight), dequantized as MLX does in bf16, fused by the reference
        # builder from a checkpoint holding those dequantized weights, and quantized again
        with safe_open(ckpt_path, "pt") as f:
            meta = f.metadata()
            sd = {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}
        q_paths = [p for p in touched if QUANTIZED.match(p)
                   and sd[f"model.diffusion_model.{p}.weight"].shape[1] % Q_GROUP == 0]  # convert.py's should_quantize
        for p in q_paths:
            w = sd[f"model.diffusion_model.{p}.weight"]
            assert w.dtype == torch.bfloat16, p
            codes, scales, biases = mlx_affine_quantize(w.float().numpy())
            scales, biases = _to_bf16(scales), _to_bf16(biases)
            out[f"q8.base.{p}.q"] = torch.from_numpy(codes)
            out[f"q8.base.{p}.scales"], out[f"q8.base.{p}.biases"] = scales, biases
            sd[f"model.diffusion_model.{p}.weight"] = mlx_dequantize_bf16(codes, scales, biases)
        deq_path = os.path.join(tmp, "dequantized.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, deq_path, metadata=meta)
        mods = fused([("trainer", STRENGTH)], deq_path)
        moved = 0
        for p in q_paths:
            codes, scales, biases = mlx_affine_quantize(mods[p].weight.detach().float().numpy())
            out[f"q8.fused.{p}.q"] = torch.from_numpy(codes)
            out[f"q8.fused.{p}.scales"], out[f"q8.fused.{p}.biases"] = _to_bf16(scales), _to_bf16(biases)
            moved += int((out[f"q8.fused.{p}.q"] != out[f"q8.base.{p}.q"]).sum())
        report.append(f"lora_layouts.q8: {len(q_paths)} quantized layers (group {Q_GROUP}), dequantize -> fuse "
                      f"(trainer, {STRENGTH}) -> requantize; {moved} codes changed")
    return out, files
