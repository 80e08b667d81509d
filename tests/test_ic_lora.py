"""ICLoraPipeline (``ic_lora.py`` + ``iclora_utils.py``) against the reference's own pipeline run end to
end on the tiny fixture (pipeline_goldens_14.py, FORMAT.md §7 golden_ic_lora): the control video's
pixels and latent, the stage-1 state the conditionings make (positions ×2, attention mask 0.8 / 1),
each stage's output with the reference's draws replayed, the whole pipeline's frames and waveform;
the IC-LoRA in stage 1 only; the errors the reference lacks."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_F32, TOL_LOOP, rel_err
from test_e2e import ReferenceDraws

from mlx_ltx.conditioning import (
    ConditioningItemAttentionStrengthWrapper,
    ImageConditioningInput,
    VideoConditionByReferenceLatent,
)
from mlx_ltx.latent_tools import VideoLatentTools
from mlx_ltx.media_inputs import MediaError, load_video
from mlx_ltx.pipeline_stages import PIPELINES, Contexts, Geometry, StageTrace
from mlx_ltx.pipelines import Pipeline
from mlx_ltx.stage_inputs import StageRequest, stage_inputs_builder

IC = "ic_lora"


def golden(fs):
    g = fs.golden(IC)
    if IC not in fs.manifest:
        pytest.skip(f"{fs.path.name}: no {IC} section in the manifest")
    return g, fs.manifest[IC], {f"{IC}.{k}": v for k, v in g.items()}


def _pipeline(fs, meta, **kw) -> Pipeline:
    return Pipeline.from_pretrained(fs.checkpoint_path, "ic-lora", gemma=str(fs.path / fs.manifest["gemma_dir"]),
                                    upsampler=str(fs.upsampler_path("spatial-x2")),
                                    loras=[(str(fs.path / meta["lora"]), meta["lora_strength"])], dtype=mx.float32,
                                    **kw)


def _request(fs, meta) -> dict:
    return {"height": meta["height"], "width": meta["width"], "num_frames": meta["num_frames"], "fps": meta["fps"],
            "seed": meta["seed"],
            "images": [ImageConditioningInput(str(fs.path / p), i, s) for p, i, s in meta["images"]],
            "video_conditioning": [(str(fs.path / p), s) for p, s in meta["video_conditioning"]],
            "conditioning_attention_strength": meta["conditioning_attention_strength"],
            "crf_threads": fs.manifest["e2e"]["crf_threads"]}


def _stage_request(kw) -> StageRequest:
    return StageRequest(tuple(kw["images"]), video_conditioning=tuple(kw["video_conditioning"]),
                        conditioning_attention_strength=kw["conditioning_attention_strength"])


def test_ic_lora_spec():
    """The distilled stages; the pipeline's LoRAs (the IC-LoRA) in stage 1 only; the stage-2 audio kept;
    the distilled checkpoint."""
    ic, dist = PIPELINES["ic-lora"], PIPELINES["distilled"]
    assert [(s.size_divisor, s.sigmas, s.denoiser, s.stepper) for s in ic.stages] == \
        [(s.size_divisor, s.sigmas, s.denoiser, s.stepper) for s in dist.stages]
    assert [s.user_loras for s in ic.stages] == [True, False] and ic.audio_stage == 1
    assert ic.checkpoint_variant == "distilled" and not ic.needs_distilled_lora
    assert "video_conditioning" in ic.takes and "conditioning_attention_strength" in ic.takes


def test_ic_lora_inputs(fixture_set):
    """The control video decoded and resized as the reference (in.control.pixels), encoded (stage0.cond1),
    and the stage-1 state its item makes: positions ×2 on the spatial axes, denoise mask 0 (strength 1),
    the [1,20,20] attention mask of 0.8 between control and generated tokens."""
    g, meta, _ = golden(fixture_set)
    pipe = _pipeline(fixture_set, meta)
    kw = _request(fixture_set, meta)
    path, _ = kw["video_conditioning"][0]
    pixels = load_video(path, meta["height"] // 4, meta["width"] // 4, meta["num_frames"])
    assert rel_err(pixels, g["in.control.pixels"]) <= TOL_F32
    geometry = Geometry(meta["num_frames"], meta["height"], meta["width"], meta["fps"])
    per_stage = stage_inputs_builder("ic-lora")(pipe, _stage_request(kw), geometry, kw["crf_threads"])
    s1, s2 = (inp.video.conditionings for inp in per_stage)
    assert len(s1) == 2 and len(s2) == 1, "stage 2 must get the image only"
    wrapped = s1[1]
    assert isinstance(wrapped, ConditioningItemAttentionStrengthWrapper) and wrapped.attention_mask == 0.8
    assert isinstance(wrapped.conditioning, VideoConditionByReferenceLatent)
    assert wrapped.conditioning.downscale_factor == 2 and wrapped.conditioning.strength == 1.0
    errors = {"control latent": rel_err(wrapped.conditioning.latent, g["stage0.cond1.latent"]),
              "image latent s1": rel_err(s1[0].latent, g["stage0.cond0.latent"]),
              "image latent s2": rel_err(s2[0].latent, g["stage1.cond0.latent"])}
    tools = VideoLatentTools.from_pixel_shape(pipe.config, meta["num_frames"], meta["height"] // 2,
                                              meta["width"] // 2, meta["fps"])
    state = tools.create_initial_state(mx.float32)
    for item in s1:
        state = item.apply_to(state, tools)
    assert np.array_equal(np.array(state.positions), g["stage0.video.init.positions"])
    assert np.array_equal(np.array(state.attention_mask), g["stage0.video.init.attention_mask"])
    assert np.allclose(np.array(state.denoise_mask), g["stage0.video.init.denoise_mask"], atol=1e-7)
    errors["clean latent"] = rel_err(state.clean_latent, g["stage0.video.init.clean_latent"])
    print(f"\n{fixture_set.path.name} {IC} inputs: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors


def test_ic_lora_stages(fixture_set):
    """Each stage's output with the reference's stage noise replayed (f32); the IC-LoRA fused in
    stage 1 and gone in stage 2."""
    g, meta, keyed = golden(fixture_set)
    pipe = _pipeline(fixture_set, meta)
    kw = _request(fixture_set, meta)
    draws = ReferenceDraws(keyed, IC, sites=("noiser",))
    trace = StageTrace([], [])
    model_for = pipe.model_for
    stage_loras = []

    def spy(stage):
        model = model_for(stage)
        stage_loras.append(pipe._lora_strength)
        return model

    pipe.model_for = spy
    pipe.denoise(Contexts(mx.array(g["ctx0.video"]), mx.array(g["ctx0.audio"])), kw["num_frames"], kw["height"],
                 kw["width"], kw["fps"], images=kw["images"], noise=draws, trace=trace, crf_threads=kw["crf_threads"],
                 request=_stage_request(kw))
    assert draws.left() == {}, draws.left()
    assert stage_loras == [((str(fixture_set.path / meta["lora"]), meta["lora_strength"]),), ()], stage_loras
    errors = {"upscaled": rel_err(trace.upscaled, g["upscaled.video.latent"])}
    for j, out in enumerate(trace.outputs):
        errors[f"stage{j} video"] = rel_err(out.video_latent, g[f"stage{j}.video.latent"])
        errors[f"stage{j} audio"] = rel_err(out.audio_latent, g[f"stage{j}.audio.latent"])
    print(f"\n{fixture_set.path.name} {IC}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors


def test_ic_lora_whole(fixture_set, tmp_path):
    """generate() end to end: the final latents, the decoded frames and the waveform, draws replayed."""
    g, meta, keyed = golden(fixture_set)
    pipe = _pipeline(fixture_set, meta)
    draws = ReferenceDraws(keyed, IC)
    result = pipe.generate(meta["prompt"], noise=draws, output_path=tmp_path / "ic.mp4", **_request(fixture_set, meta))
    assert draws.left() == {}, draws.left()
    errors = {"video latent": rel_err(result.video_latent, g["decode.video.latent"]),
              "audio latent": rel_err(result.audio_latent, g["decode.audio.latent"]),
              "frames": rel_err(result.frames.astype(np.float64) / 255.0,
                                g["out.frames_u16"].astype(np.float64) / 65535.0),
              "waveform": rel_err(pipe.decode_audio(result.audio_latent)[0], g["out.waveform"])}
    frames = np.concatenate(list(pipe.iter_video_frames(
        result.video_latent, noise=ReferenceDraws(keyed, IC, sites=("decoder",)).decoder)), axis=0)
    errors["frames (float)"] = rel_err(frames, g["out.frames_u16"].astype(np.float64) / 65535.0)
    print(f"\n{fixture_set.path.name} {IC} whole: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(v for k, v in errors.items() if k != "frames") <= TOL_LOOP, errors
    assert errors["frames"] <= 5e-3, errors  # uint8 rounding of the written frames
    assert result.path.stat().st_size > 0


# ---------------------------------------------------------------- errors, before any model loads
@pytest.fixture
def ic(fixture_set, monkeypatch):
    g, meta, _ = golden(fixture_set)
    pipe = _pipeline(fixture_set, meta)

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the request was checked")

    for name in ("text_encoder", "transformer", "video_encoder"):
        monkeypatch.setattr(pipe, name, no_model)
    kw = _request(fixture_set, meta)
    return pipe, kw, meta


def test_size_for_downscale_factor(ic):
    """Factor 2: the control is encoded at a quarter of the final size, so 128k; the reference only checks
    divisibility by the factor and fails inside the VAE."""
    pipe, kw, meta = ic
    with pytest.raises(ValueError, match=r"width must be a multiple of 128 .*reference downscale factor 2.*"
                                         r"got 192, 128 or 256 would work"):
        pipe.generate(meta["prompt"], **{**kw, "width": 192})


def test_control_video_too_short(ic):
    pipe, kw, meta = ic
    with pytest.raises(MediaError,
                       match=r"has 12 frames, shorter than the 17 requested .*num_frames ≤ 12 \(8k\+1: 9\)"):
        pipe.generate(meta["prompt"], **{**kw, "num_frames": 17})


def test_control_video_errors(ic, tmp_path):
    pipe, kw, meta = ic
    with pytest.raises(ValueError, match="needs a control video"):
        pipe.generate(meta["prompt"], **{**kw, "video_conditioning": []})
    with pytest.raises(FileNotFoundError, match="control video not found"):
        pipe.generate(meta["prompt"], **{**kw, "video_conditioning": [(str(tmp_path / "none.mp4"), 1.0)]})
    path = kw["video_conditioning"][0][0]
    with pytest.raises(ValueError, match=r"strength 1.5 must be in \[0, 1\]"):
        pipe.generate(meta["prompt"], **{**kw, "video_conditioning": [(path, 1.5)]})
    with pytest.raises(ValueError, match=r"conditioning_attention_strength must be in \[0, 1\]; got 2"):
        pipe.generate(meta["prompt"], **{**kw, "conditioning_attention_strength": 2})


def test_other_pipelines_refuse_ic_inputs(fixture_set):
    g, meta, _ = golden(fixture_set)
    pipe = Pipeline.from_pretrained(fixture_set.checkpoint_path, "distilled",
                                    gemma=str(fixture_set.path / fixture_set.manifest["gemma_dir"]),
                                    upsampler=str(fixture_set.upsampler_path("spatial-x2")), dtype=mx.float32)
    with pytest.raises(ValueError, match="takes no conditioning_attention_strength"):
        pipe.generate("x", conditioning_attention_strength=0.5)


def test_conflicting_reference_factors(fixture_set, tmp_path):
    """Two LoRAs with different reference_downscale_factor metadata cannot be combined (as the reference)."""
    g, meta, _ = golden(fixture_set)
    src = fixture_set.path / meta["lora"]
    other = tmp_path / "ic4.safetensors"
    mx.save_safetensors(str(other), mx.load(str(src)), metadata={"reference_downscale_factor": "4"})
    pipe = Pipeline.from_pretrained(fixture_set.checkpoint_path, "ic-lora",
                                    gemma=str(fixture_set.path / fixture_set.manifest["gemma_dir"]),
                                    upsampler=str(fixture_set.upsampler_path("spatial-x2")),
                                    loras=[(str(src), 0.5), (str(other), 0.5)], dtype=mx.float32)
    kw = _request(fixture_set, meta)
    with pytest.raises(ValueError, match="LoRAs disagree on reference_downscale_factor"):
        pipe.generate(meta["prompt"], **kw)


# ---------------------------------------------------------------- CLI
def _cli_base(fs, meta, out) -> list[str]:
    (control, strength), = meta["video_conditioning"]
    return ["--model", str(fs.checkpoint_path), "--pipeline", "ic-lora",
            "--gemma", str(fs.path / fs.manifest["gemma_dir"]),
            "--upsampler", str(fs.upsampler_path("spatial-x2")), "--lora", str(fs.path / meta["lora"]),
            str(meta["lora_strength"]), "--prompt", meta["prompt"], "--height", str(meta["height"]), "--width",
            str(meta["width"]), "--num-frames", str(meta["num_frames"]), "--seed", str(meta["seed"]), "--dtype",
            "float32", "--video-conditioning", str(fs.path / control), str(strength),
            "--conditioning-attention-strength", str(meta["conditioning_attention_strength"]),
            "--output", str(out), "--quiet"]


def test_cli(fixture_set, tmp_path, capsys):
    """``--pipeline ic-lora --lora IC 0.9 --video-conditioning PATH 1.0 --conditioning-attention-strength 0.8``
    writes the clip; errors name the flags."""
    from mlx_ltx.generate import main

    g, meta, _ = golden(fixture_set)
    out = tmp_path / "ic.mp4"
    assert main(_cli_base(fixture_set, meta, out)) == 0, capsys.readouterr().err
    assert out.stat().st_size > 0
    bad = _cli_base(fixture_set, meta, tmp_path / "bad.mp4")
    assert main([*bad, "--width", "192"]) == 2
    assert "--width must be a multiple of 128" in capsys.readouterr().err
    assert main([*bad, "--conditioning-attention-strength", "1.5"]) == 2
    assert "--conditioning-attention-strength must be in [0, 1]" in capsys.readouterr().err
    assert main([*bad, "--num-frames", "17"]) == 2
    assert "(--video-conditioning) has 12 frames" in capsys.readouterr().err
    assert main([*bad[:bad.index("--pipeline")], *bad[bad.index("--gemma"):]]) == 2  # distilled: no control video
    assert "takes no --video-conditioning, --conditioning-attention-strength" in capsys.readouterr().err


# ---------------------------------------------------------------- the attention-mask video
ICM = "ic_lora_mask"


def golden_mask(fs):
    if ICM not in fs.manifest:
        pytest.skip(f"{fs.path.name}: no {ICM} section in the manifest")
    g = fs.golden(ICM)
    return g, fs.manifest[ICM], {f"{ICM}.{k}": v for k, v in g.items()}


def _mask_request(fs, meta) -> dict:
    kw = _request(fs, meta)
    del kw["conditioning_attention_strength"]  # the mask's strength is the attention strength
    path, strength = meta["conditioning_attention_mask"]
    kw["conditioning_attention_mask"] = (str(fs.path / path), strength)
    return kw


def _mask_stage_request(kw) -> StageRequest:
    return StageRequest(tuple(kw["images"]), video_conditioning=tuple(kw["video_conditioning"]),
                        conditioning_attention_mask=kw["conditioning_attention_mask"])


def test_downsample_mask_video_to_latent(fixture_set):
    """``downsample_mask_video_to_latent`` alone on the reference's loaded mask: the run's grid, non-integer
    area ratios, a temporal mean of 4, one latent frame, one pixel frame."""
    from mlx_ltx.ic_lora import downsample_mask_video_to_latent

    g, meta, _ = golden_mask(fixture_set)
    mask = g["in.mask.pixels"]
    errors = {}
    for name, case in meta["downsample_cases"].items():
        src = mask[:, :, :case["pixel_frames"]]
        out = downsample_mask_video_to_latent(src, *case["latent_shape"])
        want = g[f"downsample.{name}.out"]
        assert out.shape == want.shape and out.dtype == np.float32, (name, out.shape, want.shape)
        errors[name] = float(np.abs(out - want).max())
    print(f"\n{fixture_set.path.name} mask downsampling max |diff|: " +
          ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) <= 1e-6, errors
    with pytest.raises(ValueError, match="must be a multiple of"):
        downsample_mask_video_to_latent(mask, 4, 1, 2)  # 8 pixel frames after the first do not split in 3


def test_ic_lora_mask_inputs(fixture_set):
    """The mask video decoded as the reference's ``_load_mask_video`` (stage-1 size, grey, [0, 1]); the
    control item wrapped with the downsampled mask × strength; the stage-1 state's attention mask."""
    from mlx_ltx.ic_lora import load_mask_video

    g, meta, _ = golden_mask(fixture_set)
    pipe = _pipeline(fixture_set, meta)
    kw = _mask_request(fixture_set, meta)
    mask_path, strength = kw["conditioning_attention_mask"]
    pixels = load_mask_video(mask_path, meta["height"] // 2, meta["width"] // 2, meta["num_frames"])
    assert pixels.shape == g["in.mask.pixels"].shape
    assert np.abs(pixels - g["in.mask.pixels"]).max() <= 1e-6
    geometry = Geometry(meta["num_frames"], meta["height"], meta["width"], meta["fps"])
    per_stage = stage_inputs_builder("ic-lora")(pipe, _mask_stage_request(kw), geometry, kw["crf_threads"])
    s1, s2 = (inp.video.conditionings for inp in per_stage)
    assert len(s1) == 2 and len(s2) == 1
    wrapped = s1[1]
    assert isinstance(wrapped, ConditioningItemAttentionStrengthWrapper)
    tokens = np.array(wrapped.attention_mask)
    want = g["mask.latent"] * np.float32(strength)
    assert tokens.shape == want.shape and np.abs(tokens - want).max() <= 1e-6, (tokens, want)
    assert len(np.unique(np.round(want, 4))) > 1, "the mask must vary over the control tokens"
    tools = VideoLatentTools.from_pixel_shape(pipe.config, meta["num_frames"], meta["height"] // 2,
                                              meta["width"] // 2, meta["fps"])
    state = tools.create_initial_state(mx.float32)
    for item in s1:
        state = item.apply_to(state, tools)
    am, want_am = np.array(state.attention_mask), g["stage0.video.init.attention_mask"]
    assert am.shape == want_am.shape
    assert np.abs(am - want_am).max() <= 1e-6
    assert np.array_equal(np.array(state.positions), g["stage0.video.init.positions"])
    errors = {"control latent": rel_err(wrapped.conditioning.latent, g["stage0.cond1.latent"]),
              "clean latent": rel_err(state.clean_latent, g["stage0.video.init.clean_latent"])}
    print(f"\n{fixture_set.path.name} {ICM} inputs: attention mask max |diff| {np.abs(am - want_am).max():.1e}, "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors


def test_ic_lora_mask_stages(fixture_set):
    """Each stage's output of the masked run with the reference's stage noise replayed (f32)."""
    g, meta, keyed = golden_mask(fixture_set)
    pipe = _pipeline(fixture_set, meta)
    kw = _mask_request(fixture_set, meta)
    draws = ReferenceDraws(keyed, ICM, sites=("noiser",))
    trace = StageTrace([], [])
    pipe.denoise(Contexts(mx.array(g["ctx0.video"]), mx.array(g["ctx0.audio"])), kw["num_frames"], kw["height"],
                 kw["width"], kw["fps"], images=kw["images"], noise=draws, trace=trace, crf_threads=kw["crf_threads"],
                 request=_mask_stage_request(kw))
    assert draws.left() == {}, draws.left()
    errors = {"upscaled": rel_err(trace.upscaled, g["upscaled.video.latent"])}
    for j, out in enumerate(trace.outputs):
        errors[f"stage{j} video"] = rel_err(out.video_latent, g[f"stage{j}.video.latent"])
        errors[f"stage{j} audio"] = rel_err(out.audio_latent, g[f"stage{j}.audio.latent"])
    # the mask matters: the masked and the scalar-strength runs differ in stage 1
    plain = fixture_set.golden(IC)["stage0.video.latent"]
    moved = rel_err(mx.array(g["stage0.video.latent"]), plain)
    print(f"\n{fixture_set.path.name} {ICM}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
          + f"; masked vs scalar run stage 0: {moved:.2e}")
    assert max(errors.values()) <= TOL_LOOP, errors
    assert moved > 10 * TOL_LOOP


def test_mask_errors(ic, fixture_set, tmp_path):
    """Unreadable, missing or too short mask video; strength outside [0, 1]; both strengths at once;
    before any model loads."""
    pipe, kw, meta = ic
    if ICM not in fixture_set.manifest:
        pytest.skip(f"{fixture_set.path.name}: no {ICM} section in the manifest")
    mask = str(fixture_set.path / fixture_set.manifest[ICM]["conditioning_attention_mask"][0])
    kw = {**kw, "conditioning_attention_strength": 1.0}
    with pytest.raises(FileNotFoundError, match="mask video not found"):
        pipe.generate(meta["prompt"], **kw, conditioning_attention_mask=(str(tmp_path / "none.mp4"), 0.5))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(MediaError,
                       match=r"mask video \(conditioning_attention_mask\): video file .*junk.mp4 cannot be decoded"):
        pipe.generate(meta["prompt"], **kw, conditioning_attention_mask=(str(junk), 0.5))
    with pytest.raises(ValueError, match=r"strength 1.5 must be in \[0, 1\]"):
        pipe.generate(meta["prompt"], **kw, conditioning_attention_mask=(mask, 1.5))
    with pytest.raises(ValueError, match=r"strength -0.1 must be in \[0, 1\]"):
        pipe.generate(meta["prompt"], **kw, conditioning_attention_mask=(mask, -0.1))
    with pytest.raises(ValueError, match="conditioning_attention_mask must be a .* pair"):
        pipe.generate(meta["prompt"], **kw, conditioning_attention_mask=(mask,))
    with pytest.raises(ValueError, match="either conditioning_attention_strength or conditioning_attention_mask"):
        pipe.generate(meta["prompt"], **{**kw, "conditioning_attention_strength": 0.5},
                      conditioning_attention_mask=(mask, 0.5))
    short = tmp_path / "short.mp4"  # 5 frames of the mask: shorter than the 9 the control video is read for
    from mlx_ltx.media_inputs import _ffmpeg_exe
    import subprocess
    subprocess.run([_ffmpeg_exe(), "-loglevel", "error", "-i", mask, "-frames:v", "5", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(short)], check=True)
    with pytest.raises(MediaError, match=r"mask video .*has 5 frames, shorter than the 9 requested .*num_frames ≤ 5 "
                                         r"\(8k\+1: 1\)"):
        pipe.generate(meta["prompt"], **kw, conditioning_attention_mask=(str(short), 0.5))


def test_other_pipelines_refuse_mask(fixture_set, tmp_path):
    pipe = Pipeline.from_pretrained(fixture_set.checkpoint_path, "distilled",
                                    gemma=str(fixture_set.path / fixture_set.manifest["gemma_dir"]),
                                    upsampler=str(fixture_set.upsampler_path("spatial-x2")), dtype=mx.float32)
    with pytest.raises(ValueError, match="takes no conditioning_attention_mask"):
        pipe.generate("x", conditioning_attention_mask=(str(tmp_path / "m.mp4"), 0.5))


def test_cli_mask(fixture_set, tmp_path, capsys):
    """``--conditioning-attention-mask MASK_PATH STRENGTH`` writes the clip; its errors name the flag."""
    from mlx_ltx.generate import main

    g, meta, _ = golden_mask(fixture_set)
    mask, strength = meta["conditioning_attention_mask"]
    base = _cli_base(fixture_set, meta, tmp_path / "icm.mp4")
    i = base.index("--conditioning-attention-strength")
    base = [*base[:i], *base[i + 2:], "--conditioning-attention-mask", str(fixture_set.path / mask), str(strength)]
    assert main(base) == 0, capsys.readouterr().err
    assert (tmp_path / "icm.mp4").stat().st_size > 0
    bad = [*base[:-1], "1.5"]
    bad[bad.index("--output") + 1] = str(tmp_path / "bad.mp4")
    assert main(bad) == 2
    assert "(--conditioning-attention-mask): strength 1.5 must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse's error, as --video-conditioning's
        main([*bad[:-1], "half"])
    assert exit_.value.code == 2
    assert "half: STRENGTH must be a number" in capsys.readouterr().err
    assert main([*bad[:-1], "0.5", "--conditioning-attention-strength", "0.5"]) == 2
    assert "either --conditioning-attention-strength or --conditioning-attention-mask" in capsys.readouterr().err
    assert main([*bad[:-2], str(tmp_path / "none.mp4"), "0.5"]) == 2
    assert "mask video not found" in capsys.readouterr().err
