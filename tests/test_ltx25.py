"""LTX-2.5 on the split fixture sets (FORMAT-25.md): a checkpoint is recognised from its files,
the transformer with the keyframe embedding and the distilled stage 1's ancestral Euler match the
reference, and every split-layout or version mismatch is an error that names the file and the fix."""

from __future__ import annotations

import dataclasses
import os
import shutil

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_BF16, TOL_F32, TOL_LOOP, FixtureSet, bf16_tol, fixture_dirs, rel_err

from mlx_ltx.denoising import SimpleDenoiser, euler_ancestral_denoising_loop
from mlx_ltx.generations import describe
from mlx_ltx.latent_tools import LatentState
from mlx_ltx.loading import Checkpoint
from mlx_ltx.model_files import SplitLayoutError
from mlx_ltx.models.transformer import Modality, load_transformer
from mlx_ltx.pipelines import Pipeline
from mlx_ltx.sampling import EulerAncestralDiffusionStep


# ---------------------------------------------------------------- what a checkpoint is
def test_25_recognised_from_its_files(fixture_set_25):
    fs = fixture_set_25
    kind = describe(Checkpoint(fs.path))
    assert kind.version[:2] == (2, 5) and kind.layout == "split"
    assert kind.text_encoder_family == "gemma4_unified" and kind.has_duration_head
    assert kind.video_decoder == "conv" and kind.video_vae_class == "CausalVideoAutoencoder" and kind.image_crf == 18
    # the same model given file by file (ModelPaths.from_split) is the same kind
    files = Checkpoint({role: str(fs.file(role)) for role in fs.manifest["files"]})
    assert describe(files) == kind
    assert files.role_path("text_encoder") == str(fs.file("text_encoder"))


@pytest.mark.parametrize("path", fixture_dirs(), ids=lambda p: p.name)
def test_23_recognised_from_its_file(path):
    fs = FixtureSet(path)
    kind = describe(fs.checkpoint)
    assert kind.layout == "single" and not kind.has_duration_head and kind.text_encoder_family is None
    assert kind.version < (2, 4) and kind.image_crf == 33
    assert kind.version == ((2, 3, 0) if fs.checkpoint.metadata.get("model_version") else ())


# ---------------------------------------------------------------- transformer with the 2.5 switches
@pytest.mark.parametrize("dtype,tol", [(mx.float32, TOL_F32), (mx.bfloat16, TOL_BF16)], ids=["f32", "bf16"])
def test_transformer_keyframe_embedding_parity(fixture_set_25, dtype, tol):
    g = fixture_set_25.golden("transformer")
    cfg = Checkpoint(fixture_set_25.path).config.transformer
    assert cfg.use_keyframes_abs_pos_embedding and not cfg.ff_bias
    model = load_transformer(str(fixture_set_25.path), dtype)
    assert float(mx.abs(model.keyframes_abs_pos_embedding).max()) > 0  # random in the fixture, not the zero init

    def run(video_ts, keyframes=True, audio_enabled=True):
        v = Modality(mx.array(g["in.video.latent"]).astype(dtype), mx.array(g["in.sigma"]), mx.array(video_ts),
                     mx.array(g["in.video.positions"]), mx.array(g["in.video.context"]).astype(dtype),
                     keyframes_mask=mx.array(g["in.video.keyframes_mask"]) if keyframes else None)
        a = Modality(mx.array(g["in.audio.latent"]).astype(dtype), mx.array(g["in.sigma"]),
                     mx.array(g["in.audio.timesteps"]), mx.array(g["in.audio.positions"]),
                     mx.array(g["in.audio.context"]).astype(dtype), enabled=audio_enabled)
        return model(v, a)

    def check(out, key):
        bound = tol if dtype == mx.float32 else bf16_tol(g, key)
        assert rel_err(out, g[key]) <= bound, (key, rel_err(out, g[key]), bound)

    video, audio = run(g["in.video.timesteps"])
    check(video, "out.video")
    check(audio, "out.audio")
    check(run(g["in.video.timesteps"], audio_enabled=False)[0], "out.video_only.video")
    video_u, audio_u = run(g["in.uniform.video.timesteps"])
    check(video_u, "out.uniform.video")
    check(audio_u, "out.uniform.audio")
    if dtype == mx.float32:  # the embedding matters: without the mask the output is far off
        assert rel_err(run(g["in.video.timesteps"], keyframes=False)[0], g["out.video"]) > 100 * TOL_F32


def test_initial_state_marks_the_first_latent_frame(fixture_set_25):
    from mlx_ltx.latent_tools import VideoLatentTools

    g = fixture_set_25.golden("transformer")
    f, h, w = g["in.video.latent_5d"].shape[2:]
    tools = VideoLatentTools.from_pixel_shape(Checkpoint(fixture_set_25.path).config, (f - 1) * 8 + 1, h * 32,
                                              w * 32, 24.0)
    state = tools.create_initial_state()
    assert np.array_equal(np.array(state.keyframes_mask), g["in.video.keyframes_mask"])


