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
import json
import os
import sys
import textwrap

import mlx.core as mx

from .conditioning import ImageConditioningInput
from .pipeline_stages import PIPELINES

_DTYPES = {"bfloat16": mx.bfloat16, "float32": mx.float32}
# --flag suffix -> MultiModalGuiderParams field
_GUIDER_FLAGS = (("cfg-guidance-scale", "cfg_scale", float), ("stg-guidance-scale", "stg_scale", float),
                 ("rescale-scale", "rescale_scale", float), ("skip-step", "skip_step", int))
_GUIDER_HELP = {"cfg_scale": "text CFG scale, 1 = off", "stg_scale": "STG scale, 0 = off",
                "rescale_scale": "0-1: pull the guided std back towards the conditioned one's",
                "skip_step": "k: guidance passes only every (k+1)-th step"}


def _image_arg(values: list[str]) -> ImageConditioningInput:
    if len(values) not in (3, 4):
        raise argparse.ArgumentTypeError(f"--image takes PATH FRAME_IDX STRENGTH [CRF]; got {values}")
    try:
        crf = int(values[3]) if len(values) == 4 else None
        return ImageConditioningInput(values[0], int(values[1]), float(values[2]), crf)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image {' '.join(values)}: FRAME_IDX and CRF are integers, "
                                         f"STRENGTH a number") from None


_DESCRIPTION = textwrap.fill("Text/image-to-video with audio: one of the four LTX pipelines over an MLX checkpoint. "
                "Argument names follow the reference's ltx_pipelines/utils/args.py where it has them; --model "
                "replaces its per-component checkpoint paths. Defaults shown as 'None' or 'the checkpoint's' come "
                "from the checkpoint's model version (or the HQ preset) at run time; the run prints the resolved "
                "values first.", 79)
