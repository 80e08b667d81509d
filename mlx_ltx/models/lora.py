"""LoRA adapters for the LTX transformer: strict loading, fusion into a loaded model, restore.

Key layouts (:func:`load_lora` detects them by their keys):

* ``trainer``: the official trainer's, the one the reference loads:
  ``diffusion_model.<module>.lora_A.weight`` [r, in] / ``.lora_B.weight`` [out, r], no alpha.
* ``comfyui``: ``diffusion_model.<module>.lora_down.weight`` (A) / ``.lora_up.weight`` (B) and an
  optional scalar ``diffusion_model.<module>.alpha``. ComfyUI's convention: the delta is
  ``(alpha / rank) · up @ down``, ``rank = lora_down.shape[0]`` (no alpha: 1).
* ``diffusers``: ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` with diffusers'
  ``LTX2VideoTransformer3DModel`` module names (``proj_in`` for ``patchify_proj``, ``time_embed`` for
  ``adaln_single``, ...: :data:`DIFFUSERS_MODULES`; block layers are named alike) and PEFT's
  ``lora_adapter_metadata`` (``transformer.lora_alpha`` / ``transformer.r``, delta
  ``(lora_alpha / r) · B @ A``; none: 1).

A scale other than 1 is folded into B in float32 (``B' = float32(B) · scale``) before the
reference's bf16 aggregation: exactly the reference's fusion of the same LoRA converted to the
trainer layout with its B scaled that way (tests/reference/lora_layouts.py).

Reference twins: ``ltx_core/loader/sd_ops.py :: LTXV_LORA_COMFY_RENAMING_MAP`` (key renaming),
``ltx_core/loader/fuse_loras.py :: aggregate_lora_products, _bf16_fuse, fuse_lora_weights``
(the arithmetic) and ``ltx_core/loader/single_gpu_model_builder.py :: _load_model_weights``
(when it runs: on the transformer's state dict as read from the file, before the cast to the
build dtype).

The reference fuses at build time and rebuilds the model for another strength. Here the
fusion is applied in place to a loaded ``LTXModel`` and can be undone, so a two-stage pipeline
fuses strength 0.25 for stage 1, restores, and fuses 0.5 for stage 2 on one loaded model. Only
the touched layers' original arrays are kept for the restore.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..loading import Checkpoint, CheckpointError, open_checkpoint
from .block_streaming import is_block_target

# LTXV_LORA_COMFY_RENAMING_MAP: a plain str.replace of the substring (not prefix-only), like every SDOps.
LORA_KEY_PREFIX = "diffusion_model."
LORA_A_SUFFIX = ".lora_A.weight"
LORA_B_SUFFIX = ".lora_B.weight"
COMFY_DOWN_SUFFIX = ".lora_down.weight"
COMFY_UP_SUFFIX = ".lora_up.weight"
COMFY_ALPHA_SUFFIX = ".alpha"
DIFFUSERS_PREFIX = "transformer."
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
# diffusers' LTX2VideoTransformer3DModel top-level modules -> the reference's (its LTX-2 checkpoint
# conversion renames these; every block layer keeps its name)
DIFFUSERS_MODULES = {
    "proj_in": "patchify_proj", "audio_proj_in": "audio_patchify_proj",
    "time_embed": "adaln_single", "audio_time_embed": "audio_adaln_single",
    "prompt_adaln": "prompt_adaln_single", "audio_prompt_adaln": "audio_prompt_adaln_single",
    "av_cross_attn_video_scale_shift": "av_ca_video_scale_shift_adaln_single",
    "av_cross_attn_audio_scale_shift": "av_ca_audio_scale_shift_adaln_single",
    "av_cross_attn_video_a2v_gate": "av_ca_a2v_gate_adaln_single",
    "av_cross_attn_audio_v2a_gate": "av_ca_v2a_gate_adaln_single",
}
LAYOUTS = ("trainer", "comfyui", "diffusers")
# The reference's transformer state dict still holds the embeddings connectors (its SDOps select
# every ``model.diffusion_model.*`` key), so a LoRA factor aimed at them is fused there and then
# dropped by ``load_state_dict(strict=False)``: it never changes the model. Those are skipped here.
CONNECTOR_TARGETS = ("video_embeddings_connector.", "audio_embeddings_connector.")
# fuse_loras.py :: bf16_fuse_rule (CPU/CUDA; only the MPS device rule aggregates in float32)
AGGREGATION_DTYPE = mx.bfloat16
_FLOAT_DTYPES = {"F32", "F16", "BF16"}


class LoRAError(CheckpointError):
    """A LoRA file that does not fit the model it is fused into, or a misuse of fusion."""


@dataclass(frozen=True)
class LoRAPair:
    """One target's factors: ``a`` [rank, in], ``b`` [out, rank] (the file's keys kept for messages)."""

    a: mx.array
    b: mx.array
    key_a: str
    key_b: str
    path: str = ""  # the file, to re-open the factors lazily (streamed blocks)
    scale: float = 1.0  # the layout's alpha scaling, folded into B (module docstring)

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def scaled_b(self) -> mx.array:
        """B with the layout's scale applied in float32 (B itself when the scale is 1)."""
        return self.b if self.scale == 1.0 else self.b.astype(mx.float32) * self.scale


