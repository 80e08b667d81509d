"""Generation events (``progress.py``): the CLI's ``--progress json`` lines and the API's
``events=`` callback see every phase in order, with steps, elapsed time and peak memory; the
result carries the phase times, the peak memory and the resolved settings; ``--help`` shows the
argument groups and the defaults; ``--quiet`` prints only the final "wrote" line."""

import json

import mlx.core as mx
import pytest
from test_generate import guider_kwargs, setup, tiny_size  # noqa: F401 (setup: the fixture)

from mlx_ltx.generate import main as cli_main
from mlx_ltx.generate import setup_arg_parser
from mlx_ltx.pipelines import Pipeline
from mlx_ltx.progress import GenerationSettings, ProgressEvent


def _first_seen(phases):
    out = []
    for p in phases:
        if p not in out:
            out.append(p)
    return out


def _check_events(events: list[dict], expected: list[str], steps: list[int]):
    assert events[0]["phase"] == "settings" and events[0]["kind"] == "settings"
    assert events[-1]["phase"] == "summary" and events[-1]["kind"] == "summary"
    assert events[-1]["peak_memory"] > 0
    assert list(events[-1]["phase_times"]) == expected
    assert _first_seen(e["phase"] for e in events[1:-1]) == expected
    for e in events:
        assert e["elapsed"] >= 0 and e["peak_memory"] >= 0
    for k, n in enumerate(steps):
        stage = [e for e in events if e["phase"] == f"stage{k + 1}"]
        assert [e["kind"] for e in stage] == ["start"] + ["step"] * n + ["end"]
        assert [(e["step"], e["total"]) for e in stage[1:-1]] == [(i, n) for i in range(1, n + 1)]
        assert all(e["eta"] >= 0 for e in stage[1:-1]) and stage[-2]["eta"] == 0
    decode = [e for e in events if e["phase"] == "video_decode" and e["kind"] == "step"]
    assert decode and decode[-1]["step"] == decode[-1]["total"]
    # every phase starts and ends, one at a time
    running = None
    for e in events[1:-1]:
        if e["kind"] == "start":
            assert running is None
            running = e["phase"]
        else:
            assert e["phase"] == running
            if e["kind"] == "end":
                running = None


def _cli_base(setup, tmp_path, two_stage):
    frames, h, w = tiny_size(two_stage)
    return ["--model", setup["model"], "--gemma", setup["gemma"], "--upsampler", setup["upsampler"],
            "--prompt", "a fox", "--height", str(h), "--width", str(w), "--num-frames", str(frames),
            "--frame-rate", "24", "--seed", "5", "--dtype", "float32", "--output", str(tmp_path / "o.mp4")]


def test_cli_progress_json(setup, tmp_path, capsys):
    assert cli_main([*_cli_base(setup, tmp_path, True), "--progress", "json"]) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.err.splitlines()]  # every line parses
    _check_events(events, ["text_encoder", "prompt", "transformer", "stage1", "upsample", "stage2",
                           "video_decode", "audio_decode", "write"], [8, 3])
    settings = events[0]["settings"]
    assert settings["steps"] == [8, 3] and settings["seed"] == 5 and settings["video_guidance"] is None
    assert captured.out.startswith("wrote ")


def test_api_events_and_result(setup, tmp_path):
    """dev-two-stage: guided stage, upsampling, the distilled LoRA fused for stage 2; the old
    ``progress`` callback still sees its (stage, step, steps) calls."""
    p = Pipeline.from_pretrained(setup["converted"], "dev-two-stage", dtype=mx.float32)
    frames, h, w = tiny_size(True)
    seen, old = [], []
    r = p.generate("a fox", height=h, width=w, num_frames=frames, fps=24, seed=3, num_inference_steps=2,
                   output_path=tmp_path / "o.mp4", events=seen.append, progress=lambda *a: old.append(a),
                   **guider_kwargs(p))
    assert all(isinstance(e, ProgressEvent) for e in seen)
    expected = ["text_encoder", "prompt", "transformer", "stage1", "upsample", "lora", "stage2", "video_decode",
                "audio_decode", "write"]
    _check_events([e.to_dict() for e in seen], expected, [2, 3])
    assert [e.stage for e in seen if e.phase == "lora"] == [1, 1]
    assert old == [(0, 1, 2), (0, 2, 2), (1, 1, 3), (1, 2, 3), (1, 3, 3)]
    assert list(r.phase_times) == expected and all(t >= 0 for t in r.phase_times.values())
    assert r.total_time >= sum(r.phase_times.values()) > 0
    assert r.peak_memory > 0 and r.peak_memory == seen[-1].peak_memory
    s = r.settings
    assert isinstance(s, GenerationSettings) and s == seen[0].settings
    assert (s.pipeline, s.height, s.width, s.num_frames, s.fps, s.steps, s.seed) == \
           ("dev-two-stage", h, w, frames, 24.0, (2, 3), 3)
    assert s.video_guidance == guider_kwargs(p)["video_guider_params"]
    json.dumps(s.to_dict())
    # no events, no write, no audio: the phases that ran
    r = p.generate("a fox", height=h, width=w, num_frames=frames, fps=24, seed=3, num_inference_steps=2,
                   audio=False, **guider_kwargs(p))
    assert "write" not in r.phase_times and "audio_decode" not in r.phase_times and r.peak_memory > 0


def test_cli_quiet_and_bar(setup, tmp_path, capsys):
    base = _cli_base(setup, tmp_path, True)
    assert cli_main([*base, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("wrote ") and captured.out.count("\n") == 1
    assert cli_main([*base, "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("wrote ")
    for text in ("pipeline  distilled", "steps     8 + 3    seed 5", "guidance  none", "text encoder load",
                 "video decode", "peak memory", "total"):
        assert text in captured.err
    # the settings come first, the summary table last
    assert captured.err.index("seed 5") < captured.err.index("text encoder load") < captured.err.index("peak memory")
    with pytest.raises(SystemExit):
        cli_main([*base, "--quiet", "--progress", "json"])
    assert "not allowed with" in capsys.readouterr().err


def test_cli_help(capsys):
    text = setup_arg_parser().format_help()
    for group in ("model:", "prompt:", "size:", "conditioning:", "guidance:", "output:", "memory:", "examples:"):
        assert f"\n{group}" in text
    text = " ".join(text.split())  # help wraps at the terminal's width
    assert "(default: bfloat16)" in text and "(default: distilled)" in text and "(default: bar)" in text
    assert "(default: None = the checkpoint's)" in text
    assert "``" not in text
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "memory:" in capsys.readouterr().out


def test_kept_models_skip_their_load_phases(setup):
    """low_memory=False: the second call loads nothing, so it has no load phases."""
    p = Pipeline.from_pretrained(setup["model"], "dev", gemma=setup["gemma"], dtype=mx.float32, low_memory=False)
    frames, h, w = tiny_size(False)
    phases = []
    for _ in range(2):
        seen = []
        p.generate("a fox", height=h, width=w, num_frames=frames, fps=24, seed=3, num_inference_steps=2,
                   audio=False, events=seen.append, **guider_kwargs(p))
        phases.append(_first_seen(e.phase for e in seen))
    assert phases[0] == ["settings", "text_encoder", "prompt", "transformer", "stage1", "video_decode", "summary"]
    assert phases[1] == ["settings", "prompt", "stage1", "video_decode", "summary"]
