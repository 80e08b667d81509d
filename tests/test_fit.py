"""Fit and speed features of the transformer that must not change a single number: streamed
blocks (``memory="stream"``) against eager, with and without fused LoRAs and on a quantized folder;
the evaluation cadence inside a forward; the adaLN vectors computed once per distinct timestep
against the per-token tables. Each is compared bit for bit with the eager / per-token /
uncadenced model. And the RoPE tables are built once per stage."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from reference_data import q8_folder

from mlx_ltx.denoising import GuidedDenoiser
from mlx_ltx.guidance import MultiModalGuider, MultiModalGuiderParams
from mlx_ltx.latent_tools import LatentState
from mlx_ltx.models.lora import active_loras, fuse_loras, load_lora, unfuse_loras
from mlx_ltx.models.transformer import LTXModel, Modality, load_transformer
from mlx_ltx.models.transformer_args import timestep_groups

DTYPES = [mx.float32, mx.bfloat16]
IDS = ["f32", "bf16"]


def _inputs(fixture_set, dtype, timesteps_key="in.video.timesteps", batch=1):
    g = fixture_set.golden("transformer")

    def modality(prefix, timesteps):
        rep = (lambda a: mx.concatenate([a] * batch, axis=0))
        return Modality(rep(mx.array(g[f"in.{prefix}.latent"]).astype(dtype)),
                        mx.array(np.repeat(g["in.sigma"].reshape(-1)[:1], batch)), rep(mx.array(timesteps)),
                        rep(mx.array(g[f"in.{prefix}.positions"])), rep(mx.array(g[f"in.{prefix}.context"]).astype(dtype)))

    return modality("video", g[timesteps_key]), modality("audio", g["in.audio.timesteps"])


def _forward(model, fixture_set, dtype, **kw):
    v, a = model(*_inputs(fixture_set, dtype, **kw))
    return np.array(v.astype(mx.float32)), np.array(a.astype(mx.float32))


def _same(x, y):
    assert all(np.array_equal(p, q) for p, q in zip(x, y))


def _lora_path(fixture_set, name):
    return fixture_set.path / fixture_set.manifest["loras"][name]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_stream_matches_eager(fixture_set, dtype):
    eager = load_transformer(fixture_set.checkpoint_path, dtype)
    stream = load_transformer(fixture_set.checkpoint_path, dtype, memory="stream")
    assert stream.memory == "stream" and eager.memory == "eager"
    expected = _forward(eager, fixture_set, dtype)
    _same(_forward(stream, fixture_set, dtype), expected)
    _same(_forward(stream, fixture_set, dtype), expected)  # a second forward re-reads every block

    # fused LoRAs: one at a stage strength, restore, then two aggregated
    lora, lora2 = load_lora(_lora_path(fixture_set, "test")), load_lora(_lora_path(fixture_set, "test2"))
    for loras in ([(lora, 0.5)], [(lora, 1.0), (lora2, 0.5)]):
        fused_eager = fuse_loras(eager, loras)
        fused_stream = fuse_loras(stream, loras)
        assert fused_eager == fused_stream and active_loras(stream) == active_loras(eager)
        expected_fused = _forward(eager, fixture_set, dtype)
        _same(_forward(stream, fixture_set, dtype), expected_fused)
        assert not np.array_equal(expected_fused[0], expected[0])  # the LoRA really changed the output
        unfuse_loras(eager), unfuse_loras(stream)
        _same(_forward(stream, fixture_set, dtype), expected)


def test_stream_releases_blocks(fixture_set):
    """After a streamed forward only the non-block weights are resident: the active memory is
    the eager model's minus (about) every block."""
    path = fixture_set.checkpoint_path
    ckpt_blocks = None

    def resident_after_forward(memory):
        nonlocal ckpt_blocks
        mx.synchronize()
        mx.clear_cache()
        base = mx.get_active_memory()
        model = load_transformer(path, mx.float32, memory=memory)
        _forward(model, fixture_set, mx.float32)
        mx.synchronize()
        held = mx.get_active_memory() - base
        if memory == "stream":
            ckpt_blocks = model.block_streamer.block_bytes() * model.num_blocks
        del model
        return held

    eager, stream = resident_after_forward("eager"), resident_after_forward("stream")
    # the fixtures store float32 or bf16; loaded as float32 a block takes at least its stored bytes
    assert eager - stream >= 0.9 * ckpt_blocks, (eager, stream, ckpt_blocks)


def test_stream_quantized_folder_with_lora(fixture_set, tmp_path):
    """A q8 folder (convert.py): streamed and eager agree, also with a LoRA fused into quantized layers."""
    folder = q8_folder(fixture_set, tmp_path)
    eager = load_transformer(folder, mx.bfloat16)
    stream = load_transformer(folder, mx.bfloat16, memory="stream")
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in stream.transformer_blocks[0].named_modules())
    _same(_forward(stream, fixture_set, mx.bfloat16), _forward(eager, fixture_set, mx.bfloat16))
    lora = load_lora(_lora_path(fixture_set, "test"))
    fuse_loras(eager, [(lora, 0.5)], restore_from=folder)
    fuse_loras(stream, [(lora, 0.5)], restore_from=folder)
    _same(_forward(stream, fixture_set, mx.bfloat16), _forward(eager, fixture_set, mx.bfloat16))