@dataclass
class LoRA:
    """A LoRA file opened lazily: ``pairs`` maps transformer module paths to their factors."""

    path: str
    pairs: dict[str, LoRAPair]
    skipped: tuple[str, ...] = ()  # connector targets (see CONNECTOR_TARGETS)
    metadata: dict[str, Any] = field(default_factory=dict)
    layout: str = "trainer"  # one of LAYOUTS

    def __repr__(self) -> str:
        ranks = sorted({p.rank for p in self.pairs.values()})
        return f"LoRA({self.path!r}, {self.layout} layout, {len(self.pairs)} layers, rank {ranks})"


def _more(items: Sequence[str], n: int = 8) -> str:
    items = sorted(items)
    return f"{items[:n]}" + (f" and {len(items) - n} more" if len(items) > n else "")


def detect_layout(keys: Sequence[str]) -> str:
    """``trainer``, ``comfyui`` or ``diffusers`` (module docstring), from a LoRA file's keys."""
    if any(k.startswith(DIFFUSERS_PREFIX) for k in keys):
        return "diffusers"
    if any(k.endswith((COMFY_DOWN_SUFFIX, COMFY_UP_SUFFIX)) for k in keys):
        return "comfyui"
    return "trainer"


def _diffusers_scale(src: str, metadata: dict[str, Any]) -> float:
    """PEFT's scaling of a diffusers LoRA: ``lora_alpha / r`` (rsLoRA: ``/ sqrt(r)``) from its
    ``lora_adapter_metadata``; 1 without one (diffusers then takes ``lora_alpha = r``)."""
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if raw is None:
        return 1.0
    import json

    try:
        meta = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (ValueError, TypeError):
        raise LoRAError(f"{src}: its {DIFFUSERS_METADATA_KEY!r} metadata is not JSON") from None
    get = lambda name: meta.get(f"{DIFFUSERS_PREFIX}{name}")  # noqa: E731
    if get("use_dora"):
        raise LoRAError(f"{src}: a DoRA adapter (use_dora); only plain LoRA factors can be fused")
    if get("rank_pattern") or get("alpha_pattern"):
        raise LoRAError(f"{src}: per-layer rank_pattern / alpha_pattern in {DIFFUSERS_METADATA_KEY!r} are not "
                        f"supported; only one lora_alpha and r for the transformer")
    alpha, r = get("lora_alpha"), get("r")
    if alpha is None and r is None:
        return 1.0
    if not isinstance(alpha, (int, float)) or not isinstance(r, (int, float)) or r <= 0:
        raise LoRAError(f"{src}: {DIFFUSERS_METADATA_KEY!r} has transformer.lora_alpha {alpha!r} and "
                        f"transformer.r {r!r}; both must be numbers")
    return float(alpha) / (math.sqrt(r) if get("use_rslora") else float(r))


