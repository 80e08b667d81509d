"""Whole pipelines against the reference's own pipeline classes (golden_e2e, FORMAT.md §6).

``Pipeline.generate`` runs prompt text -> tiny Gemma + tokenizer -> contexts, the two PNG
images -> CRF round trip -> video encoder, every stage with the distilled LoRA fused where the
reference fuses it, the upsampler, and the video and audio decoders, in float32, with the
reference's random draws replayed in the order it made them. Compared: the final video and audio
latents, the decoded frames and the waveform (TOL_LOOP), plus the contexts and every stage's output
as diagnostics of where a difference starts.
"""

from __future__ import annotations

import contextlib

from collections import deque

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_F32, TOL_LOOP, fixture_dirs, rel_err

from mlx_ltx.conditioning import ImageConditioningInput
from mlx_ltx.guidance import MultiModalGuiderParams
from mlx_ltx.pipeline_stages import PIPELINES, StageTrace
from mlx_ltx.pipelines import Pipeline

E2E = ("distilled", "dev", "dev-two-stage", "dev-two-stage-hq")


class ReferenceDraws:
    """The reference's recorded draws (``<pipeline>.draw<k>.<site>``), handed out per site in the
    order it made them: ``noiser`` for the stage noise, ``decoder`` for the decoder's per-tile
    noise, ``sde`` for res_2s, ``ancestral`` for the ancestral loop (LTX-2.5's distilled stage 1);
    a shape that differs from the recorded one fails at once."""

    def __init__(self, g: dict, pipeline: str, sites=("noiser", "decoder", "sde", "ancestral")):
        prefix = f"{pipeline}.draw"
        draws = sorted((int(k[len(prefix):].split(".")[0]), k.rsplit(".", 1)[1], k) for k in g if k.startswith(prefix))
        assert [i for i, _, _ in draws] == list(range(len(draws))), "draw indices are not contiguous"
        self.queues = {s: deque() for s in ("noiser", "decoder", "sde", "ancestral")}
        for _, site, key in draws:
            if site in sites:
                self.queues[site].append(g[key])

    def _pop(self, site: str, shape) -> np.ndarray:
        assert self.queues[site], f"the port draws more {site} noise than the reference"
        n = self.queues[site].popleft()
        assert tuple(n.shape) == tuple(shape), (site, n.shape, shape)
        return n

    def __call__(self, shape, dtype, label):
        site = "decoder" if label == "decoder" else "ancestral" if ".ancestral." in label else "noiser"
        return mx.array(self._pop(site, shape)).astype(dtype)

    def sde(self, stage_index: int):
        return lambda shape, kind: mx.array(self._pop("sde", shape).astype(np.float64))

    def decoder(self, shape, dtype):
        return self(shape, dtype, "decoder")

    def left(self) -> dict[str, int]:
        return {s: len(q) for s, q in self.queues.items() if q}


def e2e(fixture_set):
    if not fixture_set.has_golden("e2e"):
        pytest.skip(f"{fixture_set.path.name} has no golden_e2e (made with --no-e2e, --no-gemma or --no-pipeline)")
    return fixture_set.golden("e2e"), fixture_set.manifest["e2e"]


def guider(d: dict) -> MultiModalGuiderParams:
    return MultiModalGuiderParams(cfg_scale=d["cfg_scale"], stg_scale=d["stg_scale"], stg_blocks=list(d["stg_blocks"]),
                                  rescale_scale=d["rescale_scale"], modality_scale=d["modality_scale"],
                                  skip_step=d["skip_step"])


def make_pipeline(fixture_set, name: str, meta: dict) -> Pipeline:
    fs = fixture_set
    return Pipeline.from_pretrained(fs.checkpoint_path, name, gemma=str(fs.path / fs.manifest["gemma_dir"]),
                                    upsampler=str(fs.upsampler_path("spatial-x2")),
                                    distilled_lora=str(fs.path / meta["distilled_lora"]), dtype=mx.float32)


def request(fixture_set, name: str, meta: dict) -> dict:
    spec = PIPELINES[name]
    kw = {"height": meta["height"], "width": meta["width"], "num_frames": meta["num_frames"], "fps": meta["fps"],
          "seed": meta["seed"], "crf_threads": meta["crf_threads"],
          "images": [ImageConditioningInput(str(fixture_set.path / p), idx, s) for p, idx, s in meta["images"]]}
    if spec.guided:
        g = meta["guiders"]["hq" if spec.hq_params else "dev"]
        kw.update(negative_prompt=meta["negative_prompt"], video_guider_params=guider(g["video"]),
                  audio_guider_params=guider(g["audio"]))
    if spec.uses_steps:
        kw["num_inference_steps"] = meta["steps"]
    return kw


@contextlib.contextmanager
def observed_frames(pipe: Pipeline):
    """The float frames [f, H, W, 3] of the pipeline's own video decode, chunk by chunk, as it runs
    (``generate`` hands back uint8 frames)."""
    decoded: list[np.ndarray] = []
    real = pipe.iter_video_frames

    def observe(*args, **kwargs):
        for chunk in real(*args, **kwargs):
            decoded.append(chunk)
            yield chunk

    pipe.iter_video_frames = observe
    try:
        yield decoded
    finally:
        del pipe.iter_video_frames


