"""User LoRAs in the three published key layouts (trainer, ComfyUI, diffusers) against
golden_lora_layouts: the reference builder's fusion of each layout converted back to the trainer
layout by the generator (tests/reference/lora_layouts.py), bit for bit; two LoRAs at once; a q8
model against dequantize -> reference fusion -> requantize; strict errors; and user LoRAs in the
pipelines (every stage, before the distilled LoRA, eager and streamed). Sets made before
golden_lora_layouts existed skip the golden tests."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from reference_data import q8_folder

from mlx_ltx.generations import describe
from mlx_ltx.models.lora import LoRAError, fuse_loras, load_lora, unfuse_loras
from mlx_ltx.models.transformer import load_transformer
from mlx_ltx.validation import check_user_loras

DTYPES = [mx.float32, mx.bfloat16]
IDS = ["f32", "bf16"]
# golden case -> manifest "loras" name, and the layout load_lora must detect
LAYOUTS = {"trainer": ("test", "trainer"), "comfy": ("comfy", "comfyui"), "diffusers": ("diffusers", "diffusers")}
Q_GROUP, Q_BITS = 32, 8


def gold(fixture_set):
    return fixture_set.golden("lora_layouts")  # skips a set made before it existed


def lora_file(fixture_set, name):
    return fixture_set.path / fixture_set.manifest["loras"][name]


def fused_weights(model, paths):
    params = dict(tree_flatten(model.parameters()))
    return {p: np.array(params[f"{p}.weight"].astype(mx.float32)) for p in paths}


def expected(g, case):
    prefix = f"{case}.weight."
    return {k[len(prefix):]: v for k, v in g.items() if k.startswith(prefix)}


def assert_bit_identical(model, fused_paths, exp):
    assert sorted(exp) == sorted(fused_paths)
    got = fused_weights(model, exp)
    bad = [p for p in exp if not np.array_equal(got[p], exp[p])]
    assert not bad, f"not bit-identical to the reference's fusion: {bad}"


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("case", list(LAYOUTS))
def test_layout_bit_identical(fixture_set, case, dtype):
    """Each layout, detected from its keys, fuses to exactly the reference's weights (the reference
    fuses the file's bf16 state dict before the cast, so the float32 and bfloat16 models agree)."""
    g = gold(fixture_set)
    name, layout = LAYOUTS[case]
    lora = load_lora(lora_file(fixture_set, name))
    assert lora.layout == layout
    model = load_transformer(fixture_set.checkpoint_path, dtype)
    paths = fuse_loras(model, [(lora, float(g["in.strength"][0]))])
    assert_bit_identical(model, paths, expected(g, case))


def test_layouts_name_the_same_layers(fixture_set):
    gold(fixture_set)
    trainer, comfy, diffusers = (load_lora(lora_file(fixture_set, n)) for n in ("test", "comfy", "diffusers"))
    assert sorted(trainer.pairs) == sorted(comfy.pairs) == sorted(diffusers.pairs)
    assert "patchify_proj" in diffusers.pairs  # diffusers' proj_in, renamed
    assert diffusers.pairs["patchify_proj"].key_a == "transformer.proj_in.lora_A.weight"
    # ComfyUI alpha 3 at rank 4; diffusers lora_alpha 8 at r 4 (lora_adapter_metadata)
    assert {p.scale for p in comfy.pairs.values()} == {0.75} and {p.scale for p in diffusers.pairs.values()} == {2.0}
    assert comfy.skipped == trainer.skipped and not diffusers.skipped


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_two_loras_at_once(fixture_set, dtype):
    """A ComfyUI-layout LoRA and a trainer-layout one aggregated in the reference's order."""
    g = gold(fixture_set)
    s1, s2 = g["in.two.strengths"].tolist()
    model = load_transformer(fixture_set.checkpoint_path, dtype)
    paths = fuse_loras(model, [(load_lora(lora_file(fixture_set, "comfy")), s1),
                               (load_lora(lora_file(fixture_set, "test2")), s2)])
    assert_bit_identical(model, paths, expected(g, "two"))


