"""Sampling math against the reference, without a transformer: sigma schedules
(golden_schedulers), the guider (dev.* pass outputs -> guided x0), per-generation params, and the
Euler and res_2s loops replayed with the reference's own denoiser outputs (golden_pipeline), so
any error here is the sampler's alone."""

import re
from functools import lru_cache

import mlx.core as mx
import numpy as np
import pytest
from reference_data import FixtureSet, rel_err

from mlx_ltx.denoising import (
    DenoisedLatentResult,
    LatentState,
    euler_denoising_loop,
    post_process_latent,
    res2s_denoising_loop,
)
from mlx_ltx.guidance import (
    LTX_2_3_HQ_PARAMS,
    LTX_2_3_PARAMS,
    LTX_2_PARAMS,
    MultiModalGuider,
    MultiModalGuiderFactory,
    MultiModalGuiderParams,
    detect_params,
    parse_model_version,
)
from mlx_ltx.sampling import (
    LTX2Scheduler,
    Res2sDiffusionStep,
    distilled_sigmas,
    get_new_noise,
    get_res2s_coefficients,
    phi,
    stage2_distilled_sigmas,
)

REPLAY_TOL = 1e-5  # the replayed loops only add the sampler's own rounding


@lru_cache(maxsize=16)
def _golden(path: str, name: str):
    return FixtureSet(path).golden(name)


def golden(fixture_set, name):
    return _golden(str(fixture_set.path), name)


# ---------------------------------------------------------------- schedules
def _schedule_for_key(key: str) -> mx.array:
    if key == "distilled_sigmas":
        return distilled_sigmas()
    if key == "stage2_distilled_sigmas":
        return stage2_distilled_sigmas()
    m = re.fullmatch(r"dev_ltx2scheduler_steps(\d+)_(default_tokens|nostretch|latent_([0-9x]+))", key)
    assert m, f"unknown scheduler golden {key}"
    steps = int(m.group(1))
    if m.group(2) == "nostretch":
        return LTX2Scheduler().execute(steps, stretch=False)
    shape = tuple(int(d) for d in m.group(3).split("x")) if m.group(3) else None
    return LTX2Scheduler().execute(steps, latent_shape=shape)


def test_schedules(fixture_set):
    g = golden(fixture_set, "schedulers")
    assert len(g) >= 6
    for key, ref in g.items():
        got = np.array(_schedule_for_key(key))
        assert got.dtype == np.float32 and got.shape == ref.shape, key
        # bit-identical: one float32 ulp in a sigma moves a 3-step guided run by ~1e-4
        assert np.array_equal(got, ref), (key, np.abs(got - ref).max())
    p = golden(fixture_set, "pipeline")
    latent_shape = tuple(int(d) for d in p["geom.video.latent_shape"])
    for key, got in (("distilled.sigmas", distilled_sigmas()), ("handoff.stage2.sigmas", stage2_distilled_sigmas()),
                     ("dev.sigmas", LTX2Scheduler().execute(len(p["dev.sigmas"]) - 1)),
                     ("res2s.sigmas", LTX2Scheduler().execute(len(p["res2s.sigmas"]) - 1, latent_shape=latent_shape))):
        assert np.array_equal(np.array(got), p[key]), key


def test_res2s_coefficients():
    # the small-h Taylor branch and the closed form agree where they meet; b1 + b2 = φ1
    assert phi(1, -1e-11) == 1.0 and abs(phi(1, -1e-6) - 1.0) < 1e-6 and abs(phi(2, -1e-4) - 0.5) < 1e-4
    h = 0.7
    a21, b1, b2 = get_res2s_coefficients(h)
    assert abs(a21 - (1 - np.exp(-h / 2)) / h) < 1e-12
    assert abs((b1 + b2) - (1 - np.exp(-h)) / h) < 1e-12


