"""Write the generated clip: H.264 + AAC mp4 through the ffmpeg binary of ``imageio-ffmpeg``,
and 16-bit PCM wav through the stdlib ``wave`` module.

Encoding follows the reference's ``ltx_pipelines.utils.media_io.encode_video`` (libx264,
``crf`` 19, preset ``veryfast``, yuv420p with BT.709 limited-range coefficients and tags; AAC
stereo at the waveform's own rate; audio samples clipped to [−1, 1] and scaled by 32767 with
truncation, as its ``write_audio``). Video and audio keep their full lengths: there is no
``-shortest``, which would cut the longer stream.

Every write is atomic: ffmpeg writes a hidden temporary file next to the target, which is
renamed over the target only once ffmpeg has succeeded. On any failure or interruption
(KeyboardInterrupt included) ffmpeg is stopped, the temporary files are removed and an existing
target is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import wave
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

DEFAULT_CRF = 19
DEFAULT_PRESET = "veryfast"
AUDIO_BITRATE = "192k"
_STDERR_TAIL = 2000


class FFmpegError(RuntimeError):
    """ffmpeg exited with an error; the message ends with the tail of its stderr."""


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _to_numpy(x) -> np.ndarray:
    if type(x).__module__.startswith("mlx"):
        import mlx.core as mx

        if mx.issubdtype(x.dtype, mx.floating):
            x = x.astype(mx.float32)  # numpy has no bfloat16
    return np.asarray(x)


def video_to_unit(pixels) -> np.ndarray:
    """Decoder pixels in the reference layout, (B=1, 3, F, H, W) or (3, F, H, W) in [−1, 1], ->
    float32 frames (F, H, W, 3) in [0, 1], the reference's ``clamp((x + 1) / 2, 0, 1)``."""
    x = _to_numpy(pixels).astype(np.float32)
    if x.ndim == 5:
        if x.shape[0] != 1:
            raise ValueError(f"video_to_unit: one video at a time; got a batch of {x.shape[0]}")
        x = x[0]
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"video_to_unit: expected pixels (1, 3, F, H, W) or (3, F, H, W); got {x.shape}")
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0).transpose(1, 2, 3, 0)


def unit_to_uint8(frames: np.ndarray) -> np.ndarray:
    """float frames in [0, 1] -> uint8 (rounded)."""
    return np.round(frames * 255.0).astype(np.uint8)


def video_to_uint8(pixels) -> np.ndarray:
    """Decoder pixels (see :func:`video_to_unit`) -> uint8 frames (F, H, W, 3)."""
    return unit_to_uint8(video_to_unit(pixels))


def _frames_chunk(chunk, what: str) -> np.ndarray:
    """Validate one (F, H, W, 3) chunk: uint8, or float in [0, 1] (rounded to 8 bits)."""
    x = _to_numpy(chunk)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{what}: frames must be RGB (F, H, W, 3) (or one frame (H, W, 3)); got shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: frames must be uint8 or float in [0, 1]; got dtype {x.dtype}")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise ValueError(f"{what}: float frames must lie in [0, 1]; got values in [{lo:.4g}, {hi:.4g}] "
                         f"(decoder pixels in [-1, 1]: convert them with mlx_ltx.media.video_to_uint8)")
    return np.round(x.astype(np.float32) * 255.0).astype(np.uint8)


def _iter_frame_chunks(frames) -> Iterator[np.ndarray]:
    """An array is one chunk; any other iterable yields chunks (e.g. a streaming VAE decode)."""
    if isinstance(frames, np.ndarray) or type(frames).__module__.startswith("mlx"):
        yield _frames_chunk(frames, "write_video")
        return
    if not isinstance(frames, Iterable):
        raise TypeError(f"write_video: frames must be an array (F, H, W, 3) or an iterable of such arrays; "
                        f"got {type(frames).__name__}")
    for i, chunk in enumerate(frames):
        yield _frames_chunk(chunk, f"write_video (chunk {i})")


