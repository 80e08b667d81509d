"""LoRA loading and fusion against the reference (golden_lora: the reference builder's own
fusion at strengths 0.5 and 1.0, and two LoRAs aggregated), exact restore, strict errors, and
the re-quantization bound of a quantized layer."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from reference_data import TOL_BF16, TOL_F32, q8_folder, rel_err

from mlx_ltx.models.lora import LoRAError, active_loras, fuse_loras, load_lora, unfuse_loras
from mlx_ltx.models.transformer import Modality, load_transformer

DTYPES = [(mx.float32, TOL_F32), (mx.bfloat16, TOL_BF16)]
IDS = ["f32", "bf16"]


def lora_path(fixture_set, name="test"):
    return fixture_set.path / fixture_set.manifest["loras"][name]


def run(model, fixture_set, dtype):
    g = fixture_set.golden("transformer")

    def modality(prefix, timesteps):
        return Modality(mx.array(g[f"in.{prefix}.latent"]).astype(dtype), mx.array(g["in.sigma"]).reshape(-1),
                        mx.array(timesteps), mx.array(g[f"in.{prefix}.positions"]),
                        mx.array(g[f"in.{prefix}.context"]).astype(dtype))

    video, audio = model(modality("video", g["in.video.timesteps"]), modality("audio", g["in.audio.timesteps"]))
    return video, audio


def weights(model) -> dict[str, np.ndarray]:
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}


def check_case(model, fixture_set, gold, tag, dtype, tol, fused_paths):
    expected = {k[len(f"{tag}.weight."):]: v for k, v in gold.items() if k.startswith(f"{tag}.weight.")}
    assert sorted(expected) == fused_paths
    params = dict(tree_flatten(model.parameters()))
    for path, w in expected.items():
        assert rel_err(params[f"{path}.weight"], w) <= tol, path
    video, audio = run(model, fixture_set, dtype)
    assert rel_err(video, gold[f"{tag}.out.video"]) <= tol
    assert rel_err(audio, gold[f"{tag}.out.audio"]) <= tol


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=IDS)
def test_fuse_strengths_and_restore(fixture_set, dtype, tol):
    """Stage 1 / stage 2 on one model: fuse 0.5, restore, fuse 1.0, restore (bit-exact), the
    first time from the kept arrays, the second by re-reading the checkpoint."""
    gold = fixture_set.golden("lora")
    model = load_transformer(fixture_set.checkpoint_path, dtype)
    before = weights(model)
    lora = load_lora(lora_path(fixture_set))
    # the test LoRA also aims at a connector layer, which the reference's transformer never loads
    assert lora.skipped and all(t.startswith(("video_embeddings_connector.", "audio_embeddings_connector."))
                                for t in lora.skipped)
    strengths = gold["in.strengths"].tolist()
    for tag, strength, source in zip(("s050", "s100"), strengths, (None, fixture_set.checkpoint)):
        paths = fuse_loras(model, [(lora, strength)], restore_from=source)
        assert active_loras(model) == ((lora.path, strength),)
        check_case(model, fixture_set, gold, tag, dtype, tol, paths)
        assert unfuse_loras(model)
        after = weights(model)
        assert after.keys() == before.keys()
        assert all(np.array_equal(after[k], before[k]) for k in before), "unfuse did not restore the weights"
    assert not unfuse_loras(model) and active_loras(model) == ()


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=IDS)
def test_two_loras_aggregate(fixture_set, dtype, tol):
    """Σ (B·s) @ A over two LoRAs, in the reference's order, against the reference's fusion."""
    gold = fixture_set.golden("lora")
    model = load_transformer(fixture_set.checkpoint_path, dtype)
    s1, s2 = gold["in.mix.strengths"].tolist()
    l1, l2 = load_lora(lora_path(fixture_set)), load_lora(lora_path(fixture_set, "test2"))
    paths = fuse_loras(model, [(l1, s1), (l2, s2)])
    check_case(model, fixture_set, gold, "mix", dtype, tol, paths)


def _bf16(x: np.ndarray) -> np.ndarray:
    return np.array(mx.array(x.astype(np.float32)).astype(mx.bfloat16).astype(mx.float32)).astype(np.float64)


def test_aggregate_rule_float64(fixture_set):
    """The same rule in NumPy float64 with bf16 rounding where the reference rounds:
    bf16(bf16(bf16(B1·s1) @ A1) + s2·(B2 @ A2)), then bf16(W + Δ)."""
    gold = fixture_set.golden("lora")
    s1, s2 = gold["in.mix.strengths"].tolist()
    l1, l2 = load_lora(lora_path(fixture_set)), load_lora(lora_path(fixture_set, "test2"))
    shared = sorted(set(l1.pairs) & set(l2.pairs))
    assert shared
    model = load_transformer(fixture_set.checkpoint_path, mx.float32)
    base = dict(tree_flatten(model.parameters()))
    base = {p: np.array(base[f"{p}.weight"]).astype(np.float64) for p in shared}
    fuse_loras(model, [(l1, s1), (l2, s2)])
    fused = dict(tree_flatten(model.parameters()))
    for p in shared:
        a1, b1, a2, b2 = (np.array(x.astype(mx.float32)).astype(np.float64)
                          for x in (l1.pairs[p].a, l1.pairs[p].b, l2.pairs[p].a, l2.pairs[p].b))
        delta = _bf16(_bf16(_bf16(b1 * s1) @ a1) + s2 * (b2 @ a2))
        expected = _bf16(base[p] + delta)
        # one bf16 step of a weight is the most a different accumulation order can flip
        assert np.abs(np.array(fused[f"{p}.weight"]) - expected).max() <= 2.0 ** -7 * np.abs(expected).max()
        assert rel_err(fused[f"{p}.weight"], gold[f"mix.weight.{p}"]) <= TOL_F32


def test_quantized_layer_bound(fixture_set):
    """QuantizedLinear: dequantize, fuse, re-quantize with the layer's own settings. The fused
    weight differs from the reference's float fusion by at most the layer's existing
    quantization error, one step of the new scales (MLX's affine quantizer also rounds the
    group's zero point, so its error reaches ~0.9 step, not the ideal half) and one bf16 step."""
    gold = fixture_set.golden("lora")
    lora = load_lora(lora_path(fixture_set))
    model = load_transformer(fixture_set.checkpoint_path, mx.float32)
    group, bits = 32, 8
    nn.quantize(model, group_size=group, bits=bits, class_predicate=lambda p, m: isinstance(m, nn.Linear)
                and p in lora.pairs and m.weight.shape[1] % group == 0)
    modules = dict(model.named_modules())
    quantized = [p for p in lora.pairs if isinstance(modules[p], nn.QuantizedLinear)]
    assert quantized  # ff.net.2 has 4·D inputs, a multiple of 32 for every D here
    before = {p: {k: np.array(v) for k, v in modules[p].parameters().items()} for p in quantized}
    float_w = dict(tree_flatten(load_transformer(fixture_set.checkpoint_path, mx.float32).parameters()))
    quant_err = {p: np.abs(np.array(mx.dequantize(modules[p].weight, modules[p].scales, modules[p].biases,
                                                  group_size=group, bits=bits)) - np.array(float_w[f"{p}.weight"]))
                 for p in quantized}
    fuse_loras(model, [(lora, gold["in.strengths"].tolist()[1])])
    for p in quantized:
        layer = modules[p]
        assert (layer.group_size, layer.bits) == (group, bits)
        w = np.array(mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=group, bits=bits))
        ref = gold[f"s100.weight.{p}"]
        step = np.repeat(np.abs(np.array(layer.scales)), group, axis=1)  # affine scales may be negative
        bound = quant_err[p] + step + 2.0 ** -8 * np.abs(ref)
        assert (np.abs(w - ref) <= bound * 1.001 + 1e-7).all(), p
    assert unfuse_loras(model)
    for p in quantized:
        assert all(np.array_equal(np.array(v), before[p][k]) for k, v in modules[p].parameters().items())
    # quantized after loading: the float checkpoint cannot restore these layers
    with pytest.raises(LoRAError, match="cannot restore"):
        fuse_loras(model, [(lora, 1.0)], restore_from=fixture_set.checkpoint)