def test_new_noise_is_standardised():
    n = get_new_noise((2, 50, 8), mx.random.key(3))
    assert n.dtype == mx.float64
    a = np.array(n)
    assert np.abs(a.mean(axis=(1, 2))).max() < 1e-12
    assert np.abs(a.std(axis=(1, 2), ddof=1) - 1).max() < 1e-12
    assert np.array_equal(a, np.array(get_new_noise((2, 50, 8), mx.random.key(3))))
    assert not np.array_equal(a, np.array(get_new_noise((2, 50, 8), mx.random.key(4))))


# ---------------------------------------------------------------- guidance
def _guider(g, prefix: str, stream: str) -> MultiModalGuider:
    cfg, stg, rescale, mod, skip = (float(x) for x in g[f"{prefix}.guider.{stream}.params"])
    return MultiModalGuider(MultiModalGuiderParams(cfg, stg, tuple(int(b) for b in g[f"{prefix}.guider.{stream}.stg_blocks"]),
                                                   rescale, mod, int(skip)))


def test_params_per_model_version(fixture_set):
    g = golden(fixture_set, "pipeline")
    params = detect_params(fixture_set.checkpoint)
    assert params.num_inference_steps == int(g["dev.default_num_inference_steps"][0])
    for stream in ("video", "audio"):
        p = getattr(params, f"{stream}_guider_params")
        ref = g[f"dev.guider.{stream}.params"]
        assert np.allclose([p.cfg_scale, p.stg_scale, p.rescale_scale, p.modality_scale, p.skip_step], ref)
        assert list(p.stg_blocks) == [int(b) for b in g[f"dev.guider.{stream}.stg_blocks_default"]]
        hq = getattr(LTX_2_3_HQ_PARAMS, f"{stream}_guider_params")
        assert np.allclose([hq.cfg_scale, hq.stg_scale, hq.rescale_scale, hq.modality_scale, hq.skip_step],
                           g[f"res2s.guider.{stream}.params"])
        assert list(hq.stg_blocks) == [int(b) for b in g[f"res2s.guider.{stream}.stg_blocks"]]
    assert detect_params("2.3.0") is LTX_2_3_PARAMS and detect_params(None) is LTX_2_PARAMS
    assert detect_params("2.4-rc2").default_image_crf == 18 and parse_model_version("2.3.rc1") == (2, 3)


def test_guider_calculate(fixture_set):
    g = golden(fixture_set, "pipeline")
    for stream in ("video", "audio"):
        guider = _guider(g, "dev", stream)
        for step in range(len(g["dev.sigmas"]) - 1):
            k = f"dev.step{step}.{stream}"
            passes = [mx.array(g[f"{k}.{p}"]) if f"{k}.{p}" in g else 0.0 for p in ("uncond", "ptb", "mod")]
            got = guider.calculate(mx.array(g[f"{k}.cond"]), *passes)
            err = rel_err(got, g[f"{k}.denoised"])
            assert err <= 1e-5, (k, err)
            # the rescale is active: leaving it out misses the reference by far more
            if guider.params.rescale_scale != 0:
                plain = MultiModalGuider(MultiModalGuiderParams(**{**guider.params.__dict__, "rescale_scale": 0.0}))
                assert rel_err(plain.calculate(mx.array(g[f"{k}.cond"]), *passes), g[f"{k}.denoised"]) > 20 * max(err, 1e-6)


def test_guider_factory_bins():
    lo, hi = MultiModalGuiderParams(cfg_scale=2.0), MultiModalGuiderParams(cfg_scale=5.0)
    f = MultiModalGuiderFactory.from_dict({1.0: hi, 0.5: lo})
    assert f.params(0.9) is hi and f.params(0.5) is lo and f.params(0.2) is lo and f.params(2.0) is hi
    assert MultiModalGuiderFactory.constant(lo).build_from_sigma(0.3).params is lo


