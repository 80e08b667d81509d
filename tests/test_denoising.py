"""The pipeline loops end to end with the fixture's transformer, against golden_pipeline: the
distilled 8-step Euler loop (SimpleDenoiser), the dev guided loop (cond/uncond/STG/modality passes,
batched and one by one), the HQ res_2s loop with the injected SDE noise, and the stage-2 refinement
after the two-stage hand-off. All randomness comes from the goldens; float32; tolerance TOL_LOOP."""

import dataclasses
from functools import lru_cache

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_BF16, TOL_LOOP, FixtureSet, rel_err
from test_sampling import _guider, fresh_state, golden, res2s_noise_from

from mlx_ltx.denoising import (
    FactoryGuidedDenoiser,
    GuidedDenoiser,
    SimpleDenoiser,
    denoise_loop,
    modality_from_latent_state,
)
from mlx_ltx.guidance import MultiModalGuider, MultiModalGuiderFactory, detect_params
from mlx_ltx.models.transformer import LTXModel
from mlx_ltx.sampling import EulerDiffusionStep, Res2sDiffusionStep


@lru_cache(maxsize=4)
def _model(path: str, dtype_name: str) -> LTXModel:
    return LTXModel.from_checkpoint(path, dtype=getattr(mx, dtype_name))


def model_for(fixture_set: FixtureSet, dtype=mx.float32) -> LTXModel:
    return _model(str(fixture_set.checkpoint_path), "float32" if dtype == mx.float32 else "bfloat16")


def contexts(g, negative: bool = False):
    suffix = "_negative" if negative else ""
    return mx.array(g[f"in.video.context{suffix}"]), mx.array(g[f"in.audio.context{suffix}"])