def _layout_factors(keys: Sequence[str], layout: str) -> tuple[dict[str, dict[str, str]], list[str]]:
    """{target module path: {"a", "b"[, "alpha"]: file key}} and the keys that are none of those."""
    if layout == "diffusers":
        slots = ((LORA_A_SUFFIX, "a"), (LORA_B_SUFFIX, "b"))
    elif layout == "comfyui":
        slots = ((COMFY_DOWN_SUFFIX, "a"), (COMFY_UP_SUFFIX, "b"), (COMFY_ALPHA_SUFFIX, "alpha"))
    else:
        slots = ((LORA_A_SUFFIX, "a"), (LORA_B_SUFFIX, "b"))
    factors: dict[str, dict[str, str]] = {}
    bad: list[str] = []
    for key in keys:
        if layout == "diffusers":
            if not key.startswith(DIFFUSERS_PREFIX):
                bad.append(key)
                continue
            name = key[len(DIFFUSERS_PREFIX):]
            head, dot, rest = name.partition(".")
            name = DIFFUSERS_MODULES.get(head, head) + dot + rest
        else:
            name = key.replace(LORA_KEY_PREFIX, "")
        for suffix, slot in slots:
            if name.endswith(suffix):
                target = name[: -len(suffix)]
                if slot in factors.setdefault(target, {}):
                    raise LoRAError(f"{key!r} and {factors[target][slot]!r} name the same target {target!r}")
                factors[target][slot] = key
                break
        else:
            bad.append(key)
    return factors, bad


_EXPECTED = {
    "trainer": (f"'diffusion_model.<module>{LORA_A_SUFFIX}' / '{LORA_B_SUFFIX}' pairs, with no alpha (the reference "
                f"ignores an alpha next to lora_A/lora_B; ComfyUI's layout with alpha names them lora_down/lora_up)"),
    "comfyui": f"'diffusion_model.<module>{COMFY_DOWN_SUFFIX}' / '{COMFY_UP_SUFFIX}' pairs and '<module>.alpha'",
    "diffusers": f"'transformer.<module>{LORA_A_SUFFIX}' / '{LORA_B_SUFFIX}' pairs of the transformer",
}


def load_lora(path: str | os.PathLike) -> LoRA:
    """Open a LoRA in any of :data:`LAYOUTS` (module docstring), detected from its keys.

    Strict: the reference silently ignores every tensor that is not a ``lora_A``/``lora_B`` pair
    (an ``.alpha``, ``diff``, ``diff_b``, DoRA magnitudes, a factor without its partner); any such
    tensor, or a key of another layout or another model (a diffusers file's text encoder), would be
    lost without notice, so it is an error naming the keys."""
    ckpt = Checkpoint(path)
    src = ckpt.path
    layout = detect_layout(list(ckpt.shapes))
    try:
        factors, bad = _layout_factors(list(ckpt.shapes), layout)
    except LoRAError as e:
        raise LoRAError(f"{src}: {e}") from None
    if bad:
        raise LoRAError(f"{src} ({layout} layout): tensors that are not LoRA factors of the transformer (only "
                        f"{_EXPECTED[layout]} are fused): {_more(bad)}")
    unpaired = sorted(next(iter(f.values())) for f in factors.values() if not ("a" in f and "b" in f))
    if unpaired:
        names = "lora_down/lora_up" if layout == "comfyui" else "lora_A/lora_B"
        raise LoRAError(f"{src}: LoRA factors without their {names} partner: {unpaired[:8]}")

    arrays = mx.load(src)  # lazy: nothing is read before a layer is fused
    file_scale = _diffusers_scale(src, ckpt.metadata) if layout == "diffusers" else 1.0
    pairs: dict[str, LoRAPair] = {}
    skipped = []
    for target, f in sorted(factors.items()):
        ka, kb = f["a"], f["b"]
        for k in (ka, kb):
            if ckpt.dtypes[k] not in _FLOAT_DTYPES:
                raise LoRAError(f"{src}: {k!r} has dtype {ckpt.dtypes[k]}; LoRA factors must be float")
        sa, sb = ckpt.shapes[ka], ckpt.shapes[kb]
        if len(sa) != 2 or len(sb) != 2 or sa[0] != sb[1]:
            raise LoRAError(f"{src}: {ka!r} {list(sa)} and {kb!r} {list(sb)} are not A [rank, in] and B [out, rank]"
                            f" of one rank")
        scale = file_scale
        if "alpha" in f:  # ComfyUI: alpha / rank, rank = lora_down.shape[0]
            alpha = arrays[f["alpha"]]
            if alpha.size != 1:
                raise LoRAError(f"{src}: {f['alpha']!r} has shape {list(alpha.shape)}; an alpha is one number")
            scale = float(alpha.astype(mx.float32).item()) / sa[0]
        if target.startswith(CONNECTOR_TARGETS):
            skipped.append(target)
            continue
        pairs[target] = LoRAPair(arrays[ka], arrays[kb], ka, kb, src, scale)
    if not pairs:
        raise LoRAError(f"{src}: no LoRA factors for the transformer")
    return LoRA(src, pairs, tuple(skipped), ckpt.metadata, layout)