def _unpack(w: mx.array) -> np.ndarray:
    """q8 codes [out, in] of an MLX-packed weight (four little-endian bytes per uint32)."""
    return np.array(w).view(np.uint8).reshape(w.shape[0], -1)


def _dequantize(codes, scales, biases) -> np.ndarray:
    """q·s + b in float64 from the stored bf16 scales / biases (the ideal value of each code)."""
    s = np.repeat(np.asarray(scales, np.float64), Q_GROUP, axis=1)
    b = np.repeat(np.asarray(biases, np.float64), Q_GROUP, axis=1)
    return codes.astype(np.float64) * s + b


def test_q8_matches_dequantize_fuse_requantize(fixture_set, tmp_path):
    """A q8 folder (convert.py, group 32, bf16): its layers equal the golden's quantization of the
    checkpoint exactly; fused, they match the golden's dequantize -> reference fusion -> requantize to
    the q8 tolerance: every element within one step of the layer's scales (a code may round the
    other way where the fused value sits on a rounding boundary)."""
    g = gold(fixture_set)
    folder = q8_folder(fixture_set, tmp_path)
    model = load_transformer(folder, mx.bfloat16)
    modules = dict(model.named_modules())
    q_paths = sorted({k[len("q8.base."):].rsplit(".", 1)[0] for k in g if k.startswith("q8.base.")})
    assert q_paths
    for p in q_paths:
        layer = modules[p]
        assert isinstance(layer, nn.QuantizedLinear) and (layer.group_size, layer.bits) == (Q_GROUP, Q_BITS)
        assert np.array_equal(_unpack(layer.weight), g[f"q8.base.{p}.q"]), p
        assert np.array_equal(np.array(layer.scales.astype(mx.float32)), g[f"q8.base.{p}.scales"]), p
        assert np.array_equal(np.array(layer.biases.astype(mx.float32)), g[f"q8.base.{p}.biases"]), p
    fuse_loras(model, [(load_lora(lora_file(fixture_set, "test")), float(g["in.strength"][0]))], restore_from=folder)
    changed = total = 0
    for p in q_paths:
        layer = modules[p]
        ours = _dequantize(_unpack(layer.weight), np.array(layer.scales.astype(mx.float32)),
                           np.array(layer.biases.astype(mx.float32)))
        ref = _dequantize(g[f"q8.fused.{p}.q"], g[f"q8.fused.{p}.scales"], g[f"q8.fused.{p}.biases"])
        step = np.repeat(np.abs(g[f"q8.fused.{p}.scales"]).astype(np.float64), Q_GROUP, axis=1)
        assert (np.abs(ours - ref) <= step * 1.001).all(), p
        changed += int((_unpack(layer.weight) != g[f"q8.fused.{p}.q"]).sum())
        total += ours.size
    print(f"\n{fixture_set.path.name} q8 fused codes differing from the reference's requantization: "
          f"{changed} of {total}")
    assert changed <= total // 100
    assert unfuse_loras(model)


# ---------------------------------------------------------------- errors
def _save(path, tensors, metadata=None):
    mx.save_safetensors(str(path), {k: mx.array(v).astype(mx.bfloat16) for k, v in tensors.items()},
                        metadata=metadata or {})
    return path


def _shapes(fixture_set, target="transformer_blocks.0.attn1.to_q"):
    return fixture_set.checkpoint.shapes[f"model.diffusion_model.{target}.weight"]


