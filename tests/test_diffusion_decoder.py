"""LTX-2.5's diffusion video decoder (mlx_ltx/models/diffusion_video_decoder.py) against the reference's
goldens (tests/reference/FORMAT-DIFFVAE.md): every stage, the whole untiled decode with the sampler
noise injected in both stage-5 border modes, the size floor, strict loading and the gate folding's
bf16 rounding. Every shape and config value is read from the fixture set."""

import json
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from reference_data import fixture_dirs

from mlx_ltx.loading import CheckpointError, read_safetensors_header
from mlx_ltx.models.diffusion_decoder_blocks import default_rope_dim_split
from mlx_ltx.models.diffusion_tiling import (
    axis_weights,
    estimate_decode_bytes,
    prepare_tile_schedule,
    recommended_pixel_overlaps,
    stage4_thw_from_latent,
    tile_halos,
    tile_min_sizes,
)
from mlx_ltx.models.diffusion_video_decoder import CHUNKED_W_CHUNKS, DiffusionVideoDecoder
from mlx_ltx.models.neighborhood_attention import na_block_bytes
from mlx_ltx.models.vae_tiling import AxisTiling, TilingConfig

F32_TOL = 1e-4
BF16_TOL = 2e-2
MODES = {"chunked_eager": "chunked_eager", "combined": "full"}  # golden name -> border argument


class DiffVAESet:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        self.vae_path = self.path / self.manifest["files"]["vae"]
        self.golden = {k: v for k, v in mx.load(str(self.path / self.manifest["files"]["golden_diffvae"])).items()}
        self.decoder = DiffusionVideoDecoder.from_checkpoint(str(self.vae_path))

    def __repr__(self) -> str:
        return f"DiffVAESet({self.path.name})"


_DIRS = fixture_dirs("diffvae")


@pytest.fixture(scope="module", params=_DIRS, ids=[d.name for d in _DIRS])
def dv(request):
    return DiffVAESet(request.param)


