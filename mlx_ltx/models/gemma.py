"""Gemma-3 text encoder on top of mlx-lm: the reference's ``LTXGemmaTextEncoder.encode``
(``ltx_core/text_encoders/gemma/encoders/base_encoder.py``) and ``LTXGemmaTokenizer``
(``tokenizer.py``).

The transformer itself is mlx-lm's ``gemma3_text.Model``; this module only configures it from a
Hugging Face Gemma-3 config, loads the weights strictly and walks its layers to collect what
Hugging Face returns with ``output_hidden_states=True``: the scaled embeddings, every layer's
output, and, in place of the last layer's raw output, the output after the final norm.

What every Gemma family shares lives here too and ``gemma4.py`` (the LTX-2.5 bundle) reuses it:
the padding masks and the hidden-state walk (``GemmaHiddenStates``), quantized loading
(``quantize_like_checkpoint``) and the tokenizer wrapper (``GemmaTokenizer``).
"""

from __future__ import annotations

import json
import math
import os
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import gemma3_text
from mlx_lm.models.rope_utils import initialize_rope

from ..loading import CheckpointError, load_strict
from .activations import gelu_tanh_rounded_once

# gemma_assets.TOKENIZER_MAX_LENGTH: every prompt is padded to exactly this many tokens.
TOKENIZER_MAX_LENGTH = 1024

# Hugging Face Gemma3TextConfig defaults: released configs (google's and mlx-community's) leave
# most fields out and rely on them.
_TEXT_DEFAULTS: dict[str, Any] = {
    "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
    "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "attn_logit_softcapping": None, "attention_bias": False,
    "use_bidirectional_attention": False, "tie_word_embeddings": True, "final_logit_softcapping": None,
}
_DEFAULT_THETA = {"full_attention": 1_000_000.0, "sliding_attention": 10_000.0}
_LAYER_TYPES = ("sliding_attention", "full_attention")

# Non-language-model towers of the multimodal checkpoints; encoding never uses them.
_DROPPED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                     "model.multi_modal_projector.")


