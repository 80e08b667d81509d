"""The pipelines beyond the first four, against the reference's own pipeline modules run end to end
on the tiny fixture with every draw recorded (pipeline_goldens_14.py, FORMAT.md §7): each stage's
output and the whole pipeline's frames and waveform, draws replayed. Sets without a pipeline's
golden skip it."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_F32, TOL_LOOP, rel_err
from test_e2e import ReferenceDraws, guider

from mlx_ltx.conditioning import ImageConditioningInput
from mlx_ltx.pipeline_stages import PIPELINES, Contexts, StageTrace
from mlx_ltx.pipelines import Pipeline


def golden(fs, name: str):
    """(golden, manifest section, draws) of one pipeline; draws keyed as test_e2e's ReferenceDraws reads them."""
    g = fs.golden(name)
    if name not in fs.manifest:
        pytest.skip(f"{fs.path.name}: no {name} section in the manifest")
    return g, fs.manifest[name], {f"{name}.{k}": v for k, v in g.items()}


def _images(fs, meta):
    return [ImageConditioningInput(str(fs.path / p), idx, s) for p, idx, s in meta.get("images", [])]


# ---------------------------------------------------------------- keyframe interpolation
KI = "keyframe_interpolation"


def _ki_pipeline(fs, meta) -> Pipeline:
    return Pipeline.from_pretrained(fs.checkpoint_path, "keyframe-interpolation",
                                    gemma=str(fs.path / fs.manifest["gemma_dir"]),
                                    upsampler=str(fs.upsampler_path("spatial-x2")),
                                    distilled_lora=str(fs.path / meta["distilled_lora"]), dtype=mx.float32)


def _ki_request(fs, meta) -> dict:
    return {"height": meta["height"], "width": meta["width"], "num_frames": meta["num_frames"], "fps": meta["fps"],
            "seed": meta["seed"], "images": _images(fs, meta), "negative_prompt": meta["negative_prompt"],
            "num_inference_steps": meta["steps"], "video_guider_params": guider(meta["guiders"]["video"]),
            "audio_guider_params": guider(meta["guiders"]["audio"]), "crf_threads": fs.manifest["e2e"]["crf_threads"]}


def test_keyframe_interpolation_spec():
    """KeyframeInterpolationPipeline: the dev two-stage stages, every image a guiding keyframe
    (frame 0 too), the stage-2 audio kept (it decodes stage 2's)."""
    ki, two = PIPELINES["keyframe-interpolation"], PIPELINES["dev-two-stage"]
    assert [(s.sigmas, s.denoiser, s.distilled_lora) for s in ki.stages] == \
        [(s.sigmas, s.denoiser, s.distilled_lora) for s in two.stages]
    assert ki.image_conditioning == "guiding" and ki.audio_stage == 1 and two.audio_stage == 0


