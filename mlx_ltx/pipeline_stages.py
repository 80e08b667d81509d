"""The four LTX text/image-to-video pipelines as data, and the one machinery that runs them
(twins of ``ltx_pipelines/distilled.py``, ``ti2vid_one_stage.py``, ``ti2vid_two_stages.py``,
``ti2vid_two_stages_hq.py`` and ``utils/blocks.py :: DiffusionStage``).

A pipeline is a :class:`PipelineSpec`: one or two :class:`StageSpec` (pixel size divisor, sigma
source, denoiser kind, stepper, distilled-LoRA strength, whether its audio is the one decoded).
:func:`run_stages` runs any spec: per stage it builds the video and audio states (conditioning
items applied, then noise: video drawn before audio, as ``DiffusionStage`` builds them), runs
``denoise_loop``, drops appended guiding tokens and unpatchifies; between stages it upsamples the
video latent ×2 and re-noises both streams at the stage-2 schedule's first sigma.

Everything a stage needs from outside (the transformer with the right LoRA strength, image
conditionings at a given size, the upsampler, noise) comes through a :class:`StageRuntime`, so
tests inject the reference's noise and the pipeline object supplies lazily loaded models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import NamedTuple, Protocol

import mlx.core as mx

from .config import LTXConfig
from .denoising import (
    FactoryGuidedDenoiser,
    GuidedDenoiser,
    SimpleDenoiser,
    denoise_loop,
)
from .guidance import (
    LTX_2_3_HQ_PARAMS,
    MultiModalGuider,
    MultiModalGuiderFactory,
    MultiModalGuiderParams,
    PipelineParams,
)
from .latent_tools import AudioLatentTools, NoiseProvider, SeededNoise, VideoLatentTools, create_noised_state
from .sampling import (
    ANCESTRAL_NOISE_SEED_OFFSET,
    AncestralNoiseFn,
    EulerAncestralDiffusionStep,
    EulerDiffusionStep,
    LTX2Scheduler,
    NoiseFn,
    Res2sDiffusionStep,
    distilled_sigmas,
    stage2_distilled_sigmas,
)


class SigmaSource(Enum):
    DISTILLED = "distilled"                          # DISTILLED_SIGMAS, 8 steps
    STAGE_2 = "stage-2"                              # STAGE_2_DISTILLED_SIGMAS, 3 steps
    SCHEDULER = "scheduler"                          # LTX2Scheduler(steps), 4096 tokens (shift 2.05)
    SCHEDULER_WITH_LATENT = "scheduler-with-latent"  # LTX2Scheduler(steps, stage latent): HQ only


class DenoiserKind(Enum):
    SIMPLE = "simple"                  # SimpleDenoiser: positive prompt only
    GUIDED_FACTORY = "guided-factory"  # FactoryGuidedDenoiser with constant factories (ti2vid)
    GUIDED = "guided"                  # GuidedDenoiser with constant guiders (HQ)


class Stepper(Enum):
    EULER = "euler"
    EULER_ANCESTRAL = "euler-ancestral"  # eta 1, s_noise 1 (DistilledPipeline stage 1 from 2.5)
    RES2S = "res2s"


@dataclass(frozen=True)
class StageSpec:
    """One diffusion stage: runs at (height, width) / ``size_divisor``; ``distilled_lora`` is the
    strength of the distilled LoRA fused for this stage (None: the model as loaded);
    ``keeps_audio``: this stage's audio latent is the one decoded."""

    size_divisor: int
    sigmas: SigmaSource
    denoiser: DenoiserKind
    stepper: Stepper = Stepper.EULER
    distilled_lora: float | None = None
    keeps_audio: bool = False
    # the pipeline's own LoRAs (Pipeline.loras) are fused in this stage; False: IC-LoRA's stage 2,
    # which the reference builds with loras=()
    user_loras: bool = True
    # (model version, stepper) rows, newest first: a checkpoint at or above a version samples the
    # stage with that row's stepper instead (resolved by PipelineSpec.for_version)
    stepper_since: tuple[tuple[tuple[int, ...], Stepper], ...] = ()


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    stages: tuple[StageSpec, ...]
    # HQ uses its own guidance preset and 15 steps whatever the checkpoint's generation
    hq_params: bool = False
    # how images become conditioning items (conditioning.IMAGE_CONDITIONINGS): frame 0 replaces
    # the first latent ("replace-first", combined_image_conditionings) or every image guides
    image_conditioning: str = "replace-first"
    # what the stages are fed (stage_inputs.STAGE_INPUT_BUILDERS) and which StageRequest fields
    # beyond the images the pipeline takes; video=False: no video stream (text-to-audio)
    inputs: str = "images"
    takes: tuple[str, ...] = ()
    video: bool = True
    # the pipeline's own audio guider, used without the negative audio prompt (a2vid's stage 1:
    # ``MultiModalGuider(MultiModalGuiderParams())``, so its unconditioned pass keeps the positive
    # audio context); None: the checkpoint's audio guidance with the negative prompt
    audio_guidance: MultiModalGuiderParams | None = None
    # "module:function"(pipeline, request, geometry) -> (waveform [2, S], rate): the audio the output
    # carries instead of a decode of the audio latent (a2vid passes its input waveform through)
    audio_output: str | None = None

    @property
    def two_stage(self) -> bool:
        return len(self.stages) == 2

    @property
    def guided(self) -> bool:
        return any(s.denoiser is not DenoiserKind.SIMPLE for s in self.stages)

    @property
    def uses_steps(self) -> bool:
        return any(s.sigmas in (SigmaSource.SCHEDULER, SigmaSource.SCHEDULER_WITH_LATENT) for s in self.stages)

    @property
    def checkpoint_variant(self) -> str:
        """The transformer the stages run: the distilled one when stage 1 samples the distilled
        schedule (distilled, retake, IC-LoRA), else the dev one."""
        return "distilled" if self.stages[0].sigmas is SigmaSource.DISTILLED else "dev"

    @property
    def needs_distilled_lora(self) -> bool:
        return any(s.distilled_lora is not None for s in self.stages)

    @property
    def audio_stage(self) -> int:
        return max(i for i, s in enumerate(self.stages) if s.keeps_audio)

    def for_version(self, version: tuple[int, ...]) -> PipelineSpec:
        """The spec as a checkpoint of ``version`` runs it: each stage's ``stepper_since`` resolved."""
        def resolve(stage: StageSpec) -> StageSpec:
            for since, stepper in stage.stepper_since:
                if version >= since:
                    return replace(stage, stepper=stepper, stepper_since=())
            return replace(stage, stepper_since=())
        return replace(self, stages=tuple(resolve(s) for s in self.stages))

    def params(self, detected: PipelineParams) -> PipelineParams:
        """Default steps and guider params: the checkpoint generation's (``detect_params``), or HQ's.
        Without a video stream the audio's cross-modal guidance has nothing to isolate: off (1), as
        the reference's text-to-audio CLI sets it."""
        params = LTX_2_3_HQ_PARAMS if self.hq_params else detected
        if not self.video:
            params = replace(params, audio_guider_params=replace(params.audio_guider_params, modality_scale=1.0))
        if self.audio_guidance is not None:
            params = replace(params, audio_guider_params=self.audio_guidance)
        return params


