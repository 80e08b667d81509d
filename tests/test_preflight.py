"""The preflight memory model (mlx_ltx/preflight.py): predictions against measured peaks on the
fixture checkpoints, and the refusal / advice on an LTX-2.3 22B-shaped checkpoint written without
its data (a sparse safetensors file whose header lists every tensor at the real shapes)."""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import re
import struct

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from reference_data import FixtureSet, fixture_dirs

from mlx_ltx.config import LTXConfig
from mlx_ltx.loading import COMPONENTS, Checkpoint
from mlx_ltx.preflight import (
    PreflightError,
    _decoder_stages,
    check_fits,
    predict_peak,
    transformer_activation_bytes,
    transformer_bytes,
    video_decode_activation_bytes,
)

GB = 10**9
# the video decode's tile planning budget: half the memory budget, as Pipeline.decode_budget plans it
DECODE_BUDGET = 16 * GB  # for the 32 GB budget

# LTX-2.3 22B transformer widths (../shared/REFERENCE-MAP.md, section 1.2); the real23 fixture keeps
# the real block lists and flags but shrinks every width and the depth
REAL_23_TRANSFORMER = dict(
    num_layers=48, num_attention_heads=32, attention_head_dim=128, audio_num_attention_heads=32,
    audio_attention_head_dim=64, cross_attention_dim=4096, audio_cross_attention_dim=2048, in_channels=128,
    out_channels=128, audio_in_channels=128, audio_out_channels=128, caption_channels=3840,
    connector_num_attention_heads=32, connector_attention_head_dim=128, connector_num_layers=8,
    audio_connector_num_attention_heads=32, audio_connector_attention_head_dim=64)


def _fixture(name: str) -> FixtureSet:
    dirs = [d for d in fixture_dirs() if d.name == name]
    if not dirs:
        pytest.skip(f"fixture set {name} not present")
    return FixtureSet(dirs[0])


def _real_23_metadata(fixture_checkpoint: Checkpoint) -> dict:
    """The real23 fixture's metadata with the released 22B widths."""
    meta = copy.deepcopy(fixture_checkpoint.metadata)
    cfg = meta["config"]
    cfg["transformer"].update(REAL_23_TRANSFORMER)
    cfg["vae"].update(latent_channels=128, decoder_base_channels=128, encoder_base_channels=128)
    cfg["audio_vae"]["model"]["params"]["ddconfig"].update(ch=128, z_channels=8)
    cfg["vocoder"]["vocoder"]["upsample_initial_channel"] = 1536
    cfg["vocoder"]["bwe"]["upsample_initial_channel"] = 512
    return meta


def _skeletons(config: LTXConfig) -> dict:
    """Unloaded modules at the config's shapes: MLX arrays are lazy, nothing is allocated."""
    from mlx_ltx.models.audio_vae import AudioDecoder
    from mlx_ltx.models.connector import Embeddings1DConnector
    from mlx_ltx.models.text_projection import build_text_projection
    from mlx_ltx.models.transformer import LTXModel
    from mlx_ltx.models.video_decoder import VideoDecoder
    from mlx_ltx.models.video_vae import VideoEncoder
    from mlx_ltx.models.vocoder import build_vocoder

    tc = config.transformer
    return {"transformer": LTXModel(tc), "video_connector": Embeddings1DConnector.from_config(tc, False, 128),
            "audio_connector": Embeddings1DConnector.from_config(tc, True, 128),
            "text_projection": build_text_projection(tc, 3840, 48), "vae_encoder": VideoEncoder(config.vae, None),
            "vae_decoder": VideoDecoder(config.vae, None), "audio_vae_decoder": AudioDecoder(config.audio_vae, None),
            "vocoder": build_vocoder(config.vocoder)}


def _write_sparse_safetensors(path, shapes: dict, metadata: dict) -> None:
    """A bf16 safetensors file of ``shapes`` whose data is a hole: the header, then a truncate to
    the full size (Checkpoint refuses files shorter than their header says)."""
    header = {"__metadata__": {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}}
    offset = 0
    for key, shape in shapes.items():
        n = 2 * int(np.prod(shape, dtype=np.int64))
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.truncate(8 + len(blob) + offset)


@pytest.fixture(scope="module")
def ltx22b(tmp_path_factory) -> Checkpoint:
    fixture = _fixture("real23-s1234")
    meta = _real_23_metadata(fixture.checkpoint)
    shapes = {}
    for component, module in _skeletons(LTXConfig.from_metadata(meta)).items():
        ops = COMPONENTS[component]
        for key, value in tree_flatten(module.parameters()):
            shape = tuple(value.shape)
            if len(shape) == 5 and key.endswith("conv.weight"):  # MLX channels-last -> reference layout
                shape = (shape[0], shape[4], *shape[1:4])
            shapes[ops.source_key(key)] = shape
    path = tmp_path_factory.mktemp("ltx22b") / "ltx-2.3-22b-shaped.safetensors"
    _write_sparse_safetensors(path, shapes, meta)
    return Checkpoint(path)


# ------------------------------------------------------------------------------------ 22B refusal