# ---------------------------------------------------------------- strict errors
def _write(tmp_path, name, tensors):
    path = tmp_path / name
    mx.save_safetensors(str(path), {k: mx.array(v).astype(mx.bfloat16) for k, v in tensors.items()})
    return path


def test_strict_errors(fixture_set, tmp_path):
    shapes = fixture_set.checkpoint.shapes
    target = "transformer_blocks.0.attn1.to_q"
    out_f, in_f = shapes[f"model.diffusion_model.{target}.weight"]
    r = 3

    def pair(path, a_shape=(r, in_f), b_shape=(out_f, r)):
        return {f"diffusion_model.{path}.lora_A.weight": np.ones(a_shape, np.float32) * 0.01,
                f"diffusion_model.{path}.lora_B.weight": np.ones(b_shape, np.float32) * 0.01}

    model = load_transformer(fixture_set.checkpoint_path, mx.float32)
    before = weights(model)
    good = pair(target)

    # unknown target: the whole LoRA is rejected before any layer changes
    lora = load_lora(_write(tmp_path, "unknown.safetensors", {**good, **pair("transformer_blocks.0.attn1.to_nothing")}))
    with pytest.raises(LoRAError, match="to_nothing.lora_A.weight"):
        fuse_loras(model, [(lora, 1.0)])
    # a module that is not a Linear
    norm = load_lora(_write(tmp_path, "norm.safetensors", pair("transformer_blocks.0.attn1.q_norm")))
    with pytest.raises(LoRAError, match="q_norm"):
        fuse_loras(model, [(norm, 1.0)])
    # shapes that do not fit the layer
    wrong = load_lora(_write(tmp_path, "wrong.safetensors", pair(target, (r, in_f + 1))))
    with pytest.raises(LoRAError, match="do not fit"):
        fuse_loras(model, [(wrong, 1.0)])
    assert all(np.array_equal(v, before[k]) for k, v in weights(model).items())

    # at load: tensors the reference would silently drop, broken pairs, mismatched ranks
    with pytest.raises(LoRAError, match=r"to_q\.alpha"):
        load_lora(_write(tmp_path, "alpha.safetensors", {**good, f"diffusion_model.{target}.alpha": np.ones(())}))
    with pytest.raises(LoRAError, match="partner"):
        load_lora(_write(tmp_path, "half.safetensors", {f"diffusion_model.{target}.lora_A.weight": np.ones((r, in_f))}))
    with pytest.raises(LoRAError, match="rank"):
        load_lora(_write(tmp_path, "rank.safetensors", pair(target, (r, in_f), (out_f, r + 1))))

    # fusing twice without restoring is an error; fusing nothing (all strengths 0) is a no-op
    lora = load_lora(_write(tmp_path, "good.safetensors", good))
    assert fuse_loras(model, [(lora, 0.0)]) == [] and active_loras(model) == ()
    fuse_loras(model, [(lora, 1.0)])
    with pytest.raises(LoRAError, match="unfuse_loras"):
        fuse_loras(model, [(lora, 1.0)])


