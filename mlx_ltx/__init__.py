"""mlx_ltx: Lightricks LTX-2.3 audio+video diffusion on MLX.

The public entry points live in their modules (see the README's Python API section):
``mlx_ltx.loading.Checkpoint`` / ``load_component`` and the component models under
``mlx_ltx.models``.
"""

__version__ = "0.1.0"