def test_layout_errors(fixture_set, tmp_path):
    target = "transformer_blocks.0.attn1.to_q"
    out_f, in_f = _shapes(fixture_set, target)
    a, b = np.full((2, in_f), 0.01, np.float32), np.full((out_f, 2), 0.01, np.float32)
    comfy = {f"diffusion_model.{target}.lora_down.weight": a, f"diffusion_model.{target}.lora_up.weight": b,
             f"diffusion_model.{target}.alpha": np.array(1.0, np.float32)}
    assert load_lora(_save(tmp_path / "c.safetensors", comfy)).layout == "comfyui"
    # ComfyUI: a diff tensor (a full-weight delta the reference would drop) and a lone lora_up
    with pytest.raises(LoRAError, match=r"comfyui layout.*to_k\.diff"):
        load_lora(_save(tmp_path / "c2.safetensors",
                        {**comfy, "diffusion_model.transformer_blocks.0.attn1.to_k.diff": b}))
    with pytest.raises(LoRAError, match="lora_down/lora_up partner"):
        load_lora(_save(tmp_path / "c3.safetensors", {f"diffusion_model.{target}.lora_up.weight": b}))
    with pytest.raises(LoRAError, match="one number"):
        load_lora(_save(tmp_path / "c4.safetensors", {**comfy, f"diffusion_model.{target}.alpha": np.ones(2)}))
    # diffusers: a text-encoder LoRA in the same file, DoRA, per-layer alpha patterns
    diff = {f"transformer.{target}.lora_A.weight": a, f"transformer.{target}.lora_B.weight": b}
    assert load_lora(_save(tmp_path / "d.safetensors", diff)).pairs[target].scale == 1.0
    with pytest.raises(LoRAError, match=r"diffusers layout.*text_encoder\.layers"):
        load_lora(_save(tmp_path / "d2.safetensors", {**diff, "text_encoder.layers.0.q_proj.lora_A.weight": a}))
    meta = {"transformer.r": 2, "transformer.lora_alpha": 4, "transformer.use_dora": True}
    with pytest.raises(LoRAError, match="DoRA"):
        load_lora(_save(tmp_path / "d3.safetensors", diff, {"lora_adapter_metadata": json.dumps(meta)}))
    meta = {"transformer.r": 2, "transformer.lora_alpha": 4, "transformer.alpha_pattern": {"to_q": 8}}
    with pytest.raises(LoRAError, match="alpha_pattern"):
        load_lora(_save(tmp_path / "d4.safetensors", diff, {"lora_adapter_metadata": json.dumps(meta)}))
    meta = {"transformer.r": 2, "transformer.lora_alpha": 3}
    assert load_lora(_save(tmp_path / "d5.safetensors", diff,
                           {"lora_adapter_metadata": json.dumps(meta)})).pairs[target].scale == 1.5
    # trainer: an alpha next to lora_A/lora_B is ambiguous (the reference ignores it, ComfyUI applies it)
    trainer = {f"diffusion_model.{target}.lora_A.weight": a, f"diffusion_model.{target}.lora_B.weight": b,
               f"diffusion_model.{target}.alpha": np.array(1.0, np.float32)}
    with pytest.raises(LoRAError, match=r"trainer layout.*to_q\.alpha"):
        load_lora(_save(tmp_path / "t.safetensors", trainer))


def test_lora_for_no_layer_of_the_model(fixture_set, tmp_path):
    """A LoRA whose every layer is missing from the model (another model's): an error showing a few
    unmatched keys, at fusion and before anything loads (checkpoint headers)."""
    out_f, in_f = _shapes(fixture_set)
    other = {f"diffusion_model.double_blocks.{i}.img_attn.qkv.{f}.weight": x for i in range(7)
             for f, x in (("lora_A", np.ones((2, in_f))), ("lora_B", np.ones((out_f, 2))))}
    path = _save(tmp_path / "flux.safetensors", other)
    lora = load_lora(path)
    model = load_transformer(fixture_set.checkpoint_path, mx.float32)
    with pytest.raises(LoRAError, match=r"names no layer of this transformer.*double_blocks\.\d\.img_attn.*2 more"):
        fuse_loras(model, [(lora, 1.0)])
    kind = describe(fixture_set.checkpoint)
    with pytest.raises(LoRAError, match="names no layer"):
        check_user_loras([(path, 1.0)], kind, fixture_set.checkpoint)


