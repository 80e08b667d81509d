"""Audio-to-video (``A2VidPipelineTwoStage``) against the reference's own pipeline module run on the
tiny fixture with every draw recorded (golden_a2vid, FORMAT.md §7): the encoded input audio, each
stage's output with the reference's draws replayed, the final (frozen) audio latent, the decoded
frames, the output waveform (the input's, passed through), the mp4's audio stream, and the errors."""

from __future__ import annotations

import re
import time
import wave

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_F32, TOL_LOOP, rel_err
from test_e2e import ReferenceDraws, guider

from mlx_ltx.audio_to_video import FALLBACK_MUX_RATE
from mlx_ltx.conditioning import ImageConditioningInput
from mlx_ltx.guidance import MultiModalGuiderParams
from mlx_ltx.media_inputs import MediaError, decode_audio_from_file
from mlx_ltx.models.audio_processor import resample
from mlx_ltx.pipeline_stages import PIPELINES, Contexts, DenoiserKind, SigmaSource, StageTrace
from mlx_ltx.pipelines import Pipeline
from mlx_ltx.stage_inputs import StageRequest

A2VID = "a2vid"


def _golden(fs):
    if not fs.has_golden(A2VID) or A2VID not in fs.manifest:
        pytest.skip(f"{fs.path.name}: no a2vid golden")
    g = fs.golden(A2VID)
    return g, fs.manifest[A2VID], {f"{A2VID}.{k}": v for k, v in g.items()}


def _pipeline(fs, meta) -> Pipeline:
    return Pipeline.from_pretrained(fs.checkpoint_path, "a2vid", gemma=str(fs.path / fs.manifest["gemma_dir"]),
                                    upsampler=str(fs.upsampler_path("spatial-x2")),
                                    distilled_lora=str(fs.path / meta["distilled_lora"]), dtype=mx.float32)


def _request(fs, meta) -> dict:
    """generate()'s arguments as the reference was called (its audio guider is the pipeline's own)."""
    return {"height": meta["height"], "width": meta["width"], "num_frames": meta["num_frames"], "fps": meta["fps"],
            "seed": meta["seed"], "negative_prompt": meta["negative_prompt"], "num_inference_steps": meta["steps"],
            "images": [ImageConditioningInput(str(fs.path / p), i, s) for p, i, s in meta["images"]],
            "video_guider_params": guider(meta["guiders"]["video"]), "crf_threads": fs.manifest["e2e"]["crf_threads"],
            "audio_path": str(fs.path / meta["audio_path"]), "audio_start_time": meta["audio_start_time"],
            "audio_max_duration": meta["audio_max_duration"]}


def _tone(path, seconds: float, rate: int = 44100, channels: int = 2, freqs=(440.0, 660.0), amp=(0.5, 0.4)):
    """A 16-bit PCM .wav of sine tones (one per channel); returns the float samples (C, S) as written."""
    t = np.arange(round(seconds * rate)) / rate
    x = np.stack([a * np.sin(2 * np.pi * f * t) for f, a in zip(freqs, amp)][:channels])
    pcm = np.round(x * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.T.tobytes())
    return pcm.astype(np.float32) / 32768.0


# ---------------------------------------------------------------- the description


def test_a2vid_spec():
    """A2VidPipelineTwoStage: a guided half-size stage with constant guiders (GuidedDenoiser) on the
    LTX2Scheduler, then the distilled-LoRA stage 2 on STAGE_2_DISTILLED_SIGMAS; its own default audio
    guider (``MultiModalGuiderParams()``); the output's audio is the input's."""
    spec = PIPELINES["a2vid"]
    assert [(s.size_divisor, s.sigmas, s.denoiser, s.distilled_lora) for s in spec.stages] == [
        (2, SigmaSource.SCHEDULER, DenoiserKind.GUIDED, None), (1, SigmaSource.STAGE_2, DenoiserKind.SIMPLE, 1.0)]
    assert spec.image_conditioning == "replace-first" and spec.inputs == "a2vid"
    assert set(spec.takes) == {"audio_path", "audio_start_time", "audio_max_duration"}
    assert spec.audio_guidance == MultiModalGuiderParams() and spec.audio_output is not None


