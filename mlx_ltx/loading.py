"""Open official LTX checkpoints and load components strictly.

The release is one safetensors file per model; each component is a key prefix in it
(REFERENCE-MAP §1.3). The reference loads with ``strict=False``, so a misnamed tensor silently
stays at its random init there. Here every component load checks the full key set and every
shape, and an error names the offending keys and the file.

Weights are opened with ``mx.load``, which maps tensors lazily: nothing is read until a tensor
is evaluated, and keys a component does not select are never read at all.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .config import LTXConfig, UpsamplerConfig, parse_metadata


class CheckpointError(ValueError):
    """A checkpoint is unreadable, or its tensors do not match the model built from its config."""


@dataclass(frozen=True)
class KeyOps:
    """Which checkpoint keys belong to a component and what they are called in the module.

    ``renames`` are (checkpoint prefix, module prefix) pairs; a key is selected by the first
    prefix it starts with and renamed by replacing that prefix once (prefix semantics, so the
    2.3 vocoder's ``vocoder.vocoder.*`` becomes ``vocoder.*``, as ``_strip_vocoder_prefix``)."""

    name: str
    renames: tuple[tuple[str, str], ...]
    exclude: tuple[str, ...] = ()

    def apply(self, key: str) -> str | None:
        if key.startswith(self.exclude):
            return None
        for src, dst in self.renames:
            if key.startswith(src):
                return dst + key[len(src):]
        return None

    def source_key(self, module_key: str) -> str:
        """The checkpoint key a module key is expected under (for naming missing tensors)."""
        src, dst = max((r for r in self.renames if module_key.startswith(r[1])), key=lambda r: len(r[1]))
        return src + module_key[len(dst):]


_CONNECTORS = ("model.diffusion_model.video_embeddings_connector.",
               "model.diffusion_model.audio_embeddings_connector.")

# The reference's SDOps twins are named in the comments.
COMPONENTS: dict[str, KeyOps] = {
    # LTXV_MODEL_COMFY_RENAMING_MAP (the connectors share the prefix but are their own component)
    "transformer": KeyOps("transformer", (("model.diffusion_model.", ""),), exclude=_CONNECTORS),
    # EMBEDDINGS_PROCESSOR_KEY_OPS
    "video_connector": KeyOps("video_connector", ((_CONNECTORS[0], ""),)),
    "audio_connector": KeyOps("audio_connector", ((_CONNECTORS[1], ""),)),
    "text_projection": KeyOps("text_projection", (("text_embedding_projection.", ""),)),
    # VAE_ENCODER/DECODER_COMFY_KEYS_FILTER: encoder and decoder share the latent statistics
    "vae_encoder": KeyOps("vae_encoder", (("vae.encoder.", ""),
                                          ("vae.per_channel_statistics.", "per_channel_statistics."))),
    "vae_decoder": KeyOps("vae_decoder", (("vae.decoder.", ""),
                                          ("vae.per_channel_statistics.", "per_channel_statistics."))),
    "audio_vae_encoder": KeyOps("audio_vae_encoder", (("audio_vae.encoder.", ""),
                                                      ("audio_vae.per_channel_statistics.",
                                                       "per_channel_statistics."))),
    "audio_vae_decoder": KeyOps("audio_vae_decoder", (("audio_vae.decoder.", ""),
                                                      ("audio_vae.per_channel_statistics.",
                                                       "per_channel_statistics."))),
    "vocoder": KeyOps("vocoder", (("vocoder.", ""),)),
    # upsampler files hold their keys unprefixed
    "upsampler": KeyOps("upsampler", (("", ""),)),
}


def read_safetensors_header(path: str) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, ``__metadata__``)
    without touching the tensor data."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 * 2**20:
                raise CheckpointError(f"{path}: safetensors header of {n} bytes; is this a safetensors file?")
            return json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a safetensors file ({e})") from None


