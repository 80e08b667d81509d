"""convert.py: official release -> MLX model folder; loading either gives the same model."""

import json
import os
import shutil
from collections import namedtuple

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_ltx import convert as conv
from mlx_ltx.loading import Checkpoint, load_component
from mlx_ltx.models import registry


def _release_copy(fixture_set, folder):
    """The fixture laid out like a local copy of the HF repo (official file names)."""
    os.makedirs(folder, exist_ok=True)
    ckpt = fixture_set.checkpoint
    name = "ltx-2.3-22b-dev.safetensors" if ckpt.metadata.get("model_version") else "ltx-2-19b-dev.safetensors"
    os.symlink(fixture_set.checkpoint_path, os.path.join(folder, name))
    ups = {"spatial-x2": "ltx-2.3-spatial-upscaler-x2-1.1.safetensors",
           "spatial-x1.5": "ltx-2.3-spatial-upscaler-x1.5-1.0.safetensors",
           "temporal-x2": "ltx-2.3-temporal-upscaler-x2-1.0.safetensors"}
    present = []
    for n in fixture_set.manifest["upsamplers"]:
        os.symlink(fixture_set.upsampler_path(n), os.path.join(folder, ups[n]))
        present.append({"spatial-x2": "x2", "spatial-x1.5": "x1.5", "temporal-x2": "temporal-x2"}[n])
    return folder, present


def _params(module):
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(module.parameters())}


def test_converted_folder_loads_identically(fixture_set, tmp_path):
    src_dir, ups = _release_copy(fixture_set, tmp_path / "release")
    out = conv.convert(str(src_dir), "dev", str(tmp_path / "model"), upsamplers=ups, progress=lambda m: None,
                       shard_bytes=64 * 1024)  # tiny shards: exercise multi-file components
    official, converted = fixture_set.checkpoint, Checkpoint(out)
    assert converted.metadata == official.metadata
    info = json.loads((tmp_path / "model" / "config.json").read_text())
    assert info["sources"][0]["sha256"] == conv.sha256_file(str(fixture_set.checkpoint_path))
    assert any(len(files) > 1 for files in info["components"].values())
    for name, build in registry.builders().items():
        if name == "upsampler" or not official.has_component(name):  # (duration_head: 2.5 only)
            continue
        a = load_component(official, name, build(official), dtype=mx.bfloat16)
        b = load_component(converted, name, build(converted), dtype=mx.bfloat16)
        pa, pb = _params(a), _params(b)
        assert pa.keys() == pb.keys()
        for k in pa:
            assert np.array_equal(pa[k], pb[k]), (name, k)
    sources = conv.resolve_sources(str(src_dir), "dev", ups)
    for n in ups:
        up_src = Checkpoint(sources.upsamplers[n])
        up_out = Checkpoint(tmp_path / "model" / info["upsamplers"][n])
        assert up_out.upsampler_config == up_src.upsampler_config
        assert up_out.shapes == up_src.shapes


def test_text_projection_runs_from_converted_folder(fixture_set, tmp_path):
    from mlx_ltx.models.text_projection import text_projection_from_checkpoint

    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    out = Checkpoint(conv.convert(str(src_dir), "dev", str(tmp_path / "m"), progress=lambda m: None))
    g = fixture_set.golden("text_projection")
    hs = [mx.array(g[f"in.hidden_states.{i}"]).astype(mx.bfloat16)
          for i in range(g["in.hidden_states_stacked"].shape[-1])]
    mask = mx.array(g["in.attention_mask"])
    outs = []
    for ck in (fixture_set.checkpoint, out):
        m = load_component(ck, "text_projection", text_projection_from_checkpoint(ck), dtype=mx.bfloat16)
        outs.append(m(hs, mask))
    for x, y in zip(*outs):
        assert mx.array_equal(x, y)


