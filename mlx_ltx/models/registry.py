"""Which components this port can build from a checkpoint: component name (a key of
``loading.COMPONENTS``) -> function(checkpoint) returning the unloaded module."""

from __future__ import annotations


def builders() -> dict:
    from .text_projection import text_projection_from_checkpoint

    return {
        "text_projection": text_projection_from_checkpoint,
    }