def test_keyframe_interpolation_stages(fixture_set):
    g, meta, keyed = golden(fixture_set, KI)
    pipe = _ki_pipeline(fixture_set, meta)
    kw = _ki_request(fixture_set, meta)
    draws = ReferenceDraws(keyed, KI, sites=("noiser",))
    trace = StageTrace([], [])
    pipe.denoise(Contexts(*(mx.array(g[k]) for k in ("ctx0.video", "ctx0.audio", "ctx1.video", "ctx1.audio"))),
                 kw["num_frames"], kw["height"], kw["width"], kw["fps"], images=kw["images"],
                 steps=kw["num_inference_steps"], video_guider_params=kw["video_guider_params"],
                 audio_guider_params=kw["audio_guider_params"], noise=draws, trace=trace,
                 crf_threads=kw["crf_threads"])
    errors = {"upscaled": rel_err(trace.upscaled, g["upscaled.video.latent"])}
    for j, out in enumerate(trace.outputs):
        errors[f"stage{j} video"] = rel_err(out.video_latent, g[f"stage{j}.video.latent"])
        errors[f"stage{j} audio"] = rel_err(out.audio_latent, g[f"stage{j}.audio.latent"])
    print(f"\n{fixture_set.path.name} {KI}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors


def test_keyframe_interpolation_whole(fixture_set):
    g, meta, keyed = golden(fixture_set, KI)
    pipe = _ki_pipeline(fixture_set, meta)
    draws = ReferenceDraws(keyed, KI)
    result = pipe.generate(meta["prompt"], noise=draws, **_ki_request(fixture_set, meta))
    assert draws.left() == {}, draws.left()
    frames = np.concatenate(list(pipe.iter_video_frames(
        result.video_latent, noise=ReferenceDraws(keyed, KI, sites=("decoder",)).decoder)), axis=0)
    wave, _ = pipe.decode_audio(result.audio_latent)
    errors = {"video latent": rel_err(result.video_latent, g["decode.video.latent"]),
              "audio latent": rel_err(result.audio_latent, g["decode.audio.latent"]),
              "frames": rel_err(frames, g["out.frames_u16"].astype(np.float64) / 65535.0),
              "waveform": rel_err(wave, g["out.waveform"])}
    print(f"\n{fixture_set.path.name} {KI} whole: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors
    assert rel_err(pipe.encode_prompts(meta["prompt"], meta["negative_prompt"]).video, g["ctx0.video"]) <= TOL_F32


# ---------------------------------------------------------------- text to audio
T2A = "t2a"


def _t2a(fs, meta):
    pipe = Pipeline.from_pretrained(fs.checkpoint_path, "t2a", gemma=str(fs.path / fs.manifest["gemma_dir"]),
                                    dtype=mx.float32)
    kw = {"num_frames": meta["num_frames"], "fps": meta["fps"], "seed": meta["seed"],
          "negative_prompt": meta["negative_prompt"], "num_inference_steps": meta["steps"],
          "audio_guider_params": guider(meta["guiders"]["audio"])}
    return pipe, kw


def test_t2a_matches_reference(fixture_set, tmp_path):
    """T2AOneStagePipeline: one guided stage with no video stream; the audio latent, the decoded
    waveform and a .wav / .m4a output."""
    g, meta, keyed = golden(fixture_set, T2A)
    pipe, kw = _t2a(fixture_set, meta)
    assert pipe.spec.params(pipe.kind.params).audio_guider_params.modality_scale == 1.0
    draws = ReferenceDraws(keyed, T2A)
    result = pipe.generate(meta["prompt"], noise=draws, output_path=tmp_path / "a.wav", **kw)
    assert draws.left() == {} and result.frames is None and result.video_latent is None
    errors = {"stage audio": rel_err(result.audio_latent, g["stage0.audio.latent"]),
              "audio latent": rel_err(result.audio_latent, g["decode.audio.latent"]),
              "waveform": rel_err(result.audio, g["out.waveform"])}
    print(f"\n{fixture_set.path.name} t2a: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors
    assert result.sample_rate == int(g["out.sample_rate"][0])
    import wave

    with wave.open(str(tmp_path / "a.wav")) as w:
        assert w.getnframes() == result.audio.shape[1] and w.getframerate() == result.sample_rate
    m4a = pipe.generate(meta["prompt"], noise=ReferenceDraws(keyed, T2A), output_path=tmp_path / "a.m4a", **kw)
    assert m4a.path.stat().st_size > 0


def test_t2a_refuses_video_arguments(fixture_set, tmp_path):
    g, meta, _ = golden(fixture_set, T2A)
    pipe, kw = _t2a(fixture_set, meta)
    with pytest.raises(ValueError, match="makes audio only: drop height"):
        pipe.generate("rain", height=64, **kw)
    with pytest.raises(ValueError, match=r"output_path must end in \.wav or \.m4a"):
        pipe.generate("rain", output_path=tmp_path / "a.mp4", **kw)
    with pytest.raises(ValueError, match="takes no audio_path"):
        pipe.generate("rain", audio_path="x.wav", **kw)