def test_quantized_folder_fuse_and_restore_from_file(fixture_set, tmp_path):
    """A q8 model folder (convert.py): the fused quantized layers follow the same bound, and
    restore_from re-reads them from the folder bit-exactly."""
    folder = q8_folder(fixture_set, tmp_path)
    gold = fixture_set.golden("lora")
    lora = load_lora(lora_path(fixture_set))
    model = load_transformer(folder, mx.bfloat16)
    modules = dict(model.named_modules())
    quantized = [p for p in lora.pairs if isinstance(modules[p], nn.QuantizedLinear)]
    assert quantized
    before = weights(model)
    deq = {p: np.array(mx.dequantize(modules[p].weight, modules[p].scales, modules[p].biases,
                                     group_size=32, bits=8).astype(mx.float32)) for p in quantized}
    base = dict(tree_flatten(load_transformer(fixture_set.checkpoint_path, mx.float32).parameters()))
    fuse_loras(model, [(lora, gold["in.strengths"].tolist()[1])], restore_from=folder)
    for p in quantized:
        layer = modules[p]
        w = np.array(mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=32, bits=8)
                     .astype(mx.float32))
        ref = gold[f"s100.weight.{p}"]
        step = np.repeat(np.abs(np.array(layer.scales.astype(mx.float32))), 32, axis=1)
        # a bf16 folder dequantizes in bf16 (scale·q + bias, each rounded to the group's magnitude)
        # and rounds the fused sum once more: a few bf16 steps of the group's largest weight
        group_max = np.repeat(np.abs(ref).reshape(ref.shape[0], -1, 32).max(-1), 32, axis=1)
        bound = np.abs(deq[p] - np.array(base[f"{p}.weight"])) + step + 2.0 ** -6 * group_max
        assert (np.abs(w - ref) <= bound * 1.001 + 1e-7).all(), p
    assert unfuse_loras(model)
    assert all(np.array_equal(v, before[k]) for k, v in weights(model).items())