def aggregate_lora_products(products: Sequence[tuple[LoRAPair, float]]) -> mx.array:
    """``Σ (B·strength) @ A`` in bfloat16, rounded where the reference rounds: the first
    product as ``(B·s) @ A`` (B·s rounded first), every further one accumulated as
    ``Δ + s·(B @ A)`` in one rounding (the reference's in-place ``addmm_``)."""
    aggregated = None
    for pair, strength in products:
        a = pair.a.astype(AGGREGATION_DTYPE)
        b = pair.scaled_b.astype(AGGREGATION_DTYPE)
        if aggregated is None:
            # torch's bf16 · Python float: the product in float32, rounded once (an MLX bf16 · float
            # would round the strength to bf16 first: 0.8 -> 0.80078125)
            aggregated = (b.astype(mx.float32) * strength).astype(AGGREGATION_DTYPE) @ a
        else:
            aggregated = mx.addmm(aggregated, b, a, alpha=strength)
    return aggregated


def bf16_fuse(weight: mx.array, deltas: mx.array) -> mx.array:
    """``_bf16_fuse``: the sum is taken in place in the bf16 delta buffer, so the fused weight
    is rounded to bfloat16 even in a float32 model, then cast back to the weight's dtype."""
    return (deltas + weight).astype(AGGREGATION_DTYPE).astype(weight.dtype)


def _linear_dims(layer: nn.Module) -> tuple[int, int]:
    """(out, in) of a Linear or QuantizedLinear."""
    if isinstance(layer, nn.QuantizedLinear):
        return layer.weight.shape[0], layer.scales.shape[-1] * layer.group_size
    return tuple(layer.weight.shape)


def unmatched_targets_error(lora: LoRA, missing: Sequence[str]) -> LoRAError:
    """The error for LoRA keys (``missing``: A-factor keys) whose module the transformer lacks."""
    if len(missing) == len(lora.pairs):  # not one layer: another model's LoRA, or a layout misread
        return LoRAError(f"{lora.path} ({lora.layout} layout) names no layer of this transformer (a LoRA for "
                         f"another model?); unmatched keys: {_more(missing, 5)}")
    return LoRAError(f"{lora.path} ({lora.layout} layout): {len(missing)} of its {len(lora.pairs)} layers are not "
                     f"in this transformer: {_more(missing, 5)}")


def _check_targets(model: nn.Module, loras: Sequence[tuple[LoRA, float]]) -> dict[str, nn.Module]:
    """Every target must be a Linear of ``model`` with matching shapes; all problems at once."""
    modules = dict(model.named_modules())
    layers: dict[str, nn.Module] = {}
    errors = []
    for lora, _ in loras:
        missing = [pair.key_a for target, pair in lora.pairs.items() if target not in modules]
        if len(missing) == len(lora.pairs):
            raise unmatched_targets_error(lora, missing)
        for target, pair in lora.pairs.items():
            layer = modules.get(target)
            if not isinstance(layer, (nn.Linear, nn.QuantizedLinear)):
                what = "no such module" if layer is None else f"a {type(layer).__name__}, not a Linear"
                errors.append(f"{pair.key_a!r}: {what} at {target!r}")
                continue
            out_f, in_f = _linear_dims(layer)
            if pair.a.shape[1] != in_f or pair.b.shape[0] != out_f:
                errors.append(f"{pair.key_a!r} {list(pair.a.shape)} / {pair.key_b!r} {list(pair.b.shape)} do not "
                              f"fit {target}.weight [{out_f}, {in_f}]")
                continue
            extra = set(layer.keys()) - {"weight", "bias", "scales", "biases"}
            if extra:
                errors.append(f"{target}: quantized layer with {sorted(extra)}: fusion supports weight/scales/biases")
                continue
            layers[target] = layer
    if errors:
        src = ", ".join(sorted({lora.path for lora, _ in loras}))
        raise LoRAError(f"LoRA ({src}) does not fit the transformer: " + "; ".join(errors[:8])
                        + (f"; and {len(errors) - 8} more" if len(errors) > 8 else ""))
    return layers


