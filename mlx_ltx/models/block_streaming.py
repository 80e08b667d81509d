"""Streamed transformer blocks (``memory="stream"``): each block's weights are read from the
checkpoint just before the block runs and released right after it, so only the non-block weights
(projections, adaLN, output head: about 1 % of the 22B model) and one block stay resident.

MLX makes this cheap to express. ``mx.load`` returns lazy arrays: a tensor is read from the file
only when something that needs it is evaluated. A streamed block therefore always holds *lazily
opened* arrays (the same cast and checks as an eager load, ``load_strict``); the forward evaluates
the block's outputs, which reads its weights, and then :meth:`BlockStreamer.reopen` replaces the
now-materialised arrays by freshly opened lazy ones, which frees them. The arithmetic is the eager
model's, on the same values, so outputs are bit-identical to eager.

LoRAs are fused per block as it is read: ``fuse_loras`` on a streamed model records the block
targets here, and every reopen builds the fused weight lazily with the very function the eager
fusion uses (``lora.fused_layer_arrays``), on LoRA factors that are re-opened lazily too, so the
LoRA file is not resident either. Fusing per read costs one rank-r product per layer per forward
(r / tokens of the layer's own matmul time), and it keeps streamed and eager-fused outputs
bit-identical, which an unfused low-rank side path would not.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn

from ..loading import COMPONENTS, Checkpoint, load_strict

BLOCK_PREFIX = "transformer_blocks."


def block_prefix(index: int) -> str:
    return f"{BLOCK_PREFIX}{index}."


class BlockStreamer:
    """Re-opens transformer blocks lazily from ``checkpoint`` (strictly, at ``dtype``)."""

    def __init__(self, checkpoint: Checkpoint, dtype: mx.Dtype | None, num_blocks: int):
        self.checkpoint = checkpoint
        self.dtype = dtype
        keys = checkpoint.component_keys("transformer")
        self.block_keys: list[dict[str, str]] = []
        for i in range(num_blocks):
            prefix = block_prefix(i)
            self.block_keys.append({k[len(prefix):]: ck for k, ck in keys.items() if k.startswith(prefix)})
        # (lora, strength) pairs and, per block, {module path in the block: [(pair, strength), ...]}
        self._loras: list[tuple[object, float]] = []
        self._block_products: list[dict[str, list]] = [{} for _ in range(num_blocks)]

    @property
    def fused_loras(self) -> tuple[tuple[object, float], ...]:
        return tuple(self._loras)

    def _open(self, index: int) -> dict[str, mx.array]:
        """Fresh lazy arrays of one block, under their module keys within the block. A fresh
        ``mx.load`` per call: an array kept from an earlier open would keep its data once read."""
        opened: dict[str, dict[str, mx.array]] = {}
        out = {}
        for key, ckey in self.block_keys[index].items():
            path = self.checkpoint.files[ckey]
            if path not in opened:
                opened[path] = mx.load(path)
            out[key] = opened[path][ckey]
        return out

    def reopen(self, block: nn.Module, index: int) -> None:
        """Replace ``block``'s arrays by lazily opened ones (with any recorded LoRA fused lazily):
        whatever the block had materialised is released once nothing else holds it."""
        ops = COMPONENTS["transformer"]
        prefix = block_prefix(index)
        load_strict(block, self._open(index), source=self.checkpoint.path, dtype=self.dtype,
                    quantization=self.checkpoint.quantization, quantize=False,
                    origin=lambda k: self.block_keys[index].get(k) or ops.source_key(prefix + k))
        products = self._block_products[index]
        if products:
            from .lora import fused_layer_arrays, reopened_pair

            modules = dict(block.named_modules())
            lora_arrays: dict[str, dict[str, mx.array]] = {}
            for path, items in products.items():
                layer = modules[path]
                fresh = [(reopened_pair(pair, lora_arrays), s) for pair, s in items]
                for n, v in fused_layer_arrays(layer, fresh).items():
                    layer[n] = v

    def set_loras(self, model: nn.Module, loras: Sequence[tuple[object, float]], targets: Sequence[str]) -> None:
        """Fuse ``[(lora, strength), ...]`` into the block ``targets`` (module paths) from the next
        read on; an empty list unfuses. Every block is re-opened now (lazily: nothing is read)."""
        self._loras = list(loras)
        self._block_products = [{} for _ in self.block_keys]
        for target in targets:
            index, path = _split_block_path(target)
            self._block_products[index][path] = [(lora.pairs[target], s) for lora, s in self._loras
                                                 if target in lora.pairs]
        for i, block in enumerate(model.transformer_blocks):
            self.reopen(block, i)

    def block_bytes(self) -> int:
        """The largest block's stored bytes (what one streamed block adds to the resident set)."""
        import math

        from ..memory_policy import _ELEMENT_BYTES

        return max(sum(math.prod(self.checkpoint.shapes[ck]) * _ELEMENT_BYTES.get(self.checkpoint.dtypes[ck], 4)
                       for ck in keys.values()) for keys in self.block_keys)


def _split_block_path(target: str) -> tuple[int, str]:
    rest = target[len(BLOCK_PREFIX):]
    index, path = rest.split(".", 1)
    return int(index), path


def is_block_target(target: str) -> bool:
    return target.startswith(BLOCK_PREFIX)
