"""Whole-pipeline goldens for the five pipelines of issue 14 (FORMAT.md §7): the reference's own classes
``KeyframeInterpolationPipeline``, ``ICLoraPipeline``, ``A2VidPipelineTwoStage``, ``RetakePipeline`` and
``T2AOneStagePipeline`` called end to end on the tiny checkpoint, with real input files: PNG keyframes, an
mp4 control video, a wav file, an mp4 with an audio stream.

The same rules as e2e_goldens.py (FORMAT.md §6): nothing inside the pipelines is replaced, every random
draw is recorded in the order consumed (``DrawRecorder``), and what must change to run released-model code
on CPU with tiny weights in float32 is patched from outside for the duration of the calls only — the §6
list, plus:

* ``ltx_core.model.audio_vae.ops.torchaudio`` (and ``sys.modules["torchaudio"]``) is the real torchaudio
  2.11.1 for the a2vid and retake calls (the audio encode's MelSpectrogram and resample): make_ref.py
  installs an inert stub because the reference venv has no torchaudio; the real one is loaded from its own
  folder (``MLX_LTX_REFERENCE_EXTRA``, default ``<repo>/.venv-reference-extra``: ``pip install --no-deps
  --target`` with its compiled ``.so`` files removed; both transforms are plain torch).

Besides, functions are *wrapped* (called unchanged, their results recorded): ``DiffusionStage.__call__``,
the stage's ``_build_state`` (the noised initial state of each modality: latent, denoise mask, clean latent,
positions, attention mask, frozen flag), the prompt encoder, the upsampler, the decoders, the image CRF
round trip, the video / audio file decoders and preprocessors, the mel transform and the audio encoder.

Called by make_ref.py after golden_e2e (it needs the tokenizer beside tiny-gemma3 and the e2e PNGs, which
it rewrites identically when absent); ``--no-more-pipelines`` skips it. Own generators for the inputs
(``seed + 51`` … ``seed + 55``; the IC-LoRA mask video needs none): every other golden stays byte-identical.
The IC-LoRA runs twice: with a scalar attention strength (golden_ic_lora) and with an attention-mask video
as the reference's ``--conditioning-attention-mask`` (golden_ic_lora_mask, plus the mask downsampling alone).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import wave

import numpy as np
import torch

from e2e_goldens import (
    CPU,
    F32,
    NEGATIVE_PROMPT,
    PROMPT,
    DrawRecorder,
    _lora_probe,
    _params_json,
    _patch,
    _record_calls,
    _TorchF32,
    conditioning_images,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCHAUDIO_DIR = os.environ.get("MLX_LTX_REFERENCE_EXTRA", os.path.join(REPO, ".venv-reference-extra"))
TORCHAUDIO_VERSION = "2.11.1"

E2E_IMAGES = ("e2e-first.png", "e2e-last.png")  # their CRF round trips are stored in golden_e2e
STEPS = 3  # dev stage-1 steps (keyframe interpolation, a2vid) and t2a steps
T2A_PROMPT = "Rain on a tin roof, distant thunder rolling over the hills"
RETAKE_PROMPT = "The fox stops and looks straight at the camera"
IC_PROMPT = "A fox made of glowing lines walks along the edge of a cliff"


# ----------------------------------------------------------------------------- inputs
def _u16(frames: torch.Tensor) -> torch.Tensor:
    return torch.round(frames.clamp(0, 1) * 65535).to(torch.int32).to(torch.uint16)


def _write_png(path: str, img: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(img).save(path, optimize=False, compress_level=6)


def _video_frames(seed: int, n: int, h: int, w: int, kind: str) -> list[np.ndarray]:
    """Deterministic RGB uint8 frames: ``control`` = a moving soft disc on a depth-like ramp (grey, like a
    depth map), ``scene`` = drifting coloured waves with grain."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    f = g.uniform(0.03, 0.09, size=(3, 2))
    ph = g.uniform(0, 2 * np.pi, size=3)
    for t in range(n):
        if kind == "control":
            cx, cy = w * (0.25 + 0.5 * t / max(n - 1, 1)), h * (0.5 + 0.2 * math.sin(t / 2))
            disc = np.exp(-(((x - cx) / (0.18 * w)) ** 2 + ((y - cy) / (0.25 * h)) ** 2))
            v = 40 + 120 * y / h + 90 * disc
            img = np.repeat(v[..., None], 3, axis=-1)
        else:
            img = np.stack([127.5 + 100 * np.sin(f[c, 0] * x + f[c, 1] * y + ph[c] + 0.35 * t) for c in range(3)], -1)
            img = img + g.normal(0, 8, size=(h, w, 3))
        out.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return out


