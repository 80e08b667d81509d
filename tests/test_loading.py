"""Strict checkpoint loading: every missing, extra or mis-shaped tensor is an error naming it."""

import json

import mlx.core as mx
import pytest

from mlx_ltx.config import parse_metadata
from mlx_ltx.loading import Checkpoint, CheckpointError, load_component
from mlx_ltx.models.text_projection import build_text_projection


def _projection_for(fixture_set, ckpt):
    hs = fixture_set.golden("text_projection")["in.hidden_states_stacked"]
    return build_text_projection(ckpt.config.transformer, hs.shape[2], hs.shape[3] - 1)


def _rewrite(src: Checkpoint, dst, edit):
    """Copy ``src`` to ``dst`` with ``edit(dict)`` applied to its tensors, metadata kept."""
    tensors = dict(mx.load(src.path))
    edit(tensors)
    raw_meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in src.metadata.items()}
    mx.save_safetensors(str(dst), tensors, metadata=raw_meta)
    return Checkpoint(dst)


def _text_projection_key(ckpt: Checkpoint) -> str:
    return sorted(k for k in ckpt.shapes if k.startswith("text_embedding_projection."))[0]


def test_fixture_checkpoint_loads(fixture_set):
    ckpt = fixture_set.checkpoint
    load_component(ckpt, "text_projection", _projection_for(fixture_set, ckpt))


def test_missing_tensor_is_named(fixture_set, tmp_path):
    src = fixture_set.checkpoint
    key = _text_projection_key(src)
    bad = _rewrite(src, tmp_path / "missing.safetensors", lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match="missing") as e:
        load_component(bad, "text_projection", _projection_for(fixture_set, bad))
    assert key in str(e.value) and str(bad.path) in str(e.value)


def test_renamed_tensor_is_named(fixture_set, tmp_path):
    src = fixture_set.checkpoint
    key = _text_projection_key(src)
    renamed = key.replace("text_embedding_projection.", "text_embedding_projection.renamed_")
    bad = _rewrite(src, tmp_path / "renamed.safetensors", lambda t: t.__setitem__(renamed, t.pop(key)))
    with pytest.raises(CheckpointError) as e:
        load_component(bad, "text_projection", _projection_for(fixture_set, bad))
    msg = str(e.value)
    assert "missing" in msg and key in msg
    assert "unexpected" in msg and renamed in msg


def test_misshaped_tensor_is_named(fixture_set, tmp_path):
    src = fixture_set.checkpoint
    key = _text_projection_key(src)

    def shrink(t):
        t[key] = t[key][..., :-1] if t[key].ndim == 2 else t[key][:-1]

    bad = _rewrite(src, tmp_path / "shape.safetensors", shrink)
    with pytest.raises(CheckpointError, match="wrong shape") as e:
        load_component(bad, "text_projection", _projection_for(fixture_set, bad))
    assert key in str(e.value)
    assert str(tuple(bad.shapes[key])) in str(e.value)


def test_absent_component_is_named(fixture_set, tmp_path):
    src = fixture_set.checkpoint
    bad = _rewrite(src, tmp_path / "nocomp.safetensors",
                   lambda t: [t.pop(k) for k in list(t) if k.startswith("text_embedding_projection.")])
    with pytest.raises(CheckpointError, match="text_embedding_projection"):
        load_component(bad, "text_projection", _projection_for(fixture_set, src))


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        Checkpoint(p)
    with pytest.raises(CheckpointError, match="not found"):
        Checkpoint(tmp_path / "absent.safetensors")


def test_metadata_is_parsed_like_the_reference():
    meta = parse_metadata({"config": '{"a": 1}', "model_version": "2.3.0", "license": "some text"})
    assert meta == {"config": {"a": 1}, "model_version": "2.3.0", "license": "some text"}


def test_components_partition_the_checkpoint(fixture_set):
    """Every tensor of the official layout belongs to exactly one component."""
    from mlx_ltx.loading import COMPONENTS

    ckpt = fixture_set.checkpoint
    owner: dict[str, list[str]] = {}
    for name in COMPONENTS:
        if name == "upsampler":
            continue
        for key in ckpt.component_keys(name).values():
            owner.setdefault(key, []).append(name)
    stats_shared = {k for k, v in owner.items() if "per_channel_statistics" in k}
    assert set(owner) == set(ckpt.shapes)
    assert all(len(v) == 1 for k, v in owner.items() if k not in stats_shared)


def test_truncated_file_is_refused_when_opened(fixture_set, tmp_path):
    """An interrupted download: refused when the header is read, naming the file and both sizes."""
    data = fixture_set.checkpoint_path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is truncated: its header describes"):
        Checkpoint(cut)
    Checkpoint(fixture_set.checkpoint_path)  # the whole file opens
