"""``python -m mlx_ltx.generate``: text/image-to-video with audio, one of the four LTX pipelines.

Argument names follow the reference's ``ltx_pipelines/utils/args.py`` where it has them
(``--image PATH FRAME_IDX STRENGTH [CRF]``, ``--num-inference-steps``, ``--frame-rate``,
the guidance flags); ``--model`` replaces its per-component checkpoint paths. Defaults left
unset come from the checkpoint's generation (``detect_params``) or the HQ preset.

    python -m mlx_ltx.generate --model ltx-2.3-dev-mlx --pipeline dev-two-stage \\
        --prompt "A red fox runs through snow" --height 1024 --width 1536 --num-frames 121 \\
        --image first.png 0 1.0 --output fox.mp4
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import mlx.core as mx

from .conditioning import ImageConditioningInput
from .pipeline_stages import PIPELINES

_DTYPES = {"bfloat16": mx.bfloat16, "float32": mx.float32}
# --flag suffix -> MultiModalGuiderParams field
_GUIDER_FLAGS = (("cfg-guidance-scale", "cfg_scale", float), ("stg-guidance-scale", "stg_scale", float),
                 ("rescale-scale", "rescale_scale", float), ("skip-step", "skip_step", int))


def _image_arg(values: list[str]) -> ImageConditioningInput:
    if len(values) not in (3, 4):
        raise argparse.ArgumentTypeError(f"--image takes PATH FRAME_IDX STRENGTH [CRF]; got {values}")
    try:
        crf = int(values[3]) if len(values) == 4 else None
        return ImageConditioningInput(values[0], int(values[1]), float(values[2]), crf)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image {' '.join(values)}: FRAME_IDX and CRF are integers, "
                                         f"STRENGTH a number") from None


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_ltx.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help="official .safetensors checkpoint, a convert.py folder, or the HF repo id of one")
    p.add_argument("--pipeline", default="distilled", choices=sorted(PIPELINES, key=list(PIPELINES).index),
                   help="distilled: distilled checkpoint, 8+3 steps; dev: one guided stage at full size; "
                        "dev-two-stage: guided half-size stage + distilled-LoRA refinement; "
                        "dev-two-stage-hq: the same with res_2s and LoRA 0.25/0.5 (default: distilled)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None,
                   help="guided pipelines only (default: the reference's DEFAULT_NEGATIVE_PROMPT)")
    p.add_argument("--enhance-prompt", action="store_true",
                   help="let Gemma rewrite the prompt first (needs a Gemma with a chat template)")
    p.add_argument("--output-path", "--output", dest="output_path", required=True,
                   help="output .mp4, in an existing folder; an existing file is kept unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output / --wav file")
    p.add_argument("--height", type=int, default=None,
                   help="pixels; default 512 (one stage) / 1024 (two stages; HQ 1088)")
    p.add_argument("--width", type=int, default=None,
                   help="pixels; default 768 (one stage) / 1536 (two stages; HQ 1920)")
    p.add_argument("--num-frames", type=int, default=None, help="8k+1 frames; default 121")
    p.add_argument("--frame-rate", "--fps", dest="frame_rate", type=float, default=None, help="default 24")
    p.add_argument("--seed", type=int, default=None, help="any integer, used modulo 2**64; default 10")
    p.add_argument("--num-inference-steps", "--steps", dest="num_inference_steps", type=int, default=None,
                   help="dev pipelines' stage-1 steps; default 30 (2.3), 40 (19B), 15 (HQ)")
    p.add_argument("--image", dest="images", action="append", nargs="+", metavar="ARG", default=[],
                   help="PATH FRAME_IDX STRENGTH [CRF]: frame 0 replaces the first latent frame, any other "
                        "frame is a guiding keyframe (e.g. the last frame); repeatable")
    p.add_argument("--image-crf-threads", type=int, default=None, metavar="N",
                   help="libx264 threads of the images' CRF round trip; the pixels depend on it. Default: one per "
                        "CPU, as the reference on this machine; pass the reference machine's count to match it")
    p.add_argument("--gemma", "--gemma-root", dest="gemma", default=None,
                   help="Gemma-3 folder or HF repo id (default: the converted folder's text_encoder)")
    p.add_argument("--upsampler", "--spatial-upsampler-path", dest="upsampler", default=None,
                   help="spatial x2 upsampler file (default: the converted folder's)")
    p.add_argument("--distilled-lora", default=None, help="distilled LoRA file (default: the converted folder's)")
    p.add_argument("--no-audio", action="store_true", help="write the video without an audio stream")
    p.add_argument("--wav", default=None, help="also write the audio to this .wav")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(_DTYPES), help="weights and latents (default: bfloat16)")
    p.add_argument("--keep-models", action="store_true",
                   help="keep every model loaded (default: release each one as soon as it is done)")
    for stream, modality_flag in (("video", "a2v"), ("audio", "v2a")):
        for suffix, _, typ in _GUIDER_FLAGS:
            p.add_argument(f"--{stream}-{suffix}", type=typ, default=None, help=f"{stream} guidance (guided stages)")
        p.add_argument(f"--{stream}-stg-blocks", type=int, nargs="*", default=None,
                       help=f"{stream} STG blocks (guided stages)")
        p.add_argument(f"--{modality_flag}-guidance-scale", type=float, default=None,
                       help=f"{stream} modality-isolation scale (guided stages)")
    return p


def _guider_params(args, stream: str, modality_flag: str, defaults):
    changes = {field: getattr(args, f"{stream}_{suffix.replace('-', '_')}") for suffix, field, _ in _GUIDER_FLAGS}
    changes["stg_blocks"] = getattr(args, f"{stream}_stg_blocks")
    changes["modality_scale"] = getattr(args, f"{modality_flag}_guidance_scale")
    changes = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(defaults, **changes) if changes else None


class _Progress:
    """One tqdm bar per stage on stderr."""

    def __init__(self, stages: int):
        self.stages, self.bar, self.stage = stages, None, -1

    def __call__(self, stage: int, step: int, steps: int) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=steps, desc=f"stage {stage + 1}/{self.stages}", unit="step", file=sys.stderr)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main(argv: list[str] | None = None) -> int:
    parser = setup_arg_parser()
    args = parser.parse_args(argv)
    try:
        images = [_image_arg(v) for v in args.images]
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.image_crf_threads is not None and args.image_crf_threads < 1:
        parser.error(f"--image-crf-threads must be at least 1; got {args.image_crf_threads}")
    try:
        return _run(parser, args, images)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # bad input (CheckpointError included), missing or unwritable files
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # ffmpeg (media.FFmpegError, the images' H.264 round trip), MLX
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " | ".join(lines) if lines else type(e).__name__


def _run(parser: argparse.ArgumentParser, args, images: list[ImageConditioningInput]) -> int:
    from .pipelines import Pipeline
    from .validation import CLI_NAMES

    pipeline = Pipeline.from_pretrained(args.model, args.pipeline, gemma=args.gemma, upsampler=args.upsampler,
                                        distilled_lora=args.distilled_lora, dtype=_DTYPES[args.dtype],
                                        low_memory=not args.keep_models)
    pipeline.arg_names = CLI_NAMES
    video_params = _guider_params(args, "video", "a2v", pipeline.params.video_guider_params)
    audio_params = _guider_params(args, "audio", "v2a", pipeline.params.audio_guider_params)
    if not pipeline.spec.guided and (video_params or audio_params or args.negative_prompt is not None):
        parser.error(f"the {args.pipeline} pipeline has no guidance: drop --negative-prompt and the guidance flags")
    progress = _Progress(len(pipeline.spec.stages))
    try:
        result = pipeline.generate(
            args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
            num_frames=args.num_frames, fps=args.frame_rate, seed=args.seed,
            num_inference_steps=args.num_inference_steps, images=images, output_path=args.output_path,
            audio=not args.no_audio, wav_path=args.wav, enhance_prompt=args.enhance_prompt,
            video_guider_params=video_params, audio_guider_params=audio_params,
            crf_threads=args.image_crf_threads, overwrite=args.overwrite, progress=progress)
    finally:
        progress.close()
    print(f"wrote {result.path} ({result.frames.shape[0]} frames {result.frames.shape[2]}x{result.frames.shape[1]}"
          f" at {result.fps:g} fps{', with audio' if result.audio is not None else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