def _mask_frames(n: int, h: int, w: int) -> list[np.ndarray]:
    """A grey attention-mask video (no randomness): a diagonal ramp, dark left to bright right, that dims
    over time, so both the spatial area average and the temporal mean of the downsampling matter."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    for t in range(n):
        v = 20 + 215 * (0.7 * x / (w - 1) + 0.3 * y / (h - 1)) * (1 - 0.5 * t / max(n - 1, 1))
        out.append(np.repeat(np.clip(np.round(v), 0, 255).astype(np.uint8)[..., None], 3, axis=-1))
    return out


def _tone(seed: int, sr: int, n: int, freqs: tuple[float, float], amps: tuple[float, float]) -> np.ndarray:
    """[2, n] float64 stereo: a sine per channel plus Gaussian noise (sigma 0.02)."""
    g = np.random.default_rng(seed)
    t = np.arange(n) / sr
    sig = np.stack([a * np.sin(2 * np.pi * f * t) for f, a in zip(freqs, amps)])
    return np.clip(sig + g.normal(0, 0.02, size=sig.shape), -1, 1)


def _write_wav(path: str, sig: np.ndarray, sr: int) -> None:
    pcm = np.round(sig.T * 32767).astype("<i2")  # interleaved
    with wave.open(path, "wb") as f:
        f.setnchannels(sig.shape[0])
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes(pcm.tobytes())


def _write_mp4(path: str, frames: list[np.ndarray], fps: int, audio: np.ndarray | None = None,
               sr: int = 48000) -> None:
    """libx264 (crf 18, preset veryfast, yuv420p, 1 thread, no lookahead), optionally AAC stereo (FFmpeg's native encoder,
    128 kb/s, 1 thread): deterministic for a given PyAV/FFmpeg build."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(path, "w", format="mp4") as c:
        # rc-lookahead=0: with the lookahead (mbtree) on, libx264 gives different bytes from run to run here,
        # even with one thread
        vs = c.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast",
                                                         "x264-params": "threads=1:rc-lookahead=0:sync-lookahead=0"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.thread_count = 1
        as_ = None
        if audio is not None:
            as_ = c.add_stream("aac", rate=sr, layout="stereo")
            as_.bit_rate = 128000
            as_.codec_context.thread_count = 1
        for i, fr in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(fr, format="rgb24").reformat(format="yuv420p")
            vf.pts = i
            c.mux(vs.encode(vf))
        c.mux(vs.encode())
        if as_ is not None:
            pcm = np.ascontiguousarray(audio.astype(np.float32))  # planar float [2, n]
            step = 1024
            for i in range(0, pcm.shape[1], step):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, i:i + step]), format="fltp", layout="stereo")
                af.sample_rate = sr
                af.pts = i
                c.mux(as_.encode(af))
            c.mux(as_.encode())


def make_inputs(out_dir: str, seed: int, *, prefix: str, ckpt_path: str, num_layers: int) -> dict:
    """Writes the input files beside the goldens; returns their names and parameters."""
    first, last = conditioning_images(seed)
    names = {"first": "e2e-first.png", "last": "e2e-last.png", "mid": "ki-mid.png"}
    for key, img in (("first", first), ("last", last)):  # e2e_golden wrote them; the same bytes if not
        p = os.path.join(out_dir, names[key])
        if not os.path.exists(p):
            _write_png(p, img)
    _write_png(os.path.join(out_dir, names["mid"]), conditioning_images(seed + 20)[0])  # rng seed + 51

    ctl = {"file": "ic-control.mp4", "frames": 12, "height": 72, "width": 128, "fps": 24}
    _write_mp4(os.path.join(out_dir, ctl["file"]),
               _video_frames(seed + 52, ctl["frames"], ctl["height"], ctl["width"], "control"), ctl["fps"])

    wav = {"file": "a2vid-input.wav", "sample_rate": 44100, "seconds": 0.5, "tone_hz": [440.0, 660.0],
           "tone_amplitude": [0.5, 0.4], "noise_sigma": 0.02, "format": "pcm_s16le stereo"}
    n = round(wav["sample_rate"] * wav["seconds"])
    _write_wav(os.path.join(out_dir, wav["file"]),
               _tone(seed + 53, wav["sample_rate"], n, tuple(wav["tone_hz"]), tuple(wav["tone_amplitude"])),
               wav["sample_rate"])

    rt = {"file": "retake-input.mp4", "frames": 17, "height": 64, "width": 96, "fps": 24, "audio_sample_rate": 48000,
          "tone_hz": [330.0, 495.0], "tone_amplitude": [0.4, 0.3], "noise_sigma": 0.02}
    na = round(rt["audio_sample_rate"] * rt["frames"] / rt["fps"])
    _write_mp4(os.path.join(out_dir, rt["file"]), _video_frames(seed + 54, rt["frames"], rt["height"], rt["width"], "scene"),
               rt["fps"], _tone(seed + 55, rt["audio_sample_rate"], na, tuple(rt["tone_hz"]), tuple(rt["tone_amplitude"])),
               rt["audio_sample_rate"])

    mask = {"file": "ic-mask.mp4", "frames": 12, "height": 72, "width": 128, "fps": 24}
    _write_mp4(os.path.join(out_dir, mask["file"]), _mask_frames(mask["frames"], mask["height"], mask["width"]),
               mask["fps"])

    ic = {"file": f"{prefix}-ic-lora.safetensors", "rank": 4, "reference_downscale_factor": 2}
    make_ic_lora(os.path.join(out_dir, ic["file"]), ckpt_path, seed, ic["rank"], ic["reference_downscale_factor"],
                 num_layers)
    return {"images": names, "control_video": ctl, "audio": wav, "retake_video": rt, "ic_lora": ic,
            "mask_video": mask}


