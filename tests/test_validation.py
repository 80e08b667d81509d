"""Bad requests are refused in one validation pass before any model loads, with an error naming
the CLI flag (``python -m mlx_ltx.generate``) or the argument (``Pipeline.generate``), and
nothing is written: the output stays absent, or byte-identical when it existed. The CLI turns
anticipated errors into one line on stderr and a non-zero exit code.

Every error case runs with the model loaders replaced by ones that fail the test."""

import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from test_generate import FS, setup, tiny_size  # noqa: F401  (setup: the module fixture)

from mlx_ltx import media
from mlx_ltx.conditioning import ImageConditioningInput
from mlx_ltx.generate import main as cli_main
from mlx_ltx.guidance import MultiModalGuiderParams
from mlx_ltx.loading import CheckpointError
from mlx_ltx.pipelines import SEED_MODULUS, Pipeline

LAST = FS.checkpoint.config.transformer.num_layers - 1
F2, H2, W2 = tiny_size(True)   # distilled / two-stage sizes
F1, H1, W1 = tiny_size(False)  # one-stage sizes


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test (AssertionError is not one of the CLI's mapped errors)."""
    from mlx_ltx.models import text_encoder, transformer, upsampler, video_vae

    def fail(*a, **k):
        raise AssertionError("a model was loaded before the request was validated")

    for owner, name in ((Pipeline, "text_encoder"), (Pipeline, "transformer"), (Pipeline, "video_encoder"),
                        (Pipeline, "encode_prompts"), (Pipeline, "upsample"),
                        (transformer.LTXModel, "from_checkpoint"), (text_encoder.TextEncoder, "__init__"),
                        (upsampler.LatentUpsampler, "from_file"), (video_vae.VideoEncoder, "from_checkpoint")):
        monkeypatch.setattr(owner, name, fail)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def files(setup, tmp_path_factory):  # noqa: F811
    """A non-image, a distilled-converted copy of the dev folder, the other upsamplers."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "notimage.png").write_bytes(b"this is not a PNG file at all")
    (root / "truncated.png").write_bytes((Path(setup["root"]) / "first.png").read_bytes()[:60])
    distilled = root / "converted-distilled"
    shutil.copytree(setup["converted"], distilled, symlinks=True)
    info = json.loads((distilled / "config.json").read_text())
    (distilled / "config.json").write_text(json.dumps({**info, "variant": "distilled"}))
    ups = FS.manifest["upsamplers"]  # a 19B set has no x1.5 upsampler (the 19B release has none)
    other = {k: str(FS.upsampler_path(n)) if n in ups else None for k, n in (("x1.5", "spatial-x1.5"),
                                                                           ("temporal", "temporal-x2"))}
    return {"root": root, "distilled": str(distilled), **other, "first": str(Path(setup["root"]) / "first.png")}


def _cli_cases():
    """(id, extra argv, expected substrings); ``{X}`` placeholders are filled per test."""
    dev = ["--pipeline", "dev", "--height", str(H1), "--width", str(W1), "--num-inference-steps", "2"]
    stg = ["--video-stg-blocks", str(LAST), "--audio-stg-blocks", str(LAST)]
    return [
        ("height-0", ["--height", "0"], ["--height must be a positive integer", "got 0"]),
        ("width-0", ["--width", "0"], ["--width must be a positive integer", "got 0"]),
        ("num-frames-0", ["--num-frames", "0"], ["--num-frames must be a positive integer", "got 0"]),
        ("fps-0", ["--fps", "0"], ["--fps must be a positive number", "got 0"]),
        ("height-negative", ["--height", "-128"], ["--height must be a positive integer", "-128"]),
        ("num-frames-negative", ["--num-frames", "-7"], ["--num-frames must be a positive integer", "-7"]),
        ("fps-negative", ["--frame-rate", "-24"], ["--frame-rate/--fps must be a positive number", "-24"]),
        ("fps-nan", ["--fps", "nan"], ["--fps must be a positive number", "nan"]),
        ("fps-inf", ["--fps", "inf"], ["--fps must be a positive number", "inf"]),
        ("num-frames-absurd", ["--num-frames", "800001", "--height", "1024", "--width", "1536"],
         ["--num-frames=800001", "beyond this device's memory", "frames fit at this size"]),
        ("size-absurd", ["--height", str(2**20), "--width", str(2**20)],
         ["--height x --width", "even for one frame"]),
        ("prompt-empty", ["--prompt", ""], ["--prompt is empty"]),
        ("prompt-spaces", ["--prompt", "  \t "], ["--prompt is empty"]),
        ("video-cfg-nan", [*dev, *stg, "--video-cfg-guidance-scale", "nan"],
         ["--video-cfg-guidance-scale must be a finite number", "nan"]),
        ("audio-stg-scale-inf", [*dev, *stg, "--audio-stg-guidance-scale", "inf"],
         ["--audio-stg-guidance-scale must be a finite number", "inf"]),
        ("v2a-nan", [*dev, *stg, "--v2a-guidance-scale", "nan"], ["--v2a-guidance-scale must be a finite number"]),
        ("video-rescale-neg-inf", [*dev, *stg, "--video-rescale-scale=-inf"],
         ["--video-rescale-scale must be a finite number", "-inf"]),
        ("video-skip-step-negative", [*dev, *stg, "--video-skip-step", "-1"],
         ["--video-skip-step must be a non-negative integer"]),
        ("stg-default-too-deep", dev, ["--video-stg-blocks", "(the default)", f"has {LAST + 1} blocks"]),
        ("audio-stg-too-deep", [*dev, "--video-stg-blocks", str(LAST), "--audio-stg-blocks", "99"],
         ["--audio-stg-blocks", "[99]", f"0..{LAST}"]),
        ("steps-1", [*dev[:-1], "1", *stg], ["--num-inference-steps must be at least 2", "got 1"]),
        ("image-not-an-image", ["--image", "{notimage}", "0", "1.0"],
         ["--image: conditioning image {notimage}", "cannot be decoded"]),
        ("image-truncated", ["--image", "{truncated}", "0", "1.0"],
         ["--image: conditioning image {truncated}", "cannot be decoded"]),
        ("image-missing", ["--image", "{missing_png}", "0", "1.0"],
         ["--image: conditioning image not found", "{missing_png}"]),
        ("image-crf-52", ["--image", "{first}", "0", "1.0", "52"], ["--image {first}: CRF 52", "0..51"]),
        ("image-crf-negative", ["--image", "{first}", "0", "1.0", "-1"], ["--image {first}: CRF -1", "0..51"]),
        ("output-not-mp4", ["--output", "{out_mov}"], ["--output must end in .mp4", "{out_mov}"]),
        ("output-dot", ["--output", "."], ["--output must end in .mp4", "'.'"]),
        ("output-is-folder", ["--output", "{dir_mp4}"], ["--output", "{dir_mp4}", "is a folder"]),
        ("output-folder-missing", ["--output", "{missing_dir_mp4}"], ["--output", "does not exist"]),
        ("output-exists", ["--output", "{existing_mp4}"], ["--output", "already exists", "--overwrite"]),
        ("wav-exists", ["--wav", "{existing_wav}"], ["--wav", "already exists", "--overwrite"]),
        ("wav-not-wav", ["--wav", "{out_mp3}"], ["--wav must end in .wav"]),
        ("distilled-on-dev-folder", ["--model", "{converted}", "--pipeline", "distilled"],
         ["--pipeline", "needs a distilled checkpoint", "--variant dev"]),
        ("dev-on-distilled-folder", ["--model", "{distilled}", "--pipeline", "dev-two-stage"],
         ["--pipeline", "needs a dev checkpoint", "--variant distilled"]),
        ("upsampler-x1.5", ["--upsampler", "{x1.5}"], ["--upsampler", "{x1.5}", "spatial x1.5 upsampler"]),
        ("upsampler-temporal", ["--upsampler", "{temporal}"], ["--upsampler", "{temporal}", "temporal upsampler"]),
        ("upsampler-not-upsampler", ["--upsampler", "{model}"], ["--upsampler", "is not a latent upsampler"]),
        ("model-missing", ["--model", "{missing_model}"], ["model not found", "{missing_model}"]),
    ]


@pytest.mark.parametrize("extra,expected", [c[1:] for c in _cli_cases()], ids=[c[0] for c in _cli_cases()])
def test_cli_refuses_before_loading(setup, files, tmp_path, capsys, no_loading, extra, expected):  # noqa: F811
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "existing.mp4").write_bytes(b"an earlier clip")
    (tmp_path / "existing.wav").write_bytes(b"an earlier sound")
    slots = {"notimage": str(files["root"] / "notimage.png"), "truncated": str(files["root"] / "truncated.png"),
             "missing_png": str(tmp_path / "missing.png"), "first": files["first"],
             "out_mov": str(tmp_path / "o.mov"), "dir_mp4": str(tmp_path / "dir.mp4"),
             "missing_dir_mp4": str(tmp_path / "nope" / "o.mp4"), "existing_mp4": str(tmp_path / "existing.mp4"),
             "existing_wav": str(tmp_path / "existing.wav"), "out_mp3": str(tmp_path / "o.mp3"),
             "converted": setup["converted"], "distilled": files["distilled"], "x1.5": files["x1.5"],
             "temporal": files["temporal"], "model": setup["model"],
             "missing_model": str(tmp_path / "none.safetensors")}
    missing = [k for k, v in slots.items() if v is None and any("{" + k + "}" in a for a in extra)]
    if missing:
        pytest.skip(f"{FS.path.name} has no {', '.join(missing)} upsampler")
    fill = lambda s: _fill(s, slots)  # noqa: E731
    base = ["--model", setup["model"], "--gemma", setup["gemma"], "--upsampler", setup["upsampler"],
            "--prompt", "a fox", "--output", str(tmp_path / "o.mp4"), "--num-frames", str(F2),
            "--height", str(H2), "--width", str(W2)]
    before = _snapshot(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # "--output ." names this folder
    try:
        code = cli_main([*base, *map(fill, extra)])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for e in expected:
        assert fill(e) in err, err
    assert _snapshot(tmp_path) == before  # nothing written, existing files byte-identical
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.mp4", "existing.mp4", "existing.wav"]


def _fill(s: str, slots: dict) -> str:
    for k, v in slots.items():
        if v is not None:
            s = s.replace("{" + k + "}", v)
    return s


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_cli_refuses_unwritable_folder(setup, tmp_path, capsys, no_loading):  # noqa: F811
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code = cli_main(["--model", setup["model"], "--gemma", setup["gemma"], "--upsampler", setup["upsampler"],
                         "--prompt", "x", "--output", str(ro / "o.mp4")])
    finally:
        ro.chmod(0o700)
    assert code == 2 and "is not writable" in capsys.readouterr().err
    assert not list(ro.iterdir())


def _api_cases():
    nan, inf = float("nan"), float("inf")
    return [
        ("height-0", {"height": 0}, "height must be a positive integer; got 0"),
        ("width-negative", {"width": -32}, "width must be a positive integer; got -32"),
        ("num-frames-0", {"num_frames": 0}, "num_frames must be a positive integer; got 0"),
        ("num-frames-float", {"num_frames": 9.0}, "num_frames must be a positive integer; got 9.0"),
        ("fps-0", {"fps": 0}, "fps must be a positive number; got 0"),
        ("fps-nan", {"fps": nan}, "fps must be a positive number; got nan"),
        ("num-frames-absurd", {"num_frames": 800001, "height": 1024, "width": 1536}, "num_frames=800001"),
        ("prompt-spaces", {"prompt": "   "}, "prompt is empty"),
        ("seed-float", {"seed": 1.5}, "seed must be an integer; got 1.5"),
        ("cfg-nan", {"video_guider_params": MultiModalGuiderParams(cfg_scale=nan)},
         "video_guider_params.cfg_scale must be a finite number"),
        ("modality-inf", {"audio_guider_params": MultiModalGuiderParams(modality_scale=inf)},
         "audio_guider_params.modality_scale must be a finite number"),
        ("stg-default", {}, "video_guider_params.stg_blocks: STG block(s)"),
        ("stg-too-deep", {"video_guider_params": MultiModalGuiderParams(stg_scale=1.0, stg_blocks=(LAST + 1,))},
         f"video_guider_params.stg_blocks: STG block(s) [{LAST + 1}] do not exist"),
        ("crf-60", {"images": "crf"}, "images[0] ("),
        ("not-an-image", {"images": "notimage"}, "images[0]: conditioning image"),
        ("output-exists", {"output_path": "existing"}, "already exists; pass overwrite=True"),
        ("output-folder", {"output_path": "folder"}, "output_path"),
        ("crf-threads-0", {"crf_threads": 0}, "crf_threads must be at least 1"),
    ]


@pytest.mark.parametrize("kwargs,expected", [c[1:] for c in _api_cases()], ids=[c[0] for c in _api_cases()])
def test_api_refuses_before_loading(setup, files, tmp_path, no_loading, kwargs, expected):  # noqa: F811
    p = Pipeline.from_pretrained(setup["model"], "dev", gemma=setup["gemma"], dtype=mx.float32)
    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"an earlier clip")
    kwargs = dict(kwargs)
    if kwargs.get("images") == "crf":
        kwargs["images"] = [ImageConditioningInput(files["first"], 0, 1.0, 60)]
    elif kwargs.get("images") == "notimage":
        kwargs["images"] = [ImageConditioningInput(str(files["root"] / "notimage.png"), 0, 1.0)]
    kwargs["output_path"] = {"existing": existing, "folder": tmp_path, None: tmp_path / "o.mp4"}[
        kwargs.get("output_path")]
    if "video_guider_params" not in kwargs and expected != "video_guider_params.stg_blocks: STG block(s)":
        kwargs["video_guider_params"] = MultiModalGuiderParams(stg_scale=1.0, stg_blocks=(LAST,))
    kwargs.setdefault("audio_guider_params", MultiModalGuiderParams(stg_scale=1.0, stg_blocks=(LAST,)))
    prompt = kwargs.pop("prompt", "a fox")
    sizes = {"height": H1, "width": W1, "num_frames": F1, "num_inference_steps": 2}
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError) as e:
        p.generate(prompt, **{**sizes, **kwargs})
    assert expected in str(e.value)
    assert "--" not in str(e.value).replace("--overwrite", "")  # the API names arguments, not flags
    assert _snapshot(tmp_path) == before


def test_api_pipeline_and_upsampler_mismatch(setup, files, no_loading):  # noqa: F811
    with pytest.raises(ValueError, match="pipeline 'distilled' .*--pipeline.*--variant dev"):
        Pipeline.from_pretrained(setup["converted"], "distilled")
    with pytest.raises(ValueError, match="pipeline 'dev' .*--variant distilled"):
        Pipeline.from_pretrained(files["distilled"], "dev")
    Pipeline.from_pretrained(files["distilled"], "distilled")  # the matching pipeline opens
    kind, wrong = next(((k, files[k]) for k in ("x1.5", "temporal") if files[k]), (None, None))
    if wrong is None:
        pytest.skip(f"{FS.path.name} has no upsampler other than the spatial x2 one")
    with pytest.raises(ValueError, match=f"upsampler {wrong} .*{'spatial x1.5' if kind == 'x1.5' else 'temporal'}"):
        Pipeline.from_pretrained(setup["model"], "distilled", gemma=setup["gemma"], upsampler=wrong)
    # a one-stage pipeline does not use the upsampler
    Pipeline.from_pretrained(setup["model"], "dev", gemma=setup["gemma"], upsampler=wrong)


@pytest.mark.parametrize("seed,used", [(-1, SEED_MODULUS - 1), (2**64 + 5, 5), (2**32, 2**32), (7, 7)])
def test_any_int_seed_is_used_mod_2_64(setup, tmp_path, monkeypatch, seed, used):  # noqa: F811
    p = Pipeline.from_pretrained(setup["model"], "distilled", gemma=setup["gemma"], upsampler=setup["upsampler"])
    seen = []

    class Stop(Exception):
        pass

    def encode_prompts(self, prompt, negative_prompt=None, enhance_prompt=False, seed=42):
        seen.append(seed)
        raise Stop

    monkeypatch.setattr(Pipeline, "encode_prompts", encode_prompts)
    with pytest.raises(Stop):
        p.generate("a fox", height=H2, width=W2, num_frames=F2, seed=seed)
    assert seen == [used]


def test_cli_negative_seed_and_overwrite(setup, tmp_path, capsys):  # noqa: F811
    """``--seed -1`` generates (the same clip as seed 2**64 - 1); ``--overwrite`` replaces a file."""
    out = tmp_path / "o.mp4"
    out.write_bytes(b"old")
    argv = ["--model", setup["model"], "--gemma", setup["gemma"], "--upsampler", setup["upsampler"],
            "--prompt", "a fox", "--output", str(out), "--num-frames", str(F2), "--height", str(H2),
            "--width", str(W2), "--seed", "-1", "--no-audio", "--dtype", "float32"]
    assert cli_main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"old"
    assert cli_main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    assert out.read_bytes() != b"old" and out.stat().st_size > 0
    p = Pipeline.from_pretrained(setup["model"], "distilled", gemma=setup["gemma"], upsampler=setup["upsampler"],
                                 dtype=mx.float32)
    a = p.generate("a fox", height=H2, width=W2, num_frames=F2, seed=-1, audio=False)
    b = p.generate("a fox", height=H2, width=W2, num_frames=F2, seed=SEED_MODULUS - 1, audio=False)
    assert np.array_equal(a.frames, b.frames)


@pytest.mark.parametrize("error,code,message", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (media.FFmpegError("ffmpeg failed (exit code 1) writing o.mp4:\nEncoder not found"), 1,
     "error: ffmpeg failed (exit code 1) writing o.mp4: | Encoder not found"),
    (PermissionError(13, "Permission denied", "o.mp4"), 2, "Permission denied"),
    (CheckpointError("x.safetensors: not a safetensors file"), 2, "error: x.safetensors: not a safetensors file"),
    (RuntimeError("[metal] out of memory"), 1, "error: [metal] out of memory"),
], ids=["interrupt", "ffmpeg", "oserror", "checkpoint", "runtime"])
def test_cli_maps_errors_to_one_line(setup, tmp_path, capsys, monkeypatch, error, code, message):  # noqa: F811
    def generate(self, *a, **k):
        raise error

    monkeypatch.setattr(Pipeline, "generate", generate)
    rc = cli_main(["--model", setup["model"], "--gemma", setup["gemma"], "--upsampler", setup["upsampler"],
                   "--prompt", "x", "--output", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert rc == code and err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())
