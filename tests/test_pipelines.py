"""The four pipeline descriptions run through the one machinery (``pipeline_stages.run_stages``
via ``Pipeline.denoise``) against the reference's loops in golden_pipeline, with the reference's
noise injected through the noise-provider hook: same sigmas, guider params, stage order, upsample
and re-noise, and conditioning per stage. Float32; tolerance TOL_LOOP."""

import dataclasses
from functools import lru_cache

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image
from reference_data import TOL_BF16, TOL_LOOP, rel_err
from test_denoising import model_for
from test_sampling import golden, res2s_noise_from

from mlx_ltx.conditioning import ImageConditioningInput, combined_image_conditionings
from mlx_ltx.guidance import LTX_2_3_HQ_PARAMS, detect_params
from mlx_ltx.pipeline_stages import (
    DEV_TWO_STAGE,
    DISTILLED,
    PIPELINES,
    Contexts,
    DenoiserKind,
    Geometry,
    SigmaSource,
    StageOutput,
    StageTrace,
    Stepper,
    run_stage,
)
from mlx_ltx.pipelines import Pipeline
from mlx_ltx.sampling import stage2_distilled_sigmas


def contexts(g, negative=True) -> Contexts:
    c = [mx.array(g["in.video.context"]), mx.array(g["in.audio.context"])]
    if negative:
        c += [mx.array(g["in.video.context_negative"]), mx.array(g["in.audio.context_negative"])]
    return Contexts(*c)


class GoldenNoise:
    """The reference's draws by label; records the order the machinery asked for them."""

    def __init__(self, g, by_label: dict[str, str]):
        self.arrays = {label: mx.array(g[key]) for label, key in by_label.items()}
        self.order = []

    def __call__(self, shape, dtype, label):
        self.order.append(label)
        n = self.arrays[label]
        assert tuple(n.shape) == tuple(shape), (label, n.shape, shape)
        return n.astype(dtype)


@lru_cache(maxsize=4)
def _pipeline(fixture_dir: str, name: str) -> Pipeline:
    from reference_data import FixtureSet

    fs = FixtureSet(fixture_dir)
    lora = fs.path / fs.manifest.get("loras", {}).get("test", "missing") if name.startswith("dev-two") else None
    p = Pipeline.from_pretrained(fs.checkpoint_path, name, gemma=str(fs.path / fs.manifest["gemma_dir"]),
                                 upsampler=str(fs.upsampler_path("spatial-x2")), distilled_lora=lora,
                                 dtype=mx.float32, low_memory=False)
    p._transformer = model_for(fs)  # share the loaded fixture model with the loop tests
    return p


def pipeline_for(fixture_set, name, record=None):
    """A float32 pipeline on the fixture; LoRA strengths asked per stage go to ``record`` and the
    model is used as loaded (the reference loops were run without LoRAs)."""
    p = _pipeline(str(fixture_set.path), name)
    p.__dict__.pop("model_for", None)
    if record is not None:
        p.model_for = lambda stage: (record.append(stage.distilled_lora), p.transformer())[1]
    return p


def final_geometry(g, two_stage: bool) -> Geometry:
    frames, h, w = (int(x) for x in g["geom.stage2.video.pixel_shape" if two_stage else "geom.video.pixel_shape"])
    return Geometry(frames, h, w, float(g["geom.fps"][0]))


def check(errors, name, actual, expected, tol=TOL_LOOP):
    errors[name] = rel_err(actual, expected)
    assert errors[name] <= tol, (name, errors[name])


def test_pipeline_table():
    """The descriptions say what the reference's pipeline classes do (``ltx_pipelines/distilled.py``,
    ``ti2vid_one_stage.py``, ``ti2vid_two_stages.py``, ``ti2vid_two_stages_hq.py``)."""
    d, dev, two, hq = (PIPELINES[n] for n in ("distilled", "dev", "dev-two-stage", "dev-two-stage-hq"))
    assert [s.sigmas for s in d.stages] == [SigmaSource.DISTILLED, SigmaSource.STAGE_2]
    assert [s.denoiser for s in d.stages] == [DenoiserKind.SIMPLE] * 2 and d.audio_stage == 1
    assert [s.size_divisor for s in d.stages] == [2, 1] and not d.uses_steps and not d.guided
    assert len(dev.stages) == 1 and dev.stages[0].sigmas is SigmaSource.SCHEDULER
    assert dev.stages[0].denoiser is DenoiserKind.GUIDED_FACTORY and dev.stages[0].distilled_lora is None
    assert [s.distilled_lora for s in two.stages] == [None, 1.0] and two.audio_stage == 0
    assert [s.distilled_lora for s in hq.stages] == [0.25, 0.5] and hq.audio_stage == 0
    assert [s.stepper for s in hq.stages] == [Stepper.RES2S] * 2
    assert hq.stages[0].sigmas is SigmaSource.SCHEDULER_WITH_LATENT and hq.stages[0].denoiser is DenoiserKind.GUIDED
    assert hq.params(detect_params("2.3")) is LTX_2_3_HQ_PARAMS and hq.params(detect_params("2.3")).num_inference_steps == 15


