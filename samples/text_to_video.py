#!/usr/bin/env python
"""Text to video: one prompt -> one mp4 with sound, with the distilled pipeline.

The distilled pipeline runs a half-size stage (8 fixed steps), upsamples the latent x2 and
refines it (3 fixed steps): there is no step count and no guidance to choose. Sizes, frame
count, frame rate and seed default to the pipeline's (1536x1024, 121 frames at 24 fps, seed 10).

    python convert.py --source Lightricks/LTX-2.3 --variant distilled --out ltx-2.3-distilled-mlx \\
        --quantize q8 --upsamplers x2 --text-encoder google/gemma-3-12b-it-qat-q4_0-unquantized
    python samples/text_to_video.py --model ltx-2.3-distilled-mlx \\
        --prompt "A red fox trots through fresh snow at dawn, its breath steaming" --output fox.mp4
"""

from __future__ import annotations

import argparse
import sys

from mlx_ltx import Pipeline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a convert.py folder (or its HF repo id), or an official "
                                                  "distilled .safetensors file with --gemma and --upsampler")
    p.add_argument("--gemma", help="Gemma-3 folder or HF repo id (default: the converted folder's)")
    p.add_argument("--upsampler", help="spatial x2 upsampler .safetensors (default: the converted folder's)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--output", required=True, help="the .mp4 to write")
    p.add_argument("--height", type=int, help="multiple of 64 (default: the pipeline's, 1024)")
    p.add_argument("--width", type=int, help="multiple of 64 (default: the pipeline's, 1536)")
    p.add_argument("--num-frames", type=int, help="8k+1 (default: the pipeline's, 121)")
    p.add_argument("--fps", type=float, help="default: the pipeline's, 24")
    p.add_argument("--seed", type=int, help="default: the pipeline's, 10")
    p.add_argument("--no-audio", action="store_true", help="write the video without a sound track")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pipe = Pipeline.from_pretrained(args.model, "distilled", gemma=args.gemma, upsampler=args.upsampler)
    # None leaves a setting at the pipeline's default
    result = pipe.generate(args.prompt, height=args.height, width=args.width, num_frames=args.num_frames,
                           fps=args.fps, seed=args.seed, audio=not args.no_audio, output_path=args.output,
                           overwrite=args.overwrite)
    frames, height, width, _ = result.frames.shape
    print(f"wrote {result.path}: {frames} frames, {width}x{height} at {result.fps:g} fps"
          f"{', with audio' if result.audio is not None else ''}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:  # bad arguments or files: the message says what to change
        sys.exit(f"error: {e}")
