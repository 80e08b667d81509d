"""The LTX-2.5 Gemma-4 text encoder (mlx-lm ``gemma4_text``) against golden_gemma of the 2.5 sets
(FORMAT-25.md), and its bundle handling: tokenizer, strict keys, quantized bundles, the
provenance check.

Hidden states are compared on valid rows only: a fully masked (left pad) query attends to itself
here and gets a zero output in torch's SDPA (see gemma.GemmaHiddenStates.attention_masks).
"""

import json
import logging

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from reference_data import TOL_BF16, TOL_F32, rel_err

from mlx_ltx.loading import Checkpoint, CheckpointError
from mlx_ltx.models.gemma import GemmaConfig
from mlx_ltx.models.gemma4 import (
    Gemma4Config,
    Gemma4LanguageModel,
    GemmaAssets,
    check_gemma_version,
    load_gemma4_model,
    read_gemma4_config,
)
from mlx_ltx.models.text_encoder import TextEncoder, resolve_text_encoder

# The reference's own bfloat16 run misses its float32 golden by up to ~1e-1 on the tiny sets (last
# hidden states: random tiny weights grow the activations layer by layer); the goldens record that
# per state (bf16_ref_err.p{i}.hidden_states.{j}, valid rows). Past the first layers the growth is
# chaotic: two equally valid bf16 runs part by 2-3x per state (ours vs the reference's, measured:
# layer 1 ours 0.6x the reference's error, the last layers up to 2.4x). So a prompt's states are
# bounded by BF16_CHAOS x the reference's worst state of that prompt; float32 is the parity check.
BF16_CHAOS = 3.0


def _te(fs):
    return fs.file("text_encoder")


def _checkpoint(fs) -> Checkpoint:
    return Checkpoint({role: str(fs.file(role)) for role in fs.manifest["files"]})


def _prompts(fs) -> list[str]:
    return fs.manifest["gemma"]["prompts"]


def _golden_batch(g, n) -> tuple[mx.array, mx.array]:
    ids = np.concatenate([g[f"p{i}.input_ids"] for i in range(n)])
    mask = np.concatenate([g[f"p{i}.attention_mask"] for i in range(n)])
    return mx.array(ids), mx.array(mask)


def _check_states(states, g, n_prompts, tol) -> None:
    """``tol``: a bound, or None for the bf16 bound of each prompt (see BF16_CHAOS)."""
    n_states = len([k for k in g if k.startswith("p0.hidden_states.")])
    assert len(states) == n_states
    for i in range(n_prompts):
        valid = g[f"p{i}.attention_mask"][0].astype(bool)
        worst = max(float(g[f"bf16_ref_err.p{i}.hidden_states.{j}"][0]) for j in range(n_states))
        for j, h in enumerate(states):
            h = np.array(h[i].astype(mx.float32))
            assert np.isfinite(h).all(), f"prompt {i} hidden state {j} is not finite"
            key = f"p{i}.hidden_states.{j}"
            err, bound = rel_err(h[valid], g[key][0][valid]), max(TOL_BF16, BF16_CHAOS * worst) if tol is None else tol
            assert err <= bound, f"prompt {i} hidden state {j}: rel err {err:.2e} > {bound:.2e}"


def _read_bundle(fs) -> tuple[dict[str, mx.array], dict[str, str]]:
    tensors, metadata = mx.load(str(_te(fs)), return_metadata=True)
    return dict(tensors), dict(metadata)


def _write_bundle(path, tensors, metadata, **config_updates) -> str:
    metadata = dict(metadata)
    if config_updates:
        config = json.loads(metadata["gemma_config"])
        for key, value in config_updates.items():
            if key.startswith("text_config."):
                config["text_config"][key[len("text_config."):]] = value
            else:
                config[key] = value
        metadata["gemma_config"] = json.dumps(config)
    mx.save_safetensors(str(path), tensors, metadata=metadata)
    return str(path)


def test_tokenizer_matches_reference(fixture_set_25):
    """The bundled tokenizer through GemmaTokenizer = the reference's LTXGemmaTokenizer: the same
    ids, a leading BOS (Gemma 4's tokenizer adds none), left padding with the pad id."""
    fs = fixture_set_25
    g = fs.golden("gemma")
    tok = GemmaAssets.from_single_file(_te(fs)).tokenizer(fs.manifest["gemma"].get("max_length", 1024))
    ids, mask = tok(_prompts(fs))
    hf = tok.tokenizer
    for i, prompt in enumerate(_prompts(fs)):
        np.testing.assert_array_equal(np.array(ids[i: i + 1]), g[f"p{i}.input_ids"])
        np.testing.assert_array_equal(np.array(mask[i: i + 1]), g[f"p{i}.attention_mask"])
        n = int(g[f"p{i}.attention_mask"].sum())
        assert int(ids[i, -n]) == hf.bos_token_id
        assert (np.array(ids[i, :-n]) == hf.pad_token_id).all()
        assert hf(prompt.strip())["input_ids"][0] != hf.bos_token_id  # so the BOS is the wrapper's


