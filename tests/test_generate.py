"""End to end on the fixture set's tiny checkpoint: every pipeline writes an mp4 with the right
frame count, size and an audio stream lasting the video's duration; first- and last-frame
images; the distilled LoRA really fused per stage; models released in low-memory mode; input
errors that say what to change; ``python -m mlx_ltx.generate`` once in a subprocess.
These check the plumbing, not the numbers (test_pipelines.py checks the stages' numbers)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image
from reference_data import FixtureSet, fixture_dirs
from test_media import _decode_audio, _ffmpeg_info, _read_frames

from mlx_ltx.conditioning import ImageConditioningInput
from mlx_ltx.convert import convert
from mlx_ltx.generate import main as cli_main
from mlx_ltx.loading import Checkpoint
from mlx_ltx.models.lora import active_loras
from mlx_ltx.pipeline_stages import PIPELINES
from mlx_ltx.pipelines import Pipeline

ASSETS = Path(__file__).parent / "assets"
REPO = Path(__file__).parent.parent
FS = FixtureSet(fixture_dirs()[0])  # one set: this is plumbing, the first (tiny) is the cheapest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Model folder-like setup: the checkpoint, its x2 upsampler, a distilled LoRA, and Gemma with
    its tokenizer in one folder."""
    root = tmp_path_factory.mktemp("model")
    gemma = root / "gemma"
    shutil.copytree(FS.path / FS.manifest["gemma_dir"], gemma)
    for f in (ASSETS / "tiny_tokenizer").iterdir():
        shutil.copy(f, gemma / f.name)
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = (200, 30, 30)
    Image.fromarray(img).save(root / "first.png")
    Image.fromarray(img[:, ::-1]).save(root / "last.png")
    return {"model": str(FS.checkpoint_path), "gemma": str(gemma), "upsampler": str(FS.upsampler_path("spatial-x2")),
            "lora": str(FS.path / FS.manifest["loras"]["test"]), "root": root, "converted": _converted(root, gemma)}


def _converted(root: Path, gemma: Path) -> str:
    """A convert.py folder holding the upsampler, the LoRA (as the distilled one) and Gemma."""
    release = root / "release"
    release.mkdir()
    name = "ltx-2.3-22b-dev.safetensors" if FS.checkpoint.metadata.get("model_version") else "ltx-2-19b-dev.safetensors"
    os.symlink(FS.checkpoint_path, release / name)
    os.symlink(FS.upsampler_path("spatial-x2"), release / "ltx-2.3-spatial-upscaler-x2-1.1.safetensors")
    os.symlink(FS.path / FS.manifest["loras"]["test"], release / "ltx-2.3-22b-distilled-lora-384.safetensors")
    out = convert(str(release), "dev", str(root / "converted"), upsamplers=["x2"], loras=["distilled"],
                  dtype="float32", progress=lambda m: None)
    # convert.py's --text-encoder runs mlx-lm's converter; the tiny Gemma is copied in its place
    shutil.copytree(gemma, Path(out) / "text_encoder")
    info = json.loads((Path(out) / "config.json").read_text())
    (Path(out) / "config.json").write_text(json.dumps({**info, "text_encoder": "text_encoder"}))
    return out


def tiny_size(two_stage: bool) -> tuple[int, int, int]:
    """2 latent frames and 2x2 latents per stage."""
    t, sh, sw = FS.checkpoint.config.vae.scale_factors
    k = 2 if two_stage else 1
    return t + 1, 2 * sh * k, 2 * sw * k


def guider_kwargs(p: Pipeline) -> dict:
    """The tiny transformer has no block 28: STG on its last block."""
    last = FS.checkpoint.config.transformer.num_layers - 1
    return {f"{s}_guider_params": dataclasses.replace(getattr(p.params, f"{s}_guider_params"), stg_blocks=(last,))
            for s in ("video", "audio")}


def check_mp4(path, frames, height, width, fps):
    _meta, decoded = _read_frames(path)
    assert decoded.shape == (frames, height, width, 3)
    info = _ffmpeg_info(path)
    assert "Audio: aac" in info
    samples = _decode_audio(path)
    rate = int(info.split(" Hz")[0].rsplit(" ", 1)[-1])
    # AAC works in 1024-sample frames; the written waveform is exactly frames / fps long
    assert abs(samples.shape[0] / rate - frames / fps) <= 1024 / rate


