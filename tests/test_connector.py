"""Embeddings connectors and EmbeddingsProcessor parity with the reference
(golden_connector, golden_text_projection, golden_gemma)."""

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_BF16, TOL_F32, rel_err

from mlx_ltx.loading import CheckpointError
from mlx_ltx.models.connector import (
    EmbeddingsProcessor,
    compute_right_pad_order,
    load_connector,
    load_embeddings_processor,
)

DTYPES = [(mx.float32, TOL_F32), (mx.bfloat16, TOL_BF16)]
IDS = ["f32", "bf16"]


def _gemma_dims(fixture_set):
    hs = fixture_set.golden("text_projection")["in.hidden_states_stacked"]
    return hs.shape[2], hs.shape[3] - 1


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=IDS)
def test_create_embeddings_parity(fixture_set, dtype, tol):
    g = fixture_set.golden("connector")
    proc = load_embeddings_processor(fixture_set.checkpoint, *_gemma_dims(fixture_set), dtype=dtype)
    assert isinstance(proc, EmbeddingsProcessor)
    video, audio, mask = proc.create_embeddings(mx.array(g["in.video_features"]).astype(dtype),
                                                mx.array(g["in.audio_features"]).astype(dtype),
                                                mx.array(g["in.additive_mask"]))
    assert video.dtype == dtype and audio.dtype == dtype
    assert rel_err(video, g["out.video_encoding"]) <= tol
    assert rel_err(audio, g["out.audio_encoding"]) <= tol
    np.testing.assert_array_equal(np.array(mask), g["out.binary_mask"])


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=IDS)
def test_raw_video_connector(fixture_set, dtype, tol):
    """A bare connector call on right-padded input: registers fill the padding, mask becomes 0."""
    g = fixture_set.golden("connector")
    connector = load_connector(fixture_set.checkpoint, "video_connector", dtype)
    x = mx.array(g["raw.in.video_features_right_padded"]).astype(dtype)
    out, mask = connector(x, mx.array(g["raw.in.additive_mask_right_padded"]))
    assert rel_err(out, g["raw.out.video"]) <= tol
    np.testing.assert_array_equal(np.array(mask), g["raw.out.mask"])


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=IDS)
def test_process_hidden_states(fixture_set, dtype, tol):
    """Gemma hidden states -> feature extractor -> reorder -> connectors, against the connector
    golden (whose inputs are the text-projection golden's outputs for the same mask) and, when
    present, the end-to-end Gemma golden."""
    tp, g = fixture_set.golden("text_projection"), fixture_set.golden("connector")
    np.testing.assert_array_equal(tp["in.attention_mask"], g["in.binary_mask"])
    n_states = tp["in.hidden_states_stacked"].shape[3]
    proc = load_embeddings_processor(fixture_set.checkpoint, *_gemma_dims(fixture_set), dtype=dtype)
    states = [mx.array(tp[f"in.hidden_states.{i}"]).astype(dtype) for i in range(n_states)]
    video, audio, mask = proc.process_hidden_states(states, mx.array(tp["in.attention_mask"]))
    assert rel_err(video, g["out.video_encoding"]) <= tol
    assert rel_err(audio, g["out.audio_encoding"]) <= tol
    np.testing.assert_array_equal(np.array(mask), g["out.binary_mask"])
    if fixture_set.has_golden("gemma"):
        gg = fixture_set.golden("gemma")
        states = [mx.array(gg[f"out.hidden_states.{i}"]).astype(dtype) for i in range(n_states)]
        video, audio, mask = proc.process_hidden_states(states, mx.array(gg["in.attention_mask"]))
        assert rel_err(video, gg["out.video_encoding"]) <= tol
        assert rel_err(audio, gg["out.audio_encoding"]) <= tol
        np.testing.assert_array_equal(np.array(mask), gg["out.attention_mask"])


def test_right_pad_order_is_stable(fixture_set):
    """Valid tokens move to the front in their original order; pads follow in theirs."""
    g = fixture_set.golden("connector")
    binary = g["in.binary_mask"][0]
    idx, mask = compute_right_pad_order(mx.array(g["in.additive_mask"]))
    valid, pads = np.flatnonzero(binary == 1), np.flatnonzero(binary == 0)
    assert pads.size > 0, "fixture should pad the prompt"
    np.testing.assert_array_equal(np.array(idx)[0], np.concatenate([valid, pads]))
    np.testing.assert_array_equal(np.array(mask)[0, 0, 0] >= 0, np.arange(binary.size) < valid.size)


def test_connector_loading_is_strict(fixture_set):
    """A Gemma depth that does not match the checkpoint's text projection fails loudly."""
    hidden, layers = _gemma_dims(fixture_set)
    with pytest.raises(CheckpointError):
        load_embeddings_processor(fixture_set.checkpoint, hidden, layers + 1, dtype=mx.float32)