def _rel(actual, expected) -> float:
    a = np.asarray(actual.astype(mx.float32), dtype=np.float64)
    e = np.asarray(expected.astype(mx.float32), dtype=np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    return float(np.abs(a - e).max() / max(np.abs(e).max(), 1e-12))


def test_config_from_file(dv):
    cfg, facts = dv.decoder.config, dv.manifest["decoder"]
    dec = dv.manifest["vae_metadata"]["config"]["vae"]["decoder"]
    assert cfg.stage_channels == tuple(dec["stage_channels"])
    assert cfg.stage_kernels == tuple(tuple(k) for k in dec["stage_kernels"])
    assert cfg.default_num_inference_steps == facts["default_num_inference_steps"]
    assert cfg.timestep_scale_multiplier == facts["timestep_scale_multiplier"]
    assert cfg.model_output_type == facts["model_output_type"]
    assert cfg.stage_min_tile_sizes == tuple(facts["stage_min_tile_sizes"])
    assert cfg.natten_trailing_pad_latent_frames == facts["natten_trailing_pad_latent_frames"]
    assert default_rope_dim_split(cfg.head_dim) == tuple(facts["rope_dim_split"])
    assert CHUNKED_W_CHUNKS == facts["chunked_w_chunks"]
    # torch.linspace's float32 values, bit for bit
    np.testing.assert_array_equal(cfg.timesteps(), np.asarray(dv.golden["timesteps"]))
    np.testing.assert_array_equal(cfg.timesteps(), np.asarray(facts["timesteps"], dtype=np.float32))


def test_stages(dv):
    g, dec = dv.golden, dv.decoder
    work, _ = dec.prepare_latent(g["main.latent"])
    assert _rel(work, g["main.latent_work"]) == 0
    padded = dec.ghost_pad(work)
    assert _rel(padded, g["main.latent_ghost_padded"]) == 0
    x = dec.conv_in_stage(padded)
    assert _rel(x, g["main.stage0.conv_in"]) < F32_TOL
    for s in range(3):
        x = dec.run_det_stage(x, s)
        assert _rel(x, g[f"main.stage{s + 1}.out"]) < F32_TOL, f"stage {s + 1}"
    # each later stage starts from the golden input, so an error is pinned to its stage
    x = g["main.stage3.out"]
    assert _rel(dec.forward_stage_4(x, deferred=True), g["main.stage4.features"]) < F32_TOL
    assert _rel(dec.forward_stage_4(x), g["main.stage5.context"]) < F32_TOL
    # the chunked path's deferred upsample gives the combined context
    assert _rel(dec.context_from_stage4(g["main.stage4.features"]), g["main.stage5.context"]) < F32_TOL


@pytest.mark.parametrize("mode", list(MODES))
def test_decode_x0(dv, mode):
    g, dec = dv.golden, dv.decoder
    case = dv.manifest["decode"]["cases"]["main"]
    assert dec.work_pixel_shape(g["main.latent"].shape) == tuple(case["x_t_noise_shape"])
    x0 = dec.decode_raw(g["main.latent"], g["main.x_t_noise"], border=MODES[mode])
    assert _rel(x0, g[f"main.{mode}.x0"]) < F32_TOL
    # decode = clamp((x0 + 1) / 2) cropped to the content (here the whole volume)
    pixels = dec(g["main.latent"], g["main.x_t_noise"], border=MODES[mode])
    assert tuple(pixels.shape[1:]) == tuple(case["pixel_shape_fhwc"])
    expected = mx.clip((g[f"main.{mode}.x0"][0].transpose(1, 2, 3, 0) + 1) * 0.5, 0, 1)
    assert float(mx.abs(pixels[0] - expected).max()) < F32_TOL


def test_modes_differ_as_documented(dv):
    """The two golden modes differ (the W-edge replication), so each mode's test means something."""
    g = dv.golden
    assert _rel(g["main.chunked_eager.x0"], g["main.combined.x0"]) > 10 * F32_TOL


@pytest.mark.parametrize("mode", list(MODES))
def test_size_floor(dv, mode):
    g, dec = dv.golden, dv.decoder
    case = dv.manifest["decode"]["cases"]["floor"]
    latent = g["floor.latent"]
    assert tuple(latent.shape) == tuple(case["latent_shape"])
    work, _ = dec.prepare_latent(latent)
    assert tuple(work.shape) == tuple(case["work_latent_shape"])
    assert dec.work_pixel_shape(latent.shape) == tuple(case["x_t_noise_shape"])
    pixels = dec(latent, g["floor.x_t_noise"], border=MODES[mode])
    assert pixels.shape[0] == 1
    assert _rel(pixels[0], g[f"floor.{mode}.pixels"]) < F32_TOL


def test_bad_arguments(dv):
    g, dec = dv.golden, dv.decoder
    with pytest.raises(ValueError, match="padded pixel volume"):
        dec.decode_raw(g["main.latent"], g["main.x_t_noise"][:, :, :-1])
    with pytest.raises(ValueError, match="border"):
        dec.decode_raw(g["main.latent"], g["main.x_t_noise"], border="natten")


def _tiling(case: dict) -> TilingConfig:
    t = case["tiling"]
    return TilingConfig(*(AxisTiling(t[a]["tile_size"], t[a]["overlap"]) for a in ("frames", "height", "width")))


def test_tile_schedule(dv):
    """The tiles (stage-4 slices, pixel slices) of the reference's ``prepare_tile_schedule``."""
    case = dv.manifest["decode"]["cases"]["tiled"]
    cfg = dv.decoder.config
    s4 = stage4_thw_from_latent(cfg.upsamples, *case["latent_shape"][2:])
    tiles = prepare_tile_schedule(cfg, s4, _tiling(case))
    got = [{"in": [[s.start, s.stop] for s in t.s4], "out": [[s.start, s.stop] for s in t.out]} for t in tiles]
    assert got == case["tiles"]
    assert tile_min_sizes(cfg) == tuple(dv.manifest["decoder"]["tile_min_sizes"])
    assert [list(h) for h in tile_halos(cfg)] == dv.manifest["decoder"]["tile_halos"]
    # the blend ramps partition unity on every axis: no weight division
    assert all(np.allclose(w, 1.0) for w in axis_weights(tiles, tuple(case["x_t_noise_shape"][2:])))
    # an overlap below what stages 4-5 reach is refused, naming the axis and the minimum
    frames, pixels = recommended_pixel_overlaps(cfg)
    bad = TilingConfig(AxisTiling(), AxisTiling(), AxisTiling(4 * pixels, pixels - 32 if pixels > 32 else 0))
    with pytest.raises(ValueError, match=f"width overlap .* below the required {pixels} px"):
        prepare_tile_schedule(cfg, s4, bad)


@pytest.mark.parametrize("mode", list(MODES))
def test_tiled_decode(dv, mode):
    """Stages 4-5 per tile with the trapezoid blend, streamed per temporal group, vs the reference's
    tiled ``_decode_pixels`` (raw, before the [0, 1] map)."""
    g, dec = dv.golden, dv.decoder
    case = dv.manifest["decode"]["cases"]["tiled"]
    assert dec.work_pixel_shape(g["tiled.latent"].shape) == tuple(case["x_t_noise_shape"])
    chunks = list(dec.iter_decode(g["tiled.latent"], g["tiled.x_t_noise"], _tiling(case), border=MODES[mode]))
    assert [c.shape[2] for c in chunks] == [int(n) for n in np.asarray(g[f"tiled.{mode}.chunk_frames"])]
    assert _rel(mx.concatenate(chunks, axis=2), g[f"tiled.{mode}.raw"]) < F32_TOL


def test_x0_output_type(dv):
    """``model_output_type: x0``: the sampler converts to a velocity between steps and returns the
    last output raw (the same weights, the reference's x0 branch)."""
    g, dec = dv.golden, dv.decoder
    x0_dec = DiffusionVideoDecoder(replace(dec.config, model_output_type="x0"))
    x0_dec.update(dec.parameters())
    assert _rel(x0_dec.decode_raw(g["main.latent"], g["main.x_t_noise"]), g["x0type.chunked_eager.raw"]) < F32_TOL


def test_one_step_x0_model_draws_per_tile(dv):
    """A one-step x0 model has no x_t to carry between steps: as the reference's
    ``_decode_temporal_group_isolated``, each tile draws its own noise, of its stage-5 canvas."""
    g, dec = dv.golden, dv.decoder
    one = DiffusionVideoDecoder(replace(dec.config, model_output_type="x0", default_num_inference_steps=1))
    one.update(dec.parameters())
    case = dv.manifest["decode"]["cases"]["tiled"]
    shapes = []

    def noise(shape, dtype):
        shapes.append(tuple(shape))
        return mx.random.normal(shape, key=mx.random.key(len(shapes)))

    out = one.decode_raw(g["tiled.latent"], noise, _tiling(case))
    assert tuple(out.shape) == tuple(case["x_t_noise_shape"])
    assert shapes == [(1, 3, t["out"][0][1] - t["out"][0][0], t["out"][1][1] - t["out"][1][0],
                       t["out"][2][1] - t["out"][2][0]) for t in case["tiles"]]


def test_bfloat16_decode(dv):
    """The decoder built in bfloat16 (the pipelines' dtype; float16 blend buffer, as the reference):
    against the reference's bf16 build, within the bf16 tolerance or, on random weights that amplify
    rounding over the stages and sampler steps, within 2x the reference's own bf16-vs-f32 distance."""
    g = dv.golden
    dec = DiffusionVideoDecoder.from_checkpoint(str(dv.vae_path), dtype=mx.bfloat16)
    raw = dec.decode_raw(g["main.latent"].astype(mx.bfloat16), g["main.x_t_noise"].astype(mx.bfloat16))
    assert raw.dtype == mx.bfloat16
    err, ref_err = _rel(raw, g["bf16.chunked_eager.raw"]), float(g["bf16.ref_err"][0])
    print(f"\nbf16 decode: {err:.3e} vs the reference's bf16 (its own bf16-vs-f32: {ref_err:.3e})")
    assert err < max(BF16_TOL, 2 * ref_err)


def test_tiling_from_memory_budget(dv):
    """``plan_tiling``: one tile when the clip fits the budget; else the reference's choice among legal
    tiles (minimum overlaps, the grid of the stage-4 cell and the VAE factor) whose estimate fits, and
    the decode runs with it, streaming a chunk per temporal tile group; the smallest tiles when none fits."""
    g, dec = dv.golden, dv.decoder
    latent = g["tiled.latent"]
    thw = tuple(latent.shape[2:])
    untiled = estimate_decode_bytes(dec.config, thw, None)
    assert dec.plan_tiling(latent.shape, untiled + na_block_bytes()) is None
    smallest = estimate_decode_bytes(dec.config, thw, (16, 64, 64), block_bytes=na_block_bytes())
    budget = (smallest + untiled + na_block_bytes()) // 2
    tiling = dec.plan_tiling(latent.shape, budget)
    assert tiling is not None and any(a.is_tiled() for a in (tiling.frames, tiling.height, tiling.width))
    frames, pixels = recommended_pixel_overlaps(dec.config)
    F, H, W = dv.manifest["decode"]["cases"]["tiled"]["x_t_noise_shape"][2:]
    tile = tuple(min(a.tile_size, n) if a.is_tiled() else n for a, n in
                 zip((tiling.frames, tiling.height, tiling.width), (F, H, W)))
    assert estimate_decode_bytes(dec.config, thw, tile, block_bytes=na_block_bytes()) <= budget
    assert all(a.overlap == (frames if i == 0 else pixels) for i, a in
               enumerate((tiling.frames, tiling.height, tiling.width)) if a.is_tiled())
    chunks = list(dec.iter_decode(latent, g["tiled.x_t_noise"], tiling))
    assert sum(c.shape[2] for c in chunks) == F and chunks[0].shape[3:] == (H, W)
    assert len(chunks) == len({(t.out[0].start, t.out[0].stop) for t in prepare_tile_schedule(
        dec.config, stage4_thw_from_latent(dec.config.upsamples, *thw), tiling)})
    tiny = dec.plan_tiling(latent.shape, 1)  # nothing fits: the smallest legal tiles
    assert (tiny.frames.tile_size, tiny.height.tile_size, tiny.width.tile_size) == (16, 64, 64)


def test_gate_folding_rounds_to_file_dtype(dv):
    """Folded weights are bf16(g·W) of the file's tensors, computed in float32 (the reference casts
    the fold back to the file dtype before any build cast), and that rounding is visible."""
    raw = mx.load(str(dv.vae_path))
    params = dict(tree_flatten(dv.decoder.parameters()))
    targets = {"gate_msa": ("attn.proj.weight", "attn.proj.bias"), "gate_mlp": ("mlp.w_down.weight",),
               "gate_ctx": ("context_proj.weight", "context_proj.bias")}
    rounded_away = total = 0
    for gate_key in dv.manifest["decoder"]["gate_keys"]:
        block, gate = gate_key.rsplit(".", 1)
        g = raw[f"decoder.{gate_key}"].astype(mx.float32)
        assert raw[f"decoder.{gate_key}"].dtype == mx.bfloat16
        assert gate_key not in params
        for leaf in targets[gate]:
            w = raw[f"decoder.{block}.{leaf}"]
            exact = (g[:, None] if w.ndim == 2 else g) * w.astype(mx.float32)
            loaded = params[f"{block}.{leaf}"]
            assert loaded.dtype == mx.float32
            assert bool(mx.array_equal(loaded, exact.astype(w.dtype).astype(mx.float32)))
            rounded_away += int(mx.sum(loaded != exact))
            total += exact.size
    assert rounded_away > total // 2


# -- strict loading ------------------------------------------------------------------------------


def _write_variant(dv, tmp_path: Path, edit) -> Path:
    tensors = dict(mx.load(str(dv.vae_path)))
    metadata = read_safetensors_header(str(dv.vae_path))["__metadata__"]
    edit(tensors)
    out = tmp_path / "variant.safetensors"
    mx.save_safetensors(str(out), tensors, metadata=metadata)
    return out


def test_loader_drops_preview_head_and_splits_qkv(dv):
    params = dict(tree_flatten(dv.decoder.parameters()))
    assert dv.manifest["decoder"]["coarse_keys"] and not any(k.startswith("coarse_") for k in params)
    raw = mx.load(str(dv.vae_path))
    fused = raw["decoder.det_stages.0.0.attn.qkv.weight"].astype(mx.float32)
    d = fused.shape[0] // 3
    for j, part in enumerate(("to_q", "to_k", "to_v")):
        assert bool(mx.array_equal(params[f"det_stages.0.0.attn.qkv.{part}.weight"], fused[j * d:(j + 1) * d]))


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("decoder.diff_blocks.0.attn.qkv.weight"),
     r"missing.*'decoder\.diff_blocks\.0\.attn\.qkv\.weight'"),
    (lambda t: t.pop("decoder.t_embedder.mlp.2.bias"), r"missing.*'decoder\.t_embedder\.mlp\.2\.bias'"),
    (lambda t: t.__setitem__("decoder.extra_head.weight", mx.zeros((2, 2))),
     r"unexpected.*'decoder\.extra_head\.weight'"),
    (lambda t: t.__setitem__("decoder.diff_blocks.9.gate_msa", mx.ones((4,))),
     r"unexpected.*'decoder\.diff_blocks\.9\.gate_msa'"),
    (lambda t: t.__setitem__("decoder.conv_in.weight", t["decoder.conv_in.weight"][:, :-1]),
     r"wrong shape.*'decoder\.conv_in\.weight'"),
], ids=["missing-qkv", "missing-renamed", "extra", "orphan-gate", "mis-shaped"])
def test_strict_loading_errors(dv, tmp_path, edit, message):
    path = _write_variant(dv, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        DiffusionVideoDecoder.from_checkpoint(str(path))
