"""convert.py: official release -> MLX model folder; loading either gives the same model."""

import json
import os
import shutil
from collections import namedtuple

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_ltx import convert as conv
from mlx_ltx.loading import Checkpoint, load_component
from mlx_ltx.models import registry


def _release_copy(fixture_set, folder):
    """The fixture laid out like a local copy of the HF repo (official file names)."""
    os.makedirs(folder, exist_ok=True)
    ckpt = fixture_set.checkpoint
    name = "ltx-2.3-22b-dev.safetensors" if ckpt.metadata.get("model_version") else "ltx-2-19b-dev.safetensors"
    os.symlink(fixture_set.checkpoint_path, os.path.join(folder, name))
    ups = {"spatial-x2": "ltx-2.3-spatial-upscaler-x2-1.1.safetensors",
           "spatial-x1.5": "ltx-2.3-spatial-upscaler-x1.5-1.0.safetensors",
           "temporal-x2": "ltx-2.3-temporal-upscaler-x2-1.0.safetensors"}
    present = []
    for n in fixture_set.manifest["upsamplers"]:
        os.symlink(fixture_set.upsampler_path(n), os.path.join(folder, ups[n]))
        present.append({"spatial-x2": "x2", "spatial-x1.5": "x1.5", "temporal-x2": "temporal-x2"}[n])
    return folder, present


def _params(module):
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(module.parameters())}


def test_converted_folder_loads_identically(fixture_set, tmp_path):
    src_dir, ups = _release_copy(fixture_set, tmp_path / "release")
    out = conv.convert(str(src_dir), "dev", str(tmp_path / "model"), upsamplers=ups, progress=lambda m: None,
                       shard_bytes=64 * 1024)  # tiny shards: exercise multi-file components
    official, converted = fixture_set.checkpoint, Checkpoint(out)
    assert converted.metadata == official.metadata
    info = json.loads((tmp_path / "model" / "config.json").read_text())
    assert info["sources"][0]["sha256"] == conv.sha256_file(str(fixture_set.checkpoint_path))
    assert any(len(files) > 1 for files in info["components"].values())
    for name, build in registry.builders().items():
        if name == "upsampler":
            continue
        a = load_component(official, name, build(official), dtype=mx.bfloat16)
        b = load_component(converted, name, build(converted), dtype=mx.bfloat16)
        pa, pb = _params(a), _params(b)
        assert pa.keys() == pb.keys()
        for k in pa:
            assert np.array_equal(pa[k], pb[k]), (name, k)
    sources = conv.resolve_sources(str(src_dir), "dev", ups)
    for n in ups:
        up_src = Checkpoint(sources.upsamplers[n])
        up_out = Checkpoint(tmp_path / "model" / info["upsamplers"][n])
        assert up_out.upsampler_config == up_src.upsampler_config
        assert up_out.shapes == up_src.shapes


def test_text_projection_runs_from_converted_folder(fixture_set, tmp_path):
    from mlx_ltx.models.text_projection import text_projection_from_checkpoint

    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    out = Checkpoint(conv.convert(str(src_dir), "dev", str(tmp_path / "m"), progress=lambda m: None))
    g = fixture_set.golden("text_projection")
    hs = [mx.array(g[f"in.hidden_states.{i}"]).astype(mx.bfloat16)
          for i in range(g["in.hidden_states_stacked"].shape[-1])]
    mask = mx.array(g["in.attention_mask"])
    outs = []
    for ck in (fixture_set.checkpoint, out):
        m = load_component(ck, "text_projection", text_projection_from_checkpoint(ck), dtype=mx.bfloat16)
        outs.append(m(hs, mask))
    for x, y in zip(*outs):
        assert mx.array_equal(x, y)


def test_interrupted_conversion_leaves_nothing(fixture_set, tmp_path, monkeypatch):
    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    out = tmp_path / "model"
    calls = {"n": 0}
    real_flush = conv._ShardWriter.flush

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_flush(self)

    monkeypatch.setattr(conv._ShardWriter, "flush", flaky)
    with pytest.raises(KeyboardInterrupt):
        conv.convert(str(src_dir), "dev", str(out), progress=lambda m: None)
    assert not out.exists() and not (tmp_path / "model.partial").exists()
    monkeypatch.setattr(conv._ShardWriter, "flush", real_flush)
    conv.convert(str(src_dir), "dev", str(out), progress=lambda m: None)
    assert Checkpoint(out).shapes.keys() == fixture_set.checkpoint.shapes.keys()


def test_existing_output_needs_force(fixture_set, tmp_path):
    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(conv.ConvertError, match="--force"):
        conv.convert(str(src_dir), "dev", str(out), progress=lambda m: None)
    assert (out / "keep.txt").read_text() == "mine"
    conv.convert(str(src_dir), "dev", str(out), force=True, progress=lambda m: None)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_clear_errors(fixture_set, tmp_path, monkeypatch):
    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    with pytest.raises(conv.ConvertError, match="no distilled model file"):
        conv.convert(str(src_dir), "distilled", str(tmp_path / "a"), progress=lambda m: None)
    with pytest.raises(conv.ConvertError, match="x1.5"):
        conv.convert(str(src_dir), "dev", str(tmp_path / "a"), upsamplers=["x3"], progress=lambda m: None)
    bare = tmp_path / "bare.safetensors"
    mx.save_safetensors(str(bare), {"w": mx.zeros((2, 2))})
    with pytest.raises(conv.ConvertError, match="not an official LTX|no LTX 'config'"):
        conv.convert(str(bare), "dev", str(tmp_path / "b"), progress=lambda m: None)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 1000))
    with pytest.raises(conv.ConvertError, match="not enough disk space"):
        conv.convert(str(src_dir), "dev", str(tmp_path / "c"), progress=lambda m: None)
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


def test_quantize_predicate_spares_small_and_sensitive_layers():
    key = "model.diffusion_model.transformer_blocks.3.attn1.to_q.weight"
    assert conv.should_quantize(key, (4096, 4096), 64)
    assert not conv.should_quantize(key, (16, 16), 64)  # narrower than one group
    for k in ("model.diffusion_model.transformer_blocks.3.attn1.to_gate_logits.weight",
              "model.diffusion_model.transformer_blocks.3.attn1.q_norm.weight",
              "model.diffusion_model.patchify_proj.weight", "model.diffusion_model.adaln_single.linear.weight",
              "model.diffusion_model.video_embeddings_connector.transformer_1d_blocks.0.attn1.to_q.weight",
              "vae.decoder.conv_in.conv.weight"):
        assert not conv.should_quantize(k, (4096, 4096), 64), k
