"""LatentUpsampler and upsample_video parity with the reference (golden_upsampler, and the
stage-1 -> stage-2 hand-off of golden_pipeline)."""

import json

import mlx.core as mx
import pytest
from reference_data import TOL_BF16, TOL_F32, bf16_tol, rel_err

from mlx_ltx.loading import Checkpoint, CheckpointError
from mlx_ltx.models.upsampler import LatentUpsampler, load_latent_statistics, upsample_video

DTYPES = pytest.mark.parametrize("dtype,tol", [(mx.float32, TOL_F32), (mx.bfloat16, TOL_BF16)], ids=["f32", "bf16"])


@DTYPES
def test_upsampler_parity(fixture_set, dtype, tol):
    g = fixture_set.golden("upsampler")
    statistics = load_latent_statistics(fixture_set.checkpoint, dtype=dtype)
    latent = mx.array(g["in.latent"]).astype(dtype)
    names = list(fixture_set.manifest["upsamplers"])
    assert names

    def check(out, key):
        err, bound = rel_err(out, g[key]), tol if dtype == mx.float32 else bf16_tol(g, key)
        assert err <= bound, (key, err, bound)

    for name in names:
        upsampler = LatentUpsampler.from_file(fixture_set.upsampler_path(name), dtype=dtype)
        raw = upsampler(latent)
        assert raw.dtype == dtype
        check(raw, f"{name}.out.raw")
        check(upsample_video(latent, statistics, upsampler), f"{name}.out.upsample_video")


@DTYPES
def test_pipeline_handoff(fixture_set, dtype, tol):
    g = fixture_set.golden("pipeline")
    statistics = load_latent_statistics(fixture_set.checkpoint, dtype=dtype)
    upsampler = LatentUpsampler.from_file(fixture_set.upsampler_path("spatial-x2"), dtype=dtype)
    out = upsample_video(mx.array(g["handoff.in.stage1.video.latent"]).astype(dtype), statistics, upsampler)
    assert rel_err(out, g["handoff.out.upscaled.video.latent"]) <= tol


def _rewrite(src, dst, change):
    ckpt = Checkpoint(src)
    weights = change(dict(mx.load(str(src))))
    mx.save_safetensors(str(dst), weights, metadata={"config": json.dumps(ckpt.metadata["config"])})
    return dst


def test_strict_loading(fixture_set, tmp_path):
    src = fixture_set.upsampler_path(next(iter(fixture_set.manifest["upsamplers"])))

    def drop(w):
        del w["final_conv.bias"]
        return w

    def reshape(w):
        w["initial_norm.weight"] = mx.concatenate([w["initial_norm.weight"]] * 2)
        return w

    with pytest.raises(CheckpointError, match="missing.*final_conv.bias"):
        LatentUpsampler.from_file(_rewrite(src, tmp_path / "missing.safetensors", drop))
    with pytest.raises(CheckpointError, match="wrong shape.*initial_norm.weight"):
        LatentUpsampler.from_file(_rewrite(src, tmp_path / "shape.safetensors", reshape))
    # the main checkpoint's statistics are not in an upsampler file
    with pytest.raises(CheckpointError, match="mean-of-means"):
        load_latent_statistics(src)


def test_bad_input(fixture_set):
    path = fixture_set.upsampler_path(next(iter(fixture_set.manifest["upsamplers"])))
    upsampler = LatentUpsampler.from_file(path)
    c = upsampler.in_channels
    with pytest.raises(ValueError, match=f"expected a latent \\[B, {c}, F, H, W\\]"):
        upsampler(mx.zeros((1, c + 1, 2, 2, 2)))
    with pytest.raises(ValueError, match="expected a latent"):
        upsampler(mx.zeros((1, c, 2, 2)))
