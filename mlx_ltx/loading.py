"""Open official LTX checkpoints and load components strictly.

The release is one safetensors file per model; each component is a key prefix in it
(the ``SDOps`` key maps in ``ltx_core/model/*/model_configurator.py``). The reference loads with
``strict=False`` (``ltx_core/loader/single_gpu_model_builder.py``), so a misnamed tensor silently
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

from . import model_files
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
    # (a split video-VAE file holds them bare: encoder.*, decoder.*, per_channel_statistics.*)
    "vae_encoder": KeyOps("vae_encoder", (("vae.encoder.", ""), ("encoder.", ""),
                                          ("vae.per_channel_statistics.", "per_channel_statistics."),
                                          ("per_channel_statistics.", "per_channel_statistics."))),
    "vae_decoder": KeyOps("vae_decoder", (("vae.decoder.", ""), ("decoder.", ""),
                                          ("vae.per_channel_statistics.", "per_channel_statistics."),
                                          ("per_channel_statistics.", "per_channel_statistics."))),
    "audio_vae_encoder": KeyOps("audio_vae_encoder", (("audio_vae.encoder.", ""),
                                                      ("audio_vae.per_channel_statistics.",
                                                       "per_channel_statistics."))),
    "audio_vae_decoder": KeyOps("audio_vae_decoder", (("audio_vae.decoder.", ""),
                                                      ("audio_vae.per_channel_statistics.",
                                                       "per_channel_statistics."))),
    "vocoder": KeyOps("vocoder", (("vocoder.", ""),)),
    # DURATION_HEAD_KEY_OPS (LTX-2.5: its own file, or alongside other components)
    "duration_head": KeyOps("duration_head", (("duration_head.", ""),)),
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
            header = json.loads(f.read(n))
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder; expected a .safetensors file") from None
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a safetensors file ({e})") from None
    # a truncated file (an interrupted download or copy) is refused here, before anything loads
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: its header describes {8 + n + end:,} bytes, the file has "
                              f"{size:,} (an incomplete download or copy?); download or convert it again")
    return header


CONVERTED_CONFIG = "config.json"
CONVERTED_FORMAT = "mlx_ltx"


class Checkpoint:
    """An official single-file checkpoint, an upsampler file, or a folder written by
    ``convert.py``: metadata and key index, read from the headers; tensors are opened per
    component and never all at once.

    A converted folder keeps the official key names (split over one or more files per
    component) and a ``config.json`` holding the source's metadata, so everything downstream
    treats both forms alike."""

    def __init__(self, path: "str | os.PathLike | dict[str, str]", *, variant: str | None = None,
                 video_decoder: str | None = None):
        """``path``: a single file, a converted folder, a split folder laid out like the Hugging Face
        2.5 repo, or {role: file} for split files given one by one (roles of ``model_files.ROLES``).
        ``variant`` ("dev" / "distilled") picks the transformer of a split folder that holds both;
        ``video_decoder`` ("diffusion" / "conv") the video VAE file of one holding both (default: the
        release's default, the diffusion VAE), and for a single file or a converted folder it must
        name the decoder the checkpoint has."""
        self.quantization: dict[str, Any] | None = None
        self.files: dict[str, str] = {}  # checkpoint key -> file holding it
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        #: per role (model_files.ROLES), the file and the parsed metadata of that file; a single
        #: file serves every role but the text encoder
        self.role_files: dict[str, str] = {}
        self.role_meta: dict[str, dict[str, Any]] = {}
        self.layout = "single"
        if isinstance(path, dict):
            self.path = os.fspath(path["transformer"]) if "transformer" in path else ""
            self._open_split(model_files.from_paths(path, variant, video_decoder), self.path)
            return
        self.path = resolve_model_path(path)
        if os.path.isdir(self.path) and not os.path.isfile(os.path.join(self.path, CONVERTED_CONFIG)) \
                and model_files.is_split_folder(self.path):
            self._open_split(model_files.scan_folder(self.path, variant, video_decoder), self.path)
            return
        if os.path.isdir(self.path):
            self._open_folder()
        else:
            self.metadata: dict[str, Any] = self._index(self.path)
            self.role_files = {r: self.path for r in model_files.ROLES if r != "text_encoder"}
        if video_decoder is not None:  # one video VAE only: it must be the one asked for
            vae = model_files.FileInfo(self.path, "video_vae", self.role_metadata("video_vae"), ())
            model_files.pick_video_vae([vae], self.path, video_decoder)

    def _open_split(self, files: "model_files.SplitFiles", where: str) -> None:
        self.layout = "split"
        for role, info in files.roles.items():
            self.role_meta[role] = self._index(info.path)
            self.role_files[role] = info.path
        self.metadata = model_files.assembled_metadata(files)
        # what a converted folder's config.json says, so the pipelines find the side files alike
        self.info = {"variant": files.variant, "upsamplers": files.upsamplers, "loras": files.loras}
        if "text_encoder" in self.role_files:
            self.info["text_encoder"] = self.role_files["text_encoder"]

    def role_path(self, role: str) -> str | None:
        """The file of a component role, or None (a single file has no text encoder; a split
        model may lack the duration head)."""
        return self.role_files.get(role)

    def role_metadata(self, role: str) -> dict[str, Any]:
        """The parsed ``__metadata__`` of the role's own file (e.g. the video-VAE file's
        ``model_version``, which the image CRF follows); a single file's metadata for every role."""
        return self.role_meta.get(role, self.metadata)

    def _index(self, path: str) -> dict[str, Any]:
        header = read_safetensors_header(path)
        metadata = parse_metadata(header.pop("__metadata__", None))
        for k, v in header.items():
            if k in self.files:
                raise CheckpointError(f"{path}: tensor {k!r} is also in {self.files[k]}")
            self.files[k] = path
            self.shapes[k] = tuple(v["shape"])
            self.dtypes[k] = v["dtype"]
        return metadata

    def _open_folder(self) -> None:
        cfg_path = os.path.join(self.path, CONVERTED_CONFIG)
        if not os.path.isfile(cfg_path):
            raise CheckpointError(f"{self.path}: a folder without {CONVERTED_CONFIG}; expected a folder written by "
                                  f"convert.py or an official .safetensors file")
        with open(cfg_path) as f:
            info = json.load(f)
        if info.get("format") != CONVERTED_FORMAT:
            raise CheckpointError(f"{cfg_path}: not an mlx_ltx model folder (format={info.get('format')!r})")
        self.info = info
        self.metadata = info["metadata"]
        self.quantization = info.get("quantization")
        self.layout = info.get("layout", "single")
        for files in info["components"].values():
            for name in files:
                self._index(os.path.join(self.path, name))
        self.role_meta = info.get("role_metadata", {})
        self.role_files = {r: os.path.join(self.path, f) for r, f in (info.get("role_files") or {}).items()}
        if info.get("text_encoder"):
            self.role_files.setdefault("text_encoder", os.path.join(self.path, info["text_encoder"]))

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r}, {len(self.shapes)} tensors)"

    @cached_property
    def config(self) -> LTXConfig:
        if self.layout == "split":
            for section in model_files.SECTION_ROLES:
                if section not in self.metadata.get("config", {}):
                    raise model_files.missing_section_error(self.path, section)
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

    def component_shapes(self, component: str) -> dict[str, tuple[int, ...]]:
        """{module key: shape} of a component: what builders read widths from."""
        return {new: self.shapes[old] for new, old in self.component_keys(component).items()}

    def has_component(self, component: str) -> bool:
        return bool(self.component_keys(component))

    def component_weights(self, component: str) -> tuple[dict[str, mx.array], dict[str, str]]:
        """Lazily opened tensors of one component, renamed to module keys, and the map back
        to the checkpoint keys (for error messages)."""
        names = self.component_keys(component)
        opened: dict[str, dict[str, mx.array]] = {}
        weights = {}
        for new, old in names.items():
            path = self.files[old]
            if path not in opened:
                opened[path] = mx.load(path)  # lazy: unselected tensors are dropped unread
            weights[new] = opened[path][old]
        return weights, names