def test_stream_guided_step_batched(fixture_set):
    """A guided step (cond, uncond, STG, modality passes) batched in one call and one by one, streamed vs eager."""
    g = fixture_set.golden("transformer")
    dtype = mx.float32
    v, a = _inputs(fixture_set, dtype)
    n_blocks = load_transformer(fixture_set.checkpoint_path, dtype).num_blocks
    params = MultiModalGuiderParams(cfg_scale=3.0, stg_scale=1.0, stg_blocks=(n_blocks - 1,), rescale_scale=0.7,
                                    modality_scale=3.0)

    def state(m: Modality, ts_key):
        mask = mx.array(g[ts_key] / g["in.sigma"].reshape(-1)[0]).astype(mx.float32)
        return LatentState(latent=m.latent, denoise_mask=mask[..., None], positions=m.positions,
                           clean_latent=m.latent)

    vs, as_ = state(v, "in.video.timesteps"), state(a, "in.audio.timesteps")
    sigma = float(g["in.sigma"].reshape(-1)[0])
    outs = []
    for memory in ("eager", "stream"):
        model = load_transformer(fixture_set.checkpoint_path, dtype, memory=memory)
        for batch in (1, None):
            den = GuidedDenoiser(v.context, a.context, MultiModalGuider(params, v.context * 0.5),
                                 MultiModalGuider(params, a.context * 0.5), max_batch_size=batch)
            rv, ra = den(model, vs, as_, sigma, 0)
            outs.append((np.array(rv.denoised), np.array(ra.denoised)))
    _same(outs[2], outs[0])  # streamed = eager, one pass per call
    _same(outs[3], outs[1])  # streamed = eager, batched


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_eval_cadence_does_not_change_outputs(fixture_set, dtype):
    model = load_transformer(fixture_set.checkpoint_path, dtype)
    outs = []
    for every in (0, 1, 2, None):
        model.eval_every = every
        outs.append(_forward(model, fixture_set, dtype))
    for o in outs[1:]:
        _same(o, outs[0])


def test_eval_interval_scales_with_tokens(fixture_set):
    model = load_transformer(fixture_set.checkpoint_path, mx.float32)
    assert model.eval_interval(16, 4) == 0  # tiny: one evaluation at the end
    big = model.eval_interval(10**6, 10**4)
    assert 1 <= big < model.num_blocks or model.num_blocks == 1
    model.eval_every = 3
    assert model.eval_interval(16, 4) == 3


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("timesteps_key", ["in.video.timesteps", "in.uniform.video.timesteps"])
def test_adaln_per_distinct_timestep_is_exact(fixture_set, dtype, timesteps_key):
    """Conditioned (σ and 0 per token) and uniform timesteps, batch 1 and 2: the per-distinct-value
    adaLN gives the per-token tables' outputs bit for bit."""
    model = load_transformer(fixture_set.checkpoint_path, dtype)
    g = fixture_set.golden("transformer")
    groups = timestep_groups(mx.array(g[timesteps_key]), model.max_distinct_timesteps)
    assert groups is not None  # the default really takes the per-distinct path here
    assert (groups[1] is None) == (len(np.unique(g[timesteps_key])) == 1)
    for batch in (1, 2):
        model.max_distinct_timesteps = 0  # per token, as the reference
        per_token = _forward(model, fixture_set, dtype, timesteps_key=timesteps_key, batch=batch)
        model.max_distinct_timesteps = LTXModel(model.config).max_distinct_timesteps
        _same(_forward(model, fixture_set, dtype, timesteps_key=timesteps_key, batch=batch), per_token)


@pytest.mark.parametrize("batch", [1, None], ids=["one-pass-per-call", "batched"])
def test_rope_and_tiling_built_once_per_stage(fixture_set, monkeypatch, batch):
    """Three guided steps (four passes each): the RoPE tables are computed once per stream and kind,
    and the cache is emptied when the stage ends."""
    import mlx_ltx.models.transformer_args as targs
    from mlx_ltx.denoising import denoise_loop

    dtype = mx.float32
    v, a = _inputs(fixture_set, dtype)
    model = load_transformer(fixture_set.checkpoint_path, dtype)
    calls = []
    real = targs.precompute_freqs_cis
    monkeypatch.setattr(targs, "precompute_freqs_cis", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    params = MultiModalGuiderParams(cfg_scale=3.0, stg_scale=1.0, stg_blocks=(0,), modality_scale=3.0)
    den = GuidedDenoiser(v.context, a.context, MultiModalGuider(params, v.context * 0.5),
                         MultiModalGuider(params, a.context * 0.5), max_batch_size=batch)
    states = [LatentState(latent=m.latent, denoise_mask=mx.ones(m.latent.shape[:2] + (1,)), positions=m.positions,
                          clean_latent=m.latent) for m in (v, a)]
    denoise_loop(model, states[0], states[1], [1.0, 0.75, 0.5, 0.25], den)
    assert len(calls) == 4  # video and audio self-attention RoPE, video and audio A/V cross RoPE
    assert len(model.args_cache._entries) == 0
