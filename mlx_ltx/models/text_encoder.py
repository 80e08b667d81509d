"""Prompt -> LTX text contexts: the reference's ``PromptEncoder`` (``ltx_pipelines/utils/blocks.py``).

Gemma (on mlx-lm: Gemma 3 from a Hugging Face folder for LTX-2 / 2.3, ``gemma.py``; the LTX-2.5
Gemma-4 bundle, ``gemma4.py``; chosen by the config's ``model_type`` through ``GEMMA_FAMILIES``)
turns all prompts of a generation into hidden states in one batched forward; the
``EmbeddingsProcessor`` (feature extractor + video/audio connectors, ``connector.py``) turns each
prompt's hidden states into the video and audio contexts. Results are cached per prompt text, and
in low-memory mode the Gemma weights are dropped as soon as the prompts are encoded, as the
reference frees Gemma before loading the embeddings processor.
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import mlx.core as mx

from ..loading import Checkpoint, CheckpointError, resolve_model_path
from .gemma import (
    TOKENIZER_MAX_LENGTH,
    GemmaHiddenStates,
    GemmaTextEncoder,
    GemmaTokenizer,
    load_gemma_model,
    read_gemma_config,
    resolve_gemma_path,
)
from .gemma4 import (
    GEMMA4_TEXT_ENCODER_FILE,
    bundle_model_type,
    check_gemma_version,
    load_gemma4_model,
    load_gemma4_tokenizer,
    read_gemma4_config,
)


@dataclass(frozen=True)
class GemmaFamily:
    """How a Gemma family is read from its path: config (``hidden_size``, ``num_hidden_layers``,
    ``model_type``, ``gemma_version``), tokenizer and weights. ``enhances``: the reference
    rewrites prompts with it (``PromptEncoder`` raises for the others)."""

    read_config: Callable[[str], Any]
    load_tokenizer: Callable[[str, int], GemmaTokenizer]
    load_model: Callable[[str, mx.Dtype], GemmaHiddenStates]
    enhances: bool


_GEMMA3 = GemmaFamily(read_gemma_config, GemmaTokenizer.from_folder, load_gemma_model, enhances=True)
# keyed by the config's model_type (get_gemma_ops); gemma3_text: text-only Gemma-3 folders
GEMMA_FAMILIES: dict[str, GemmaFamily] = {
    "gemma3": _GEMMA3,
    "gemma3_text": _GEMMA3,
    "gemma4_unified": GemmaFamily(read_gemma4_config, load_gemma4_tokenizer, load_gemma4_model, enhances=False),
}


def resolve_text_encoder(spec: str | os.PathLike) -> tuple[str, str]:
    """(path, model_type) of a text encoder: a Gemma bundle .safetensors (LTX-2.5), or a Gemma-3
    Hugging Face folder or repo id (fetched as ``resolve_gemma_path`` does)."""
    spec = os.fspath(spec)
    if os.path.isfile(spec):
        path, model_type = spec, bundle_model_type(spec)
        if model_type is None:
            raise CheckpointError(f"{spec}: no 'gemma_config' in its __metadata__; a text-encoder file is the "
                                  f"release's {GEMMA4_TEXT_ENCODER_FILE} (or pass a Gemma-3 folder)")
    else:
        path = resolve_gemma_path(spec)
        config = Path(path) / "config.json"
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
        if model_type is None:
            read_gemma_config(path)  # raises, naming what is missing
    if model_type not in GEMMA_FAMILIES:
        raise CheckpointError(f"{path}: Gemma model_type={model_type!r} is not a text encoder here; supported: "
                              f"{', '.join(GEMMA_FAMILIES)}")
    return path, model_type


# base_encoder.GEMMA3_ENHANCE_GENERATION_KWARGS; top_k is transformers' default (the reference
# builds the model from its config, so no generation_config.json narrows it)
ENHANCE_TEMPERATURE = 0.7
ENHANCE_TOP_K = 50
ENHANCE_MAX_NEW_TOKENS = 512
_PROMPTS = Path(__file__).parent / "prompts"


def default_t2v_system_prompt() -> str:
    """``default_gemma3_t2v_system_prompt``: the reference's text file, shipped as package data."""
    return (_PROMPTS / "gemma3_t2v_system_prompt.txt").read_text()


