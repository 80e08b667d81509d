#!/usr/bin/env python
"""A progress callback: Pipeline.generate(progress=...) drawing a text progress bar.

generate() calls progress(stage, step, steps) after every denoising step: stage counts from 0,
step from 1 to steps (the step count of that stage: 8 then 3 for the distilled pipeline). The
callback below turns that into what a GUI progress bar shows (a fraction, a label, a time left)
and draws it as text on stderr, one bar per stage; a GUI would set its widget's value and label
from the same numbers instead. After the last step generate() still decodes the video and the
audio and writes the mp4, which the callback announces. Sizes, frames, frame rate and seed
default to the distilled pipeline's (1536x1024, 121 frames at 24 fps, seed 10).

    python samples/progress_callback.py --model ltx-2.3-distilled-mlx \\
        --prompt "Rain falls on a neon-lit street in Tokyo at night" --output rain.mp4
"""

from __future__ import annotations

import argparse
import sys
import time

from mlx_ltx import Pipeline


def render(fraction: float, label: str, width: int = 30) -> str:
    """A bar and its label: ``|██████████░░░░░░░░░░|  50%  step 4/8  1.3 s/step  ~5 s left``."""
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return f"|{'█' * filled}{'░' * (width - filled)}| {fraction:4.0%}  {label}"


class ProgressBar:
    """A ``progress(stage, step, steps)`` callback for a pipeline with ``stages`` stages."""

    def __init__(self, stages: int, stream=None, width: int = 30):
        self.stages, self.width = stages, width
        self.stream = sys.stderr if stream is None else stream
        # build the bar just before generate(): the first stage's time then includes encoding the
        # prompt and loading the transformer, so its first estimates are high
        self.started = time.perf_counter()

    def __call__(self, stage: int, step: int, steps: int) -> None:
        now = time.perf_counter()
        per_step = (now - self.started) / step
        label = f"step {step}/{steps}  {per_step:.1f} s/step  ~{per_step * (steps - step):.0f} s left"
        self.stream.write(f"\rstage {stage + 1}/{self.stages} " + render(step / steps, label, self.width))
        if step == steps:  # the stage is done: keep its bar, start a new line and a new clock
            self.stream.write("\n")
            self.started = now
            if stage + 1 == self.stages:
                self.stream.write("decoding the video and the audio, writing the mp4...\n")
        self.stream.flush()


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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pipe = Pipeline.from_pretrained(args.model, "distilled", gemma=args.gemma, upsampler=args.upsampler)
    bar = ProgressBar(stages=len(pipe.spec.stages))
    start = time.perf_counter()
    result = pipe.generate(args.prompt, height=args.height, width=args.width, num_frames=args.num_frames,
                           fps=args.fps, seed=args.seed, output_path=args.output, overwrite=args.overwrite,
                           progress=bar)
    print(f"wrote {result.path}: {result.frames.shape[0]} frames in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:  # bad arguments or files: the message says what to change
        sys.exit(f"error: {e}")
