"""Input video and audio files, read as the reference's pipelines read them
(``ltx_pipelines/utils/media_io/decode.py``: ``decode_video_by_frame``, ``decode_video_from_file``,
``video_preprocess``, ``get_videostream_metadata``, ``decode_audio_from_file``), through the ffmpeg
binary of imageio-ffmpeg instead of PyAV.

Both decode with libavcodec, so the samples and frames are the same; what PyAV does around the
decoder is redone here:
- frames: RGB24 through swscale with bilinear flags and the frame's own colour matrix and range, as
  PyAV's ``to_rgb``; no auto-rotation (PyAV ignores the display matrix); every decoded frame, none
  duplicated or dropped (``-fps_mode passthrough``); presentation times from ``showinfo``.
- audio: the decoder's own sample format, widened losslessly to float64 by ffmpeg and then converted
  as the reference converts (``s16 / 32768``, ``s32 / 2^31``, ``u8 / 128`` — the reference's formula,
  which leaves u8 audio offset by +1); per-frame times and sizes from ``ashowinfo`` so the reference's
  frame-window rule applies unchanged.
- resizing and normalisation: :func:`mlx_ltx.conditioning.resize_and_center_crop` and
  ``normalize_images``, per frame.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction

import mlx.core as mx
import numpy as np

from .conditioning import normalize_images, resize_and_center_crop

_STDERR_TAIL = 1500


class MediaError(ValueError):
    """An input file cannot be used as asked; the message says what to change."""


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _check_file(path, what: str) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{what} not found: {p}")
    if os.path.isdir(p):
        raise MediaError(f"{what} {p} is a folder, not a media file")
    return p


def _run(args: list[str], path: str, what: str, stdout=subprocess.DEVNULL) -> str:
    """Run ffmpeg on ``path``; returns its stderr (where showinfo / ashowinfo print)."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.run([_ffmpeg_exe(), "-hide_banner", "-nostdin", *args], stdout=stdout, stderr=log,
                              check=False)
        log.seek(0)
        err = log.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        tail = err.strip()[-_STDERR_TAIL:]
        if "does not contain any stream" in err or "matches no streams" in err:
            raise MediaError(f"{what} {path} has no {'audio' if 'a:0' in ' '.join(args) else 'video'} stream")
        raise MediaError(f"{what} {path} cannot be decoded (ffmpeg exit code {proc.returncode}); is it a video or "
                         f"audio file?\n{tail}")
    return err


# ---------------------------------------------------------------------------------------------
# Video


@dataclass(frozen=True)
class VideoInfo:
    """``get_videostream_metadata``: frame count, size, and ``fps`` = float(average rate)."""

    frames: int
    height: int
    width: int
    fps: float
    pts_seconds: tuple[float, ...]  # each decoded frame's presentation time


def _stream_fps(stderr: str) -> float:
    """The video stream's average frame rate from ffmpeg's stream line ("23.98 fps"): ffmpeg prints it
    to two decimals; the NTSC rates (n·1000/1001) it stands for are restored."""
    m = re.search(r"Stream #\d+:\d+.*?: Video: .*?([\d.]+)(k?) fps", stderr)
    if not m:
        m = re.search(r"Stream #\d+:\d+.*?: Video: .*?([\d.]+)(k?) tbr", stderr)
    if not m:
        raise MediaError("ffmpeg reported no frame rate for the video stream")
    value = float(m.group(1)) * (1000 if m.group(2) else 1)
    if abs(value - round(value)) > 1e-9:
        ntsc = round(value * 1.001)
        if abs(ntsc * 1000 / 1001 - value) < 0.006:
            return float(Fraction(ntsc * 1000, 1001))
    return value


