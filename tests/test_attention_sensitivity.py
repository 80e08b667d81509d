"""The fixtures can see attention errors: on golden_transformer's inputs, a wrong RoPE position
(video height and width swapped, audio positions zeroed) must move the output by more than the
bf16 tolerance. With near-uniform softmax (norm gains around 0.1 in the random weights) such a
bug would hide inside the parity tolerances; the generator starts norm gains around 1 instead."""

import mlx.core as mx
from reference_data import TOL_BF16, TOL_F32, rel_err
from test_transformer import golden, modality, model_for


def _run(fixture_set, video_positions=None, audio_positions=None):
    g = golden(fixture_set, "transformer")
    model = model_for(fixture_set, mx.float32)
    vp = g["in.video.positions"] if video_positions is None else video_positions
    ap = g["in.audio.positions"] if audio_positions is None else audio_positions
    v = modality(g["in.video.latent"], g["in.sigma"], g["in.video.timesteps"], vp, g["in.video.context"], mx.float32)
    a = modality(g["in.audio.latent"], g["in.sigma"], g["in.audio.timesteps"], ap, g["in.audio.context"], mx.float32)
    return model(v, a)


def test_unperturbed_matches_golden(fixture_set):
    g = golden(fixture_set, "transformer")
    video, audio = _run(fixture_set)
    assert rel_err(video, g["out.video"]) <= TOL_F32
    assert rel_err(audio, g["out.audio"]) <= TOL_F32


def test_swapped_height_width_positions_move_video(fixture_set):
    g = golden(fixture_set, "transformer")
    *_, h, w = g["in.video.latent_5d"].shape
    assert h != w, f"square latent {h}x{w}: an h/w swap would be invisible (make tr_grid non-square)"
    swapped = g["in.video.positions"][:, [0, 2, 1]]  # axis 1: (frame, height, width)
    video, _ = _run(fixture_set, video_positions=swapped)
    moved = rel_err(video, g["out.video"])
    assert moved > TOL_BF16, f"h/w-swapped video positions moved the video output by only {moved:.2e}"


def test_zeroed_audio_positions_move_audio(fixture_set):
    g = golden(fixture_set, "transformer")
    _, audio = _run(fixture_set, audio_positions=0 * g["in.audio.positions"])
    moved = rel_err(audio, g["out.audio"])
    assert moved > TOL_BF16, f"zeroed audio positions (no RoPE) moved the audio output by only {moved:.2e}"
