#!/usr/bin/env python
"""The dev two-stage pipeline with guidance of your own.

Stage 1 runs the dev model at half size with multimodal guidance (one MultiModalGuiderParams per
stream, built here from the flags); the latent is upsampled x2 and stage 2 refines it with the
distilled LoRA fused in (no guidance there). The guidance flags default to the reference's
values for LTX-2.3 (and 2.0): video CFG 3, audio CFG 7, STG scale 1, rescale 0.7, modality
scale 3; --stg-blocks defaults to the checkpoint's (block 28 for 2.3, 29 for 2.0). Sizes,
frames, frame rate, seed and steps default to the pipeline's (1536x1024, 121 frames at 24 fps,
seed 10, 30 steps for 2.3).

    python convert.py --source Lightricks/LTX-2.3 --variant dev --out ltx-2.3-dev-mlx --quantize q8 \\
        --upsamplers x2 --loras distilled --text-encoder google/gemma-3-12b-it-qat-q4_0-unquantized
    python samples/two_stage_custom_guidance.py --model ltx-2.3-dev-mlx \\
        --prompt "A jazz trio plays in a smoky basement club, close-up on the drummer" \\
        --video-cfg 4.0 --audio-cfg 6.0 --stg-scale 0.8 --rescale 0.5 --output jazz.mp4
"""

from __future__ import annotations

import argparse
import sys

from mlx_ltx import MultiModalGuiderParams, Pipeline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a dev convert.py folder (or its HF repo id), or the official "
                                                  "dev .safetensors file with --gemma, --upsampler, --distilled-lora")
    p.add_argument("--gemma", help="Gemma-3 folder or HF repo id (default: the converted folder's)")
    p.add_argument("--upsampler", help="spatial x2 upsampler .safetensors (default: the converted folder's)")
    p.add_argument("--distilled-lora", help="distilled LoRA .safetensors (default: the converted folder's)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", help="default: the reference's DEFAULT_NEGATIVE_PROMPT")
    p.add_argument("--output", required=True, help="the .mp4 to write")
    p.add_argument("--height", type=int, help="multiple of 64 (default: the pipeline's, 1024)")
    p.add_argument("--width", type=int, help="multiple of 64 (default: the pipeline's, 1536)")
    p.add_argument("--num-frames", type=int, help="8k+1 (default: the pipeline's, 121)")
    p.add_argument("--fps", type=float, help="default: the pipeline's, 24")
    p.add_argument("--seed", type=int, help="default: the pipeline's, 10")
    p.add_argument("--steps", type=int, help="stage-1 steps (default: the checkpoint's, 30 for 2.3)")
    g = p.add_argument_group("guidance (stage 1)")
    g.add_argument("--video-cfg", type=float, default=3.0, help="video text CFG scale, 1 = off (default 3)")
    g.add_argument("--audio-cfg", type=float, default=7.0, help="audio text CFG scale, 1 = off (default 7)")
    g.add_argument("--stg-scale", type=float, default=1.0, help="spatio-temporal guidance, 0 = off (default 1)")
    g.add_argument("--stg-blocks", type=int, nargs="+",
                   help="transformer blocks the STG pass skips (default: the checkpoint's)")
    g.add_argument("--rescale", type=float, default=0.7, help="0..1, pull the guided std back (default 0.7)")
    g.add_argument("--modality-scale", type=float, default=3.0,
                   help="audio<->video cross-attention guidance, 1 = off (default 3)")
    g.add_argument("--skip-step", type=int, default=0, help="run the guidance passes every (k+1)-th step (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pipe = Pipeline.from_pretrained(args.model, "dev-two-stage", gemma=args.gemma, upsampler=args.upsampler,
                                    distilled_lora=args.distilled_lora)
    defaults = pipe.params  # the checkpoint generation's defaults, for comparison and the STG blocks
    blocks = tuple(args.stg_blocks) if args.stg_blocks else defaults.video_guider_params.stg_blocks
    shared = dict(stg_scale=args.stg_scale, stg_blocks=blocks, rescale_scale=args.rescale,
                  modality_scale=args.modality_scale, skip_step=args.skip_step)
    video = MultiModalGuiderParams(cfg_scale=args.video_cfg, **shared)
    audio = MultiModalGuiderParams(cfg_scale=args.audio_cfg, **shared)
    print(f"video guidance: {video}\n  (checkpoint default: {defaults.video_guider_params})")
    print(f"audio guidance: {audio}\n  (checkpoint default: {defaults.audio_guider_params})")
    result = pipe.generate(args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                           num_frames=args.num_frames, fps=args.fps, seed=args.seed,
                           num_inference_steps=args.steps, video_guider_params=video, audio_guider_params=audio,
                           output_path=args.output, overwrite=args.overwrite)
    frames, height, width, _ = result.frames.shape
    print(f"wrote {result.path}: {frames} frames, {width}x{height} at {result.fps:g} fps, with audio")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:  # bad arguments or files: the message says what to change
        sys.exit(f"error: {e}")
