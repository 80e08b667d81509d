"""The conditioning extension point (``pipeline_stages.StageInputs``): a stage takes video and
audio inputs from its pipeline — conditioning items, a noise scale, an initial latent, frozen —
and builds both states through the one noise path (``latent_tools.create_noised_state`` with the
generation's ``SeededNoise`` or injected draws), as the reference's ``ModalitySpec``."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from reference_data import FixtureSet, fixture_dirs
from test_denoising import model_for

from mlx_ltx.guidance import MultiModalGuiderParams
from mlx_ltx.latent_tools import AudioLatentTools, SeededNoise
from mlx_ltx.pipeline_stages import PIPELINES, Contexts, Geometry, ModalitySpec, StageInputs, run_stages

FS = FixtureSet(fixture_dirs()[0])  # plumbing: the first set


class Runtime:
    def __init__(self, model, inputs):
        self.model, self.inputs, self.asked = model, inputs, []

    def model_for(self, stage):
        return self.model

    def conditionings(self, stage_index, height, width):
        self.asked.append(stage_index)
        return self.inputs

    def upsample(self, video_latent):
        raise AssertionError("one-stage spec")


def _setup():
    cfg = FS.checkpoint.config
    model = model_for(FS)
    g = FS.golden("pipeline")
    ctx = Contexts(mx.array(g["in.video.context"]), mx.array(g["in.audio.context"]),
                   mx.array(g["in.video.context_negative"]), mx.array(g["in.audio.context_negative"]))
    t, sh, sw = cfg.vae.scale_factors
    return cfg, model, ctx, Geometry(t + 1, 2 * sh, 3 * sw, 24.0)


def test_frozen_audio_is_never_changed():
    """a2vid's audio: an initial latent, noise scale 0, frozen -> every step keeps it exactly, and
    the stage still draws its noise (the reference's noiser draws for a frozen stream too)."""
    cfg, model, ctx, geo = _setup()
    shape = tuple(AudioLatentTools.from_video_pixel_shape(cfg, geo.num_frames, geo.fps).target_shape)
    audio = mx.random.normal(shape, key=mx.random.key(3))
    labels = []
    seeded = SeededNoise(5)

    def noise(shape, dtype, label):
        labels.append(label)
        return seeded(shape, dtype, label)

    seen = []
    runtime = Runtime(model, StageInputs(audio=ModalitySpec(initial_latent=audio, noise_scale=0.0, frozen=True)))
    video, out = run_stages(PIPELINES["dev"], runtime, cfg, geo, ctx, noise, steps=2,
                            video_params=MultiModalGuiderParams(), audio_params=MultiModalGuiderParams(),
                            progress=lambda k, i, n: seen.append(i))
    assert labels == ["stage1.video", "stage1.audio"] and runtime.asked == [0]
    assert np.array_equal(np.array(out), np.array(audio))
    assert float(mx.abs(video).max()) > 0 and seen == [1, 2]


def test_frozen_after_noise_converges_to_the_kept_latent():
    """retake's kept stream: noised at scale 1 (mask 1 when the noise is drawn), then frozen: the
    model sees noise labelled σ 0 and the Euler steps pull it back to the clean latent, which the
    last step (σ → 0) returns exactly (the reference's noised-then-frozen behaviour)."""
    cfg, model, ctx, geo = _setup()
    shape = tuple(AudioLatentTools.from_video_pixel_shape(cfg, geo.num_frames, geo.fps).target_shape)
    audio = mx.random.normal(shape, key=mx.random.key(4))
    runtime = Runtime(model, StageInputs(audio=ModalitySpec(initial_latent=audio, frozen=True)))
    _, out = run_stages(PIPELINES["dev"], runtime, cfg, geo, ctx, SeededNoise(6), steps=2,
                        video_params=MultiModalGuiderParams(), audio_params=MultiModalGuiderParams())
    assert np.allclose(np.array(out), np.array(audio), atol=1e-5)
