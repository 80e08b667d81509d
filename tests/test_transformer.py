"""LTXModel parity with the reference: golden_transformer (per-token timesteps, audio
disabled, uniform timesteps), appended guiding tokens with and without a self-attention mask
(golden_pipeline keyframe.*), and STG / modality-isolation perturbations (golden_pipeline dev.*),
batched and one pass at a time."""

import dataclasses
from functools import lru_cache

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_BF16, TOL_F32, bf16_tol, rel_err

from mlx_ltx.loading import CheckpointError, load_component
from mlx_ltx.models.transformer import LTXModel, Modality, load_transformer, to_denoised
from mlx_ltx.models.transformer_args import Perturbation, PerturbationConfig, PerturbationType

DTYPES = [(mx.float32, TOL_F32), (mx.bfloat16, TOL_BF16)]
IDS = ["f32", "bf16"]


@lru_cache(maxsize=8)
def _model(path: str, dtype_name: str) -> LTXModel:
    return load_transformer(path, getattr(mx, dtype_name))


def model_for(fixture_set, dtype) -> LTXModel:
    return _model(str(fixture_set.checkpoint_path), "float32" if dtype == mx.float32 else "bfloat16")


@lru_cache(maxsize=16)
def _golden(path: str, name: str):
    from reference_data import FixtureSet

    return FixtureSet(path).golden(name)


def golden(fixture_set, name):
    return _golden(str(fixture_set.path), name)


def modality(latent, sigma, timesteps, positions, context, dtype, **kw) -> Modality:
    return Modality(mx.array(latent).astype(dtype), mx.array(sigma).reshape(-1), mx.array(timesteps),
                    mx.array(positions), mx.array(context).astype(dtype), **kw)


# ---------------------------------------------------------------- golden_transformer
@pytest.mark.parametrize("dtype,tol", DTYPES, ids=IDS)
def test_transformer_parity(fixture_set, dtype, tol):
    g = golden(fixture_set, "transformer")
    model = model_for(fixture_set, dtype)

    def run(video_timesteps, audio_enabled=True):
        v = modality(g["in.video.latent"], g["in.sigma"], video_timesteps, g["in.video.positions"],
                     g["in.video.context"], dtype)
        a = modality(g["in.audio.latent"], g["in.sigma"], g["in.audio.timesteps"], g["in.audio.positions"],
                     g["in.audio.context"], dtype, enabled=audio_enabled)
        return model(v, a)

    def check(out, key):
        err, bound = rel_err(out, g[key]), tol if dtype == mx.float32 else bf16_tol(g, key)
        assert err <= bound, (key, err, bound)

    # per-token timesteps: the first latent frame is a conditioning frame at timestep 0
    assert (g["in.video.timesteps"] == 0).any() and (g["in.video.timesteps"] > 0).any()
    video, audio = run(g["in.video.timesteps"])
    assert video.dtype == dtype
    check(video, "out.video")
    check(audio, "out.audio")
    video_only, _ = run(g["in.video.timesteps"], audio_enabled=False)
    check(video_only, "out.video_only.video")
    video_u, audio_u = run(g["in.uniform.video.timesteps"])
    check(video_u, "out.uniform.video")
    check(audio_u, "out.uniform.audio")


def test_forward_compiles(fixture_set):
    """The whole forward traces under mx.compile and a second σ reuses the trace correctly."""
    g = golden(fixture_set, "transformer")
    model = model_for(fixture_set, mx.float32)
    args = [mx.array(g[k]) for k in ("in.video.latent", "in.audio.latent", "in.video.timesteps",
                                     "in.audio.timesteps", "in.video.positions", "in.audio.positions",
                                     "in.video.context", "in.audio.context")]

    def forward(sigma, vl, al, vt, at, vp, ap, vc, ac):
        return model(Modality(vl, sigma, vt, vp, vc), Modality(al, sigma, at, ap, ac))

    compiled = mx.compile(forward)
    sigma = mx.array(g["in.sigma"])
    video, audio = compiled(sigma, *args)
    assert rel_err(video, g["out.video"]) <= TOL_F32
    assert rel_err(audio, g["out.audio"]) <= TOL_F32
    other = sigma * 0.5
    scaled = [args[0], args[1], args[2] * 0.5, args[3] * 0.5, *args[4:]]
    cv, ca = compiled(other, *scaled)
    ev, ea = forward(other, *scaled)
    assert rel_err(cv, np.array(ev)) <= 1e-5 and rel_err(ca, np.array(ea)) <= 1e-5
    assert rel_err(cv, g["out.video"]) > 10 * TOL_F32  # the new σ really changed the output