@pytest.mark.parametrize("dtype,tol", [(mx.float32, TOL_F32), (mx.bfloat16, None)], ids=["f32", "bf16"])
def test_hidden_states_parity(fixture_set_25, dtype, tol):
    fs = fixture_set_25
    g = fs.golden("gemma")
    model = load_gemma4_model(_te(fs), dtype)
    assert len(model.language_model.model.layers) + 1 == len([k for k in g if k.startswith("p0.hidden_states.")])
    _check_states(model.hidden_states(*_golden_batch(g, len(_prompts(fs)))), g, len(_prompts(fs)), tol)


def test_encodings_parity(fixture_set_25):
    """TextEncoder over the split files: the Gemma-4 family picked from the bundle, the version
    check passed, the embeddings processor from (transformer, text encoder)."""
    fs = fixture_set_25
    g = fs.golden("gemma")
    te = TextEncoder(None, _checkpoint(fs), dtype=mx.float32)
    assert te.model_type == "gemma4_unified"
    for i, result in enumerate(te.encode_prompts(_prompts(fs))):
        assert rel_err(result.video_encoding, g[f"p{i}.video_encoding"]) <= TOL_F32
        assert rel_err(result.audio_encoding, g[f"p{i}.audio_encoding"]) <= TOL_F32
        np.testing.assert_array_equal(np.array(result.attention_mask), g[f"p{i}.binary_mask"])


def test_left_padding_matches_unpadded(fixture_set_25):
    fs = fixture_set_25
    g = fs.golden("gemma")
    model = load_gemma4_model(_te(fs), mx.float32)
    valid = g["p0.attention_mask"][0].astype(bool)
    padded = model.hidden_states(mx.array(g["p0.input_ids"]), mx.array(g["p0.attention_mask"]))
    ids = mx.array(g["p0.input_ids"][:, valid])
    for i, (a, b) in enumerate(zip(padded, model.hidden_states(ids, mx.ones(ids.shape, mx.int32)))):
        assert rel_err(np.array(a)[:, valid], np.array(b)) <= TOL_F32, f"hidden state {i}"


# Gemma4UnifiedTextConfig's defaults in the reference's transformers (5.14.1), where mlx-lm's differ
# (the main venv's newer transformers dropped global_head_dim / num_global_key_value_heads from this
# class, so it cannot serve as the oracle)
_REFERENCE_DEFAULTS = {"num_kv_shared_layers": 0, "sliding_window": 1024, "use_double_wide_mlp": False,
                       "num_key_value_heads": 4, "max_position_embeddings": 262_144,
                       "final_logit_softcapping": None, "global_head_dim": 512, "num_global_key_value_heads": None,
                       "layer_types": ("sliding_attention",) * 5 + ("full_attention",)}


def test_config_reads_the_file_and_reference_defaults(fixture_set_25):
    """Every text-config value of the bundle (the reference packer writes them all) is taken as
    it is; keys a sparse config leaves out take Gemma4UnifiedTextConfig's defaults, not mlx-lm's
    (KV sharing, per-layer inputs, a 512 window, double-wide MLPs)."""
    raw = json.loads(_read_bundle(fixture_set_25)[1]["gemma_config"])
    ours = Gemma4Config.from_dict(raw)
    text = raw["text_config"]
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "num_global_key_value_heads", "head_dim", "global_head_dim",
                  "attention_k_eq_v", "num_kv_shared_layers", "use_double_wide_mlp", "rms_norm_eps",
                  "sliding_window", "pad_token_id", "max_position_embeddings"):
        assert getattr(ours, field) == text[field], field
    assert list(ours.layer_types) == text["layer_types"]
    for layer_type, p in ours.rope_parameters.items():
        assert {k: p[k] for k in text["rope_parameters"][layer_type]} == text["rope_parameters"][layer_type]
    assert ours.gemma_version == raw["gemma_version"]

    sparse = Gemma4Config.from_dict({"model_type": "gemma4_unified", "text_config": {"num_hidden_layers": 6}})
    for field, value in _REFERENCE_DEFAULTS.items():
        assert getattr(sparse, field) == value, field
    assert sparse.rope_parameters["full_attention"] == {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                                        "rope_theta": 1_000_000.0}


