"""Every argument of a generation checked before anything loads, with errors that name what to
change: the CLI flag in ``python -m mlx_ltx.generate`` (``CLI_NAMES``), the argument in the API.

:class:`RequestValidation` is mixed into :class:`mlx_ltx.pipelines.Pipeline`; it reads only the
pipeline's description, its checkpoint's config and metadata, and file headers."""

from __future__ import annotations

import math
import numbers
import os

import mlx.core as mx

from .conditioning import ImageConditioningInput, decode_image
from .guidance import MultiModalGuiderParams
from .loading import Checkpoint, CheckpointError
from .media import check_output_path

SEED_MODULUS = 2**64  # any integer seed is used modulo 2**64 (MLX keys take an unsigned 64-bit seed)
# A request is refused up front when it cannot fit the device's memory (a conservative bound,
# far above what a clip of a few hundred frames needs): the decoded video (F x H x W x 3 bytes)
# is held twice while joined and written, and the transformer's activations are counted as
# ACTIVATION_COPIES tensors [latent tokens, transformer width] in the pipeline's dtype.
ACTIVATION_COPIES = 8
FRAME_COPIES = 2
MAX_IMAGE_CRF = 51  # libx264, 8-bit


def device_memory_bytes() -> int:
    """The device's memory (MLX's ``device_info``; the machine's RAM on the CPU backend)."""
    info = getattr(mx, "device_info", None) or getattr(getattr(mx, "metal", None), "device_info", None)
    try:
        size = int(info().get("memory_size", 0)) if info is not None else 0
    except Exception:  # no GPU backend, or an MLX without the call
        size = 0
    if size > 0:
        return size
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _guider_labels(stream: str, modality: str) -> dict[str, str]:
    fields = {"cfg_scale": "cfg-guidance-scale", "stg_scale": "stg-guidance-scale", "stg_blocks": "stg-blocks",
              "rescale_scale": "rescale-scale", "skip_step": "skip-step"}
    out = {f"{stream}_guider_params.{f}": f"--{stream}-{flag}" for f, flag in fields.items()}
    out[f"{stream}_guider_params.modality_scale"] = f"--{modality}-guidance-scale"
    return out


# generate()'s arguments as python -m mlx_ltx.generate names them (see Pipeline.arg_names)
CLI_NAMES: dict[str, str] = {
    "prompt": "--prompt", "height": "--height", "width": "--width", "num_frames": "--num-frames",
    "auto_duration": "--auto-duration",
    "fps": "--frame-rate/--fps", "seed": "--seed", "num_inference_steps": "--num-inference-steps", "images": "--image",
    "output_path": "--output", "wav_path": "--wav", "overwrite": "--overwrite", "crf_threads": "--image-crf-threads",
    "audio_path": "--audio-path", "audio_start_time": "--audio-start-time",
    "audio_max_duration": "--audio-max-duration", "audio_guider_params": "the --audio-* guidance flags",
    "video_conditioning": "--video-conditioning",
    "conditioning_attention_strength": "--conditioning-attention-strength",
    "conditioning_attention_mask": "--conditioning-attention-mask",
    "video_path": "--video-path", "start_time": "--start-time", "end_time": "--end-time",
    "regenerate_video": "--regenerate-video", "regenerate_audio": "--regenerate-audio",
    **_guider_labels("video", "a2v"), **_guider_labels("audio", "v2a"),
}