def probe_video(path) -> VideoInfo:
    """Decode the first video stream once (frames discarded) for its frame count, size, frame rate and
    per-frame presentation times (as PyAV's ``frame.pts · time_base``)."""
    p = _check_file(path, "video file")
    err = _run(["-noautorotate", "-copyts", "-i", p, "-map", "0:v:0", "-fps_mode", "passthrough",
                "-vf", "showinfo", "-f", "null", "-"], p, "video file")
    tb = re.search(r"config in time_base: (\d+)/(\d+)", err)
    pts = [int(x) for x in re.findall(r"\] n:\s*\d+ pts:\s*(-?\d+)", err)]
    size = re.search(r"\] n:\s*\d+ pts:.*? s:(\d+)x(\d+)", err)
    if not pts or tb is None or size is None:
        raise MediaError(f"video file {p} has no decodable video frames")
    time_base = float(Fraction(int(tb.group(1)), int(tb.group(2))))
    return VideoInfo(frames=len(pts), height=int(size.group(2)), width=int(size.group(1)), fps=_stream_fps(err),
                     pts_seconds=tuple(t * time_base for t in pts))


def _read_frames(path: str, info: VideoInfo, indices: list[int]) -> np.ndarray:
    """uint8 (len(indices), H, W, 3) RGB of the given (increasing) decoded-frame indices."""
    if not indices:
        return np.zeros((0, info.height, info.width, 3), np.uint8)
    cmd = [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-noautorotate", "-i", path,
           "-map", "0:v:0", "-fps_mode", "passthrough", "-frames:v", str(indices[-1] + 1),
           "-sws_flags", "bilinear", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    size = info.height * info.width * 3
    out = np.empty((len(indices), info.height, info.width, 3), np.uint8)
    wanted = {i: k for k, i in enumerate(indices)}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        try:
            for i in range(indices[-1] + 1):
                buf = proc.stdout.read(size)
                if len(buf) != size:
                    break
                if i in wanted:
                    out[wanted[i]] = np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3)
            else:
                i += 1
        finally:
            proc.stdout.close()
            code = proc.wait()
        if i != indices[-1] + 1 or code != 0:
            log.seek(0)
            tail = log.read().decode("utf-8", "replace").strip()[-_STDERR_TAIL:]
            raise MediaError(f"video file {path}: ffmpeg stopped after {i} of {indices[-1] + 1} frames "
                             f"(exit code {code})\n{tail}")
    return out


def decode_video_by_frame(path, starting_frame: int = 0, frame_cap: int | None = None) -> np.ndarray:
    """uint8 (F, H, W, 3): the decoded frames from ``starting_frame`` on, at most ``frame_cap``, by
    decode order index (timestamps ignored)."""
    p = _check_file(path, "video file")
    info = probe_video(p)
    stop = info.frames if frame_cap is None else min(info.frames, starting_frame + frame_cap)
    return _read_frames(p, info, list(range(starting_frame, stop)))


def frames_in_window(info: VideoInfo, start_time: float = 0.0, max_duration: float | None = None) -> list[int]:
    """Indices of the frames ``decode_video_from_file`` keeps: presentation time in
    [start_time, start_time + max_duration)."""
    end = start_time + max_duration if max_duration is not None else None
    return [i for i, t in enumerate(info.pts_seconds) if t >= start_time and (end is None or t < end)]


def decode_video_from_file(path, start_time: float = 0.0, max_duration: float | None = None) -> np.ndarray:
    """uint8 (F, H, W, 3): the frames whose presentation time lies in [start_time, start_time + max_duration)."""
    p = _check_file(path, "video file")
    info = probe_video(p)
    return _read_frames(p, info, frames_in_window(info, start_time, max_duration))


