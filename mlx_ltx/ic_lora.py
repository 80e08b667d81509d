"""IC-LoRA (``ltx_pipelines/ic_lora.py`` :: ``ICLoraPipeline`` and ``iclora_utils.py``): the
distilled two-stage pipeline with a control video (depth, pose, edges or a reference clip) appended
as guiding tokens in stage 1, read by an in-context LoRA fused in stage 1.

The stages are :data:`~mlx_ltx.pipeline_stages.IC_LORA` (the distilled pipeline's, the pipeline's
LoRAs in stage 1 only); this module builds their inputs (``PipelineSpec.inputs == "ic-lora"``):

* stage 1, at half size: the images as the distilled pipeline conditions on them
  (``combined_image_conditionings``), then each control video: its first ``num_frames`` frames by
  decode order (``decode_video_by_frame(frame_cap=num_frames)``), resized to the stage-1 size divided
  by the IC-LoRA's *reference downscale factor* (safetensors metadata
  ``reference_downscale_factor``, as ``read_lora_reference_downscale_factor``), optionally
  subsampled in time (``reference_temporal_scale_factor``), encoded by the video VAE and appended as
  :class:`~mlx_ltx.conditioning.VideoConditionByReferenceLatent`; with an attention strength below 1
  wrapped in :class:`~mlx_ltx.conditioning.ConditioningItemAttentionStrengthWrapper` (a scalar mask);
  with a ``conditioning_attention_mask=(path, strength)`` (the reference CLI's
  ``--conditioning-attention-mask``) the wrapper's mask is per control token instead: the mask video's first
  ``num_frames`` frames decoded and resized like a control video but at the stage-1 size, averaged to grey,
  mapped from [-1, 1] to [0, 1] (``ic_lora._load_mask_video``), downsampled to the control latent's token
  grid (:func:`downsample_mask_video_to_latent`) and multiplied by the strength.
* stage 2, at full size: the images only. The reference builds its stage 2 with ``loras=()`` and
  without the reference video, so the refinement sees neither the IC-LoRA nor the control; that is
  matched, not fixed (``StageSpec.user_loras=False``).

Checks the reference lacks, made before anything loads (``INPUT_GEOMETRY`` hook) and again when the
inputs are built: with a downscale factor f the final size must be a multiple of 2·32·f (the control
is encoded at size / 2f and the video VAE needs multiples of 32; the reference checks only
divisibility by f and then fails inside the VAE), and a control video shorter than the clip is an
error (the reference would encode a shorter control), and so is a mask video shorter than the clip.
"""

from __future__ import annotations

import math
import numbers
import os

import mlx.core as mx
import numpy as np

from .conditioning import ConditioningItemAttentionStrengthWrapper, VideoConditionByReferenceLatent
from .loading import Checkpoint
from .media_inputs import MediaError, load_video, probe_video
from .pipeline_stages import Geometry, ModalitySpec, StageInputs

DOWNSCALE_KEY = "reference_downscale_factor"
TEMPORAL_KEY = "reference_temporal_scale_factor"


def _metadata_factor(path: str, key: str) -> int:
    """``read_lora_reference_*_factor``: an integer from the LoRA file's metadata, 1 without one."""
    value = (Checkpoint(path).metadata or {}).get(key, 1)
    try:
        factor = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"LoRA {path}: metadata {key}={value!r} is not an integer") from None
    if factor < 1:
        raise ValueError(f"LoRA {path}: metadata {key}={factor} must be at least 1")
    return factor


def reference_scale_factors(loras) -> tuple[int, int]:
    """(downscale, temporal) factors of the reference video, from the LoRAs' metadata as
    ``ICLoraPipeline.__init__`` reads them: LoRAs without one say nothing; two that disagree are an error."""
    out = {DOWNSCALE_KEY: 1, TEMPORAL_KEY: 1}
    for path, _ in loras:
        for key in out:
            factor = _metadata_factor(path, key)
            if factor != 1:
                if out[key] not in (1, factor):
                    raise ValueError(f"LoRAs disagree on {key}: one says {out[key]}, {path} says {factor}; "
                                     f"IC-LoRAs trained at different reference scales cannot be combined")
                out[key] = factor
    return out[DOWNSCALE_KEY], out[TEMPORAL_KEY]


