"""mp4 / wav writing: stream properties read back with ffmpeg, full stream durations, and
atomicity (failed or interrupted writes leave neither a file nor a temporary behind, and an
existing target untouched)."""

import os
import re
import subprocess
import wave

import imageio_ffmpeg
import numpy as np
import pytest

from mlx_ltx import media
from mlx_ltx.media import FFmpegError, video_to_uint8, write_video, write_wav

FPS = 24
FRAMES, HEIGHT, WIDTH = 25, 48, 64
SAMPLE_RATE = 48000
AAC_FRAME = 1024  # samples per AAC frame: the priming / final-frame padding bound
TONES = (440.0, 660.0)  # left, right: tells the channels apart


def _frames(n=FRAMES, h=HEIGHT, w=WIDTH) -> np.ndarray:
    """Smooth moving gradients (lossy coding keeps them close)."""
    t = np.arange(n)[:, None, None, None]
    y = np.arange(h)[None, :, None, None] / h
    x = np.arange(w)[None, None, :, None] / w
    c = np.array([0.2, 0.5, 0.8])
    f = np.clip(0.15 + 0.6 * (x * c + y * (1 - c)) + 0.1 * np.sin(t / 4 + c * 6), 0, 1)
    return np.round(np.broadcast_to(f, (n, h, w, 3)) * 255).astype(np.uint8)


def _stereo_sine(samples: int) -> np.ndarray:
    n = np.arange(samples) / SAMPLE_RATE
    return np.stack([0.5 * np.sin(2 * np.pi * f * n) for f in TONES]).astype(np.float32)


def _exact_samples() -> int:
    """Samples spanning exactly the video (FRAMES / FPS s); the test shape is chosen so it is whole."""
    samples = FRAMES * SAMPLE_RATE / FPS
    assert samples == int(samples)
    return int(samples)


def _ffmpeg_info(path) -> str:
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                         capture_output=True, text=True, check=False)
    return out.stderr


def _decode_audio(path) -> np.ndarray:
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a:0",
                          "-f", "s16le", "-acodec", "pcm_s16le", "-"], capture_output=True, check=True)
    return np.frombuffer(out.stdout, np.int16).reshape(-1, 2)


def _read_frames(path) -> tuple[dict, np.ndarray]:
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return meta, np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])


def _leftovers(folder, keep=()) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_write_video_with_audio_and_wav(tmp_path):
    frames = _frames()
    samples = _exact_samples()
    audio = _stereo_sine(samples)
    out = write_video(tmp_path / "clip.mp4", frames, FPS, audio, SAMPLE_RATE, wav_path=tmp_path / "clip.wav")
    assert out == tmp_path / "clip.mp4"
    assert _leftovers(tmp_path) == ["clip.mp4", "clip.wav"]

    n, _ = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert n == FRAMES
    meta, back = _read_frames(out)
    assert meta["size"] == (WIDTH, HEIGHT) and back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 4  # lossy H.264 + 4:2:0 chroma on smooth content

    info = _ffmpeg_info(out)
    m = re.search(r"Audio: aac.*?, (\d+) Hz, (\w+)", info)
    assert m, info
    assert int(m.group(1)) == SAMPLE_RATE and m.group(2) == "stereo"
    assert "bt709" in info  # the reference's colour tags

    pcm = _decode_audio(out)
    # AAC codes whole 1024-sample frames plus encoder priming; the mp4 edit list trims them, so the
    # decoded length is the request up to one AAC frame (no -shortest: the audio is not cut)
    assert abs(pcm.shape[0] - samples) <= AAC_FRAME
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64), axis=0))
    peaks = np.fft.rfftfreq(pcm.shape[0], 1 / SAMPLE_RATE)[spectrum.argmax(axis=0)]
    np.testing.assert_allclose(peaks, TONES, atol=2.0)

    with wave.open(str(tmp_path / "clip.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, SAMPLE_RATE, samples)
        data = np.frombuffer(w.readframes(samples), "<i2").reshape(-1, 2)
    np.testing.assert_array_equal(data, (audio.T * 32767.0).astype(np.int16))


def test_streams_keep_their_own_lengths(tmp_path):
    """Audio twice as long as the video stays whole (a -shortest mux would cut it)."""
    samples = 2 * _exact_samples()
    out = write_video(tmp_path / "long.mp4", _frames(), FPS, _stereo_sine(samples).T, SAMPLE_RATE)
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == FRAMES
    assert abs(_decode_audio(out).shape[0] - samples) <= AAC_FRAME


def test_video_only_and_float_frames(tmp_path):
    frames = _frames()
    out = write_video(tmp_path / "silent.mp4", frames.astype(np.float32) / 255.0, FPS)
    info = _ffmpeg_info(out)
    assert "Video: h264" in info and "Audio:" not in info
    _, back = _read_frames(out)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 4
    assert _leftovers(tmp_path) == ["silent.mp4"]


def test_chunked_frames_and_decoder_pixels(tmp_path):
    """An iterable of chunks (a streaming decode) gives the same frame count; decoder pixels in
    [-1, 1] convert with the reference's clamp((x + 1) / 2, 0, 1)."""
    pixels = np.linspace(-1.2, 1.2, 3 * 9 * 8 * 6, dtype=np.float32).reshape(1, 3, 9, 8, 6)
    frames = video_to_uint8(pixels)
    assert frames.shape == (9, 8, 6, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, np.round(np.clip((pixels[0] + 1) / 2, 0, 1) * 255).transpose(1, 2, 3, 0))
    chunks = (_frames()[i:i + 8] for i in range(0, FRAMES, 8))
    out = write_video(tmp_path / "chunks.mp4", chunks, FPS)
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == FRAMES


def _interrupting_chunks():
    yield _frames()[:10]
    raise KeyboardInterrupt


class _WaitInterrupted(subprocess.Popen):
    """ffmpeg running and fed, interrupted while Python waits for it to finish."""

    interrupted = False

    def wait(self, timeout=None):
        if not _WaitInterrupted.interrupted:
            _WaitInterrupted.interrupted = True
            raise KeyboardInterrupt
        return super().wait(timeout)


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, existing):
    target, wav = tmp_path / "clip.mp4", tmp_path / "clip.wav"
    if existing:
        target.write_bytes(b"previous video")
        wav.write_bytes(b"previous wav")
    audio = _stereo_sine(_exact_samples())
    with pytest.raises(KeyboardInterrupt):
        write_video(target, _interrupting_chunks(), FPS, audio, SAMPLE_RATE, wav_path=wav)
    _WaitInterrupted.interrupted = False
    monkeypatch.setattr(media.subprocess, "Popen", _WaitInterrupted)
    with pytest.raises(KeyboardInterrupt):
        write_video(target, _frames(), FPS, audio, SAMPLE_RATE, wav_path=wav)
    assert _WaitInterrupted.interrupted
    if existing:
        assert target.read_bytes() == b"previous video" and wav.read_bytes() == b"previous wav"
        assert _leftovers(tmp_path) == ["clip.mp4", "clip.wav"]
    else:
        assert _leftovers(tmp_path) == []


def test_ffmpeg_failure_keeps_existing_target(tmp_path):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"previous video")
    with pytest.raises(FFmpegError, match="preset"):  # libx264 rejects it; ffmpeg's stderr is in the message
        write_video(target, _frames(), FPS, preset="no-such-preset")
    assert target.read_bytes() == b"previous video"
    assert _leftovers(tmp_path) == ["clip.mp4"]