def open_checkpoint(checkpoint: "Checkpoint | str | os.PathLike") -> "Checkpoint":
    """A ``Checkpoint`` as it is, or one opened from a path / repo id (the public calls take both)."""
    return checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)


def resolve_model_path(spec: str | os.PathLike) -> str:
    """A local file or folder as it is; otherwise a Hugging Face repo id of a converted folder,
    fetched (or found in the HF cache, which offline mode uses) with huggingface-hub."""
    spec = os.fspath(spec)
    if os.path.exists(spec):
        return spec
    if spec.count("/") != 1 or spec.endswith(".safetensors"):
        raise CheckpointError(f"model not found: {spec} (give an official .safetensors file, a folder made by "
                              f"convert.py, or the Hugging Face repo id of such a folder)")
    from huggingface_hub import snapshot_download

    try:
        # the config first: the official repos hold every release file (100+ GB), never fetch them whole
        folder = snapshot_download(spec, allow_patterns=[CONVERTED_CONFIG])
        config_path = os.path.join(folder, CONVERTED_CONFIG)
        is_converted = False
        if os.path.isfile(config_path):
            with open(config_path) as f:
                is_converted = json.load(f).get("format") == CONVERTED_FORMAT
    except Exception as e:  # network, auth, missing repo: say which and what to do
        raise CheckpointError(f"could not fetch {spec!r} from Hugging Face ({type(e).__name__}: {e}); "
                              f"pass a local path instead") from None
    if not is_converted:
        raise CheckpointError(f"{spec!r} is not a model folder made by convert.py; convert the official release "
                              f"first (python convert.py --source {spec} --variant distilled --out DIR) or pass a "
                              f"local .safetensors file")
    try:
        return snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "text_encoder/*"])
    except Exception as e:
        raise CheckpointError(f"could not fetch {spec!r} from Hugging Face ({type(e).__name__}: {e}); "
                              f"pass a local path instead") from None