def test_refuses_bidirectional_all_and_unknown_types(fixture_set_25, tmp_path):
    tensors, metadata = _read_bundle(fixture_set_25)
    path = _write_bundle(tmp_path / "all.safetensors", tensors, metadata,
                         **{"text_config.use_bidirectional_attention": "all"})
    with pytest.raises(CheckpointError, match="use_bidirectional_attention='all'"):
        load_gemma4_model(path, mx.float32)
    path = _write_bundle(tmp_path / "dense.safetensors", tensors, metadata, model_type="gemma4")
    with pytest.raises(CheckpointError, match="model_type='gemma4'"):
        resolve_text_encoder(path)
    with pytest.raises(CheckpointError, match="model_type='gemma4'"):
        read_gemma4_config(path)


@pytest.mark.parametrize("edit", ["missing", "unexpected", "misshaped"])
def test_strict_loading_names_the_key(fixture_set_25, tmp_path, edit):
    tensors, metadata = _read_bundle(fixture_set_25)
    key = "model.layers.0.self_attn.k_proj.weight"
    if edit == "missing":
        tensors.pop(key)
    elif edit == "unexpected":
        key = "model.layers.0.self_attn.extra.weight"
        tensors[key] = mx.zeros((2, 2))
    else:
        tensors[key] = tensors[key][:, :-1]
    path = _write_bundle(tmp_path / f"{edit}.safetensors", tensors, metadata)
    with pytest.raises(CheckpointError, match=edit.replace("misshaped", "wrong shape")) as e:
        load_gemma4_model(path, mx.float32)
    assert key in str(e.value)


def test_hf_layout_and_metadata_sidecars(fixture_set_25, tmp_path):
    """The HF key layout (``model.language_model.*``) loads as the Comfy-flat one, and a
    tokenizer_config.json kept as a metadata string (older / Comfy packs) tokenizes alike."""
    fs = fixture_set_25
    g = fs.golden("gemma")
    tensors, metadata = _read_bundle(fs)
    hf = {("model.language_model." + k[len("model."):] if k.startswith(("model.layers.", "model.embed_tokens.",
                                                                           "model.norm.")) else k): v
          for k, v in tensors.items()}
    metadata["tokenizer_config.json"] = bytes(np.array(hf.pop("hf_asset__tokenizer_config.json"))).decode()
    path = _write_bundle(tmp_path / "hf.safetensors", hf, metadata)
    n = len(_prompts(fs))
    _check_states(load_gemma4_model(path, mx.float32).hidden_states(*_golden_batch(g, n)), g, n, TOL_F32)
    ids, _ = GemmaAssets.from_single_file(path).tokenizer()(_prompts(fs))
    np.testing.assert_array_equal(np.array(ids[:1]), g["p0.input_ids"])


def test_quantized_bundle_loads(fixture_set_25, tmp_path):
    """A q8 bundle (scales/biases + a 'quantization' entry in gemma_config, as mlx-lm's
    config.json): exactly the layers stored with scales are quantized, the result equals the
    model quantized in memory, and the hidden states stay close to the reference's."""
    fs = fixture_set_25
    g = fs.golden("gemma")
    model = load_gemma4_model(_te(fs), mx.float32)
    in_dims = {w.shape[-1] for _, w in tree_flatten(model.parameters()) if w.ndim == 2}
    group = next((gs for gs in (32, 64, 128) if all(d % gs == 0 for d in in_dims)), None)
    if group is None:
        pytest.skip(f"no MLX quantization group size divides the tiny Gemma's input widths {sorted(in_dims)}")
    kept = "language_model.model.layers.0.mlp.down_proj"
    nn.quantize(model, group_size=group, bits=8, class_predicate=lambda p, m: p != kept and hasattr(m, "to_quantized"))
    tensors, metadata = _read_bundle(fs)
    tensors = {k: v for k, v in tensors.items() if not k.startswith(("model.layers.", "model.embed_tokens.",
                                                                      "model.norm."))}
    tensors.update({"model." + k[len("language_model.model."):]: v for k, v in tree_flatten(model.parameters())})
    path = _write_bundle(tmp_path / "q8.safetensors", tensors, metadata, quantization={"group_size": group, "bits": 8})
    loaded = load_gemma4_model(path, mx.float32)
    modules = dict(loaded.named_modules())
    assert type(modules[kept]) is nn.Linear
    assert isinstance(modules["language_model.model.layers.0.mlp.up_proj"], nn.QuantizedLinear)
    assert isinstance(modules["language_model.model.embed_tokens"], nn.QuantizedEmbedding)
    batch = _golden_batch(g, len(_prompts(fs)))
    ours = loaded.hidden_states(*batch)
    for a, b in zip(ours, model.hidden_states(*batch)):
        assert rel_err(a, np.array(b)) <= 1e-6
    # (q8 is mlx's own rounding of these weights: the load is what is checked, against quantizing
    # the loaded model in memory; how far q8 moves a random tiny Gemma from the golden is chaotic)
    assert all(np.isfinite(np.array(h.astype(mx.float32))).all() for h in ours)