def test_interrupted_conversion_leaves_nothing(fixture_set, tmp_path, monkeypatch):
    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    out = tmp_path / "model"
    calls = {"n": 0}
    real_flush = conv._ShardWriter.flush

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_flush(self)

    monkeypatch.setattr(conv._ShardWriter, "flush", flaky)
    with pytest.raises(KeyboardInterrupt):
        conv.convert(str(src_dir), "dev", str(out), progress=lambda m: None)
    assert not out.exists() and not (tmp_path / "model.partial").exists()
    monkeypatch.setattr(conv._ShardWriter, "flush", real_flush)
    conv.convert(str(src_dir), "dev", str(out), progress=lambda m: None)
    assert Checkpoint(out).shapes.keys() == fixture_set.checkpoint.shapes.keys()


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_force_replaces_only_our_own_folders(fixture_set, tmp_path):
    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    out = tmp_path / "model"
    out.mkdir()
    payload = os.urandom(1000)
    (out / "keep.bin").write_bytes(payload)
    (out / "config.json").write_text('{"format": "something else"}')
    before = _listing(tmp_path)
    for force in (False, True):  # a user's folder is refused, with or without --force
        with pytest.raises(conv.ConvertError, match=f"{out} exists and is not a folder written by convert.py"):
            conv.convert(str(src_dir), "dev", str(out), force=force, progress=lambda m: None)
        assert (out / "keep.bin").read_bytes() == payload
        assert _listing(tmp_path) == before  # nothing else written: no .partial
    # an empty folder and an earlier conversion are replaced with --force (only)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(conv.ConvertError, match="pass --force"):
        conv.convert(str(src_dir), "dev", str(empty), progress=lambda m: None)
    conv.convert(str(src_dir), "dev", str(empty), force=True, progress=lambda m: None)
    with pytest.raises(conv.ConvertError, match="pass --force"):
        conv.convert(str(src_dir), "dev", str(empty), progress=lambda m: None)
    conv.convert(str(src_dir), "dev", str(empty), force=True, progress=lambda m: None)
    assert Checkpoint(empty).shapes.keys() == fixture_set.checkpoint.shapes.keys()
    assert not any(p.name.startswith("empty.") for p in tmp_path.iterdir())  # no .partial, no replaced copy
    # a stale OUT.partial that is not ours is refused too
    user_partial = tmp_path / "other.partial"
    user_partial.mkdir()
    (user_partial / "notes.txt").write_text("mine")
    with pytest.raises(conv.ConvertError, match="other.partial exists and is not"):
        conv.convert(str(src_dir), "dev", str(tmp_path / "other"), progress=lambda m: None)
    assert (user_partial / "notes.txt").read_text() == "mine" and not (tmp_path / "other").exists()


def test_cli_force_refuses_user_folder(fixture_set, tmp_path, capsys):
    cli = _cli()
    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_bytes(b"mine\n")
    before = _listing(tmp_path)
    assert cli.main(["--source", str(src_dir), "--variant", "dev", "--out", str(out), "--force", "--no-hash"]) == 1
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and cap.err.startswith(f"error: {out} exists and is not a folder written by")
    assert "Traceback" not in cap.err
    assert (out / "keep.txt").read_bytes() == b"mine\n" and _listing(tmp_path) == before


def test_clear_errors(fixture_set, tmp_path, monkeypatch):
    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    with pytest.raises(conv.ConvertError, match="no distilled model file"):
        conv.convert(str(src_dir), "distilled", str(tmp_path / "a"), progress=lambda m: None)
    with pytest.raises(conv.ConvertError, match="x1.5"):
        conv.convert(str(src_dir), "dev", str(tmp_path / "a"), upsamplers=["x3"], progress=lambda m: None)
    bare = tmp_path / "bare.safetensors"
    mx.save_safetensors(str(bare), {"w": mx.zeros((2, 2))})
    with pytest.raises(conv.ConvertError, match="not an official LTX|no LTX 'config'"):
        conv.convert(str(bare), "dev", str(tmp_path / "b"), progress=lambda m: None)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 1000))
    with pytest.raises(conv.ConvertError, match="not enough disk space"):
        conv.convert(str(src_dir), "dev", str(tmp_path / "c"), progress=lambda m: None)
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


def test_quantize_predicate_spares_small_and_sensitive_layers():
    key = "model.diffusion_model.transformer_blocks.3.attn1.to_q.weight"
    assert conv.should_quantize(key, (4096, 4096), 64)
    assert not conv.should_quantize(key, (16, 16), 64)  # narrower than one group
    for k in ("model.diffusion_model.transformer_blocks.3.attn1.to_gate_logits.weight",
              "model.diffusion_model.transformer_blocks.3.attn1.q_norm.weight",
              "model.diffusion_model.patchify_proj.weight", "model.diffusion_model.adaln_single.linear.weight",
              "model.diffusion_model.video_embeddings_connector.transformer_1d_blocks.0.attn1.to_q.weight",
              "vae.decoder.conv_in.conv.weight"):
        assert not conv.should_quantize(k, (4096, 4096), 64), k


