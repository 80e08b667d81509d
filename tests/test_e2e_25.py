"""LTX-2.5 whole pipelines against the reference's pipeline classes on the split fixture sets
(golden_e2e, FORMAT-25.md): the split folder opened as the Hugging Face repo lays it out (the
text encoder, upsampler and distilled LoRA found in it), the Gemma-4 bundle, the keyframe
embedding on the first latent frame, the image CRF of the video-VAE file (18), and the distilled
stage 1's ancestral Euler with its draws replayed. Tolerance: TOL_LOOP on latents, frames and
waveform, as for 2.3 (test_e2e.py)."""

from __future__ import annotations

import dataclasses
import os

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_F32, TOL_LOOP, FixtureSet25, fixture_dirs, rel_err
from test_e2e import E2E, ReferenceDraws, observed_frames, request, stage_output_errors, whole_pipeline_errors

from mlx_ltx.models.vae_tiling import AxisTiling, TilingConfig
from mlx_ltx.pipelines import Pipeline


def e2e(fs):
    return fs.golden("e2e"), fs.manifest["e2e"]


def plumbing_set():
    """The 2.5 set the plumbing tests (streaming, the CLI, the stage diagnostics) run once on: the
    smallest (fewest bytes on disk), so that they cost least."""
    dirs = fixture_dirs("2.5")
    if not dirs:
        pytest.skip("no LTX-2.5 fixture set")
    return FixtureSet25(min(dirs, key=lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())))


def make_pipeline(fs, name: str) -> Pipeline:
    return Pipeline.from_pretrained(fs.path, name, dtype=mx.float32)


def diffusion_vae_folder(fs, tmp_path):
    """The split folder with the release's diffusion video VAE beside the conv one in ``vae/`` (links),
    as a download of both holds them; the set keeps it under ``extra/`` so that it opens with the conv one."""
    if "diffusion_vae" not in fs.manifest:
        pytest.skip(f"{fs.path.name} has no diffusion video VAE (make_ref_25.py --no-diffusion-vae)")
    root = tmp_path / fs.path.name
    for sub in fs.path.iterdir():
        if sub.is_dir() and sub.name != "extra":
            (root / sub.name).mkdir(parents=True)
            for f in sub.iterdir():
                (root / sub.name / f.name).symlink_to(f)
    dv = fs.path / fs.manifest["diffusion_vae"]["file"]
    (root / "vae" / dv.name).symlink_to(dv)
    return root