def test_distilled_pipeline(fixture_set):
    """Stage 1 = ``distilled.*``, the upsample and re-noise = ``handoff.*``, stage 2 =
    ``handoff.stage2.*``; the returned audio is stage 2's."""
    g = golden(fixture_set, "pipeline")
    noise = GoldenNoise(g, {"stage1.video": "distilled.in.video.noise", "stage1.audio": "distilled.in.audio.noise",
                            "stage2.video": "handoff.in.video.noise", "stage2.audio": "handoff.in.audio.noise"})
    lora = []
    p = pipeline_for(fixture_set, "distilled", lora)
    geo = final_geometry(g, True)
    trace = StageTrace([], [])
    video, audio = p.denoise(contexts(g, negative=False), geo.num_frames, geo.height, geo.width, geo.fps,
                             noise=noise, trace=trace)
    assert noise.order == ["stage1.video", "stage1.audio", "stage2.video", "stage2.audio"] and lora == [None, None]
    assert np.array_equal(np.array(trace.sigmas[0]), g["distilled.sigmas"])
    assert np.array_equal(np.array(trace.sigmas[1]), g["handoff.stage2.sigmas"])
    assert float(trace.sigmas[1][0]) == float(g["handoff.noise_scale"][0])
    errors = {}
    check(errors, "distilled.out.video.latent", trace.outputs[0].video_latent, g["distilled.out.video.latent"])
    check(errors, "distilled.out.audio.latent", trace.outputs[0].audio_latent, g["distilled.out.audio.latent"])
    check(errors, "handoff.out.upscaled.video.latent", trace.upscaled, g["handoff.out.upscaled.video.latent"])
    check(errors, "handoff.stage2.out.video.latent", video, g["handoff.stage2.out.video.latent"])
    check(errors, "handoff.stage2.out.audio.latent", audio, g["handoff.stage2.out.audio.latent"])
    print(f"\n{fixture_set.path.name} distilled pipeline max rel err {max(errors.values()):.2e}")


def test_distilled_pipeline_bf16(fixture_set):
    """The same in bfloat16 (weights, latents, contexts and noise), as the pipelines run by default."""
    g = golden(fixture_set, "pipeline")
    bf = mx.bfloat16
    p = Pipeline.from_pretrained(fixture_set.checkpoint_path, "distilled",
                                 gemma=str(fixture_set.path / fixture_set.manifest["gemma_dir"]),
                                 upsampler=str(fixture_set.upsampler_path("spatial-x2")), dtype=bf, low_memory=False)
    p._transformer = model_for(fixture_set, bf)
    noise = GoldenNoise(g, {"stage1.video": "distilled.in.video.noise", "stage1.audio": "distilled.in.audio.noise",
                            "stage2.video": "handoff.in.video.noise", "stage2.audio": "handoff.in.audio.noise"})
    geo = final_geometry(g, True)
    ctx = Contexts(*(c.astype(bf) for c in contexts(g, negative=False)[:2]))
    video, audio = p.denoise(ctx, geo.num_frames, geo.height, geo.width, geo.fps, noise=noise)
    assert video.dtype == bf and audio.dtype == bf
    err = max(rel_err(video, g["handoff.stage2.out.video.latent"]), rel_err(audio, g["handoff.stage2.out.audio.latent"]))
    print(f"\n{fixture_set.path.name} distilled pipeline bf16 max rel err {err:.2e}")
    assert err <= TOL_BF16, err


def _dev_params(g, p):
    """The pipeline's defaults with the fixture's STG block (the tiny models lack block 28/29)."""
    assert p.params == detect_params(p.checkpoint)
    return {f"{s}_guider_params": dataclasses.replace(getattr(p.params, f"{s}_guider_params"),
                                                      stg_blocks=tuple(int(b) for b in g[f"dev.guider.{s}.stg_blocks"]))
            for s in ("video", "audio")}