def _stereo_int16(audio, sample_rate, what: str) -> tuple[np.ndarray, int]:
    """(S, 2) int16 from a float waveform (2, S) or (S, 2) in [−1, 1]; the reference's rule
    decides a (2, 2) array: it is (S, 2)."""
    if sample_rate is None:
        raise ValueError(f"{what}: audio given without sample_rate (the vocoder's output_sampling_rate)")
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or int(sample_rate) <= 0:
        raise ValueError(f"{what}: sample_rate must be a positive integer; got {sample_rate!r}")
    x = _to_numpy(audio)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]  # the vocoder's (B=1, 2, S)
    if x.ndim != 2 or 2 not in x.shape:
        raise ValueError(f"{what}: audio must be a stereo waveform (2, S) or (S, 2); got shape {x.shape}")
    if x.shape[1] != 2:
        x = x.T
    if x.shape[0] == 0:
        raise ValueError(f"{what}: audio is empty; pass audio=None for a video without sound")
    if x.dtype == np.int16:
        return np.ascontiguousarray(x), int(sample_rate)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: audio must be float in [-1, 1] (or int16); got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: audio contains NaN or infinite samples")
    # truncation toward zero after clipping, as the reference's ``(x * 32767).to(int16)``
    return (np.clip(x.astype(np.float32), -1.0, 1.0) * 32767.0).astype(np.int16), int(sample_rate)


def fit_audio_to_video(audio, num_frames: int, fps: float, sample_rate: int) -> np.ndarray:
    """Pad with silence or trim the end so the waveform (channels first, (C, S) or (1, C, S))
    lasts exactly ``num_frames / fps`` seconds. The reference sizes the audio latent as
    ``round(duration · 25)`` frames and decodes ``4·T − 3`` mel frames, so its waveform is up to
    40 ms shorter than the video (97 frames at 24 fps: 4.010 s of audio for 4.042 s of video)
    and it muxes it as it is; here both streams end together."""
    x = _to_numpy(audio)
    target = round(num_frames * sample_rate / fps)
    have = x.shape[-1]
    if have >= target:
        return x[..., :target]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, target - have)]
    return np.pad(x, pad)