def video_preprocess(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (F, H, W, 3) -> float32 (1, 3, F, height, width) in [−1, 1]: each frame resized to cover
    and centre-cropped, then ``x / 127.5 − 1``."""
    if len(frames) == 0:
        raise MediaError("no frames were decoded from the video")
    return np.concatenate([normalize_images(resize_and_center_crop(f, height, width)) for f in frames], axis=2)


def load_video(path, height: int, width: int, num_frames: int, fps: float | None = None, start_time: float = 0.0,
               dtype: mx.Dtype = mx.float32) -> mx.array:
    """A video file -> pixels (1, 3, num_frames, height, width) in [−1, 1].

    ``fps`` None: the first ``num_frames`` decoded frames (IC-LoRA's control video,
    ``decode_video_by_frame(frame_cap=num_frames)``). ``fps`` given: the file's frame rate must be
    ``fps`` and the frames shown in [start_time, start_time + num_frames / fps) are taken
    (``video_latent_from_file``, retake). Too few frames is an error (the reference would encode a
    shorter clip)."""
    p = _check_file(path, "video file")
    info = probe_video(p)
    if fps is None:
        if info.frames < num_frames:
            raise MediaError(f"video {p} has {info.frames} frames; {num_frames} were asked for: use a longer video or "
                             f"num_frames ≤ {info.frames}{_frame_hint(info.frames)}")
        indices = list(range(num_frames))
    else:
        if info.fps != float(fps):
            raise MediaError(f"video {p} runs at {info.fps:g} fps, not {float(fps):g}: pass fps={info.fps:g} or "
                             f"re-encode it at {float(fps):g} fps")
        indices = frames_in_window(info, start_time, num_frames / float(fps))
        if len(indices) < num_frames:
            raise MediaError(f"video {p} has {len(indices)} frames from {start_time:g} s on; {num_frames} at "
                             f"{float(fps):g} fps ({num_frames / float(fps):.3f} s) were asked for: start earlier "
                             f"or ask for fewer frames")
    return mx.array(video_preprocess(_read_frames(p, info, indices), height, width)).astype(dtype)


def _frame_hint(n: int) -> str:
    k = (n - 1) // 8
    return f" (8k+1: {8 * k + 1})" if n >= 1 else ""


def check_time_window(start_time: float, end_time: float, duration: float) -> None:
    """Retake's window ``[start_time, end_time)`` must be non-empty and inside a clip of ``duration`` s."""
    if not start_time < end_time:
        raise MediaError(f"start_time ({start_time}) must be less than end_time ({end_time})")
    if start_time < 0 or end_time > duration + 1e-9:
        raise MediaError(f"the window [{start_time:g}, {end_time:g}) s lies outside the clip, which lasts "
                         f"{duration:.3f} s: choose start_time ≥ 0 and end_time ≤ {duration:.3f}")


# ---------------------------------------------------------------------------------------------
# Audio


@dataclass(frozen=True)
class _AudioFrames:
    sample_rate: int
    channels: int
    sample_format: str
    pts: list[int]  # in 1 / sample_rate
    sizes: list[int]


def _audio_frames(stderr: str) -> _AudioFrames:
    rows = re.findall(r"\] n:\s*\d+ pts:\s*(-?\d+) .*?fmt:(\w+) .*?rate:(\d+) .*?nb_samples:(\d+)", stderr)
    if not rows:
        raise MediaError("no audio frames were decoded")
    chans = re.search(r"\] n:\s*\d+ pts:.*?channels:(\d+)", stderr)
    return _AudioFrames(sample_rate=int(rows[0][2]), channels=int(chans.group(1)) if chans else 0,
                        sample_format=rows[0][1], pts=[int(r[0]) for r in rows], sizes=[int(r[3]) for r in rows])


def decode_audio_from_file(path, start_time: float = 0.0,
                           max_duration: float | None = None) -> tuple[np.ndarray, int]:
    """float32 (C, S) in [−1, 1] at the stream's rate, and the rate: the decoded frames that end at or
    after ``start_time`` and start no later than its end, joined, trimmed to start at ``start_time``
    and to at most ``max_duration`` seconds.

    Without ``max_duration`` this reads to the end of the decoded stream; the reference stops at the
    stream's declared duration instead (measured from 0 even when the stream starts later, and
    keeping AAC's padding past the end that this ffmpeg trims), so its tail can differ there."""
    p = _check_file(path, "audio file")
    with tempfile.TemporaryFile() as raw:
        err = _run(["-copyts", "-i", p, "-map", "0:a:0", "-af", "ashowinfo", "-f", "f64le", "-"], p, "audio file",
                   stdout=raw)
        raw.seek(0)
        data = np.frombuffer(raw.read(), dtype="<f8")
    fr = _audio_frames(err)
    channels = fr.channels or (data.size // max(sum(fr.sizes), 1))
    x = data.reshape(-1, channels).T
    # ffmpeg widened u8 as (v − 128) / 128; the reference divides the raw byte by 128
    if fr.sample_format in ("u8", "u8p"):
        x = x + 1.0
    sr = fr.sample_rate
    end_time = start_time + max_duration if max_duration else None
    offsets = np.concatenate([[0], np.cumsum(fr.sizes)])
    first, stop, first_time = None, None, None
    for k, (pts, n) in enumerate(zip(fr.pts, fr.sizes)):
        t = float(Fraction(pts, sr))
        if t + n / sr < start_time:
            continue
        if end_time is not None and t > end_time:
            break
        if first is None:
            first, first_time = k, t
        stop = k + 1
    if first is None:
        raise MediaError(f"audio file {p} has no audio from {start_time:g} s on")
    audio = x[:, offsets[first]:offsets[stop]]
    skip = round((start_time - first_time) * sr)
    if skip > 0:
        audio = audio[:, skip:]
    if max_duration is not None:
        audio = audio[:, :round(max_duration * sr)]
    return audio.astype(np.float32), sr


def to_stereo(waveform: np.ndarray) -> np.ndarray:
    """(C, S) -> (2, S): mono duplicated, stereo kept. The reference has no rule (a mono waveform fails
    in the audio encoder's first convolution); more channels are refused rather than mixed down."""
    c = waveform.shape[0]
    if c == 2:
        return waveform
    if c == 1:
        return np.concatenate([waveform, waveform], axis=0)
    raise MediaError(f"the audio has {c} channels; the audio VAE takes stereo: mix it down first "
                     f"(ffmpeg -i IN -ac 2 OUT.wav)")


def load_audio(path, start_time: float = 0.0, max_duration: float | None = None, *,
               channels: int | None = None) -> tuple[np.ndarray, int]:
    """An audio file (or a video's audio stream) -> (float32 waveform (C, S), sample rate).

    The reference's ``decode_audio_from_file(path, start_time, max_duration)``, at the file's own rate
    (the encoder's ``AudioProcessor`` resamples; a2vid muxes this waveform as it is); ``channels=2``
    makes it stereo (:func:`to_stereo`). With ``max_duration``, audio shorter than that is an error
    (the reference would encode a shorter latent)."""
    if start_time < 0:
        raise MediaError(f"start_time must be ≥ 0; got {start_time}")
    if max_duration is not None and max_duration <= 0:
        raise MediaError(f"max_duration must be positive; got {max_duration}")
    wave, sr = decode_audio_from_file(path, start_time, max_duration)
    if max_duration is not None:
        need = round(max_duration * sr)
        if wave.shape[1] < need:
            have = wave.shape[1] / sr
            raise MediaError(f"audio {os.fspath(path)} has {have:.3f} s from {start_time:g} s on; {max_duration:.3f} s "
                             f"were asked for (the video's length): use longer audio, start earlier, or generate "
                             f"fewer frames")
    if channels is not None:
        if channels != 2:
            raise MediaError(f"channels must be None (as decoded) or 2 (the audio VAE's stereo); got {channels}")
        wave = to_stereo(wave)
    return wave, sr


def audio_duration(path) -> float:
    """Seconds of decoded audio in the file's first audio stream."""
    wave, sr = decode_audio_from_file(path)
    return wave.shape[1] / sr