@dataclass
class _FusedState:
    loras: tuple[tuple[str, float], ...]
    # module path -> {param name: original array}, or {param name: its dtype} when restoring from a file
    originals: dict[str, dict[str, Any]]
    restore_from: Checkpoint | None = None
    streamed: tuple[str, ...] = ()  # block layers a streamed model fuses as it reads them


def _restore_keys(checkpoint: Checkpoint, layers: dict[str, nn.Module]) -> None:
    """Every touched tensor must be in the checkpoint as the model holds it (a layer quantized
    after loading, for instance, could not be restored from the file)."""
    keys = checkpoint.component_keys("transformer")
    bad = []
    for target, layer in layers.items():
        for n in _fused_names(layer):
            ckey = keys.get(f"{target}.{n}")
            if ckey is None or checkpoint.shapes[ckey] != tuple(layer[n].shape):
                bad.append(f"{target}.{n}")
    if bad:
        raise LoRAError(f"{checkpoint.path} does not hold the model's current {bad[:4]}: it cannot restore them; "
                        f"fuse without restore_from to keep the original arrays instead")


def _fused_names(layer: nn.Module) -> tuple[str, ...]:
    if isinstance(layer, nn.QuantizedLinear):
        return ("weight", "scales", "biases") if layer.get("biases") is not None else ("weight", "scales")
    return ("weight",)


def fuse_loras(model: nn.Module, loras: Sequence[tuple[LoRA, float]], *,
               restore_from: Checkpoint | str | os.PathLike | None = None) -> list[str]:
    """Fuse ``[(lora, strength), ...]`` into ``model`` in place; returns the fused module paths.

    ``unfuse_loras`` restores the touched layers exactly. By default their original arrays are
    kept. The distillation LoRA touches nearly every Linear of the transformer, so that is close
    to a second copy of it; with ``restore_from`` = the checkpoint the model was loaded from,
    only the dtypes are kept and the restore re-reads those tensors from the file (the same
    cast as the load, so bit-exact).

    ``W ← bf16(W + Σ_i (B_i·s_i) @ A_i).astype(W.dtype)``, products in bfloat16, LoRAs
    aggregated in the given order. One layer's delta exists at a time (evaluated per layer).
    A ``QuantizedLinear`` is dequantized, fused and re-quantized with its own group size, bits
    and mode. That adds a second rounding on top of the layer's existing quantization error: up
    to one step of the new scales per element (MLX's affine quantizer also rounds each group's
    zero point, so it is not the ideal half step), and in a bf16 model a few bf16 roundings of
    the dequantized values. Measured on the test fixtures (q8, group 32): the fused float32
    model's outputs move by ~2e-3 relative; at q4 the step is 16x larger. Call ``unfuse_loras``
    before fusing another set.
    """
    state = getattr(model, "_lora_fusion", None)
    if state is not None:
        raise LoRAError(f"the model already has LoRAs fused ({list(state.loras)}); call unfuse_loras first")
    loras = list(loras)
    strengths = [float(s) for _, s in loras]
    # _load_model_weights: no LoRA, or all strengths exactly 0, loads the weights untouched. A mix
    # of zero and non-zero strengths still runs every targeted layer through the bf16 rounding.
    if not strengths or (min(strengths) == 0 and max(strengths) == 0):
        return []
    layers = _check_targets(model, loras)
    # a streamed model (memory="stream") fuses its block layers as each block is read
    streamer = getattr(model, "block_streamer", None)
    streamed = sorted(t for t in layers if streamer is not None and is_block_target(t))
    if restore_from is not None:
        restore_from = open_checkpoint(restore_from)
        _restore_keys(restore_from, {t: layer for t, layer in layers.items() if t not in streamed})
    originals: dict[str, dict[str, Any]] = {}
    for target in sorted(set(layers) - set(streamed)):
        layer = layers[target]
        products = [(lora.pairs[target], s) for (lora, _), s in zip(loras, strengths) if target in lora.pairs]
        originals[target] = {n: layer[n].dtype if restore_from is not None else layer[n]
                             for n in _fused_names(layer)}
        new = fused_layer_arrays(layer, products)
        mx.eval(new)  # deliberate: materialise this layer so its delta is freed before the next
        for n, v in new.items():
            layer[n] = v
    if streamed:  # lazily, as each block is read (block_streaming.py)
        streamer.set_loras(model, [(lora, s) for (lora, _), s in zip(loras, strengths)], streamed)
    model._lora_fusion = _FusedState(tuple((lora.path, s) for (lora, _), s in zip(loras, strengths)), originals,
                                     restore_from, tuple(streamed))
    return sorted(layers)