# ---------------------------------------------------------------- replayed loops
class ReplayDenoiser:
    """Returns the reference's recorded denoiser outputs in call order, checking the inputs it gets."""

    def __init__(self, outputs, expected_inputs=None, sigmas=None):
        self.outputs, self.expected_inputs, self.sigmas = list(outputs), expected_inputs, sigmas
        self.calls = 0
        self.max_input_err = 0.0

    def __call__(self, model, video_state, audio_state, sigma, step_index):
        j = self.calls
        if self.sigmas is not None:
            assert abs(sigma - self.sigmas[j]) <= 1e-6 * max(1.0, abs(self.sigmas[j])), (j, sigma, self.sigmas[j])
        if self.expected_inputs is not None:
            ev, ea = self.expected_inputs[j]
            self.max_input_err = max(self.max_input_err, rel_err(video_state.latent, ev), rel_err(audio_state.latent, ea))
        dv, da = self.outputs[j]
        self.calls += 1
        return DenoisedLatentResult(mx.array(dv)), DenoisedLatentResult(mx.array(da))


def fresh_state(latent, positions) -> LatentState:
    """Mask 1, clean zeros: the state of an unconditioned stage."""
    latent = mx.array(latent)
    return LatentState(latent=latent, denoise_mask=mx.ones((*latent.shape[:2], 1), mx.float32),
                       positions=mx.array(positions), clean_latent=mx.zeros_like(latent))


@pytest.mark.parametrize("prefix", ["distilled", "dev", "handoff.stage2"])
def test_euler_replay(fixture_set, prefix):
    g = golden(fixture_set, "pipeline")
    sigmas = g[f"{prefix}.sigmas"]
    n = len(sigmas) - 1
    if prefix == "handoff.stage2":
        vs = fresh_state(g["handoff.out.video.latent"], g["handoff.video.positions"])
        vs.denoise_mask = mx.array(g["handoff.video.denoise_mask"])
        as_ = fresh_state(g["handoff.out.audio.latent"], g["audio.positions"])
    else:
        key = "latent_init" if f"{prefix}.video.latent_init" in g else "noise"
        src = (lambda s: g[f"{prefix}.{s}.latent_init"]) if key == "latent_init" else (lambda s: g[f"{prefix}.in.{s}.noise"])
        vs, as_ = fresh_state(src("video"), g["video.positions"]), fresh_state(src("audio"), g["audio.positions"])
    outs = [(g[f"{prefix}.step{i}.video.denoised"], g[f"{prefix}.step{i}.audio.denoised"]) for i in range(n)]
    ins = [(vs.latent, as_.latent)] + [(g[f"{prefix}.step{i}.video.latent"], g[f"{prefix}.step{i}.audio.latent"])
                                        for i in range(n - 1)]
    den = ReplayDenoiser(outs, ins, [float(s) for s in sigmas[:-1]])
    seen = []
    v, a = euler_denoising_loop(None, vs, as_, mx.array(sigmas), den, on_step=lambda i, v, a: seen.append(i))
    assert den.calls == n and seen == list(range(n)) and den.max_input_err <= REPLAY_TOL
    assert rel_err(v.latent, g[f"{prefix}.out.video.tokens"]) <= REPLAY_TOL
    assert rel_err(a.latent, g[f"{prefix}.step{n - 1}.audio.latent"]) <= REPLAY_TOL


def res2s_noise_from(g, n_steps: int):
    """The reference's SDE draws, in its consumption order (substep v, a, step v, a per step)."""
    queue = [mx.array(g[f"res2s.in.sde_noise.step{i}.{kind}.{m}"]).astype(mx.float64)
             for i in range(n_steps) for kind in ("substep", "step") for m in ("video", "audio")]
    kinds = [kind for i in range(n_steps) for kind in ("substep", "step") for _ in ("video", "audio")]

    def draw(shape, kind):
        assert kinds.pop(0) == kind
        n = queue.pop(0)
        assert tuple(n.shape) == tuple(shape)
        return n

    return draw, queue


