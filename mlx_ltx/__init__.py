"""mlx_ltx: Lightricks LTX-2.3 audio+video diffusion on MLX.

The public entry points (see the README's Python API section) are importable from here:
``Pipeline``, ``GenerationResult``, ``ImageConditioningInput``, ``MultiModalGuiderParams``,
``Checkpoint`` and ``list_pipelines``. They are imported on first access, so ``import mlx_ltx``
stays cheap (no MLX, NumPy or model code is loaded until a name is used). Lower-level pieces
live in their modules: ``mlx_ltx.loading`` (``load_component``), the component models under
``mlx_ltx.models``, the stage tables in ``mlx_ltx.pipeline_stages``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "Pipeline": "mlx_ltx.pipelines",
    "GenerationResult": "mlx_ltx.pipelines",
    "list_pipelines": "mlx_ltx.pipelines",
    "ImageConditioningInput": "mlx_ltx.conditioning",
    "MultiModalGuiderParams": "mlx_ltx.guidance",
    "Checkpoint": "mlx_ltx.loading",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from .conditioning import ImageConditioningInput
    from .guidance import MultiModalGuiderParams
    from .loading import Checkpoint
    from .pipelines import GenerationResult, Pipeline, list_pipelines


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later look-ups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
