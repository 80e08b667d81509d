"""What each pipeline feeds its stages: one builder per kind of input, chosen by
``PipelineSpec.inputs``, turning a request's media (images; an audio file; a control or source
video and a time window) into every stage's :class:`~mlx_ltx.pipeline_stages.StageInputs`.

This is where the pipelines differ (the reference's pipeline modules build their
``ModalitySpec`` lists by hand); the stages, the loop and the noise are shared. Builders run
before the transformer loads, so the encoders they use can be released first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields

from .conditioning import ImageConditioningInput
from .pipeline_stages import Geometry, ModalitySpec, StageInputs


@dataclass(frozen=True)
class StageRequest:
    """A request's inputs beyond the prompt, as ``Pipeline.generate`` takes them. Which of them a
    pipeline reads is ``PipelineSpec.takes``; the others must stay at their defaults."""

    images: tuple[ImageConditioningInput, ...] = ()
    audio_path: str | None = None          # a2vid: the soundtrack the video follows
    video_path: str | None = None          # retake: the clip to regenerate a window of
    video_conditioning: tuple = ()         # IC-LoRA: ((path, strength), ...) control videos
    start_time: float | None = None        # retake: the window [start, end) in seconds
    end_time: float | None = None
    regenerate_video: bool = True          # retake: which streams the window regenerates
    regenerate_audio: bool = True
    conditioning_attention_strength: float = 1.0  # IC-LoRA: control tokens <-> generated tokens attention
    audio_start_time: float = 0.0          # a2vid: where in audio_path to start reading, seconds
    audio_max_duration: float | None = None  # a2vid: seconds read (None: the video's length)
    conditioning_attention_mask: tuple | None = None  # IC-LoRA: (mask video path, strength), per-token attention

    def given(self) -> list[str]:
        """The fields set away from their defaults (``images`` aside: every video pipeline takes them)."""
        return [f.name for f in fields(self) if f.name != "images" and getattr(self, f.name) != f.default]


def image_inputs(pipeline, request: StageRequest, geometry: Geometry, crf_threads: int | None) -> list[StageInputs]:
    """The images of the text/image-to-video pipelines, encoded at each stage's size."""
    per_stage = pipeline._stage_conditionings(list(request.images), geometry, crf_threads)
    return [StageInputs(ModalitySpec(tuple(items))) for items in per_stage]


def audio_only_inputs(pipeline, request: StageRequest, geometry: Geometry,
                      crf_threads: int | None) -> list[StageInputs]:
    """Text-to-audio: no video stream at all (``video=None``), as ``T2AOneStagePipeline``."""
    return [StageInputs(video=None) for _ in pipeline.spec.stages]


# PipelineSpec.inputs -> builder(pipeline, request, geometry, crf_threads) -> [StageInputs per stage];
# "module:function" entries are imported when first used
STAGE_INPUT_BUILDERS: dict[str, Callable | str] = {
    "images": image_inputs,
    "audio-only": audio_only_inputs,
    "retake": ".retake:retake_inputs",
    "ic-lora": ".ic_lora:ic_lora_inputs",
    "a2vid": ".audio_to_video:a2vid_inputs",
}

# PipelineSpec.inputs -> "module:function"(pipeline, request, num_frames, height, width, fps) ->
# (num_frames, height, width, fps): for pipelines whose output has the input media's geometry
# (retake: the source clip's), read and checked in generate() before anything loads
INPUT_GEOMETRY: dict[str, str] = {
    "retake": ".retake:retake_geometry",
    "ic-lora": ".ic_lora:ic_lora_geometry",  # checks only: the sizes, the control videos
    "a2vid": ".audio_to_video:a2vid_geometry",  # checks only: the audio file and its length
}


def input_geometry(kind: str) -> Callable | None:
    """The geometry resolver of a kind of input (:data:`INPUT_GEOMETRY`), or None."""
    entry = INPUT_GEOMETRY.get(kind)
    if entry is None:
        return None
    module, name = entry.split(":")
    return getattr(importlib.import_module(module, __package__), name)


def imported(ref: str) -> Callable:
    """The function a "module:function" string names (``.module``: within mlx_ltx), e.g.
    ``PipelineSpec.audio_output``."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module, __package__), name)


def stage_inputs_builder(kind: str) -> Callable:
    builder = STAGE_INPUT_BUILDERS[kind]
    if isinstance(builder, str):
        module, name = builder.split(":")
        builder = getattr(importlib.import_module(module, __package__), name)
        STAGE_INPUT_BUILDERS[kind] = builder
    return builder