def check_output_path(path, suffix: str | tuple[str, ...] = ".mp4", *, overwrite: bool = False,
                      what: str = "output_path") -> Path:
    """Refuse an output path before any work is done: it must end in ``suffix`` (or one of them),
    must not be a folder, its folder must exist and be writable, and an existing file is refused
    unless ``overwrite`` (then it is replaced atomically only once the new file is complete).
    ``what`` names the argument (or CLI flag) in the errors."""
    target = Path(path)
    suffixes = (suffix,) if isinstance(suffix, str) else tuple(suffix)
    suffix = " or ".join(suffixes)
    if target.suffix.lower() not in suffixes:
        raise ValueError(f"{what} must end in {suffix}; got {os.fspath(path)!r}")
    if target.is_dir():
        raise ValueError(f"{what} {os.fspath(path)!r} is a folder; give a file name ending in {suffix}")
    folder = target.parent
    if not folder.is_dir():
        raise ValueError(f"{what} {os.fspath(path)!r}: folder {os.fspath(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or not _can_create_in(folder):
        raise ValueError(f"{what} {os.fspath(path)!r}: folder {os.fspath(folder)!r} is not writable")
    if target.exists() and not overwrite:
        raise ValueError(f"{what} {os.fspath(path)!r} already exists; pass overwrite=True (--overwrite) to replace "
                         f"it")
    return target


def _can_create_in(folder: Path) -> bool:
    """Create and remove a file there: ``os.access`` says yes to root everywhere, even in /proc."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".mlx_ltx-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _partial_path(target: Path) -> Path:
    """A hidden, unique name in the target's folder (same filesystem, so the rename is atomic);
    it keeps the suffix so ffmpeg picks the container from it."""
    return target.with_name(f".{target.stem}.{os.getpid()}-{secrets.token_hex(4)}.partial{target.suffix}")


def _unlink(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


@contextlib.contextmanager
def _sigint_held():
    """Hold a Ctrl-C (SIGINT) back while the block runs, then deliver it to the previous handler
    (KeyboardInterrupt by default). Around ``subprocess.Popen``: a KeyboardInterrupt raised inside
    it, once ffmpeg runs but before the handle is returned, left ffmpeg running unseen by the
    cleanup, and it wrote its temporary file after the cleanup had run (tests/test_interrupt.py).
    Signal handlers belong to the main thread: elsewhere this holds nothing back."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        if callable(previous):
            previous(signal.SIGINT, held[0])
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


def _write_wav_file(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    # the file is opened first: wave.open(path) that fails to open it leaves a half-built
    # Wave_write whose __del__ prints a traceback
    with open(path, "wb") as f, wave.open(f, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.astype("<i2").tobytes())


def write_wav(path, audio, sample_rate: int) -> Path:
    """Write a stereo 16-bit PCM .wav atomically; ``audio`` as in :func:`write_video`."""
    samples, rate = _stereo_int16(audio, sample_rate, "write_wav")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_path(target)
    try:
        _write_wav_file(tmp, samples, rate)
        os.replace(tmp, target)
    except BaseException:
        _unlink(tmp)
        raise
    return target


AUDIO_OUTPUT_SUFFIXES = (".wav", ".m4a")


def write_audio(path, audio, sample_rate: int) -> Path:
    """An audio-only output, atomically: 16-bit PCM for ``.wav``, AAC (the mp4 writer's bitrate) in
    an ``.m4a`` for ``.m4a``; ``audio`` as in :func:`write_video`."""
    target = Path(path)
    if target.suffix.lower() == ".wav":
        return write_wav(target, audio, sample_rate)
    if target.suffix.lower() != ".m4a":
        raise ValueError(f"write_audio: the file must end in {' or '.join(AUDIO_OUTPUT_SUFFIXES)}; got {target}")
    samples, rate = _stereo_int16(audio, sample_rate, "write_audio")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, wav = _partial_path(target), _partial_path(target.with_suffix(".wav"))
    with tempfile.TemporaryFile() as log:
        try:
            _write_wav_file(wav, samples, rate)
            cmd = [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav),
                   "-c:a", "aac", "-b:a", AUDIO_BITRATE, "-f", "ipod", str(tmp)]
            if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=log).returncode != 0:
                raise RuntimeError(f"ffmpeg could not write {target}: {_stderr_tail(log)}")
            os.replace(tmp, target)
        except BaseException:
            _unlink(tmp)
            raise
        finally:
            _unlink(wav)
    return target


def _stderr_tail(log) -> str:
    log.seek(0)
    text = log.read().decode("utf-8", "replace").strip()
    return text[-_STDERR_TAIL:] if text else "(ffmpeg printed nothing)"


def _ffmpeg_command(out: Path, width: int, height: int, fps: Fraction, wav: Path | None, crf: int,
                    preset: str) -> list[str]:
    cmd = [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(fps), "-i", "pipe:0"]
    if wav is not None:
        cmd += ["-i", str(wav)]
    cmd += ["-map", "0:v:0"] + (["-map", "1:a:0"] if wav is not None else [])
    # ffmpeg's RGB->YUV default is BT.601; the reference converts with BT.709, limited range, and
    # tags it (setparams: the encoder takes the tags from the frames, not from -color_* alone)
    vf = ("scale=out_color_matrix=bt709:out_range=tv,"
          "setparams=range=tv:colorspace=bt709:color_primaries=bt709:color_trc=bt709")
    cmd += ["-vf", vf, "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p"]
    if wav is not None:
        cmd += ["-c:a", "aac", "-b:a", AUDIO_BITRATE]
    return cmd + ["-movflags", "+faststart", str(out)]