def make_ic_lora(path: str, ckpt_path: str, seed: int, rank: int, factor: int, num_layers: int) -> None:
    """A random IC-LoRA in the official trainer's layout: ``diffusion_model.<module>.lora_{A,B}.weight`` (PEFT
    names with the ComfyUI prefix the trainer adds), bf16, metadata ``reference_downscale_factor`` as the
    video-to-video strategy writes it (``str(int)``). Video self-attention q/k/v/out and the FF input of every
    block. Own generator (seed + 43)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    gl = torch.Generator().manual_seed(seed + 43)
    targets = [f"transformer_blocks.{b}.{m}" for b in range(num_layers)
               for m in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj")]
    sd = {}
    with safe_open(ckpt_path, "pt") as f:
        for n in targets:
            out_f, in_f = f.get_slice(f"model.diffusion_model.{n}.weight").get_shape()
            sd[f"diffusion_model.{n}.lora_A.weight"] = torch.randn(rank, in_f, generator=gl) / math.sqrt(in_f)
            sd[f"diffusion_model.{n}.lora_B.weight"] = torch.randn(out_f, rank, generator=gl) * 0.15
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}, path,  # one metadata key: a stable header
              metadata={"reference_downscale_factor": str(factor)})


# ----------------------------------------------------------------------------- torchaudio
def _load_torchaudio():
    """The real torchaudio (2.11.1 from TORCHAUDIO_DIR), imported under its own name; make_ref.py's stub is
    put back in sys.modules afterwards (the calls swap the real one in for their duration)."""
    cur = sys.modules.get("torchaudio")
    if cur is not None and getattr(cur, "__file__", None):
        return cur  # a real torchaudio is installed in the venv itself
    if not os.path.isdir(os.path.join(TORCHAUDIO_DIR, "torchaudio")):
        raise RuntimeError(f"no torchaudio in {TORCHAUDIO_DIR}: .venv-reference/bin/pip install --no-deps --target "
                           f"{TORCHAUDIO_DIR} torchaudio=={TORCHAUDIO_VERSION} && rm {TORCHAUDIO_DIR}/torchaudio/lib/*.so")
    stub = sys.modules.pop("torchaudio", None)
    sys.path.insert(0, TORCHAUDIO_DIR)
    try:
        import torchaudio as ta  # noqa: PLC0415
    finally:
        sys.path.remove(TORCHAUDIO_DIR)
        if stub is not None:
            sys.modules["torchaudio"] = stub
    assert ta.__version__.split("+")[0] == TORCHAUDIO_VERSION, ta.__version__
    return ta


# ----------------------------------------------------------------------------- the run
def _probe(x0) -> torch.Tensor:  # noqa: ANN001
    """e2e's probe (block 0's video attn1.to_q); the audio-only model (t2a) has none: its audio_attn1.to_q."""
    blk = getattr(x0, "velocity_model", x0).transformer_blocks[0]
    return _lora_probe(x0) if hasattr(blk, "attn1") else blk.audio_attn1.to_q.weight.detach().float().clone()


class _Log:
    def __init__(self):
        self.stage: list[tuple[dict, tuple]] = []
        self.init: list[list[tuple[str, object, object]]] = []  # per stage: (modality, spec, state)
        self.ctx: list = []
        self.up: list = []
        self.vdec: list = []
        self.adec: list = []
        self.built: list = []
        self.crf: list = []
        self.images: dict[str, np.ndarray] = {}  # image path -> CRF round trip output
        self.media: dict[str, list] = {}

    def add(self, key: str, value) -> None:  # noqa: ANN001
        self.media.setdefault(key, []).append(value)


@contextlib.contextmanager
def _patched(mods, log: _Log, rec: DrawRecorder, *, latent_c: int, a_kw: dict, torchaudio_mod=None):  # noqa: ANN001
    from ltx_core.model.audio_vae import ops as m_ops
    from ltx_core.text_encoders.gemma import gemma_assets
    from ltx_core.types import AudioLatentShape, VideoLatentShape
    from ltx_pipelines import iclora_utils as m_ic
    from ltx_pipelines.utils import blocks
    from ltx_pipelines.utils import helpers as m_helpers
    from ltx_pipelines.utils.media_io import decode as m_decode

    with contextlib.ExitStack() as st:
        for mod in mods:
            _patch(st, mod, "torch", _TorchF32("torch"))
        v_from = VideoLatentShape.from_pixel_shape
        a_from = AudioLatentShape.from_video_pixel_shape
        _patch(st, VideoLatentShape, "from_pixel_shape", staticmethod(
            lambda shape, latent_channels=latent_c, **k: v_from(shape, latent_channels, **k)))
        _patch(st, AudioLatentShape, "from_video_pixel_shape", staticmethod(
            lambda shape, **k: a_from(shape, **{**a_kw, **k})))
        _patch(st, gemma_assets, "_REQUIRED_ASSET_FILENAMES", ("tokenizer_config.json",))
        _patch(st, blocks, "get_gemma_ops", lambda path, real=blocks.get_gemma_ops: (
            real(path)[0], tuple(op for op in real(path)[1] if op.name != "ProcessorLoad")))
        build_tr = blocks.DiffusionStage._build_transformer
        _patch(st, blocks.DiffusionStage, "_build_transformer",
               lambda self, real=build_tr, **k: real(self, **{"dtype": self._dtype, **k}))
        if torchaudio_mod is not None:
            _patch(st, m_ops, "torchaudio", torchaudio_mod)
            stub = sys.modules.get("torchaudio")
            sys.modules["torchaudio"] = torchaudio_mod
            st.callback(sys.modules.__setitem__, "torchaudio", stub)

        # ---- recorders (the wrapped functions run unchanged)
        stage_call = blocks.DiffusionStage.__call__

        @functools.wraps(stage_call)
        def stage_wrapper(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            log.init.append([])
            r = stage_call(self, *a, **k)
            log.stage.append((k, r))
            return r

        _patch(st, blocks.DiffusionStage, "__call__", stage_wrapper)
        build_state = blocks._build_state

        def build_state_wrapper(spec, tools, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            s = build_state(spec, tools, *a, **k)
            log.init[-1].append(("video" if type(tools).__name__ == "VideoLatentTools" else "audio", spec, s))
            return s

        _patch(st, blocks, "_build_state", build_state_wrapper)
        _record_calls(st, blocks.DiffusionStage, "_build_transformer", lambda a, k, r: log.built.append(_probe(r)))
        _record_calls(st, blocks.PromptEncoder, "__call__", lambda a, k, r: log.ctx.extend(r))
        _record_calls(st, blocks.ImageConditioner, "resolve_crf", lambda a, k, r: log.crf.extend(i.crf for i in r))
        _record_calls(st, blocks.VideoUpsampler, "__call__", lambda a, k, r: log.up.append(r))
        _record_calls(st, blocks.VideoDecoder, "__call__", lambda a, k, r: log.vdec.append(a[1]))
        _record_calls(st, blocks.AudioDecoder, "__call__", lambda a, k, r: log.adec.append(a[1]))

        # image CRF round trip, per image file (helpers.load_image_and_preprocess -> decode.preprocess)
        pre: list[np.ndarray] = []
        _record_calls(st, m_decode, "preprocess", lambda a, k, r: pre.append(np.array(r)))
        load_img = m_helpers.load_image_and_preprocess

        def load_img_wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
            r = load_img(*a, **k)
            p = k["image_path"]
            if p in log.images:
                assert np.array_equal(log.images[p], pre[-1]), f"{p}: CRF round trip differs between calls"
            log.images[p] = pre[-1]
            return r

        _patch(st, m_helpers, "load_image_and_preprocess", load_img_wrapper)

        # video files: the decoded frames (uint8) and the preprocessed pixels
        def frames_recorder(owner, name, key):  # noqa: ANN001, ANN202
            real = getattr(owner, name)

            def gen(*a, **k):  # noqa: ANN002, ANN003, ANN202
                fr = []
                for f in real(*a, **k):
                    fr.append(f.clone())
                    yield f
                log.add(key, torch.cat(fr, 0))

            _patch(st, owner, name, gen)

        frames_recorder(m_ic, "decode_video_by_frame", "control.frames_u8")
        frames_recorder(m_helpers, "decode_video_from_file", "video.frames_u8")
        _record_calls(st, m_ic, "video_preprocess", lambda a, k, r: log.add("control.pixels", r))
        _record_calls(st, m_ic, "downsample_mask_video_to_latent", lambda a, k, r: log.add("mask.latent", r))
        for owner in mods:  # retake binds helpers.video_latent_from_file in its own namespace
            if hasattr(owner, "video_latent_from_file"):
                _record_calls(st, owner, "video_latent_from_file", lambda a, k, r: log.add("video.latent", r))
        # audio files: the decoded waveform, the resampled waveform, the log-mel, the encoder output
        _record_calls(st, m_decode, "decode_audio_from_file", lambda a, k, r: log.add("audio.decoded", r))
        for owner in mods:
            if hasattr(owner, "decode_audio_from_file"):
                _record_calls(st, owner, "decode_audio_from_file", lambda a, k, r: log.add("audio.decoded", r))
        _record_calls(st, m_helpers, "decode_audio_from_file", lambda a, k, r: log.add("audio.decoded", r))
        _record_calls(st, m_ops.AudioProcessor, "resample_audio", lambda a, k, r: log.add("audio.resampled", r))
        _record_calls(st, m_ops.AudioProcessor, "waveform_to_mel", lambda a, k, r: log.add("audio.mel", r))
        for owner, name in ((m_helpers, "encode_audio"), *((m, "vae_encode_audio") for m in mods
                                                            if hasattr(m, "vae_encode_audio"))):
            _record_calls(st, owner, name, lambda a, k, r: log.add("audio.latent", r))
        with torch.inference_mode(), rec.recording():
            yield


def _store_run(out: dict, p: str, log: _Log, rec: DrawRecorder, frames: torch.Tensor | None, audio,  # noqa: ANN001
               images: list[str] | None = None) -> list[str]:
    """The golden_e2e keys (prefix ``p``) plus each stage's initial states and inputs; returns the draw sites."""
    for j, ((kwargs, (vstate, astate)), inits) in enumerate(zip(log.stage, log.init)):
        s = f"{p}stage{j}."
        out[s + "sigmas"] = kwargs["sigmas"].float()
        if vstate is not None:
            out[s + "video.latent"] = vstate.latent
        if astate is not None:
            out[s + "audio.latent"] = astate.latent
        for mod in ("video", "audio"):
            spec = kwargs.get(mod)
            if spec is None:
                continue
            if spec.initial_latent is not None:
                out[s + f"{mod}.initial_latent"] = spec.initial_latent
            out[s + f"{mod}.noise_scale"] = torch.tensor([float(spec.noise_scale)], dtype=F32)
            for i, item in enumerate(spec.conditionings):
                inner = getattr(item, "conditioning", item)  # ConditioningItemAttentionStrengthWrapper
                lat = getattr(inner, "latent", getattr(inner, "keyframes", None))
                if lat is not None:
                    out[s + (f"cond{i}.latent" if mod == "video" else f"audio.cond{i}.latent")] = lat
        for mod, spec, st in inits:
            q = s + f"{mod}.init."
            out[q + "latent"] = st.latent
            out[q + "denoise_mask"] = st.denoise_mask
            out[q + "clean_latent"] = st.clean_latent
            out[q + "positions"] = st.positions.float()
            out[q + "frozen"] = torch.tensor([int(st.frozen)], dtype=torch.int64)
            if st.attention_mask is not None:
                out[q + "attention_mask"] = st.attention_mask.float()
    for i, ctx in enumerate(log.ctx):
        if ctx.video_encoding is not None:
            out[p + f"ctx{i}.video"] = ctx.video_encoding
        if ctx.audio_encoding is not None:
            out[p + f"ctx{i}.audio"] = ctx.audio_encoding
    if log.up:
        out[p + "upscaled.video.latent"] = log.up[0]
    if log.vdec:
        out[p + "decode.video.latent"] = log.vdec[0]
    if log.adec:
        out[p + "decode.audio.latent"] = log.adec[0]
    if frames is not None:
        out[p + "out.frames_u16"] = _u16(frames)
    out[p + "out.waveform"] = audio.waveform.float()
    out[p + "out.sample_rate"] = torch.tensor([int(audio.sampling_rate)], dtype=torch.int64)
    for k, path in enumerate(images or []):  # e2e-first/e2e-last: golden_e2e's crf.img{0,1}.out.preprocess_u8
        if os.path.basename(path) not in E2E_IMAGES:
            out[f"in.image{k}.preprocess_u8"] = torch.from_numpy(log.images[path].copy())
    sites = []
    for k, (site, tensor) in enumerate(rec.draws):
        out[p + f"draw{k}.{site}"] = tensor
        sites.append(site)
    return sites