def _wide_transformer_source(fixture_set, folder):
    """A random transformer in the fixture's layout but wide enough for whole quantization
    groups (the tiny fixtures are narrower than one group), saved as an official file."""
    import copy

    from mlx_ltx.config import TransformerConfig
    from mlx_ltx.models.transformer import LTXModel

    meta = copy.deepcopy(fixture_set.checkpoint.metadata)
    t = meta["config"]["transformer"]
    t.update(num_attention_heads=4, attention_head_dim=64, audio_num_attention_heads=4, audio_attention_head_dim=32,
             cross_attention_dim=256, audio_cross_attention_dim=128, caption_channels=256, num_layers=4)
    mx.random.seed(3)
    model = LTXModel(TransformerConfig.from_dict(t))
    tensors = {"model.diffusion_model." + k: v.astype(mx.bfloat16) for k, v in tree_flatten(model.parameters())}
    os.makedirs(folder, exist_ok=True)
    name = "ltx-2.3-22b-dev.safetensors" if meta.get("model_version") else "ltx-2-19b-dev.safetensors"
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    mx.save_safetensors(os.path.join(folder, name), tensors, metadata=raw)
    return TransformerConfig.from_dict(t)


def test_quantized_transformer_sizes_and_error(fixture_set, tmp_path):
    from mlx_ltx.models.transformer import LTXModel, Modality

    cfg = _wide_transformer_source(fixture_set, tmp_path / "release")
    g = fixture_set.golden("transformer")
    ctx_v = cfg.cross_attention_dim if cfg.text_projection_version == 2 else cfg.caption_channels
    ctx_a = cfg.audio_cross_attention_dim if cfg.text_projection_version == 2 else cfg.caption_channels
    key = mx.random.key(5)
    L = g["in.video.context"].shape[1]
    N, Na = g["in.video.latent"].shape[1], g["in.audio.latent"].shape[1]
    k1, k2, k3, k4 = mx.random.split(key, 4)
    video = Modality(mx.random.normal((1, N, cfg.in_channels), key=k1).astype(mx.bfloat16), mx.array(g["in.sigma"]),
                     mx.array(g["in.video.timesteps"]), mx.array(g["in.video.positions"]),
                     mx.random.normal((1, L, ctx_v), key=k2).astype(mx.bfloat16))
    audio = Modality(mx.random.normal((1, Na, cfg.audio_in_channels), key=k3).astype(mx.bfloat16),
                     mx.array(g["in.sigma"]), mx.array(g["in.audio.timesteps"]), mx.array(g["in.audio.positions"]),
                     mx.random.normal((1, L, ctx_a), key=k4).astype(mx.bfloat16))
    outputs, sizes = {}, {}
    for q in (None, "q8", "q4"):
        out = tmp_path / f"model-{q}"
        conv.convert(str(tmp_path / "release"), "dev", str(out), quantize=q, progress=lambda m: None)
        info = json.loads((out / "config.json").read_text())
        sizes[q] = sum(os.path.getsize(out / f) for f in info["components"]["transformer"])
        ck = Checkpoint(out)
        model = load_component(ck, "transformer", LTXModel.build(ck), dtype=mx.bfloat16)
        if q:
            assert info["quantization"]["bits"] == {"q8": 8, "q4": 4}[q]
            n_quant = sum(1 for k in ck.shapes if k.endswith(".scales"))
            assert n_quant == info["quantization"]["layers"] > 0
            assert type(model.transformer_blocks[0].attn1.to_q).__name__ == "QuantizedLinear"
            assert type(model.transformer_blocks[0].attn1.q_norm).__name__ != "QuantizedLinear"
        outputs[q] = [np.array(o.astype(mx.float32)) for o in model(video, audio)]
    src = Checkpoint(next((tmp_path / "release").iterdir()))
    quantizable = [k for k in src.shapes if conv.should_quantize(k, src.shapes[k], 64)]
    q_params = sum(int(np.prod(src.shapes[k])) for k in quantizable)
    all_params = sum(int(np.prod(v)) for k, v in src.shapes.items())
    report = [f"{100 * q_params / all_params:.0f}% of the parameters in quantized layers"]
    for q, bits, bound in (("q8", 8, 0.05), ("q4", 4, 0.35)):
        # per quantized weight: `bits` bits plus a bf16 scale and bias per group of 64
        layer_ratio = (bits + 32 / 64) / 16
        expected = (sizes[None] - 2 * q_params + q_params * 2 * layer_ratio) / sizes[None]
        ratio = sizes[q] / sizes[None]
        err = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(outputs[q], outputs[None]))
        report.append(f"{q}: quantized layers {layer_ratio:.3f}x, transformer files {ratio:.3f}x of bf16, output "
                      f"max rel error {err:.4f}")
        assert abs(ratio - expected) < 0.01
        assert err <= bound
    print(f"{fixture_set.path.name}: " + "; ".join(report))