def test_user_lora_checks(fixture_set, tmp_path):
    """check_user_loras (Pipeline(loras=...)): missing file, strength, shape of the argument, and a
    LoRA of another generation, all from headers."""
    gold(fixture_set)
    ckpt, kind = fixture_set.checkpoint, describe(fixture_set.checkpoint)
    good = lora_file(fixture_set, "comfy")
    assert check_user_loras([(good, 0.5), (str(lora_file(fixture_set, "diffusers")), 1)], kind, ckpt) == \
        ((str(good), 0.5), (str(lora_file(fixture_set, "diffusers")), 1.0))
    assert check_user_loras(None, kind, ckpt) == () == check_user_loras([], kind, ckpt)
    with pytest.raises(FileNotFoundError, match="LoRA file not found"):
        check_user_loras([(tmp_path / "missing.safetensors", 1.0)], kind, ckpt)
    for bad in (float("nan"), float("inf"), "0.5", True, None):
        with pytest.raises(ValueError, match="finite number"):
            check_user_loras([(good, bad)], kind, ckpt)
    with pytest.raises(ValueError, match=r"loras\[0\] must be a \(path, strength\) pair"):
        check_user_loras([str(good)], kind, ckpt)
    with pytest.raises(ValueError, match="list of"):
        check_user_loras(str(good), kind, ckpt)
    # another generation: by metadata, and by the release's file naming
    tensors = {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(good)).items()}
    version = "2.5.0" if kind.version[:2] != (2, 5) else "2.3.0"
    other = _save(tmp_path / "other.safetensors", tensors, {"model_version": version})
    with pytest.raises(ValueError, match="is a LoRA for LTX"):
        check_user_loras([(other, 1.0)], kind, ckpt)
    named = _save(tmp_path / ("ltx-2-19b-style-lora.safetensors" if kind.version else "ltx-2.3-style.safetensors"),
                  tensors)
    with pytest.raises(ValueError, match="is a LoRA for LTX"):
        check_user_loras([(named, 1.0)], kind, ckpt)


# ---------------------------------------------------------------- pipelines
def _pipeline(fixture_set, name, loras, memory="eager", dtype=mx.float32):
    from mlx_ltx.pipelines import Pipeline

    return Pipeline.from_pretrained(
        fixture_set.checkpoint_path, name, gemma=str(fixture_set.path / fixture_set.manifest["gemma_dir"]),
        upsampler=str(fixture_set.upsampler_path("spatial-x2")),
        distilled_lora=str(lora_file(fixture_set, "test")) if name.startswith("dev-two") else None,
        dtype=dtype, low_memory=False, memory=memory, loras=loras)


def test_pipeline_validates_loras_before_loading(fixture_set, tmp_path):
    gold(fixture_set)
    with pytest.raises(FileNotFoundError, match="LoRA file not found"):
        _pipeline(fixture_set, "distilled", [(tmp_path / "missing.safetensors", 1.0)])
    with pytest.raises(ValueError, match="finite number"):
        _pipeline(fixture_set, "distilled", [(lora_file(fixture_set, "comfy"), float("nan"))])


@pytest.mark.parametrize("name", ["distilled", "dev", "dev-two-stage", "dev-two-stage-hq"])
def test_stage_fusion_matches_reference_wiring(fixture_set, name):
    """Every stage of every pipeline fuses the user LoRAs, followed by the distilled LoRA at the
    stage's strength where the stage has one (the reference: ``loras=(*loras, distilled_lora)``), in
    one aggregation: the stage's weights equal one fuse_loras of that list on a fresh model."""
    gold(fixture_set)
    user = [(str(lora_file(fixture_set, "diffusers")), 0.7), (str(lora_file(fixture_set, "test2")), -0.5)]
    p = _pipeline(fixture_set, name, user)
    assert p.loras == tuple(user)
    for stage in p.spec.stages:
        model = p.model_for(stage)
        loras = [(load_lora(path), s) for path, s in user]
        if stage.distilled_lora is not None:
            loras.append((load_lora(p.distilled_lora_path), stage.distilled_lora))
        fresh = load_transformer(fixture_set.checkpoint_path, mx.float32)
        paths = fuse_loras(fresh, loras)
        got, exp = fused_weights(model, paths), fused_weights(fresh, paths)
        assert all(np.array_equal(got[k], exp[k]) for k in paths), (name, stage)


def _denoise(p, g, steps=2):
    from test_pipelines import _dev_params, contexts, final_geometry

    geo = final_geometry(g, p.spec.two_stage)
    guidance = _dev_params(g, p) if p.spec.guided else {}  # the fixture's STG block
    video, audio = p.denoise(contexts(g, negative=p.spec.guided), geo.num_frames, geo.height, geo.width, geo.fps,
                             noise=7, steps=steps, **guidance)
    return np.array(video.astype(mx.float32)), np.array(audio.astype(mx.float32))


