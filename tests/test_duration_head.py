"""LTX-2.5 duration head and the snapping of its prediction to a frame count, against the
reference (tests/reference/FORMAT-25.md, golden_duration)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_F32, bf16_tol

from mlx_ltx.loading import CheckpointError, read_safetensors_header
from mlx_ltx.models.duration_head import (
    AUTO_DURATION_MAX_SECONDS,
    AUTO_DURATION_MIN_SECONDS,
    FrameCount,
    load_duration_head,
    resolve_num_frames,
)


@pytest.fixture(scope="module")
def golden(fixture_set_25):
    return fixture_set_25.golden("duration")


def _predict(fixture_set_25, golden, dtype) -> float:
    head = load_duration_head(str(fixture_set_25.file("duration_head")), dtype)
    return head.predict_seconds(mx.array(golden["in.video_encoding"]), mx.array(golden["in.audio_encoding"]))


def _rel(actual: float, golden) -> float:
    expected = float(np.asarray(golden["out.seconds"]).reshape(-1)[0])
    return abs(actual - expected) / abs(expected)


def test_seconds_float32(fixture_set_25, golden):
    assert _rel(_predict(fixture_set_25, golden, mx.float32), golden) < TOL_F32


def test_seconds_bfloat16(fixture_set_25, golden):
    assert _rel(_predict(fixture_set_25, golden, mx.bfloat16), golden) < bf16_tol(golden, "out.seconds")


def test_auto_duration_frame_count(fixture_set_25, golden):
    """The head's prediction through the default AutoDuration range, as the reference's
    ``resolve_num_frames(AutoDuration(), DurationPredictor(head), ...)``."""
    seconds = _predict(fixture_set_25, golden, mx.float32)
    fps = float(np.asarray(golden["in.frame_rate"]).reshape(-1)[0])
    assert resolve_num_frames(seconds, fps).num_frames == int(np.asarray(golden["out.num_frames"]).reshape(-1)[0])


def test_snapping_matches_reference(golden):
    rows, expected = np.asarray(golden["snap.in"]), np.asarray(golden["snap.out"])
    assert rows.ndim == 2 and rows.shape[1] == 4 and len(rows) == len(expected)
    for (seconds, fps, lo, hi), want in zip(rows.tolist(), expected.tolist()):
        got = resolve_num_frames(seconds, fps, lo, hi)
        assert got.num_frames == want, f"seconds={seconds} fps={fps} [{lo}, {hi}]: {got.num_frames} != {want}"
        assert got.clamped == (seconds < lo or seconds > hi)
        assert (got.message().startswith("DurationHead prediction clamped")) == got.clamped


# The reference's ``seconds_to_clamped_num_frames`` on cases the golden may not hold (run in the
# reference venv): Python's round (32.5 -> 32), the bump above a 1 s minimum, an upper clamp, and
# a window with no 8k+1 count, where the cap wins over the grid.
@pytest.mark.parametrize("case, want", [
    ((16.25, 2.0, 1.0, 20.0), 25),
    ((0.5, 24.0, 1.0, 20.0), 25),
    ((5.0, 24.0, 1.0, 20.0), 113),
    ((100.0, 24.0, 1.0, 20.0), 473),
    ((0.1, 24.0, 0.5, 0.6), 14),
    ((0.5, 24.0, 0.0, 20.0), 9),
    ((1.0, 24.0, 1.0, 1.0), 24),
])
def test_snapping_edge_cases(case, want):
    assert resolve_num_frames(*case).num_frames == want


def test_defaults_and_messages():
    r = resolve_num_frames(5.0, 24.0)
    assert (r.min_seconds, r.max_seconds) == (AUTO_DURATION_MIN_SECONDS, AUTO_DURATION_MAX_SECONDS) == (1.0, 20.0)
    assert r == FrameCount(113, 5.0, 24.0, 1.0, 20.0) and not r.clamped
    assert r.message() == "DurationHead predicted 5.00s (113 frames @ 24.00 fps)"
    r = resolve_num_frames(31.0, 24.0)
    assert r.clamped and r.message() == ("DurationHead prediction clamped: raw 31.00s outside [1.00s, 20.00s], "
                                         "using 19.71s (473 frames) @ 24.00 fps")


@pytest.mark.parametrize("args, match", [
    ((5.0, 24.0, 10.0, 2.0), r"MIN_SECONDS \(10.0\) must be <= MAX_SECONDS \(2.0\)"),
    ((5.0, 0.0, 1.0, 20.0), "frame rate must be a positive"),
    ((5.0, -24.0, 1.0, 20.0), "frame rate must be a positive"),
    ((5.0, 24.0, -1.0, 20.0), "MIN_SECONDS must be >= 0"),
    ((5.0, 24.0, 1.0, float("inf")), "must be finite"),
    ((0.01, 24.0, 0.0, 20.0), "raise the auto duration MIN_SECONDS"),
    ((float("nan"), 24.0, 1.0, 20.0), "pass the frame count explicitly"),  # the reference: "frames must be >= 1"
])
def test_bad_inputs_say_what_to_change(args, match):
    with pytest.raises(ValueError, match=match):
        resolve_num_frames(*args)


def test_batch_of_one_only(fixture_set_25, golden):
    head = load_duration_head(str(fixture_set_25.file("duration_head")), mx.float32)
    v = mx.array(golden["in.video_encoding"])
    with pytest.raises(ValueError, match="single-item batches"):
        head.predict_seconds(mx.concatenate([v, v]), None)
    with pytest.raises(ValueError, match="at least one"):
        head.predict_seconds(None, None)


def _rewrite(fixture_set_25, tmp_path, edit) -> str:
    """The set's duration-head file with its tensors changed by ``edit`` (metadata kept)."""
    src = str(fixture_set_25.file("duration_head"))
    weights = mx.load(src)
    edit(weights)
    out = str(tmp_path / "head.safetensors")
    mx.save_safetensors(out, weights, metadata=read_safetensors_header(src).get("__metadata__") or {})
    return out


def test_missing_extra_and_misshaped_keys_are_named(fixture_set_25, tmp_path):
    gone = "duration_head.attention_pooler.cross_attn.in_proj_bias"
    with pytest.raises(CheckpointError, match=rf"missing \(1\): '{gone}'"):
        load_duration_head(_rewrite(fixture_set_25, tmp_path, lambda w: w.pop(gone)), mx.float32)

    extra = "duration_head.attention_pooler.cross_attn.bias_k"
    with pytest.raises(CheckpointError, match=rf"unexpected \(1\): '{extra}'"):
        load_duration_head(_rewrite(fixture_set_25, tmp_path, lambda w: w.update({extra: mx.zeros((1,))})),
                           mx.float32)

    key = "duration_head.mlp_hidden.weight"
    with pytest.raises(CheckpointError, match=rf"wrong shape \(1\): '{key}'"):
        load_duration_head(_rewrite(fixture_set_25, tmp_path, lambda w: w.update({key: w[key][:, 1:]})), mx.float32)


def test_file_without_head_is_refused(fixture_set_25, tmp_path):
    def strip(w):
        for k in list(w):
            w[k.replace("duration_head.", "something_else.")] = w.pop(k)

    with pytest.raises(CheckpointError, match="no duration head"):
        load_duration_head(_rewrite(fixture_set_25, tmp_path, strip), mx.float32)
