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


def fixture_dirs() -> list[Path]:
    override = os.environ.get("MLX_LTX_REFERENCE_DIR")
    if override:
        path = Path(override)
        if not (path / "manifest.json").is_file():
            raise RuntimeError(f"MLX_LTX_REFERENCE_DIR={override}: no manifest.json there")
        return [path]
    return sorted(p for p in FIXTURES.iterdir() if (p / "manifest.json").is_file())


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
        """All tensors of ``golden_<name>.safetensors`` as float32/int64 numpy arrays."""
        arrays = mx.load(str(self.path / f"golden_{name}.safetensors"))
        out = {}
        for k, v in arrays.items():
            if v.dtype == mx.bfloat16:
                v = v.astype(mx.float32)
            out[k] = np.array(v)
        return out


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
