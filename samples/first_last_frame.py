#!/usr/bin/env python
"""First and last frame to video: the clip starts on one image and ends on another.

The first image (frame 0) replaces the first latent frame; the last one (frame num_frames - 1)
is appended as guiding tokens. Each image is resized and centre-cropped to the video's size.
Any pipeline works; the distilled one is the default. With a guided pipeline (dev,
dev-two-stage, dev-two-stage-hq) --steps and --stg-blocks apply (the rest of the guidance stays
the checkpoint's default; see two_stage_custom_guidance.py to change it).

    python samples/first_last_frame.py --model ltx-2.3-distilled-mlx \\
        --first first.png --last last.png \\
        --prompt "The camera slowly pulls back from a lighthouse to reveal the stormy coast" --output clip.mp4
    python samples/first_last_frame.py --model ltx-2.3-dev-mlx --pipeline dev-two-stage \\
        --first first.png --last last.png --prompt "..." --output clip.mp4
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from mlx_ltx import ImageConditioningInput, Pipeline, list_pipelines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a convert.py folder (or its HF repo id), or an official "
                                                  ".safetensors file with --gemma, --upsampler, --distilled-lora")
    p.add_argument("--pipeline", default="distilled", choices=list_pipelines(),
                   help="default: distilled (needs a distilled checkpoint; the others a dev one)")
    p.add_argument("--gemma", help="Gemma-3 folder or HF repo id (default: the converted folder's)")
    p.add_argument("--upsampler", help="spatial x2 upsampler, two-stage pipelines (default: the converted folder's)")
    p.add_argument("--distilled-lora", help="distilled LoRA, dev-two-stage(-hq) (default: the converted folder's)")
    p.add_argument("--first", required=True, help="image for the first frame")
    p.add_argument("--last", required=True, help="image for the last frame")
    p.add_argument("--first-strength", type=float, default=1.0, help="0..1 (default 1: the frame is kept)")
    p.add_argument("--last-strength", type=float, default=1.0, help="0..1 (default 1)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--output", required=True, help="the .mp4 to write")
    p.add_argument("--height", type=int, help="default: the pipeline's (1024 for two stages, 512 for dev)")
    p.add_argument("--width", type=int, help="default: the pipeline's (1536 for two stages, 768 for dev)")
    p.add_argument("--num-frames", type=int, help="8k+1 (default: the pipeline's, 121)")
    p.add_argument("--fps", type=float, help="default: the pipeline's, 24")
    p.add_argument("--seed", type=int, help="default: the pipeline's, 10")
    p.add_argument("--steps", type=int, help="guided stage's steps, dev pipelines only (default: the checkpoint's)")
    p.add_argument("--stg-blocks", type=int, nargs="+",
                   help="guided pipelines: the STG blocks of both streams (default: the checkpoint's, 28 for 2.3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pipe = Pipeline.from_pretrained(args.model, args.pipeline, gemma=args.gemma, upsampler=args.upsampler,
                                    distilled_lora=args.distilled_lora)
    # the last frame's index depends on the frame count: resolve the pipeline's default here
    num_frames = pipe.params.num_frames if args.num_frames is None else args.num_frames
    images = [ImageConditioningInput(args.first, 0, args.first_strength),
              ImageConditioningInput(args.last, num_frames - 1, args.last_strength)]
    guidance = {}
    if args.stg_blocks is not None:
        if not pipe.spec.guided:
            raise ValueError(f"the {args.pipeline} pipeline has no guidance: drop --stg-blocks")
        blocks = tuple(args.stg_blocks)
        guidance = {"video_guider_params": dataclasses.replace(pipe.params.video_guider_params, stg_blocks=blocks),
                    "audio_guider_params": dataclasses.replace(pipe.params.audio_guider_params, stg_blocks=blocks)}
    result = pipe.generate(args.prompt, height=args.height, width=args.width, num_frames=num_frames,
                           fps=args.fps, seed=args.seed, num_inference_steps=args.steps, images=images,
                           output_path=args.output, overwrite=args.overwrite, **guidance)
    frames, height, width, _ = result.frames.shape
    print(f"wrote {result.path}: {frames} frames, {width}x{height} at {result.fps:g} fps")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:  # bad arguments or files: the message says what to change
        sys.exit(f"error: {e}")
