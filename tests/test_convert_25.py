"""convert.py on the split release (LTX-2.5, FORMAT-25.md): a synthetic Hugging Face repo built
from the fixture files under the release's names (offline cache), local folders and explicit
files; the converted folder loads and generates as the split source does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from reference_data import TOL_LOOP, fixture_dirs, rel_err
from test_e2e import ReferenceDraws, request
from test_e2e_25 import plumbing_set

from mlx_ltx import convert as conv
from mlx_ltx import convert_split
from mlx_ltx.loading import Checkpoint, load_component
from mlx_ltx.models import registry

REPO = "Lightricks/LTX-2.5"
REV = "25c0ffee" * 5
ROOT = Path(__file__).parents[1]
# the release's files (model_files.RELEASE_NAMES, REFERENCE-MAP-2.5 §7) -> the fixture role they stand for;
# None: a file no conversion may read (see _tree's `unread`); the diffusion VAE is the set's when it has one
RELEASE = {
    "diffusion_models/ltx-2.5-22b-dev-transformer-bf16.safetensors": "transformer",
    "diffusion_models/ltx-2.5-22b-distilled-transformer-bf16.safetensors": "transformer",
    "text_encoders/gemma4-12b-with-proj-ltx-2.5-bf16.safetensors": "text_encoder",
    "vae/ltx-2.5-video-vae-conv-bf16.safetensors": "video_vae",
    "vae/ltx-2.5-video-vae-bf16.safetensors": "diffusion_video_vae",
    "vae/ltx-2.5-audio-vae-bf16.safetensors": "audio_vae",
    "model_patches/ltx-2.5-duration-head-bf16.safetensors": "duration_head",
    "latent_upscale_models/ltx-2.5-spatial-upscaler-x2-bf16.safetensors": "upsampler",
    "loras/ltx-2.5-22b-distilled-lora-450-bf16.safetensors": "lora",
    "README.md": None,
}
DEV = "diffusion_models/ltx-2.5-22b-dev-transformer-bf16.safetensors"
DISTILLED = "diffusion_models/ltx-2.5-22b-distilled-transformer-bf16.safetensors"
DIFFUSION_VAE = "vae/ltx-2.5-video-vae-bf16.safetensors"
CONV_VAE = "vae/ltx-2.5-video-vae-conv-bf16.safetensors"
# what a conversion reads besides the transformer: by default the diffusion VAE; with --video-decoder conv the conv one
NEEDED = ["text_encoders/gemma4-12b-with-proj-ltx-2.5-bf16.safetensors", DIFFUSION_VAE,
          "vae/ltx-2.5-audio-vae-bf16.safetensors", "model_patches/ltx-2.5-duration-head-bf16.safetensors"]
NEEDED_CONV = [CONV_VAE if f == DIFFUSION_VAE else f for f in NEEDED]
UPSAMPLER = "latent_upscale_models/ltx-2.5-spatial-upscaler-x2-bf16.safetensors"
LORA = "loras/ltx-2.5-22b-distilled-lora-450-bf16.safetensors"


def _fixture_file(fs, role):
    if role == "upsampler":
        return fs.upsampler_path("spatial-x2")
    if role == "lora":
        return fs.lora_path("distilled")
    if role == "diffusion_video_vae":
        return fs.path / fs.manifest["diffusion_vae"]["file"] if "diffusion_vae" in fs.manifest else None
    return fs.file(role)


def _odd_vae(fs, path, cls):
    """A video-VAE file whose config names another VAE class."""
    tensors, meta = mx.load(str(fs.file("video_vae")), return_metadata=True)
    cfg = json.loads(meta["config"])
    cfg["vae"]["_class_name"] = cls
    mx.save_safetensors(str(path), dict(tensors), metadata={**meta, "config": json.dumps(cfg)})


def _tree(fs, root, unread=()):
    """The release laid out under ``root``: symlinks to the fixture files under the release names.
    Files in ``unread`` are not safetensors at all: a conversion that opened one would fail. A set
    without a diffusion VAE gets a stand-in with its header (the conv file's tensors under the
    diffusion class): a folder scan reads it, a conversion with --video-decoder conv never loads it."""
    for rel, role in RELEASE.items():
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel == DIFFUSION_VAE and rel not in unread and _fixture_file(fs, role) is None:
            _odd_vae(fs, path, "CausalDiffusionVAE")
        elif role is None or rel in unread:
            path.write_bytes(b"must not be read by this conversion\n")
        else:
            os.symlink(_fixture_file(fs, role), path)
    return Path(root)


def _hf_cache(fs, tmp_path, unread=()):
    cache = tmp_path / "hf"
    repo = cache / ("models--" + REPO.replace("/", "--"))
    _tree(fs, repo / "snapshots" / REV, unread)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    return cache


def _cli(args, cache, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    r = subprocess.run([sys.executable, str(ROOT / "convert.py"), *args], env=env, capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def _params(module):
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(module.parameters())}


def test_repo_patterns_select_only_the_needed_files():
    """What snapshot_download fetches (its own pattern filter, over the repo's file list): the
    variant's transformer, the text encoder, the conv VAE, the audio VAE, the duration head and
    what was asked for; never the other transformer or the diffusion VAE."""
    from huggingface_hub.utils import filter_repo_objects

    def picked(*a, **k):
        return sorted(filter_repo_objects(list(RELEASE), allow_patterns=convert_split.split_allow_patterns(*a, **k)))

    assert picked("dev", ["x2"], ["distilled"]) == sorted([DEV, *NEEDED, UPSAMPLER, LORA])
    assert picked("distilled") == sorted([DISTILLED, *NEEDED])
    assert picked("dev", text_encoder=False) == sorted([DEV, *NEEDED[1:]])
    assert picked("dev", video_decoder="conv") == sorted([DEV, *NEEDED_CONV])
    # a quantized sibling in the repo is never fetched with the bf16 file
    extra = ["diffusion_models/ltx-2.5-22b-dev-transformer-fp8.safetensors",
             "text_encoders/gemma4-12b-with-proj-ltx-2.5-fp8.safetensors"]
    assert not list(filter_repo_objects(extra, allow_patterns=convert_split.split_allow_patterns("dev")))


def test_convert_from_hf_repo_offline(fixture_set_25, tmp_path):
    """--source Lightricks/LTX-2.5 through the HF cache: the folder holds every component of the
    split files, each file's metadata, the text encoder without its towers, the side files; the
    distilled transformer and the diffusion VAE are never read; components load as from the source."""
    fs = fixture_set_25
    cache = _hf_cache(fs, tmp_path, unread=(DISTILLED, DIFFUSION_VAE))
    out = tmp_path / "model"
    r = _cli(["--source", REPO, "--variant", "dev", "--out", str(out), "--upsamplers", "x2", "--loras", "distilled",
              "--video-decoder", "conv"], cache)
    assert "text encoder: text_encoder.safetensors" in r.stdout
    info = json.loads((out / "config.json").read_text())
    src = Checkpoint(fs.path)
    assert info["layout"] == "split" and info["variant"] == "dev"
    assert sorted(s["file"] for s in info["sources"]) == sorted([DEV, *NEEDED_CONV, UPSAMPLER, LORA])
    for s in info["sources"]:
        assert s["sha256"] == conv.sha256_file(str(_fixture_file(fs, s["role"])))
    assert info["role_files"] == {"text_encoder": "text_encoder.safetensors",
                                  "duration_head": info["components"]["duration_head"][0]}
    converted = Checkpoint(out)
    assert converted.layout == "split" and converted.metadata == src.metadata
    for role in ("transformer", "video_vae", "audio_vae", "duration_head"):
        assert converted.role_metadata(role) == src.role_metadata(role), role
    assert converted.role_metadata("text_encoder")["gemma_config"] == src.role_metadata("text_encoder")["gemma_config"]
    # every component key of the split files, nothing else (the Gemma LM is in its own file)
    component_keys = {k for k in src.shapes if conv._component_of(k)}
    assert set(converted.shapes) == component_keys
    for name, build in registry.builders().items():
        if name == "upsampler" or not src.has_component(name):
            continue
        a = load_component(src, name, build(src), dtype=mx.bfloat16)
        b = load_component(converted, name, build(converted), dtype=mx.bfloat16)
        pa, pb = _params(a), _params(b)
        assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa), name
    # the text encoder file: the language model and the tokenizer bytes as they were, no towers
    te_src, meta_src = mx.load(str(fs.file("text_encoder")), return_metadata=True)
    te_out, meta_out = mx.load(str(out / "text_encoder.safetensors"), return_metadata=True)
    from mlx_ltx.models.gemma4 import language_model_tensors

    lm = {k for k, _, _ in language_model_tensors(fs.file("text_encoder"))}
    kept = lm | {k for k in te_src if k.startswith(("tokenizer_json", "hf_asset__"))}
    assert set(te_out) == kept and info["text_encoder_dropped"] == sum(
        1 for k in te_src if k not in kept and not conv._component_of(k))
    assert all(mx.array_equal(te_out[k], te_src[k]) and te_out[k].dtype == te_src[k].dtype for k in kept)
    assert meta_out == meta_src
    # the duration head file keeps its source metadata (its loader reads the config there)
    _, dh_meta = mx.load(str(out / info["role_files"]["duration_head"]), return_metadata=True)
    assert dh_meta == mx.load(str(fs.file("duration_head")), return_metadata=True)[1]
    assert info["upsamplers"] == {"x2": "upsampler-x2.safetensors"}
    assert info["loras"] == {"distilled": "lora-distilled.safetensors"}


def _generate(model, fs, name):
    from mlx_ltx.pipelines import Pipeline

    g, meta = fs.golden("e2e"), fs.manifest["e2e"]
    pipe = Pipeline.from_pretrained(model, name, dtype=mx.float32)
    draws = ReferenceDraws(g, name)
    result = pipe.generate(meta["prompt"], noise=draws, sde_noise=draws.sde, **request(fs, name, meta))
    assert draws.left() == {}
    return pipe, result, g


@pytest.mark.parametrize("name", ["distilled", "dev-two-stage"])
def test_generation_from_converted_folder(fixture_set_25, tmp_path, name):
    """Pipeline.from_pretrained(converted folder) finds the text encoder, the x2 upsampler and the
    distilled LoRA in it and reproduces the reference's pipeline (golden_e2e, draws replayed): the
    same latents, bit for bit, as from the split source folder (bf16 -> bf16 changes no weight).
    The two-stage run (the LoRA and upsampler side files) on one 2.5 set only: suite time."""
    fs = fixture_set_25
    if name != "distilled" and fs.path != plumbing_set().path:
        pytest.skip("the side files' plumbing is checked on one 2.5 set (test_e2e_25.plumbing_set)")
    variant = "distilled" if name == "distilled" else "dev"
    release = _tree(fs, tmp_path / "release")  # a local copy: files found by their headers
    out = conv.convert(str(release), variant, str(tmp_path / "m"), upsamplers=["x2"], loras=["distilled"],
                       video_decoder="conv", hash_sources=False, progress=lambda m: None)
    pipe, result, g = _generate(out, fs, name)
    assert pipe.gemma == os.path.join(out, "text_encoder.safetensors")
    assert pipe.kind.layout == "split" and pipe.kind.image_crf == int(g["crf.value"][0])
    assert pipe.kind.has_duration_head and pipe.kind.text_encoder_family == "gemma4_unified"
    errors = {"video latent": rel_err(result.video_latent, g[f"{name}.decode.video.latent"]),
              "audio latent": rel_err(result.audio_latent, g[f"{name}.decode.audio.latent"])}
    print(f"\n{fs.path.name} {name} from the converted folder: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_LOOP, errors
    _, direct, _ = _generate(fs.path, fs, name)
    assert mx.array_equal(result.video_latent, direct.video_latent)
    assert mx.array_equal(result.audio_latent, direct.audio_latent)


def test_convert_with_the_diffusion_vae(fixture_set_25, tmp_path):
    """A release folder holding both video VAEs converts with the diffusion one by default (the
    release's default): the folder opens as a diffusion-decoder model, and its decoder loads the
    same weights as from the source file (the reference's load-time rewrites applied alike)."""
    from mlx_ltx.generations import describe
    from mlx_ltx.models.diffusion_video_decoder import DiffusionVideoDecoder

    fs = fixture_set_25
    source = _fixture_file(fs, "diffusion_video_vae")
    if source is None:
        pytest.skip(f"{fs.path.name} has no diffusion video VAE")
    release = _tree(fs, tmp_path / "release")  # both VAE files: headers are read, only one is converted
    out = conv.convert(str(release), "distilled", str(tmp_path / "m"), hash_sources=False, progress=lambda m: None)
    info = json.loads(Path(out, "config.json").read_text())
    assert sorted(s["file"] for s in info["sources"]) == sorted([DISTILLED, *NEEDED])
    converted = Checkpoint(out)
    assert describe(converted).video_decoder == "diffusion"
    a, b = _params(DiffusionVideoDecoder.from_checkpoint(converted)), _params(DiffusionVideoDecoder.from_checkpoint(
        str(source)))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="has no conv video VAE file .* --video-decoder diffusion"):
        Checkpoint(out, video_decoder="conv")


def test_quantized_conversion_from_files(fixture_set_25, tmp_path):
    """--quantize q8 --text-encoder-quantize q8 from the files given one by one (the text encoder
    with --text-encoder, as a Gemma-4 bundle may be): the transformer's and Gemma's linear layers
    stored with scales, the bundle's 'quantization' entry read by the Gemma-4 loader (the same model
    as quantizing the source in memory), encoding works."""
    from mlx_ltx.models.gemma4 import load_gemma4_model
    from mlx_ltx.models.text_encoder import TextEncoder
    from mlx_ltx.models.transformer import LTXModel

    fs = fixture_set_25
    if fs.path != plumbing_set().path:
        pytest.skip("quantized conversion is plumbing: checked on one 2.5 set (test_e2e_25.plumbing_set)")
    files = [str(fs.file(r)) for r in fs.manifest["files"] if r != "text_encoder"]
    out = conv.convert(files, "dev", str(tmp_path / "q8"), quantize="q8", text_encoder=str(fs.file("text_encoder")),
                       text_encoder_quantize="q8", group_size=32, hash_sources=False, progress=lambda m: None)
    info = json.loads(Path(out, "config.json").read_text())
    ck = Checkpoint(out)
    assert info["quantization"]["bits"] == 8 and info["quantization"]["layers"] == sum(
        conv.should_quantize(k, v, 32) for k, v in Checkpoint(fs.path).shapes.items()) > 0
    model = load_component(ck, "transformer", LTXModel.build(ck), dtype=mx.bfloat16)
    assert sum(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules()) == info["quantization"]["layers"]
    tq = info["text_encoder_quantization"]
    te = os.path.join(out, info["text_encoder"])
    _, meta = mx.load(te, return_metadata=True)
    assert json.loads(meta["quantization"]) == {"group_size": 32, "bits": 8, "mode": "affine"}
    loaded = load_gemma4_model(te, mx.bfloat16)
    n_linear = sum(isinstance(m, nn.QuantizedLinear) for _, m in loaded.named_modules())
    assert n_linear == tq["layers"] > 0
    assert not any(isinstance(m, nn.QuantizedEmbedding) for _, m in loaded.named_modules())  # Linear layers only
    expected = load_gemma4_model(fs.file("text_encoder"), mx.bfloat16)
    nn.quantize(expected, group_size=32, bits=8, class_predicate=lambda p, m: isinstance(m, nn.Linear))
    g = fs.golden("gemma")
    ids = mx.array(np.concatenate([g[f"p{i}.input_ids"] for i in range(2)]))
    mask = mx.array(np.concatenate([g[f"p{i}.attention_mask"] for i in range(2)]))
    for a, b in zip(loaded.hidden_states(ids, mask), expected.hidden_states(ids, mask)):
        assert mx.array_equal(a, b)
    # the converted folder encodes prompts (Gemma from text_encoder.safetensors, projection from the components)
    enc = TextEncoder(None, ck, dtype=mx.float32).encode_prompts(fs.manifest["gemma"]["prompts"][:1])[0]
    err = rel_err(enc.video_encoding, g["p0.video_encoding"])
    print(f"\n{fs.path.name}: q8 text encoder, video context rel err {err:.2e}; "
          f"transformer files {sum(os.path.getsize(Path(out, f)) for f in info['components']['transformer'])} bytes, "
          f"text encoder {os.path.getsize(te)} bytes")
    assert np.isfinite(np.array(enc.video_encoding)).all() and err < 0.5


def test_errors(fixture_set_25, tmp_path):
    fs = fixture_set_25
    release = _tree(fs, tmp_path / "release")
    quiet = {"progress": lambda m: None, "hash_sources": False, "video_decoder": "conv"}
    # a missing component names the release file and the fix
    (release / "vae" / "ltx-2.5-audio-vae-bf16.safetensors").unlink()
    with pytest.raises(conv.ConvertError, match=r"no audio vae file \(the release's vae/ltx-2.5-audio-vae-bf16"
                                                r"\.safetensors\); download it"):
        conv.convert(str(release), "dev", str(tmp_path / "a"), **quiet)
    os.symlink(fs.file("audio_vae"), release / "vae" / "ltx-2.5-audio-vae-bf16.safetensors")
    # a Gemma-3 text encoder does not fit a 2.5 source
    gemma3 = tmp_path / "gemma-3"
    gemma3.mkdir()
    (gemma3 / "config.json").write_text('{"model_type": "gemma3"}')
    with pytest.raises(conv.ConvertError, match="--text-encoder .*gemma-3: an LTX-2.5 \\(split\\) source brings its "
                                                "own text encoder"):
        conv.convert(str(release), "dev", str(tmp_path / "a"), text_encoder=str(gemma3), **quiet)
    # the transformer named for the other variant, one split file alone, only the diffusion VAE
    files = [str(fs.file(r)) for r in fs.manifest["files"]]
    with pytest.raises(conv.ConvertError, match="no distilled transformer .* convert it with --variant dev"):
        conv.convert(files, "distilled", str(tmp_path / "a"), **quiet)
    with pytest.raises(conv.ConvertError, match="only the transformer file of the split"):
        conv.convert(str(fs.file("transformer")), "dev", str(tmp_path / "a"), **quiet)
    _odd_vae(fs, tmp_path / "odd-vae.safetensors", "MysteryVAE")
    swapped = [f if f != str(fs.file("video_vae")) else str(tmp_path / "odd-vae.safetensors") for f in files]
    with pytest.raises(conv.ConvertError, match="has no conv video VAE file .*odd-vae.safetensors \\(MysteryVAE\\)"):
        conv.convert(swapped, "dev", str(tmp_path / "a"), **quiet)
    with pytest.raises(conv.ConvertError, match="a MysteryVAE video VAE, a class mlx_ltx does not build"):
        conv.convert(swapped, "dev", str(tmp_path / "a"), **{**quiet, "video_decoder": None})
    with pytest.raises(conv.ConvertError, match="--video-decoder 'vq'"):
        conv.convert(files, "dev", str(tmp_path / "a"), **{**quiet, "video_decoder": "vq"})
    with pytest.raises(conv.ConvertError, match="--upsamplers 'x3'"):
        conv.convert(str(release), "dev", str(tmp_path / "a"), upsamplers=["x3"], **quiet)
    with pytest.raises(conv.ConvertError, match="--text-encoder-quantize q4: no linear layer .* --group-size 128"):
        conv.convert(files, "dev", str(tmp_path / "a"), text_encoder_quantize="q4", group_size=128, **quiet)
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.partial").exists()


def test_cli_errors_and_interrupted_text_encoder(fixture_set_25, tmp_path, monkeypatch):
    """A repo without the asked variant: one line naming the pattern; a conversion interrupted in
    the text encoder leaves no OUT or OUT.partial."""
    fs = fixture_set_25
    cache = _hf_cache(fs, tmp_path, unread=(DISTILLED,))
    (cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / REV / DEV).unlink()
    r = _cli(["--source", REPO, "--variant", "dev", "--out", str(tmp_path / "m")], cache, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no dev transformer" in r.stderr
    assert "Traceback" not in r.stderr

    def fail(self, name, value):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_split.StreamingSafetensors, "add", fail)
    with pytest.raises(KeyboardInterrupt):
        conv.convert(str(fs.path), "dev", str(tmp_path / "x"), hash_sources=False, progress=lambda m: None)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_repo_layout_is_read_from_the_repo(fixture_set_25, tmp_path):
    """A repo id of another name is probed for the split files: a mirror of the 2.5 repo converts
    as the split release (the distilled variant here: the dev transformer is never read), a repo
    holding a 2.3 single file as the single-file release."""
    from reference_data import FIXTURES, FixtureSet
    from test_convert import _release_copy

    fs = fixture_set_25
    cache = tmp_path / "hf"
    mirror = cache / "models--someone--ltx25-mirror"
    _tree(fs, mirror / "snapshots" / REV, unread=(DEV,))
    old = cache / "models--someone--ltx23-mirror"
    _release_copy(FixtureSet(FIXTURES / "tiny-s1234"), old / "snapshots" / REV)
    for repo in (mirror, old):
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(REV)
    _cli(["--source", "someone/ltx25-mirror", "--variant", "distilled", "--out", str(tmp_path / "a"), "--no-hash",
          "--video-decoder", "conv"], cache)
    info = json.loads((tmp_path / "a" / "config.json").read_text())
    assert info["layout"] == "split" and info["variant"] == "distilled"
    assert sorted(s["file"] for s in info["sources"]) == sorted([DISTILLED, *NEEDED_CONV])
    _cli(["--source", "someone/ltx23-mirror", "--variant", "dev", "--out", str(tmp_path / "b"), "--no-hash"], cache)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["layout"] == "single"