def keyed_sampler(key: mx.array, temp: float, top_k: int):
    """An mlx-lm sampler (log-probabilities [B, V] -> token ids [B]): top-k filtering, then a
    categorical draw at ``temp``. Every call splits a fresh subkey off ``key``, so the draws
    depend only on ``key`` and never touch MLX's global random state (mlx-lm's ``make_sampler``
    draws from it)."""
    state = [key]

    def sample(logprobs: mx.array) -> mx.array:
        state[0], subkey = mx.random.split(state[0])
        if 0 < top_k < logprobs.shape[-1]:
            dropped = mx.argpartition(-logprobs, kth=top_k - 1, axis=-1)[..., top_k:]
            logprobs = mx.put_along_axis(logprobs, dropped, mx.array(-float("inf"), logprobs.dtype), axis=-1)
        return mx.random.categorical(logprobs * (1.0 / temp), key=subkey)

    return sample


def enhance_t2v(encoder: GemmaTextEncoder, prompt: str, max_new_tokens: int | None = None,
                system_prompt: str | None = None, seed: int = 10) -> str:
    """``LTXGemmaTextEncoder.enhance_t2v``: Gemma rewrites ``prompt`` following the T2V system
    prompt, sampled with mlx-lm (temperature 0.7, top-k 50, at most 512 new tokens). The draws
    come from ``mx.random.key(seed)``, so the text is reproducible for a seed and MLX's global
    random state is left alone. The text differs from the reference's for the same seed: the
    random streams are not torch's."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    if encoder.config.sliding_window_pattern is None:
        raise ValueError(f"layer_types {encoder.config.layer_types} have no fixed period; mlx-lm's generation "
                         f"(masks and KV caches) needs a full-attention layer every p-th layer")
    hf = encoder.tokenizer.tokenizer
    if hf.chat_template is None:
        raise ValueError("the Gemma tokenizer has no chat template (chat_template.jinja / tokenizer_config.json)")
    messages = [{"role": "system", "content": system_prompt or default_t2v_system_prompt()},
                {"role": "user", "content": f"user prompt: {prompt}"}]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # tokenised as Gemma3Processor does (special tokens added); the reference's left padding
    # to a multiple of 8 only aligns Flash Attention and is left out
    ids = mx.array(hf(text, verbose=False)["input_ids"], mx.uint32)
    generated = []
    for response in stream_generate(
        encoder.model.language_model, TokenizerWrapper(hf, eos_token_ids=list(encoder.config.eos_token_ids)), ids,
        max_tokens=max_new_tokens or ENHANCE_MAX_NEW_TOKENS,
        sampler=keyed_sampler(mx.random.key(seed), temp=ENHANCE_TEMPERATURE, top_k=ENHANCE_TOP_K),
    ):
        generated.append(response.token)
    return hf.decode(generated, skip_special_tokens=True)


# ltx_pipelines.utils.helpers._UNICODE_REPLACEMENTS: typographic characters Gemma likes to emit
_UNICODE_REPLACEMENTS = str.maketrans("\u2018\u2019\u201c\u201d\u2014\u2013\u00a0\u2032\u2212", "''\"\"-- '-")


def clean_response(text: str) -> str:
    """``helpers.clean_response``: plain quotes and dashes, leading non-letters dropped."""
    text = text.translate(_UNICODE_REPLACEMENTS)
    start = next((i for i, c in enumerate(text) if c.isalpha()), None)
    return text if start is None else text[start:]


class PromptEncoding(NamedTuple):
    """``EmbeddingsProcessorOutput``: contexts (1, T, Dv) / (1, T, Da) and the binary mask (1, T)."""

    video_encoding: mx.array
    audio_encoding: mx.array
    attention_mask: mx.array


class TextEncoder:
    """Gemma + the checkpoint's embeddings processor, loaded on first use.

    ``gemma``: a Hugging Face Gemma-3 folder or repo id (google/gemma-3-12b-it-qat-q4_0-unquantized,
    or an mlx-community bf16 / 8-bit / 4-bit conversion) for LTX-2 / 2.3, or the LTX-2.5 Gemma-4
    bundle (``text_encoders/gemma4-12b-with-proj-ltx-2.5-bf16.safetensors``); None takes the text
    encoder file of a split checkpoint. ``checkpoint``: the LTX checkpoint (a ``Checkpoint``, a
    file, a folder or its repo id) holding the text projection and the connectors; its transformer
    must name the text encoder's ``gemma_version`` (``check_gemma_version``). ``low_memory``:
    release the Gemma weights after every encoding call (the tokenizer stays); they are reloaded
    if a new prompt comes.
    """

    def __init__(self, gemma: str | os.PathLike | None, checkpoint: Checkpoint | str | os.PathLike, *,
                 dtype: mx.Dtype = mx.bfloat16, low_memory: bool = False, max_length: int = TOKENIZER_MAX_LENGTH):
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = Checkpoint(resolve_model_path(checkpoint))
        self.checkpoint = checkpoint
        if gemma is None:  # a split checkpoint's own text-encoder file
            gemma = checkpoint.role_path("text_encoder") if hasattr(checkpoint, "role_path") else None
            if gemma is None:
                raise CheckpointError(f"{checkpoint.path} holds no text encoder: pass the Gemma-3 folder (LTX-2 / "
                                      f"2.3) or the {GEMMA4_TEXT_ENCODER_FILE} file (LTX-2.5)")
        self.gemma_path, self.model_type = resolve_text_encoder(gemma)
        self.family = GEMMA_FAMILIES[self.model_type]
        self.dtype = dtype
        self.low_memory = low_memory
        self.gemma_config = self.family.read_config(self.gemma_path)
        # the reference checks when it builds the embeddings processor; here before anything loads.
        # A split checkpoint's transformer file holds the stamp (hasattr: Checkpoints before split files)
        split = hasattr(checkpoint, "role_metadata")
        check_gemma_version(checkpoint.role_metadata("transformer") if split else checkpoint.metadata,
                            self.gemma_config, (split and checkpoint.role_path("transformer")) or checkpoint.path,
                            self.gemma_path)
        self.tokenizer = self.family.load_tokenizer(self.gemma_path, max_length)
        self._gemma: GemmaTextEncoder | None = None
        self._embeddings_processor = None
        self._cache: dict[str, PromptEncoding] = {}

    @property
    def gemma(self) -> GemmaTextEncoder:
        if self._gemma is None:
            self._gemma = GemmaTextEncoder(self.family.load_model(self.gemma_path, self.dtype), self.tokenizer)
        return self._gemma

    @property
    def embeddings_processor(self):
        if self._embeddings_processor is None:
            from .connector import load_embeddings_processor

            self._embeddings_processor = load_embeddings_processor(
                self.checkpoint, self.gemma_config.hidden_size, self.gemma_config.num_hidden_layers, self.dtype)
        return self._embeddings_processor

    def needs_gemma(self, prompts: list[str], enhance_first_prompt: bool = False) -> bool:
        """Whether :meth:`encode_prompts` would have to load Gemma (it is not loaded and a prompt
        is not cached, or the first prompt is to be rewritten)."""
        return self._gemma is None and (enhance_first_prompt or any(p not in self._cache for p in prompts))

    def release_gemma(self) -> None:
        """Drop every reference this object holds to the Gemma weights and return the freed
        buffers to the system."""
        self._gemma = None
        gc.collect()
        mx.clear_cache()

    def enhance_prompt(self, prompt: str, seed: int = 42, max_new_tokens: int | None = None) -> str:
        """``generate_enhanced_prompt`` for text-to-video: Gemma rewrites the prompt with the
        reference's T2V system prompt (seed default as the pipelines' ``enhance_prompt_seed``)."""
        if not self.family.enhances:  # PromptEncoder (blocks.py) raises alike
            raise ValueError(f"prompt enhancement with the {self.model_type} text encoder ({self.gemma_path}) is not "
                             f"supported: it encodes only; the reference needs a separate generative Gemma "
                             f"(--prompt-enhancer-gemma-root, e.g. gemma3 or gemma4 E2B-it) for it")
        return clean_response(enhance_t2v(self.gemma, prompt, max_new_tokens=max_new_tokens, seed=seed))

    def encode_prompts(self, prompts: list[str], *, enhance_first_prompt: bool = False,
                       enhance_seed: int = 42) -> list[PromptEncoding]:
        """Encode several prompts (e.g. positive and negative) with one batched Gemma forward for
        those not cached yet; each result is evaluated and cached under its prompt text. With
        ``enhance_first_prompt`` the first prompt is rewritten by Gemma first (``PromptEncoder``)."""
        prompts = list(prompts)
        if enhance_first_prompt and prompts:
            prompts[0] = self.enhance_prompt(prompts[0], seed=enhance_seed)
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            encoded = self.gemma.encode(todo)
            processor = self.embeddings_processor
            for prompt, (hidden_states, mask) in zip(todo, encoded):
                result = PromptEncoding(*processor.process_hidden_states(hidden_states, mask))
                mx.eval(*result)
                self._cache[prompt] = result
            del encoded, hidden_states, mask
            if self.low_memory:
                self._embeddings_processor = None
                self.release_gemma()
        return [self._cache[p] for p in prompts]

    def encode_prompt(self, prompt: str, *, enhance: bool = False, enhance_seed: int = 42) -> PromptEncoding:
        """(video_context, audio_context, mask) for one prompt."""
        return self.encode_prompts([prompt], enhance_first_prompt=enhance, enhance_seed=enhance_seed)[0]

    def clear_cache(self) -> None:
        self._cache.clear()