def test_22b_shapes(ltx22b):
    full, nonblock, block = transformer_bytes(ltx22b, mx.bfloat16)
    assert 37 * GB < full < 39 * GB and nonblock < 0.03 * full and block * 48 + nonblock == full
    q8, q4 = transformer_bytes(ltx22b, mx.bfloat16, "q8")[0], transformer_bytes(ltx22b, mx.bfloat16, "q4")[0]
    assert 0.5 * full < q8 < 0.56 * full and 0.25 * full < q4 < 0.31 * full


@pytest.mark.parametrize("pipeline", ["distilled", "dev-two-stage"])
def test_refuses_bf16_eager_22b_on_32gb(ltx22b, pipeline):
    p = predict_peak(ltx22b, pipeline, 704, 1280, 121, memory="eager", decode_budget=DECODE_BUDGET)
    assert p.phase == "stage2" and p.peak > 32 * GB
    with pytest.raises(PreflightError) as e:
        check_fits(p, 32 * GB)
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and "--memory stream" in msg and "--quantize q8" in msg, msg
    assert "1280x704x121" in msg and "GB" in msg


def test_accepts_q8_streaming_on_32gb(ltx22b):
    p = predict_peak(ltx22b, "distilled", 512, 768, 49, memory="stream", quantize="q8", decode_budget=DECODE_BUDGET)
    assert check_fits(p, 32 * GB) is p
    assert p.phases["stage2"].weights < 2 * GB  # non-block weights + one q8 block
    line = p.describe()
    assert "\n" not in line and "768x512x49" in line


def test_prediction_grows_with_the_request(ltx22b):
    small = predict_peak(ltx22b, "dev", 512, 768, 49, memory="stream", decode_budget=DECODE_BUDGET)
    batched = predict_peak(ltx22b, "dev", 512, 768, 49, memory="stream", passes_per_call=4,
                           decode_budget=DECODE_BUDGET)
    longer = predict_peak(ltx22b, "dev", 512, 768, 97, memory="stream", decode_budget=DECODE_BUDGET)
    assert batched.phases["stage1"].activations > 3.5 * small.phases["stage1"].activations
    assert longer.phases["stage1"].activations > small.phases["stage1"].activations
    kept = predict_peak(ltx22b, "dev", 512, 768, 49, memory="eager", keep_models=True, decode_budget=DECODE_BUDGET)
    assert kept.phases["video_decode"].weights > transformer_bytes(ltx22b, mx.bfloat16)[0]


# ------------------------------------------------------------------------------------ advice

def _suggestions(msg: str):
    sizes = [tuple(map(int, m)) for m in re.findall(r"--height (\d+) --width (\d+)", msg)]
    frames = [int(m) for m in re.findall(r"--num-frames (\d+)", msg)]
    return sizes, frames


def test_advice_names_only_what_fits(ltx22b):
    budget = 12 * GB
    decode = budget // 2
    p = predict_peak(ltx22b, "dev-two-stage", 704, 1280, 121, memory="stream", decode_budget=decode)
    with pytest.raises(PreflightError) as e:
        check_fits(p, budget)
    msg = str(e.value)
    sizes, frames = _suggestions(msg)
    assert sizes and frames, msg
    for h, w in sizes:
        assert h % 64 == 0 and w % 64 == 0 and h < 704
        assert predict_peak(ltx22b, "dev-two-stage", h, w, 121, memory="stream",
                            decode_budget=decode).peak <= budget
    for n in frames:
        assert (n - 1) % 8 == 0 and n < 121
        assert predict_peak(ltx22b, "dev-two-stage", 704, 1280, n, memory="stream",
                            decode_budget=decode).peak <= budget
    # q8 streaming does not fit 12 GB at this size: not advised
    q8 = predict_peak(ltx22b, "dev-two-stage", 704, 1280, 121, memory="stream", quantize="q8",
                      decode_budget=decode)
    assert q8.peak > budget and "--quantize q8" not in msg


# ------------------------------------------------------------------------------------ calibration

def _measure_forward(model, config, frames: int, height: int, width: int, dtype: mx.Dtype, context: int = 1024):
    """Peak bytes (mx.get_peak_memory, weights and inputs included) of one eager denoising call."""
    from mlx_ltx.denoising import run_passes
    from mlx_ltx.latent_tools import AudioLatentTools, VideoLatentTools
    from mlx_ltx.models.transformer_args import PerturbationConfig

    tc = model.config
    video_tools = VideoLatentTools.from_pixel_shape(config, frames, height, width, 24.0)
    audio_tools = AudioLatentTools.from_video_pixel_shape(config, frames, 24.0)
    video = video_tools.create_initial_state(dtype)
    video = video.replace(latent=mx.random.normal(video.latent.shape).astype(dtype))
    audio = audio_tools.create_initial_state(dtype)
    # 19B sets take caption_channels-wide contexts (the projection is inside the transformer)
    vdim = tc.caption_channels if tc.text_projection_version == 1 else tc.cross_attention_dim
    adim = tc.caption_channels if tc.text_projection_version == 1 else tc.audio_cross_attention_dim
    passes = [("cond", mx.random.normal((1, context, vdim)).astype(dtype),
               mx.random.normal((1, context, adim)).astype(dtype), PerturbationConfig.empty())]
    mx.eval(video.latent, video.positions, audio.latent, audio.positions, passes[0][1:3])
    mx.synchronize()
    gc.collect()
    mx.reset_peak_memory()
    out = run_passes(model, video, audio, 0.7, passes, max_batch_size=None)
    mx.eval(out)
    mx.synchronize()
    peak = mx.get_peak_memory()
    del out
    return peak, video_tools.token_count, audio_tools.token_count