@dataclass(frozen=True)
class GemmaConfig:
    """The text part of a Hugging Face Gemma-3 config, defaults filled in as transformers does."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    query_pre_attn_scalar: float
    rms_norm_eps: float
    sliding_window: int
    max_position_embeddings: int
    layer_types: tuple[str, ...]
    rope_parameters: dict[str, dict[str, Any]]
    quantization: dict[str, Any] | None = None
    eos_token_ids: tuple[int, ...] = (1,)
    # the top-level provenance stamp the LTX-2.5 version check compares (none in google's configs)
    gemma_version: str | None = None

    @property
    def sliding_window_pattern(self) -> int | None:
        """The period mlx-lm's own forward and KV caches assume (a full-attention layer every
        p-th layer), or None when ``layer_types`` follow no such period."""
        if "full_attention" not in self.layer_types:
            return None
        p = self.layer_types.index("full_attention") + 1
        periodic = all((t == "full_attention") == ((i + 1) % p == 0) for i, t in enumerate(self.layer_types))
        return p if periodic else None

    @classmethod
    def from_dict(cls, config: dict[str, Any], source: str = "config.json") -> GemmaConfig:
        model_type = config.get("model_type")
        if model_type == "gemma3":
            text = dict(config.get("text_config") or {})
        elif model_type == "gemma3_text":
            text = dict(config)
        else:
            raise CheckpointError(f"{source}: model_type={model_type!r}; the LTX text encoder is Gemma 3 "
                                  f"('gemma3' or 'gemma3_text')")
        t = {**_TEXT_DEFAULTS, **text}
        if t["hidden_activation"] != "gelu_pytorch_tanh":
            raise CheckpointError(f"{source}: hidden_activation={t['hidden_activation']!r} is not supported "
                                  f"(Gemma 3 uses 'gelu_pytorch_tanh')")
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if t[key] is not None:
                raise CheckpointError(f"{source}: {key}={t[key]!r} is not supported (Gemma 3 has none)")
        for key in ("attention_bias", "use_bidirectional_attention"):
            if t[key]:
                raise CheckpointError(f"{source}: {key}=true is not supported (the LTX encoder is causal, bias-free)")
        n = int(t["num_hidden_layers"])
        layer_types = text.get("layer_types")
        if layer_types is None:  # transformers derives them from the legacy pattern (default 6)
            pattern = int(text.get("sliding_window_pattern", text.get("_sliding_window_pattern", 6)))
            layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
        if len(layer_types) != n or any(lt not in _LAYER_TYPES for lt in layer_types):
            raise CheckpointError(f"{source}: layer_types {layer_types!r} do not give one of {_LAYER_TYPES} "
                                  f"for each of the {n} layers")
        quantization = config.get("quantization") or config.get("quantization_config")
        eos = config.get("eos_token_id", text.get("eos_token_id", 1))
        return cls(
            model_type=model_type,
            hidden_size=int(t["hidden_size"]),
            intermediate_size=int(t["intermediate_size"]),
            num_hidden_layers=n,
            num_attention_heads=int(t["num_attention_heads"]),
            num_key_value_heads=int(t["num_key_value_heads"]),
            head_dim=int(t["head_dim"]),
            query_pre_attn_scalar=float(t["query_pre_attn_scalar"]),
            rms_norm_eps=float(t["rms_norm_eps"]),
            sliding_window=int(t["sliding_window"]),
            max_position_embeddings=int(t["max_position_embeddings"]),
            layer_types=tuple(layer_types),
            rope_parameters=_rope_parameters(text, source),
            quantization=quantization if isinstance(quantization, dict) and "bits" in quantization else None,
            eos_token_ids=tuple(eos) if isinstance(eos, (list, tuple)) else (eos,),
            gemma_version=config.get("gemma_version"),
        )


def _rope_parameters(text: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Per layer type {rope_type, rope_theta, factor}, from either the transformers-5
    ``rope_parameters`` or the legacy ``rope_theta`` / ``rope_local_base_freq`` / ``rope_scaling``
    (which transformers merges into the full-attention entry)."""
    params = {k: dict(v) for k, v in (text.get("rope_parameters") or {}).items()}
    legacy_theta = {"full_attention": text.get("rope_theta"), "sliding_attention": text.get("rope_local_base_freq")}
    if text.get("rope_scaling"):
        params.setdefault("full_attention", {}).update(text["rope_scaling"])
    out = {}
    for layer_type in _LAYER_TYPES:
        p = params.get(layer_type, {})
        rope_type = p.get("rope_type", p.get("type", "default"))
        if rope_type not in ("default", "linear"):
            raise CheckpointError(f"{source}: rope_type={rope_type!r} for {layer_type} is not supported "
                                  f"(Gemma 3 uses 'default' and 'linear')")
        theta = p.get("rope_theta", legacy_theta[layer_type] or _DEFAULT_THETA[layer_type])
        out[layer_type] = {"rope_type": rope_type, "rope_theta": float(theta),
                           "factor": float(p["factor"]) if rope_type == "linear" else 1.0}
    return out


def _build_rope(config: GemmaConfig, layer_type: str) -> nn.Module:
    p = config.rope_parameters[layer_type]
    scaling = {"rope_type": "linear", "factor": p["factor"]} if p["rope_type"] == "linear" else None
    return initialize_rope(config.head_dim, base=p["rope_theta"], traditional=False, scaling_config=scaling)


class _GemmaMLP(gemma3_text.MLP):
    """mlx-lm's Gemma-3 MLP with GELU(tanh) rounded once, as transformers' ``gelu_pytorch_tanh``
    (torch's C kernel, float32 inside) rounds it; mlx-lm's ``nn.gelu_approx`` rounds every
    intermediate in bfloat16 (see activations.py). Identical in float32."""

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(gelu_tanh_rounded_once(self.gate_proj(x)) * self.up_proj(x))