@pytest.mark.parametrize("name", ["distilled", "dev", "dev-two-stage", "dev-two-stage-hq"])
def test_generate_each_pipeline(setup, tmp_path, name):
    if name.startswith("dev-two-stage"):  # text encoder, upsampler and LoRA found in the converted folder
        p = Pipeline.from_pretrained(setup["converted"], name, dtype=mx.float32, low_memory=name.endswith("hq"))
        lora_path = os.path.join(setup["converted"], "lora-distilled.safetensors")
    else:
        p = Pipeline.from_pretrained(setup["model"], name, gemma=setup["gemma"], upsampler=setup["upsampler"],
                                     dtype=mx.float32, low_memory=name == "distilled")
        lora_path = None
    assert p.distilled_lora_path == lora_path
    frames, h, w = tiny_size(p.spec.two_stage)
    loaded_with_text_encoder = []
    load = p.transformer

    def transformer():
        loaded_with_text_encoder.append(p._text_encoder is not None)
        return load()

    p.transformer = transformer
    steps = None if name == "distilled" else 2
    kwargs = guider_kwargs(p) if p.spec.guided else {}
    out = tmp_path / "out.mp4"
    steps_seen = []
    r = p.generate("a red fox in the snow", height=h, width=w, num_frames=frames, fps=24, seed=3,
                   num_inference_steps=steps, output_path=out, progress=lambda *a: steps_seen.append(a), **kwargs)
    expected = {"distilled": [8, 3], "dev": [2], "dev-two-stage": [2, 3], "dev-two-stage-hq": [2, 3]}[name]
    assert steps_seen == [(k, i, n) for k, n in enumerate(expected) for i in range(1, n + 1)]
    assert r.path == out and r.frames.shape == (frames, h, w, 3)
    assert r.audio.shape == (2, round(frames * r.sample_rate / 24))
    check_mp4(out, frames, h, w, 24)
    if p.low_memory:  # Gemma gone before the transformer came; everything released after the generation
        assert loaded_with_text_encoder and not any(loaded_with_text_encoder)
        assert p._transformer is None and p._text_encoder is None and p._upsampler is None
    else:  # the last stage's LoRA strength is still fused on the kept model
        last = p.spec.stages[-1].distilled_lora
        assert active_loras(p._transformer) == (((lora_path, last),) if last is not None else ())
        # the same seed again (models kept loaded, LoRA switched back and forth) gives the same video
        again = p.generate("a red fox in the snow", height=h, width=w, num_frames=frames, fps=24, seed=3,
                           num_inference_steps=steps, **kwargs)
        assert np.array_equal(again.frames, r.frames)