def _release() -> int:
    """Free what can be freed; the bytes still active (arrays other tests keep alive, e.g. cached
    models), which every peak below is measured above."""
    gc.collect()
    mx.synchronize()
    mx.clear_cache()
    return mx.get_active_memory()


@pytest.mark.parametrize("frames,height,width", [(17, 512, 512), (33, 512, 768)])
def test_denoise_forward_calibration(fixture_set, frames, height, width):
    """Predicted (weights + transformer_activation_bytes) vs measured peak of an eager forward."""
    from mlx_ltx.models.transformer import LTXModel

    base = _release()
    ckpt, dtype = fixture_set.checkpoint, mx.bfloat16
    model = LTXModel.from_checkpoint(ckpt, dtype)
    mx.eval(model.parameters())
    measured, vt, at = _measure_forward(model, ckpt.config, frames, height, width, dtype)
    measured -= base
    predicted = transformer_bytes(ckpt, dtype)[0] + transformer_activation_bytes(
        ckpt.config.transformer, vt, at, 1024, 1, dtype, cpu=mx.default_device() == mx.cpu)
    del model
    _release()
    assert abs(predicted / measured - 1) < 0.15, (vt, at, predicted, measured)


@pytest.mark.parametrize("name,dtype", [("real23-s1234", mx.bfloat16), ("ltx2-19b-s1234", mx.float32)])
def test_denoise_forward_calibration_wide(name, dtype):
    """The per-token terms, on a random-weight model of the set's config at width 256 (4 x 64 heads),
    where they are about half the working set (at the fixtures' width 16 the scores dominate)."""
    from mlx_ltx.models.transformer import LTXModel

    base = _release()
    config = _fixture(name).checkpoint.config
    tc = dataclasses.replace(config.transformer, num_attention_heads=4, attention_head_dim=64, cross_attention_dim=256,
                             audio_num_attention_heads=4, audio_attention_head_dim=32, audio_cross_attention_dim=128)
    model = LTXModel(tc)
    model.set_dtype(dtype)
    mx.eval(model.parameters())
    weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    measured, vt, at = _measure_forward(model, config, 17, 512, 512, dtype)
    measured -= base
    predicted = weights + transformer_activation_bytes(tc, vt, at, 1024, 1, dtype,
                                                       cpu=mx.default_device() == mx.cpu)
    del model
    _release()
    assert abs(predicted / measured - 1) < 0.15, (vt, at, predicted, measured)


@pytest.mark.parametrize("budget_mib", [8, 200])
def test_tiled_decode_calibration(budget_mib):
    """A decode tiled as vae_tiling.auto_tiling plans it for a budget (8 MiB: two spatial tiles; 200 MiB:
    one tile) against its prediction (the planner's own estimate of the largest tile), on the real23
    decoder: the release's block list (two or more res layers per stage) at small widths."""
    from mlx_ltx.media import video_to_unit
    from mlx_ltx.memory_policy import _component_bytes
    from mlx_ltx.models.video_decoder import VideoDecoder

    base = _release()
    ckpt = _fixture("real23-s1234").checkpoint
    stages, scale_factors, out_channels = _decoder_stages(ckpt)
    decoder = VideoDecoder.from_checkpoint(ckpt, dtype=mx.bfloat16)
    mx.eval(decoder.parameters())
    latent = mx.random.normal((1, ckpt.config.vae.latent_channels, 3, 4, 6))
    budget = budget_mib * 2**20
    mx.eval(latent)
    mx.synchronize()
    gc.collect()
    mx.reset_peak_memory()
    for chunk in decoder.iter_tiled_decode(latent, "auto", memory_budget=budget, noise_scale=0.0):
        np.array(video_to_unit(chunk))  # what the pipeline keeps of a chunk: host memory
    mx.synchronize()
    measured = mx.get_peak_memory() - base
    predicted = _component_bytes(ckpt, "vae_decoder", mx.bfloat16) + video_decode_activation_bytes(
        stages, scale_factors, out_channels, tuple(latent.shape), budget, cpu=mx.default_device() == mx.cpu)
    del decoder
    _release()
    # the planner's estimate: tight at the release's widths (test_decode_memory: 0.98-1.0), up to
    # ~25 % high at these small widths, where conv_out's 48 outputs dominate the untiled decode
    print(f"decode budget {budget_mib} MiB: predicted {predicted / 1e6:.2f} MB, measured {measured / 1e6:.2f} MB")
    assert 0.85 * measured <= predicted <= 1.35 * measured, (predicted, measured)
