"""The fixture generator reproduces the committed goldens byte for byte.

Needs the reference installed (see tests/reference/make_ref.py); set MLX_LTX_REFERENCE_PYTHON to
that interpreter to run it. CI has no PyTorch, so there it is skipped.
"""

import filecmp
import json
import os
import subprocess
from pathlib import Path

import pytest
from reference_data import FIXTURES

# every golden make_ref.py writes by default; a set made with --no-… flags lacks some, and the
# tests reading them skip there, so the committed sets must hold them all
ALL_GOLDENS = {"audio_vae", "connector", "e2e", "gemma", "lora", "pipeline", "schedulers", "text_projection",
               "transformer", "upsampler", "video_vae", "vocoder"}


def test_committed_sets_hold_every_golden():
    sets = sorted(p for p in FIXTURES.iterdir() if (p / "manifest.json").is_file())
    assert len(sets) >= 4
    for d in sets:
        names = json.loads((d / "manifest.json").read_text())["goldens"]
        assert {n.removeprefix("golden_").removesuffix(".safetensors") for n in names} == ALL_GOLDENS, d.name

PYTHON = os.environ.get("MLX_LTX_REFERENCE_PYTHON")


@pytest.mark.skipif(not PYTHON, reason="set MLX_LTX_REFERENCE_PYTHON to the reference's interpreter")
def test_generator_is_byte_reproducible(tmp_path):
    committed = FIXTURES / "tiny-s1234"
    out = tmp_path / "tiny-s1234"
    subprocess.run([PYTHON, str(Path(FIXTURES).parent / "make_ref.py"), "--variant", "tiny", "--seed", "1234",
                    "--out", str(out)], check=True, capture_output=True)
    files = sorted(str(p.relative_to(committed)) for p in committed.rglob("*") if p.is_file())
    files = [f for f in files if f != "REPORT.txt"]
    _, mismatch, errors = filecmp.cmpfiles(committed, out, files, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
