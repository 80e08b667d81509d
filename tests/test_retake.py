"""RetakePipeline (mlx_ltx/retake.py) against the reference's own ``RetakePipeline`` run on the tiny
fixture with its draws recorded (golden_retake, FORMAT.md §7): two runs, ``regen-video`` (video
window regenerated, audio kept) and ``regen-audio`` (the reverse). Checked: the encoded clip, the
states the stage starts from (window mask, noised-then-frozen kept stream), the stage output, the
whole pipeline's frames and waveform, that the window's outside never moves during the loop, and
the input errors the reference leaves to its CLI or does not have."""

from __future__ import annotations

import subprocess

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_F32, TOL_LOOP, rel_err
from test_e2e import ReferenceDraws

from mlx_ltx.conditioning import TemporalRegionMask
from mlx_ltx.latent_tools import AudioLatentTools, VideoLatentTools, create_noised_state
from mlx_ltx.media_inputs import MediaError
from mlx_ltx.pipeline_stages import PIPELINES, Contexts, Geometry, StageTrace, run_stage, stage_sigmas
from mlx_ltx.pipelines import Pipeline
from mlx_ltx.retake import retake_inputs
from mlx_ltx.stage_inputs import StageRequest

RT = "retake"
RUNS = ("regen-video", "regen-audio")


def golden(fs):
    if RT not in fs.manifest:
        pytest.skip(f"{fs.path.name}: no {RT} section in the manifest")
    g = fs.golden(RT)
    return g, fs.manifest[RT]


def _pipe(fs) -> Pipeline:
    return Pipeline.from_pretrained(fs.checkpoint_path, "retake", gemma=str(fs.path / fs.manifest["gemma_dir"]),
                                    dtype=mx.float32)


def _request(fs, meta, run: str) -> dict:
    return {"video_path": str(fs.path / meta["video_path"]), "start_time": meta["start_time"],
            "end_time": meta["end_time"], **meta["runs"][run]}


def _draws(g, run: str, sites=("noiser",)) -> ReferenceDraws:
    return ReferenceDraws({f"{RT}.{k}": v for k, v in g.items()}, f"{RT}.{run}", sites=sites)


def _geometry(fs) -> Geometry:
    v = fs.manifest["inputs"]["retake_video"]
    return Geometry(v["frames"], v["height"], v["width"], float(v["fps"]))


def _contexts(g) -> Contexts:
    return Contexts(mx.array(g["ctx0.video"]), mx.array(g["ctx0.audio"]))


@pytest.fixture(scope="module")
def pipe(fixture_set):
    golden(fixture_set)
    return _pipe(fixture_set)


@pytest.fixture
def reference_audio(fixture_set, monkeypatch):
    """The clip's AAC stream as the reference decoded it (PyAV, FFmpeg 8's libavcodec). This ffmpeg
    (9) decodes the fixture's AAC differently (test_media_inputs.test_decode_audio_aac_bound;
    measured here in test_retake_source_audio_decode), so the parity tests replay the reference's
    samples as they replay its noise; everything after the decode (log-mel, encoder, crop) is the port's."""
    g, _ = golden(fixture_set)
    wave, rate = g["in.audio.waveform"][0], int(g["in.audio.sample_rate"][0])
    monkeypatch.setattr("mlx_ltx.retake.decode_audio_from_file", lambda path, start, duration: (wave, rate))


def test_retake_spec():
    """RetakePipeline as its CLI runs it: distilled, one DISTILLED_SIGMAS stage, no guidance."""
    spec = PIPELINES["retake"]
    assert len(spec.stages) == 1 and not spec.guided and spec.checkpoint_variant == "distilled"
    assert spec.stages[0].sigmas.value == "distilled" and spec.stages[0].distilled_lora is None
    assert set(spec.takes) == {"video_path", "start_time", "end_time", "regenerate_video", "regenerate_audio"}


