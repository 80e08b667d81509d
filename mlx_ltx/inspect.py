"""Inspect an official LTX checkpoint: its configuration, its components, and whether each
component this port implements loads strictly from it.

    python -m mlx_ltx.inspect ltx-2.3-22b-dev.safetensors [--verify] [--upsampler FILE ...]

Without ``--verify`` only the header is read (instant, even for the 46 GB file). With it, every
implemented component is built from the checkpoint's config and loaded with strict key and shape
checks, one at a time, so peak memory stays at one component.
"""

from __future__ import annotations

import argparse
import math
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


def summarize(ckpt: Checkpoint) -> list[str]:
    lines = [f"checkpoint: {ckpt.path}", f"model_version: {ckpt.metadata.get('model_version', '(absent: LTX-2.0)')}"]
    cfg = ckpt.config
    t = cfg.transformer
    lines.append(
        f"transformer: {t.num_layers} blocks, video {t.num_attention_heads}x{t.attention_head_dim}, audio "
        f"{t.audio_num_attention_heads}x{t.audio_attention_head_dim}, gated attention {t.apply_gated_attention}, "
        f"prompt adaLN {t.cross_attention_adaln}, text projection V{t.text_projection_version}, "
        f"av_ca multiplier {t.av_ca_timestep_scale_multiplier}"
    )
    v = cfg.vae
    lines.append(f"video VAE: latent {v.latent_channels} ch, scale factors {v.scale_factors}, decoder padding "
                 f"{v.spatial_padding_mode}, timestep conditioning {v.timestep_conditioning}")
    a = cfg.audio_vae
    lines.append(f"audio VAE: z {a.z_channels} ch, {a.mel_bins} mel bins at {a.sampling_rate} Hz, hop {a.mel_hop_length}")
    voc = cfg.vocoder
    lines.append("vocoder: " + (f"BWE {voc.vocoder.output_sampling_rate} -> {voc.bwe.output_sampling_rate} Hz"
                                if voc.bwe else f"HiFi-GAN {voc.vocoder.output_sampling_rate} Hz"))
    for name in COMPONENTS:
        if name == "upsampler":
            continue
        keys = ckpt.component_keys(name).values()
        n = sum(math.prod(ckpt.shapes[k]) for k in keys)
        dtypes = sorted({ckpt.dtypes[k] for k in keys})
        lines.append(f"  {name:18s} {len(keys):5d} tensors {_fmt_count(n):>8s} params {','.join(dtypes)}")
    return lines


def verify(ckpt: Checkpoint, dtype: mx.Dtype) -> list[str]:
    lines = []
    for name, build in BUILDERS.items():
        if name == "upsampler" or not ckpt.has_component(name):
            continue
        module = build(ckpt)
        load_component(ckpt, name, module, dtype=dtype)
        lines.append(f"  {name:18s} loads strictly")
        del module
    missing = [n for n in COMPONENTS if n != "upsampler" and n not in BUILDERS]
    if missing:
        lines.append(f"  not verified (not yet ported): {', '.join(missing)}")
    return lines


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_ltx.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="official single-file LTX checkpoint (.safetensors)")
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
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