def whole_pipeline_errors(fs, name: str, pipe: Pipeline, g: dict, meta: dict) -> dict[str, float]:
    """``pipe.generate`` with the reference's draws replayed: relative errors of the final latents,
    the decoded frames and the waveform (also used by the LTX-2.5 test)."""
    p = f"{name}."
    draws = ReferenceDraws(g, name)
    with observed_frames(pipe) as decoded:  # generate returns uint8 frames: keep its own float ones
        result = pipe.generate(meta["prompt"], noise=draws, sde_noise=draws.sde, **request(fs, name, meta))
    assert draws.left() == {}, f"the reference drew more than the port: {draws.left()}"
    errors = {"video latent": rel_err(result.video_latent, g[p + "decode.video.latent"]),
              "audio latent": rel_err(result.audio_latent, g[p + "decode.audio.latent"])}
    ref_frames = g[p + "out.frames_u16"].astype(np.float64) / 65535.0
    errors["frames"] = rel_err(np.concatenate(decoded, axis=0), ref_frames)
    # generate's uint8 frames are those frames rounded
    assert np.abs(result.frames.astype(int) - np.round(ref_frames * 255).astype(int)).max() <= 1

    wave, rate = pipe.decode_audio(result.audio_latent)
    assert rate == int(g[p + "out.sample_rate"][0])
    errors["waveform"] = rel_err(wave, g[p + "out.waveform"])
    n = min(wave.shape[1], result.audio.shape[1])
    assert np.array_equal(result.audio[:, :n], wave[:, :n])  # generate's audio: the same, fitted to the video
    print(f"\n{fs.path.name} {name}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    return errors


@pytest.mark.parametrize("name", E2E)
def test_pipeline_matches_reference_pipeline_class(fixture_set, name):
    g, meta = e2e(fixture_set)
    errors = whole_pipeline_errors(fixture_set, name, make_pipeline(fixture_set, name, meta), g, meta)
    assert max(errors.values()) <= TOL_LOOP, errors


def test_prompt_contexts_match_reference(fixture_set):
    """Prompt text -> tokenizer -> Gemma -> connectors, as the reference's PromptEncoder did in the
    guided pipeline (positive and negative prompt in one call)."""
    g, meta = e2e(fixture_set)
    pipe = make_pipeline(fixture_set, "dev", meta)
    ctx = pipe.encode_prompts(meta["prompt"], meta["negative_prompt"])
    for i, (video, audio) in enumerate(((ctx.video, ctx.audio), (ctx.video_negative, ctx.audio_negative))):
        assert rel_err(video, g[f"dev.ctx{i}.video"]) <= TOL_F32
        assert rel_err(audio, g[f"dev.ctx{i}.audio"]) <= TOL_F32


def stage_output_errors(fs, name: str, pipe: Pipeline, g: dict, meta: dict) -> dict[str, float]:
    """Each stage's output and the upsampled hand-off, from the reference's contexts, with its
    stage draws replayed: where a whole-pipeline difference starts."""
    from mlx_ltx.pipeline_stages import Contexts

    p = f"{name}."
    kw = request(fs, name, meta)
    ctx = [mx.array(g[p + "ctx0.video"]), mx.array(g[p + "ctx0.audio"])]
    if PIPELINES[name].guided:
        ctx += [mx.array(g[p + "ctx1.video"]), mx.array(g[p + "ctx1.audio"])]
    draws = ReferenceDraws(g, name, sites=("noiser", "sde", "ancestral"))
    trace = StageTrace([], [])
    pipe.denoise(Contexts(*ctx), kw["num_frames"], kw["height"], kw["width"], kw["fps"], images=kw["images"],
                 steps=kw.get("num_inference_steps"), video_guider_params=kw.get("video_guider_params"),
                 audio_guider_params=kw.get("audio_guider_params"), noise=draws, sde_noise=draws.sde, trace=trace,
                 crf_threads=kw["crf_threads"])
    errors = {}
    for j, out in enumerate(trace.outputs):
        errors[f"stage{j} video"] = rel_err(out.video_latent, g[p + f"stage{j}.video.latent"])
        errors[f"stage{j} audio"] = rel_err(out.audio_latent, g[p + f"stage{j}.audio.latent"])
    if trace.upscaled is not None:
        errors["upscaled"] = rel_err(trace.upscaled, g[p + "upscaled.video.latent"])
    print(f"\n{fs.path.name} {name}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    return errors


@pytest.mark.parametrize("name", E2E)
def test_stage_outputs_match_reference(fixture_set, name):
    g, meta = e2e(fixture_set)
    errors = stage_output_errors(fixture_set, name, make_pipeline(fixture_set, name, meta), g, meta)
    assert max(errors.values()) <= TOL_LOOP, errors


def test_streamed_pipeline_matches_eager(fixture_set):
    """dev-two-stage with the transformer streamed block by block (the distilled LoRA fused per
    block as it is read) gives the eager run's latents and frames bit for bit. On the sets with the
    released structures (``real*``; the toy ones add no key layout of their own), or the one
    ``MLX_LTX_REFERENCE_DIR`` names."""
    if not fixture_set.variant.startswith("real") and len(fixture_dirs()) > 1:
        pytest.skip("streaming is checked on the sets with the released block structures")
    g, meta = e2e(fixture_set)
    name = "dev-two-stage"
    results = []
    for memory in ("eager", "stream"):
        pipe = make_pipeline(fixture_set, name, meta)
        pipe.memory = memory
        draws = ReferenceDraws(g, name)
        seen = []
        results.append(pipe.generate(meta["prompt"], noise=draws, sde_noise=draws.sde, events=seen.append,
                                     **request(fixture_set, name, meta)))
        assert seen[0].settings.memory == memory
    eager, stream = results
    assert np.array_equal(np.array(eager.video_latent), np.array(stream.video_latent))
    assert np.array_equal(np.array(eager.audio_latent), np.array(stream.audio_latent))
    assert np.array_equal(eager.frames, stream.frames)