def _is_float(a: mx.array) -> bool:
    return mx.issubdtype(a.dtype, mx.floating)


def load_strict(
    module: nn.Module,
    weights: dict[str, mx.array],
    *,
    source: str,
    origin: Callable[[str], str] | None = None,
    dtype: mx.Dtype | None = None,
    quantization: dict[str, Any] | None = None,
    quantize: bool = True,
) -> nn.Module:
    """Load ``weights`` (module keys, reference layouts) into ``module`` with exact checks.
    ``origin`` maps a module key to the checkpoint key it came (or should come) from.
    Layers stored with ``scales`` are quantized with ``quantization`` first, unless the caller
    has already quantized the module (``quantize=False``; e.g. mlx-lm's per-layer settings).

    A module may define ``sanitize(key, value) -> value`` for the layout changes MLX needs
    (e.g. channels-last convolution kernels); it must not rename keys. Floating tensors are cast
    to ``dtype`` (as the reference's ``_cast_floating_sd``), except 0-d scalars, which the
    reference keeps in float32, and keys the module lists in ``keep_float32_keys``.
    """
    sanitize: Callable[[str, mx.array], mx.array] | None = getattr(module, "sanitize", None)
    keep32 = set(getattr(module, "keep_float32_keys", ()))
    quantized = {k[: -len(".scales")] for k in weights if k.endswith(".scales")}
    if quantized and quantize:
        # as mlx-lm: exactly the layers stored with scales are quantized, with the recorded settings
        if not quantization:
            raise CheckpointError(f"{source}: quantized tensors (e.g. {sorted(quantized)[0]!r}.scales) but no "
                                  f"quantization settings in the model's config.json")
        nn.quantize(module, group_size=quantization["group_size"], bits=quantization["bits"],
                    mode=quantization.get("mode", "affine"), class_predicate=lambda p, m: p in quantized)
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
        layer, leaf = k.rsplit(".", 1) if "." in k else ("", k)
        if _is_float(v) and not (layer in quantized and leaf in ("scales", "biases")):
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
    return load_strict(module, weights, source=checkpoint.path, dtype=dtype, quantization=checkpoint.quantization,
                       origin=lambda k: origin.get(k) or ops.source_key(k))