class GemmaHiddenStates(nn.Module, metaclass=ABCMeta):
    """The family-agnostic part of ``LTXGemmaTextEncoder.encode`` over an mlx-lm Gemma held as
    ``language_model`` (its inner ``model`` has ``embed_tokens``, ``layers`` and ``norm``):
    padding masks and the walk that collects every hidden state. mlx-lm's own forward builds
    causal masks only and returns the normed output alone, so neither can be used here.
    Subclasses run the layers (``_layer_outputs``), whose call signatures differ per family."""

    config: Any  # sliding_window, hidden_size, layer_types

    def attention_masks(self, attention_mask: mx.array) -> dict[str, mx.array]:
        """Boolean (B, 1, T, T) masks per layer type: causal, the sliding window on local layers
        (key > query − window, as transformers' ``sliding_window_overlay``), padded keys masked.
        A query whose keys are all padding (a left pad) may see itself: torch's SDPA gives such
        rows a zero attention output, MLX's a NaN, which would leak into valid rows through
        0·NaN. Pad rows thus differ from transformers' unless the pad embedding is zero; nothing
        reads them (the feature extractor zeroes padded tokens)."""
        T = attention_mask.shape[1]
        q = mx.arange(T)[:, None]
        k = mx.arange(T)[None, :]
        valid = attention_mask.astype(mx.bool_)[:, None, None, :]
        full = (q >= k) & (valid | (q == k))
        return {"full_attention": full, "sliding_attention": full & (k > q - self.config.sliding_window)}

    def _embedding_ids(self, input_ids: mx.array) -> mx.array:
        return input_ids

    @abstractmethod
    def _layer_outputs(self, h: mx.array, masks: dict[str, mx.array]):
        """Yield each decoder layer's output in turn (each family calls its layers differently)."""

    def hidden_states(self, input_ids: mx.array, attention_mask: mx.array) -> list[mx.array]:
        """The ``num_hidden_layers + 1`` hidden states of ``model.model(..., output_hidden_states=True)``.
        Positions are 0..T−1 over the padded sequence, as the reference passes no position ids."""
        inner = self.language_model.model
        h = inner.embed_tokens(self._embedding_ids(input_ids))
        # the ScaledWordEmbedding of both families: a float32 sqrt(hidden) cast to the weight
        # dtype (mlx-lm's own forward rounds it through bfloat16 even in float32, up to 2e-3 relative)
        h = h * mx.array(math.sqrt(self.config.hidden_size), mx.float32).astype(h.dtype)
        states = [h]
        states.extend(self._layer_outputs(h, self.attention_masks(attention_mask)))
        states[-1] = inner.norm(states[-1])
        return states


class GemmaLanguageModel(GemmaHiddenStates):
    """mlx-lm's Gemma-3 text model under ``language_model`` so that its parameter names are the
    google checkpoint's keys (``language_model.model.*``)."""

    def __init__(self, config: GemmaConfig, vocab_size: int, has_lm_head: bool = False):
        super().__init__()
        self.config = config
        args = gemma3_text.ModelArgs(
            model_type="gemma3_text", hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
            intermediate_size=config.intermediate_size, num_attention_heads=config.num_attention_heads,
            head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps, vocab_size=vocab_size,
            num_key_value_heads=config.num_key_value_heads, query_pre_attn_scalar=config.query_pre_attn_scalar,
            sliding_window=config.sliding_window, max_position_embeddings=config.max_position_embeddings,
            sliding_window_pattern=config.sliding_window_pattern or 1,
        )
        self.language_model = gemma3_text.Model(args)
        # mlx-lm derives the local/global split from a fixed period; configs may list any order
        # (the tiny fixtures end on a global layer after one or two local ones), so set each
        # layer's RoPE from layer_types. Its masks are built here, not by mlx-lm (see attention_masks).
        for layer, layer_type in zip(self.language_model.model.layers, config.layer_types):
            layer.self_attn.is_sliding = layer_type == "sliding_attention"
            layer.self_attn.rope = _build_rope(config, layer_type)
            layer.mlp.__class__ = _GemmaMLP  # same parameters, torch's activation rounding
        if not has_lm_head:  # Gemma 3 ties the output head to the embeddings
            self.language_model.sanitize({})

    def _layer_outputs(self, h: mx.array, masks: dict[str, mx.array]):
        for layer, layer_type in zip(self.language_model.model.layers, self.config.layer_types):
            h = layer(h, masks[layer_type], None)
            yield h


def _module_key(key: str, model_type: str) -> str | None:
    """Checkpoint key -> ``GemmaLanguageModel`` key; None for tensors of the other towers.
    google/gemma-3 and older mlx-community conversions: ``language_model.model.*``; transformers
    >= 4.52 and newer conversions: ``model.language_model.*`` + ``lm_head.*``; text-only: ``model.*``."""
    if key.startswith(_DROPPED_PREFIXES):
        return None
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model."):]
    if key.startswith("lm_head."):
        return "language_model." + key
    if model_type == "gemma3_text" and key.startswith("model."):
        return "language_model." + key
    return key


