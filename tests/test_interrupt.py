"""Ctrl-C, delivered for real: ``python -m mlx_ltx.generate`` in a subprocess gets SIGINT (sent
to its whole process group, as a terminal does) during denoising, at the start of the write and
while ffmpeg encodes. Each time it exits with code 130 and the one line "interrupted" (no
traceback), the existing output (and --wav) keeps its exact bytes, and the output folder holds no
temporary file. A last test sends SIGINT while ``subprocess.Popen`` is starting ffmpeg: the
interrupt must not leave an ffmpeg behind that writes its temporary file after the cleanup."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_generate import ASSETS, FS, REPO

PREVIOUS = b"previous output, to be kept byte for byte"
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny checkpoint, its x2 upsampler and Gemma with its tokenizer."""
    gemma = tmp_path_factory.mktemp("interrupt") / "gemma"
    shutil.copytree(FS.path / FS.manifest["gemma_dir"], gemma)
    for f in (ASSETS / "tiny_tokenizer").iterdir():
        shutil.copy(f, gemma / f.name)
    return ["--model", str(FS.checkpoint_path), "--gemma", str(gemma),
            "--upsampler", str(FS.upsampler_path("spatial-x2"))]


def _start(model, folder: Path, size: int, frames: int = 9, wav: bool = False) -> subprocess.Popen:
    """Previous output files in ``folder``, then the CLI started in its own process group,
    overwriting them, with JSON events on stderr."""
    (folder / "o.mp4").write_bytes(PREVIOUS)
    extra = []
    if wav:
        (folder / "o.wav").write_bytes(PREVIOUS)
        extra = ["--wav", str(folder / "o.wav")]
    cmd = [sys.executable, "-m", "mlx_ltx.generate", *model, "--prompt", "a fox", "--height", str(size),
           "--width", str(size), "--num-frames", str(frames), "--frame-rate", "24", "--seed", "5",
           "--dtype", "float32", "--output", str(folder / "o.mp4"), "--overwrite", "--progress", "json", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd=folder, start_new_session=True)


def _ctrl_c(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # the whole group, as a terminal's Ctrl-C


def _finish(proc: subprocess.Popen, events: list, other: list) -> int:
    """Read the rest of stderr (JSON events and other lines) and wait for the exit code."""
    for line in proc.stderr:
        _parse(line, events, other)
    return proc.wait(timeout=60)


def _parse(line: str, events: list, other: list) -> dict | None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        other.append(line)
        return None
    events.append(event)
    return event


def _check_clean(proc, code, events, other, folder: Path, names=("o.mp4",)) -> None:
    stdout = proc.stdout.read()
    assert code == 130, f"exit code {code}; stderr:\n{''.join(other)}"
    assert other == ["interrupted\n"], f"expected the one line 'interrupted'; got:\n{''.join(other)}"
    assert stdout == ""  # no "wrote ..."
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # no temporaries, hidden ones included
    for name in names:
        assert (folder / name).read_bytes() == PREVIOUS
    assert not any(e["kind"] == "summary" for e in events)


def _run_until(model, folder, size, predicate, **kw):
    proc = _start(model, folder, size, **kw)
    events, other = [], []
    try:
        for line in proc.stderr:
            event = _parse(line, events, other)
            if event is not None and predicate(event):
                _ctrl_c(proc)
                break
        else:
            pytest.fail(f"the run ended before the event to interrupt at; stderr:\n{''.join(other)}")
        return proc, _finish(proc, events, other), events, other
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_during_denoising(model, tmp_path):
    proc, code, events, other = _run_until(model, tmp_path, 64,
                                           lambda e: e["phase"] == "stage1" and e["kind"] == "step")
    _check_clean(proc, code, events, other, tmp_path)
    # stopped in the denoising: the decoders and the write never started
    started = [e["phase"] for e in events if e["kind"] == "start"]
    assert "stage1" in started and "video_decode" not in started and "write" not in started


def test_ctrl_c_at_write_start(model, tmp_path):
    """SIGINT as soon as the write phase starts (before or while ffmpeg starts)."""
    proc, code, events, other = _run_until(model, tmp_path, 64,
                                           lambda e: e["phase"] == "write" and e["kind"] == "start", wav=True)
    _check_clean(proc, code, events, other, tmp_path, ("o.mp4", "o.wav"))


def test_ctrl_c_while_ffmpeg_encodes(model, tmp_path):
    """SIGINT once ffmpeg has created its temporary mp4 (9 frames of 512x512 take it a few
    hundred ms to encode): ffmpeg is killed, the temporaries (mp4 and wav) removed."""
    proc = _start(model, tmp_path, 512, wav=True)
    events, other, seen = [], [], None
    try:
        for line in proc.stderr:
            event = _parse(line, events, other)
            if event is not None and event["phase"] == "write" and event["kind"] == "start":
                break
        deadline = time.monotonic() + 30
        while seen is None and proc.poll() is None and time.monotonic() < deadline:
            seen = next((p.name for p in tmp_path.iterdir() if p.name.endswith(".partial.mp4")), None)
            time.sleep(0.001)
        assert seen is not None, "ffmpeg's temporary mp4 never appeared before the run ended"
        _ctrl_c(proc)
        code = _finish(proc, events, other)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert seen.startswith(".o.")
    _check_clean(proc, code, events, other, tmp_path, ("o.mp4", "o.wav"))


_POPEN_RACE = textwrap.dedent("""
    import os, signal, subprocess, sys
    import numpy as np
    from mlx_ltx import media

    started = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        if kwargs.get("stdin") == subprocess.PIPE:  # the encoder, not imageio-ffmpeg's version check
            started.append(proc)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C once ffmpeg runs, before Popen has returned
        return proc

    subprocess.Popen = popen
    frames = np.zeros((9, 64, 64, 3), np.uint8)
    try:
        media.write_video(sys.argv[1], frames, 24)
    except KeyboardInterrupt:
        print("interrupted")
    for proc in started:  # an ffmpeg left running finishes now (EOF on stdin)
        print("left running" if proc.poll() is None else "stopped")
        proc.stdin.close()
        proc.wait(timeout=30)
""")


def test_ctrl_c_while_ffmpeg_starts(tmp_path):
    """An interrupt inside ``subprocess.Popen`` (ffmpeg started, Popen not yet returned) is held
    until the process handle is kept, so the cleanup stops ffmpeg before removing its file."""
    target = tmp_path / "o.mp4"
    target.write_bytes(PREVIOUS)
    out = subprocess.run([sys.executable, "-c", _POPEN_RACE, str(target)], capture_output=True, text=True,
                         env=ENV, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["interrupted", "stopped"]
    assert [p.name for p in tmp_path.iterdir()] == ["o.mp4"] and target.read_bytes() == PREVIOUS