class Checkpoint:
    """One official single-file checkpoint (or an upsampler file): metadata and key index,
    read from the header; tensors are opened per component and never all at once."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        header = read_safetensors_header(self.path)
        self.metadata: dict[str, Any] = parse_metadata(header.pop("__metadata__", None))
        self.shapes: dict[str, tuple[int, ...]] = {k: tuple(v["shape"]) for k, v in header.items()}
        self.dtypes: dict[str, str] = {k: v["dtype"] for k, v in header.items()}

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r}, {len(self.shapes)} tensors)"

    @cached_property
    def config(self) -> LTXConfig:
        return LTXConfig.from_metadata(self.metadata, source=self.path)

    @cached_property
    def upsampler_config(self) -> UpsamplerConfig:
        cfg = self.metadata.get("config")
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{self.path}: no JSON 'config' in __metadata__; is it an LTX upsampler file?")
        return UpsamplerConfig.from_dict(cfg)

    def component_keys(self, component: str) -> dict[str, str]:
        """{module key: checkpoint key} for a component of ``COMPONENTS``."""
        ops = COMPONENTS[component]
        out: dict[str, str] = {}
        for key in self.shapes:
            new = ops.apply(key)
            if new is not None:
                out[new] = key
        return out

    def has_component(self, component: str) -> bool:
        return bool(self.component_keys(component))

    def component_weights(self, component: str) -> tuple[dict[str, mx.array], dict[str, str]]:
        """Lazily opened tensors of one component, renamed to module keys, and the map back
        to the checkpoint keys (for error messages)."""
        names = self.component_keys(component)
        if not names:
            return {}, {}
        arrays = mx.load(self.path)  # lazy: unselected tensors are dropped unread
        return {new: arrays[old] for new, old in names.items()}, names


def _is_float(a: mx.array) -> bool:
    return mx.issubdtype(a.dtype, mx.floating)


def load_strict(
    module: nn.Module,
    weights: dict[str, mx.array],
    *,
    source: str,
    origin: Callable[[str], str] | None = None,
    dtype: mx.Dtype | None = None,
) -> nn.Module:
    """Load ``weights`` (module keys, reference layouts) into ``module`` with exact checks.
    ``origin`` maps a module key to the checkpoint key it came (or should come) from.

    A module may define ``sanitize(key, value) -> value`` for the layout changes MLX needs
    (e.g. channels-last convolution kernels); it must not rename keys. Floating tensors are cast
    to ``dtype`` (as the reference's ``_cast_floating_sd``), except 0-d scalars, which the
    reference keeps in float32, and keys the module lists in ``keep_float32_keys``.
    """
    sanitize: Callable[[str, mx.array], mx.array] | None = getattr(module, "sanitize", None)
    keep32 = set(getattr(module, "keep_float32_keys", ()))
    expected = dict(tree_flatten(module.parameters()))

    def name(k: str) -> str:
        src = origin(k) if origin is not None else k
        return f"{src!r} (module key {k!r})" if src != k else repr(k)

    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    prepared: dict[str, mx.array] = {}
    mis_shaped: list[str] = []
    for k in sorted(set(expected) & set(weights)):
        v = sanitize(k, weights[k]) if sanitize is not None else weights[k]
        if tuple(v.shape) != tuple(expected[k].shape):
            mis_shaped.append(f"{name(k)}: checkpoint {tuple(weights[k].shape)}, model expects "
                              f"{tuple(expected[k].shape)}")
            continue
        if _is_float(v):
            if k in keep32 or v.ndim == 0:
                v = v.astype(mx.float32)
            elif dtype is not None:
                v = v.astype(dtype)
        prepared[k] = v
    if missing or extra or mis_shaped:
        lines = [f"{source}: the {type(module).__name__} built from this checkpoint's config does not match its "
                 f"tensors:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(name(k) for k in missing[:20])
                         + (" ..." if len(missing) > 20 else ""))
        if extra:
            lines.append(f"  unexpected ({len(extra)}): " + ", ".join(name(k) for k in extra[:20])
                         + (" ..." if len(extra) > 20 else ""))
        if mis_shaped:
            lines.append(f"  wrong shape ({len(mis_shaped)}): " + "; ".join(mis_shaped[:20]))
        raise CheckpointError("\n".join(lines))
    module.update(tree_unflatten(list(prepared.items())))
    return module


def load_component(
    checkpoint: Checkpoint, component: str, module: nn.Module, dtype: mx.Dtype | None = None
) -> nn.Module:
    """Select ``component``'s tensors from ``checkpoint`` and load them strictly into ``module``."""
    weights, origin = checkpoint.component_weights(component)
    ops = COMPONENTS[component]
    if not weights:
        expected = [ops.source_key(k) for k, _ in tree_flatten(module.parameters())]
        raise CheckpointError(
            f"{checkpoint.path}: the {component} is missing: none of its {len(expected)} tensors is there "
            f"(keys starting with {[src for src, _ in ops.renames]}, e.g. {expected[:3]})"
        )
    return load_strict(module, weights, source=checkpoint.path, dtype=dtype,
                       origin=lambda k: origin.get(k) or ops.source_key(k))
