"""Access to the reference fixture sets (golden-directory format v2, tests/reference/FORMAT.md).

Parity tests take a ``fixture_set`` argument and run once per committed set under
tests/reference/fixtures/, or once on ``$MLX_LTX_REFERENCE_DIR`` when that is set (a directory
of one fixture set made by tests/reference/make_ref.py with any variant and seed). Tests read
every shape and config value from the set itself, never from constants.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_ltx.loading import Checkpoint

FIXTURES = Path(__file__).parent / "reference" / "fixtures"


def generation(path: Path) -> str:
    """A set's model generation: "2.5" for the split-layout sets of make_ref_25.py (FORMAT-25.md),
    "2.3" for the single-file sets of make_ref.py (2.3 and 19B checkpoints)."""
    return json.loads((Path(path) / "manifest.json").read_text()).get("generation", "2.3")


def fixture_dirs(gen: str = "2.3") -> list[Path]:
    """The committed sets of generation ``gen``, or ``$MLX_LTX_REFERENCE_DIR`` (one set) when it is
    set and of that generation (a set of the other generation runs none of these tests)."""
    override = os.environ.get("MLX_LTX_REFERENCE_DIR")
    if override:
        path = Path(override)
        if not (path / "manifest.json").is_file():
            raise RuntimeError(f"MLX_LTX_REFERENCE_DIR={override}: no manifest.json there")
        return [path] if generation(path) == gen else []
    return sorted(p for p in FIXTURES.iterdir() if (p / "manifest.json").is_file() and generation(p) == gen)


class FixtureSet:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        self.variant = self.manifest["variant"]

    def __repr__(self) -> str:
        return f"FixtureSet({self.path.name})"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.manifest["checkpoint"]

    @cached_property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.checkpoint_path)

    def upsampler_path(self, name: str) -> Path:
        return self.path / self.manifest["upsamplers"][name]

    def has_golden(self, name: str) -> bool:
        return f"golden_{name}.safetensors" in self.manifest["goldens"]

    def golden(self, name: str) -> dict[str, np.ndarray]:
        """All tensors of ``golden_<name>.safetensors`` as numpy arrays (bfloat16 as float32). A set
        made without that golden (make_ref.py --no-pipeline, --no-gemma, --no-e2e) skips the test;
        the committed sets hold every golden (test_fixture_generator)."""
        if not self.has_golden(name):
            import pytest

            pytest.skip(f"{self.path.name} has no golden_{name} (made with make_ref.py --no-…)")
        path = str(self.path / f"golden_{name}.safetensors")
        try:
            arrays = mx.load(path)
        except RuntimeError:  # float64 (golden_e2e's res_2s noise), which MLX's loader does not read
            from safetensors.numpy import load_file

            return load_file(path)
        out = {}
        for k, v in arrays.items():
            if v.dtype == mx.bfloat16:
                v = v.astype(mx.float32)
            out[k] = np.array(v)
        return out


class FixtureSet25(FixtureSet):
    """A 2.5 set: split files laid out like the Hugging Face repo (FORMAT-25.md); the checkpoint
    is the folder, opened as a split checkpoint."""

    def file(self, role: str) -> Path:
        """The file of a component role: transformer, text_encoder, video_vae, audio_vae, duration_head."""
        return self.path / self.manifest["files"][role]

    @property
    def checkpoint_path(self) -> Path:
        return self.path

    def upsampler_path(self, name: str) -> Path:
        return self.path / self.manifest["upsamplers"][name]

    def lora_path(self, name: str = "distilled") -> Path:
        return self.path / self.manifest["loras"][name]


def rel_err(actual, expected) -> float:
    """max |actual − expected| relative to the reference output's max magnitude."""
    a = np.asarray(actual.astype(mx.float32) if isinstance(actual, mx.array) else actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != reference {e.shape}"
    return float(np.abs(a - e).max() / max(np.abs(e).max(), 1e-12))


# Tolerances of the project (README "Parity"): components in float32 and bfloat16, loops.
TOL_F32 = 1e-4
TOL_BF16 = 2e-2
TOL_LOOP = 1e-3
# bf16 bound where the reference's own bf16 run misses TOL_BF16: this many times its error. Two equally valid
# bf16 evaluations differ in where they round; over 106 outputs of 10 sets ours/reference was 1.03 (geometric
# mean), above 1.5 for 7, up to 1.79 — and 2.37 once, which a single-rounded SiLU (as torch's) brings to 1.14.
BF16_REF_FACTOR = 2.0


def bf16_tol(golden: dict, key: str) -> float:
    """max(TOL_BF16, BF16_REF_FACTOR × the reference's own bf16 error on ``key``): its bf16 run misses by that too."""
    err = golden.get(f"bf16_ref_err.{key}")
    return TOL_BF16 if err is None else max(TOL_BF16, BF16_REF_FACTOR * float(np.asarray(err).reshape(-1)[0]))


def q8_folder(fixture_set: "FixtureSet", tmp_path: Path) -> str:
    """The set's checkpoint converted by convert.py as a dev release with ``--quantize q8`` (group 32)."""
    from mlx_ltx import convert as conv

    release = tmp_path / "release"
    release.mkdir()
    name = "ltx-2.3-22b-dev.safetensors" if fixture_set.checkpoint.metadata.get("model_version") \
        else "ltx-2-19b-dev.safetensors"
    (release / name).symlink_to(fixture_set.checkpoint_path.absolute())
    return conv.convert(str(release), "dev", str(tmp_path / "q8"), quantize="q8", group_size=32,
                        progress=lambda m: None)