class Recorder:
    """Wraps a denoiser; keeps every call's inputs and results."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, model, video_state, audio_state, sigma, step_index):
        rv, ra = self.inner(model, video_state, audio_state, sigma, step_index)
        self.calls.append({"sigma": sigma, "v_in": video_state.latent, "a_in": audio_state.latent, "rv": rv, "ra": ra})
        return rv, ra


def unpatchify_video(tokens, shape):
    _, c, f, h, w = (int(d) for d in shape)
    return np.asarray(tokens).reshape(1, f, h, w, c).transpose(0, 4, 1, 2, 3)


def unpatchify_audio(tokens, shape):
    _, c, t, m = (int(d) for d in shape)
    return np.asarray(tokens).reshape(1, t, c, m).transpose(0, 2, 1, 3)


def check(errors: dict, name: str, actual, expected, tol=TOL_LOOP):
    errors[name] = rel_err(actual, expected)
    assert errors[name] <= tol, (name, errors[name])


def run_euler(fixture_set, prefix, vs, as_, denoiser, passes=(), dtype=mx.float32, tol=TOL_LOOP):
    g = golden(fixture_set, "pipeline")
    sigmas = mx.array(g[f"{prefix}.sigmas"])
    rec = Recorder(denoiser)
    latents = []
    v, a = denoise_loop(model_for(fixture_set, dtype), vs, as_, sigmas, rec, EulerDiffusionStep(),
                        on_step=lambda i, v, a: latents.append((v.latent, a.latent)))
    errors: dict[str, float] = {}
    for i, c in enumerate(rec.calls):
        for stream, r, lat in (("video", c["rv"], latents[i][0]), ("audio", c["ra"], latents[i][1])):
            k = f"{prefix}.step{i}.{stream}"
            check(errors, f"{k}.denoised", r.denoised, g[f"{k}.denoised"], tol)
            check(errors, f"{k}.latent", lat, g[f"{k}.latent"], tol)
            for p in passes:
                if f"{k}.{p}" in g:
                    check(errors, f"{k}.{p}", getattr(r, p), g[f"{k}.{p}"], tol)
                else:
                    assert getattr(r, p) is None, f"{k}.{p} was run but the reference did not run it"
    assert len(rec.calls) == len(g[f"{prefix}.sigmas"]) - 1
    check(errors, f"{prefix}.out.video.tokens", v.latent, g[f"{prefix}.out.video.tokens"], tol)
    vshape = g["geom.stage2.video.latent_shape"] if prefix.startswith("handoff") else g["geom.video.latent_shape"]
    check(errors, f"{prefix}.out.video.latent", unpatchify_video(np.array(v.latent.astype(mx.float32)), vshape),
          g[f"{prefix}.out.video.latent"], tol)
    check(errors, f"{prefix}.out.audio.latent",
          unpatchify_audio(np.array(a.latent.astype(mx.float32)), g["geom.audio.latent_shape"]),
          g[f"{prefix}.out.audio.latent"], tol)
    return errors, rec


def test_distilled_loop(fixture_set):
    g = golden(fixture_set, "pipeline")
    vs = fresh_state(g["distilled.video.latent_init"], g["video.positions"])
    as_ = fresh_state(g["distilled.audio.latent_init"], g["audio.positions"])
    errors, _ = run_euler(fixture_set, "distilled", vs, as_, SimpleDenoiser(*contexts(g)))
    print(f"\n{fixture_set.path.name} distilled max rel err {max(errors.values()):.2e}")


def test_distilled_loop_bf16(fixture_set):
    """bf16 weights and latents (velocity and state rounded to bf16 as the reference's bf16 runs)."""
    g = golden(fixture_set, "pipeline")
    bf = mx.bfloat16
    vs = fresh_state(g["distilled.video.latent_init"], g["video.positions"])
    as_ = fresh_state(g["distilled.audio.latent_init"], g["audio.positions"])
    vs, as_ = (dataclasses.replace(s, latent=s.latent.astype(bf), clean_latent=s.clean_latent.astype(bf)) for s in (vs, as_))
    vc, ac = contexts(g)
    v, a = denoise_loop(model_for(fixture_set, bf), vs, as_, mx.array(g["distilled.sigmas"]),
                        SimpleDenoiser(vc.astype(bf), ac.astype(bf)))
    assert v.latent.dtype == bf and a.latent.dtype == bf
    err = max(rel_err(v.latent, g["distilled.out.video.tokens"]),
              rel_err(unpatchify_audio(np.array(a.latent.astype(mx.float32)), g["geom.audio.latent_shape"]),
                      g["distilled.out.audio.latent"]))
    print(f"\n{fixture_set.path.name} distilled bf16 max rel err {err:.2e}")
    assert err <= TOL_BF16, err


def dev_denoiser(g, fixture_set, max_batch_size, factory: bool):
    # the checkpoint's generation decides the params; the fixture clamps the STG block to the tiny model
    params = detect_params(fixture_set.checkpoint)
    vg, ag = (MultiModalGuider(dataclasses.replace(p, stg_blocks=_guider(g, "dev", s).params.stg_blocks))
              for p, s in ((params.video_guider_params, "video"), (params.audio_guider_params, "audio")))
    (vc, ac), (vn, an) = contexts(g), contexts(g, negative=True)
    if factory:
        return FactoryGuidedDenoiser(vc, ac, MultiModalGuiderFactory.constant(vg.params, vn),
                                     MultiModalGuiderFactory.constant(ag.params, an), max_batch_size=max_batch_size)
    return GuidedDenoiser(vc, ac, dataclasses.replace(vg, negative_context=vn),
                          dataclasses.replace(ag, negative_context=an), max_batch_size=max_batch_size)


@pytest.mark.parametrize("max_batch_size", [1, None], ids=["one-pass-per-call", "batched"])
def test_dev_guided_loop(fixture_set, max_batch_size):
    g = golden(fixture_set, "pipeline")
    vs = fresh_state(g["dev.in.video.noise"], g["video.positions"])
    as_ = fresh_state(g["dev.in.audio.noise"], g["audio.positions"])
    errors, _ = run_euler(fixture_set, "dev", vs, as_, dev_denoiser(g, fixture_set, max_batch_size, True),
                            passes=("cond", "uncond", "ptb", "mod"))
    assert any(k.endswith(".ptb") for k in errors) and any(k.endswith(".mod") for k in errors)
    print(f"\n{fixture_set.path.name} dev ({max_batch_size}) max rel err {max(errors.values()):.2e}")


def test_dev_batched_equals_unbatched(fixture_set):
    """One step's guidance passes give the same x0 batched in one call and one pass per call."""
    g = golden(fixture_set, "pipeline")
    model = model_for(fixture_set)
    vs = fresh_state(g["dev.step0.video.latent"], g["video.positions"])
    as_ = fresh_state(g["dev.step0.audio.latent"], g["audio.positions"])
    sigma = float(g["dev.sigmas"][1])
    single = dev_denoiser(g, fixture_set, 1, False)(model, vs, as_, sigma, 1)
    batched = dev_denoiser(g, fixture_set, 3, False)(model, vs, as_, sigma, 1)  # 2 calls: 3 passes + 1
    for s, b in zip(single, batched):
        for p in ("denoised", "cond", "uncond", "ptb", "mod"):
            assert rel_err(getattr(b, p), np.array(getattr(s, p))) <= 1e-5, p


def test_res2s_loop(fixture_set):
    g = golden(fixture_set, "pipeline")
    sigmas = g["res2s.sigmas"]
    n = len(sigmas) - 1
    draw, queue = res2s_noise_from(g, n)
    (vc, ac), (vn, an) = contexts(g), contexts(g, negative=True)
    vg, ag = _guider(g, "res2s", "video"), _guider(g, "res2s", "audio")
    rec = Recorder(GuidedDenoiser(vc, ac, dataclasses.replace(vg, negative_context=vn),
                                  dataclasses.replace(ag, negative_context=an)))
    stepper = Res2sDiffusionStep(eta=float(g["res2s.eta"][0]), substep_eta=float(g["res2s.substep_eta"][0]),
                                 bongmath=True, legacy_mode=True, new_noise=draw)
    latents = []
    v, a = denoise_loop(model_for(fixture_set), fresh_state(g["res2s.in.video.noise"], g["video.positions"]),
                        fresh_state(g["res2s.in.audio.noise"], g["audio.positions"]), mx.array(sigmas), rec, stepper,
                        on_step=lambda i, v, a: latents.append((v.latent, a.latent)))
    assert not queue and len(rec.calls) == 2 * n + (1 if sigmas[-1] == 0 else 0)
    errors: dict[str, float] = {}
    for j, c in enumerate(rec.calls):
        assert abs(c["sigma"] - g[f"res2s.call{j}.sigma"][0]) <= 1e-6
        for stream, r, x in (("video", c["rv"], c["v_in"]), ("audio", c["ra"], c["a_in"])):
            check(errors, f"res2s.call{j}.{stream}.in", x, g[f"res2s.call{j}.{stream}.in"])
            check(errors, f"res2s.call{j}.{stream}.denoised", r.denoised, g[f"res2s.call{j}.{stream}.denoised"])
    for i in range(n):
        check(errors, f"res2s.step{i}.video.latent", latents[i][0], g[f"res2s.step{i}.video.latent"])
        check(errors, f"res2s.step{i}.audio.latent", latents[i][1], g[f"res2s.step{i}.audio.latent"])
    check(errors, "res2s.out.video.tokens", v.latent, g["res2s.out.video.tokens"])
    check(errors, "res2s.out.video.latent", unpatchify_video(np.array(v.latent), g["geom.video.latent_shape"]),
          g["res2s.out.video.latent"])
    check(errors, "res2s.out.audio.latent", unpatchify_audio(np.array(a.latent), g["geom.audio.latent_shape"]),
          g["res2s.out.audio.latent"])
    print(f"\n{fixture_set.path.name} res2s max rel err {max(errors.values()):.2e}")


def test_handoff_stage2_loop(fixture_set):
    g = golden(fixture_set, "pipeline")
    vs = fresh_state(g["handoff.out.video.latent"], g["handoff.video.positions"])
    vs.denoise_mask = mx.array(g["handoff.video.denoise_mask"])
    _, c, f, h, w = (int(d) for d in g["geom.stage2.video.latent_shape"])
    vs.clean_latent = mx.array(g["handoff.out.upscaled.video.latent"].transpose(0, 2, 3, 4, 1).reshape(1, f * h * w, c))
    as_ = fresh_state(g["handoff.out.audio.latent"], g["audio.positions"])
    stage1_audio = g["handoff.in.stage1.audio.latent"]
    as_.clean_latent = mx.array(stage1_audio.transpose(0, 2, 1, 3).reshape(1, stage1_audio.shape[2], -1))
    errors, _ = run_euler(fixture_set, "handoff.stage2", vs, as_, SimpleDenoiser(*contexts(g)))
    print(f"\n{fixture_set.path.name} handoff.stage2 max rel err {max(errors.values()):.2e}")


def test_frozen_state_zeroes_sigma(fixture_set):
    g = golden(fixture_set, "pipeline")
    st = fresh_state(g["dev.in.audio.noise"], g["audio.positions"])
    m = modality_from_latent_state(dataclasses.replace(st, frozen=True, denoise_mask=mx.zeros_like(st.denoise_mask)),
                                   contexts(g)[1], 0.5)
    assert float(m.sigma.max()) == 0.0 and float(m.timesteps.max()) == 0.0
    assert float(modality_from_latent_state(st, contexts(g)[1], 0.5).sigma[0]) == 0.5


def test_missing_stg_block_is_an_error(fixture_set):
    """The reference silently skips STG for a block the model lacks; here it is an error."""
    g = golden(fixture_set, "pipeline")
    model = model_for(fixture_set)
    vc, ac = contexts(g)
    guider = MultiModalGuider(dataclasses.replace(detect_params(fixture_set.checkpoint).video_guider_params,
                                                  stg_blocks=(model.num_blocks,)), contexts(g, negative=True)[0])
    st = fresh_state(g["dev.in.video.noise"], g["video.positions"])
    with pytest.raises(ValueError, match="STG block"):
        GuidedDenoiser(vc, ac, guider, None)(model, st, None, 0.5, 0)
    with pytest.raises(ValueError, match="unsupported stepper"):
        denoise_loop(model, st, None, mx.array(g["dev.sigmas"]), SimpleDenoiser(vc, ac), stepper=object())


CONDITIONED = ["imgcond.s100", "imgcond.s50", "keyframe.s100", "keyframe.s50", "keyframe.s100_attn50"]


@pytest.mark.parametrize("prefix", CONDITIONED)
def test_conditioned_euler_loop(fixture_set, prefix):
    """States with conditioned tokens (mask < 1, clean latent), appended guiding tokens and an
    attention mask, as the conditioning module builds them: the blend and per-token timesteps."""
    g = golden(fixture_set, "pipeline")
    kind = prefix.split(".")[0]
    positions = g.get(f"{prefix}.video.positions", g["video.positions"])
    vs = fresh_state(g[f"{prefix}.video.latent_init"], positions)
    vs.denoise_mask = mx.array(g[f"{prefix}.video.denoise_mask"])
    vs.clean_latent = mx.array(g[f"{prefix}.video.clean_latent"])
    if f"{prefix}.video.attention_mask" in g:
        vs.attention_mask = mx.array(g[f"{prefix}.video.attention_mask"])
    as_ = fresh_state(g[f"{prefix}.audio.latent_init"], g["audio.positions"])
    g = {**g, f"{prefix}.sigmas": g[f"{kind}.sigmas"]}
    sigmas = mx.array(g[f"{prefix}.sigmas"])
    rec = Recorder(SimpleDenoiser(*contexts(g)))
    latents = []
    v, a = denoise_loop(model_for(fixture_set), vs, as_, sigmas, rec,
                        on_step=lambda i, v, a: latents.append((v.latent, a.latent)))
    errors: dict[str, float] = {}
    for i, c in enumerate(rec.calls):
        for stream, r, lat in (("video", c["rv"], latents[i][0]), ("audio", c["ra"], latents[i][1])):
            check(errors, f"{prefix}.step{i}.{stream}.denoised", r.denoised, g[f"{prefix}.step{i}.{stream}.denoised"])
            check(errors, f"{prefix}.step{i}.{stream}.latent", lat, g[f"{prefix}.step{i}.{stream}.latent"])
    check(errors, f"{prefix}.out.video.tokens", v.latent, g[f"{prefix}.out.video.tokens"])
    n = int(np.prod(g["geom.video.latent_shape"][2:]))
    check(errors, f"{prefix}.out.video.latent", unpatchify_video(np.array(v.latent[:, :n]), g["geom.video.latent_shape"]),
          g[f"{prefix}.out.video.latent"])
    check(errors, f"{prefix}.out.audio.latent", unpatchify_audio(np.array(a.latent), g["geom.audio.latent_shape"]),
          g[f"{prefix}.out.audio.latent"])
    # fully conditioned tokens (mask 0) never move
    keep = np.array(vs.denoise_mask)[0, :, 0] == 0
    assert np.array_equal(np.array(v.latent)[0, keep], np.array(vs.clean_latent)[0, keep])
    print(f"\n{fixture_set.path.name} {prefix} max rel err {max(errors.values()):.2e}")