def _check_sizes(pipeline, height: int, width: int, factor: int) -> None:
    """With factor f the control is encoded at (size / 2) / f: the final size must be a multiple of 2·s·f
    (s: the VAE's spatial factor, 32); name the sizes around the one given that work."""
    n = pipeline._name
    div = pipeline.spec.stages[0].size_divisor
    for name, size, s in (("height", height, pipeline.config.vae.scale_factors[1]),
                          ("width", width, pipeline.config.vae.scale_factors[2])):
        f = div * s * factor
        if size % f:
            lo = size // f * f
            ok = " or ".join(str(v) for v in (lo, lo + f) if v >= f)
            raise ValueError(
                f"{n(name)} must be a multiple of {f} for the {pipeline.spec.name} pipeline with this IC-LoRA: its "
                f"reference downscale factor {factor} (LoRA metadata) encodes the control video at 1/{div * factor} "
                f"of the final size, which the video VAE needs as a multiple of {s}; got {size}, {ok} would work")


def _check_controls(pipeline, request, num_frames: int) -> list[tuple[str, float]]:
    n = pipeline._name
    arg = n("video_conditioning")
    items = list(request.video_conditioning)
    if not items:
        raise ValueError(f"the {pipeline.spec.name} pipeline needs a control video: {arg} PATH STRENGTH"
                         if arg.startswith("--") else
                         f"the {pipeline.spec.name} pipeline needs a control video: {arg}=[(path, strength)]")
    out = []
    for i, item in enumerate(items):
        path, strength = _video_and_strength(item, f"{arg}[{i}]", "control video")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"control video not found: {path} ({arg})")
        _check_length("control video", path, arg, probe_video(path).frames, num_frames, n("num_frames"), "",
                      "the IC-LoRA reads one control frame per output frame")
        out.append((path, float(strength)))
    return out


def _video_and_strength(item, arg: str, what: str) -> tuple[str, float]:
    """A (video path, strength in [0, 1]) pair of ``arg``, or an error naming it."""
    try:
        path, strength = item
    except (TypeError, ValueError):
        raise ValueError(f"{arg} must be a ({what} path, strength) pair; got {item!r}") from None
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{arg}: the path must be a video file name; got {path!r}")
    path = os.fspath(path)
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or \
            not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise ValueError(f"{what} {path} ({arg}): strength {strength!r} must be in [0, 1]")
    return path, float(strength)


def _check_mask(pipeline, request, num_frames: int) -> tuple[str, float] | None:
    """``conditioning_attention_mask=(path, strength)``: a readable video with at least ``num_frames``
    frames (the control videos' length) and a strength in [0, 1], which takes the place of
    ``conditioning_attention_strength`` (the reference's CLI passes it as that)."""
    item = request.conditioning_attention_mask
    if item is None:
        return None
    n = pipeline._name
    arg = n("conditioning_attention_mask")
    path, strength = _video_and_strength(item, arg, "mask video")
    if request.conditioning_attention_strength != 1.0:
        raise ValueError(f"give either {n('conditioning_attention_strength')} or {arg} with its strength, not both: "
                         f"the mask's strength is the attention strength (the mask is multiplied by it)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask video not found: {path} ({arg})")
    try:
        frames = probe_video(path).frames
    except MediaError as e:  # ffmpeg cannot read it
        raise MediaError(f"mask video ({arg}): {e}") from None
    _check_length("mask video", path, arg, frames, num_frames, n("num_frames"), " that the control video is read for",
                  "the mask weighs every control frame")
    return path, float(strength)


def _check_length(what: str, path: str, arg: str, frames: int, num_frames: int, frames_arg: str, requested: str,
                  why: str) -> None:
    """A ``what`` video of ``frames`` frames read for ``num_frames`` output frames, or an error naming the
    longest valid request (8k+1) it can serve."""
    if frames >= num_frames:
        return
    hint = f" (8k+1: {8 * ((frames - 1) // 8) + 1})" if frames >= 1 else ""
    raise MediaError(f"{what} {path} ({arg}) has {frames} frames, shorter than the {num_frames} requested "
                     f"({frames_arg}){requested}: {why}; use a longer {what} or {frames_arg} ≤ {frames}{hint}")