def test_text_encoder_converted_with_mlx_lm(fixture_set, tmp_path):
    """--text-encoder runs mlx-lm's converter; our Gemma loader reads its output and gives the
    hidden states of the source folder. (Quantized Gemma folders are tested in
    test_text_encoder; the tiny Gemma is narrower than one mlx-lm quantization group.)"""
    from pathlib import Path

    from mlx_ltx.models.gemma import load_gemma_model

    gemma_src = tmp_path / "gemma"
    shutil.copytree(fixture_set.path / fixture_set.manifest["gemma_dir"], gemma_src)
    for f in (Path(__file__).parent / "assets" / "tiny_tokenizer").iterdir():
        shutil.copy(f, gemma_src / f.name)
    cfg = json.loads((gemma_src / "config.json").read_text())
    # mlx-lm's gemma3 takes the vocabulary size from the top level (default: the 12B's 262208)
    cfg["vocab_size"] = cfg["text_config"]["vocab_size"]
    (gemma_src / "config.json").write_text(json.dumps(cfg))
    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    g = fixture_set.golden("gemma")
    ids, mask = mx.array(g["in.input_ids"]), mx.array(g["in.attention_mask"])
    reference = load_gemma_model(gemma_src, dtype=mx.float32).hidden_states(ids, mask)
    valid = np.array(mask[0]).astype(bool)
    out = conv.convert(str(src_dir), "dev", str(tmp_path / "model"), dtype="float32", text_encoder=str(gemma_src),
                       progress=lambda m: None)
    info = json.loads((tmp_path / "model" / "config.json").read_text())
    converted = load_gemma_model(os.path.join(out, info["text_encoder"]), dtype=mx.float32).hidden_states(ids, mask)
    for a, b in zip(converted, reference):
        assert np.array_equal(np.array(a)[0, valid], np.array(b)[0, valid])