def write_video(path, frames, fps: float, audio=None, sample_rate: int | None = None, *, crf: int = DEFAULT_CRF,
                preset: str = DEFAULT_PRESET, wav_path=None) -> Path:
    """Encode ``frames`` (uint8 (F, H, W, 3), or float in [0, 1]; or an iterable of such chunks)
    at ``fps`` to an H.264 mp4, with ``audio`` (float waveform (2, S) or (S, 2) in [−1, 1] at
    ``sample_rate`` Hz) as AAC, or video-only when ``audio`` is None. ``wav_path`` also writes
    the audio as 16-bit PCM .wav. H and W must be even (yuv420p). Returns the mp4 path."""
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not fps > 0:
        raise ValueError(f"write_video: fps must be a positive number; got {fps!r}")
    rate_q = fps if isinstance(fps, Fraction) else Fraction(float(fps)).limit_denominator(1_000_000)
    if isinstance(crf, bool) or not isinstance(crf, numbers.Real) or not 0 <= crf <= 51:
        raise ValueError(f"write_video: crf must be in [0, 51] (libx264, 8-bit); got {crf!r}")
    if wav_path is not None and audio is None:
        raise ValueError("write_video: wav_path given without audio")
    samples, rate = _stereo_int16(audio, sample_rate, "write_video") if audio is not None else (None, None)
    target = Path(path)
    chunks = _iter_frame_chunks(frames)
    first = next(chunks, None)
    if first is None or first.shape[0] == 0:
        raise ValueError("write_video: no frames")
    height, width = first.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"write_video: H.264 yuv420p needs even sizes; got {width}x{height} (W x H): crop or pad "
                         f"to {width + width % 2}x{height + height % 2} or {width - width % 2}x{height - height % 2}")
    target.parent.mkdir(parents=True, exist_ok=True)
    wav_target = Path(wav_path) if wav_path is not None else None
    if wav_target is not None:
        wav_target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_path(target)
    wav_tmp = _partial_path(wav_target if wav_target is not None else target.with_suffix(".wav")) \
        if samples is not None else None
    # stderr to a file, not a pipe: a chatty ffmpeg could fill the pipe and stall on write
    with tempfile.TemporaryFile() as log:
        try:
            _encode(target, chunks, first, width, height, rate_q, samples, rate, tmp, wav_tmp, wav_target, crf,
                    preset, log)
        finally:
            _unlink(wav_tmp)
    return target


def _encode(target: Path, chunks: Iterator[np.ndarray], first: np.ndarray, width: int, height: int, fps: Fraction,
            samples: np.ndarray | None, rate: int | None, tmp: Path, wav_tmp: Path | None, wav_target: Path | None,
            crf: int, preset: str, log) -> None:
    """Run ffmpeg into ``tmp``, then rename into place; on any exception stop ffmpeg and remove
    ``tmp`` (``wav_tmp`` is the caller's to remove)."""
    proc = None
    try:
        if samples is not None:
            _write_wav_file(wav_tmp, samples, rate)
        cmd = _ffmpeg_command(tmp, width, height, fps, wav_tmp, crf, preset)
        # own session: a terminal Ctrl-C reaches Python only, which stops ffmpeg and cleans up;
        # held while ffmpeg starts, so that ``proc`` is set when the KeyboardInterrupt is raised
        with _sigint_held():
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                                    start_new_session=True)
        chunk = first
        while chunk is not None:
            if chunk.shape[1:3] != (height, width):
                raise ValueError(f"write_video: chunk of {chunk.shape[2]}x{chunk.shape[1]} frames after "
                                 f"{width}x{height} ones; all frames must have one size")
            try:
                proc.stdin.write(chunk.tobytes())
            except BrokenPipeError:
                break  # ffmpeg died; its exit code and stderr tell why
            chunk = next(chunks, None)
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        code = proc.wait()
        if code != 0:
            raise FFmpegError(f"ffmpeg failed (exit code {code}) writing {target}:\n{_stderr_tail(log)}")
        os.replace(tmp, target)
        if wav_target is not None:
            os.replace(wav_tmp, wav_target)
    except BaseException:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            try:
                proc.stdin.close()
            except OSError:
                pass
        _unlink(tmp)
        raise