def check_ic_lora_request(pipeline, request, num_frames: int, height: int, width: int):
    """Every IC-LoRA input checked (control videos, strengths, the attention mask video, sizes for the
    LoRA's downscale factor); returns (downscale factor, temporal factor, [(control path, strength), ...],
    (mask path, strength) or None)."""
    a = request.conditioning_attention_strength
    if isinstance(a, bool) or not isinstance(a, numbers.Real) or not (math.isfinite(a) and 0.0 <= a <= 1.0):
        raise ValueError(f"{pipeline._name('conditioning_attention_strength')} must be in [0, 1]; got {a!r}")
    factor, temporal = reference_scale_factors(pipeline.loras)
    if factor != 1:
        _check_sizes(pipeline, height, width, factor)
    controls = _check_controls(pipeline, request, num_frames)
    return factor, temporal, controls, _check_mask(pipeline, request, num_frames)


def ic_lora_geometry(pipeline, request, num_frames, height, width, fps):
    """The ``INPUT_GEOMETRY`` hook, called by ``generate`` before any model loads and before its own
    checks: the output keeps the requested geometry; the IC-LoRA checks run here on the sizes as they
    will be (the defaults filled in), when they are plain integers (``check_request`` names the others).
    An automatic length (None) is checked when the inputs are built."""
    p = pipeline.params
    div = pipeline.spec.stages[0].size_divisor
    h = p.stage_1_height * div if height is None else height
    w = p.stage_1_width * div if width is None else width
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        n = num_frames if isinstance(num_frames, int) and not isinstance(num_frames, bool) else 1
        check_ic_lora_request(pipeline, request, n, h, w)
    return num_frames, height, width, fps


def temporal_subsample(pixels: mx.array, factor: int) -> mx.array:
    """``temporal_subsample``: pixel frame 0, then every ``factor``-th from frame 1 (the VAE's causal grid)."""
    return pixels[:, :, [0, *range(1, pixels.shape[2], factor)]]