# ---------------------------------------------------------------- parity


def test_a2vid_stages(fixture_set):
    """Each stage's video and audio against the reference's, its draws replayed (f32); the input audio
    as decoded and encoded; both stages' audio frozen at the encoded latent."""
    g, meta, keyed = _golden(fixture_set)
    pipe = _pipeline(fixture_set, meta)
    kw = _request(fixture_set, meta)
    request = StageRequest(tuple(kw["images"]), audio_path=kw["audio_path"], audio_start_time=kw["audio_start_time"],
                           audio_max_duration=kw["audio_max_duration"])
    draws = ReferenceDraws(keyed, A2VID, sites=("noiser",))
    trace = StageTrace([], [])
    # the negative audio context is given and must not be used (the reference has none)
    contexts = Contexts(*(mx.array(g[k]) for k in ("ctx0.video", "ctx0.audio", "ctx1.video", "ctx1.audio")))
    video, audio = pipe.denoise(contexts, kw["num_frames"], kw["height"], kw["width"], kw["fps"],
                                images=kw["images"], steps=kw["num_inference_steps"],
                                video_guider_params=kw["video_guider_params"],
                                audio_guider_params=guider(meta["guiders"]["audio"]), noise=draws, trace=trace,
                                crf_threads=kw["crf_threads"], request=request)
    assert draws.left() == {}, draws.left()
    errors = {"upscaled": rel_err(trace.upscaled, g["upscaled.video.latent"])}
    for j, (out, sigmas) in enumerate(zip(trace.outputs, trace.sigmas)):
        errors[f"stage{j} sigmas"] = rel_err(sigmas, g[f"stage{j}.sigmas"])
        errors[f"stage{j} video"] = rel_err(out.video_latent, g[f"stage{j}.video.latent"])
        errors[f"stage{j} audio"] = rel_err(out.audio_latent, g[f"stage{j}.audio.latent"])
        errors[f"stage{j} audio = its initial"] = rel_err(out.audio_latent, g[f"stage{j}.audio.initial_latent"])
    errors["final audio latent"] = rel_err(audio, g["stage1.audio.latent"])
    errors["final video latent"] = rel_err(video, g["decode.video.latent"])
    print(f"\n{fixture_set.path.name} a2vid: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors
    # the frozen audio is the encoded input, cropped to the video's 9/24 s of audio latent frames
    frames = g["stage0.audio.initial_latent"].shape[2]
    assert rel_err(audio, g["in.audio.latent"][:, :, :frames]) <= TOL_F32


def test_a2vid_input_audio_encode(fixture_set):
    """The input file as the reference decoded it, and the encoder's latent before the crop."""
    g, meta, _ = _golden(fixture_set)
    pipe = _pipeline(fixture_set, meta)
    from mlx_ltx.audio_to_video import encode_input_audio, read_input_audio
    from mlx_ltx.pipeline_stages import Geometry

    kw = _request(fixture_set, meta)
    request = StageRequest(audio_path=kw["audio_path"], audio_max_duration=kw["audio_max_duration"])
    wave_, rate = read_input_audio(pipe, request, kw["num_frames"] / kw["fps"])
    assert rate == int(g["in.audio.sample_rate"][0])
    np.testing.assert_array_equal(wave_, g["in.audio.waveform"][0])
    latent = encode_input_audio(pipe, wave_, rate, Geometry(kw["num_frames"], kw["height"], kw["width"], kw["fps"]))
    assert rel_err(latent, g["in.audio.latent"][:, :, :latent.shape[2]]) <= TOL_F32
    assert latent.shape == g["stage0.audio.initial_latent"].shape


def test_a2vid_mono_input_is_made_stereo(fixture_set, tmp_path):
    """The audio VAE and the mp4's AAC stream are stereo: a mono file is duplicated (the reference has
    no rule and fails in the encoder's first convolution)."""
    g, meta, _ = _golden(fixture_set)
    mono = _tone(tmp_path / "mono.wav", 0.5, rate=22050, channels=1)
    from mlx_ltx.audio_to_video import read_input_audio

    waveform, rate = read_input_audio(_pipeline(fixture_set, meta), StageRequest(audio_path=str(tmp_path / "mono.wav")),
                                      0.375)
    assert rate == 22050 and waveform.shape == (2, round(0.375 * 22050))  # 0.375 s of the 0.5 s file
    np.testing.assert_array_equal(waveform, np.concatenate([mono, mono])[:, :waveform.shape[1]])


def test_a2vid_whole(fixture_set, tmp_path):
    """The whole pipeline, draws replayed: frames, latents, the output waveform (the input's, at its
    rate) and the written mp4."""
    g, meta, keyed = _golden(fixture_set)
    pipe = _pipeline(fixture_set, meta)
    draws = ReferenceDraws(keyed, A2VID)
    result = pipe.generate(meta["prompt"], noise=draws, output_path=tmp_path / "a2vid.mp4",
                           wav_path=tmp_path / "a2vid.wav", **_request(fixture_set, meta))
    assert draws.left() == {}, draws.left()
    frames = np.concatenate(list(pipe.iter_video_frames(
        result.video_latent, noise=ReferenceDraws(keyed, A2VID, sites=("decoder",)).decoder)), axis=0)
    reference_frames = g["out.frames_u16"].astype(np.float64) / 65535.0
    errors = {"video latent": rel_err(result.video_latent, g["decode.video.latent"]),
              "audio latent": rel_err(result.audio_latent, g["stage1.audio.latent"]),
              "frames": rel_err(frames, reference_frames)}
    print(f"\n{fixture_set.path.name} a2vid whole: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors
    # the written frames are those, rounded to uint8
    assert np.abs(result.frames.astype(np.float64) / 255.0 - reference_frames).max() <= 0.5 / 255 + TOL_LOOP
    # no audio decode: the output is the input waveform, sample for sample, at the input's rate
    assert result.sample_rate == int(g["out.sample_rate"][0])
    np.testing.assert_array_equal(result.audio, g["out.waveform"])
    with wave.open(str(tmp_path / "a2vid.wav")) as w:
        assert w.getframerate() == result.sample_rate and w.getnframes() == g["out.waveform"].shape[1]
    mp4, rate = decode_audio_from_file(tmp_path / "a2vid.mp4")
    assert rate == result.sample_rate


# ---------------------------------------------------------------- the mp4's soundtrack


def _aac_error(decoded: np.ndarray, expected: np.ndarray) -> float:
    """‖decoded − expected‖ / ‖expected‖ (energy, per sample aligned) away from the first and last AAC
    frame (1024 samples), where the codec's edge transients are: a lossy codec's loss is a noise floor,
    not a bound on every sample."""
    n = min(decoded.shape[1], expected.shape[1])
    inner = slice(1024, n - 1024)
    return float(np.linalg.norm(decoded[:, inner] - expected[:, inner]) / np.linalg.norm(expected[:, inner]))


@pytest.mark.parametrize("rate,out_rate", [(44100, 44100), (37800, FALLBACK_MUX_RATE)])
def test_a2vid_mp4_carries_the_input_waveform(fixture_set, tmp_path, rate, out_rate):
    """A synthetic tone through the whole pipeline: the mp4's AAC stream decodes to the input waveform
    (resampled to the output rate: the input's own, as the reference muxes it; 48 kHz for a rate AAC
    cannot carry) within AAC's loss, as long as the video."""
    g, meta, _ = _golden(fixture_set)
    pipe = _pipeline(fixture_set, meta)
    kw = _request(fixture_set, meta)
    seconds = kw["num_frames"] / kw["fps"]
    tone = _tone(tmp_path / "tone.wav", seconds + 0.2, rate)
    kw.update(audio_path=str(tmp_path / "tone.wav"), audio_max_duration=None, num_inference_steps=2)
    result = pipe.generate("a tone", output_path=tmp_path / "out.mp4", **kw)
    expected = resample(tone[:, :round(seconds * rate)], rate, out_rate)
    assert result.sample_rate == out_rate and result.audio.shape == (2, round(seconds * out_rate))
    assert rel_err(result.audio, expected[:, :result.audio.shape[1]]) <= 1e-6
    decoded, decoded_rate = decode_audio_from_file(tmp_path / "out.mp4")
    assert decoded_rate == out_rate
    assert decoded.shape == expected.shape  # the stream lasts the video, sample-aligned (the mp4's edit list)
    err = _aac_error(decoded, expected)
    print(f"\n{rate} Hz tone -> {out_rate} Hz AAC: relative L2 error {err:.3e}")
    assert err <= 0.03, err


# ---------------------------------------------------------------- errors


@pytest.fixture
def a2vid_pipe(fixture_set):
    g, meta, _ = _golden(fixture_set)
    return _pipeline(fixture_set, meta), _request(fixture_set, meta)


def _refused_before_loading(pipe, kw, match, exc=ValueError):
    start = time.perf_counter()
    with pytest.raises(exc, match=match):
        pipe.generate("a fox", **kw)
    assert pipe._text_encoder is None and pipe._transformer is None  # nothing loaded
    return time.perf_counter() - start


def test_a2vid_unreadable_audio_is_refused(a2vid_pipe, fixture_set, tmp_path):
    pipe, kw = a2vid_pipe
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"not audio at all" * 64)
    _refused_before_loading(pipe, {**kw, "audio_path": str(bad)}, "cannot be decoded", MediaError)
    _refused_before_loading(pipe, {**kw, "audio_path": str(tmp_path / "missing.wav")}, "audio file not found",
                            FileNotFoundError)
    # a file without an audio stream (the fixture's control video has none)
    video_only = fixture_set.path / fixture_set.manifest["inputs"]["control_video"]["file"]
    _refused_before_loading(pipe, {**kw, "audio_path": str(video_only)}, "has no audio stream", MediaError)


def test_a2vid_audio_shorter_than_the_video_is_refused(a2vid_pipe, tmp_path):
    """The error says how many seconds the video needs."""
    pipe, kw = a2vid_pipe
    need = kw["num_frames"] / kw["fps"]
    _tone(tmp_path / "short.wav", need / 2)
    kw = {**kw, "audio_path": str(tmp_path / "short.wav"), "audio_max_duration": None}
    _refused_before_loading(pipe, kw, re.escape(f"has {need / 2:.3f} s of audio from 0 s on; the video needs "
                                                f"{need:.3f} s"), MediaError)
    # long enough, but not from the start time on
    _tone(tmp_path / "long.wav", need + 0.1)
    kw = {**kw, "audio_path": str(tmp_path / "long.wav"), "audio_start_time": 0.2}
    _refused_before_loading(pipe, kw, re.escape(f"has {need - 0.1:.3f} s of audio from 0.2 s on; the video needs "
                                                f"{need:.3f} s ({need + 0.2:.3f} s of audio"), MediaError)
    # a read window shorter than the video
    kw = {**kw, "audio_start_time": 0.0, "audio_max_duration": need / 2}
    _refused_before_loading(pipe, kw, re.escape(f"audio_max_duration ({need / 2:g} s) is shorter than the video "
                                                f"({need:.3f} s)"))


def test_a2vid_argument_errors(a2vid_pipe):
    pipe, kw = a2vid_pipe
    _refused_before_loading(pipe, {**kw, "audio_path": None}, "the a2vid pipeline needs audio_path")
    _refused_before_loading(pipe, {**kw, "audio_start_time": -1.0}, "audio_start_time must be ≥ 0")
    _refused_before_loading(pipe, {**kw, "audio_max_duration": float("nan")}, "audio_max_duration must be a finite")
    _refused_before_loading(pipe, {**kw, "audio_guider_params": MultiModalGuiderParams(cfg_scale=2.0)},
                            "drop audio_guider_params")


def test_other_pipelines_refuse_audio_path(fixture_set):
    pipe = Pipeline.from_pretrained(fixture_set.checkpoint_path, "dev", gemma=str(fixture_set.path /
                                    fixture_set.manifest["gemma_dir"]), dtype=mx.float32)
    with pytest.raises(ValueError, match="takes no audio_path"):
        pipe.generate("a fox", audio_path="x.wav")
    with pytest.raises(ValueError, match="takes no audio_max_duration"):
        pipe.generate("a fox", audio_max_duration=1.0)


def test_cli_passes_the_audio_flags(monkeypatch, tmp_path):
    """``--audio-path``, ``--audio-start-time`` and ``--audio-max-duration`` (the reference's a2vid
    flags) reach ``generate``."""
    from mlx_ltx import generate as cli

    parser = cli.setup_arg_parser()
    args = parser.parse_args(["--model", "m", "--pipeline", "a2vid", "--prompt", "p", "--output", "o.mp4",
                              "--audio-path", "song.wav", "--audio-start-time", "1.5", "--audio-max-duration", "4"])
    assert (args.audio_path, args.audio_start_time, args.audio_max_duration) == ("song.wav", 1.5, 4.0)
    assert cli._a2vid_args(args) == {"audio_path": "song.wav", "audio_start_time": 1.5, "audio_max_duration": 4.0}
    defaults = parser.parse_args(["--model", "m", "--prompt", "p", "--output", "o.mp4"])
    assert (defaults.audio_path, defaults.audio_start_time, defaults.audio_max_duration) == (None, 0.0, None)
    assert cli._a2vid_args(defaults) == {}  # nothing reaches the pipelines that refuse these


def test_cli_a2vid_errors_name_the_flags(fixture_set, tmp_path, capsys):
    """A short --audio-path fails before any model loads, exit code 2, naming the flag and the seconds."""
    from mlx_ltx.generate import main

    g, meta, _ = _golden(fixture_set)
    need = meta["num_frames"] / meta["fps"]
    _tone(tmp_path / "short.wav", need / 2)
    base = ["--model", str(fixture_set.checkpoint_path), "--pipeline", "a2vid",
            "--gemma", str(fixture_set.path / fixture_set.manifest["gemma_dir"]),
            "--upsampler", str(fixture_set.upsampler_path("spatial-x2")),
            "--distilled-lora", str(fixture_set.path / meta["distilled_lora"]), "--prompt", "a fox",
            "--height", str(meta["height"]), "--width", str(meta["width"]), "--num-frames", str(meta["num_frames"]),
            "--frame-rate", str(meta["fps"]), "--output", str(tmp_path / "o.mp4")]
    assert main([*base, "--audio-path", str(tmp_path / "short.wav")]) == 2
    err = capsys.readouterr().err
    assert "--audio-path" in err and f"the video needs {need:.3f} s" in err, err
    assert main([*base, "--audio-path", str(tmp_path / "short.wav"), "--audio-max-duration", "0.1"]) == 2
    assert "--audio-max-duration (0.1 s) is shorter than the video" in capsys.readouterr().err
    _tone(tmp_path / "long.wav", need + 0.1)
    assert main([*base, "--audio-path", str(tmp_path / "long.wav"), "--audio-cfg-guidance-scale", "2",
                 "--video-stg-blocks", "1"]) == 2
    assert "drop the --audio-* guidance flags" in capsys.readouterr().err