# ---------------------------------------------------------------- ancestral Euler (distilled stage 1)
def test_ancestral_loop_matches_reference(fixture_set_25):
    fs = fixture_set_25
    g = fs.golden("ancestral")
    model = load_transformer(str(fs.path), mx.float32)
    video = LatentState(mx.array(g["in.video.latent"]), mx.array(g["in.video.denoise_mask"]),
                        mx.array(g["in.video.positions"]), mx.array(g["in.video.clean_latent"]),
                        keyframes_mask=mx.array(g["in.video.keyframes_mask"]))
    a_latent = mx.array(g["in.audio.latent"])
    audio = LatentState(a_latent, mx.array(g["in.audio.denoise_mask"]), mx.array(g["in.audio.positions"]),
                        mx.zeros_like(a_latent))  # the audio state starts from zeros, all noised
    n_draws = len([k for k in g if k.startswith("draw") and k.endswith(".video")])
    draws = [g[f"draw{k}.{m}"] for k in range(n_draws) for m in ("video", "audio")]
    order = []

    def noise(shape, dtype, modality):
        order.append(modality)
        n = draws.pop(0)
        assert tuple(n.shape) == tuple(shape)
        return mx.array(n).astype(dtype)

    stepper = EulerAncestralDiffusionStep(float(g["in.eta"][0]), float(g["in.s_noise"][0]), noise)
    denoiser = SimpleDenoiser(mx.array(g["in.video.context"]), mx.array(g["in.audio.context"]))
    v, a = euler_ancestral_denoising_loop(model, video, audio, mx.array(g["in.sigmas"]), denoiser, stepper)
    assert not draws and order == ["video", "audio"] * n_draws  # every draw, video before audio
    errors = {"video": rel_err(v.latent, g["out.video.latent"]), "audio": rel_err(a.latent, g["out.audio.latent"])}
    print(f"\n{fs.path.name} ancestral: " + ", ".join(f"{k} {e:.2e}" for k, e in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors


def test_ancestral_step_eta0_is_euler():
    from mlx_ltx.sampling import EulerDiffusionStep

    x, d = mx.random.normal((1, 6, 4), key=mx.random.key(1)), mx.random.normal((1, 6, 4), key=mx.random.key(2))
    sig = [1.0, 0.725, 0.4]
    ancestral = EulerAncestralDiffusionStep(eta=0.0).step(x, d, sig, 0)
    assert np.allclose(np.array(ancestral), np.array(EulerDiffusionStep().step(x, d, sig, 0)), atol=1e-6)
    with pytest.raises(ValueError, match="noise"):
        EulerAncestralDiffusionStep(eta=1.0).step(x, d, sig, 0)


# ---------------------------------------------------------------- split layout errors
def _copy_split(fs, tmp_path, drop=(), extra=()):
    out = tmp_path / "model"
    for rel in [*fs.manifest["files"].values(), *fs.manifest["upsamplers"].values(), *fs.manifest["loras"].values()]:
        if rel in drop:
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(fs.path / rel, out / rel)
    for src, rel in extra:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, out / rel)
    return out


def test_split_folder_missing_component(fixture_set_25, tmp_path):
    fs = fixture_set_25
    folder = _copy_split(fs, tmp_path, drop=(fs.manifest["files"]["audio_vae"],))
    with pytest.raises(SplitLayoutError, match="no audio vae file .*ltx-2.5-audio-vae"):
        Checkpoint(folder).config  # noqa: B018
    folder = _copy_split(fs, tmp_path / "b", drop=(fs.manifest["files"]["text_encoder"],))
    with pytest.raises(ValueError, match="no text encoder file: add the release's text_encoders/gemma4"):
        Pipeline.from_pretrained(folder, "distilled")
    folder = _copy_split(fs, tmp_path / "c", drop=(fs.manifest["files"]["duration_head"],))
    pipe = Pipeline.from_pretrained(folder, "distilled")
    with pytest.raises(ValueError, match="no duration head.*pass num_frames.*model_patches/ltx-2.5-duration-head"):
        pipe.generate("a fox", height=128, width=192)


def test_split_folder_two_transformers(fixture_set_25, tmp_path):
    fs = fixture_set_25
    tr = fs.file("transformer")
    folder = _copy_split(fs, tmp_path, extra=[(tr, "diffusion_models/ltx-2.5-tiny-distilled-transformer-bf16.safetensors")])
    with pytest.raises(SplitLayoutError, match="several transformers"):
        Checkpoint(folder)
    assert Checkpoint(folder, variant="distilled").role_path("transformer").endswith("distilled-transformer-bf16.safetensors")
    assert Pipeline.from_pretrained(folder, "dev").checkpoint.role_path("transformer").endswith("dev-transformer-bf16.safetensors")


def test_file_given_for_the_wrong_role(fixture_set_25):
    fs = fixture_set_25
    with pytest.raises(SplitLayoutError, match="given as the video vae file but its tensors are those of the audio vae"):
        Checkpoint({"transformer": str(fs.file("transformer")), "video_vae": str(fs.file("audio_vae"))})


def test_lora_of_another_generation_is_refused(fixture_set_25):
    fs = fixture_set_25
    lora23 = next(FixtureSet(d) for d in fixture_dirs() if FixtureSet(d).checkpoint.metadata.get("model_version"))
    lora23_path = str(lora23.path / lora23.manifest["loras"]["test"])
    with pytest.raises(ValueError, match=r"LoRA for LTX-2\.3, but the model is LTX-2\.5.*ltx-2.5-22b-distilled-lora"):
        Pipeline.from_pretrained(fs.path, "dev-two-stage", distilled_lora=lora23_path)
    # and the reverse: the 2.5 distilled LoRA on a 2.3 checkpoint
    with pytest.raises(ValueError, match=r"LoRA for LTX-2\.5, but the model is LTX-2\.3"):
        Pipeline.from_pretrained(lora23.checkpoint_path, "dev-two-stage", gemma=str(lora23.path / lora23.manifest["gemma_dir"]),
                                 upsampler=str(lora23.upsampler_path("spatial-x2")),
                                 distilled_lora=str(fs.lora_path("distilled")))


def test_lora_generation_from_names():
    from mlx_ltx.generations import lora_generation

    assert lora_generation("ltx-2.3-22b-distilled-lora-384.safetensors") == (2, 3)
    assert lora_generation("ltx-2-19b-distilled-lora-384.safetensors") == (2, 0)
    assert lora_generation("loras/ltx-2.5-22b-distilled-lora-450-bf16.safetensors") == (2, 5)
    assert lora_generation("my-style.safetensors") is None
    assert lora_generation("x.safetensors", {"model_version": "2.5.0"}) == (2, 5)


def test_text_encoder_pairing_checked_before_loading(fixture_set_25, tmp_path):
    fs = fixture_set_25
    g23 = next(FixtureSet(d) for d in fixture_dirs() if FixtureSet(d).checkpoint.metadata.get("model_version"))
    gemma3 = str(g23.path / g23.manifest["gemma_dir"])
    with pytest.raises(Exception, match="needs the text encoder text_encoders/gemma4-12b-with-proj-ltx-2.5"):
        Pipeline.from_pretrained(fs.path, "distilled", gemma=gemma3)
    with pytest.raises(Exception, match="needs a Gemma-3 text encoder"):
        Pipeline.from_pretrained(g23.checkpoint_path, "distilled", gemma=str(fs.file("text_encoder")),
                                 upsampler=str(g23.upsampler_path("spatial-x2")))
    # a bundle stamped for another Gemma: both stamps and both files named
    te = mx.load(str(fs.file("text_encoder")), return_metadata=True)
    import json

    cfg = json.loads(te[1]["gemma_config"])
    cfg["gemma_version"] = "gemma4-other-v9"
    other = tmp_path / "gemma4-other.safetensors"
    mx.save_safetensors(str(other), te[0], metadata={**te[1], "gemma_config": json.dumps(cfg)})
    with pytest.raises(Exception, match=r"Gemma version mismatch.*expects .*gemma4-tiny.*gemma4-other-v9"):
        Pipeline.from_pretrained(fs.path, "distilled", gemma=str(other))


def test_memory_estimates_read_the_gemma4_bundle(fixture_set_25):
    """The preflight and the keep-models policy size the text encoder from the bundle's header (its
    language model only) and its widths from gemma_config, not from Gemma-3 defaults."""
    from mlx_ltx.memory_policy import _gemma_bytes
    from mlx_ltx.models.gemma4 import language_model_tensors, read_gemma4_config
    from mlx_ltx.preflight import _gemma_widths, predict_peak

    fs = fixture_set_25
    te = str(fs.file("text_encoder"))
    lm = language_model_tensors(te)
    assert lm and not any(k.startswith(("vision_model.", "text_embedding_projection.", "tokenizer_json"))
                          for k, _, _ in lm)
    assert _gemma_bytes(te, mx.bfloat16) == sum(int(np.prod(s)) for _, _, s in lm) * 2
    cfg = read_gemma4_config(te)
    assert _gemma_widths(te) == (cfg.hidden_size, cfg.num_hidden_layers)
    prediction = predict_peak(Checkpoint(fs.path), "distilled", 128, 192, 9, gemma=te)
    assert not any("Gemma" in n for n in prediction.notes), prediction.notes
    assert Pipeline.from_pretrained(fs.path, "distilled").estimated_model_bytes() is not None