_S = SigmaSource
_D = DenoiserKind
# DistilledPipeline: the stage-2 audio is refined and kept
# (from LTX-2.5 its stage 1 is ancestral: ANCESTRAL_SAMPLER_SINCE_VERSION in distilled.py)
DISTILLED = PipelineSpec("distilled", (
    StageSpec(2, _S.DISTILLED, _D.SIMPLE, stepper_since=(((2, 5), Stepper.EULER_ANCESTRAL),)),
    StageSpec(1, _S.STAGE_2, _D.SIMPLE, keeps_audio=True)))
# TI2VidOneStagePipeline
DEV = PipelineSpec("dev", (StageSpec(1, _S.SCHEDULER, _D.GUIDED_FACTORY, keeps_audio=True),))
# TI2VidTwoStagesPipeline: stage 2 adds the distilled LoRA at 1.0; its audio is discarded
DEV_TWO_STAGE = PipelineSpec("dev-two-stage", (
    StageSpec(2, _S.SCHEDULER, _D.GUIDED_FACTORY, keeps_audio=True),
    StageSpec(1, _S.STAGE_2, _D.SIMPLE, distilled_lora=1.0)))
# TI2VidTwoStagesHQPipeline: res_2s in both stages, distilled LoRA 0.25 then 0.5, stage-2 audio discarded
DEV_TWO_STAGE_HQ = PipelineSpec("dev-two-stage-hq", (
    StageSpec(2, _S.SCHEDULER_WITH_LATENT, _D.GUIDED, Stepper.RES2S, distilled_lora=0.25, keeps_audio=True),
    StageSpec(1, _S.STAGE_2, _D.SIMPLE, Stepper.RES2S, distilled_lora=0.5)), hq_params=True)

