"""Inspect an official LTX checkpoint or a folder made by convert.py: its configuration, its
quantization, its components with their parameter counts, and whether each component this port
implements loads strictly from it.

    python -m mlx_ltx.inspect ltx-2.3-22b-dev.safetensors [--verify] [--upsampler FILE ...]

Parameter counts are logical: a quantized weight packs several parameters into each uint32, and
is counted as its unquantized shape (scales × group size); its scales and biases are not counted.

Without ``--verify`` only the header is read (instant, even for the 46 GB file). With it, every
implemented component is built from the checkpoint's config and loaded with strict key and shape
checks, one at a time, so peak memory stays at one component.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .config import ConfigError
from .loading import COMPONENTS, Checkpoint, CheckpointError, load_component

# component name -> builder(checkpoint) returning an unloaded module; filled by the model modules
# that exist (a component without a builder is listed but not verified)
BUILDERS: dict[str, Callable[[Checkpoint], nn.Module]] = {}


def _register_builders() -> None:
    from .models import registry

    BUILDERS.update(registry.builders())


def _fmt_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def quantized_layers(ckpt: Checkpoint) -> set[str]:
    """Checkpoint keys (without ``.weight``) of the layers stored quantized (with scales)."""
    return {k[: -len(".scales")] for k in ckpt.shapes
            if k.endswith(".scales") and k[: -len(".scales")] + ".weight" in ckpt.shapes}


def _logical(ckpt: Checkpoint, keys, quantized: set[str], group_size: int | None) -> tuple[int, int]:
    """(tensors, parameters) of ``keys`` as they were before quantization."""
    tensors = params = 0
    for k in keys:
        base, _, leaf = k.rpartition(".")
        if base in quantized and leaf in ("scales", "biases"):
            continue
        tensors += 1
        if base in quantized and leaf == "weight" and group_size:
            params += math.prod(ckpt.shapes[base + ".scales"]) * group_size
        else:
            params += math.prod(ckpt.shapes[k])
    return tensors, params


def logical_params(ckpt: Checkpoint) -> int:
    """Parameters of the whole checkpoint, quantized weights counted at their unquantized size."""
    group_size = (ckpt.quantization or {}).get("group_size")
    return _logical(ckpt, ckpt.shapes, quantized_layers(ckpt), group_size)[1]


def summarize(ckpt: Checkpoint) -> list[str]:
    lines = [f"checkpoint: {ckpt.path}", f"model_version: {ckpt.metadata.get('model_version', '(absent: LTX-2.0)')}"]
    info = getattr(ckpt, "info", None)  # a converted folder's config.json
    converted = bool(info) and info.get("format") is not None
    if ckpt.layout == "split":
        from .generations import describe

        if not converted:
            lines.append("split files: " + ", ".join(
                f"{r} {os.path.relpath(p, ckpt.path) if os.path.isdir(ckpt.path) else p}"
                for r, p in ckpt.role_files.items()))
        kind = describe(ckpt)
        lines.append(f"generation: LTX-{kind.name}, decoder {kind.video_decoder}, text encoder "
                     f"{kind.text_encoder_family or 'none'}, duration head {'yes' if kind.has_duration_head else 'no'}, "
                     f"image CRF {kind.image_crf}")
    if converted:
        lines.append(f"converted folder: format {info.get('format')} v{info.get('format_version')}, variant "
                     f"{info.get('variant')}, dtype {info.get('dtype')}")
    quantized = quantized_layers(ckpt)
    q = ckpt.quantization or {}
    group_size = q.get("group_size")
    if quantized:
        lines.append(f"quantization: {len(quantized)} layers, {q.get('bits', '?')} bits, group size "
                     f"{group_size or '?'}, {q.get('mode', 'affine')}"
                     + ("" if q else " (settings missing from config.json: the folder does not load; packed "
                                     "weights counted as stored)"))
    else:
        lines.append("quantization: none")
    cfg = ckpt.config
    t = cfg.transformer
    lines.append(
        f"transformer: {t.num_layers} blocks, video {t.num_attention_heads}x{t.attention_head_dim}, audio "
        f"{t.audio_num_attention_heads}x{t.audio_attention_head_dim}, gated attention {t.apply_gated_attention}, "
        f"prompt adaLN {t.cross_attention_adaln}, text projection V{t.text_projection_version}, "
        f"av_ca multiplier {t.av_ca_timestep_scale_multiplier}"
    )
    v = cfg.vae
    if isinstance(v.raw.get("decoder"), dict):  # the diffusion VAE (LTX-2.5): its decoder has its own config
        from .models.diffusion_video_decoder import DiffusionDecoderConfig

        d = DiffusionDecoderConfig.from_vae_section(v.raw)
        lines.append(f"video VAE: {v.raw.get('_class_name')}, latent {v.latent_channels} ch, scale factors "
                     f"{v.scale_factors}; diffusion decoder: stages {d.stage_channels}, depths {d.stage_depths}, "
                     f"{d.default_num_inference_steps} sampler steps, output {d.model_output_type}")
    else:
        lines.append(f"video VAE: latent {v.latent_channels} ch, scale factors {v.scale_factors}, decoder padding "
                     f"{v.spatial_padding_mode}, timestep conditioning {v.timestep_conditioning}")
    a = cfg.audio_vae
    lines.append(f"audio VAE: z {a.z_channels} ch, {a.mel_bins} mel bins at {a.sampling_rate} Hz, hop {a.mel_hop_length}")
    voc = cfg.vocoder
    lines.append("vocoder: " + (f"BWE {voc.vocoder.output_sampling_rate} -> {voc.bwe.output_sampling_rate} Hz"
                                if voc.bwe else f"HiFi-GAN {voc.vocoder.output_sampling_rate} Hz"))
    seen: set[str] = set()  # the VAE statistics belong to both VAE halves: count them once in the total
    total = 0
    for name in COMPONENTS:
        if name == "upsampler":
            continue
        keys = list(ckpt.component_keys(name).values())
        n_tensors, n = _logical(ckpt, keys, quantized, group_size)
        total += _logical(ckpt, [k for k in keys if k not in seen], quantized, group_size)[1]
        seen.update(keys)
        q_here = [k for k in keys if k.endswith(".weight") and k[: -len(".weight")] in quantized]
        dtypes = sorted({ckpt.dtypes[k] for k in keys if k not in q_here and k.rpartition(".")[0] not in quantized})
        extra = f", {len(q_here)} layers {q.get('bits', '?')}-bit" if q_here else ""
        lines.append(f"  {name:18s} {n_tensors:5d} tensors {_fmt_count(n):>8s} params {','.join(dtypes)}{extra}")
    lines.append(f"  {'total':18s} {'':5s}         {_fmt_count(total):>8s} params")
    return lines


def verify(ckpt: Checkpoint, dtype: mx.Dtype) -> list[str]:
    from .models import registry

    lines = []
    for name in BUILDERS:
        if name == "upsampler" or not ckpt.has_component(name):
            continue
        module = registry.load(ckpt, name, dtype)
        lines.append(f"  {name:18s} loads strictly")
        del module
    missing = [n for n in COMPONENTS if n != "upsampler" and n not in BUILDERS]
    if missing:
        lines.append(f"  not verified (not yet ported): {', '.join(missing)}")
    return lines


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_ltx.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="official single-file LTX checkpoint (.safetensors) or a folder made by "
                                      "convert.py")
    p.add_argument("--verify", action="store_true", help="build and strictly load every implemented component")
    p.add_argument("--upsampler", nargs="*", default=[], help="latent upsampler files to inspect too")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    return p


def main(argv: list[str] | None = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        ckpt = Checkpoint(args.checkpoint)
        print("\n".join(summarize(ckpt)))
        if args.verify:
            _register_builders()
            print("verify:")
            print("\n".join(verify(ckpt, getattr(mx, args.dtype))))
        for path in args.upsampler:
            up = Checkpoint(path)
            c = up.upsampler_config
            print(f"upsampler {path}: spatial {c.spatial_upsample} x{c.spatial_scale}, temporal {c.temporal_upsample}, "
                  f"mid {c.mid_channels}, {len(up.shapes)} tensors")
            if args.verify and "upsampler" in BUILDERS:
                load_component(up, "upsampler", BUILDERS["upsampler"](up), dtype=getattr(mx, args.dtype))
                print("  loads strictly")
    except (CheckpointError, ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
