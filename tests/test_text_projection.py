"""FeatureExtractorV1/V2 parity with the reference (golden_text_projection)."""

import mlx.core as mx
import pytest
from reference_data import TOL_BF16, TOL_F32, rel_err

from mlx_ltx.loading import load_component
from mlx_ltx.models.text_projection import FeatureExtractorV1, FeatureExtractorV2, build_text_projection


@pytest.mark.parametrize("dtype,tol", [(mx.float32, TOL_F32), (mx.bfloat16, TOL_BF16)], ids=["f32", "bf16"])
def test_text_projection_parity(fixture_set, dtype, tol):
    g = fixture_set.golden("text_projection")
    ckpt = fixture_set.checkpoint
    hs = g["in.hidden_states_stacked"]
    model = build_text_projection(ckpt.config.transformer, hs.shape[2], hs.shape[3] - 1)
    expected_cls = FeatureExtractorV2 if ckpt.config.transformer.text_projection_version == 2 else FeatureExtractorV1
    assert isinstance(model, expected_cls)
    load_component(ckpt, "text_projection", model, dtype=dtype)
    layers = [mx.array(g[f"in.hidden_states.{i}"]).astype(dtype) for i in range(hs.shape[3])]
    video, audio = model(layers, mx.array(g["in.attention_mask"]))
    assert rel_err(video, g["out.video_features"]) <= tol
    assert rel_err(audio, g["out.audio_features"]) <= tol