# KeyframeInterpolationPipeline: DEV_TWO_STAGE's stages with every image a guiding keyframe (none
# replaces the first latent) and the stage-2 audio kept
KEYFRAME_INTERPOLATION = PipelineSpec("keyframe-interpolation", (
    StageSpec(2, _S.SCHEDULER, _D.GUIDED_FACTORY),
    StageSpec(1, _S.STAGE_2, _D.SIMPLE, distilled_lora=1.0, keeps_audio=True)), image_conditioning="guiding")

# T2AOneStagePipeline: one guided stage with no video stream (the reference's placeholder grid)
T2A = PipelineSpec("t2a", (StageSpec(1, _S.SCHEDULER, _D.GUIDED_FACTORY, keeps_audio=True),), inputs="audio-only",
                   video=False)

# RetakePipeline (distilled): one DISTILLED_SIGMAS stage at the source clip's size; the clip's encoded
# video and audio are the initial latents, a window regenerated (retake.py builds the inputs)
RETAKE = PipelineSpec("retake", (StageSpec(1, _S.DISTILLED, _D.SIMPLE, keeps_audio=True),), inputs="retake",
                      takes=("video_path", "start_time", "end_time", "regenerate_video", "regenerate_audio"))

# ICLoraPipeline: the distilled stages; the IC-LoRA (the pipeline's loras) and the control video in
# stage 1 only (ic_lora.py builds the inputs); the stage-2 audio kept
IC_LORA = PipelineSpec("ic-lora", (
    StageSpec(2, _S.DISTILLED, _D.SIMPLE),
    StageSpec(1, _S.STAGE_2, _D.SIMPLE, keeps_audio=True, user_loras=False)), inputs="ic-lora",
    takes=("video_conditioning", "conditioning_attention_strength", "conditioning_attention_mask"))

# A2VidPipelineTwoStage: a guided half-size stage (constant guiders) and a distilled-LoRA stage 2, the
# input audio encoded and frozen in both (audio_to_video.py builds the inputs); its own default audio
# guider without the negative audio prompt; the output carries the input waveform, not a decode
A2VID = PipelineSpec("a2vid", (
    StageSpec(2, _S.SCHEDULER, _D.GUIDED),
    StageSpec(1, _S.STAGE_2, _D.SIMPLE, distilled_lora=1.0, keeps_audio=True)), inputs="a2vid",
    takes=("audio_path", "audio_start_time", "audio_max_duration"), audio_guidance=MultiModalGuiderParams(),
    audio_output=".audio_to_video:a2vid_output_audio")

PIPELINES: dict[str, PipelineSpec] = {p.name: p for p in (DISTILLED, DEV, DEV_TWO_STAGE, DEV_TWO_STAGE_HQ,
                                                          KEYFRAME_INTERPOLATION, T2A, RETAKE, IC_LORA, A2VID)}


class Contexts(NamedTuple):
    """Prompt contexts: positive video/audio, and negative ones (None for unguided pipelines)."""

    video: mx.array
    audio: mx.array
    video_negative: mx.array | None = None
    audio_negative: mx.array | None = None


@dataclass(frozen=True)
class Geometry:
    """The final video: pixel frames, size and frame rate."""

    num_frames: int
    height: int
    width: int
    fps: float


@dataclass(frozen=True)
class ModalitySpec:
    """One stream's inputs to a stage (``ltx_pipelines.utils.types.ModalitySpec``, its context
    aside): conditioning items, applied in order (replace latents, append guiding tokens, mask a
    region); ``noise_scale`` (None: 1, or σ₀ when the stage continues the previous stage's latent);
    ``frozen``: the stream is held as given (denoise mask 0, its σ forced to 0: a2vid's audio,
    retake's kept stream); ``initial_latent`` (unpatchified) instead of the previous stage's."""

    conditionings: tuple = ()
    noise_scale: float | None = None
    frozen: bool = False
    initial_latent: mx.array | None = None


class StageInputs(NamedTuple):
    """What a stage gets from its pipeline for each stream: the conditioning extension point.
    None: the stage has no such stream (text-to-audio's video)."""

    video: ModalitySpec | None = ModalitySpec()
    audio: ModalitySpec | None = ModalitySpec()


class StageRuntime(Protocol):
    """What :func:`run_stages` takes from its caller."""

    def model_for(self, stage: StageSpec):
        """The transformer with the stage's distilled-LoRA strength fused."""

    def conditionings(self, stage_index: int, height: int, width: int) -> StageInputs | list:
        """A stage's video and audio inputs (:class:`StageInputs`), conditionings encoded at that
        stage's pixel size; a plain list is the video's conditioning items."""

    def upsample(self, video_latent: mx.array) -> mx.array:
        """Spatial ×2 latent upsampling (normalised latent in, normalised latent out)."""


