#!/usr/bin/env python
"""Convert the official LTX release into an MLX model folder. Thin CLI over mlx_ltx.convert.

The release is read from --source and recognised from it: the single-file release (LTX-2 / 2.3:
Hugging Face Lightricks/LTX-2.3 or Lightricks/LTX-2, a local copy, or one .safetensors;
its Gemma-3 text encoder comes from --text-encoder) or the split one (LTX-2.5: Lightricks/LTX-2.5,
a local folder laid out like it, or its files; the Gemma-4 text encoder is part of the release and
converted into the folder, --text-encoder-quantize quantizes it). From a repo id only the files the
variant and the options need are downloaded (for 2.5: the variant's transformer, the text encoder,
the conv video VAE, the audio VAE, the duration head, the requested upsamplers and LoRAs).

    python convert.py --source Lightricks/LTX-2.3 --variant dev --out ltx-2.3-dev-mlx --quantize q8
    python convert.py --source Lightricks/LTX-2.5 --variant distilled --out ltx-2.5-distilled-mlx \
        --quantize q8 --text-encoder-quantize q8 --upsamplers x2
"""

import argparse
import sys

from mlx_ltx.config import ConfigError
from mlx_ltx.convert import DEFAULT_SHARD_BYTES, DTYPES, QUANT_BITS, UPSAMPLER_PATTERNS, ConvertError, convert
from mlx_ltx.loading import CheckpointError


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n    python")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, nargs="+",
                   help="HF repo id (Lightricks/LTX-2.3, Lightricks/LTX-2.5), a local folder of the release (2.5: "
                        "laid out as the repo, diffusion_models/ text_encoders/ vae/ ...), a 2.3 .safetensors file, or "
                        "the 2.5 files themselves (transformer, text encoder, video VAE, audio VAE[, duration head, "
                        "upsamplers, distilled LoRA])")
    p.add_argument("--variant", required=True, choices=("dev", "distilled"))
    p.add_argument("--out", required=True, help="output folder (written as OUT.partial, renamed when complete)")
    p.add_argument("--quantize", choices=sorted(QUANT_BITS), help="quantize the transformer blocks' linear layers")
    p.add_argument("--group-size", type=int, default=64, help="quantization group size (default 64; a layer whose "
                                                                "input width it does not divide stays unquantized)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="dtype of the unquantized tensors")
    p.add_argument("--upsamplers", default="", help=f"comma-separated, from {sorted(UPSAMPLER_PATTERNS)}")
    p.add_argument("--loras", default="", help="comma-separated, from ['distilled'] (the distillation LoRA of the "
                                                "dev two-stage pipelines)")
    p.add_argument("--text-encoder", help="2.3 only: Gemma-3 repo id or folder to convert with mlx-lm (the reference "
                                          "uses google/gemma-3-12b-it-qat-q4_0-unquantized). A 2.5 source converts its "
                                          "own Gemma-4 text encoder; a Gemma-3 one is refused there, a Gemma-4 bundle "
                                          ".safetensors replaces the source's")
    p.add_argument("--text-encoder-quantize", choices=sorted(QUANT_BITS),
                   help="quantize the text encoder's linear layers (2.3: mlx-lm's conversion; 2.5: the Gemma-4 "
                        "attention and MLP layers whose input width --group-size divides)")
    p.add_argument("--video-decoder", choices=("diffusion", "conv"),
                   help="2.5: which video VAE file to convert: the diffusion VAE (the release's default, "
                        "vae/ltx-2.5-video-vae-bf16) or the convolutional one (faster, lighter decode); default: "
                        "the diffusion one when the source has it")
    p.add_argument("--shard-gb", type=float, default=DEFAULT_SHARD_BYTES / 2**30, help="max size of one output file")
    p.add_argument("--no-hash", action="store_true", help="skip the SHA-256 of the source files")
    p.add_argument("--force", action="store_true", help="replace an existing output folder written by convert.py "
                                                        "(or an empty one); any other folder is refused")
    return p


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        source = args.source[0] if len(args.source) == 1 else args.source
        convert(source, args.variant, args.out, quantize=args.quantize, group_size=args.group_size,
                dtype=args.dtype, upsamplers=[u for u in args.upsamplers.split(",") if u],
                loras=[n for n in args.loras.split(",") if n],
                text_encoder=args.text_encoder, text_encoder_quantize=args.text_encoder_quantize,
                video_decoder=args.video_decoder, force=args.force,
                shard_bytes=int(args.shard_gb * 2**30), hash_sources=not args.no_hash)
    except KeyboardInterrupt:  # the converter has already removed OUT.partial
        print("interrupted", file=sys.stderr)
        return 130
    except (ConvertError, CheckpointError, ConfigError, OSError, MemoryError) as e:
        # anticipated failures: one line, no traceback (other exceptions are bugs and keep theirs)
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
