"""Configuration comes from the checkpoint: a value in the metadata beats the code default."""

import json

import mlx.core as mx
import pytest

from mlx_ltx.config import ConfigError, LTXConfig, TransformerConfig, VideoVAEConfig
from mlx_ltx.loading import Checkpoint


def test_metadata_value_beats_default():
    assert TransformerConfig().av_ca_timestep_scale_multiplier == 1  # the reference's code default
    cfg = TransformerConfig.from_dict({"av_ca_timestep_scale_multiplier": 1000.0})
    assert cfg.av_ca_timestep_scale_multiplier == 1000.0
    assert VideoVAEConfig().timestep_conditioning is True
    assert VideoVAEConfig.from_dict({"timestep_conditioning": False}).timestep_conditioning is False


def test_fixture_config_is_the_files(fixture_set):
    """Every field the file sets is the file's value, whatever the default."""
    ckpt = fixture_set.checkpoint
    cfg = ckpt.config
    section = ckpt.metadata["config"]["transformer"]
    for key, value in section.items():
        if hasattr(cfg.transformer, key) and key != "raw":
            got = getattr(cfg.transformer, key)
            assert got == (tuple(value) if isinstance(value, list) else value), key
    assert cfg.model_version == ckpt.metadata.get("model_version")
    if "av_ca_timestep_scale_multiplier" not in section:
        assert cfg.transformer.av_ca_timestep_scale_multiplier == 1


def test_changed_metadata_changes_config(fixture_set, tmp_path):
    src = fixture_set.checkpoint
    meta = json.loads(json.dumps(src.metadata))
    meta["config"]["transformer"]["av_ca_timestep_scale_multiplier"] = 777.0
    meta["config"]["vae"]["spatial_padding_mode"] = "reflect"
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    dst = tmp_path / "edited.safetensors"
    mx.save_safetensors(str(dst), dict(mx.load(src.path)), metadata=raw)
    cfg = Checkpoint(dst).config
    assert cfg.transformer.av_ca_timestep_scale_multiplier == 777.0
    assert cfg.vae.spatial_padding_mode == "reflect"


def test_text_projection_version_is_chosen_like_the_reference(fixture_set):
    cfg = fixture_set.checkpoint.config.transformer
    v2 = cfg.raw.get("caption_proj_before_connector") is True
    assert cfg.text_projection_version == (2 if v2 else 1)
    partial = dict(cfg.raw, caption_proj_before_connector=True)
    for k in ("caption_projection_first_linear", "caption_proj_input_norm", "caption_projection_second_linear"):
        partial.pop(k, None)
    with pytest.raises(ConfigError, match="text projection"):
        TransformerConfig.from_dict(partial)


def test_fixed_reference_values_are_checked(fixture_set):
    raw = dict(fixture_set.checkpoint.config.transformer.raw, qk_norm="layer_norm")
    with pytest.raises(ConfigError, match="qk_norm"):
        TransformerConfig.from_dict(raw)


def test_not_an_ltx_checkpoint():
    with pytest.raises(ConfigError, match="no JSON 'config'"):
        LTXConfig.from_metadata({}, source="x.safetensors")
    with pytest.raises(ConfigError, match="vocoder"):
        LTXConfig.from_metadata({"config": {"transformer": {}, "vae": {}, "audio_vae": {}}}, source="x")


def test_vae_scale_factors(fixture_set):
    vae = fixture_set.checkpoint.config.vae
    t, h, w = vae.scale_factors
    g = fixture_set.golden("video_vae")
    px, lat = g["encode.in.pixels"].shape, g["encode.out.latent"].shape
    assert (px[2] - 1) // t + 1 == lat[2] and px[3] // h == lat[3] and px[4] // w == lat[4]
