#!/usr/bin/env python
"""Keyframes to video: several images, each at a chosen frame of the clip.

--keyframe PATH FRAME [STRENGTH] (repeatable): FRAME counts from 0; a negative FRAME counts from
the end (-1 is the last frame), so the same command works for any --num-frames. A keyframe at
frame 0 replaces the first latent frame; the others are appended as guiding tokens at their
frames. STRENGTH (default 1) is in 0..1. Any pipeline works; the distilled one is the default.

    python samples/keyframes.py --model ltx-2.3-distilled-mlx \\
        --keyframe dawn.png 0 --keyframe noon.png 60 0.8 --keyframe dusk.png -1 \\
        --prompt "A time-lapse of a mountain lake from dawn to dusk" --output lake.mp4
    python samples/keyframes.py --model ltx-2.3-dev-mlx --pipeline dev-two-stage \\
        --keyframe dawn.png 0 --keyframe dusk.png -1 --prompt "..." --output lake.mp4
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
    p.add_argument("--keyframe", dest="keyframes", action="append", nargs="+", required=True,
                   metavar="ARG", help="PATH FRAME [STRENGTH]; repeatable")
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
    args = p.parse_args(argv)
    for values in args.keyframes:
        if len(values) not in (2, 3):
            p.error(f"--keyframe takes PATH FRAME [STRENGTH]; got {' '.join(values)}")
        try:
            int(values[1]), float(values[2] if len(values) == 3 else 1.0)
        except ValueError:
            p.error(f"--keyframe {' '.join(values)}: FRAME is an integer, STRENGTH a number")
    return args


def keyframe_inputs(keyframes: list[list[str]], num_frames: int) -> list[ImageConditioningInput]:
    """--keyframe values -> conditioning inputs, negative frames counted from the end."""
    out = []
    for values in keyframes:
        frame = int(values[1])
        frame = num_frames + frame if frame < 0 else frame
        strength = float(values[2]) if len(values) == 3 else 1.0
        out.append(ImageConditioningInput(values[0], frame, strength))
    return sorted(out, key=lambda image: image.frame_idx)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pipe = Pipeline.from_pretrained(args.model, args.pipeline, gemma=args.gemma, upsampler=args.upsampler,
                                    distilled_lora=args.distilled_lora)
    # the pipeline's default frame count, resolved here to place the negative frames
    num_frames = pipe.params.num_frames if args.num_frames is None else args.num_frames
    images = keyframe_inputs(args.keyframes, num_frames)
    guidance = {}
    if args.stg_blocks is not None:
        if not pipe.spec.guided:
            raise ValueError(f"the {args.pipeline} pipeline has no guidance: drop --stg-blocks")
        blocks = tuple(args.stg_blocks)
        guidance = {"video_guider_params": dataclasses.replace(pipe.params.video_guider_params, stg_blocks=blocks),
                    "audio_guider_params": dataclasses.replace(pipe.params.audio_guider_params, stg_blocks=blocks)}
    # generate() checks every frame index (0..num_frames-1), strength and image file before loading
    result = pipe.generate(args.prompt, height=args.height, width=args.width, num_frames=num_frames,
                           fps=args.fps, seed=args.seed, num_inference_steps=args.steps, images=images,
                           output_path=args.output, overwrite=args.overwrite, **guidance)
    frames, height, width, _ = result.frames.shape
    at = ", ".join(f"{image.frame_idx}" for image in images)
    print(f"wrote {result.path}: {frames} frames, {width}x{height} at {result.fps:g} fps, keyframes at {at}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:  # bad arguments or files: the message says what to change
        sys.exit(f"error: {e}")
