"""Text/image-to-video generation: a :class:`Pipeline` loads what a :class:`PipelineSpec`
(``pipeline_stages.py``) needs, lazily and once, and runs prompt encoding, the stages, the
video and audio decoders and the mp4 writer.

Memory (``low_memory=True``, or ``None`` when the models do not fit together): Gemma and the
connectors are dropped as soon as the prompts are encoded, before the transformer is loaded;
the images are encoded for every stage before the transformer is loaded and the video encoder
is dropped; the upsampler is dropped after use; the transformer is dropped before the VAE
decodes, and each decoder after its stream; a LoRA fused for one stage is undone by re-reading
the touched tensors from the checkpoint rather than by keeping their originals. With
``low_memory=False`` the text encoder, transformer, video encoder and upsampler stay loaded for
the next ``generate`` call (the decoders are built per call).

``low_memory=None`` (the default) keeps them only if they fit (``memory_policy.py``;
``Pipeline.keeps_models``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from .conditioning import ImageConditioningInput
from .distributed import ParallelPipeline, share_from_rank0
from .generations import check_buildable, check_lora_generation, describe
from .guidance import DEFAULT_NEGATIVE_PROMPT, MultiModalGuiderParams
from .loading import Checkpoint
from .model_files import RELEASE_NAMES
from .models.duration_head import resolve_num_frames
from .media import AUDIO_OUTPUT_SUFFIXES, fit_audio_to_video, write_audio, write_video
from .pipeline_stages import (
    PIPELINES,
    Contexts,
    Geometry,
    NoiseProvider,
    PipelineSpec,
    SeededNoise,
    SigmaSource,
    StageInputs,
    StageSpec,
    StageTrace,
    run_stages,
)
from .pipeline_decode import DIFFVAE_BORDERS, PipelineDecoding, release_memory as _release
from .pipeline_models import PipelineModels
from .stage_inputs import StageRequest, input_geometry, stage_inputs_builder
from .progress import GenerationSettings, ProgressEvent, Tracker
from .sampling import distilled_sigmas, stage2_distilled_sigmas
from .memory_policy import MEMORY_CHOICES, MemoryPlan, estimate_model_bytes, plan_memory, unplanned
from .validation import (
    SEED_MODULUS,
    RequestValidation,
    _check_x2_upsampler,
    _is_int,
    check_user_loras,
    device_memory_bytes,
)

@dataclass(frozen=True)
class GenerationResult:
    frames: np.ndarray | None     # uint8 [F, H, W, 3]; None without video (t2a) and on ranks other than 0
    audio: np.ndarray | None      # float32 [2, S], exactly F / fps seconds
    sample_rate: int | None
    fps: float
    path: Path | None
    video_latent: mx.array
    audio_latent: mx.array
    # the resolved settings, wall seconds and peak bytes per phase (progress.PHASE_LABELS order,
    # repeats summed / maxed), the whole call's seconds and its peak memory (bytes, as mx.get_peak_memory())
    settings: GenerationSettings | None = None
    phase_times: dict[str, float] = field(default_factory=dict)
    phase_peaks: dict[str, int] = field(default_factory=dict)
    total_time: float = 0.0
    peak_memory: int = 0


def _side_file(checkpoint: Checkpoint, kind: str, name: str) -> str | None:
    """A file listed in a converted folder's config.json (``upsamplers`` / ``loras``)."""
    info = getattr(checkpoint, "info", None) or {}
    rel = (info.get(kind) or {}).get(name)
    return os.path.join(checkpoint.path, rel) if rel else None


