"""LTX-2.5 fixture variants for make_ref_25.py (configs only; no reference code here).

Built from variants.py's 2.3 variants (deep copies) with the 2.5 switches, plus what 2.5 adds:
a tiny Gemma-4 ``gemma4_unified`` text encoder, a DurationHead config and the split file names.

  tiny25   variants.tiny's transformer / VAE / audio VAE / vocoder, + ``ff_bias: false``,
           ``use_keyframes_abs_pos_embedding: true``; Gemma 4 with 4 layers (3 sliding, 1 full);
           connectors in the transformer file; explicit small ``config.duration_head``.
  real25   variants.real23 (the released 2.3 header key sets, widths shrunk) + the same two switches;
           Gemma 4 with 6 layers (the config's default 5:1 layer pattern), ``attention_k_eq_v`` and
           ``num_global_key_value_heads`` (a guess: the released Gemma-4 12B config is not known);
           connectors in the text-encoder file; no ``config.duration_head`` (the configurator's
           defaults: pooler 256, 4 heads, MLP 256).

2.5 values that are not known (``audio_ff_bias``, ``connector_ff_bias``, ``use_prompt_adaln_single``,
the VAE / audio VAE / vocoder / upsampler configs) keep the 2.3 variant's values.
Each variant dict holds, besides variants.py's fields (``metadata["config"]`` is the union of every
component's config section; make_ref_25 writes each section into its own file):
  tag             file-name tag (``ltx-2.5-<tag>-...``)
  model_version   the ``model_version`` string of the transformer and video-VAE files
  gemma4          the ``gemma4_unified`` config dict (text / vision / audio sub-configs, gemma_version)
  duration_head   ``config.duration_head`` of the duration-head file, or None (absent)
  connectors_in   "transformer" | "text_encoder"
  prompts         the two prompts of golden_gemma
"""

from __future__ import annotations

import copy

from variants import get_variant

GEMMA_VERSION = "gemma4-tiny-ltx-test-v1"
PROMPTS = [
    "A red fox trots through fresh snow at dawn, birds calling in the pines",
    "Close-up of a woman laughing in the rain, neon signs flicker.",
]


def _gemma4(hidden: int, layers: int, *, head_dim: int, global_head_dim: int, vocab: int, extra: dict) -> dict:
    text = {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": 2, "num_key_value_heads": 1,
            "head_dim": head_dim, "global_head_dim": global_head_dim, "sliding_window": 8,
            "max_position_embeddings": 2048, **extra}
    return {"model_type": "gemma4_unified", "gemma_version": GEMMA_VERSION, "text_config": text,
            # tiny multimodal towers (text-only encoding never runs them; their keys are in the file)
            "vision_config": {"patch_size": 4, "pooling_kernel_size": 2, "mm_embed_dim": 16, "mm_posemb_size": 8,
                              "output_proj_dims": hidden},
            "audio_config": {"audio_embed_dim": 8}}


def _to25(base: str, tag: str) -> dict:
    v = copy.deepcopy(get_variant(base))
    t = v["metadata"]["config"]["transformer"]
    t["ff_bias"] = False
    t["use_keyframes_abs_pos_embedding"] = True
    v["metadata"]["model_version"] = "2.5.0"
    v["model_version"] = "2.5.0"
    v["tag"] = tag
    v["base_variant"] = base
    v["prompts"] = list(PROMPTS)
    v["upsamplers"] = {"spatial-x2": v["upsamplers"]["spatial-x2"]}
    for k in ("gemma", "n_valid_text", "n_valid_gemma", "n_valid_negative", "text_len"):
        v.pop(k, None)
    return v


def _tiny25() -> dict:
    v = _to25("tiny", "tiny")
    v["gemma4"] = _gemma4(32, 4, head_dim=16, global_head_dim=32, vocab=256,
                          extra={"layer_types": ["sliding_attention"] * 3 + ["full_attention"]})
    v["metadata"]["config"]["transformer"]["caption_channels"] = 32
    v["duration_head"] = {"pooler_hidden_dim": 16, "num_queries": 1, "num_pooler_heads": 2, "mlp_hidden": 24}
    v["connectors_in"] = "transformer"
    return v


def _real25() -> dict:
    v = _to25("real23", "real")
    v["gemma4"] = _gemma4(32, 6, head_dim=16, global_head_dim=32, vocab=256,
                          extra={"attention_k_eq_v": True, "num_global_key_value_heads": 1})
    v["metadata"]["config"]["transformer"]["caption_channels"] = 32
    v["duration_head"] = None
    v["connectors_in"] = "text_encoder"
    return v


VARIANTS_25 = {"tiny25": _tiny25, "real25": _real25}


def get_variant_25(name: str) -> dict:
    if name not in VARIANTS_25:
        raise SystemExit(f"unknown variant {name!r}; choose from {sorted(VARIANTS_25)}")
    v = VARIANTS_25[name]()
    v["name"] = name
    return v