def test_converted_folder_by_hf_repo_id_offline(fixture_set, tmp_path):
    """A Hugging Face repo id of a converted folder resolves through the HF cache (offline mode
    here: the cache is laid out as huggingface-hub lays it out)."""
    import subprocess
    import sys

    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    cache = tmp_path / "hf"
    snap = cache / "models--someone--ltx-mlx" / "snapshots" / "0123abc"
    conv.convert(str(src_dir), "dev", str(snap), progress=lambda m: None)
    (cache / "models--someone--ltx-mlx" / "refs").mkdir(parents=True)
    (cache / "models--someone--ltx-mlx" / "refs" / "main").write_text("0123abc")
    code = ("from mlx_ltx.loading import Checkpoint; c = Checkpoint('someone/ltx-mlx'); "
            "print(c.path); print(len(c.shapes))")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    path, n = r.stdout.split()
    assert os.path.samefile(path, snap) and int(n) == len(fixture_set.checkpoint.shapes)
    missing = subprocess.run([sys.executable, "-c", "from mlx_ltx.loading import Checkpoint; "
                              "Checkpoint('someone/absent')"], env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "could not fetch 'someone/absent'" in missing.stderr


def test_lora_is_copied_with_its_metadata(fixture_set, tmp_path):
    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    block = next(k for k in fixture_set.checkpoint.shapes if k.endswith("attn1.to_q.weight"))
    base = block.replace("model.diffusion_model.", "diffusion_model.")[: -len(".weight")]
    out_dim, in_dim = fixture_set.checkpoint.shapes[block]
    lora = {f"{base}.lora_A.weight": mx.random.normal((4, in_dim)).astype(mx.bfloat16),
            f"{base}.lora_B.weight": mx.random.normal((out_dim, 4)).astype(mx.bfloat16)}
    name = "ltx-2.3-22b-distilled-lora-384-1.1.safetensors"
    mx.save_safetensors(str(src_dir / name), lora, metadata={"rank": "4"})
    with pytest.raises(conv.ConvertError, match="--loras 'other'"):
        conv.convert(str(src_dir), "dev", str(tmp_path / "m"), loras=["other"], progress=lambda m: None)
    out = conv.convert(str(src_dir), "dev", str(tmp_path / "m"), loras=["distilled"], progress=lambda m: None)
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    written, meta = mx.load(os.path.join(out, info["loras"]["distilled"]), return_metadata=True)
    assert meta == {"rank": "4"} and written.keys() == lora.keys()
    assert all(mx.array_equal(written[k], lora[k]) for k in lora)
    assert name in [s["file"] for s in info["sources"]]


def _cli():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("convert_cli", Path(__file__).parents[1] / "convert.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_cli(fixture_set, tmp_path, capsys):
    cli = _cli()
    src_dir, ups = _release_copy(fixture_set, tmp_path / "release")
    assert cli.main(["--source", str(src_dir), "--variant", "dev", "--out", str(tmp_path / "m"), "--no-hash",
                     "--upsamplers", ",".join(ups)]) == 0
    assert Checkpoint(tmp_path / "m").shapes.keys() == fixture_set.checkpoint.shapes.keys()
    # the report: quantization, components written, side files, size on disk
    out = capsys.readouterr().out
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "not quantized (tensors in bfloat16)" in out
    comp_line = next(line for line in out.splitlines() if line.startswith("components: "))
    assert all(f"{c} (" in comp_line for c in info["components"])
    if ups:
        assert f"upsamplers: {', '.join(ups)}" in out
    size = sum(f.stat().st_size for f in (tmp_path / "m").rglob("*") if f.is_file())
    assert f"wrote {tmp_path / 'm'}: {conv._fmt_bytes(size)} on disk" in out
    assert cli.main(["--source", str(tmp_path / "nowhere"), "--variant", "dev", "--out", str(tmp_path / "n")]) == 1
    assert "not a file, a folder, or a Hugging Face repo id" in capsys.readouterr().err


def test_cli_reports_quantization(fixture_set, tmp_path, capsys):
    cli = _cli()
    n = sum(conv.should_quantize(k, v, 64) for k, v in fixture_set.checkpoint.shapes.items())
    assert cli.main(["--source", str(fixture_set.checkpoint_path), "--variant", "dev", "--out", str(tmp_path / "q"),
                     "--no-hash", "--quantize", "q4"]) == 0
    assert f"quantized {n} transformer linear layers: 4 bits, group size 64" in capsys.readouterr().out


@pytest.mark.parametrize("exc, code, message", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (OSError(28, "No space left on device"), 1, "error: [Errno 28] No space left on device"),
    (MemoryError(), 1, "error: MemoryError"),
    (conv.ConvertError("bad thing\non two lines"), 1, "error: bad thing on two lines"),
])
def test_cli_errors_are_one_line(fixture_set, tmp_path, capsys, monkeypatch, exc, code, message):
    """Anticipated failures during the conversion: one line on stderr, a non-zero exit code, no
    traceback, and no OUT or OUT.partial left (an earlier conversion at OUT is kept)."""
    cli = _cli()
    src_dir, _ = _release_copy(fixture_set, tmp_path / "release")
    args = ["--source", str(src_dir), "--variant", "dev", "--no-hash"]
    assert cli.main([*args, "--out", str(tmp_path / "old")]) == 0
    capsys.readouterr()

    def failing(out):
        def fail(*a, **k):
            assert (tmp_path / f"{out}.partial").is_dir()  # the conversion had started writing
            raise exc
        return fail

    for out, force in (("new", []), ("old", ["--force"])):
        before = _listing(tmp_path)
        monkeypatch.setattr(conv, "_write", failing(out))
        assert cli.main([*args, "--out", str(tmp_path / out), *force]) == code
        err = capsys.readouterr().err
        assert err == message + "\n"
        assert _listing(tmp_path) == before  # no partial output, the earlier conversion untouched
    assert Checkpoint(tmp_path / "old").shapes.keys() == fixture_set.checkpoint.shapes.keys()


def test_official_repo_id_is_not_downloaded_whole(tmp_path):
    """A repo id that is not a converted folder (e.g. the official release) stops after its
    config.json, with an error pointing to convert.py."""
    import subprocess
    import sys

    cache = tmp_path / "hf"
    snap = cache / "models--someone--release" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "README.md").write_text("no config.json here, as in the official release repos")
    (cache / "models--someone--release" / "refs").mkdir()
    (cache / "models--someone--release" / "refs" / "main").write_text("abc")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    r = subprocess.run([sys.executable, "-c", "from mlx_ltx.loading import Checkpoint; Checkpoint('someone/release')"],
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "not a model folder made by convert.py" in r.stderr