_EPILOG = """examples:
  python -m mlx_ltx.generate --model ltx-2.3-distilled-mlx --prompt "A red fox runs through snow" \\
      --output fox.mp4
  python -m mlx_ltx.generate --model ltx-2.3-dev-mlx --pipeline dev-two-stage \\
      --prompt "A red fox runs through snow" --height 1024 --width 1536 --num-frames 121 \\
      --image first.png 0 1.0 --image last.png 120 1.0 --output fox.mp4
  python -m mlx_ltx.generate --model ltx-2.3-dev-mlx --pipeline dev --prompt "..." \\
      --video-cfg-guidance-scale 4 --progress json --output clip.mp4 2> events.jsonl
  python -m mlx_ltx.generate --model ltx-2.5-distilled-mlx --prompt "A red fox runs through snow" \\
      --auto-duration 4 10 --output fox.mp4     # LTX-2.5: the length predicted from the prompt
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; appends "(default: ...)" to every optional flag's help that does
    not state its default itself."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.required or "default" in text or action.default is argparse.SUPPRESS:
            return text
        d = action.default
        shown = "off" if d is False else "none" if d in (None, []) else "%(default)s"
        return f"{text} (default: {shown})"


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_ltx.generate", description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=_HelpFormatter)
    model = p.add_argument_group("model")
    model.add_argument("--model", required=True,
                       help="official .safetensors checkpoint (LTX-2.3), a folder of the split LTX-2.5 release "
                            "as Hugging Face lays it out, a convert.py folder, or the HF repo id of one (required)")
    model.add_argument("--pipeline", default="distilled", choices=sorted(PIPELINES, key=list(PIPELINES).index),
                       help="distilled: distilled checkpoint, 8+3 steps; dev: one guided stage at full size; "
                            "dev-two-stage: guided half-size stage + distilled-LoRA refinement; "
                            "dev-two-stage-hq: the same with res_2s and LoRA 0.25/0.5; keyframe-interpolation: "
                            "dev-two-stage with every --image a guiding keyframe; t2a: text to audio, one guided "
                            "stage, no video (--output .wav or .m4a); ic-lora: distilled, a control video "
                            "(--video-conditioning) read by an IC-LoRA (--lora) in stage 1; retake: distilled, "
                            "regenerate [--start-time, --end-time) of --video-path, keep the rest; a2vid: dev "
                            "two-stage video to the frozen --audio-path, which the output carries")
    model.add_argument("--gemma", "--gemma-root", dest="gemma", default=None,
                       help="Gemma-3 folder or HF repo id (LTX-2.3), or the Gemma-4 text-encoder file (LTX-2.5) "
                            "(default: the model folder's text encoder)")
    model.add_argument("--upsampler", "--spatial-upsampler-path", dest="upsampler", default=None,
                       help="spatial x2 upsampler file (default: the model folder's)")
    model.add_argument("--distilled-lora", default=None,
                       help="distilled LoRA file (default: the model folder's)")
    model.add_argument("--lora", dest="loras", action="append", nargs=2, metavar=("PATH", "STRENGTH"), default=[],
                       help="a LoRA fused in every stage (ic-lora: stage 1 only) at STRENGTH (e.g. 0.8); repeatable. "
                            "Key layouts: the "
                            "official trainer's, ComfyUI's (lora_down/lora_up, alpha) and diffusers'")
    model.add_argument("--video-decoder", choices=("diffusion", "conv"), default=None,
                       help="LTX-2.5: the video VAE file to decode with when the model folder holds both: the "
                            "diffusion decoder (the release's default; better quality, slower, more memory) or the "
                            "convolutional one (default: diffusion)")
    model.add_argument("--diffvae-border", choices=("chunked_eager", "full"), default="chunked_eager",
                       help="the diffusion decoder's stage-5 attention at the frame's left/right borders: "
                            "chunked_eager (edge-replicated, what the reference's pipelines run; default) or full "
                            "(full-volume neighborhood attention, natten's semantics)")
    prompt = p.add_argument_group("prompt")
    prompt.add_argument("--prompt", required=True, help="what the video shows and sounds like (required)")
    prompt.add_argument("--negative-prompt", default=None,
                        help="guided pipelines only (default: the reference's DEFAULT_NEGATIVE_PROMPT)")
    prompt.add_argument("--enhance-prompt", action="store_true",
                        help="let Gemma rewrite the prompt first (needs a Gemma with a chat template)")
    size = p.add_argument_group("size")
    size.add_argument("--height", type=int, default=None,
                      help="pixels (default: 512 for one stage, 1024 for two stages, 1088 for HQ)")
    size.add_argument("--width", type=int, default=None,
                      help="pixels (default: 768 for one stage, 1536 for two stages, 1920 for HQ)")
    size.add_argument("--num-frames", type=int, default=None,
                      help="8k+1 frames (default: predicted from the prompt by an LTX-2.5 model's duration head; "
                           "121 for LTX-2.3 and older)")
    size.add_argument("--auto-duration", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                      help="bounds in seconds of the predicted length when --num-frames is omitted (duration head "
                           "only; default: 1 20)")
    size.add_argument("--frame-rate", "--fps", dest="frame_rate", type=float, default=None, help="(default: 24)")
    cond = p.add_argument_group("conditioning")
    cond.add_argument("--image", dest="images", action="append", nargs="+", metavar="ARG", default=[],
                      help="PATH FRAME_IDX STRENGTH [CRF]: frame 0 replaces the first latent frame, any other "
                           "frame is a guiding keyframe (e.g. the last frame); repeatable (default: none)")
    cond.add_argument("--image-crf-threads", type=int, default=None, metavar="N",
                      help="libx264 threads of the images' CRF round trip; the pixels depend on it. Pass the "
                           "reference machine's count to match it (default: one per CPU, as the reference on "
                           "this machine)")
    ic = p.add_argument_group("IC-LoRA (--pipeline ic-lora; the IC-LoRA itself is a --lora)")
    ic.add_argument("--video-conditioning", action="append", nargs=2, metavar=("PATH", "STRENGTH"), default=[],
                    help="control video (depth, pose, edges or a reference clip) appended as guiding tokens in "
                         "stage 1, its first --num-frames frames at STRENGTH in [0, 1]; repeatable")
    ic.add_argument("--conditioning-attention-strength", type=float, default=None, metavar="S",
                    help="how strongly the control tokens and the generated ones attend to each other, in [0, 1] "
                         "(default: 1)")
    ic.add_argument("--conditioning-attention-mask", nargs=2, default=None, metavar=("MASK_PATH", "STRENGTH"),
                    help="per-region attention instead: a grey mask video (at least --num-frames frames; white = "
                         "full attention, black = none) weighing each control token, times STRENGTH in [0, 1]")
    rt = p.add_argument_group("retake (--pipeline retake: the output has the source clip's frames, size and fps)")
    rt.add_argument("--video-path", default=None,
                    help="source clip to regenerate a window of: 8k+1 frames, sides multiples of 32; its audio "
                         "stream (if any) is encoded too")
    rt.add_argument("--start-time", type=float, default=None, help="start of the window to regenerate, seconds")
    rt.add_argument("--end-time", type=float, default=None, help="end of the window (exclusive), seconds")
    rt.add_argument("--regenerate-video", action=argparse.BooleanOptionalAction, default=True,
                    help="regenerate the video inside the window (--no-regenerate-video: keep the clip's video)")
    rt.add_argument("--regenerate-audio", action=argparse.BooleanOptionalAction, default=True,
                    help="regenerate the audio inside the window (--no-regenerate-audio: keep the clip's audio)")
    a2v = p.add_argument_group("audio-to-video (--pipeline a2vid: the video follows an audio file, muxed as it is)")
    a2v.add_argument("--audio-path", default=None,
                     help="audio file (wav/mp3/m4a/flac, or a video's audio stream) the video is generated to; "
                          "encoded and held fixed, and written into the output unchanged")
    a2v.add_argument("--audio-start-time", type=float, default=0.0, metavar="SECONDS",
                     help="where in --audio-path to start reading")
    a2v.add_argument("--audio-max-duration", type=float, default=None, metavar="SECONDS",
                     help="seconds of audio read and encoded (default: the video's length, --num-frames / "
                          "--frame-rate); at least the video's length")
    guide = p.add_argument_group("guidance", textwrap.fill(
        "sampling, and the guided stages' guidance (dev pipelines); every guidance flag left at None keeps the "
        "checkpoint's default for it (see the resolved settings printed at the start)", 76))
    guide.add_argument("--seed", type=int, default=None, help="any integer, used modulo 2**64 (default: 10)")
    guide.add_argument("--num-inference-steps", "--steps", dest="num_inference_steps", type=int, default=None,
                       help="dev pipelines' stage-1 steps (default: 30 for 2.3, 40 for 19B, 15 for HQ)")
    checkpoint_default = "(default: None = the checkpoint's)"
    for stream, modality_flag in (("video", "a2v"), ("audio", "v2a")):
        for suffix, field, typ in _GUIDER_FLAGS:
            guide.add_argument(f"--{stream}-{suffix}", type=typ, default=None,
                               help=f"{stream} {_GUIDER_HELP[field]} {checkpoint_default}")
        guide.add_argument(f"--{stream}-stg-blocks", type=int, nargs="*", default=None,
                           help=f"{stream} STG blocks {checkpoint_default}")
        guide.add_argument(f"--{modality_flag}-guidance-scale", type=float, default=None,
                           help=f"{stream} modality-isolation scale {checkpoint_default}")
    out = p.add_argument_group("output")
    out.add_argument("--output-path", "--output", dest="output_path", required=True,
                     help="output .mp4, in an existing folder; an existing file is kept unless --overwrite (required)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing --output / --wav file")
    out.add_argument("--no-audio", action="store_true", help="write the video without an audio stream")
    out.add_argument("--wav", default=None, help="also write the audio to this .wav")
    shown = out.add_mutually_exclusive_group()
    shown.add_argument("--progress", choices=("bar", "json"), default="bar",
                       help="bar: the settings, a line or bar per phase and a summary table on stderr; json: one "
                            "JSON object per event on stderr, the last one the summary")
    shown.add_argument("--quiet", "-q", action="store_true",
                       help="print nothing but errors and the final 'wrote ...' line")
    par = p.add_argument_group("several Macs (launch with mlx.launch; README \"Several Macs\")")
    par.add_argument("--parallel", choices=("guidance", "sequence", "auto"), default=None,
                     help="how the ranks of an mlx.launch run share the work: guidance (each rank runs its share "
                          "of a guided step's transformer passes, one-pass steps split by tokens), sequence (every "
                          "pass split by video tokens: about 1/N of the activations per rank, for clips one Mac "
                          "cannot hold), auto (guidance unless only sequence fits the memory; the default under "
                          "mlx.launch). The tiles of the video decode are divided among the ranks either way")
    mem = p.add_argument_group("memory")
    mem.add_argument("--dtype", default="bfloat16", choices=sorted(_DTYPES), help="weights and latents")
    mem.add_argument("--keep-models", action="store_true",
                     help="keep every model loaded (default: off, each one is released as soon as it is done)")
    mem.add_argument("--memory", choices=("auto", "eager", "stream"), default="auto",
                     help="transformer weights: eager (all resident), stream (each block read from the file as it "
                          "runs: a fraction of the memory, a little slower), auto (eager when the predicted peak "
                          "fits the device's memory)")
    mem.add_argument("--no-preflight", action="store_true",
                     help="run even when the predicted peak memory exceeds the device's memory (default: refuse, "
                          "with advice)")
    return p


def _guider_params(args, stream: str, modality_flag: str, defaults):
    changes = {field: getattr(args, f"{stream}_{suffix.replace('-', '_')}") for suffix, field, _ in _GUIDER_FLAGS}
    changes["stg_blocks"] = getattr(args, f"{stream}_stg_blocks")
    changes["modality_scale"] = getattr(args, f"{modality_flag}_guidance_scale")
    changes = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(defaults, **changes) if changes else None


class _Reporter:
    """The CLI's view of :class:`~mlx_ltx.progress.ProgressEvent`: ``bar`` prints the resolved
    settings, a status line per phase (a tqdm bar with ETA for the stages and the video decode)
    and a summary table on stderr; ``json`` one JSON object per event on stderr; ``quiet`` nothing."""

    _BARRED = ("stage1", "stage2", "video_decode")

    def __init__(self, mode: str, output: str | None = None, model: str | None = None):
        self.mode, self.output, self.model, self.bar, self.pending = mode, output, model, None, False

    def __call__(self, event) -> None:
        if self.mode == "json":
            print(json.dumps(event.to_dict()), file=sys.stderr, flush=True)
        elif self.mode == "bar":
            getattr(self, f"_{event.kind}")(event)

    def _err(self, text: str = "", end: str = "\n") -> None:
        print(text, file=sys.stderr, end=end, flush=True)

    def _settings(self, e) -> None:
        from .progress import format_bytes

        st = e.settings
        self._err(f"pipeline  {st.pipeline}" + (f"  ({self.model})" if self.model else ""))
        if st.pipeline in PIPELINES and not PIPELINES[st.pipeline].video:
            self._err(f"audio     {st.num_frames} frames at {st.fps:g} fps ({st.num_frames / st.fps:.2f} s), no video")
        else:
            self._err(f"video     {st.width}x{st.height}, {st.num_frames} frames at {st.fps:g} fps "
                      f"({st.num_frames / st.fps:.2f} s){', with audio' if st.audio else ', no audio'}")
        if st.predicted_seconds is not None:
            self._err(f"duration  predicted {st.predicted_seconds:.2f} s by the duration head, snapped to "
                      f"{st.num_frames} frames")
        self._err(f"steps     {' + '.join(map(str, st.steps))}    seed {st.seed}")
        for name, g in (("video", st.video_guidance), ("audio", st.audio_guidance)):
            if g is not None:
                self._err(f"guidance  {name}: cfg {g.cfg_scale:g}, stg {g.stg_scale:g} on blocks "
                          f"{list(g.stg_blocks)}, rescale {g.rescale_scale:g}, modality {g.modality_scale:g}, "
                          f"skip step {g.skip_step}")
        if st.video_guidance is None and st.audio_guidance is None:
            self._err("guidance  none (distilled)")
        for path, strength in st.loras:
            self._err(f"lora      {path} at {strength:g}")
        if st.memory is not None:
            predicted = ("" if st.predicted_peak is None else
                         f", predicted peak {format_bytes(st.predicted_peak)} ({st.predicted_peak_phase})")
            passes = "" if st.video_guidance is None else f", guidance passes {st.passes_per_call} per call"
            self._err(f"memory    transformer {st.memory}{passes}{predicted}")
        if st.parallel is not None:
            self._err(f"parallel  {st.parallel[0]} on {st.parallel[1]} ranks (tiles of the video decode divided)")
        if self.output:
            self._err(f"output    {self.output}")

    def _label(self, e) -> str:
        from .progress import PHASE_LABELS

        return PHASE_LABELS.get(e.phase, e.phase) + (f" (stage {e.stage + 1})" if e.phase == "lora" else "")

    def _start(self, e) -> None:
        if e.phase in self._BARRED:
            from tqdm import tqdm

            unit = "frame" if e.phase == "video_decode" else "step"
            self.bar = tqdm(total=e.total, desc=self._label(e), unit=unit, file=sys.stderr, leave=False)
        else:
            self._err(f"{self._label(e):<20} ...", end="")
            self.pending = True

    def _step(self, e) -> None:
        if self.bar is not None:
            self.bar.update(e.step - self.bar.n)

    def _end(self, e) -> None:
        from .progress import format_bytes

        if self.bar is not None:
            self.close()
            self._err(f"{self._label(e):<20} {e.elapsed:8.2f} s   peak {format_bytes(e.peak_memory)}")
        else:
            self.pending = False
            self._err(f" {e.elapsed:.2f} s   peak {format_bytes(e.peak_memory)}")

    def _summary(self, e) -> None:
        from .progress import PHASE_LABELS, format_bytes

        self._err(f"{'phase':<20} {'wall time':>10} {'peak memory':>12}")
        for phase, t in e.phase_times.items():
            peak = (e.phase_peaks or {}).get(phase)
            self._err(f"{PHASE_LABELS.get(phase, phase):<20} {t:8.2f} s "
                      f"{format_bytes(peak) if peak is not None else '':>12}")
        self._err(f"{'total':<20} {e.elapsed:8.2f} s")
        self._err(f"{'peak memory':<20} {format_bytes(e.peak_memory):>10}")

    def close(self) -> None:
        """Closes a running bar, ends an open status line (an error follows on its own line)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.pending:
            self._err()
            self.pending = False


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
        print(f"error: {_rank_prefix()}{_one_line(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # ffmpeg (media.FFmpegError, the images' H.264 round trip), MLX
        from .distributed import peer_lost

        if peer_lost(e):  # mlx.launch ranks: another rank died or became unreachable
            print(f"error: {_rank_prefix()}another rank of this run stopped or became unreachable ({_one_line(e)}); "
                  f"the run is abandoned on every rank and no output was written", file=sys.stderr)
            return 1
        print(f"error: {_rank_prefix()}{_one_line(e)}", file=sys.stderr)
        return 1


def _rank_prefix() -> str:
    """"rank N: " inside an mlx.launch run (the launcher interleaves the ranks' output), else ""."""
    rank = os.environ.get("MLX_RANK")
    return f"rank {rank}: " if rank is not None else ""


def _path_strengths(parser: argparse.ArgumentParser, pairs, flag: str) -> list[tuple[str, float]]:
    """``flag PATH STRENGTH`` values as (path, float), a non-number STRENGTH a usage error."""
    out = []
    for path, strength in pairs:
        try:
            out.append((path, float(strength)))
        except ValueError:
            parser.error(f"{flag} {path} {strength}: STRENGTH must be a number")
    return out


def _ic_lora_args(parser: argparse.ArgumentParser, args) -> dict:
    """--video-conditioning / --conditioning-attention-strength / --conditioning-attention-mask as generate()'s
    arguments (only those given: the other pipelines refuse them)."""
    out = {}
    if args.video_conditioning:
        out["video_conditioning"] = _path_strengths(parser, args.video_conditioning, "--video-conditioning")
    if args.conditioning_attention_strength is not None:
        out["conditioning_attention_strength"] = args.conditioning_attention_strength
    if args.conditioning_attention_mask is not None:
        path, strength = args.conditioning_attention_mask
        try:
            out["conditioning_attention_mask"] = (path, float(strength))
        except ValueError:
            parser.error(f"--conditioning-attention-mask {path} {strength}: STRENGTH must be a number")
    return out


def _retake_args(args) -> dict:
    """--video-path / --start-time / --end-time / --[no-]regenerate-{video,audio} as generate()'s
    arguments (only those set away from their defaults: the other pipelines refuse them)."""
    out = {k: getattr(args, k) for k in ("video_path", "start_time", "end_time") if getattr(args, k) is not None}
    out.update({k: False for k in ("regenerate_video", "regenerate_audio") if not getattr(args, k)})
    return out


def _a2vid_args(args) -> dict:
    """--audio-path / --audio-start-time / --audio-max-duration as generate()'s arguments (only those set
    away from their defaults: the other pipelines refuse them)."""
    out = {"audio_path": args.audio_path} if args.audio_path is not None else {}
    if args.audio_start_time != 0.0:
        out["audio_start_time"] = args.audio_start_time
    if args.audio_max_duration is not None:
        out["audio_max_duration"] = args.audio_max_duration
    return out


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " | ".join(lines) if lines else type(e).__name__


def _run(parser: argparse.ArgumentParser, args, images: list[ImageConditioningInput]) -> int:
    from .pipelines import Pipeline
    from .validation import CLI_NAMES

    loras = _path_strengths(parser, args.loras, "--lora")
    pipeline = Pipeline.from_pretrained(args.model, args.pipeline, gemma=args.gemma, upsampler=args.upsampler,
                                        distilled_lora=args.distilled_lora, dtype=_DTYPES[args.dtype],
                                        low_memory=not args.keep_models, memory=args.memory,
                                        preflight=not args.no_preflight, loras=loras,
                                        video_decoder=args.video_decoder, diffvae_border=args.diffvae_border)
    pipeline.arg_names = CLI_NAMES
    from .distributed import check_same_model, init_parallel, stop_on_sigterm

    parallel = init_parallel(args.parallel)
    if parallel is not None:  # every rank checks before any work that all opened the same model
        stop_on_sigterm()
        check_same_model(parallel, pipeline.checkpoint)
        pipeline.parallel = parallel
    lead = parallel is None or parallel.rank == 0  # only rank 0 reports and writes
    video_params = _guider_params(args, "video", "a2v", pipeline.params.video_guider_params)
    audio_params = _guider_params(args, "audio", "v2a", pipeline.params.audio_guider_params)
    if not pipeline.spec.guided and (video_params or audio_params or args.negative_prompt is not None):
        parser.error(f"the {args.pipeline} pipeline has no guidance: drop --negative-prompt and the guidance flags")
    reporter = _Reporter("quiet" if args.quiet or not lead else args.progress, args.output_path, args.model)
    try:
        result = pipeline.generate(
            args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
            num_frames=args.num_frames, fps=args.frame_rate, seed=args.seed,
            num_inference_steps=args.num_inference_steps, images=images,
            output_path=args.output_path if lead else None,
            audio=not args.no_audio, wav_path=args.wav if lead else None, enhance_prompt=args.enhance_prompt,
            video_guider_params=video_params, audio_guider_params=audio_params,
            crf_threads=args.image_crf_threads, overwrite=args.overwrite, events=reporter,
            auto_duration=None if args.auto_duration is None else tuple(args.auto_duration),
            **_ic_lora_args(parser, args), **_retake_args(args), **_a2vid_args(args))
    finally:
        reporter.close()
    if not lead:
        return 0
    if result.frames is None:  # audio only (t2a)
        print(f"wrote {result.path} ({result.audio.shape[1] / result.sample_rate:.2f} s of audio at "
              f"{result.sample_rate} Hz)")
    else:
        print(f"wrote {result.path} ({result.frames.shape[0]} frames {result.frames.shape[2]}x{result.frames.shape[1]}"
              f" at {result.fps:g} fps{', with audio' if result.audio is not None else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