def test_temporal_region_mask_tokens(fixture_set):
    """TemporalRegionMask on the golden's grids: [0.1, 0.3) s meets latent frame 1 of the video
    (pixel frames 1..8) and 6 of the 18 audio tokens."""
    g, meta = golden(fixture_set)
    cfg, geo = fixture_set.checkpoint.config, _geometry(fixture_set)
    item = TemporalRegionMask(meta["start_time"], meta["end_time"], geo.fps)
    for name, tools in (("video", VideoLatentTools.from_pixel_shape(cfg, geo.num_frames, geo.height, geo.width,
                                                                    geo.fps)),
                        ("audio", AudioLatentTools.from_video_pixel_shape(cfg, geo.num_frames, geo.fps))):
        mask = item.apply_to(tools.create_initial_state(), tools).denoise_mask
        run = "regen-video" if name == "video" else "regen-audio"
        np.testing.assert_array_equal(np.array(mask), g[f"{run}.stage0.{name}.init.denoise_mask"])
        assert int(np.array(mask).sum()) == 6


@pytest.mark.parametrize("run", RUNS)
def test_retake_initial_states(fixture_set, pipe, run, reference_audio):
    """The encoded clip (video VAE; AAC stream -> log-mel -> audio VAE) and the states the stage starts
    from: the regenerated stream masked to the window (outside: the clean latent, never noised),
    the kept stream noised at scale 1 and then frozen (mask 0, latent = the noise)."""
    g, meta = golden(fixture_set)
    geo = _geometry(fixture_set)
    (inputs,) = retake_inputs(pipe, StageRequest(**_request(fixture_set, meta, run)), geo, None)
    assert rel_err(inputs.video.initial_latent, g["in.video.latent"]) <= TOL_F32
    assert rel_err(inputs.video.initial_latent, g[f"{run}.stage0.video.initial_latent"]) <= TOL_F32
    assert rel_err(inputs.audio.initial_latent, g[f"{run}.stage0.audio.initial_latent"]) <= TOL_F32
    cfg = pipe.config
    draws = _draws(g, run)
    for name, tools, spec in (
            ("video", VideoLatentTools.from_pixel_shape(cfg, geo.num_frames, geo.height, geo.width, geo.fps),
             inputs.video),
            ("audio", AudioLatentTools.from_video_pixel_shape(cfg, geo.num_frames, geo.fps), inputs.audio)):
        state = create_noised_state(tools, spec.conditionings, draws, 1.0, spec.initial_latent, mx.float32,
                                    label=f"stage1.{name}")
        if spec.frozen:
            state = state.replace(denoise_mask=mx.zeros_like(state.denoise_mask), frozen=True)
        key = f"{run}.stage0.{name}.init"
        assert bool(state.frozen) == bool(g[f"{key}.frozen"][0]), name
        np.testing.assert_array_equal(np.array(state.denoise_mask), g[f"{key}.denoise_mask"])
        np.testing.assert_array_equal(np.array(state.positions), g[f"{key}.positions"])
        for part in ("latent", "clean_latent"):
            assert rel_err(getattr(state, part), g[f"{key}.{part}"]) <= TOL_F32, (name, part)
    assert draws.left() == {}
    # the kept stream starts from pure noise, not from its clean latent (noised, then frozen)
    kept = "audio" if run == "regen-video" else "video"
    assert rel_err(g[f"{run}.stage0.{kept}.init.latent"], g[f"{run}.stage0.{kept}.init.clean_latent"]) > 0.5