@pytest.mark.parametrize("legacy_mode", [True, False], ids=["legacy", "per-token"])
def test_res2s_replay(fixture_set, legacy_mode):
    """Bit-level replay of the reference's res_2s math (float64); with every mask at 1 the per-token
    (non-legacy) noise injection gives the same trajectory up to float32-vs-float64 coefficients."""
    g = golden(fixture_set, "pipeline")
    sigmas = g["res2s.sigmas"]
    n = len(sigmas) - 1
    n_calls = len([k for k in g if re.fullmatch(r"res2s\.call\d+\.sigma", k)])
    outs = [(g[f"res2s.call{j}.video.denoised"], g[f"res2s.call{j}.audio.denoised"]) for j in range(n_calls)]
    ins = [(g[f"res2s.call{j}.video.in"], g[f"res2s.call{j}.audio.in"]) for j in range(n_calls)]
    den = ReplayDenoiser(outs, ins, [float(g[f"res2s.call{j}.sigma"][0]) for j in range(n_calls)])
    draw, queue = res2s_noise_from(g, n)
    stepper = Res2sDiffusionStep(eta=float(g["res2s.eta"][0]), substep_eta=float(g["res2s.substep_eta"][0]),
                                 legacy_mode=legacy_mode, new_noise=draw)
    vs = fresh_state(g["res2s.in.video.noise"], g["video.positions"])
    as_ = fresh_state(g["res2s.in.audio.noise"], g["audio.positions"])
    steps = {}
    v, _ = res2s_denoising_loop(None, vs, as_, mx.array(sigmas), den, stepper,
                                on_step=lambda i, v, a: steps.__setitem__(i, (v.latent, a.latent)))
    assert den.calls == n_calls and not queue and den.max_input_err <= REPLAY_TOL, den.max_input_err
    for i in range(n):
        assert rel_err(steps[i][0], g[f"res2s.step{i}.video.latent"]) <= REPLAY_TOL
        assert rel_err(steps[i][1], g[f"res2s.step{i}.audio.latent"]) <= REPLAY_TOL
    assert rel_err(v.latent, g["res2s.out.video.tokens"]) <= REPLAY_TOL


def test_post_process_keeps_clean_tokens():
    den = mx.array(np.arange(12, dtype=np.float32).reshape(1, 4, 3))
    clean = -mx.ones_like(den)
    mask = mx.array(np.array([1, 0, 0.5, 1], np.float32).reshape(1, 4, 1))
    out = np.array(post_process_latent(den, mask, clean))
    assert np.array_equal(out[0, 1], [-1, -1, -1]) and np.array_equal(out[0, 0], [0, 1, 2])
    assert np.allclose(out[0, 2], (np.arange(6, 9) - 1) / 2)


def test_res2s_own_noise_and_options(fixture_set):
    """Without injected noise the loop draws from its own two seeded generators (restarted per
    call); bong refinement and the step noise both change the trajectory."""
    g = golden(fixture_set, "pipeline")
    sigmas = mx.array(g["res2s.sigmas"])
    n_calls = len([k for k in g if re.fullmatch(r"res2s\.call\d+\.sigma", k)])
    outs = [(g[f"res2s.call{j}.video.denoised"], g[f"res2s.call{j}.audio.denoised"]) for j in range(n_calls)]

    def run(**kw):
        steps = []
        res2s_denoising_loop(None, fresh_state(g["res2s.in.video.noise"], g["video.positions"]),
                             fresh_state(g["res2s.in.audio.noise"], g["audio.positions"]), sigmas,
                             ReplayDenoiser(outs), Res2sDiffusionStep(**kw),
                             on_step=lambda i, v, a: steps.append(np.array(v.latent)))
        return steps[0]

    base = run()
    assert np.array_equal(base, run()) and np.isfinite(base).all()
    assert not np.allclose(base, run(noise_seed=7))
    assert not np.allclose(base, run(bongmath=False))
