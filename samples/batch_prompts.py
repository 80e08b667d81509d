#!/usr/bin/env python
"""Many prompts, one loaded pipeline: every prompt of a text file becomes its own mp4.

The prompts file has one prompt per line; blank lines and lines starting with # are skipped.
The Pipeline is built once with low_memory=False, so the text encoder, the transformer and the
upsampler load for the first prompt and stay loaded for the next ones (this needs the memory to
hold them together; the default low_memory=True releases each model as soon as it is done and
reloads it on the next call). Prompt i (from 0) uses seed SEED + i. The clips are written to the
--output folder as 000-first-words-of-the-prompt.mp4, 001-....

    printf '%s\\n' "A red fox trots through fresh snow at dawn" \\
        "Waves crash against black volcanic rocks at sunset" > prompts.txt
    python samples/batch_prompts.py --model ltx-2.3-distilled-mlx --prompts prompts.txt --output clips/
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from pathlib import Path

from mlx_ltx import Pipeline, list_pipelines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a convert.py folder (or its HF repo id), or an official "
                                                  ".safetensors file with --gemma, --upsampler, --distilled-lora")
    p.add_argument("--pipeline", default="distilled", choices=list_pipelines(),
                   help="default: distilled (needs a distilled checkpoint; the others a dev one)")
    p.add_argument("--gemma", help="Gemma-3 folder or HF repo id (default: the converted folder's)")
    p.add_argument("--upsampler", help="spatial x2 upsampler, two-stage pipelines (default: the converted folder's)")
    p.add_argument("--distilled-lora", help="distilled LoRA, dev-two-stage(-hq) (default: the converted folder's)")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--output", required=True, help="folder for the mp4s (created if missing)")
    p.add_argument("--height", type=int, help="default: the pipeline's (1024 for two stages, 512 for dev)")
    p.add_argument("--width", type=int, help="default: the pipeline's (1536 for two stages, 768 for dev)")
    p.add_argument("--num-frames", type=int, help="8k+1 (default: the pipeline's, 121)")
    p.add_argument("--fps", type=float, help="default: the pipeline's, 24")
    p.add_argument("--seed", type=int, help="seed of the first prompt, +1 per prompt (default: the pipeline's, 10)")
    p.add_argument("--steps", type=int, help="guided stage's steps, dev pipelines only (default: the checkpoint's)")
    p.add_argument("--stg-blocks", type=int, nargs="+",
                   help="guided pipelines: the STG blocks of both streams (default: the checkpoint's, 28 for 2.3)")
    p.add_argument("--overwrite", action="store_true", help="replace existing mp4s of the same names")
    return p.parse_args(argv)


def read_prompts(path: str) -> list[str]:
    lines = (line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def file_name(index: int, prompt: str, words: int = 6) -> str:
    slug = "-".join(re.findall(r"[a-z0-9]+", prompt.lower())[:words]) or "clip"
    return f"{index:03d}-{slug}.mp4"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prompts = read_prompts(args.prompts)
    if not prompts:
        raise ValueError(f"{args.prompts} holds no prompt (one a line; # starts a comment)")
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    # low_memory=False: the models loaded for the first prompt are reused by the others
    pipe = Pipeline.from_pretrained(args.model, args.pipeline, gemma=args.gemma, upsampler=args.upsampler,
                                    distilled_lora=args.distilled_lora, low_memory=False)
    guidance = {}
    if args.stg_blocks is not None:
        if not pipe.spec.guided:
            raise ValueError(f"the {args.pipeline} pipeline has no guidance: drop --stg-blocks")
        blocks = tuple(args.stg_blocks)
        guidance = {"video_guider_params": dataclasses.replace(pipe.params.video_guider_params, stg_blocks=blocks),
                    "audio_guider_params": dataclasses.replace(pipe.params.audio_guider_params, stg_blocks=blocks)}
    outputs = [out_dir / file_name(i, prompt) for i, prompt in enumerate(prompts)]
    existing = [str(path) for path in outputs if path.exists()]
    if existing and not args.overwrite:  # refuse before the first clip rather than in the middle of the batch
        raise FileExistsError(f"{', '.join(existing)} already exist(s): pass --overwrite or another --output")
    seed = pipe.params.seed if args.seed is None else args.seed
    for i, (prompt, output) in enumerate(zip(prompts, outputs)):
        start = time.perf_counter()
        result = pipe.generate(prompt, height=args.height, width=args.width, num_frames=args.num_frames,
                               fps=args.fps, seed=seed + i, num_inference_steps=args.steps,
                               output_path=output, overwrite=args.overwrite, **guidance)
        print(f"[{i + 1}/{len(prompts)}] wrote {result.path} (seed {seed + i}, "
              f"{time.perf_counter() - start:.1f} s)", flush=True)
    pipe.release()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:  # bad arguments or files: the message says what to change
        sys.exit(f"error: {e}")