def test_kv_shared_walk_equals_mlx_lm_forward(fixture_set_25):
    """KV sharing and K=V full layers (off in the tiny sets): the walk hands each KV-shared layer
    its source layer's keys and values as mlx-lm's own forward does."""
    raw = json.loads(_read_bundle(fixture_set_25)[1]["gemma_config"])
    n = raw["text_config"]["num_hidden_layers"] + 2
    raw["text_config"].update(num_hidden_layers=n, num_kv_shared_layers=2, attention_k_eq_v=True,
                              num_global_key_value_heads=1, sliding_window=3,
                              layer_types=["sliding_attention", "full_attention"] * (n // 2))
    model = Gemma4LanguageModel(Gemma4Config.from_dict(raw))
    inner = model.language_model.model
    assert inner.previous_kvs[-2:] == [n - 4, n - 3]
    ids = mx.random.randint(3, raw["text_config"]["vocab_size"], (1, 11), key=mx.random.key(0))
    expected = inner(ids)  # causal masks, no padding: the same as ours on an all-valid row
    assert rel_err(model.hidden_states(ids, mx.ones(ids.shape, mx.int32))[-1], np.array(expected)) <= TOL_F32


def test_version_check(fixture_set_25, caplog):
    fs = fixture_set_25
    ckpt = _checkpoint(fs)
    meta = ckpt.role_metadata("transformer")
    tr, te = str(fs.file("transformer")), str(_te(fs))
    cfg = read_gemma4_config(te)
    check_gemma_version(meta, cfg, tr, te)  # the released pair

    with pytest.raises(CheckpointError, match="mismatch") as e:
        check_gemma_version({**meta, "gemma_source_checkpoint": {"gemma_version": "other-v9"}}, cfg, tr, te)
    assert all(s in str(e.value) for s in ("'other-v9'", repr(cfg.gemma_version), tr, te))

    gemma3 = GemmaConfig.from_dict({"model_type": "gemma3", "text_config": {}})
    with pytest.raises(CheckpointError, match="not a Gemma-3 folder") as e:
        check_gemma_version(meta, gemma3, tr, "some/gemma-3-folder")
    assert "gemma4-12b-with-proj-ltx-2.5-bf16.safetensors" in str(e.value) and "some/gemma-3-folder" in str(e.value)

    unstamped = {k: v for k, v in meta.items() if k != "gemma_source_checkpoint"}
    with pytest.raises(CheckpointError, match="must declare gemma_source_checkpoint"):
        check_gemma_version({**unstamped, "model_version": "2.5.0"}, cfg, tr, te)
    with caplog.at_level(logging.WARNING):  # neither side stamped: the reference only warns
        check_gemma_version({**unstamped, "model_version": "2.5.0"}, gemma3, tr, te)
    assert "skipping the version check" in caplog.text
    with pytest.raises(CheckpointError, match="needs a Gemma-3 text encoder"):
        check_gemma_version({**unstamped, "model_version": "2.3.0"}, cfg, tr, te)
    check_gemma_version({**unstamped, "model_version": "2.3.0"}, gemma3, tr, te)


def test_text_encoder_checks_version_and_refuses_enhancement(fixture_set_25, tmp_path):
    fs = fixture_set_25
    tensors, metadata = _read_bundle(fs)
    other = _write_bundle(tmp_path / "other.safetensors", tensors, metadata, gemma_version="other-v9")
    with pytest.raises(CheckpointError, match="mismatch"):
        TextEncoder(other, _checkpoint(fs))
    te = TextEncoder(str(_te(fs)), _checkpoint(fs), dtype=mx.float32)
    with pytest.raises(ValueError, match="enhancement"):
        te.encode_prompt(_prompts(fs)[0], enhance=True)