# ---------------------------------------------------------------- appended guiding tokens
def _keyframe_call(g, case, step, dtype, model, *, drop_appended=False, drop_mask=False):
    """One SimpleDenoiser call of the keyframe loop: X0 = latent − timesteps·velocity."""
    p = f"keyframe.{case}"
    video_latent = g[f"{p}.video.latent_init"] if step == 0 else g[f"{p}.step{step - 1}.video.latent"]
    audio_latent = g[f"{p}.audio.latent_init"] if step == 0 else g[f"{p}.step{step - 1}.audio.latent"]
    v_ts, a_ts = g[f"{p}.step{step}.video.timesteps"], g[f"{p}.step{step}.audio.timesteps"]
    positions = g[f"{p}.video.positions"]
    mask = g.get(f"{p}.video.attention_mask") if not drop_mask else None
    if drop_appended:
        n = int(g["keyframe.num_target_tokens"][0])
        video_latent, v_ts, positions = video_latent[:, :n], v_ts[:, :n], positions[:, :, :n]
        mask = None if mask is None else mask[:, :n, :n]
    sigma = g["keyframe.sigmas"][step:step + 1]
    v = modality(video_latent, sigma, v_ts, positions, g["in.video.context"], dtype,
                 attention_mask=None if mask is None else mx.array(mask))
    a = modality(audio_latent, sigma, a_ts, g["audio.positions"], g["in.audio.context"], dtype)
    return model.denoise(v, a)


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=IDS)
@pytest.mark.parametrize("case", ["s100", "s100_attn50"])
def test_appended_guiding_tokens(fixture_set, case, dtype, tol):
    g = golden(fixture_set, "pipeline")
    model = model_for(fixture_set, dtype)
    p = f"keyframe.{case}"
    n = int(g["keyframe.num_target_tokens"][0])
    total = g[f"{p}.video.positions"].shape[2]
    assert total > n, "the keyframe case appends tokens after the noisy ones"
    assert bool(g[f"{p}.has_attention_mask"][0]) == (case == "s100_attn50")
    for step in range(len(g["keyframe.sigmas"]) - 1):
        den_v, den_a = _keyframe_call(g, case, step, dtype, model)
        assert den_v.shape[1] == total
        assert rel_err(den_v, g[f"{p}.step{step}.video.denoised"]) <= tol
        assert rel_err(den_a, g[f"{p}.step{step}.audio.denoised"]) <= tol
    if dtype != mx.float32:
        return
    # the guiding tokens (and the attention mask) really act on the noisy tokens
    ref_noisy = g[f"{p}.step0.video.denoised"][:, :n]
    alone, _ = _keyframe_call(g, case, 0, dtype, model, drop_appended=True)
    assert rel_err(alone, ref_noisy) > 10 * tol
    if case == "s100_attn50":
        unmasked, _ = _keyframe_call(g, case, 0, dtype, model, drop_mask=True)
        assert rel_err(unmasked[:, :n], ref_noisy) > 10 * tol


# ---------------------------------------------------------------- perturbations (dev guidance passes)
def _dev_passes(g) -> list[tuple[str, bool, PerturbationConfig]]:
    """(name, negative context?, perturbations) for every pass the reference ran."""
    vp, ap = g["dev.guider.video.params"], g["dev.guider.audio.params"]
    passes = [("cond", False, PerturbationConfig.empty())]
    if "dev.step0.video.uncond" in g:
        passes.append(("uncond", True, PerturbationConfig.empty()))
    stg = []
    if vp[1] != 0:
        stg.append(Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN,
                                tuple(int(b) for b in g["dev.guider.video.stg_blocks"])))
    if ap[1] != 0:
        stg.append(Perturbation(PerturbationType.SKIP_AUDIO_SELF_ATTN,
                                tuple(int(b) for b in g["dev.guider.audio.stg_blocks"])))
    if stg:
        passes.append(("ptb", False, PerturbationConfig(tuple(stg))))
    if vp[3] != 1 or ap[3] != 1:
        passes.append(("mod", False, PerturbationConfig((Perturbation(PerturbationType.SKIP_A2V_CROSS_ATTN, None),
                                                         Perturbation(PerturbationType.SKIP_V2A_CROSS_ATTN, None)))))
    return passes