@dataclass(frozen=True)
class StageOutput:
    video_latent: mx.array | None  # [B, C, F, H, W]; None without a video stream
    audio_latent: mx.array | None  # [B, Ca, T, M]


def stage_sigmas(stage: StageSpec, steps: int, video_tools: VideoLatentTools) -> mx.array:
    if stage.sigmas is SigmaSource.DISTILLED:
        return distilled_sigmas()
    if stage.sigmas is SigmaSource.STAGE_2:
        return stage2_distilled_sigmas()
    if stage.sigmas is SigmaSource.SCHEDULER:
        return LTX2Scheduler().execute(steps)
    return LTX2Scheduler().execute(steps, latent_shape=tuple(video_tools.target_shape))


def make_denoiser(stage: StageSpec, contexts: Contexts, video_params: MultiModalGuiderParams,
                  audio_params: MultiModalGuiderParams, max_batch_size: int | None = 1, video: bool = True,
                  parallel=None):
    """``video=False``: the stage has no video stream (text-to-audio: no video context, no video guider);
    ``parallel``: the ``distributed.ParallelGroup`` a stage shares its passes or its tokens with."""
    vc, ac = (contexts.video if video else None), contexts.audio
    if stage.denoiser is DenoiserKind.SIMPLE:
        return SimpleDenoiser(vc, ac, parallel)
    # a pipeline with its own audio guider has no negative audio context (PipelineSpec.audio_guidance);
    # the denoiser refuses an unconditioned pass that would need one
    if (video and contexts.video_negative is None) or (contexts.audio_negative is None and not video):
        raise ValueError("a guided stage needs the negative prompt's contexts")
    if stage.denoiser is DenoiserKind.GUIDED_FACTORY:
        video_factory = MultiModalGuiderFactory.constant(video_params, contexts.video_negative) if video else None
        return FactoryGuidedDenoiser(vc, ac, video_factory,
                                     MultiModalGuiderFactory.constant(audio_params, contexts.audio_negative),
                                     max_batch_size=max_batch_size, parallel=parallel)
    return GuidedDenoiser(vc, ac, MultiModalGuider(video_params, contexts.video_negative),
                          MultiModalGuider(audio_params, contexts.audio_negative), max_batch_size=max_batch_size,
                          parallel=parallel)


def ancestral_noise(noise: NoiseProvider, index: int) -> AncestralNoiseFn:
    """The ancestral loop's draws: a fresh stream seeded seed + 10000 per loop call for a seeded
    generation, as the reference's loop generator; an injected provider is asked with labels
    ``stage{k}.ancestral.{video|audio}`` in the order the loop consumes them."""
    source = noise.offset(ANCESTRAL_NOISE_SEED_OFFSET) if isinstance(noise, SeededNoise) else noise
    return lambda shape, dtype, modality: source(shape, dtype, f"stage{index + 1}.ancestral.{modality}")


def make_stepper(stage: StageSpec, sde_noise: NoiseFn | None = None, ancestral: AncestralNoiseFn | None = None):
    if stage.stepper is Stepper.EULER:
        return EulerDiffusionStep()
    if stage.stepper is Stepper.EULER_ANCESTRAL:
        return EulerAncestralDiffusionStep(eta=1.0, s_noise=1.0, noise=ancestral)
    # HQ passes no noise_seed: the reference's fixed default seeds, restarted in every stage
    return Res2sDiffusionStep(new_noise=sde_noise)