@pytest.mark.parametrize("name", E2E)
def test_pipeline_with_diffusion_decoder_25(fixture_set_25, name, tmp_path):
    """The four pipelines with LTX-2.5's diffusion video decoder (the folder's default when it holds both
    VAE files) against the reference's pipeline classes given that file: the denoising draws replayed
    (they and the latents are the conv run's, which the generator asserted), the decoder's one x_t draw
    injected, frames within TOL_LOOP; one pipeline also decoded tiled as the reference did."""
    fs = fixture_set_25
    g, meta = e2e(fs)
    gd = fs.golden("e2e_diffvae")
    pipe = Pipeline.from_pretrained(diffusion_vae_folder(fs, tmp_path), name, dtype=mx.float32)
    assert pipe.kind.video_decoder == "diffusion"
    x_t = gd[f"{name}.decoder_draw"]
    draws = ReferenceDraws(g, name)

    def decoder_noise(shape, dtype):
        assert tuple(shape) == x_t.shape, (shape, x_t.shape)
        return mx.array(x_t).astype(dtype)

    def noise(shape, dtype, label):
        return decoder_noise(shape, dtype) if label == "decoder" else draws(shape, dtype, label)

    with observed_frames(pipe) as decoded:  # generate's own float frames (it returns uint8)
        result = pipe.generate(meta["prompt"], noise=noise, sde_noise=draws.sde, **request(fs, name, meta))
    assert draws.left() == {}
    errors = {"video latent": rel_err(result.video_latent, g[f"{name}.decode.video.latent"])}
    ref = gd[f"{name}.out.frames_u16"].astype(np.float64) / 65535.0
    errors["frames"] = rel_err(np.concatenate(decoded), ref)  # the memory budget here plans one tile
    assert np.abs(result.frames.astype(int) - np.round(ref * 255).astype(int)).max() <= 1
    tiled = fs.manifest["diffusion_vae"]["tiled"]
    if tiled["pipeline"] == name:
        t = tiled["tiling"]
        cfg = TilingConfig(*(AxisTiling(t[a]["tile_size"], t[a]["overlap"]) for a in ("frames", "height", "width")))
        frames = np.concatenate(list(pipe.iter_video_frames(result.video_latent, noise=decoder_noise, tiling=cfg)))
        errors["tiled frames"] = rel_err(frames, gd[f"tiled.{name}.out.frames_u16"].astype(np.float64) / 65535.0)
    print(f"\n{fs.path.name} {name} (diffusion decoder): " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors


def test_video_decoder_selection(tmp_path, capsys):
    """A folder holding both video VAE files decodes with the diffusion one (the release's default) unless
    ``video_decoder="conv"``; asking for a decoder the folder has no file for names the file to add; the
    preflight plans the diffusion decode and, when it is the peak, advises the conv file."""
    from mlx_ltx.loading import Checkpoint
    from mlx_ltx.preflight import advice, predict_peak

    with_vae = [d for d in fixture_dirs("2.5") if "diffusion_vae" in FixtureSet25(d).manifest]
    if not with_vae:
        pytest.skip("no LTX-2.5 set with a diffusion video VAE")
    fs = FixtureSet25(with_vae[0])
    folder = diffusion_vae_folder(fs, tmp_path)
    both = Checkpoint(folder)
    assert os.path.basename(both.role_path("video_vae")) == os.path.basename(fs.manifest["diffusion_vae"]["file"])
    conv = Checkpoint(folder, video_decoder="conv")
    assert os.path.basename(conv.role_path("video_vae")) == os.path.basename(fs.manifest["files"]["video_vae"])
    with pytest.raises(ValueError, match=r"has no diffusion video VAE file .*ltx-2.5-video-vae-bf16.safetensors, or "
                                         r"choose --video-decoder conv"):
        Checkpoint(fs.path, video_decoder="diffusion")
    with pytest.raises(ValueError, match="video_decoder='vq'"):
        Checkpoint(folder, video_decoder="vq")
    meta = fs.manifest["e2e"]
    pred = predict_peak(both, "distilled", meta["height"], meta["width"], meta["num_frames"])
    assert pred.phases["video_decode"].activations > 0
    decode_only = dataclasses.replace(pred, phases={"video_decode": pred.phases["video_decode"]})
    assert any("--video-decoder conv" in line for line in advice(decode_only, 1))
    # inspect names the decoder and --verify loads it through its own loader (the load-time rewrites)
    from mlx_ltx.inspect import main as inspect_main

    assert inspect_main([str(folder), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "decoder diffusion" in out and "diffusion decoder: stages" in out and "vae_decoder        loads" in out


def test_crf_is_the_video_vae_files(fixture_set_25):
    g, _ = e2e(fixture_set_25)
    assert make_pipeline(fixture_set_25, "dev").kind.image_crf == int(g["crf.value"][0])


@pytest.mark.parametrize("name", E2E)
def test_pipeline_matches_reference_pipeline_class_25(fixture_set_25, name):
    g, meta = e2e(fixture_set_25)
    errors = whole_pipeline_errors(fixture_set_25, name, make_pipeline(fixture_set_25, name), g, meta)
    assert max(errors.values()) <= TOL_LOOP, errors


def test_prompt_contexts_match_reference_25(fixture_set_25):
    g, meta = e2e(fixture_set_25)
    ctx = make_pipeline(fixture_set_25, "dev").encode_prompts(meta["prompt"], meta["negative_prompt"])
    for i, (video, audio) in enumerate(((ctx.video, ctx.audio), (ctx.video_negative, ctx.audio_negative))):
        assert rel_err(video, g[f"dev.ctx{i}.video"]) <= TOL_F32
        assert rel_err(audio, g[f"dev.ctx{i}.audio"]) <= TOL_F32


@pytest.mark.parametrize("name", E2E)
def test_stage_outputs_match_reference_25(fixture_set_25, name):
    """Each stage from the reference's contexts (the ancestral draws too): where a difference starts.
    A diagnostic of the whole-pipeline test above, which runs on every set: on the plumbing set only."""
    if fixture_set_25.path != plumbing_set().path:
        pytest.skip("stage diagnostics run on the plumbing set; the whole pipeline is compared on every set")
    g, meta = e2e(fixture_set_25)
    errors = stage_output_errors(fixture_set_25, name, make_pipeline(fixture_set_25, name), g, meta)
    assert max(errors.values()) <= TOL_LOOP, errors


def test_auto_duration_end_to_end(fixture_set_25):
    """num_frames omitted: the prompt is encoded, the duration head predicts the length, snapped as
    the reference's ``resolve_num_frames`` (golden_duration ``out.num_frames`` for this prompt)."""
    fs = fixture_set_25
    g, meta = e2e(fs)
    d = fs.golden("duration")
    pipe = make_pipeline(fs, "distilled")
    fps = float(d["in.frame_rate"][0])
    events = []
    result = pipe.generate(fs.manifest["gemma"]["prompts"][0], height=meta["height"], width=meta["width"], fps=fps,
                           seed=3, audio=False, events=events.append,
                           auto_duration=tuple(fs.manifest["duration"]["auto_duration"]))
    assert result.frames.shape[0] == int(d["out.num_frames"][0])
    settings = next(e.settings for e in events if e.kind == "settings")
    assert settings.num_frames == result.frames.shape[0]
    assert abs(settings.predicted_seconds - float(d["out.seconds"][0])) <= 1e-4 * float(d["out.seconds"][0])
    phases = [e.phase for e in events if e.kind == "start"]
    assert phases.index("prompt") < phases.index("duration") < phases.index("stage1")
    with pytest.raises(ValueError, match="either num_frames or auto_duration"):
        pipe.generate("x", num_frames=9, auto_duration=(1, 2))
    with pytest.raises(ValueError, match="MIN_SECONDS .* must be <= MAX_SECONDS"):
        pipe.generate("x", auto_duration=(5, 2))


def test_streamed_split_model_matches_eager():
    """The transformer streamed block by block from the split transformer file (the distilled LoRA
    fused per block in stage 2) gives the eager run's latents bit for bit."""
    fs = plumbing_set()
    g, meta = e2e(fs)
    name = "dev-two-stage"
    latents = []
    for memory in ("eager", "stream"):
        pipe = make_pipeline(fs, name)
        pipe.memory = memory
        draws = ReferenceDraws(g, name)
        r = pipe.generate(meta["prompt"], noise=draws, sde_noise=draws.sde, **request(fs, name, meta))
        latents.append((np.array(r.video_latent), np.array(r.audio_latent)))
    assert all(np.array_equal(a, b) for a, b in zip(*latents))


def test_cli_on_the_split_folder(tmp_path, capsys):
    """``python -m mlx_ltx.generate --model <split folder>`` with the length predicted: the printed
    settings say so, the mp4 has the predicted frame count."""
    import imageio_ffmpeg

    from mlx_ltx.generate import main as cli_main

    fs = plumbing_set()
    meta = fs.manifest["e2e"]
    out = tmp_path / "clip.mp4"
    assert cli_main(["--model", str(fs.path), "--prompt", meta["prompt"], "--height", str(meta["height"]),
                     "--width", str(meta["width"]), "--auto-duration", "1", "2", "--output", str(out),
                     "--video-decoder", "conv"]) == 0
    err = capsys.readouterr().err
    assert "duration  predicted" in err
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert frames == int(fs.golden("duration")["out.num_frames"][0])
    assert cli_main(["--model", str(fs.path), "--prompt", "x", "--num-frames", "9", "--auto-duration", "1", "2",
                     "--output", str(tmp_path / "b.mp4")]) == 2
    assert "either --num-frames or --auto-duration" in capsys.readouterr().err