def _context(g, negative: bool, stream: str):
    return g[f"in.{stream}.context_negative"] if negative else g[f"in.{stream}.context"]


def _tile(x, n: int):
    return np.concatenate([x] * n, axis=0)


def test_perturbation_passes(fixture_set):
    """STG and A2V/V2A skipping match the reference's ptb/mod X0 outputs, batched with per-sample
    keep masks and one pass at a time (identical results)."""
    g = golden(fixture_set, "pipeline")
    model = model_for(fixture_set, mx.float32)
    passes = _dev_passes(g)
    names = [name for name, _, _ in passes]
    assert "ptb" in names and "mod" in names
    sigmas = g["dev.sigmas"]
    for step in range(len(sigmas) - 1):
        vl = g["dev.in.video.noise"] if step == 0 else g[f"dev.step{step - 1}.video.latent"]
        al = g["dev.in.audio.noise"] if step == 0 else g[f"dev.step{step - 1}.audio.latent"]
        sigma = sigmas[step:step + 1]
        v_ts = np.full(vl.shape[:2], sigma[0], np.float32)
        a_ts = np.full(al.shape[:2], sigma[0], np.float32)

        single = {}
        for name, neg, ptb in passes:
            v = modality(vl, sigma, v_ts, g["video.positions"], _context(g, neg, "video"), mx.float32)
            a = modality(al, sigma, a_ts, g["audio.positions"], _context(g, neg, "audio"), mx.float32)
            single[name] = model.denoise(v, a, [ptb])
        n = len(passes)
        v = modality(_tile(vl, n), np.repeat(sigma, n), _tile(v_ts, n), _tile(g["video.positions"], n),
                     np.concatenate([_context(g, neg, "video") for _, neg, _ in passes]), mx.float32)
        a = modality(_tile(al, n), np.repeat(sigma, n), _tile(a_ts, n), _tile(g["audio.positions"], n),
                     np.concatenate([_context(g, neg, "audio") for _, neg, _ in passes]), mx.float32)
        batched_v, batched_a = model.denoise(v, a, [ptb for _, _, ptb in passes])
        for i, name in enumerate(names):
            sv, sa = single[name]
            kv, ka = f"dev.step{step}.video.{name}", f"dev.step{step}.audio.{name}"
            assert rel_err(sv, g[kv]) <= TOL_F32, (kv, rel_err(sv, g[kv]))
            assert rel_err(sa, g[ka]) <= TOL_F32, (ka, rel_err(sa, g[ka]))
            assert rel_err(batched_v[i:i + 1], np.array(sv)) <= 1e-5
            assert rel_err(batched_a[i:i + 1], np.array(sa)) <= 1e-5
        # the perturbed passes differ from the conditioned one (the hooks are not inert)
        for name in ("ptb", "mod"):
            assert rel_err(single[name][0], np.array(single["cond"][0])) > 10 * TOL_F32


# ---------------------------------------------------------------- loading, helpers
def test_loading_is_strict(fixture_set):
    """A model built with the opposite gating flag does not load from this checkpoint."""
    cfg = fixture_set.checkpoint.config.transformer
    wrong = dataclasses.replace(cfg, apply_gated_attention=not cfg.apply_gated_attention)
    with pytest.raises(CheckpointError, match="to_gate_logits"):
        load_component(fixture_set.checkpoint, "transformer", LTXModel(wrong), dtype=mx.float32)


def test_to_denoised_per_token():
    latent = mx.array(np.arange(6, dtype=np.float32).reshape(1, 3, 2))
    velocity = mx.ones((1, 3, 2))
    timesteps = mx.array([[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(np.array(to_denoised(latent, velocity, timesteps)),
                               np.array(latent) - np.array([0.0, 0.5, 1.0])[None, :, None])
