"""Audio-to-video: the twin of ``ltx_pipelines/a2vid_two_stage.py :: A2VidPipelineTwoStage``.

The stages are ``pipeline_stages.A2VID`` (a guided half-size stage, ×2 upsampling, a distilled-LoRA
refinement); this module supplies what differs from text/image-to-video:

- the input audio, read as the reference reads it (``decode_audio_from_file(path, start_time,
  max_duration)``), encoded by the audio VAE encoder (resample to the encoder's rate, log-mel,
  ``encode_audio``), cropped to the video's ``AudioLatentShape.from_duration`` frames;
- that latent as both stages' audio: ``ModalitySpec(frozen=True, noise_scale=0.0,
  initial_latent=...)``. The stage still draws its audio noise (``DiffusionStage`` draws for every
  stream), so the draw order matches the reference's;
- the output's soundtrack: the input waveform itself, not a decode of the audio latent (the
  reference returns ``Audio(decoded_audio.waveform, decoded_audio.sampling_rate)``).

The reference's CLI reads ``num_frames / frame_rate`` seconds of audio unless
``--audio-max-duration`` says otherwise; here that is the default of the API too, and audio
shorter than the video is refused (the reference would build a latent shorter than the video's
audio grid and fail inside the stage).
"""

from __future__ import annotations

import math
import numbers
import os

import mlx.core as mx
import numpy as np

from .media_inputs import MediaError, decode_audio_from_file, to_stereo
from .pipeline_stages import Geometry, ModalitySpec, StageInputs
from .stage_inputs import StageRequest

# The sample rates FFmpeg's AAC encoder takes (its ``ff_mpeg4audio_sample_rates``). The reference muxes
# the input at its own rate (PyAV, the same encoder); an input at any other rate would fail there at
# the very end of a generation, so it is resampled to the rate the vocoder writes.
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
FALLBACK_MUX_RATE = 48000