def fused_layer_arrays(layer: nn.Module, products: Sequence[tuple[LoRAPair, float]]) -> dict[str, mx.array]:
    """The fused arrays of one Linear (``weight``; a QuantizedLinear's ``weight``, ``scales`` and
    ``biases``, dequantized, fused and re-quantized with its own settings), lazily: the eager
    fusion and the streamed blocks' per-read fusion share this arithmetic."""
    deltas = aggregate_lora_products(products)
    if isinstance(layer, nn.QuantizedLinear):
        weight = mx.dequantize(layer.weight, layer.scales, layer.get("biases"), group_size=layer.group_size,
                               bits=layer.bits, mode=layer.mode)
        fused = mx.quantize(bf16_fuse(weight, deltas), group_size=layer.group_size, bits=layer.bits, mode=layer.mode)
        return dict(zip(_fused_names(layer), fused))
    return {"weight": bf16_fuse(layer.weight, deltas)}


def reopened_pair(pair: LoRAPair, opened: dict[str, dict[str, mx.array]]) -> LoRAPair:
    """``pair`` with freshly opened lazy factors (``opened`` caches one ``mx.load`` per file per
    call), so a streamed block's read does not keep the LoRA's data resident."""
    path = pair.path
    if not path:  # factors made in memory, not read from a file: used as they are (they stay resident)
        return pair
    if path not in opened:
        opened[path] = mx.load(path)
    return LoRAPair(opened[path][pair.key_a], opened[path][pair.key_b], pair.key_a, pair.key_b, path, pair.scale)


def unfuse_loras(model: nn.Module) -> bool:
    """Put back the exact arrays ``fuse_loras`` replaced; False when nothing was fused."""
    state = getattr(model, "_lora_fusion", None)
    if state is None:
        return False
    modules = dict(model.named_modules())
    if state.restore_from is None:
        for target, arrays in state.originals.items():
            for n, v in arrays.items():
                modules[target][n] = v
    else:
        weights, _ = state.restore_from.component_weights("transformer")  # lazy: only these tensors are read
        for target, dtypes in state.originals.items():
            # load_strict's cast; quantized payloads and scales keep their stored dtype, so no-op there
            restored = {n: weights[f"{target}.{n}"].astype(dt) for n, dt in dtypes.items()}
            mx.eval(restored)
            for n, v in restored.items():
                modules[target][n] = v
    if state.streamed:
        model.block_streamer.set_loras(model, [], [])
    model._lora_fusion = None
    return True


def active_loras(model: nn.Module) -> tuple[tuple[str, float], ...]:
    """(path, strength) of the LoRAs currently fused into ``model``; empty when none."""
    state = getattr(model, "_lora_fusion", None)
    return () if state is None else state.loras