def gemma_weight_files(folder: str | os.PathLike) -> list[str]:
    files = sorted(str(p) for p in Path(folder).glob("model*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no model*.safetensors (expected a Hugging Face Gemma-3 folder)")
    return files


def read_gemma_config(folder: str | os.PathLike) -> GemmaConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (expected a Hugging Face Gemma-3 folder)")
    return GemmaConfig.from_dict(json.loads(path.read_text()), source=str(path))


def quantize_like_checkpoint(model: nn.Module, weights: dict[str, mx.array], quantization: dict[str, Any] | None,
                             source: str, module_key: Callable[[str], str | None] = lambda k: k) -> None:
    """As mlx-lm's loader: exactly the layers stored with ``scales`` are quantized, with the global
    settings or a per-layer entry of the ``quantization`` settings (keyed by checkpoint path,
    which ``module_key`` turns into the module's path)."""
    quantized = {k[: -len(".scales")] for k in weights if k.endswith(".scales")}
    if not quantized:
        return
    q = quantization
    if q is None:
        raise CheckpointError(f"{source}: quantized tensors (e.g. {min(quantized)!r}.scales) but no "
                              f"'quantization' settings in config.json")
    per_layer = {module_key(k): v for k, v in q.items() if isinstance(v, dict)}

    def predicate(path: str, module: nn.Module):
        if path not in quantized:
            return False
        return per_layer.get(path, True)

    nn.quantize(model, group_size=q["group_size"], bits=q["bits"], mode=q.get("mode", "affine"),
                class_predicate=predicate)


def load_gemma_model(folder: str | os.PathLike, dtype: mx.Dtype = mx.bfloat16) -> GemmaLanguageModel:
    """Build mlx-lm's Gemma-3 from ``folder``'s config and load its weights strictly: a missing,
    unexpected or mis-shaped language-model tensor raises an error naming it."""
    folder = str(folder)
    config = read_gemma_config(folder)
    weights: dict[str, mx.array] = {}
    origin: dict[str, str] = {}
    for path in gemma_weight_files(folder):
        for key, value in mx.load(path).items():  # lazy: dropped towers are never read
            new = _module_key(key, config.model_type)
            if new is not None:
                weights[new] = value
                origin[new] = key
    embed = weights.get("language_model.model.embed_tokens.weight")
    if embed is None:
        raise CheckpointError(f"{folder}: no language-model embedding ('language_model.model.embed_tokens.weight' "
                              f"or 'model.language_model.embed_tokens.weight')")
    model = GemmaLanguageModel(config, vocab_size=embed.shape[0],
                               has_lm_head="language_model.lm_head.weight" in weights)
    quantize_like_checkpoint(model, weights, config.quantization, folder,
                             lambda k: _module_key(k, config.model_type))
    load_strict(model, weights, source=f"{folder} (Gemma-3 language model)", origin=lambda k: origin.get(k, k),
                dtype=dtype, quantize=False)
    mx.eval(model.parameters())
    return model


def resolve_gemma_path(spec: str | os.PathLike) -> str:
    """A local Gemma-3 folder as it is; otherwise a Hugging Face repo id, fetched (or found in
    the HF cache, which offline mode uses) with only the weights, configs and tokenizer files."""
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        return spec
    if spec.count("/") != 1 or os.path.exists(spec):
        raise CheckpointError(f"Gemma model not found: {spec} (give a Hugging Face Gemma-3 folder or repo id, "
                              f"e.g. google/gemma-3-12b-it-qat-q4_0-unquantized)")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(spec, allow_patterns=["*.safetensors", "*.json", "tokenizer.model", "*.jinja"])
    except Exception as e:  # network, auth (Gemma is gated), missing repo: say which and what to do
        raise CheckpointError(f"could not fetch {spec!r} from Hugging Face ({type(e).__name__}: {e}); "
                              f"accept the Gemma licence and log in, or pass a local folder") from None


# tokenizer_config.json entries that are not constructor arguments (gemma_assets._TOKENIZER_CONFIG_SKIP)
_TOKENIZER_CONFIG_SKIP = frozenset({"tokenizer_class", "auto_map", "model_max_length", "backend", "is_local",
                                    "local_files_only", "processor_class", "added_tokens_decoder"})


def chat_template_from_sidecars(sidecars: Mapping[str, bytes]) -> str | None:
    """``_chat_template_from_assets``: ``chat_template.jinja``, else the string (or the dict's
    ``chat_template`` string) of ``chat_template.json``."""
    if (template := sidecars.get("chat_template.jinja")) is not None:
        return template.decode()
    raw = sidecars.get("chat_template.json")
    if raw is None:
        return None
    loaded = json.loads(raw)
    if isinstance(loaded, dict):
        loaded = loaded.get("chat_template")
    return loaded if isinstance(loaded, str) else None


class GemmaTokenizer:
    """``LTXGemmaTokenizer``: strip, truncate to ``max_length`` (right side, BOS counted), make
    sure the first token is BOS, never add EOS, LEFT-pad to exactly ``max_length`` with the pad
    token (the EOS token when the tokenizer has none)."""

    def __init__(self, tokenizer, max_length: int = TOKENIZER_MAX_LENGTH):
        self.tokenizer = tokenizer
        self.max_length = max_length
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.bos_token_id is None:
            raise ValueError("the Gemma tokenizer has no bos_token_id; the encode path needs a leading BOS")

    @classmethod
    def from_assets(cls, tokenizer_json: bytes, tokenizer_config: Mapping[str, Any], chat_template: str | None = None,
                    max_length: int = TOKENIZER_MAX_LENGTH) -> GemmaTokenizer:
        """The reference's ``build_gemma_hf_tokenizer``: a fast tokenizer from the bytes of
        ``tokenizer.json`` with the constructor arguments of ``tokenizer_config.json`` (minus the
        skip list) and the chat template of the sidecars."""
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        kwargs = {k: v for k, v in tokenizer_config.items() if k not in _TOKENIZER_CONFIG_SKIP}
        if chat_template is not None:
            kwargs.setdefault("chat_template", chat_template)
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_buffer(tokenizer_json),
                                      model_max_length=max_length, **kwargs)
        return cls(tok, max_length)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, max_length: int = TOKENIZER_MAX_LENGTH) -> GemmaTokenizer:
        """:meth:`from_assets` over a Hugging Face folder's files."""
        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise CheckpointError(f"{folder}: no tokenizer.json (the Gemma-3 folder's fast tokenizer)")
        cfg_path = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        sidecars = {name: (folder / name).read_bytes() for name in ("chat_template.jinja", "chat_template.json")
                    if (folder / name).is_file()}
        return cls.from_assets((folder / "tokenizer.json").read_bytes(), cfg, chat_template_from_sidecars(sidecars),
                               max_length)

    def token_ids(self, text: str) -> list[int]:
        """The unpadded ids of one prompt (BOS first, at most ``max_length``)."""
        ids = self.tokenizer(text.strip(), padding=False, truncation=True, max_length=self.max_length)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if not ids or ids[0] != bos:
            ids = [bos, *ids][: self.max_length]
        return list(ids)

    def __call__(self, prompts: list[str]) -> tuple[mx.array, mx.array]:
        """(input_ids, attention_mask), both (len(prompts), max_length) int32, left padded."""
        ids = np.full((len(prompts), self.max_length), self.tokenizer.pad_token_id, dtype=np.int32)
        mask = np.zeros((len(prompts), self.max_length), dtype=np.int32)
        for row, prompt in enumerate(prompts):
            tokens = self.token_ids(prompt)
            ids[row, self.max_length - len(tokens):] = tokens
            mask[row, self.max_length - len(tokens):] = 1
        return mx.array(ids), mx.array(mask)