class Pipeline(RequestValidation, PipelineModels, PipelineDecoding, ParallelPipeline):
    """One of the four pipelines over one checkpoint. Build with :meth:`from_pretrained`."""

    # how validation errors name generate()'s arguments: as themselves by default; the CLI sets
    # CLI_NAMES so they name its flags
    arg_names: dict[str, str] = {}

    def __init__(self, spec: PipelineSpec, checkpoint: Checkpoint, gemma: str | None, upsampler: str | None = None,
                 distilled_lora: str | None = None, dtype: mx.Dtype = mx.bfloat16, low_memory: bool | None = None,
                 memory_budget: int | None = None, memory: str = "auto", preflight: bool = True, loras=(),
                 diffvae_border: str = "chunked_eager"):
        """``loras``: user LoRAs ``[(path, strength), ...]`` in the trainer, ComfyUI or diffusers key layout
        (``models/lora.py``), fused in every stage before the stage's distilled LoRA, as the reference's
        pipelines pass ``loras`` to each stage; checked from their headers here, before anything loads.
        ``low_memory``: True releases every model after use, False keeps them for the next
        call, None (default) keeps them only if they fit (see :attr:`keeps_models`);
        ``memory_budget``: the bytes the memory decisions compare with (default: the device's memory);
        ``memory``: the transformer's weights, "eager" (resident), "stream" (each block read from
        the file as it runs) or "auto" (eager when the request's predicted peak fits, see
        ``memory_policy.plan_memory``); ``preflight``: refuse a request whose predicted peak does not
        fit before anything loads (False: run it anyway, eager for "auto", guidance passes one by one)."""
        if memory not in MEMORY_CHOICES:
            raise ValueError(f"memory must be one of {MEMORY_CHOICES}; got {memory!r}")
        if diffvae_border not in DIFFVAE_BORDERS:
            raise ValueError(f"diffvae_border must be one of {DIFFVAE_BORDERS}; got {diffvae_border!r}")
        #: the diffusion video decoder's stage-5 border mode (models/diffusion_video_decoder.py)
        self.diffvae_border = diffvae_border
        self.memory = memory
        self.preflight = bool(preflight)
        self._plan: MemoryPlan | None = None
        self.spec = spec
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.gemma = gemma
        self.upsampler_path = upsampler
        self.distilled_lora_path = distilled_lora
        self.dtype = dtype
        if memory_budget is not None and (not _is_int(memory_budget) or memory_budget <= 0):
            raise ValueError(f"memory_budget must be a positive number of bytes; got {memory_budget!r}")
        self.memory_budget = device_memory_bytes() if memory_budget is None else int(memory_budget)
        if low_memory is None:
            need = self.estimated_model_bytes()
            # unknown (Gemma not local yet): release, the safe side
            low_memory = need is None or need > self.memory_budget // 2
        #: the resolved policy: True = models are released after use (every call reloads them)
        self.low_memory = bool(low_memory)
        #: what the checkpoint is (generation, decoder kind, text encoder, duration head), from its files
        self.kind = describe(checkpoint)
        check_buildable(self.kind, checkpoint)
        self.check_model_pairing()
        #: the user LoRAs, ((path, strength), ...), checked (validation.check_user_loras)
        self.loras = check_user_loras(loras, self.kind, checkpoint)
        # a stage's sampler may depend on the generation (the distilled stage 1 is ancestral from 2.5)
        self.spec = spec.for_version(self.kind.version)
        self.params = self.spec.params(self.kind.params)
        self._text_encoder = None
        self._duration_head = None
        #: the last predicted length (``duration_head.FrameCount``: seconds, frames, bounds), or None
        self.last_duration = None
        self._transformer = None
        self._video_encoder = None
        self._upsampler = None
        self._statistics = None
        self._distilled_lora = None
        # the LoRAs fused now, ((path, strength), ...); None: a fresh transformer, nothing fused yet
        self._lora_strength: tuple | None = None
        self._tracker: Tracker | None = None  # set while generate() runs

    @property
    def keeps_models(self) -> bool:
        """Whether the text encoder, transformer, video encoder and upsampler stay loaded between
        ``generate`` calls (``low_memory=False``, or the automatic policy found they fit)."""
        return not self.low_memory

    def estimated_model_bytes(self) -> int | None:
        """The bytes of the models a pipeline that keeps them holds (``memory_policy.estimate_model_bytes``);
        None when Gemma's size is unknown without a download."""
        return estimate_model_bytes(self.checkpoint, self.gemma, self.dtype, self.upsampler_path,
                                    self.distilled_lora_path)

    def _phase(self, name: str, total: int | None = None, stage: int | None = None):
        tracker = getattr(self, "_tracker", None)
        return contextlib.nullcontext() if tracker is None else tracker.phase(name, total, stage)

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, pipeline: str = "distilled", *, gemma=None, upsampler=None,
                        distilled_lora=None, dtype: mx.Dtype = mx.bfloat16, low_memory: bool | None = None,
                        memory_budget: int | None = None, memory: str = "auto", preflight: bool = True,
                        loras=(), video_decoder: str | None = None, diffvae_border: str = "chunked_eager"
                        ) -> Pipeline:
        """``model``: an official .safetensors file, a convert.py folder or its HF repo id. A
        converted folder supplies the Gemma text encoder, the spatial ×2 upsampler and the
        distilled LoRA when it holds them; otherwise pass their paths (Gemma may be an HF repo id).
        ``low_memory`` / ``memory_budget`` / ``memory`` / ``preflight``: the memory policy (see ``__init__``);
        ``loras``: user LoRAs ``[(path, strength), ...]`` (``--lora PATH STRENGTH``; see ``__init__``);
        ``video_decoder``: "diffusion" or "conv", the video VAE file of a split folder holding both (default:
        the release's default, the diffusion VAE; ``--video-decoder``); ``diffvae_border``: the diffusion
        decoder's stage-5 border mode, "chunked_eager" (the reference pipelines' default) or "full"
        (full-volume neighborhood attention, natten's semantics)."""
        if pipeline not in PIPELINES:
            raise ValueError(f"unknown pipeline {pipeline!r}; choose from {sorted(PIPELINES)}")
        spec = PIPELINES[pipeline]
        wanted = spec.checkpoint_variant
        # a split folder may hold both transformers: the pipeline picks the one named for it
        ckpt = model if isinstance(model, Checkpoint) else Checkpoint(model, variant=wanted,
                                                                       video_decoder=video_decoder)
        info = getattr(ckpt, "info", None) or {}
        variant = info.get("variant")
        if variant is not None and variant != wanted:
            fits = "distilled" if variant == "distilled" else "dev, dev-two-stage or dev-two-stage-hq"
            raise ValueError(f"pipeline {pipeline!r} (--pipeline) needs a {wanted} checkpoint, but {ckpt.path} was "
                             f"converted with --variant {variant}: use pipeline {fits} with it, or a folder "
                             f"converted with --variant {wanted}")
        if gemma is None and info.get("text_encoder"):
            gemma = os.path.join(ckpt.path, info["text_encoder"])
        if gemma is None and ckpt.layout == "split":
            raise ValueError(f"{ckpt.path} holds no text encoder file: add the release's {RELEASE_NAMES['text_encoder']}"
                             f" to it, or pass gemma= (--gemma) with that file")
        if gemma is None:
            raise ValueError(f"{ckpt.path} holds no text encoder: pass gemma= (--gemma), a Gemma-3 folder or "
                             f"HF repo id such as google/gemma-3-12b-it-qat-q4_0-unquantized")
        upsampler = upsampler or _side_file(ckpt, "upsamplers", "x2")
        if spec.two_stage and upsampler is None:
            raise ValueError(f"the {pipeline} pipeline needs the spatial x2 upsampler: pass upsampler= (--upsampler) "
                             f"or convert the model with --upsamplers x2")
        distilled_lora = distilled_lora or _side_file(ckpt, "loras", "distilled")
        if spec.needs_distilled_lora and distilled_lora is None:
            raise ValueError(f"the {pipeline} pipeline needs the distilled LoRA: pass distilled_lora= "
                             f"(--distilled-lora) or convert the model with --loras distilled")
        for what, path in (("upsampler", upsampler), ("distilled LoRA", distilled_lora)):
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"{what} file not found: {path}")
        if distilled_lora is not None and spec.needs_distilled_lora:
            check_lora_generation(describe(ckpt), distilled_lora,
                                  Checkpoint(distilled_lora).metadata)
        if spec.two_stage:
            _check_x2_upsampler(upsampler)
        return cls(spec, ckpt, gemma, upsampler, distilled_lora if spec.needs_distilled_lora else None, dtype,
                   low_memory, memory_budget, memory, preflight, loras, diffvae_border)

    # ----------------------------------------------------------------- validation
    # (the checks live in validation.RequestValidation)

    # ----------------------------------------------------------------- text
    def text_encoder(self):
        if self._text_encoder is None:
            from .models.text_encoder import TextEncoder

            self._text_encoder = TextEncoder(self.gemma, self.checkpoint, dtype=self.dtype, low_memory=self.low_memory)
        return self._text_encoder

    def encode_prompts(self, prompt: str, negative_prompt: str | None = None, enhance_prompt: bool = False,
                       seed: int = 42) -> Contexts:
        """Positive (and, for guided pipelines, negative) contexts in one Gemma pass; in low-memory
        mode the whole text encoder is dropped afterwards. With several ranks only rank 0 encodes."""
        if not self.lead:
            return Contexts(*share_from_rank0(self.parallel, None))
        prompts = [prompt]
        if self.spec.guided:
            prompts.append(DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt)
        te = self._text_encoder
        if te is None or te.needs_gemma(prompts, enhance_prompt):
            with self._phase("text_encoder"):  # Gemma loads here rather than lazily in encode_prompts
                te = self.text_encoder()
                te.gemma  # noqa: B018
        with self._phase("prompt"):
            encoded = te.encode_prompts(prompts, enhance_first_prompt=enhance_prompt, enhance_seed=seed)
            if self.low_memory:
                self._text_encoder = None
                del te
                _release()
        contexts = Contexts(*(e.astype(self.dtype) for p in encoded for e in (p.video_encoding, p.audio_encoding)))
        if self.parallel is not None:
            share_from_rank0(self.parallel, list(contexts))
        return contexts

    # ----------------------------------------------------------------- diffusion
    def denoise(self, contexts: Contexts, num_frames: int, height: int, width: int, fps: float, *,
                images: list[ImageConditioningInput] = (), steps: int | None = None,
                video_guider_params: MultiModalGuiderParams | None = None,
                audio_guider_params: MultiModalGuiderParams | None = None, noise: NoiseProvider | int = 42,
                sigmas: dict | None = None, sde_noise=None, max_batch_size: int | None = 0,
                trace: StageTrace | None = None, progress=None, crf_threads: int | None = None,
                request: StageRequest | None = None) -> tuple[mx.array | None, mx.array]:
        """The stages: (video latent [1,C,F,H,W], audio latent [1,Ca,T,M]). ``noise``: a seed or a
        ``(shape, dtype, label) -> array`` provider (tests inject the reference's draws);
        ``crf_threads``: the images' H.264 round trip (``conditioning.preprocess``); ``max_batch_size``:
        samples per transformer call in guided stages (None: all passes in one call; 0: the memory
        plan's choice, one pass per call without a plan)."""
        if max_batch_size == 0:
            max_batch_size = (self._plan or unplanned(self.memory)).passes_per_call
        images = list(images)
        self.check_request(num_frames, height, width, fps, images, steps)
        geometry = Geometry(num_frames, height, width, float(fps))
        noise = SeededNoise(noise) if isinstance(noise, int) else noise
        request = StageRequest(tuple(images)) if request is None else request
        with self._phase("image_encode") if images else contextlib.nullcontext():
            per_stage = stage_inputs_builder(self.spec.inputs)(self, request, geometry, crf_threads)
        runtime = _Runtime(self, per_stage)
        tracker = getattr(self, "_tracker", None)
        on_stage = None
        if tracker is not None:
            user_progress = progress

            def on_stage(k: int, n: int) -> None:
                tracker.begin(f"stage{k + 1}", n, k)

            def progress(k: int, i: int, n: int) -> None:
                tracker.step(i, n)
                if user_progress is not None:
                    user_progress(k, i, n)
        video, audio = run_stages(
            self.spec, runtime, self.config, geometry, contexts, noise,
            steps=steps or self.params.num_inference_steps,
            video_params=video_guider_params or self.params.video_guider_params,
            audio_params=audio_guider_params or self.params.audio_guider_params,
            dtype=self.dtype, sigmas=sigmas, sde_noise=sde_noise, max_batch_size=max_batch_size, trace=trace,
            progress=progress, on_stage=on_stage, parallel=self.request_parallel(self._plan))
        if tracker is not None:
            tracker.end()
        return video, audio

    # ----------------------------------------------------------------- everything
    def generate(self, prompt: str, *, negative_prompt: str | None = None, height: int | None = None,
                 width: int | None = None, num_frames: int | None = None, fps: float | None = None,
                 seed: int | None = None, num_inference_steps: int | None = None,
                 images: list[ImageConditioningInput] = (), output_path: str | os.PathLike | None = None,
                 audio: bool = True, wav_path: str | os.PathLike | None = None, enhance_prompt: bool = False,
                 video_guider_params: MultiModalGuiderParams | None = None,
                 audio_guider_params: MultiModalGuiderParams | None = None, progress=None,
                 noise: NoiseProvider | None = None, sde_noise=None, crf_threads: int | None = None,
                 overwrite: bool = False, events: Callable[[ProgressEvent], None] | None = None,
                 auto_duration: tuple[float, float] | None = None, audio_path: str | os.PathLike | None = None,
                 video_path: str | os.PathLike | None = None, video_conditioning=(), start_time: float | None = None,
                 end_time: float | None = None, regenerate_video: bool = True,
                 regenerate_audio: bool = True, conditioning_attention_strength: float = 1.0,
                 audio_start_time: float = 0.0, audio_max_duration: float | None = None,
                 conditioning_attention_mask: tuple | None = None) -> GenerationResult:
        """Prompt (and images) -> frames and audio, written to ``output_path`` (mp4, atomically)
        when given. Sizes default to the reference's (final size for two-stage pipelines). The
        text-to-audio pipeline (``t2a``) makes audio only: no sizes or images, ``output_path`` a
        ``.wav`` or ``.m4a``, ``frames`` None in the result. ``audio_path``, ``video_path``,
        ``video_conditioning``, ``start_time`` / ``end_time``, ``regenerate_video`` /
        ``regenerate_audio`` and ``conditioning_attention_strength`` are the inputs of the pipelines that
        take them (``PipelineSpec.takes``; ``stage_inputs.StageRequest``); the others refuse them.
        IC-LoRA (``ic-lora``): ``video_conditioning=[(path, strength), ...]`` control videos and
        ``conditioning_attention_strength`` in [0, 1], or ``conditioning_attention_mask=(path, strength)``: a
        grey mask video (white: full attention) weighing each control token, times the strength in [0, 1];
        the IC-LoRA itself is one of ``loras``.
        Audio-to-video (``a2vid``): ``audio_path`` read from ``audio_start_time`` for ``audio_max_duration``
        seconds (None: the video's length; never less), encoded and frozen in both stages; the result's
        ``audio`` and the mp4 carry that input waveform at its own rate, not a decode of ``audio_latent``.

        ``num_frames`` None: a checkpoint with a duration head (LTX-2.5) predicts the length from the
        prompt, snapped to 8k+1 within ``auto_duration`` = (min, max) seconds (default 1 to 20, the
        reference's ``AutoDuration``); the prompt is then encoded before the memory plan. Without a
        duration head, a generation that ships one (2.5) needs ``num_frames``; older ones default to
        their 121 frames.
        ``progress(stage, step, steps)`` is called after every denoising step; ``events(event)``
        with a :class:`~mlx_ltx.progress.ProgressEvent` at every phase's start and end, every step
        and decoded chunk, and once for the resolved settings and the final summary (see
        ``progress.py``). The result carries the settings, the wall time per phase and the peak
        memory (``mx.get_peak_memory()``, reset when the generation starts).

        Randomness: by default every draw comes from ``seed`` in the reference's order (stage noise,
        video before audio, stage by stage, then the decoder's per-tile noise). ``noise`` replaces
        those draws (a ``(shape, dtype, label) -> array`` provider; the decoder asks with label
        ``"decoder"``) and ``sde_noise(stage_index)`` res_2s's SDE draws, e.g. to replay another
        generator's numbers. ``crf_threads``: the H.264 thread count of the images' CRF round trip
        (default: the reference's on this machine). ``seed``: any integer, used modulo 2**64.
        ``overwrite``: replace an existing ``output_path`` / ``wav_path`` (refused otherwise).

        Every argument is checked (:meth:`check_request`, :meth:`validate`) before any model loads."""
        p = self.params
        request = StageRequest(tuple(images), None if audio_path is None else os.fspath(audio_path),
                               None if video_path is None else os.fspath(video_path), tuple(video_conditioning),
                               start_time, end_time, regenerate_video, regenerate_audio,
                               conditioning_attention_strength=conditioning_attention_strength,
                               audio_start_time=audio_start_time, audio_max_duration=audio_max_duration,
                               conditioning_attention_mask=None if conditioning_attention_mask is None
                               else tuple(conditioning_attention_mask))
        extra = [f for f in request.given() if f not in self.spec.takes]
        if extra:
            raise ValueError(f"the {self.spec.name} pipeline takes no {', '.join(self._name(f) for f in extra)}")
        from_inputs = input_geometry(self.spec.inputs)
        if from_inputs is not None:  # the output has the input media's geometry (retake: the source clip's)
            num_frames, height, width, fps = from_inputs(self, request, num_frames, height, width, fps)
        div = 2 if self.spec.two_stage else 1
        if not self.spec.video:
            given = [n for n, v in (("height", height), ("width", width), ("images", list(images))) if v]
            if given:
                raise ValueError(f"the {self.spec.name} pipeline makes audio only: drop "
                                 f"{', '.join(self._name(n) for n in given)}")
            # the stages still take a pixel grid (the reference's placeholder resolution): the smallest
            height, width = (f * div for f in self.config.vae.scale_factors[1:])
        height = p.stage_1_height * div if height is None else height
        width = p.stage_1_width * div if width is None else width
        fps = p.frame_rate if fps is None else fps
        auto = self._auto_duration_bounds(num_frames, auto_duration, fps)
        if num_frames is None:
            # auto: checked with the shortest clip the bounds allow, again once the length is known
            num_frames = p.num_frames if auto is None else resolve_num_frames(auto[0], fps, *auto).num_frames
        if seed is not None and not _is_int(seed):
            raise ValueError(f"{self._name('seed')} must be an integer; got {seed!r}")
        seed = p.seed if seed is None else int(seed) % SEED_MODULUS
        images = list(images)
        if enhance_prompt and images:
            raise ValueError("prompt enhancement with conditioning images (the reference's image-to-video rewrite) "
                             "is not supported: drop enhance_prompt (--enhance-prompt) or the images")
        if wav_path is not None and not audio:
            raise ValueError("wav_path needs the audio: drop audio=False (--no-audio)")
        # auto: the images' frame indices are checked once the length is known
        self.check_request(num_frames, height, width, fps, [] if auto else images, num_inference_steps)
        if not self.spec.video and (not audio or wav_path is not None):
            raise ValueError(f"the {self.spec.name} pipeline makes audio only: drop {self._name('audio')}=False "
                             f"and {self._name('wav_path')} (write a .wav with {self._name('output_path')})")
        self.validate(prompt, images=images, output_path=output_path, wav_path=wav_path, overwrite=overwrite,
                      video_guider_params=video_guider_params, audio_guider_params=audio_guider_params,
                      crf_threads=crf_threads,
                      output_suffix=".mp4" if self.spec.video else AUDIO_OUTPUT_SUFFIXES)
        fps = float(fps)
        mx.reset_peak_memory()
        self._tracker = tracker = Tracker(events)
        try:
            contexts = None
            if auto is not None:  # the duration head reads the positive prompt's contexts
                contexts = self.encode_prompts(prompt, negative_prompt, enhance_prompt, seed)
                num_frames = self.predict_num_frames(contexts, fps, auto)
                self.check_request(num_frames, height, width, fps, images, num_inference_steps)
            plan = self.agree_plan(plan_memory(self, height, width, num_frames, fps, audio, self.memory,
                                               self.preflight))
            settings = self.resolved_settings(height, width, num_frames, fps, seed, num_inference_steps,
                                              video_guider_params, audio_guider_params, audio, plan)
            if auto is not None:
                settings = dataclasses.replace(settings, predicted_seconds=self.last_duration.seconds)
            self._plan = plan
            tracker.settings(settings)
            result = self._generate(prompt, negative_prompt, height, width, num_frames, fps, seed,
                                    num_inference_steps, images, output_path, audio, wav_path, enhance_prompt,
                                    video_guider_params, audio_guider_params, progress, noise, sde_noise,
                                    crf_threads, contexts, request)
            tracker.end()
            result = dataclasses.replace(result, settings=settings, phase_times=dict(tracker.phase_times),
                                         phase_peaks=dict(tracker.phase_peaks), total_time=tracker.total_time,
                                         peak_memory=tracker.peak_memory)
            tracker.summary(settings)
        finally:
            self._tracker = None
            self._plan = None
        return result

    def resolved_settings(self, height: int, width: int, num_frames: int, fps: float, seed: int,
                          num_inference_steps: int | None = None,
                          video_guider_params: MultiModalGuiderParams | None = None,
                          audio_guider_params: MultiModalGuiderParams | None = None,
                          audio: bool = True, plan: MemoryPlan | None = None) -> GenerationSettings:
        """The settings a request runs with: steps per stage, the guidance the guided stages use, and
        the memory plan (mode, guidance passes per call, predicted peak)."""
        steps = num_inference_steps or self.params.num_inference_steps
        per_stage = tuple(len(distilled_sigmas()) - 1 if s.sigmas is SigmaSource.DISTILLED
                          else len(stage2_distilled_sigmas()) - 1 if s.sigmas is SigmaSource.STAGE_2
                          else steps for s in self.spec.stages)
        guided = self.spec.guided
        return GenerationSettings(
            self.spec.name, height, width, num_frames, float(fps), per_stage, seed,
            (video_guider_params or self.params.video_guider_params) if guided and self.spec.video else None,
            (audio_guider_params or self.params.audio_guider_params) if guided else None, audio,
            plan.memory if plan is not None else None, plan.passes_per_call if plan is not None else None,
            plan.prediction.peak if plan is not None and plan.prediction is not None else None,
            plan.prediction.phase if plan is not None and plan.prediction is not None else None,
            loras=self.loras, parallel=None if (g := self.request_parallel(plan)) is None else (g.mode, g.size))

    def _generate(self, prompt, negative_prompt, height, width, num_frames, fps, seed, num_inference_steps, images,
                  output_path, audio, wav_path, enhance_prompt, video_guider_params, audio_guider_params, progress,
                  noise, sde_noise, crf_threads, contexts: Contexts | None = None,
                  request: StageRequest | None = None) -> GenerationResult:
        if contexts is None:
            contexts = self.encode_prompts(prompt, negative_prompt, enhance_prompt, seed)
        noise = SeededNoise(seed) if noise is None else noise
        video_latent, audio_latent = self.denoise(
            contexts, num_frames, height, width, fps, images=images, steps=num_inference_steps,
            video_guider_params=video_guider_params, audio_guider_params=audio_guider_params, noise=noise,
            sde_noise=sde_noise, progress=progress, crf_threads=crf_threads, request=request)
        if self.low_memory:
            self._transformer = self._distilled_lora = None
            self._lora_strength = None
            _release()
        frames = waveform = rate = None
        if self.spec.video:  # several ranks: each decodes its share of the tiles, rank 0 gets the frames
            frames = self.decode_video(video_latent, noise=lambda shape, dtype: noise(shape, dtype, "decoder"))
        if not self.lead:  # the other ranks' work ends here
            return GenerationResult(None, waveform, rate, fps, None, video_latent, audio_latent)
        if audio:
            if self.spec.audio_output is not None:  # a2vid: the input waveform passes through, no decode
                from .stage_inputs import imported

                geometry = Geometry(num_frames, height, width, fps)
                waveform, rate = imported(self.spec.audio_output)(self, request, geometry)
            else:
                waveform, rate = self.decode_audio(audio_latent)
            if self.spec.video:  # the reference's audio-only pipeline returns the decoded length as is
                waveform = fit_audio_to_video(waveform, num_frames, fps, rate)
            waveform = waveform.astype(np.float32)
        path = None
        if output_path is not None:
            with self._phase("write"):
                path = (write_video(output_path, frames, fps, waveform, rate, wav_path=wav_path) if self.spec.video
                        else write_audio(output_path, waveform, rate))
        return GenerationResult(frames, waveform, rate, fps, path, video_latent, audio_latent)


class _Runtime:
    """The pipeline seen by ``run_stages``: precomputed conditionings, lazy models."""

    def __init__(self, pipeline: Pipeline, inputs: list[StageInputs]):
        self.pipeline = pipeline
        self._inputs = inputs  # per stage

    def model_for(self, stage: StageSpec):
        return self.pipeline.model_for(stage)

    def conditionings(self, stage_index: int, height: int, width: int) -> StageInputs:
        return self._inputs[stage_index]

    def upsample(self, video_latent: mx.array) -> mx.array:
        return self.pipeline.upsample(video_latent)


def list_pipelines() -> list[str]:
    return sorted(PIPELINES)


__all__ = ["DEFAULT_NEGATIVE_PROMPT", "GenerationResult", "ImageConditioningInput", "Pipeline", "list_pipelines"]