def test_first_and_last_frame_images(setup, tmp_path):
    """In bfloat16, the default."""
    p = Pipeline.from_pretrained(setup["model"], "distilled", gemma=setup["gemma"], upsampler=setup["upsampler"])
    frames, h, w = tiny_size(True)
    images = [ImageConditioningInput(str(setup["root"] / "first.png"), 0, 1.0),
              ImageConditioningInput(str(setup["root"] / "last.png"), frames - 1, 1.0)]
    r = p.generate("a fox", height=h, width=w, num_frames=frames, fps=24, seed=1, images=images,
                   output_path=tmp_path / "img.mp4", audio=True, wav_path=tmp_path / "img.wav")
    _, sh, sw = FS.checkpoint.config.vae.scale_factors
    assert r.video_latent.shape[2:] == (2, h // sh, w // sw)
    check_mp4(r.path, frames, h, w, 24)
    assert (tmp_path / "img.wav").is_file()
    plain = p.generate("a fox", height=h, width=w, num_frames=frames, fps=24, seed=1, audio=False)
    assert plain.audio is None and not np.array_equal(plain.frames, r.frames)


def test_input_errors(setup):
    p = Pipeline.from_pretrained(setup["model"], "distilled", gemma=setup["gemma"], upsampler=setup["upsampler"],
                                 dtype=mx.float32)
    t, sh, _ = FS.checkpoint.config.vae.scale_factors
    frames, h, w = tiny_size(True)
    with pytest.raises(ValueError, match=f"multiple of {2 * sh}.*half size"):
        p.check_request(frames, h + sh, w, 24, [], None)
    with pytest.raises(ValueError, match=f"{t}k\\+1.*{frames} or {frames + t} would work"):
        p.check_request(frames + 1, h, w, 24, [], None)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        p.check_request(frames, h, w, 24, [ImageConditioningInput("nope.png", 0, 1.0)], None)
    with pytest.raises(ValueError, match=f"frame index {frames} is outside.*0..{frames - 1}"):
        p.check_request(frames, h, w, 24, [ImageConditioningInput(str(setup["root"] / "first.png"), frames, 1.0)],
                        None)
    with pytest.raises(ValueError, match="enhancement with conditioning images"):
        p.generate("x", height=h, width=w, num_frames=frames, enhance_prompt=True,
                   images=[ImageConditioningInput(str(setup["root"] / "first.png"), 0, 1.0)])
    with pytest.raises(ValueError, match="fixed sigma schedules"):
        p.check_request(frames, h, w, 24, [], 4)
    one = Pipeline.from_pretrained(setup["model"], "dev", gemma=setup["gemma"], dtype=mx.float32)
    one.check_request(frames, h // 2 + sh, w, 24, [], 4)  # one stage: multiples of the VAE's factor suffice
    with pytest.raises(ValueError, match="needs the distilled LoRA"):
        Pipeline.from_pretrained(setup["model"], "dev-two-stage", gemma=setup["gemma"], upsampler=setup["upsampler"])
    with pytest.raises(ValueError, match="needs the spatial x2 upsampler"):
        Pipeline.from_pretrained(setup["model"], "distilled", gemma=setup["gemma"])
    # from 2.5 the distilled stage 1 is ancestral Euler (the version is the transformer file's)
    ckpt = Checkpoint(setup["model"])
    ckpt.metadata = {**ckpt.metadata, "model_version": "2.5.0"}
    steppers = [s.stepper.name for s in Pipeline(PIPELINES["distilled"], ckpt, setup["gemma"],
                                                 setup["upsampler"]).spec.stages]
    assert steppers == ["EULER_ANCESTRAL", "EULER"]
    assert [s.stepper.name for s in Pipeline(PIPELINES["distilled"], Checkpoint(setup["model"]), setup["gemma"],
                                             setup["upsampler"]).spec.stages] == ["EULER", "EULER"]
    with pytest.raises(ValueError, match="unknown pipeline"):
        Pipeline.from_pretrained(setup["model"], "keyframes", gemma=setup["gemma"])


def test_cli_errors(setup, tmp_path, capsys):
    base = ["--model", setup["model"], "--gemma", setup["gemma"], "--upsampler", setup["upsampler"],
            "--prompt", "x", "--output", str(tmp_path / "o.mp4"), "--num-frames", "9"]
    assert cli_main([*base, "--height", "100", "--width", "128"]) == 2
    assert "height must be a multiple of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([*base, "--image", "a.png", "0"])
    assert "PATH FRAME_IDX STRENGTH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([*base, "--negative-prompt", "bad"])
    assert "has no guidance" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([*base, "--image-crf-threads", "0"])
    assert "--image-crf-threads must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_cli_subprocess(setup, tmp_path):
    frames, h, w = tiny_size(False)
    last = FS.checkpoint.config.transformer.num_layers - 1
    out, wav = tmp_path / "cli.mp4", tmp_path / "cli.wav"
    cmd = [sys.executable, "-m", "mlx_ltx.generate", "--model", setup["model"], "--pipeline", "dev",
           "--gemma", setup["gemma"], "--prompt", "a fox", "--height", str(h), "--width", str(w),
           "--num-frames", str(frames), "--frame-rate", "24", "--seed", "5", "--num-inference-steps", "2",
           "--video-stg-blocks", str(last), "--audio-stg-blocks", str(last), "--dtype", "float32",
           "--image", str(setup["root"] / "first.png"), "0", "1.0", "--output", str(out), "--wav", str(wav)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote {out}" in proc.stdout
    check_mp4(out, frames, h, w, 24)
    assert wav.is_file()


def test_enhance_prompt_is_forwarded(setup, tmp_path):
    """``enhance_prompt`` has Gemma rewrite the positive prompt (seeded by the generation's seed)
    before encoding; the negative prompt is encoded as given."""
    from test_text_encoder import _CHAT_TEMPLATE

    gemma = tmp_path / "gemma"
    shutil.copytree(setup["gemma"], gemma)
    (gemma / "chat_template.jinja").write_text(_CHAT_TEMPLATE)
    p = Pipeline.from_pretrained(setup["model"], "dev", gemma=str(gemma), dtype=mx.float32, low_memory=False)
    ctx = p.encode_prompts("a fox", "ugly", enhance_prompt=True, seed=3)
    te = p.text_encoder()
    enhanced = te.enhance_prompt("a fox", seed=3)
    assert set(te._cache) == {enhanced, "ugly"}
    assert np.array_equal(np.array(ctx.video), np.array(te._cache[enhanced].video_encoding))
    assert np.array_equal(np.array(ctx.video_negative), np.array(te._cache["ugly"].video_encoding))