@pytest.mark.parametrize("run", RUNS)
def test_retake_stage_parity(fixture_set, pipe, run, reference_audio):
    """The stage's output with the reference's draws replayed (f32, TOL_LOOP)."""
    g, meta = golden(fixture_set)
    geo = _geometry(fixture_set)
    trace = StageTrace([], [])
    draws = _draws(g, run)
    pipe.denoise(_contexts(g), geo.num_frames, geo.height, geo.width, geo.fps, noise=draws, trace=trace,
                 request=StageRequest(**_request(fixture_set, meta, run)))
    assert draws.left() == {}
    (out,) = trace.outputs
    errors = {"sigmas": rel_err(trace.sigmas[0], g[f"{run}.stage0.sigmas"]),
              "video": rel_err(out.video_latent, g[f"{run}.stage0.video.latent"]),
              "audio": rel_err(out.audio_latent, g[f"{run}.stage0.audio.latent"])}
    print(f"\n{fixture_set.path.name} retake {run}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors
    # the kept stream ends at its clean latent (the reference's, to ~1e-7)
    kept = "audio" if run == "regen-video" else "video"
    assert rel_err(getattr(out, f"{kept}_latent"), g[f"{run}.stage0.{kept}.initial_latent"]) <= 1e-5


@pytest.mark.parametrize("run", RUNS)
def test_retake_frozen_tokens_never_change(fixture_set, pipe, run, reference_audio):
    """Every step: the regenerated stream's tokens outside the window stay exactly at the clean
    latent, and the tokens inside move; the kept stream (frozen after its noise) reaches its clean
    latent at the last step."""
    g, meta = golden(fixture_set)
    geo = _geometry(fixture_set)
    (inputs,) = retake_inputs(pipe, StageRequest(**_request(fixture_set, meta, run)), geo, None)
    stage = pipe.spec.stages[0]
    regen = "video" if run == "regen-video" else "audio"
    grid = (VideoLatentTools.from_pixel_shape(pipe.config, geo.num_frames, geo.height, geo.width, geo.fps)
            if regen == "video" else AudioLatentTools.from_video_pixel_shape(pipe.config, geo.num_frames, geo.fps))
    clean = np.array(grid.patchify(getattr(inputs, regen).initial_latent))  # the port's encode of the clip
    outside = np.array(g[f"{run}.stage0.{regen}.init.denoise_mask"])[0, :, 0] == 0
    assert outside.any() and not outside.all()
    seen = []

    def on_step(i, video_state, audio_state):
        state = video_state if regen == "video" else audio_state
        latent = np.array(state.latent)
        assert np.array_equal(latent[:, outside], clean[:, outside]), f"step {i}: a frozen token moved"
        assert not np.array_equal(latent[:, ~outside], clean[:, ~outside])
        seen.append(i)

    tools = VideoLatentTools.from_pixel_shape(pipe.config, geo.num_frames, geo.height, geo.width, geo.fps)
    sigmas = stage_sigmas(stage, 0, tools)
    out = run_stage(pipe.model_for(stage), stage, 0, pipe.config, geo, _contexts(g), inputs, _draws(g, run), sigmas,
                    video_params=pipe.params.video_guider_params, audio_params=pipe.params.audio_guider_params,
                    on_step=on_step)
    assert seen == list(range(len(sigmas) - 1))
    kept = "audio" if regen == "video" else "video"
    kept_in = getattr(inputs, kept).initial_latent
    assert float(mx.abs(getattr(out, f"{kept}_latent") - kept_in).max()) <= 1e-5 * float(mx.abs(kept_in).max())
    # the window's outside, unpatchified, is the source clip's latent exactly
    if regen == "video":
        np.testing.assert_array_equal(np.array(out.video_latent)[:, :, [0, 2]],
                                      np.array(inputs.video.initial_latent)[:, :, [0, 2]])


def _window_frames(meta, num_frames: int, fps: float) -> np.ndarray:
    """Pixel frames no regenerated video token touches: latent frame k covers pixel frames
    [8k − 7, 8k] (frame 0 alone); a latent frame meeting the window changes all of its frames."""
    touched = np.zeros(num_frames, bool)
    for k in range((num_frames - 1) // 8 + 1):
        lo, hi = max(0, 8 * k - 7), 8 * k + 1
        if hi / fps > meta["start_time"] and lo / fps < meta["end_time"]:
            touched[lo:hi] = True
    return ~touched


@pytest.mark.parametrize("run", RUNS)
def test_retake_whole_pipeline(fixture_set, pipe, run, tmp_path, reference_audio):
    """generate(): the decoded frames and waveform against the reference's retake output; frames
    outside the window (all of them when the video is kept, noised-then-frozen) checked on their own."""
    g, meta = golden(fixture_set)
    draws = _draws(g, run, sites=("noiser", "decoder"))
    result = pipe.generate(meta["prompt"], seed=meta["seed"], noise=draws, output_path=tmp_path / "r.mp4",
                           **_request(fixture_set, meta, run))
    assert draws.left() == {}
    ref = g[f"{run}.out.frames_u16"].astype(np.float64) / 65535.0
    frames = np.concatenate(list(pipe.iter_video_frames(result.video_latent, noise=draws.decoder)), axis=0)
    wave, rate = pipe.decode_audio(result.audio_latent)
    keep = _window_frames(meta, len(ref), result.fps) if run == "regen-video" else np.ones(len(ref), bool)
    errors = {"video latent": rel_err(result.video_latent, g[f"{run}.decode.video.latent"]),
              "audio latent": rel_err(result.audio_latent, g[f"{run}.decode.audio.latent"]),
              "frames": rel_err(frames, ref), "frames outside the window": rel_err(frames[keep], ref[keep]),
              "waveform": rel_err(wave, g[f"{run}.out.waveform"])}
    print(f"\n{fixture_set.path.name} retake {run} whole ({int(keep.sum())} frames outside): "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors
    assert rate == int(g[f"{run}.out.sample_rate"][0])
    assert result.frames.shape == ref.shape and result.path.stat().st_size > 0
    assert rel_err(pipe.encode_prompts(meta["prompt"]).video, g["ctx0.video"]) <= TOL_F32


def test_retake_source_audio_decode(fixture_set, pipe):
    """Without the replayed samples: this ffmpeg's AAC decode of the clip (16 samples shorter: the
    reference keeps the encoder's end padding) moves the encoded audio by ~19 % (pinned: a change
    shows), yet the kept video tokens outside the window still end exactly at the reference's."""
    g, meta = golden(fixture_set)
    geo = _geometry(fixture_set)
    request = StageRequest(**_request(fixture_set, meta, "regen-video"))
    (inputs,) = retake_inputs(pipe, request, geo, None)
    audio_err = rel_err(inputs.audio.initial_latent, g["in.audio.latent"])
    trace = StageTrace([], [])
    pipe.denoise(_contexts(g), geo.num_frames, geo.height, geo.width, geo.fps, noise=_draws(g, "regen-video"),
                 trace=trace, request=request)
    video = np.array(trace.outputs[0].video_latent)
    ref = g["regen-video.stage0.video.latent"]
    outside_err = rel_err(video[:, :, [0, 2]], ref[:, :, [0, 2]])
    print(f"\n{fixture_set.path.name} retake, ffmpeg's AAC decode: audio latent {audio_err:.2e}, video latent "
          f"{rel_err(video, ref):.2e}, outside the window {outside_err:.2e}")
    assert 0 < audio_err <= 0.25 and outside_err <= TOL_F32


# ---------------------------------------------------------------- errors


def _clip(tmp_path, name: str, frames: int, width: int, height: int, audio: bool = True) -> str:
    import imageio_ffmpeg

    path = tmp_path / name
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
           f"testsrc=size={width}x{height}:rate=24"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-shortest"]
    cmd += ["-frames:v", str(frames), "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True)
    return str(path)


def test_retake_input_errors(fixture_set, pipe, tmp_path):
    g, meta = golden(fixture_set)
    good = dict(_request(fixture_set, meta, "regen-video"))
    gen = lambda **kw: pipe.generate("a fox", **{**good, **kw})  # noqa: E731
    with pytest.raises(ValueError, match="needs video_path"):
        gen(video_path=None)
    with pytest.raises(ValueError, match="needs end_time"):
        gen(end_time=None)
    with pytest.raises(MediaError, match=r"outside the clip.*end_time ≤ 0\.708"):
        gen(end_time=1.0)
    with pytest.raises(MediaError, match="start_time ≥ 0"):
        gen(start_time=-0.1)
    with pytest.raises(MediaError, match=r"start_time \(0\.3\) must be less than end_time"):
        gen(start_time=0.3, end_time=0.3)
    with pytest.raises(FileNotFoundError, match="video file not found"):
        gen(video_path=str(tmp_path / "missing.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(MediaError, match="cannot be decoded"):
        gen(video_path=str(junk))
    with pytest.raises(MediaError, match="is a folder"):
        gen(video_path=str(tmp_path))
    with pytest.raises(MediaError, match=r"has 16 frames; retake needs 8k\+1 frames.*video with 9 frames"):
        gen(video_path=_clip(tmp_path, "f16.mp4", 16, 96, 64))
    with pytest.raises(MediaError, match=r"is 80x64.*multiples of 32.*e\.g\. to 64x64"):
        gen(video_path=_clip(tmp_path, "w80.mp4", 17, 80, 64))
    with pytest.raises(ValueError, match=r"source clip's height \(64.*drop height"):
        gen(height=128)
    with pytest.raises(ValueError, match="regenerate_audio must be True or False"):
        gen(regenerate_audio="no")
    with pytest.raises(ValueError, match=r"end_time must be a number of seconds"):
        gen(end_time="0.3")


def test_retake_clip_without_audio_generates_audio(fixture_set, pipe, tmp_path):
    """No audio stream: the audio is generated from scratch (no mask, not frozen), as the reference's
    ``audio_latent_from_file`` returning None; the video window is still applied."""
    g, meta = golden(fixture_set)
    path = _clip(tmp_path, "silent.mp4", 17, 96, 64, audio=False)
    (inputs,) = retake_inputs(pipe, StageRequest(video_path=path, start_time=0.1, end_time=0.3,
                                                 regenerate_audio=False), _geometry(fixture_set), None)
    assert inputs.audio.initial_latent is None and not inputs.audio.frozen and inputs.audio.conditionings == ()
    assert isinstance(inputs.video.conditionings[0], TemporalRegionMask) and not inputs.video.frozen


def test_other_pipelines_refuse_retake_arguments(fixture_set):
    golden(fixture_set)
    distilled = Pipeline.from_pretrained(fixture_set.checkpoint_path, "distilled",
                                         gemma=str(fixture_set.path / fixture_set.manifest["gemma_dir"]),
                                         upsampler=str(fixture_set.upsampler_path("spatial-x2")), dtype=mx.float32)
    with pytest.raises(ValueError, match="takes no video_path, start_time"):
        distilled.generate("a fox", video_path="x.mp4", start_time=0.1)


def test_retake_cli(fixture_set, tmp_path, capsys):
    """``--pipeline retake`` with the reference's flag names; errors name the flags."""
    from mlx_ltx.generate import main

    g, meta = golden(fixture_set)
    fs = fixture_set
    base = ["--model", str(fs.checkpoint_path), "--gemma", str(fs.path / fs.manifest["gemma_dir"]),
            "--dtype", "float32", "--prompt", meta["prompt"], "--quiet"]
    clip = str(fs.path / meta["video_path"])
    out = tmp_path / "retake.mp4"
    assert main([*base, "--pipeline", "retake", "--video-path", clip, "--start-time", "0.1", "--end-time", "0.3",
                 "--no-regenerate-audio", "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.stat().st_size > 0
    assert main([*base, "--pipeline", "retake", "--video-path", clip, "--start-time", "0.5", "--end-time", "0.9",
                 "--output", str(tmp_path / "b.mp4")]) == 2
    assert "end_time ≤" not in (err := capsys.readouterr().err) and "--end-time ≤ 0.708" in err
    assert main([*base, "--pipeline", "retake", "--video-path", clip, "--start-time", "0.1", "--end-time", "0.3",
                 "--height", "128", "--output", str(tmp_path / "c.mp4")]) == 2
    assert "drop --height" in capsys.readouterr().err
    assert main([*base, "--upsampler", str(fs.upsampler_path("spatial-x2")), "--video-path", clip, "--start-time",
                 "0.1", "--output", str(tmp_path / "d.mp4")]) == 2
    assert "takes no --video-path, --start-time" in capsys.readouterr().err