def test_write_wav(tmp_path):
    audio = _stereo_sine(1000)
    write_wav(tmp_path / "a.wav", audio[None], SAMPLE_RATE)  # the vocoder's (1, 2, S)
    with wave.open(str(tmp_path / "a.wav")) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, SAMPLE_RATE, 1000)
    assert _leftovers(tmp_path) == ["a.wav"]


@pytest.mark.parametrize("kwargs,match", [
    ({"frames": _frames(4, 48, 63)}, "even"),
    ({"frames": _frames(4, 47, 64)}, "even"),
    ({"frames": np.zeros((4, 48, 64), np.uint8)}, r"\(F, H, W, 3\)"),
    ({"frames": np.zeros((4, 48, 64, 3), np.int32)}, "uint8"),
    ({"frames": _frames(4).astype(np.float32) / 127.5 - 1}, r"\[0, 1\]"),
    ({"audio": _stereo_sine(100)}, "sample_rate"),
    ({"audio": np.zeros((3, 100), np.float32), "sample_rate": SAMPLE_RATE}, "stereo"),
    ({"audio": np.full((2, 100), np.nan, np.float32), "sample_rate": SAMPLE_RATE}, "NaN"),
    ({"fps": 0}, "fps"),
    ({"crf": 60}, "crf"),
    ({"wav_path": "x.wav"}, "wav_path"),
], ids=["odd-width", "odd-height", "no-channels", "int32", "minus-one-to-one", "no-rate", "three-channels", "nan",
        "fps", "crf", "wav-without-audio"])
def test_invalid_inputs_raise_before_writing(tmp_path, kwargs, match):
    args = {"frames": _frames(4), "fps": FPS}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        write_video(tmp_path / "clip.mp4", **args)
    assert _leftovers(tmp_path) == []


def test_unwritable_folder_is_refused_cleanly(tmp_path, capsys):
    """/proc accepts os.access(W_OK) for root but no new file: the check creates one to know, and
    a wav write that cannot open its file raises OSError without a stray Wave_write traceback."""
    from mlx_ltx.media import _write_wav_file, check_output_path

    if os.path.isdir("/proc"):
        with pytest.raises(ValueError, match="is not writable"):
            check_output_path("/proc/x.mp4")
    check_output_path(tmp_path / "ok.mp4")
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    with pytest.raises(OSError):
        _write_wav_file(tmp_path / "missing" / "x.wav", np.zeros((2, 8), np.float32), 16000)
    import gc

    gc.collect()
    assert "Wave_write" not in capsys.readouterr().err