def run_stage(model, stage: StageSpec, index: int, config: LTXConfig, geometry: Geometry, contexts: Contexts,
              conditionings: StageInputs | list, noise: NoiseProvider, sigmas: mx.array, *,
              video_params: MultiModalGuiderParams, audio_params: MultiModalGuiderParams,
              initial: StageOutput | None = None, dtype: mx.Dtype = mx.float32, sde_noise: NoiseFn | None = None,
              max_batch_size: int | None = 1, on_step=None, parallel=None) -> StageOutput:
    """``DiffusionStage.__call__``: states at this stage's size (``initial`` latents re-noised at
    ``sigmas[0]``), the loop, ``clear_conditioning``, unpatchify."""
    height, width = geometry.height // stage.size_divisor, geometry.width // stage.size_divisor
    video_tools = VideoLatentTools.from_pixel_shape(config, geometry.num_frames, height, width, geometry.fps)
    audio_tools = AudioLatentTools.from_video_pixel_shape(config, geometry.num_frames, geometry.fps)
    inputs = conditionings if isinstance(conditionings, StageInputs) else StageInputs(ModalitySpec(tuple(conditionings)))
    default_scale = 1.0 if initial is None else float(sigmas[0].item())
    states = []
    for name, tools, spec, init in (("video", video_tools, inputs.video, initial and initial.video_latent),
                                    ("audio", audio_tools, inputs.audio, initial and initial.audio_latent)):
        if spec is None:  # no such stream (text-to-audio has no video)
            states.append(None)
            continue
        init = spec.initial_latent if spec.initial_latent is not None else init
        scale = default_scale if spec.noise_scale is None else spec.noise_scale
        # DiffusionStage._build_state: create_noised_state (the draw is made even when frozen), then freeze
        state = create_noised_state(tools, spec.conditionings, noise, scale, None if init is None else init.astype(dtype),
                                    dtype, label=f"stage{index + 1}.{name}")
        if spec.frozen:
            state = replace(state, denoise_mask=mx.zeros_like(state.denoise_mask), frozen=True)
        states.append(state)
    denoiser = make_denoiser(stage, contexts, video_params, audio_params, max_batch_size, video=states[0] is not None,
                             parallel=parallel)
    stepper = make_stepper(stage, sde_noise, ancestral_noise(noise, index))
    video, audio = denoise_loop(model, states[0], states[1], sigmas, denoiser, stepper, on_step=on_step)
    return StageOutput(None if video is None else video_tools.unpatchify(video_tools.clear_conditioning(video).latent),
                       None if audio is None else audio_tools.unpatchify(audio_tools.clear_conditioning(audio).latent))


@dataclass
class StageTrace:
    """What :func:`run_stages` did, for inspection: per stage its sigmas and output, and the
    upsampled latent handed to stage 2."""

    sigmas: list[mx.array]
    outputs: list[StageOutput]
    upscaled: mx.array | None = None


def run_stages(spec: PipelineSpec, runtime: StageRuntime, config: LTXConfig, geometry: Geometry, contexts: Contexts,
               noise: NoiseProvider, *, steps: int, video_params: MultiModalGuiderParams,
               audio_params: MultiModalGuiderParams, dtype: mx.Dtype = mx.float32,
               sigmas: dict[int, mx.array] | None = None, sde_noise: Callable[[int], NoiseFn | None] | None = None,
               max_batch_size: int | None = 1, trace: StageTrace | None = None,
               progress: Callable[[int, int, int], None] | None = None,
               on_stage: Callable[[int, int], None] | None = None, parallel=None) -> tuple[mx.array, mx.array]:
    """Run every stage of ``spec``; returns (final video latent, the kept stage's audio latent).
    ``sigmas`` overrides a stage's schedule (by stage index, as the reference's ``stage_*_sigmas``);
    ``sde_noise(stage_index)`` replaces res_2s's SDE draws; ``progress(stage, step, steps)`` is
    called after every step, ``on_stage(stage, steps)`` once per stage, its model ready, before the
    first step. ``parallel``: the ``distributed.ParallelGroup`` whose ranks share the guided passes."""
    if spec.audio_guidance is not None:  # never the negative audio prompt (a2vid)
        contexts = contexts._replace(audio_negative=None)
    previous: StageOutput | None = None
    outputs: list[StageOutput] = []
    for index, stage in enumerate(spec.stages):
        height, width = geometry.height // stage.size_divisor, geometry.width // stage.size_divisor
        items = runtime.conditionings(index, height, width)
        initial = None
        if previous is not None:
            upscaled = runtime.upsample(previous.video_latent)
            if trace is not None:
                trace.upscaled = upscaled
            initial = replace(previous, video_latent=upscaled)
        tools = VideoLatentTools.from_pixel_shape(config, geometry.num_frames, height, width, geometry.fps)
        stage_sigma = sigmas[index] if sigmas and index in sigmas else stage_sigmas(stage, steps, tools)
        model = runtime.model_for(stage)
        on_step = None
        if progress is not None:
            n_steps = len(stage_sigma) - 1

            def on_step(i, video_state, audio_state, k=index, n=n_steps):
                progress(k, i + 1, n)
        if on_stage is not None:
            on_stage(index, len(stage_sigma) - 1)
        previous = run_stage(model, stage, index, config, geometry, contexts, items, noise, stage_sigma,
                             video_params=video_params, audio_params=audio_params, initial=initial, dtype=dtype,
                             sde_noise=sde_noise(index) if sde_noise else None, max_batch_size=max_batch_size,
                             on_step=on_step, parallel=parallel)
        mx.eval([x for x in (previous.video_latent, previous.audio_latent) if x is not None])
        outputs.append(previous)
        if trace is not None:
            trace.sigmas.append(stage_sigma)
            trace.outputs.append(previous)
    return outputs[-1].video_latent, outputs[spec.audio_stage].audio_latent
