"""Input video and audio files read as the reference's media_io reads them (PyAV), here through the
imageio-ffmpeg binary; goldens from tests/reference/media_goldens.py (fixture set media-s1234, loaded
directly: its manifest generation "media" keeps it out of reference_data.fixture_dirs()).

Bounds (see the generator's manifest for the versions): decoded frames are bit-identical; resized
pixels differ from torch's bilinear kernel by float rounding only (≤ 4e-6 on [−1, 1]); PCM and MP3
samples are bit-identical. AAC is not: this ffmpeg (9.0.2) and PyAV's libavcodec (62, FFmpeg 8) decode
the fixture's AAC stream differently (max 0.44 in the first frame, RMS 16 % of the signal), though
they agree on AAC that ffmpeg 9 encodes; the test pins that bound so a change shows."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from mlx_ltx import media
from mlx_ltx import media_inputs as mi

MEDIA = Path(__file__).parent / "reference" / "fixtures" / "media-s1234"
MANIFEST = json.loads((MEDIA / "manifest.json").read_text())
FILES = {k: MEDIA / v["file"] for k, v in MANIFEST["files"].items()}
PIXEL_BOUND = 4e-6


@pytest.fixture(scope="module")
def golden():
    return load_file(MEDIA / "golden_media.safetensors")


@pytest.mark.parametrize("key", ["clip_mp4", "ntsc_mp4"])
def test_metadata_and_decoded_frames(golden, key):
    info = mi.probe_video(FILES[key])
    assert [info.frames, info.height, info.width] == golden[f"video.meta.{key}"].tolist()
    assert info.fps == float(golden[f"video.fps.{key}"][0])
    np.testing.assert_array_equal(mi.decode_video_by_frame(FILES[key]), golden[f"video.rgb.{key}"])


@pytest.mark.parametrize("name", list(MANIFEST["video_by_frame"]))
def test_video_by_frame(golden, name):
    h, w, cap = MANIFEST["video_by_frame"][name]
    pixels = mi.video_preprocess(mi.decode_video_by_frame(FILES["clip_mp4"], frame_cap=cap), h, w)
    assert pixels.dtype == np.float32
    ref = golden[f"video.by_frame.{name}"]
    assert pixels.shape == ref.shape
    assert np.abs(pixels - ref).max() <= PIXEL_BOUND
    loaded = mi.load_video(FILES["clip_mp4"], h, w, cap)  # IC-LoRA's rule: the first num_frames frames
    np.testing.assert_array_equal(np.array(loaded), pixels)


def test_video_by_time(golden):
    h, w, start, dur = MANIFEST["video_by_time"]["window"]
    ref = golden["video.by_time.window"]
    pixels = mi.video_preprocess(mi.decode_video_from_file(FILES["clip_mp4"], start, dur), h, w)
    assert pixels.shape == ref.shape and np.abs(pixels - ref).max() <= PIXEL_BOUND
    fps = MANIFEST["files"]["clip_mp4"]["fps"]
    loaded = mi.load_video(FILES["clip_mp4"], h, w, ref.shape[2], fps=fps, start_time=start)
    np.testing.assert_array_equal(np.array(loaded), pixels)


def test_whole_clip_at_its_own_size_is_the_decoded_frames(golden):
    """Retake reads the whole clip at its own size: the resize is the identity (checked in the generator
    against the reference's decode_video_from_file + video_preprocess)."""
    m = MANIFEST["files"]["clip_mp4"]
    pixels = mi.load_video(FILES["clip_mp4"], m["height"], m["width"], m["frames"], fps=m["fps"], dtype=mx.bfloat16)
    assert pixels.dtype == mx.bfloat16
    rgb = golden["video.rgb.clip_mp4"].astype(np.float32).transpose(3, 0, 1, 2)[None]
    np.testing.assert_array_equal(np.array(pixels.astype(mx.float32)),
                                  np.array(mx.array(rgb / np.float32(127.5) - 1).astype(mx.bfloat16).astype(mx.float32)))


@pytest.mark.parametrize("name", [n for n, c in MANIFEST["audio_cases"].items() if not c[0] == "clip_mp4"])
def test_decode_audio_pcm_and_mp3(golden, name):
    key, start, dur = MANIFEST["audio_cases"][name]
    wave, sr = mi.decode_audio_from_file(FILES[key], start, dur)
    ref = golden[f"audio.decoded.{name}"]
    assert sr == int(golden[f"audio.rate.{name}"][0]) and wave.dtype == np.float32
    if dur is None and key == "mono_mp3":
        # the reference stops at the stream's duration counted from 0 (the mp3 starts 1105 samples late)
        assert wave.shape[1] > ref.shape[1]
        wave = wave[:, :ref.shape[1]]
    np.testing.assert_array_equal(wave, ref)


@pytest.mark.parametrize("name", [n for n, c in MANIFEST["audio_cases"].items() if c[0] == "clip_mp4"])
def test_decode_audio_aac_bound(golden, name):
    key, start, dur = MANIFEST["audio_cases"][name]
    wave, sr = mi.decode_audio_from_file(FILES[key], start, dur)
    ref = golden[f"audio.decoded.{name}"]
    assert wave.shape == ref.shape and sr == int(golden[f"audio.rate.{name}"][0])
    rms = np.sqrt(np.mean((wave - ref) ** 2)) / np.sqrt(np.mean(ref ** 2))
    assert np.abs(wave - ref).max() <= 0.5 and rms <= 0.2


def test_aac_written_by_this_ffmpeg_round_trips(tmp_path):
    """The same sample positions and length as the source, within AAC's loss (a2vid's output check)."""
    sr, n = 48000, 24000
    t = np.arange(n) / sr
    tone = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.4 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    path = media.write_video(tmp_path / "tone.mp4", np.zeros((12, 16, 16, 3), np.uint8), 24, tone, sr)
    wave, rate = mi.load_audio(path, 0.0, 0.5)
    assert rate == sr and wave.shape == (2, n)
    assert np.sqrt(np.mean((wave[:, 2048:-2048] - tone[:, 2048:-2048]) ** 2)) < 0.01


def test_load_audio_to_stereo(golden):
    wave, sr = mi.load_audio(FILES["mono24_wav"], channels=2)
    ref = golden["audio.decoded.wav24_full"]
    np.testing.assert_array_equal(wave, np.concatenate([ref, ref]))
    with pytest.raises(mi.MediaError, match="stereo"):
        mi.to_stereo(np.zeros((6, 10), np.float32))


# ----------------------------------------------------------------------------------------- errors

def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        mi.load_video(tmp_path / "nope.mp4", 32, 32, 9)
    with pytest.raises(FileNotFoundError, match="not found"):
        mi.load_audio(tmp_path / "nope.wav")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(mi.MediaError, match="cannot be decoded"):
        mi.load_video(bad, 32, 32, 9)
    with pytest.raises(mi.MediaError, match="folder"):
        mi.load_audio(tmp_path)


def test_no_audio_stream():
    with pytest.raises(mi.MediaError, match="no audio stream"):
        mi.load_audio(FILES["ntsc_mp4"])


def test_audio_shorter_than_the_video():
    with pytest.raises(mi.MediaError, match="were asked for"):
        mi.load_audio(FILES["tone_wav"], 0.0, 1.0)
    with pytest.raises(mi.MediaError, match="were asked for"):
        mi.load_audio(FILES["tone_wav"], 0.4, 0.2)


def test_control_video_too_short():
    with pytest.raises(mi.MediaError, match="has 12 frames; 17 were asked for.*9"):
        mi.load_video(FILES["clip_mp4"], 32, 32, 17)


def test_window_outside_the_clip_and_fps_mismatch():
    with pytest.raises(mi.MediaError, match="start earlier"):
        mi.load_video(FILES["clip_mp4"], 32, 32, 9, fps=24, start_time=0.25)
    with pytest.raises(mi.MediaError, match="runs at 24 fps"):
        mi.load_video(FILES["clip_mp4"], 32, 32, 9, fps=25)


def test_check_time_window():
    mi.check_time_window(0.1, 0.4, 0.5)
    with pytest.raises(mi.MediaError, match="less than end_time"):
        mi.check_time_window(0.4, 0.4, 0.5)
    with pytest.raises(mi.MediaError, match="outside the clip"):
        mi.check_time_window(0.2, 0.6, 0.5)
    with pytest.raises(mi.MediaError, match="outside the clip"):
        mi.check_time_window(-0.1, 0.3, 0.5)
