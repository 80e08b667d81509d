"""Retake: regenerate a time window ``[start_time, end_time)`` of an existing clip and keep the rest
(the twin of ``ltx_pipelines/retake.py :: RetakePipeline``, distilled, as its CLI runs it).

The pipeline is ``pipeline_stages.RETAKE`` (one ``DISTILLED_SIGMAS`` stage, ``SimpleDenoiser``, at
the clip's own size and frame rate); this module supplies what differs from text-to-video:

- :func:`retake_geometry`: the output's frames, size and fps are the source clip's (the reference's
  ``get_videostream_metadata``), checked before any model loads. The reference's ``__call__``
  checks neither 8k+1 frames nor multiples of 32 (only its CLI does) and its encoder silently crops
  extra frames; here both are errors that say which clip would work, as is a window outside the
  clip, an unreadable file and a size or frame rate that contradicts the clip's.
- :func:`retake_inputs`: the clip's frames through the video VAE encoder
  (``video_latent_from_file``: ``tiled_encode`` with the default tile sizes) and its audio stream
  through the audio VAE encoder (``audio_latent_from_file``: decoded over the clip's duration,
  log-mel, encoded, cropped or zero-padded to the audio grid) become each stream's initial latent.
  A regenerated stream carries a :class:`~mlx_ltx.conditioning.TemporalRegionMask` (denoise mask
  1 inside the window, 0 outside, where the tokens stay at the clean latent); a kept stream has no
  conditioning and is frozen.

Reference behaviour kept, not fixed: a kept stream is noised at the default noise scale 1.0 and
*then* frozen (``DiffusionStage._build_state``: ``create_noised_state``, then mask 0 and
``frozen``), so the model sees pure noise labelled σ 0 for it; the Euler steps pull it back and
the last step (σ → 0) returns the clean latent. A clip without an audio stream gets its audio
generated from scratch, unmasked and unfrozen, whatever ``regenerate_audio`` says, as the
reference's ``audio_latent_from_file`` returning None does.
"""

from __future__ import annotations

import math
import numbers
import re
import subprocess

import mlx.core as mx
import numpy as np

from .conditioning import TemporalRegionMask
from .latent_tools import AudioLatentTools
from .media_inputs import MediaError, VideoInfo, _ffmpeg_exe, check_time_window, decode_audio_from_file, load_video, \
    probe_video, to_stereo
from .pipeline_stages import Geometry, ModalitySpec, StageInputs
from .stage_inputs import StageRequest


def _frame_count_hint(frames: int, t: int) -> str:
    lo = (frames - 1) // t * t + 1
    return f"{lo} frames (trim it: ffmpeg -i IN -frames:v {lo} OUT.mp4)" if lo >= 1 else f"{t + 1} frames or more"