def _number(pipeline, name: str, value, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{pipeline._name(name)} must be a finite number of seconds; got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{pipeline._name(name)} must be positive; got {value!r}")
    if not positive and value < 0:
        raise ValueError(f"{pipeline._name(name)} must be ≥ 0; got {value!r}")
    return float(value)


def audio_window(pipeline, request: StageRequest, video_seconds: float | None) -> tuple[float, float | None]:
    """(start, seconds) to read from ``audio_path``: ``audio_max_duration``, or the video's length as
    the reference's CLI passes it. A ``audio_max_duration`` shorter than the video is refused."""
    if request.audio_path is None:
        raise ValueError(f"the a2vid pipeline needs {pipeline._name('audio_path')}: the audio file the video follows")
    start = _number(pipeline, "audio_start_time", request.audio_start_time, positive=False)
    if request.audio_max_duration is None:
        return start, video_seconds
    seconds = _number(pipeline, "audio_max_duration", request.audio_max_duration, positive=True)
    if video_seconds is not None and seconds < video_seconds:
        raise ValueError(f"{pipeline._name('audio_max_duration')} ({seconds:g} s) is shorter than the video "
                         f"({video_seconds:.3f} s): the audio must cover the whole video; raise it to at least "
                         f"{video_seconds:.3f} or drop it")
    return start, seconds


def read_input_audio(pipeline, request: StageRequest, video_seconds: float | None) -> tuple[np.ndarray, int]:
    """The input waveform, float32 (2, S) at the file's rate: ``decode_audio_from_file(path, start,
    seconds)`` (mono duplicated to stereo; the audio VAE and the mp4's AAC stream are stereo).
    Unreadable files and audio shorter than the video (from ``audio_start_time`` on) are refused,
    saying how many seconds are needed."""
    start, seconds = audio_window(pipeline, request, video_seconds)
    path = os.fspath(request.audio_path)
    wave, rate = decode_audio_from_file(path, start, seconds)  # FileNotFoundError / MediaError
    if video_seconds is not None and wave.shape[1] < round(video_seconds * rate):
        have = wave.shape[1] / rate
        raise MediaError(f"{pipeline._name('audio_path')} {path} has {have:.3f} s of audio from {start:g} s on; the "
                         f"video needs {video_seconds:.3f} s ({start + video_seconds:.3f} s of audio from the file's "
                         f"start): use longer audio, an earlier {pipeline._name('audio_start_time')}, or fewer frames")
    return to_stereo(wave), rate


def _video_seconds(pipeline, num_frames, fps) -> float | None:
    """The requested video's length, with the pipeline's defaults; None when it is not known yet (a
    duration head predicts it from the prompt) or not valid (``check_request`` reports that)."""
    if fps is None:
        fps = pipeline.params.frame_rate
    if num_frames is None:
        if pipeline.kind.has_duration_head or pipeline.kind.ships_duration_head:
            return None
        num_frames = pipeline.params.num_frames
    ok = (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0)
    return float(num_frames) / float(fps) if ok(num_frames) and ok(fps) else None


def a2vid_geometry(pipeline, request: StageRequest, num_frames, height, width, fps):
    """Checks only (``stage_inputs.INPUT_GEOMETRY``), before any model loads: the audio arguments, the
    file (opened and decoded) and its length against the requested video's. The geometry is the
    caller's."""
    read_input_audio(pipeline, request, _video_seconds(pipeline, num_frames, fps))
    return num_frames, height, width, fps


def encode_input_audio(pipeline, waveform: np.ndarray, rate: int, geometry: Geometry) -> mx.array:
    """``AudioConditioner(lambda enc: encode_audio(audio, enc))`` cropped to the video's audio grid:
    normalised latent [1, Ca, T, M]. The encoder is built per call and dropped (as the reference's
    ``AudioConditioner``)."""
    from .models.audio_processor import AudioProcessor, encode_audio
    from .models.audio_vae import AudioEncoder, AudioLatentShape
    from .pipeline_decode import release_memory

    encoder = AudioEncoder.from_checkpoint(pipeline.checkpoint, dtype=pipeline.dtype)
    latent = encode_audio(waveform[None], rate, encoder, AudioProcessor.from_config(pipeline.config.audio_vae))
    config = pipeline.config.audio_vae
    frames = AudioLatentShape.from_video_pixel_shape(geometry.num_frames, geometry.fps, config).frames
    if latent.shape[2] < frames:  # cannot happen for audio as long as the video; kept as a clear error
        raise MediaError(f"the encoded audio has {latent.shape[2]} latent frames; the video needs {frames}: use "
                         f"audio at least {geometry.num_frames / geometry.fps:.3f} s long")
    latent = latent[:, :, :frames]
    mx.eval(latent)
    del encoder
    release_memory()
    return latent


def a2vid_inputs(pipeline, request: StageRequest, geometry: Geometry, crf_threads: int | None) -> list[StageInputs]:
    """Every stage's inputs: the images as text/image-to-video conditions them (frame 0 replaces the
    first latent, ``combined_image_conditionings``) at the stage's size, and the encoded input audio,
    frozen with noise scale 0 (``ModalitySpec(frozen=True, noise_scale=0.0, initial_latent=...)``)."""
    per_stage = pipeline._stage_conditionings(list(request.images), geometry, crf_threads)
    waveform, rate = read_input_audio(pipeline, request, geometry.num_frames / geometry.fps)
    with pipeline._phase("audio_encode"):
        latent = encode_input_audio(pipeline, waveform, rate, geometry)
    audio = ModalitySpec(noise_scale=0.0, frozen=True, initial_latent=latent)
    return [StageInputs(ModalitySpec(tuple(items)), audio) for items in per_stage]


def a2vid_output_audio(pipeline, request: StageRequest, geometry: Geometry) -> tuple[np.ndarray, int]:
    """The output's soundtrack (``PipelineSpec.audio_output``): the input waveform read again, at its
    own rate, as the reference muxes it; resampled to 48 kHz only for a rate AAC cannot carry."""
    waveform, rate = read_input_audio(pipeline, request, geometry.num_frames / geometry.fps)
    if rate not in AAC_SAMPLE_RATES:
        from .models.audio_processor import resample

        waveform, rate = resample(waveform, rate, FALLBACK_MUX_RATE), FALLBACK_MUX_RATE
    return waveform, rate