@pytest.mark.parametrize("name", ["dev", "dev-two-stage"])
def test_dev_stage1(fixture_set, name):
    """One-stage dev at full size and dev-two-stage's stage 1 at half size are the ``dev.*`` loop:
    LTX2Scheduler(steps) without a latent, guided with the checkpoint generation's params."""
    g = golden(fixture_set, "pipeline")
    noise = GoldenNoise(g, {"stage1.video": "dev.in.video.noise", "stage1.audio": "dev.in.audio.noise"})
    lora = []
    p = pipeline_for(fixture_set, name, lora)
    steps = len(g["dev.sigmas"]) - 1
    geo = final_geometry(g, name != "dev")
    trace = StageTrace([], [])
    if name == "dev":
        video, audio = p.denoise(contexts(g), geo.num_frames, geo.height, geo.width, geo.fps, steps=steps,
                                 noise=noise, trace=trace, **_dev_params(g, p))
        assert lora == [None] and video is trace.outputs[0].video_latent and audio is trace.outputs[0].audio_latent
    else:
        # stage 2 starts from another stage 1 than handoff.*: only its wiring is checked here
        noise.arrays.update({"stage2.video": mx.zeros((1, int(np.prod(g["geom.stage2.video.latent_shape"][2:])),
                                                       int(g["geom.video.latent_shape"][1]))),
                             "stage2.audio": mx.array(g["dev.in.audio.noise"])})
        video, audio = p.denoise(contexts(g), geo.num_frames, geo.height, geo.width, geo.fps, steps=steps,
                                 noise=noise, trace=trace, **_dev_params(g, p))
        assert video is trace.outputs[1].video_latent
        assert lora == [None, 1.0]
        assert np.array_equal(np.array(trace.sigmas[1]), np.array(stage2_distilled_sigmas()))
        assert audio is trace.outputs[0].audio_latent  # stage-2 audio discarded
    assert np.allclose(np.array(trace.sigmas[0]), g["dev.sigmas"], rtol=0, atol=1e-6)
    errors = {}
    check(errors, "dev.out.video.latent", trace.outputs[0].video_latent, g["dev.out.video.latent"])
    check(errors, "dev.out.audio.latent", trace.outputs[0].audio_latent, g["dev.out.audio.latent"])
    print(f"\n{fixture_set.path.name} {name} stage 1 max rel err {max(errors.values()):.2e}")


def test_two_stage_refinement(fixture_set):
    """dev-two-stage's stage 2 (the description's stage, run by ``run_stage``) from the golden
    upscaled latent and stage-1 audio = ``handoff.stage2.*``."""
    g = golden(fixture_set, "pipeline")
    stage = DEV_TWO_STAGE.stages[1]
    noise = GoldenNoise(g, {"stage2.video": "handoff.in.video.noise", "stage2.audio": "handoff.in.audio.noise"})
    initial = StageOutput(mx.array(g["handoff.out.upscaled.video.latent"]), mx.array(g["handoff.in.stage1.audio.latent"]))
    params = detect_params(fixture_set.checkpoint)
    out = run_stage(model_for(fixture_set), stage, 1, fixture_set.checkpoint.config, final_geometry(g, True),
                    contexts(g), [], noise, stage2_distilled_sigmas(), video_params=params.video_guider_params,
                    audio_params=params.audio_guider_params, initial=initial)
    errors = {}
    check(errors, "handoff.stage2.out.video.latent", out.video_latent, g["handoff.stage2.out.video.latent"])
    check(errors, "handoff.stage2.out.audio.latent", out.audio_latent, g["handoff.stage2.out.audio.latent"])
    print(f"\n{fixture_set.path.name} two-stage refinement max rel err {max(errors.values()):.2e}")


def test_hq_stage1(fixture_set):
    """HQ's stage 1 = the ``res2s.*`` loop: scheduler WITH the stage-1 latent, GuidedDenoiser with
    the HQ preset (no override), res_2s with the reference's SDE draws; LoRA 0.25 then 0.5."""
    g = golden(fixture_set, "pipeline")
    sigmas = g["res2s.sigmas"]
    draw, queue = res2s_noise_from(g, len(sigmas) - 1)
    noise = GoldenNoise(g, {"stage1.video": "res2s.in.video.noise", "stage1.audio": "res2s.in.audio.noise",
                            "stage2.video": "handoff.in.video.noise", "stage2.audio": "handoff.in.audio.noise"})
    lora = []
    p = pipeline_for(fixture_set, "dev-two-stage-hq", lora)
    geo = final_geometry(g, True)
    trace = StageTrace([], [])
    _, audio = p.denoise(contexts(g), geo.num_frames, geo.height, geo.width, geo.fps, steps=len(sigmas) - 1,
                         noise=noise, trace=trace, sde_noise=lambda i: draw if i == 0 else None)
    assert not queue and lora == [0.25, 0.5] and audio is trace.outputs[0].audio_latent
    for s in ("video", "audio"):
        hq = getattr(LTX_2_3_HQ_PARAMS, f"{s}_guider_params")
        assert np.allclose([hq.cfg_scale, hq.stg_scale, hq.rescale_scale, hq.modality_scale, hq.skip_step],
                           g[f"res2s.guider.{s}.params"])
    assert np.allclose(np.array(trace.sigmas[0]), sigmas, rtol=0, atol=1e-6)
    assert np.array_equal(np.array(trace.sigmas[1]), np.array(stage2_distilled_sigmas()))
    errors = {}
    check(errors, "res2s.out.video.latent", trace.outputs[0].video_latent, g["res2s.out.video.latent"])
    check(errors, "res2s.out.audio.latent", trace.outputs[0].audio_latent, g["res2s.out.audio.latent"])
    print(f"\n{fixture_set.path.name} hq stage 1 max rel err {max(errors.values()):.2e}")


