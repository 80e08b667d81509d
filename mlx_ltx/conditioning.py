"""Image conditioning of the video stream, as the reference's ``ltx_core/conditioning``
(``VideoConditionByLatentIndex``, ``VideoConditionByKeyframeIndex``,
``ConditioningItemAttentionStrengthWrapper``, ``mask_utils``) and
``ltx_pipelines/utils/media_io`` (``load_image_and_preprocess``) and ``helpers``
(``combined_image_conditionings``).

An image at pixel frame 0 replaces the first latent frame's tokens (``clean_latent`` = the
encoded image, ``denoise_mask`` = 1 − strength). An image at any other frame is appended as
guiding tokens after the target grid, with its own positions; the loop denoises them alongside
and :meth:`VideoLatentTools.clear_conditioning` drops them at the end.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
from dataclasses import replace
from typing import NamedTuple

import mlx.core as mx
import numpy as np

# DEFAULT_IMAGE_CRF: H.264 CRF of the re-compression an image goes through before encoding; the
# models were trained on images compressed like this (from 2.4 on 18: generations.ModelKind.image_crf)
from .guidance import DEFAULT_IMAGE_CRF
from .latent_tools import (
    LatentState,
    VideoLatentShape,
    VideoLatentTools,
    extend_keyframes_mask,
    get_patch_grid_bounds,
    get_pixel_coords,
    patchify_video,
)


class ConditioningError(ValueError):
    """A conditioning item does not fit the latent state it is applied to."""


class VideoConditionByLatentIndex:
    """Writes ``latent`` [B, C, F', H, W] into the clean latent at latent frame ``latent_idx``
    and sets those tokens' denoise mask to ``1 − strength`` (strength 1 = kept exactly)."""

    def __init__(self, latent: mx.array, strength: float, latent_idx: int):
        self.latent = latent
        self.strength = strength
        self.latent_idx = latent_idx

    def apply_to(self, state: LatentState, tools: VideoLatentTools) -> LatentState:
        s = tools.target_shape
        B, C, F, H, W = self.latent.shape
        if (B, C, H, W) != (s.batch, s.channels, s.height, s.width) or self.latent_idx + F > s.frames:
            raise ConditioningError(
                f"image latent {tuple(self.latent.shape)} at latent frame {self.latent_idx} does not fit the target "
                f"latent ({s.batch}, {s.channels}, {s.frames}, {s.height}, {s.width}): the image must have the "
                f"video's height and width")
        tokens = patchify_video(self.latent).astype(state.clean_latent.dtype)
        start = self.latent_idx * H * W
        stop = start + tokens.shape[1]
        clean = mx.concatenate([state.clean_latent[:, :start], tokens, state.clean_latent[:, stop:]], axis=1)
        mask = mx.full((B, stop - start, 1), 1.0 - self.strength, dtype=state.denoise_mask.dtype)
        mask = mx.concatenate([state.denoise_mask[:, :start], mask, state.denoise_mask[:, stop:]], axis=1)
        return replace(state, clean_latent=clean, denoise_mask=mask)


def keyframe_positions(keyframes_shape: VideoLatentShape, frame_idx: int, tools: VideoLatentTools,
                       num_pixel_frames: int = 1) -> mx.array:
    """float32 [B, 3, M, 2] positions of appended keyframe tokens: the keyframe's own grid in
    pixels, shifted by ``frame_idx`` pixel frames; the causal fix only for ``frame_idx`` 0; a
    single-frame keyframe spans [idx, idx + 1); time then divided by fps."""
    pos = get_pixel_coords(get_patch_grid_bounds(keyframes_shape), tools.scale_factors,
                           tools.causal_fix and frame_idx == 0)
    pos[:, 0] += frame_idx
    if num_pixel_frames == 1:
        pos[:, 0, :, 1] = pos[:, 0, :, 0] + 1
    pos = pos.astype(np.float32)
    pos[:, 0] = pos[:, 0] / np.float32(tools.fps)
    return mx.array(pos)


class VideoConditionByKeyframeIndex:
    """Appends ``keyframes`` [B, C, F', H', W'] as guiding tokens at pixel frame ``frame_idx``:
    a zero-filled latent, ``clean_latent`` = the keyframe tokens, mask ``1 − strength``.
    Unwrapped, it leaves the attention mask alone (extends an existing one with full attention)."""

    def __init__(self, keyframes: mx.array, frame_idx: int, strength: float, num_pixel_frames: int = 1):
        self.keyframes = keyframes
        self.frame_idx = frame_idx
        self.strength = strength
        self.num_pixel_frames = num_pixel_frames

    def apply_to(self, state: LatentState, tools: VideoLatentTools) -> LatentState:
        if self.keyframes.shape[1] != tools.target_shape.channels:
            raise ConditioningError(f"keyframe latent has {self.keyframes.shape[1]} channels, the video latent "
                                    f"{tools.target_shape.channels}")
        tokens = patchify_video(self.keyframes)
        positions = keyframe_positions(VideoLatentShape(*self.keyframes.shape), self.frame_idx, tools,
                                       self.num_pixel_frames)
        return append_guiding_tokens(state, tools, tokens, positions, self.strength, self.keyframes.dtype)


def append_guiding_tokens(state: LatentState, tools: VideoLatentTools, tokens: mx.array, positions: mx.array,
                          strength: float, dtype: mx.Dtype) -> LatentState:
    """Given content appended as clean guiding tokens (keyframes, IC-LoRA references): a zero
    latent, ``clean_latent`` = ``tokens``, mask ``1 − strength``, the attention mask extended with
    full attention, and unmarked in ``keyframes_mask`` (the reference marks only generated keyframe
    slots). The mask is filled in the content's ``dtype`` before joining the float32 mask, as the
    reference does: with bf16 latents a strength of 0.7 becomes a mask of 0.30078125."""
    B, M, C = tokens.shape
    mask = mx.full((B, M, 1), 1.0 - strength, dtype=dtype).astype(state.denoise_mask.dtype)
    return replace(
        state,
        latent=mx.concatenate([state.latent, mx.zeros((B, M, C), state.latent.dtype)], axis=1),
        denoise_mask=mx.concatenate([state.denoise_mask, mask], axis=1),
        positions=mx.concatenate([state.positions, positions.astype(state.positions.dtype)], axis=2),
        clean_latent=mx.concatenate([state.clean_latent, tokens.astype(state.clean_latent.dtype)], axis=1),
        attention_mask=update_attention_mask(state, None, tools.token_count, M, B, dtype),
        keyframes_mask=extend_keyframes_mask(state, M, marked=False))


class ConditioningItemAttentionStrengthWrapper:
    """Applies ``conditioning`` and sets how strongly its appended tokens and the target's noisy
    tokens attend to each other: ``attention_mask`` a scalar, [M] or [B, M] in [0, 1]."""

    def __init__(self, conditioning, attention_mask):
        self.conditioning = conditioning
        self.attention_mask = attention_mask

    def apply_to(self, state: LatentState, tools: VideoLatentTools) -> LatentState:
        new = self.conditioning.apply_to(state, tools)
        num_new = new.latent.shape[1] - state.latent.shape[1]
        if num_new == 0:
            return new
        # built against the state before the item: its token count marks where the new group starts
        mask = update_attention_mask(state, self.attention_mask, tools.token_count, num_new, new.latent.shape[0],
                                     new.latent.dtype)
        return replace(new, attention_mask=mask)


def resolve_cross_mask(attention_mask, num_new_tokens: int, batch_size: int, dtype: mx.Dtype) -> mx.array:
    """A scalar, [M] or [B|1, M] attention strength -> [B, M]."""
    if isinstance(attention_mask, (int, float)) or (isinstance(attention_mask, mx.array) and attention_mask.ndim == 0):
        return mx.full((batch_size, num_new_tokens), float(attention_mask), dtype=dtype)
    mask = mx.array(attention_mask).astype(dtype)
    if mask.ndim == 1 and mask.shape[0] == num_new_tokens:
        return mx.broadcast_to(mask[None], (batch_size, num_new_tokens))
    if mask.ndim == 2 and mask.shape[1] == num_new_tokens and mask.shape[0] in (1, batch_size):
        return mx.broadcast_to(mask, (batch_size, num_new_tokens))
    raise ValueError(f"attention_mask must be a scalar, ({num_new_tokens},) or ({batch_size} or 1, {num_new_tokens}); "
                     f"got shape {tuple(mask.shape)}")


def build_attention_mask(existing_mask: mx.array | None, num_noisy_tokens: int, num_new_tokens: int,
                         num_existing_tokens: int, cross_mask: mx.array, dtype: mx.Dtype) -> mx.array:
    """[B, E+M, E+M] mask in [0, 1] after appending M tokens to E: the existing block kept (1
    without one); noisy (first ``num_noisy_tokens``) <-> new = ``cross_mask``; new <-> new 1;
    earlier appended groups <-> new 0 (reference groups do not see each other)."""
    B, M, E, N = cross_mask.shape[0], num_new_tokens, num_existing_tokens, num_noisy_tokens
    cross = cross_mask.astype(dtype)
    top_left = existing_mask.astype(dtype) if existing_mask is not None else mx.ones((B, E, E), dtype)
    top_right = mx.concatenate([mx.broadcast_to(cross[:, None, :], (B, N, M)), mx.zeros((B, E - N, M), dtype)], 1)
    bottom_left = mx.concatenate([mx.broadcast_to(cross[:, :, None], (B, M, N)), mx.zeros((B, M, E - N), dtype)], 2)
    return mx.concatenate([mx.concatenate([top_left, top_right], axis=2),
                           mx.concatenate([bottom_left, mx.ones((B, M, M), dtype)], axis=2)], axis=1)


def update_attention_mask(state: LatentState, attention_mask, num_noisy_tokens: int, num_new_tokens: int,
                          batch_size: int, dtype: mx.Dtype) -> mx.array | None:
    """The state's mask grown by ``num_new_tokens``; None while no item asked for masking."""
    if attention_mask is None:
        if state.attention_mask is None:
            return None
        cross = mx.ones((batch_size, num_new_tokens), dtype)
    else:
        cross = resolve_cross_mask(attention_mask, num_new_tokens, batch_size, dtype)
    return build_attention_mask(state.attention_mask, num_noisy_tokens, num_new_tokens, state.latent.shape[1],
                                cross, dtype)


# ---------------------------------------------------------------------------------------------
# Image preprocessing (``media_io.load_image_and_preprocess``)

_ORIENTATION_TO_ROTATION = {3: 180, 6: 270, 8: 90}  # EXIF Orientation -> counter-clockwise degrees


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> uint8 RGB [H, W, 3]: EXIF rotation applied, an embedded ICC profile
    converted to sRGB, alpha dropped (not composited), as the reference's ``decode_image``."""
    from PIL import Image, ImageCms, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return _decode_opened(image, ImageCms)
    except FileNotFoundError:
        raise FileNotFoundError(f"conditioning image not found: {os.fspath(path)}") from None
    except IsADirectoryError:
        raise ValueError(f"conditioning image {os.fspath(path)} is a folder, not an image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # PIL raises OSError for truncated data, SyntaxError / ValueError for some corrupt headers
        raise ValueError(f"conditioning image {os.fspath(path)} cannot be decoded as an image "
                         f"({type(e).__name__}: {e})") from None


def _decode_opened(image, ImageCms) -> np.ndarray:
    orientation = image.getexif().get(0x0112)
    if orientation in _ORIENTATION_TO_ROTATION:
        image = image.rotate(_ORIENTATION_TO_ROTATION[orientation], expand=True)
    icc = image.info.get("icc_profile")
    if image.mode == "RGBA":
        image = image.convert("RGB")
    elif image.mode == "LA":
        image = image.convert("L")
    if icc:
        try:
            image = ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                              ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")),
                                              outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            image = image.convert("RGB")
    else:
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def default_encoder_threads() -> int:
    """The libx264 thread count the reference gets on this machine. PyAV opens encoders with
    ``thread_count`` 0 (automatic) and slice threading; libx264's automatic count with slice
    threads is one per CPU of the process's affinity mask."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks; x264 counts the logical CPUs there
        return os.cpu_count() or 1


def preprocess(image: np.ndarray, crf: int = DEFAULT_IMAGE_CRF, threads: int | None = None) -> np.ndarray:
    """One-frame H.264 round trip (libx264 ``crf``, preset veryfast, yuv420p) through the
    imageio-ffmpeg binary, cropped to even height and width; ``crf`` 0 returns the image.

    The reference encodes with PyAV, and two of its settings change the pixels:
    - its RGB<->YUV conversion is swscale with bilinear chroma filtering: ``-sws_flags bilinear``
      (the CLI default, bicubic, is off by up to ~25 code values);
    - it opens libx264 slice-threaded (``thread_type`` SLICE): the frame is cut into one slice
      per thread (images taller than 128 px), and the slices code differently, by 30-50 code
      values between 1 and 2 threads. The ffmpeg CLI would pick frame threads; ``-thread_type
      slice -threads N`` gives PyAV's bitstream at N threads. ``threads`` defaults to what the
      reference uses on this machine (:func:`default_encoder_threads`)."""
    if crf == 0 or min(image.shape[0], image.shape[1]) < 2:
        return image
    import imageio_ffmpeg

    threads = default_encoder_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"the H.264 encoder needs at least 1 thread; got {threads}")
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    frame = np.ascontiguousarray(image[:h, :w], dtype=np.uint8)
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    common = [exe, "-nostdin", "-hide_banner", "-loglevel", "error"]
    encode = [*common, "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", "1", "-i", "-",
              "-sws_flags", "bilinear", "-c:v", "libx264", "-thread_type", "slice", "-threads", str(threads),
              "-crf", str(crf), "-preset", "veryfast",
              "-pix_fmt", "yuv420p", "-frames:v", "1", "-f", "h264", "-"]
    decode = [*common, "-f", "h264", "-i", "-", "-sws_flags", "bilinear", "-frames:v", "1",
              "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    bitstream = _run_ffmpeg(encode, frame.tobytes())
    raw = _run_ffmpeg(decode, bitstream)
    if len(raw) != h * w * 3:
        raise RuntimeError(f"ffmpeg decoded {len(raw)} bytes for a {w}x{h} RGB frame")
    return np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3).copy()


def _run_ffmpeg(cmd: list[str], data: bytes) -> bytes:
    proc = subprocess.run(cmd, input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    return proc.stdout


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear source taps (align_corners False, no antialias), float32 like its CPU
    kernel: src = max(0, (i + 0.5)·in/out − 0.5), i0 = floor, i1 = min(i0 + 1, in − 1)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5),
                     np.float32(0))
    i0 = src.astype(np.int64)
    lam1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, np.minimum(i0 + 1, in_size - 1), lam1


def resize_and_center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8/float [H, W, 3] -> float32 [1, 3, 1, height, width] on the 0–255 scale: bilinear
    resize to cover the target (scale = max of the two ratios, sizes rounded up), then a centre
    crop with floor offsets."""
    src_h, src_w = image.shape[:2]
    scale = max(height / src_h, width / src_w)
    new_h, new_w = math.ceil(src_h * scale), math.ceil(src_w * scale)
    x = image.astype(np.float32)
    h0, h1, lh = _linear_taps(src_h, new_h)
    w0, w1, lw = _linear_taps(src_w, new_w)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    h0, h1, lh = h0[top:top + height], h1[top:top + height], lh[top:top + height, None, None]
    w0, w1, lw = w0[left:left + width], w1[left:left + width], lw[None, left:left + width, None]
    one = np.float32(1)
    rows0 = (one - lw) * x[h0][:, w0] + lw * x[h0][:, w1]
    rows1 = (one - lw) * x[h1][:, w0] + lw * x[h1][:, w1]
    out = (one - lh) * rows0 + lh * rows1
    return out.transpose(2, 0, 1)[None, :, None].astype(np.float32)


def normalize_images(pixels: np.ndarray) -> np.ndarray:
    """0–255 -> [−1, 1] (``x / 127.5 − 1``)."""
    return (pixels / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


def load_image_and_preprocess(path: str | os.PathLike, height: int, width: int, crf: int = DEFAULT_IMAGE_CRF,
                              dtype: mx.Dtype = mx.float32, threads: int | None = None) -> mx.array:
    """An image file -> conditioning pixels [1, 3, 1, height, width] in [−1, 1]: decode, CRF
    re-compression (``threads``: see :func:`preprocess`), resize to cover + centre crop, normalise."""
    image = preprocess(decode_image(path), crf, threads)
    return mx.array(normalize_images(resize_and_center_crop(image, height, width))).astype(dtype)


class ImageConditioningInput(NamedTuple):
    """An image to condition on: pixel frame ``frame_idx``, ``strength`` in [0, 1], and the CRF
    it is re-compressed at (None: the model's, ``ModelKind.image_crf``; 0: none)."""

    path: str
    frame_idx: int
    strength: float
    crf: int | None = None


def _encoded_images(images: list[ImageConditioningInput], height: int, width: int, video_encoder, dtype: mx.Dtype,
                    crf_threads: int | None, default_crf: int):
    """Each image through the CRF round trip and the video encoder, as a one-frame latent."""
    for img in images:
        crf = default_crf if img.crf is None else img.crf
        latent = video_encoder(load_image_and_preprocess(img.path, height, width, crf, video_encoder.dtype,
                                                         crf_threads))
        yield img, latent.astype(dtype)


def combined_image_conditionings(images: list[ImageConditioningInput], height: int, width: int, video_encoder,
                                 dtype: mx.Dtype = mx.float32, crf_threads: int | None = None,
                                 default_crf: int = DEFAULT_IMAGE_CRF) -> list:
    """Each image encoded as a one-frame video: frame 0 replaces the first latent frame, any
    other frame becomes appended guiding tokens at that pixel frame. ``crf_threads``: the H.264
    round trip's thread count (None: the reference's on this machine); ``default_crf``: the CRF of
    images that set none (the model's: ``ImageConditioner.default_image_crf``, read from the
    video-VAE file's version, 18 from LTX-2.4 on)."""
    return [VideoConditionByLatentIndex(latent, img.strength, latent_idx=0) if img.frame_idx == 0
            else VideoConditionByKeyframeIndex(latent, img.frame_idx, img.strength)
            for img, latent in _encoded_images(images, height, width, video_encoder, dtype, crf_threads, default_crf)]


def image_conditionings_by_adding_guiding_latent(images: list[ImageConditioningInput], height: int, width: int,
                                                 video_encoder, dtype: mx.Dtype = mx.float32,
                                                 crf_threads: int | None = None,
                                                 default_crf: int = DEFAULT_IMAGE_CRF) -> list:
    """Every image, frame 0 included, appended as guiding tokens at its pixel frame (keyframe
    interpolation: the keyframes guide, none replaces a latent)."""
    return [VideoConditionByKeyframeIndex(latent, img.frame_idx, img.strength)
            for img, latent in _encoded_images(images, height, width, video_encoder, dtype, crf_threads, default_crf)]


# how a pipeline turns its images into conditioning items (PipelineSpec.image_conditioning)
IMAGE_CONDITIONINGS = {"replace-first": combined_image_conditionings,
                       "guiding": image_conditionings_by_adding_guiding_latent}


class TemporalRegionMask:
    """``TemporalRegionMask``: denoise mask 1 on the tokens whose time span meets
    [``start_time``, ``end_time``) seconds, 0 elsewhere (retake's window; the rest stays at the
    clean latent). Video spans are the tokens' pixel-frame bounds (causal: latent frame k covers
    pixel frames [8k − 7, 8k + 1)) over ``fps``, audio spans the patchifier's bounds in seconds;
    both float32, compared in float32 as the reference's tensors are. The mask is rewritten over
    the target grid, so apply it before any item that appends tokens."""

    def __init__(self, start_time: float, end_time: float, fps: float):
        self.start_time = start_time
        self.end_time = end_time
        self.fps = fps

    def apply_to(self, state: LatentState, tools) -> LatentState:
        if isinstance(tools, VideoLatentTools):
            pixels = get_pixel_coords(get_patch_grid_bounds(tools.target_shape), tools.scale_factors, tools.causal_fix)
            bounds = pixels[:, 0].astype(np.float32) / np.float32(self.fps)  # [B, N, 2]
        else:  # AudioLatentTools: the positions are the grid bounds in seconds
            bounds = np.array(tools.positions()[:, 0], dtype=np.float32)
        if bounds.shape[1] != state.denoise_mask.shape[1]:
            raise ConditioningError(f"TemporalRegionMask covers the {bounds.shape[1]} tokens of the target grid; the "
                                    f"state has {state.denoise_mask.shape[1]} (apply it before appending tokens)")
        inside = (bounds[..., 1] > np.float32(self.start_time)) & (bounds[..., 0] < np.float32(self.end_time))
        mask = mx.array(inside[..., None]).astype(state.denoise_mask.dtype)
        return replace(state, denoise_mask=mask)


class VideoConditionByReferenceLatent:
    """IC-LoRA's control video (``VideoConditionByReferenceLatent``): ``latent`` [B, C, F', H', W']
    appended as clean guiding tokens (mask ``1 − strength``). Its positions are its own grid's, with
    the causal fix always (it is a whole clip from frame 0), time at the reference's own rate
    (fps / ``temporal_scale_factor``, its end aligned with the target's), rows and columns ×
    ``downscale_factor``: a reference encoded at half size lands on the target's pixel grid, as the
    IC-LoRA saw it in training."""

    def __init__(self, latent: mx.array, downscale_factor: int = 1, temporal_scale_factor: int = 1,
                 strength: float = 1.0):
        self.latent = latent
        self.downscale_factor = downscale_factor
        self.temporal_scale_factor = temporal_scale_factor
        self.strength = strength

    def apply_to(self, state: LatentState, tools: VideoLatentTools) -> LatentState:
        if self.latent.shape[1] != tools.target_shape.channels:
            raise ConditioningError(f"reference latent has {self.latent.shape[1]} channels, the video latent "
                                    f"{tools.target_shape.channels}")
        tokens = patchify_video(self.latent)
        pos = get_pixel_coords(get_patch_grid_bounds(VideoLatentShape(*self.latent.shape)), tools.scale_factors,
                               tools.causal_fix).astype(np.float32)
        # one float32 division by the (float32-cast) reference rate, as the reference's in-place /=
        pos[:, 0] = pos[:, 0] / np.float32(tools.fps / self.temporal_scale_factor)
        if self.temporal_scale_factor != 1:
            # shift so the reference's last patch ends with the target's; the causal patch clamped at 0
            t_target = np.array(state.positions[:, 0, 0:1, 1:2].astype(mx.float32))  # = 1 / target fps
            pos[:, 0] = np.maximum(pos[:, 0] - np.float32(self.temporal_scale_factor - 1) * t_target, 0)
        if self.downscale_factor != 1:
            pos[:, 1:] *= np.float32(self.downscale_factor)
        # (never marked as keyframes, though its first latent frame spans one pixel frame)
        return append_guiding_tokens(state, tools, tokens, mx.array(pos), self.strength, self.latent.dtype)
