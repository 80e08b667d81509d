"""samples/: every example script runs on the first fixture set's tiny checkpoint (in-process,
through its ``main(argv)``), with only the paths, sizes, frame count, step count and STG blocks
adapted, and writes a readable mp4 of the expected frames and size; cli_examples.sh's commands
are recorded through bash as written and run through ``python -m mlx_ltx.generate``'s main.
A script without a test here fails, so no sample can rot unnoticed."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reference_data import FixtureSet, fixture_dirs
from test_media import _read_frames

REPO = Path(__file__).parent.parent
SAMPLES = REPO / "samples"
FS = FixtureSet(fixture_dirs()[0])  # the first (tiny) set: this checks the samples' plumbing

T, SH, SW = FS.checkpoint.config.vae.scale_factors
HEIGHT, WIDTH, FRAMES = 2 * 2 * SH, 3 * 2 * SW, T + 1  # two-stage pipelines: stage 1 at half size
LAST_BLOCK = FS.checkpoint.config.transformer.num_layers - 1  # STG blocks must exist in the tiny model
SIZES = ["--height", str(HEIGHT), "--width", str(WIDTH), "--num-frames", str(FRAMES)]
GEMMA = str(FS.path / FS.manifest["gemma_dir"])
UPSAMPLER = str(FS.upsampler_path("spatial-x2"))
LORA = str(FS.path / FS.manifest["loras"]["test"])
MODEL = ["--model", str(FS.checkpoint_path), "--gemma", GEMMA, "--upsampler", UPSAMPLER]
PROMPT = FS.manifest["e2e"]["prompt"]


def load_sample(name: str):
    """samples/<name>.py as a module (not run as __main__)."""
    spec = importlib.util.spec_from_file_location(f"samples_{name}", SAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_sample(name: str, argv: list[str]) -> None:
    assert load_sample(name).main(argv) == 0


def check_mp4(path: Path, frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    _, pixels = _read_frames(path)
    assert pixels.shape == (frames, height, width, 3), (path, pixels.shape)


def make_image(path: Path, color: tuple[int, int, int], size=(60, 40)) -> str:
    Image.fromarray(np.full((size[1], size[0], 3), color, np.uint8)).save(path)
    return str(path)


# ------------------------------------------------------------------ coverage
def sample_scripts() -> list[str]:
    return sorted(p.stem for p in SAMPLES.glob("*.py"))


def test_every_sample_has_a_test_a_readme_entry_and_a_main():
    scripts = sample_scripts()
    assert scripts, "samples/ holds no script"
    untested = [name for name in scripts if f"test_{name}" not in globals()]
    assert not untested, f"samples without a test in tests/test_samples.py: {untested}"
    readme = (SAMPLES / "README.md").read_text()
    missing = [f for f in [*(f"{name}.py" for name in scripts), "cli_examples.sh"] if f not in readme]
    assert not missing, f"samples/README.md does not list {missing}"
    for name in scripts:
        module = load_sample(name)
        assert callable(getattr(module, "main", None)), f"samples/{name}.py has no main(argv)"
        with pytest.raises(SystemExit) as exit_info:  # argparse: --help works and exits 0
            module.main(["--help"])
        assert exit_info.value.code == 0


# ------------------------------------------------------------------ one test per script
def test_text_to_video(tmp_path, capsys):
    out = tmp_path / "fox.mp4"
    run_sample("text_to_video", [*MODEL, "--prompt", PROMPT, *SIZES, "--seed", "3", "--output", str(out)])
    check_mp4(out)
    assert f"{FRAMES} frames, {WIDTH}x{HEIGHT}" in capsys.readouterr().out


def test_first_last_frame(tmp_path):
    first = make_image(tmp_path / "first.png", (200, 30, 30))
    last = make_image(tmp_path / "last.png", (30, 30, 200))
    out = tmp_path / "first_last.mp4"
    run_sample("first_last_frame", [*MODEL, "--first", first, "--last", last, "--last-strength", "0.8",
                                    "--prompt", PROMPT, *SIZES, "--output", str(out)])
    check_mp4(out)


def test_keyframes(tmp_path, capsys):
    """Guided dev two-stage pipeline, with a keyframe counted from the end."""
    keys = [make_image(tmp_path / f"key{i}.png", c) for i, c in enumerate([(200, 30, 30), (30, 200, 30),
                                                                            (30, 30, 200)])]
    out = tmp_path / "keyframes.mp4"
    middle = FRAMES // 2
    run_sample("keyframes", [*MODEL, "--distilled-lora", LORA, "--pipeline", "dev-two-stage",
                             "--keyframe", keys[0], "0", "--keyframe", keys[1], str(middle), "0.7",
                             "--keyframe", keys[2], "-1", "--steps", "2", "--stg-blocks", str(LAST_BLOCK),
                             "--prompt", PROMPT, *SIZES, "--output", str(out)])
    check_mp4(out)
    assert f"keyframes at 0, {middle}, {FRAMES - 1}" in capsys.readouterr().out


def test_keyframes_refuses_a_malformed_keyframe(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_sample("keyframes").main([*MODEL, "--keyframe", "a.png", "last", "--prompt", "x", "--output", "x.mp4"])
    assert exit_info.value.code == 2 and "FRAME is an integer" in capsys.readouterr().err


def test_two_stage_custom_guidance(tmp_path, capsys):
    out = tmp_path / "guided.mp4"
    run_sample("two_stage_custom_guidance", [
        *MODEL, "--distilled-lora", LORA, "--prompt", PROMPT, "--negative-prompt", "blurry", *SIZES,
        "--steps", "2", "--video-cfg", "4.0", "--audio-cfg", "6.0", "--stg-scale", "0.5",
        "--stg-blocks", str(LAST_BLOCK), "--rescale", "0.5", "--modality-scale", "2.0", "--skip-step", "1",
        "--output", str(out)])
    check_mp4(out)
    printed = capsys.readouterr().out
    assert f"cfg_scale=4.0, stg_scale=0.5, stg_blocks=({LAST_BLOCK},), rescale_scale=0.5" in printed
    assert "cfg_scale=6.0" in printed


def test_batch_prompts(tmp_path, monkeypatch, capsys):
    """One mp4 per prompt; the transformer is loaded once for the whole batch (low_memory=False)."""
    from mlx_ltx.models.transformer import LTXModel

    loads = []
    original = LTXModel.from_checkpoint.__func__

    def counting(cls, *args, **kwargs):
        loads.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(LTXModel, "from_checkpoint", classmethod(counting))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two clips\nA red fox trots through fresh snow\n\nWaves crash on black rocks!\n")
    out = tmp_path / "clips"
    argv = [*MODEL, "--prompts", str(prompts), *SIZES, "--seed", "5", "--output", str(out)]
    run_sample("batch_prompts", argv)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000-a-red-fox-trots-through-fresh.mp4", "001-waves-crash-on-black-rocks.mp4"]
    for name in names:
        check_mp4(out / name)
    assert len(loads) == 1
    assert "seed 5" in capsys.readouterr().out
    # a second run refuses before generating anything, unless --overwrite
    with pytest.raises(FileExistsError, match="--overwrite"):
        load_sample("batch_prompts").main(argv)


def test_progress_callback(tmp_path, capsys):
    sample = load_sample("progress_callback")
    assert sample.render(0.5, "x", width=10) == "|█████░░░░░|  50%  x"
    out = tmp_path / "rain.mp4"
    run_sample("progress_callback", [*MODEL, "--prompt", PROMPT, *SIZES, "--output", str(out)])
    check_mp4(out)
    err = capsys.readouterr().err
    # the distilled pipeline: 8 then 3 fixed steps, one bar per stage, each ending full
    assert "stage 1/2 |" in err and "step 8/8" in err and "stage 2/2 |" in err and "step 3/3" in err
    finished = [line.rsplit("\r", 1)[-1] for line in err.split("\n") if "stage " in line]
    assert len(finished) == 2 and all("100%" in line for line in finished)
    assert "decoding" in err


# ------------------------------------------------------------------ the CLI commands
RECORDER = """#!{python}
import json, os, sys
with open(os.environ["SAMPLES_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_cli_examples(tmp_path, monkeypatch, capsys):
    """bash runs cli_examples.sh as written with $PYTHON recording each command's arguments; each
    recorded ``python -m mlx_ltx.generate`` command then runs in-process on the tiny model (image
    frame indices scaled to the tiny frame count)."""
    from mlx_ltx import generate
    from mlx_ltx.guidance import detect_params

    recorder = tmp_path / "python"
    recorder.write_text(RECORDER.format(python=sys.executable))
    recorder.chmod(0o755)
    log = tmp_path / "commands.jsonl"
    env = {**os.environ, "PYTHON": str(recorder), "SAMPLES_LOG": str(log), "DISTILLED_MODEL": str(FS.checkpoint_path),
           "DEV_MODEL": str(FS.checkpoint_path), "FIRST": make_image(tmp_path / "first.png", (200, 30, 30)),
           "MIDDLE": make_image(tmp_path / "middle.png", (30, 200, 30)),
           "LAST": make_image(tmp_path / "last.png", (30, 30, 200))}
    subprocess.run(["bash", str(SAMPLES / "cli_examples.sh")], cwd=tmp_path, env=env, check=True)
    commands = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(commands) >= 5

    monkeypatch.chdir(tmp_path)
    default_frames = detect_params(FS.checkpoint).num_frames
    for argv in commands:
        assert argv[:2] == ["-m", "mlx_ltx.generate"], argv
        argv = list(argv[2:])
        frames = int(argv[argv.index("--num-frames") + 1]) if "--num-frames" in argv else default_frames
        for i, arg in enumerate(argv):
            if arg == "--image":  # PATH FRAME_IDX ...: the same place in the tiny clip
                argv[i + 2] = str(round(int(argv[i + 2]) * (FRAMES - 1) / (frames - 1)))
        pipeline = argv[argv.index("--pipeline") + 1] if "--pipeline" in argv else "distilled"
        argv += [*MODEL, "--distilled-lora", LORA, *SIZES]  # argparse: the last value wins
        if pipeline != "distilled":
            argv += ["--num-inference-steps", "2", "--video-stg-blocks", str(LAST_BLOCK),
                     "--audio-stg-blocks", str(LAST_BLOCK)]
        assert generate.main(argv) == 0, (argv, capsys.readouterr().err)
        check_mp4(tmp_path / argv[argv.index("--output") + 1])