def _store_audio_inputs(out: dict, log: _Log) -> None:
    """in.audio.*: what the file decoder returned, the resampled waveform, the log-mel and the encoder output."""
    (dec,) = {id(a): a for a in log.media["audio.decoded"]}.values()  # one decode, maybe seen by two wrappers
    out["in.audio.waveform"] = dec.waveform.float()
    out["in.audio.sample_rate"] = torch.tensor([int(dec.sampling_rate)], dtype=torch.int64)
    (rs,) = log.media["audio.resampled"]
    out["in.audio.waveform_resampled"] = rs.waveform.float()
    out["in.audio.resampled_rate"] = torch.tensor([int(rs.sampling_rate)], dtype=torch.int64)
    (mel,) = log.media["audio.mel"]
    out["in.audio.mel"] = mel
    (lat,) = log.media["audio.latent"]
    out["in.audio.latent"] = lat


def more_pipeline_goldens(*, out_dir: str, prefix: str, ckpt_path: str, upsampler_path: str, lora_path: str,  # noqa: PLR0915
                          gemma_dir: str, V: dict, seed: int, latent_c: int, audio_z: int, audio_mel_lat: int,
                          report: list[str]) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Returns ``{golden name: tensors}`` and ``{manifest section: request}`` for the five pipelines."""
    import time

    import ltx_pipelines.a2vid_two_stage as m_a2vid
    import ltx_pipelines.ic_lora as m_ic
    import ltx_pipelines.keyframe_interpolation as m_ki
    import ltx_pipelines.retake as m_retake
    import ltx_pipelines.t2a_one_stage as m_t2a
    from ltx_core.components.guiders import MultiModalGuiderParams
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps
    from ltx_core.types import AudioLatentShape, VideoPixelShape
    from ltx_pipelines.utils.args import ImageConditioningInput
    from ltx_pipelines.utils.constants import detect_params
    from ltx_pipelines.utils.model_paths import ModelPaths

    num_layers = V["metadata"]["config"]["transformer"]["num_layers"]
    acfg = V["metadata"]["config"]["audio_vae"]
    a_kw = {"channels": audio_z, "mel_bins": audio_mel_lat, "sample_rate": acfg["model"]["params"]["sampling_rate"],
            "hop_length": acfg["preprocessing"]["stft"]["hop_length"],
            "audio_latent_downsample_factor": 2 ** (len(acfg["model"]["params"]["ddconfig"]["ch_mult"]) - 1)}
    paths = ModelPaths.from_monolith(ckpt_path, gemma_dir)
    mods = (m_ki, m_ic, m_a2vid, m_retake, m_t2a)
    inputs = make_inputs(out_dir, seed, prefix=prefix, ckpt_path=ckpt_path, num_layers=num_layers)
    fpath = functools.partial(os.path.join, out_dir)
    img = inputs["images"]
    fps = float(V["fps"])
    crf = detect_params(paths.video_vae()).default_image_crf

    def clamp(p: MultiModalGuiderParams) -> MultiModalGuiderParams:  # a tiny model has no block 28
        from dataclasses import replace
        return replace(p, stg_blocks=[min(b, num_layers - 1) for b in (p.stg_blocks or [])])

    detected = detect_params(paths.transformer())
    vg, ag = clamp(detected.video_guider_params), clamp(detected.audio_guider_params)
    distilled_lora = [LoraPathStrengthAndSDOps(lora_path, 1.0, LTXV_LORA_COMFY_RENAMING_MAP)]
    gold: dict[str, dict[str, torch.Tensor]] = {}
    meta: dict[str, dict] = {}
    ta = None

    def run(name: str, build, call, *, torchaudio_mod=None):  # noqa: ANN001, ANN202
        log, rec = _Log(), DrawRecorder()
        t0 = time.time()
        with _patched(mods, log, rec, latent_c=latent_c, a_kw=a_kw, torchaudio_mod=torchaudio_mod):
            pipe = build()
            result = call(pipe)
            video_iter = result[0] if isinstance(result, tuple) else None
            frames = torch.cat([c.float() for c in video_iter], 0) if video_iter is not None else None
        if log.crf:
            assert set(log.crf) == {crf}, f"{name}: ImageConditioner used CRF {log.crf}, not {crf}"
        return log, rec, result, frames, time.time() - t0

    def line(name, log, rec, frames, audio, dt, extra=""):  # noqa: ANN001, ANN202
        report.append(f"more.{name}: {len(log.stage)} stage(s), draws {','.join(s for s, _ in rec.draws)}, frames "
                      f"{None if frames is None else tuple(frames.shape)}, waveform {tuple(audio.waveform.shape)} @ "
                      f"{audio.sampling_rate} Hz, {dt:.1f}s{extra}")

    # ------------------------------------------------------------------ keyframe interpolation
    ki = {"prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "seed": seed, "num_frames": 9, "height": 128,
          "width": 192, "fps": fps, "steps": STEPS,
          "images": [[img["first"], 0, 1.0], [img["mid"], 4, 0.6], [img["last"], 8, 0.85]],
          "distilled_lora": os.path.basename(lora_path), "distilled_lora_strength": 1.0,
          "guiders": {"video": _params_json(vg), "audio": _params_json(ag)}}
    images = [ImageConditioningInput(fpath(f), i, s) for f, i, s in ki["images"]]
    log, rec, res, frames, dt = run("keyframe_interpolation", lambda: m_ki.KeyframeInterpolationPipeline(
        paths, distilled_lora, upsampler_path, [], device=CPU), lambda p: p(
        prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, seed=seed, height=ki["height"], width=ki["width"],
        num_frames=ki["num_frames"], frame_rate=fps, num_inference_steps=STEPS, video_guider_params=vg,
        audio_guider_params=ag, images=images))
    out: dict[str, torch.Tensor] = {}
    _store_run(out, "", log, rec, frames, res[1], [i.path for i in images])
    assert len(log.built) == 2 and not torch.equal(*log.built), "keyframe interpolation: distilled LoRA not fused"
    gold["keyframe_interpolation"], meta["keyframe_interpolation"] = out, ki
    line("keyframe_interpolation", log, rec, frames, res[1], dt)

    # ------------------------------------------------------------------ text to audio (2.3: explicit duration)
    t2a = {"prompt": T2A_PROMPT, "negative_prompt": NEGATIVE_PROMPT, "seed": seed, "num_frames": 25, "fps": fps,
           "steps": STEPS, "guiders": {"audio": _params_json(MultiModalGuiderParams(
               cfg_scale=ag.cfg_scale, stg_scale=ag.stg_scale, rescale_scale=ag.rescale_scale, modality_scale=1.0,
               skip_step=ag.skip_step, stg_blocks=ag.stg_blocks))}}
    t2a_g = MultiModalGuiderParams(**{k: v for k, v in t2a["guiders"]["audio"].items()})
    refused = None

    def t2a_call(p):  # noqa: ANN001, ANN202
        nonlocal refused
        try:  # the default (AutoDuration) on a checkpoint without a DurationHead
            p(prompt=T2A_PROMPT, negative_prompt=NEGATIVE_PROMPT, seed=seed, frame_rate=fps,
              num_inference_steps=STEPS, audio_guider_params=t2a_g)
        except ValueError as e:
            refused = str(e)
        assert p.duration_predictor is None and refused, "t2a: 2.3 has no DurationHead; AutoDuration must be refused"
        return p(prompt=T2A_PROMPT, negative_prompt=NEGATIVE_PROMPT, seed=seed, frame_rate=fps,
                 num_inference_steps=STEPS, audio_guider_params=t2a_g, num_frames=t2a["num_frames"])

    log, rec, res, _, dt = run("t2a", lambda: m_t2a.T2AOneStagePipeline(paths, [], device=CPU), t2a_call)
    out = {}
    _store_run(out, "", log, rec, None, res)
    t2a["auto_duration_refused"] = refused
    gold["t2a"], meta["t2a"] = out, t2a
    line("t2a", log, rec, None, res, dt, f"; AutoDuration refused: {refused[:60]}...")

    # ------------------------------------------------------------------ audio to video
    ta = _load_torchaudio()
    a2v = {"prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "seed": seed, "num_frames": 9, "height": 128,
           "width": 128, "fps": fps, "steps": STEPS, "images": [[img["first"], 0, 0.9]],
           "audio_path": inputs["audio"]["file"], "audio_start_time": 0.0, "audio_max_duration": 9 / fps,
           "distilled_lora": os.path.basename(lora_path), "distilled_lora_strength": 1.0,
           "guiders": {"video": _params_json(vg), "audio": _params_json(MultiModalGuiderParams())},
           "torchaudio": ta.__version__}
    images = [ImageConditioningInput(fpath(f), i, s) for f, i, s in a2v["images"]]
    # the audio latent is cropped with AudioLatentShape.from_duration's defaults (channels 8, mel bins 16, 16 kHz,
    # hop 160, x4): the tiny model's rate / hop / downsampling must give the same frame count
    assert AudioLatentShape.from_duration(1, 9 / fps).frames == AudioLatentShape.from_video_pixel_shape(
        VideoPixelShape(1, 9, 64, 64, fps), **a_kw).frames
    log, rec, res, frames, dt = run("a2vid", lambda: m_a2vid.A2VidPipelineTwoStage(
        paths, distilled_lora, upsampler_path, [], device=CPU), lambda p: p(
        prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, seed=seed, height=a2v["height"], width=a2v["width"],
        num_frames=a2v["num_frames"], frame_rate=fps, num_inference_steps=STEPS, video_guider_params=vg,
        images=images, audio_path=fpath(a2v["audio_path"]), audio_start_time=0.0,
        audio_max_duration=a2v["audio_max_duration"]), torchaudio_mod=ta)
    out = {}
    _store_run(out, "", log, rec, frames, res[1], [i.path for i in images])
    _store_audio_inputs(out, log)
    assert torch.equal(out["out.waveform"], out["in.audio.waveform"][0]), "a2vid: output is not the input waveform"
    assert not log.adec, "a2vid decoded its audio latent"
    for j in (0, 1):  # the audio stream is frozen in both stages, never noised, and comes back unchanged
        assert torch.equal(out[f"stage{j}.audio.init.latent"], out[f"stage{j}.audio.init.clean_latent"])
        assert out[f"stage{j}.audio.init.denoise_mask"].abs().max() == 0
    gold["a2vid"], meta["a2vid"] = out, a2v
    line("a2vid", log, rec, frames, res[1], dt, f"; torchaudio {ta.__version__}")

    # ------------------------------------------------------------------ retake (distilled, one stage)
    rt_in = inputs["retake_video"]
    rt = {"prompt": RETAKE_PROMPT, "seed": seed, "video_path": rt_in["file"], "start_time": 0.1, "end_time": 0.3,
          "distilled": True, "torchaudio": ta.__version__,
          "runs": {"regen-video": {"regenerate_video": True, "regenerate_audio": False},
                   "regen-audio": {"regenerate_video": False, "regenerate_audio": True}}}
    out = {}
    for rname, flags in rt["runs"].items():
        log, rec, res, frames, dt = run(f"retake.{rname}", lambda: m_retake.RetakePipeline(paths, [], device=CPU),
                                        lambda p, flags=flags: p(
            video_path=fpath(rt["video_path"]), prompt=RETAKE_PROMPT, start_time=rt["start_time"],
            end_time=rt["end_time"], seed=seed, **flags), torchaudio_mod=ta)
        p = f"{rname}."
        _store_run(out, p, log, rec, frames, res[1])
        ins: dict[str, torch.Tensor] = {}
        _store_audio_inputs(ins, log)
        ins["in.video.frames_u8"] = log.media["video.frames_u8"][0]
        ins["in.video.latent"] = log.media["video.latent"][0]
        for k, v in ins.items():  # the same for both runs
            assert k not in out or torch.equal(out[k], v), k
            out[k] = v
        kept = "audio" if not flags["regenerate_audio"] else "video"
        win = "video" if kept == "audio" else "audio"
        m = out[p + f"stage0.{win}.init.denoise_mask"]
        assert 0 < m.sum() < m.numel(), f"retake {rname}: the window covers no or all {win} tokens"
        assert out[p + f"stage0.{kept}.init.denoise_mask"].abs().max() == 0
        assert not torch.equal(out[p + f"stage0.{kept}.init.latent"], out[p + f"stage0.{kept}.init.clean_latent"]), \
            f"retake {rname}: the kept {kept} was not noised (the reference's noised-then-frozen behaviour)"
        line(f"retake.{rname}", log, rec, frames, res[1], dt,
             f"; {win} window tokens {int(m.sum())}/{m.numel()}, kept {kept} noised then frozen")
    for key in [k for k in out if k.startswith("regen-video.ctx")]:  # the same prompt: stored once
        base = key.removeprefix("regen-video.")
        assert torch.equal(out[key], out.pop("regen-audio." + base)), key
        out[base] = out.pop(key)
    gold["retake"], meta["retake"] = out, rt

    # ------------------------------------------------------------------ IC-LoRA (distilled, two stages)
    ic_in = inputs["ic_lora"]
    # the control latent is (size ÷ 2 for stage 1 ÷ the factor ÷ the VAE's 32): one row at height 128. A
    # reflect-padded encoder (e.g. the `alt` variant) needs two, so its sets use 256 (tiny keeps 128)
    reflect = V["metadata"]["config"]["vae"].get("spatial_padding_mode", "zeros") == "reflect"
    ic = {"prompt": IC_PROMPT, "seed": seed, "num_frames": 9, "height": 256 if reflect else 128, "width": 256,
          "fps": fps,
          "images": [[img["first"], 0, 0.9]], "video_conditioning": [[inputs["control_video"]["file"], 1.0]],
          "lora": ic_in["file"], "lora_strength": 0.9, "reference_downscale_factor": ic_in["reference_downscale_factor"],
          "reference_temporal_scale_factor": 1, "conditioning_attention_strength": 0.8, "skip_stage_2": False}
    images = [ImageConditioningInput(fpath(f), i, s) for f, i, s in ic["images"]]
    ic_loras = [LoraPathStrengthAndSDOps(fpath(ic["lora"]), ic["lora_strength"], LTXV_LORA_COMFY_RENAMING_MAP)]
    holder = {}

    def ic_build():  # noqa: ANN202
        holder["p"] = m_ic.ICLoraPipeline(paths, upsampler_path, ic_loras, device=CPU)
        return holder["p"]

    log, rec, res, frames, dt = run("ic_lora", ic_build, lambda p: p(
        prompt=IC_PROMPT, seed=seed, height=ic["height"], width=ic["width"], num_frames=ic["num_frames"],
        frame_rate=fps, images=images, video_conditioning=[(fpath(f), s) for f, s in ic["video_conditioning"]],
        conditioning_attention_strength=ic["conditioning_attention_strength"]))
    assert holder["p"].reference_downscale_factor == ic["reference_downscale_factor"]
    out = {}
    _store_run(out, "", log, rec, frames, res[1], [i.path for i in images])
    out["in.control.frames_u8"] = log.media["control.frames_u8"][0]
    out["in.control.pixels"] = log.media["control.pixels"][0]
    # stage 2 runs without the IC-LoRA: its weights are the checkpoint's own
    from ltx_core.loader import SingleGPUModelBuilder
    from ltx_core.model.transformer import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator

    base = _lora_probe(SingleGPUModelBuilder(model_class_configurator=LTXModelConfigurator, model_path=ckpt_path,
                                             model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP).build(device=CPU, dtype=F32))
    assert len(log.built) == 2 and not torch.equal(log.built[0], base) and torch.equal(log.built[1], base), \
        "IC-LoRA: stage 1 must carry the IC-LoRA and stage 2 must not"
    assert "stage1.cond1.latent" not in out, "IC-LoRA stage 2 received the reference video"
    gold["ic_lora"], meta["ic_lora"] = out, ic
    line("ic_lora", log, rec, frames, res[1], dt, f"; ref latent {tuple(out['stage0.cond1.latent'].shape)}, "
         f"stage-1 tokens {tuple(out['stage0.video.init.latent'].shape)}")

    # ------------------------------------------------------------------ IC-LoRA with an attention-mask video
    # as the reference's CLI: --conditioning-attention-mask MASK STRENGTH loads the mask at the stage-1 size
    # (ic_lora._load_mask_video: decoded and preprocessed like a control video, channel mean, (x + 1) / 2,
    # clamped) and passes STRENGTH as conditioning_attention_strength
    icm = {**ic, "conditioning_attention_mask": [inputs["mask_video"]["file"], 0.7],
           "conditioning_attention_strength": 0.7}
    stage1_h, stage1_w = icm["height"] // 2, icm["width"] // 2
    masks = []

    def icm_call(p):  # noqa: ANN001, ANN202
        masks.append(m_ic._load_mask_video(mask_path=fpath(icm["conditioning_attention_mask"][0]), height=stage1_h,
                                           width=stage1_w, num_frames=icm["num_frames"]))
        return p(prompt=IC_PROMPT, seed=seed, height=icm["height"], width=icm["width"], num_frames=icm["num_frames"],
                 frame_rate=fps, images=images,
                 video_conditioning=[(fpath(f), s) for f, s in icm["video_conditioning"]],
                 conditioning_attention_strength=icm["conditioning_attention_strength"],
                 conditioning_attention_mask=masks[0])

    log, rec, res, frames, dt = run("ic_lora_mask", ic_build, icm_call)
    out = {}
    _store_run(out, "", log, rec, frames, res[1], [i.path for i in images])
    (mask,) = masks
    assert mask.dtype == F32, mask.dtype  # bf16 -> float32 through ic_lora's torch, like every §7 run
    out["in.mask.pixels"] = mask
    (out["mask.latent"],) = log.media["mask.latent"]  # downsample_mask_video_to_latent in the run, [1, M]
    # the downsampling alone, on the same mask, at other latent grids: non-integer area ratios, a temporal
    # mean of 4, the first frame only (one latent frame; one pixel frame)
    from ltx_core.types import VideoLatentShape
    from ltx_pipelines.iclora_utils import downsample_mask_video_to_latent

    ref_shape = tuple(out["stage0.cond1.latent"].shape)
    cases = [("run", mask, ref_shape[2:]), ("odd", mask, (5, 5, 7)), ("t4", mask, (3, 8, 16)),
             ("first", mask, (1, 3, 3)), ("oneframe", mask[:, :, :1], (2, 4, 4))]
    icm["downsample_cases"] = {}
    for name, src, (f, h, w) in cases:
        with torch.inference_mode():
            r = downsample_mask_video_to_latent(mask=src, target_latent_shape=VideoLatentShape(1, 1, f, h, w))
        out[f"downsample.{name}.out"] = r
        icm["downsample_cases"][name] = {"pixel_frames": int(src.shape[2]), "latent_shape": [f, h, w]}
    assert torch.equal(out["downsample.run.out"], out["mask.latent"])
    am = out["stage0.video.init.attention_mask"]
    n_ref = out["mask.latent"].shape[1]
    assert torch.allclose(am[0, 0, -n_ref:], out["mask.latent"][0] * icm["conditioning_attention_strength"])
    gold["ic_lora_mask"], meta["ic_lora_mask"] = out, icm
    line("ic_lora_mask", log, rec, frames, res[1], dt,
         f"; mask latent {[round(v, 4) for v in out['mask.latent'][0].tolist()]}")

    meta["inputs"] = inputs
    return gold, meta


__all__ = ["make_ic_lora", "make_inputs", "more_pipeline_goldens"]