def load_mask_video(path: str, height: int, width: int, num_frames: int, dtype: mx.Dtype = mx.float32) -> np.ndarray:
    """``ic_lora._load_mask_video``: the mask video's first ``num_frames`` frames decoded and preprocessed
    as a control video is (resized to cover, centre-cropped to ``height`` × ``width``, in [-1, 1], at
    ``dtype``: the reference loads it in bf16, as the pipelines' default), averaged over the channels,
    mapped to [0, 1] and clamped: float32 (1, 1, F, height, width)."""
    pixels = load_video(path, height, width, num_frames, dtype=dtype)
    grey = np.array(pixels.astype(mx.float32)).mean(axis=1, keepdims=True, dtype=np.float64)
    return np.clip((grey + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


def _area(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """``interpolate(mode="area")`` (adaptive average pooling) of float32 (..., H, W) to height × width: output
    cell (i, j) averages rows [floor(i·H/height), ceil((i+1)·H/height)) and the columns likewise. Summed as
    the reference's CPU kernel does, a float32 running sum over the window divided by its height then its
    width (a float64 sum differs from it by up to 2e-6 on a 64×64 window)."""
    h, w = x.shape[-2:]
    out = np.empty((*x.shape[:-2], height, width), np.float32)
    for i in range(height):
        h0, h1 = i * h // height, -(-(i + 1) * h // height)
        for j in range(width):
            w0, w1 = j * w // width, -(-(j + 1) * w // width)
            window = x[..., h0:h1, w0:w1].reshape(*x.shape[:-2], -1)
            total = np.cumsum(window, axis=-1, dtype=np.float32)[..., -1]
            out[..., i, j] = total / np.float32(h1 - h0) / np.float32(w1 - w0)
    return out


def downsample_mask_video_to_latent(mask, frames: int, height: int, width: int) -> np.ndarray:
    """``iclora_utils.downsample_mask_video_to_latent``: a pixel mask (B, 1, F, H, W) -> float32
    (B, frames·height·width) token weights on a latent grid. Each frame area-averaged to height × width; the
    first frame kept alone (the VAE's causal first latent frame), the following F−1 averaged in groups of
    (F−1)/(frames−1), which must be whole; with one pixel or one latent frame, the first frame only."""
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim != 5 or m.shape[1] != 1:
        raise ValueError(f"the mask must be (B, 1, F, H, W); got shape {m.shape}")
    b, f_pix = m.shape[0], m.shape[2]
    down = _area(m, height, width)
    first = down[:, :, :1]
    if f_pix > 1 and frames > 1:
        if (f_pix - 1) % (frames - 1):
            raise ValueError(f"a mask of {f_pix} frames does not fit {frames} latent frames: {f_pix} − 1 must be a "
                             f"multiple of {frames} − 1")
        t = (f_pix - 1) // (frames - 1)
        rest = down[:, :, 1:].reshape(b, 1, frames - 1, t, height, width).mean(axis=3, dtype=np.float32)
        down = np.concatenate([first, rest], axis=2)
    else:
        down = first
    return down.reshape(b, -1)


def reference_video_conditionings(controls: list[tuple[str, float]], height: int, width: int, num_frames: int,
                                  video_encoder, dtype: mx.Dtype, downscale_factor: int = 1,
                                  temporal_scale_factor: int = 1, attention_strength: float = 1.0,
                                  attention_mask: np.ndarray | None = None) -> list:
    """``append_ic_lora_reference_video_conditionings`` at a stage of ``height`` × ``width``: each control
    video at (height, width) / ``downscale_factor``, encoded whole (untiled, as the reference passes no
    tiling), one item per video, wrapped with the scalar attention strength when below 1, or, given a
    pixel ``attention_mask`` (:func:`load_mask_video`), with that mask downsampled to the control latent's
    grid times ``attention_strength``."""
    ref_h, ref_w = height // downscale_factor, width // downscale_factor
    items = []
    for path, strength in controls:
        pixels = load_video(path, ref_h, ref_w, num_frames, dtype=video_encoder.dtype)
        if temporal_scale_factor > 1:
            pixels = temporal_subsample(pixels, temporal_scale_factor)
        latent = video_encoder(pixels).astype(dtype)
        mx.eval(latent)
        item = VideoConditionByReferenceLatent(latent, downscale_factor, temporal_scale_factor, strength)
        if attention_mask is not None:
            tokens = downsample_mask_video_to_latent(attention_mask, *latent.shape[2:])
            item = ConditioningItemAttentionStrengthWrapper(
                item, mx.array(tokens * np.float32(attention_strength)).astype(dtype))
        elif attention_strength < 1.0:
            item = ConditioningItemAttentionStrengthWrapper(item, attention_strength)
        items.append(item)
    return items


def ic_lora_inputs(pipeline, request, geometry: Geometry, crf_threads: int | None) -> list[StageInputs]:
    """The ``"ic-lora"`` stage-input builder: stage 1 the images then the control videos at half size,
    stage 2 the images alone at full size (``ICLoraPipeline.__call__``)."""
    factor, temporal, controls, mask = check_ic_lora_request(pipeline, request, geometry.num_frames,
                                                             geometry.height, geometry.width)
    first = pipeline.spec.stages[0]
    h, w = geometry.height // first.size_divisor, geometry.width // first.size_divisor
    strength, pixels = request.conditioning_attention_strength, None
    if mask is not None:  # at the stage-1 size, as the reference's CLI loads it; its strength is the strength
        pixels = load_mask_video(mask[0], h, w, geometry.num_frames, pipeline.dtype)
        strength = mask[1]
    # the controls first: the image encoding below releases the video encoder in low-memory mode
    refs = reference_video_conditionings(controls, h, w, geometry.num_frames, pipeline.video_encoder(),
                                         pipeline.dtype, factor, temporal, strength, pixels)
    per_stage = pipeline._stage_conditionings(list(request.images), geometry, crf_threads)
    if pipeline.low_memory and pipeline._video_encoder is not None:  # no images: nothing released it
        pipeline._video_encoder = None
    # the reference orders them images first, then the controls (appended after any image tokens)
    return [StageInputs(ModalitySpec(tuple(per_stage[0]) + tuple(refs))),
            *(StageInputs(ModalitySpec(tuple(items))) for items in per_stage[1:])]


__all__ = ["check_ic_lora_request", "downsample_mask_video_to_latent", "ic_lora_geometry", "ic_lora_inputs",
           "load_mask_video", "reference_scale_factors", "reference_video_conditionings", "temporal_subsample"]