def test_pipeline_run_with_user_lora(fixture_set):
    """dev-two-stage, a few steps, injected (seeded) noise: a user LoRA changes the output; streamed
    blocks give the eager output bit for bit with the user LoRA and the distilled LoRA fused."""
    from test_sampling import golden

    gold(fixture_set)
    g = golden(fixture_set, "pipeline")
    user = [(str(lora_file(fixture_set, "comfy")), 0.8)]
    base = _denoise(_pipeline(fixture_set, "dev-two-stage", []), g)
    eager = _denoise(_pipeline(fixture_set, "dev-two-stage", user), g)
    assert not np.array_equal(base[0], eager[0]) and not np.array_equal(base[1], eager[1])
    stream_p = _pipeline(fixture_set, "dev-two-stage", user, memory="stream")
    stream = _denoise(stream_p, g)
    assert stream_p.transformer().memory == "stream"
    assert all(np.array_equal(x, y) for x, y in zip(stream, eager))


def test_q4_folder_fuse(fixture_set, tmp_path):
    """A q4 folder: the diffusers-layout LoRA fused into its quantized layers stays within the layer's
    own quantization error, one q4 step and a few bf16 steps of the reference's float fusion."""
    from mlx_ltx import convert as conv

    g = gold(fixture_set)
    release = tmp_path / "release"
    release.mkdir()
    (release / "ltx-2.3-22b-dev.safetensors").symlink_to(fixture_set.checkpoint_path.absolute())
    folder = conv.convert(str(release), "dev", str(tmp_path / "q4"), quantize="q4", group_size=32,
                          progress=lambda m: None)
    model = load_transformer(folder, mx.bfloat16)
    modules = dict(model.named_modules())
    lora = load_lora(lora_file(fixture_set, "diffusers"))
    quantized = [p for p in lora.pairs if isinstance(modules[p], nn.QuantizedLinear)]
    assert quantized and all(modules[p].bits == 4 for p in quantized)
    deq = lambda layer: np.array(mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=32,  # noqa: E731
                                               bits=4).astype(mx.float32))
    base = dict(tree_flatten(load_transformer(fixture_set.checkpoint_path, mx.float32).parameters()))
    quant_err = {p: np.abs(deq(modules[p]) - np.array(base[f"{p}.weight"])) for p in quantized}
    fuse_loras(model, [(lora, float(g["in.strength"][0]))], restore_from=folder)
    for p in quantized:
        ref = g[f"diffusers.weight.{p}"]
        step = np.repeat(np.abs(np.array(modules[p].scales.astype(mx.float32))), 32, axis=1)
        group_max = np.repeat(np.abs(ref).reshape(ref.shape[0], -1, 32).max(-1), 32, axis=1)
        assert (np.abs(deq(modules[p]) - ref) <= (quant_err[p] + step + 2.0 ** -6 * group_max) * 1.001).all(), p
    assert unfuse_loras(model)


def test_cli_lora_flag(fixture_set, tmp_path, capsys):
    """``--lora PATH STRENGTH``, repeatable; a bad strength is a usage error, a missing file an error
    before anything loads."""
    from mlx_ltx.generate import main, setup_arg_parser

    gold(fixture_set)
    base = ["--model", str(fixture_set.checkpoint_path), "--gemma", str(fixture_set.path / "tiny-gemma3"),
            "--upsampler", str(fixture_set.upsampler_path("spatial-x2")), "--prompt", "x",
            "--output", str(tmp_path / "out.mp4")]
    args = setup_arg_parser().parse_args(base + ["--lora", "a.safetensors", "0.5", "--lora", "b.safetensors", "-1"])
    assert args.loras == [["a.safetensors", "0.5"], ["b.safetensors", "-1"]]
    with pytest.raises(SystemExit) as e:
        main(base + ["--lora", str(lora_file(fixture_set, "comfy")), "strong"])
    assert e.value.code == 2 and "STRENGTH must be a number" in capsys.readouterr().err
    assert main(base + ["--lora", str(tmp_path / "missing.safetensors"), "1"]) == 2
    assert "LoRA file not found" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()