class GemmaTextEncoder:
    """Gemma weights (any family's ``GemmaHiddenStates``) + tokenizer: prompts -> per-prompt
    hidden states, one batched forward."""

    def __init__(self, model: GemmaHiddenStates, tokenizer: GemmaTokenizer | None):
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: mx.Dtype = mx.bfloat16, max_length: int = TOKENIZER_MAX_LENGTH,
             with_tokenizer: bool = True) -> GemmaTextEncoder:
        folder = resolve_gemma_path(path)
        tokenizer = GemmaTokenizer.from_folder(folder, max_length) if with_tokenizer else None
        return cls(load_gemma_model(folder, dtype), tokenizer)

    @property
    def config(self):
        return self.model.config

    def encode(self, prompts: list[str]) -> list[tuple[list[mx.array], mx.array]]:
        """``LTXGemmaTextEncoder.encode``: per prompt, its hidden states (each (1, T, hidden)) and
        its attention mask (1, T)."""
        if not prompts:
            return []
        if self.tokenizer is None:
            raise ValueError("this GemmaTextEncoder was loaded without a tokenizer")
        input_ids, attention_mask = self.tokenizer(prompts)
        states = self.model.hidden_states(input_ids, attention_mask)
        mx.eval(states)
        return [([h[i: i + 1] for h in states], attention_mask[i: i + 1]) for i in range(len(prompts))]