class GoldenEncoder:
    """Stands in for the video encoder: returns the reference's image latent for pixels of the
    expected size (the CRF re-encode is libx264-build dependent; test_conditioning covers it)."""

    dtype = mx.float32

    def __init__(self, latent, hw):
        self.latent, self.hw, self.calls = mx.array(latent), hw, 0

    def __call__(self, pixels):
        assert tuple(pixels.shape[-2:]) == self.hw
        self.calls += 1
        return self.latent


@pytest.mark.parametrize("prefix", ["imgcond.s100", "imgcond.s50", "keyframe.s100", "keyframe.s50"])
def test_conditioned_stage(fixture_set, prefix, tmp_path):
    """A first-frame image (frame 0: latent replacement) and a last-frame image (appended guiding
    tokens, noise drawn for them too) through ``combined_image_conditionings`` and the stage
    runner = ``imgcond.*`` / ``keyframe.*`` (their 2-step schedule given as a sigma override)."""
    g = golden(fixture_set, "pipeline")
    kind = prefix.split(".")[0]
    frames, h, w = (int(x) for x in g["geom.video.pixel_shape"])
    img = 0 if kind == "imgcond" else 1
    path = tmp_path / "img.png"
    Image.fromarray(g[f"crf.img{img}.in.image_u8"]).save(path)
    frame_idx = 0 if kind == "imgcond" else int(g["keyframe.frame_idx"][0])
    images = [ImageConditioningInput(str(path), frame_idx, float(g[f"{prefix}.strength"][0]))]
    items = combined_image_conditionings(images, h, w, GoldenEncoder(g[f"{kind}.in.latent"], (h, w)))
    noise = GoldenNoise(g, {"stage1.video": f"{prefix}.in.video.noise", "stage1.audio": f"{prefix}.in.audio.noise"})
    params = detect_params(fixture_set.checkpoint)
    out = run_stage(model_for(fixture_set), DISTILLED.stages[0], 0, fixture_set.checkpoint.config,
                    Geometry(frames, 2 * h, 2 * w, float(g["geom.fps"][0])), contexts(g), items, noise,
                    mx.array(g[f"{kind}.sigmas"]), video_params=params.video_guider_params,
                    audio_params=params.audio_guider_params)
    errors = {}
    check(errors, f"{prefix}.out.video.latent", out.video_latent, g[f"{prefix}.out.video.latent"])
    check(errors, f"{prefix}.out.audio.latent", out.audio_latent, g[f"{prefix}.out.audio.latent"])
    print(f"\n{fixture_set.path.name} {prefix} stage max rel err {max(errors.values()):.2e}")


def test_images_encoded_per_stage_size(fixture_set, tmp_path):
    """Two-stage pipelines encode each image twice: at stage-1 size (H/2, W/2) and at full size."""
    g = golden(fixture_set, "pipeline")
    p = pipeline_for(fixture_set, "distilled")
    frames, h, w = (int(x) for x in g["geom.stage2.video.pixel_shape"])
    path = tmp_path / "img.png"
    Image.fromarray(g["crf.img0.in.image_u8"]).save(path)
    sizes = []
    C = int(g["geom.video.latent_shape"][1])
    _, sh, sw = (int(x) for x in g["geom.scale_factors"])

    class Encoder:
        dtype = mx.float32

        def __call__(self, pixels):
            sizes.append(tuple(pixels.shape[-2:]))
            return mx.zeros((1, C, 1, pixels.shape[-2] // sh, pixels.shape[-1] // sw))

    p._video_encoder = Encoder()
    items = p._stage_conditionings([ImageConditioningInput(str(path), 0, 1.0),
                                    ImageConditioningInput(str(path), frames - 1, 0.5)],
                                   Geometry(frames, h, w, 24.0))
    assert sizes == [(h // 2, w // 2)] * 2 + [(h, w)] * 2
    assert [type(i).__name__ for i in items[0]] == ["VideoConditionByLatentIndex", "VideoConditionByKeyframeIndex"]
    p._video_encoder = None