def check_source_clip(info: VideoInfo, path: str, scale_factors, what: str = "video_path") -> None:
    """The clip must fit the VAE grid as it is: the reference's CLI checks (8k+1 frames, sides
    multiples of 32), with the clip that would work named. The reference's ``__call__`` checks
    neither and its encoder drops the frames past the last 8k+1."""
    t, sh, sw = scale_factors
    if (info.frames - 1) % t:
        raise MediaError(f"{what} {path} has {info.frames} frames; retake needs {t}k+1 frames (e.g. 97, 121): use a "
                         f"video with {_frame_count_hint(info.frames, t)}")
    bad = [(side, size, f) for side, size, f in (("height", info.height, sh), ("width", info.width, sw)) if size % f]
    if bad or info.height < sh or info.width < sw:
        ok_h = max(sh, info.height // sh * sh)
        ok_w = max(sw, info.width // sw * sw)
        raise MediaError(f"{what} {path} is {info.width}x{info.height}; retake regenerates at the clip's own size, "
                         f"whose sides must be multiples of {sh}: crop or resize it, e.g. to {ok_w}x{ok_h} "
                         f"(ffmpeg -i IN -vf crop={ok_w}:{ok_h} OUT.mp4)")


def _check_request(pipeline, request: StageRequest) -> tuple[str, float, float]:
    name = pipeline._name
    if request.video_path is None:
        raise ValueError(f"the retake pipeline needs {name('video_path')}: the clip to regenerate a window of")
    times = []
    for field in ("start_time", "end_time"):
        value = getattr(request, field)
        if value is None:
            raise ValueError(f"the retake pipeline needs {name(field)} (seconds): the window "
                             f"[{name('start_time')}, {name('end_time')}) to regenerate")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name(field)} must be a number of seconds; got {value!r}")
        times.append(float(value))
    for field in ("regenerate_video", "regenerate_audio"):
        if not isinstance(getattr(request, field), bool):
            raise ValueError(f"{name(field)} must be True or False; got {getattr(request, field)!r}")
    return request.video_path, times[0], times[1]


def retake_geometry(pipeline, request: StageRequest, num_frames, height, width, fps) -> tuple[int, int, int, float]:
    """(num_frames, height, width, fps) of the output: the source clip's. Values the caller gave must
    be the clip's (retake does not resize or retime); the clip, the window and the flags are checked."""
    path, start, end = _check_request(pipeline, request)
    info = probe_video(path)  # FileNotFoundError / MediaError for a missing or undecodable file
    check_source_clip(info, path, pipeline.config.vae.scale_factors, pipeline._name("video_path"))
    clip = {"num_frames": info.frames, "height": info.height, "width": info.width, "fps": info.fps}
    for field, value in (("num_frames", num_frames), ("height", height), ("width", width), ("fps", fps)):
        if value is not None and value != clip[field]:
            raise ValueError(f"retake generates at the source clip's {field.replace('_', ' ')} ({clip[field]:g} for "
                             f"{path}); drop {pipeline._name(field)} (got {value!r})")
    try:
        check_time_window(start, end, info.frames / info.fps)
    except MediaError as e:  # name the arguments as the caller knows them
        raise MediaError(str(e).replace("start_time", pipeline._name("start_time"))
                         .replace("end_time", pipeline._name("end_time"))) from None
    return info.frames, info.height, info.width, info.fps


def has_audio_stream(path: str) -> bool:
    """Whether ffmpeg lists an audio stream in the file (``audio_latent_from_file`` returns None
    without one)."""
    proc = subprocess.run([_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path], capture_output=True, check=False)
    return re.search(r"Stream #\d+:\d+.*?: Audio:", proc.stderr.decode("utf-8", "replace")) is not None


def conform_latent_length(latent: mx.array, frames: int) -> mx.array:
    """``_conform_latent_length``: crop or zero-pad axis 2 to ``frames``."""
    have = latent.shape[2]
    if have >= frames:
        return latent[:, :, :frames]
    pad = mx.zeros((*latent.shape[:2], frames - have, *latent.shape[3:]), latent.dtype)
    return mx.concatenate([latent, pad], axis=2)


def encode_source_video(pipeline, path: str, geometry: Geometry) -> mx.array:
    """``video_latent_from_file``: the frames shown in [0, num_frames / fps), resized (here: the
    identity, the clip's size) and encoded with the default tile sizes; normalised latent [1, C, F', H', W']."""
    from .models.vae_tiling import TilingConfig

    encoder = pipeline.video_encoder()
    pixels = load_video(path, geometry.height, geometry.width, geometry.num_frames, fps=geometry.fps,
                        dtype=encoder.dtype)
    latent = encoder.tiled_encode(pixels, TilingConfig.default()).astype(pipeline.dtype)
    mx.eval(latent)
    return latent


def encode_source_audio(pipeline, path: str, geometry: Geometry) -> mx.array | None:
    """``audio_latent_from_file``: the audio stream over the clip's duration, encoded by the audio
    VAE and cropped or zero-padded to the audio grid of the video; None without an audio stream.
    Mono is duplicated to stereo (the reference has no rule: its encoder fails on mono)."""
    if not has_audio_stream(path):
        return None
    from .models.audio_processor import AudioProcessor, encode_audio
    from .models.audio_vae import AudioEncoder

    wave, rate = decode_audio_from_file(path, 0.0, geometry.num_frames / geometry.fps)
    encoder = AudioEncoder.from_checkpoint(pipeline.checkpoint, dtype=pipeline.dtype)
    latent = encode_audio(to_stereo(wave)[None], rate, encoder, AudioProcessor.from_config(pipeline.config.audio_vae))
    frames = AudioLatentTools.from_video_pixel_shape(pipeline.config, geometry.num_frames, geometry.fps).token_count
    latent = conform_latent_length(latent.astype(pipeline.dtype), frames)
    mx.eval(latent)
    return latent


def retake_modalities(video_latent: mx.array, audio_latent: mx.array | None, start_time: float, end_time: float,
                      fps: float, regenerate_video: bool = True, regenerate_audio: bool = True) -> StageInputs:
    """The stage's two ``ModalitySpec`` as ``RetakePipeline.__call__`` builds them: a regenerated
    stream masked to the window, a kept one frozen; both noised at the default scale 1.0 first."""
    window = (TemporalRegionMask(start_time, end_time, fps),)
    video = ModalitySpec(window if regenerate_video else (), initial_latent=video_latent, frozen=not regenerate_video)
    has_audio = audio_latent is not None
    audio = ModalitySpec(window if has_audio and regenerate_audio else (), initial_latent=audio_latent,
                         frozen=has_audio and not regenerate_audio)
    return StageInputs(video, audio)


def retake_inputs(pipeline, request: StageRequest, geometry: Geometry, crf_threads: int | None) -> list[StageInputs]:
    """The one stage's inputs: the clip's video and audio encoded (before the transformer loads;
    the video encoder is released afterwards in low-memory mode) and the window applied."""
    # generate() resolved the geometry from the clip; a direct denoise() call is checked here
    num_frames, height, width, fps = retake_geometry(pipeline, request, geometry.num_frames, geometry.height,
                                                     geometry.width, geometry.fps)
    path = request.video_path
    with pipeline._phase("image_encode"):
        video_latent = encode_source_video(pipeline, path, geometry)
        audio_latent = encode_source_audio(pipeline, path, geometry)
    if pipeline.low_memory and pipeline._video_encoder is not None:
        from .pipeline_decode import release_memory

        pipeline._video_encoder = None
        release_memory()
    return [retake_modalities(video_latent, audio_latent, float(request.start_time), float(request.end_time), fps,
                              request.regenerate_video, request.regenerate_audio)]