class RequestValidation:
    """Argument checks of :class:`~mlx_ltx.pipelines.Pipeline` (``spec``, ``config``, ``params``,
    ``dtype``, ``checkpoint`` and ``arg_names`` are the pipeline's)."""

    def check_request(self, num_frames: int, height: int, width: int, fps: float,
                      images: list[ImageConditioningInput], steps: int | None) -> None:
        """Errors that say what to change, before anything is loaded (arguments named as
        :attr:`arg_names` says)."""
        n = self._name
        t, sh, sw = self.config.vae.scale_factors
        div = 2 if self.spec.two_stage else 1
        for name, value in (("height", height), ("width", width), ("num_frames", num_frames)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{n(name)} must be a positive integer; got {value!r}")
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"{n('fps')} must be a positive number; got {fps!r}")
        for name, size, f in (("height", height, sh * div), ("width", width, sw * div)):
            if size < f or size % f:
                lo = size // f * f
                ok = " or ".join(str(n) for n in (lo, lo + f) if n >= f)
                why = (" (two-stage pipelines run stage 1 at half size, which must be a multiple of "
                       f"{f // div})" if div == 2 else "")
                raise ValueError(f"{n(name)} must be a multiple of {f} for the {self.spec.name} pipeline{why}; "
                                 f"got {size}, {ok} would work")
        if num_frames < 1 or (num_frames - 1) % t:
            lo = (num_frames - 1) // t * t + 1
            ok = " or ".join(str(n) for n in (lo, lo + t) if n >= 1)
            raise ValueError(f"{n('num_frames')} must be {t}k+1; got {num_frames}, {ok} would work")
        self._check_fits_memory(num_frames, height, width)
        if steps is not None:
            if not self.spec.uses_steps:
                raise ValueError(f"the {self.spec.name} pipeline has fixed sigma schedules; do not pass "
                                 f"{n('num_inference_steps')}")
            if not _is_int(steps) or steps < 2:
                raise ValueError(f"{n('num_inference_steps')} must be at least 2 (the schedule is stretched to its "
                                 f"terminal sigma over the steps); got {steps!r}")
        for i, img in enumerate(images):
            label = self._image_label(i, img)
            if not os.path.isfile(img.path):
                raise FileNotFoundError(f"{self._image_arg(i)}: conditioning image not found: {img.path}")
            if not 0 <= img.frame_idx < num_frames:
                raise ValueError(f"image {img.path}: frame index {img.frame_idx} is outside the video's frames "
                                 f"0..{num_frames - 1}")
            if not (isinstance(img.strength, numbers.Real) and 0.0 <= img.strength <= 1.0):
                raise ValueError(f"image {img.path}: strength {img.strength} must be in [0, 1]")
            if img.crf is not None and not (_is_int(img.crf) and 0 <= img.crf <= MAX_IMAGE_CRF):
                raise ValueError(f"{label}: CRF {img.crf!r} must be an integer in 0..{MAX_IMAGE_CRF} (libx264; "
                                 f"0 skips the re-compression)")

    def _name(self, arg: str) -> str:
        return self.arg_names.get(arg, arg)

    def _image_arg(self, i: int) -> str:
        return self.arg_names.get("images") or f"images[{i}]"

    def _image_label(self, i: int, img: ImageConditioningInput) -> str:
        flag = self.arg_names.get("images")
        return f"{flag} {img.path}" if flag else f"images[{i}] ({img.path})"

    def check_model_pairing(self) -> None:
        """The version checks, before anything loads: the text encoder must be the one the
        transformer names (``_check_gemma_version``: LTX-2.5 needs its Gemma-4 bundle, 2.3 Gemma 3),
        read from headers and config files only. A Gemma repo id not downloaded yet is checked when
        the text encoder is built."""
        gemma = self.gemma
        if gemma is None or not os.path.exists(os.fspath(gemma)):
            return
        from .models.gemma4 import check_gemma_version
        from .models.text_encoder import GEMMA_FAMILIES, resolve_text_encoder

        path, model_type = resolve_text_encoder(gemma)
        ckpt = self.checkpoint
        check_gemma_version(ckpt.role_metadata("transformer"), GEMMA_FAMILIES[model_type].read_config(path),
                            ckpt.role_path("transformer") or ckpt.path, path)

    def _check_fits_memory(self, num_frames: int, height: int, width: int) -> None:
        """Refuse a request the device's memory cannot hold (see ``ACTIVATION_COPIES``), saying
        how many frames would fit at that size."""
        t, sh, sw = self.config.vae.scale_factors
        tc = self.config.transformer
        width_bytes = tc.num_attention_heads * tc.attention_head_dim * self.dtype.size * ACTIVATION_COPIES
        per_latent_frame = (height // sh) * (width // sw) * width_bytes
        per_frame = height * width * 3 * FRAME_COPIES
        latent_frames = (num_frames - 1) // t + 1
        memory = device_memory_bytes()
        need = max(latent_frames * per_latent_frame, num_frames * per_frame)
        if need <= memory:
            return
        fit_latent = min(memory // per_latent_frame, (memory // per_frame - 1) // t + 1)
        gb = f"about {need / 1e9:,.0f} GB; the device has {memory / 1e9:,.0f} GB"
        if fit_latent < 1:
            raise ValueError(f"{self._name('height')} x {self._name('width')} = {height} x {width} is beyond this "
                             f"device's memory even for one frame ({gb}); choose a smaller size")
        raise ValueError(f"{self._name('num_frames')}={num_frames} at {width}x{height} is beyond this device's "
                         f"memory ({gb}); at most {(fit_latent - 1) * t + 1} frames fit at this size")

    def validate(self, prompt: str, *, images: list[ImageConditioningInput] = (), output_path=None,
                 wav_path=None, overwrite: bool = False, video_guider_params: MultiModalGuiderParams | None = None,
                 audio_guider_params: MultiModalGuiderParams | None = None, crf_threads: int | None = None,
                 output_suffix: str | tuple[str, ...] = ".mp4") -> None:
        """What :meth:`generate` checks besides :meth:`check_request`, before anything is loaded:
        the prompt, the guidance values and STG blocks (against the checkpoint's depth), the
        images (opened and decoded), the output paths (see ``media.check_output_path``;
        ``output_suffix``: .mp4, or an audio-only pipeline's suffixes)."""
        n = self._name
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{n('prompt')} is empty; describe the video to generate")
        if crf_threads is not None and (not _is_int(crf_threads) or crf_threads < 1):
            raise ValueError(f"{n('crf_threads')} must be at least 1; got {crf_threads!r}")
        if self.spec.guided:
            depth = self.config.transformer.num_layers
            for stream, given in (("video", video_guider_params), ("audio", audio_guider_params)):
                if stream == "video" and not self.spec.video:  # an audio-only pipeline has no video guidance
                    if given is not None:
                        raise ValueError(f"the {self.spec.name} pipeline has no video: drop "
                                         f"{n('video_guider_params')}")
                    continue
                if stream == "audio" and self.spec.audio_guidance is not None and given is not None:
                    raise ValueError(f"the {self.spec.name} pipeline guides its audio as the reference does (the "
                                     f"default guider, no negative audio prompt): drop {n('audio_guider_params')}")
                params = given or getattr(self.params, f"{stream}_guider_params")
                for field in ("cfg_scale", "stg_scale", "rescale_scale", "modality_scale"):
                    value = getattr(params, field)
                    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                        raise ValueError(f"{n(f'{stream}_guider_params.{field}')} must be a finite number; "
                                         f"got {value!r}")
                if not _is_int(params.skip_step) or params.skip_step < 0:
                    raise ValueError(f"{n(f'{stream}_guider_params.skip_step')} must be a non-negative integer; "
                                     f"got {params.skip_step!r}")
                bad = [b for b in params.stg_blocks if not 0 <= b < depth]
                if bad and params.stg_scale != 0:
                    default = (" (the default)" if params.stg_blocks ==
                               getattr(self.params, f"{stream}_guider_params").stg_blocks else "")
                    raise ValueError(f"{n(f'{stream}_guider_params.stg_blocks')}: STG block(s) {bad}{default} do "
                                     f"not exist: the transformer of {self.checkpoint.path} has {depth} blocks "
                                     f"(0..{depth - 1})")
        for i, img in enumerate(images):
            try:  # a missing or undecodable file fails here, not after Gemma ran
                decode_image(img.path)
            except ValueError as e:
                raise ValueError(f"{self._image_arg(i)}: {e}") from None
        if output_path is not None:
            check_output_path(output_path, output_suffix, overwrite=overwrite, what=n("output_path"))
        if wav_path is not None:
            check_output_path(wav_path, ".wav", overwrite=overwrite, what=n("wav_path"))


def _check_x2_upsampler(path: str) -> None:
    """The two-stage pipelines upsample by exactly 2 in space: refuse any other upsampler file
    from its header, before anything loads."""
    what = f"upsampler {path} (upsampler= / --upsampler)"
    try:
        ckpt = Checkpoint(path)
        if "initial_conv.weight" not in ckpt.shapes:  # upsampler files hold their keys unprefixed
            raise CheckpointError("it has no initial_conv.weight tensor")
        cfg = ckpt.upsampler_config
    except CheckpointError as e:
        raise ValueError(f"{what} is not a latent upsampler file: {e}") from None
    scale = cfg.spatial_scale if cfg.rational_resampler else 2.0
    if cfg.temporal_upsample or not cfg.spatial_upsample or scale != 2.0:
        kind = "temporal" if cfg.temporal_upsample else f"spatial x{scale:g}"
        raise ValueError(f"{what} is a {kind} upsampler; the two-stage pipelines need the spatial x2 one "
                         f"(ltx-2.3-spatial-upscaler-x2-*.safetensors)")


def check_user_loras(loras, kind, checkpoint: Checkpoint, name: str = "loras") -> tuple[tuple[str, float], ...]:
    """``[(path, strength), ...]`` (``loras=`` / ``--lora PATH STRENGTH``) checked from the files'
    headers before anything loads: a file that exists, a finite strength, a key layout
    ``models.lora.load_lora`` reads, a LoRA for this model's generation (``check_lora_generation``)
    and layers the checkpoint's transformer has. Returns ``((path, strength), ...)``."""
    from .generations import check_lora_generation
    from .models.lora import load_lora, unmatched_targets_error

    if loras is None:
        return ()
    if isinstance(loras, (str, os.PathLike)) or not hasattr(loras, "__iter__"):
        raise ValueError(f"{name} must be a list of (path, strength) pairs; got {loras!r}")
    out = []
    keys = None
    for i, item in enumerate(loras):
        try:
            path, strength = item
        except (TypeError, ValueError):
            raise ValueError(f"{name}[{i}] must be a (path, strength) pair; got {item!r}") from None
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"{name}[{i}]: the path must be a file name; got {path!r}")
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"LoRA file not found: {path} ({name})")
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(strength):
            raise ValueError(f"the strength of LoRA {path} ({name}) must be a finite number; got {strength!r}")
        lora = load_lora(path)  # the layout and its keys, strictly (headers; ComfyUI alphas are scalars)
        check_lora_generation(kind, path, lora.metadata)
        if keys is None:
            keys = checkpoint.component_keys("transformer")
        missing = [pair.key_a for target, pair in lora.pairs.items() if f"{target}.weight" not in keys]
        if missing:
            raise unmatched_targets_error(lora, missing)
        out.append((path, float(strength)))
    return tuple(out)
