"""The LTX-2.5 text encoder: an LTX-finetuned Gemma 4 "unified" (``gemma4_unified``) packed in one
safetensors file with its config, tokenizer and text projection (``text_encoders/gemma4-12b-with-
proj-ltx-2.5-bf16.safetensors``), on mlx-lm's ``gemma4_text``.

Reference: ``ltx_core/text_encoders/gemma/gemma_assets.py`` (``GemmaAssets.from_single_file``,
``build_gemma_hf_tokenizer``), ``encoders/encoder_configurator.py`` (the key ops,
``_check_gemma_version``) and transformers' ``gemma4_unified`` (config defaults, forward).

mlx-lm's defaults are those of the small dense Gemma-4 models (per-layer embeddings, 20 KV-shared
layers, double-wide MLPs, a 512 window); the unified model has none of them, so every argument
is passed explicitly from the file's config with transformers' defaults filled in. The masks and
the walk over the layers are ``gemma.GemmaHiddenStates``, shared with Gemma 3.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models import gemma4_text

from ..loading import CheckpointError, load_strict, read_safetensors_header
from .activations import gelu_tanh_rounded_once
from .gemma import (
    TOKENIZER_MAX_LENGTH,
    GemmaHiddenStates,
    GemmaTokenizer,
    chat_template_from_sidecars,
    quantize_like_checkpoint,
)

logger = logging.getLogger(__name__)

MODEL_TYPE = "gemma4_unified"
GEMMA_CONFIG_METADATA_KEY = "gemma_config"
TOKENIZER_JSON_TENSOR_KEY = "tokenizer_json"
HF_ASSET_TENSOR_PREFIX = "hf_asset__"
# Older / Comfy packs store these as metadata strings instead of hf_asset__ tensors (gemma_assets.py)
_METADATA_FALLBACK_FILENAMES = ("tokenizer_config.json", "processor_config.json", "chat_template.jinja",
                                "generation_config.json")

# transformers' Gemma4UnifiedTextConfig defaults (configuration_gemma4_unified.py), never mlx-lm's:
# the released config may leave any of them out.
_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_144, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 30,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 262_144, "rms_norm_eps": 1e-6, "pad_token_id": 0, "attention_bias": False,
    "sliding_window": 1024, "final_logit_softcapping": None, "use_bidirectional_attention": "vision",
    "num_global_key_value_heads": None, "global_head_dim": 512, "attention_k_eq_v": False,
    "num_kv_shared_layers": 0, "use_double_wide_mlp": False,
}
_DEFAULT_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                 "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                    "rope_theta": 1_000_000.0}}
_DEFAULT_THETA = 10_000.0  # RotaryEmbeddingConfigMixin.default_theta
_LAYER_TYPES = ("sliding_attention", "full_attention")
# Gemma4UnifiedConfig's multimodal placeholder ids: the reference swaps them for the pad id
# before the embedding lookup (Gemma4UnifiedModel.forward)
_PLACEHOLDER_DEFAULTS = {"image_token_id": 258_880, "video_token_id": 258_884, "audio_token_id": 258_881}

# Non-language-model tensors of the bundle: Comfy and HF towers (the HF ones start with "model.",
# so they are dropped before the LM rename), the LTX text projection and connectors (read by the
# embeddings processor), and the packed tokenizer and sidecars.
_DROPPED_PREFIXES = ("vision_model.", "multi_modal_projector.", "audio_projector.", "model.vision_embedder.",
                     "model.embed_vision.", "model.embed_audio.", "text_embedding_projection.",
                     "model.diffusion_model.", TOKENIZER_JSON_TENSOR_KEY, HF_ASSET_TENSOR_PREFIX)
# _gemma4_unified_is_comfy_flat: the probe key of ComfyUI's flat LM layout
_COMFY_FLAT_PROBE = "model.layers.0.post_feedforward_layernorm.weight"


@dataclass(frozen=True)
class Gemma4Config:
    """The text part of a ``gemma4_unified`` config, transformers' defaults filled in, and the
    top-level fields the encoder reads (the provenance stamp, the placeholder ids)."""

    model_type: str
    gemma_version: str | None
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    num_global_key_value_heads: int | None
    head_dim: int
    global_head_dim: int
    attention_k_eq_v: bool
    num_kv_shared_layers: int
    use_double_wide_mlp: bool
    rms_norm_eps: float
    sliding_window: int
    max_position_embeddings: int
    final_logit_softcapping: float | None
    layer_types: tuple[str, ...]
    rope_parameters: dict[str, dict[str, Any]]
    pad_token_id: int
    placeholder_token_ids: tuple[int, ...]
    quantization: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, config: dict[str, Any], source: str = GEMMA_CONFIG_METADATA_KEY) -> Gemma4Config:
        model_type = config.get("model_type")
        if model_type != MODEL_TYPE:
            raise CheckpointError(f"{source}: model_type={model_type!r}; an LTX-2.5 text-encoder bundle holds "
                                  f"{MODEL_TYPE!r} (a Gemma-3 text encoder is a Hugging Face folder)")
        t = {**_TEXT_DEFAULTS, **(config.get("text_config") or {})}
        if t["use_bidirectional_attention"] == "all":
            raise CheckpointError(f"{source}: use_bidirectional_attention='all' (non-causal attention) is not "
                                  f"supported; the LTX text encoder is causal ('vision' or null)")
        if t["hidden_activation"] != "gelu_pytorch_tanh":
            raise CheckpointError(f"{source}: hidden_activation={t['hidden_activation']!r} is not supported "
                                  f"(Gemma 4 uses 'gelu_pytorch_tanh')")
        if t["attention_bias"]:
            raise CheckpointError(f"{source}: attention_bias=true is not supported (mlx-lm's Gemma 4 is bias-free)")
        n = int(t["num_hidden_layers"])
        layer_types = list(t.get("layer_types") or
                           ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n)])
        if len(layer_types) != n or any(lt not in _LAYER_TYPES for lt in layer_types):
            raise CheckpointError(f"{source}: layer_types {layer_types!r} do not give one of {_LAYER_TYPES} "
                                  f"for each of the {n} layers")
        if layer_types[-1] != "full_attention":  # Gemma4UnifiedTextConfig.__post_init__ forces it too
            logger.warning("%s: the last layer must use full_attention; forcing it, as transformers does", source)
            layer_types[-1] = "full_attention"
        quantization = config.get("quantization") or config.get("quantization_config")
        return cls(
            model_type=model_type,
            gemma_version=config.get("gemma_version"),
            vocab_size=int(t["vocab_size"]),
            hidden_size=int(t["hidden_size"]),
            intermediate_size=int(t["intermediate_size"]),
            num_hidden_layers=n,
            num_attention_heads=int(t["num_attention_heads"]),
            num_key_value_heads=int(t["num_key_value_heads"]),
            num_global_key_value_heads=t["num_global_key_value_heads"],
            head_dim=int(t["head_dim"]),
            global_head_dim=int(t["global_head_dim"]),
            attention_k_eq_v=bool(t["attention_k_eq_v"]),
            num_kv_shared_layers=int(t["num_kv_shared_layers"]),
            use_double_wide_mlp=bool(t["use_double_wide_mlp"]),
            rms_norm_eps=float(t["rms_norm_eps"]),
            sliding_window=int(t["sliding_window"]),
            max_position_embeddings=int(t["max_position_embeddings"]),
            final_logit_softcapping=t["final_logit_softcapping"],
            layer_types=tuple(layer_types),
            rope_parameters=_rope_parameters(t, layer_types, source),
            pad_token_id=int(t["pad_token_id"] if t["pad_token_id"] is not None else 0),
            placeholder_token_ids=tuple(int(config.get(k, v)) for k, v in _PLACEHOLDER_DEFAULTS.items()
                                        if config.get(k, v) is not None),
            quantization=quantization if isinstance(quantization, dict) and "bits" in quantization else None,
        )


def _rope_parameters(text: dict[str, Any], layer_types: list[str], source: str) -> dict[str, dict[str, Any]]:
    """Per layer type, in the form mlx-lm's ``initialize_rope`` reads, after transformers'
    ``standardize_rope_params`` (rope_type "default", rope_theta the config's or 1e4 when absent).
    Sliding layers rotate ``head_dim`` fully; full layers use "proportional" RoPE on
    ``global_head_dim`` (the first ``partial_rotary_factor`` of the frequency pairs rotate)."""
    params = text.get("rope_parameters") or _DEFAULT_ROPE
    out = {}
    for layer_type in dict.fromkeys(layer_types):
        if not isinstance(params.get(layer_type), dict):
            raise CheckpointError(f"{source}: rope_parameters has no entry for {layer_type!r}")
        p = dict(params[layer_type])
        p["rope_type"] = p.get("rope_type", p.get("type", "default"))
        p["rope_theta"] = float(p.get("rope_theta", text.get("rope_theta") or _DEFAULT_THETA))
        if p["rope_type"] not in ("default", "proportional"):
            raise CheckpointError(f"{source}: rope_type={p['rope_type']!r} for {layer_type} is not supported "
                                  f"(Gemma 4 uses 'default' and 'proportional')")
        if p["rope_type"] == "proportional":
            dim = int(text["global_head_dim"] if layer_type == "full_attention" else text["head_dim"])
            rotated = p.get("partial_rotary_factor", 1.0) * dim
            # transformers rotates int(rotated // 2) pairs, mlx-lm ceil(int(rotated) / 2): equal when even
            if rotated != int(rotated) or int(rotated) % 2:
                raise CheckpointError(f"{source}: partial_rotary_factor {p.get('partial_rotary_factor')} of a "
                                      f"{dim}-wide head rotates {rotated} dimensions; an even count is needed")
        out[layer_type] = p
    return out


@dataclass(frozen=True)
class GemmaAssets:
    """``GemmaAssets.from_single_file``: the metadata (config), tokenizer bytes and sidecars of a
    bundle; weights stay in the file until the model loads them."""

    path: str
    metadata: dict[str, str]
    tokenizer_json: bytes
    sidecars: dict[str, bytes]

    @classmethod
    def from_single_file(cls, path: str | os.PathLike) -> GemmaAssets:
        path = os.fspath(path)
        header = read_safetensors_header(path)
        metadata = header.pop("__metadata__", None) or {}
        if GEMMA_CONFIG_METADATA_KEY not in metadata:
            _config_from_metadata(path, metadata)  # raises, naming what is missing
        if TOKENIZER_JSON_TENSOR_KEY not in header:
            raise CheckpointError(f"{path}: no {TOKENIZER_JSON_TENSOR_KEY!r} tensor (the bundled tokenizer)")
        byte_keys = [k for k in header if k == TOKENIZER_JSON_TENSOR_KEY or k.startswith(HF_ASSET_TENSOR_PREFIX)]
        tensors = mx.load(path)  # lazy: only the byte tensors are read
        # uint8, or int8 in Comfy packs (_tensor_to_bytes): the same bytes either way
        data = {k: np.array(tensors[k]).astype(np.uint8).tobytes() for k in byte_keys}
        sidecars = {k[len(HF_ASSET_TENSOR_PREFIX):]: v for k, v in data.items() if k != TOKENIZER_JSON_TENSOR_KEY}
        for name in _METADATA_FALLBACK_FILENAMES:
            if name not in sidecars and name in metadata:
                sidecars[name] = metadata[name].encode()
        if "tokenizer_config.json" not in sidecars:
            raise CheckpointError(f"{path}: no tokenizer_config.json (tensor {HF_ASSET_TENSOR_PREFIX}"
                                  f"tokenizer_config.json or metadata string)")
        return cls(path, metadata, data[TOKENIZER_JSON_TENSOR_KEY], sidecars)

    @property
    def config(self) -> Gemma4Config:
        return _config_from_metadata(self.path, self.metadata)

    def tokenizer(self, max_length: int = TOKENIZER_MAX_LENGTH) -> GemmaTokenizer:
        """``build_gemma_hf_tokenizer`` wrapped as ``LTXGemmaTokenizer`` (BOS prepended: Gemma 4's
        tokenizer adds none; left padding to ``max_length``)."""
        return GemmaTokenizer.from_assets(self.tokenizer_json, json.loads(self.sidecars["tokenizer_config.json"]),
                                          chat_template_from_sidecars(self.sidecars), max_length)


def _config_from_metadata(path: str, metadata: dict[str, str]) -> Gemma4Config:
    raw = metadata.get(GEMMA_CONFIG_METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: no {GEMMA_CONFIG_METADATA_KEY!r} in __metadata__; not a text-encoder "
                              f"bundle (expected e.g. text_encoders/gemma4-12b-with-proj-ltx-2.5-bf16.safetensors)")
    config = json.loads(raw)
    # a quantized bundle records its settings as mlx-lm's config.json does (inside the config),
    # or as a metadata entry of its own
    if "quantization" in metadata and "quantization" not in config:
        config["quantization"] = json.loads(metadata["quantization"])
    return Gemma4Config.from_dict(config, source=f"{path} ({GEMMA_CONFIG_METADATA_KEY})")


def read_gemma4_config(path: str | os.PathLike) -> Gemma4Config:
    """A bundle's config, from the header alone."""
    path = os.fspath(path)
    return _config_from_metadata(path, read_safetensors_header(path).get("__metadata__") or {})


def bundle_model_type(path: str | os.PathLike) -> str | None:
    """The ``model_type`` of a bundle's ``gemma_config``, from the header alone (None without one)."""
    metadata = read_safetensors_header(os.fspath(path)).get("__metadata__") or {}
    raw = metadata.get(GEMMA_CONFIG_METADATA_KEY)
    return json.loads(raw).get("model_type") if raw else None


class _Gemma4MLP(gemma4_text.MLP):
    """GELU(tanh) rounded once, as torch's ``gelu_pytorch_tanh`` (see ``gemma._GemmaMLP``)."""

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(gelu_tanh_rounded_once(self.gate_proj(x)) * self.up_proj(x))


class Gemma4LanguageModel(GemmaHiddenStates):
    """mlx-lm's ``gemma4_text.Model`` under ``language_model`` (keys ``language_model.model.*``)."""

    def __init__(self, config: Gemma4Config):
        super().__init__()
        self.config = config
        args = gemma4_text.ModelArgs(
            model_type="gemma4_text", hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
            intermediate_size=config.intermediate_size, num_attention_heads=config.num_attention_heads,
            head_dim=config.head_dim, global_head_dim=config.global_head_dim, rms_norm_eps=config.rms_norm_eps,
            vocab_size=config.vocab_size, vocab_size_per_layer_input=config.vocab_size,
            num_key_value_heads=config.num_key_value_heads,
            num_global_key_value_heads=config.num_global_key_value_heads,
            num_kv_shared_layers=config.num_kv_shared_layers, pad_token_id=config.pad_token_id,
            hidden_size_per_layer_input=0,  # the unified model has no per-layer embeddings
            rope_parameters=config.rope_parameters, sliding_window=config.sliding_window,
            max_position_embeddings=config.max_position_embeddings, attention_k_eq_v=config.attention_k_eq_v,
            final_logit_softcapping=config.final_logit_softcapping, use_double_wide_mlp=config.use_double_wide_mlp,
            enable_moe_block=False, layer_types=list(config.layer_types), tie_word_embeddings=True,
        )
        self.language_model = gemma4_text.Model(args)
        inner = self.language_model.model
        for layer in inner.layers:
            layer.mlp.__class__ = _Gemma4MLP  # same parameters, torch's activation rounding
        # the layers whose keys and values a KV-shared layer reads (the last non-shared one of its type)
        self._kv_sources = frozenset(inner.previous_kvs[config.num_hidden_layers - config.num_kv_shared_layers:])

    def _embedding_ids(self, input_ids: mx.array) -> mx.array:
        placeholders = mx.array(self.config.placeholder_token_ids, dtype=input_ids.dtype)
        is_placeholder = (input_ids[..., None] == placeholders).any(-1)
        return mx.where(is_placeholder, mx.array(self.config.pad_token_id, input_ids.dtype), input_ids)

    def _layer_outputs(self, h: mx.array, masks: dict[str, mx.array]):
        # mlx-lm's layers return (h, (keys, values), offset); a KV-shared layer takes those of
        # its source layer (Gemma4TextModel.previous_kvs) instead of computing its own
        inner = self.language_model.model
        kept: dict[int, tuple] = {}
        for i, (layer, source) in enumerate(zip(inner.layers, inner.previous_kvs)):
            shared_kv, offset = kept.get(source, (None, None))
            h, kv, offset = layer(h, masks[layer.layer_type], None, shared_kv=shared_kv, offset=offset)
            if i in self._kv_sources:
                kept[i] = (kv, offset)
            yield h


def _module_key(key: str, comfy_flat: bool) -> str | None:
    """Bundle key -> ``Gemma4LanguageModel`` key; None for the tensors the LM does not hold
    (``_build_gemma4_unified_llm_key_ops``). Keys of neither layout are kept as they are, so
    that strict loading names them."""
    if key.startswith(_DROPPED_PREFIXES):
        return None
    prefix = "model." if comfy_flat else "model.language_model."
    if key.startswith(prefix):
        return "language_model.model." + key[len(prefix):]
    return key


def language_model_tensors(path: str | os.PathLike) -> list[tuple[str, str, tuple[int, ...]]]:
    """(key, stored dtype, shape) of the bundle's language-model tensors, from the header alone
    (what the memory estimates count: the towers, projection and byte tensors are never loaded)."""
    header = read_safetensors_header(os.fspath(path))
    header.pop("__metadata__", None)
    comfy_flat = _COMFY_FLAT_PROBE in header or not any(k.startswith("model.language_model.") for k in header)
    return [(k, v["dtype"], tuple(v["shape"])) for k, v in header.items() if _module_key(k, comfy_flat) is not None]


def load_gemma4_model(path: str | os.PathLike, dtype: mx.Dtype = mx.bfloat16) -> Gemma4LanguageModel:
    """Build mlx-lm's Gemma 4 from the bundle's config and load its language-model tensors
    strictly: a missing, unexpected or mis-shaped tensor raises an error naming it."""
    path = os.fspath(path)
    config = read_gemma4_config(path)
    tensors = mx.load(path)  # lazy: the towers, projection and byte tensors are never read
    comfy_flat = _COMFY_FLAT_PROBE in tensors or not any(k.startswith("model.language_model.") for k in tensors)
    weights: dict[str, mx.array] = {}
    origin: dict[str, str] = {}
    for key, value in tensors.items():
        new = _module_key(key, comfy_flat)
        if new is not None:
            weights[new] = value
            origin[new] = key
    model = Gemma4LanguageModel(config)
    layout = "model." if comfy_flat else "model.language_model."
    quantize_like_checkpoint(model, weights, config.quantization, path,
                             lambda k: _module_key(k, comfy_flat) or k)
    load_strict(model, weights, source=f"{path} (Gemma-4 language model)",
                origin=lambda k: origin.get(k) or layout + k[len("language_model.model."):],
                dtype=dtype, quantize=False)
    mx.eval(model.parameters())
    return model


# encoder_configurator._GEMMA_SOURCE_CHECKPOINT_REQUIRED_SINCE: from here a transformer must name its Gemma
_GEMMA_SOURCE_CHECKPOINT_REQUIRED_SINCE = (2, 4, 0)
GEMMA4_TEXT_ENCODER_FILE = "text_encoders/gemma4-12b-with-proj-ltx-2.5-bf16.safetensors"
GEMMA3_FOLDER = "google/gemma-3-12b-it-qat-q4_0-unquantized"
# the reference accepts only "gemma3" there; the port also reads text-only Gemma-3 folders
_GEMMA3_TYPES = ("gemma3", "gemma3_text")


def _version_name(metadata: dict[str, Any]) -> str:
    return ".".join(map(str, _parse_model_version(metadata.get("model_version"))[:2])) or "2.x"


def _parse_model_version(version: Any) -> tuple[int, ...]:
    """``ltx_core.loader.parse_model_version``: leading integer components. Unlike
    ``guidance.parse_model_version`` (``detect_params``), "-" is not read as ".": the version
    check sees "2.4-rc2" as (2,), as the reference does."""
    parts: list[int] = []
    for part in str(version or "").split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def check_gemma_version(transformer_metadata: dict[str, Any], gemma_config: Any, transformer_path: str,
                        te_path: str) -> None:
    """``_check_gemma_version``: a transformer that names its Gemma (``gemma_source_checkpoint``)
    must get exactly that ``gemma_version``; one of LTX ≥ 2.4 must name it; older ones pair with
    Gemma 3. ``gemma_config`` is a ``GemmaConfig`` or ``Gemma4Config`` (``model_type``,
    ``gemma_version``)."""
    actual = getattr(gemma_config, "gemma_version", None)
    model_type = getattr(gemma_config, "model_type", None)
    source = transformer_metadata.get("gemma_source_checkpoint")
    if isinstance(source, str):  # an unparsed metadata string
        source = json.loads(source)
    if source is not None:
        expected = source.get("gemma_version") if isinstance(source, dict) else None
        if expected != actual:
            if model_type in _GEMMA3_TYPES:
                use = (f"this LTX-{_version_name(transformer_metadata)} transformer needs the text encoder "
                       f"{GEMMA4_TEXT_ENCODER_FILE} (or another with gemma_version={expected!r}), not a Gemma-3 folder")
            else:
                use = (f"use the text encoder with gemma_version={expected!r} (for LTX-2.5: "
                       f"{GEMMA4_TEXT_ENCODER_FILE}) with this transformer")
            raise CheckpointError(
                f"Gemma version mismatch: the transformer {transformer_path} expects gemma_source_checkpoint."
                f"gemma_version={expected!r}, but the text encoder {te_path} ({model_type}) has gemma_version="
                f"{actual!r}; {use}")
        return
    model_version = transformer_metadata.get("model_version")
    if model_version is not None and _parse_model_version(model_version) >= _GEMMA_SOURCE_CHECKPOINT_REQUIRED_SINCE:
        if actual is None:
            logger.warning("the transformer %s (model_version=%r) does not declare gemma_source_checkpoint."
                           "gemma_version and the text encoder %s declares no gemma_version either; skipping the "
                           "version check, verify the pair yourself", transformer_path, model_version, te_path)
            return
        raise CheckpointError(
            f"the transformer {transformer_path} (model_version={model_version!r}) must declare "
            f"gemma_source_checkpoint.gemma_version but has none, while the text encoder {te_path} has "
            f"gemma_version={actual!r}; use the transformer released with that text encoder")
    if model_type not in _GEMMA3_TYPES:
        raise CheckpointError(
            f"the transformer {transformer_path} (model_version={model_version!r}) declares no "
            f"gemma_source_checkpoint, so it needs a Gemma-3 text encoder (a Hugging Face folder such as "
            f"{GEMMA3_FOLDER}), not the {model_type} text encoder {te_path} (gemma_version={actual!r})")


def load_gemma4_tokenizer(path: str | os.PathLike, max_length: int = TOKENIZER_MAX_LENGTH) -> GemmaTokenizer:
    return GemmaAssets.from_single_file(path).tokenizer(max_length)
