"""Goldens for reading input media as the reference does (issue 14): the video and audio decoders of
``ltx_pipelines.utils.media_io`` (PyAV), ``video_preprocess``, ``get_videostream_metadata``, the
``AudioProcessor`` of ``ltx_core.model.audio_vae.ops`` (torchaudio's ``resample`` and
``MelSpectrogram``) and the ``AudioEncoder`` on the mel it makes.

Run with the reference venv: ``.venv-reference/bin/python tests/reference/media_goldens.py [--out DIR]``
(default tests/reference/fixtures/media-s1234). Deterministic: the input files are written here too,
with PyAV's encoders at one thread each (libx264, AAC, libmp3lame) and the stdlib ``wave`` module.

torchaudio: the registry has no build for the venv's torch; torchaudio 2.11.1 sits in its own folder
(``MLX_LTX_REFERENCE_EXTRA``, default ``<repo>/.venv-reference-extra``: ``pip install --no-deps --target``
with its compiled ``.so`` files removed; ``resample`` and ``MelSpectrogram`` are plain torch), put on
``sys.path`` by this script only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import wave

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EXTRA = os.environ.get("MLX_LTX_REFERENCE_EXTRA", os.path.join(REPO, ".venv-reference-extra"))
TORCHAUDIO_VERSION = "2.11.1"
if not os.path.isdir(os.path.join(EXTRA, "torchaudio")):
    raise SystemExit(f"no torchaudio in {EXTRA}: .venv-reference/bin/pip install --no-deps --target {EXTRA} "
                     f"torchaudio=={TORCHAUDIO_VERSION} && rm {EXTRA}/torchaudio/lib/*.so")
sys.path.insert(0, EXTRA)
try:
    import OpenImageIO  # noqa: F401  (EXR I/O only; media_io imports it at module level)
except ImportError:
    sys.modules["OpenImageIO"] = types.ModuleType("OpenImageIO")

import av  # noqa: E402
import torch  # noqa: E402
import torchaudio  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from ltx_core.loader.single_gpu_model_builder import SingleGPUModelBuilder  # noqa: E402
from ltx_core.model.audio_vae.model_configurator import (  # noqa: E402
    AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER,
    AudioEncoderConfigurator,
)
from ltx_core.model.audio_vae.ops import AudioProcessor  # noqa: E402
from ltx_core.types import Audio  # noqa: E402
from ltx_pipelines.utils.media_io import (  # noqa: E402
    decode_audio_from_file,
    decode_video_by_frame,
    decode_video_from_file,
    get_videostream_metadata,
    video_preprocess,
)

SEED = 1234
CPU = torch.device("cpu")
F32 = torch.float32
FIXTURES = os.path.join(HERE, "fixtures")


# ----------------------------------------------------------------------------- inputs
def tone(rng: np.random.Generator, sr: int, seconds: float, freqs, amps, noise: float = 0.02) -> np.ndarray:
    """[C, n] float64: a sine per channel plus Gaussian noise, clipped to [-1, 1]."""
    t = np.arange(round(sr * seconds)) / sr
    sig = np.stack([a * np.sin(2 * np.pi * f * t) for f, a in zip(freqs, amps)])
    return np.clip(sig + rng.normal(0, noise, size=sig.shape), -1, 1)


def write_wav(path: str, sig: np.ndarray, sr: int, sampwidth: int) -> None:
    scale = {2: 32767, 3: 8388607}[sampwidth]
    pcm = np.round(sig.T * scale).astype("<i4")
    raw = pcm.astype("<i2").tobytes() if sampwidth == 2 else \
        np.ascontiguousarray(pcm.view(np.uint8).reshape(-1, 4)[:, :3]).tobytes()
    with wave.open(path, "wb") as f:
        f.setnchannels(sig.shape[0])
        f.setsampwidth(sampwidth)
        f.setframerate(sr)
        f.writeframes(raw)


def _add_audio_stream(container, codec: str, channels: int, sr: int, bit_rate: int):
    st = container.add_stream(codec, rate=sr, layout="stereo" if channels == 2 else "mono")
    st.bit_rate = bit_rate
    st.codec_context.thread_count = 1
    st.codec_context.format = "fltp"  # libmp3lame would pick s32p; aac has only fltp
    return st


def _encode_audio(container, st, sig: np.ndarray, sr: int) -> None:
    layout = "stereo" if sig.shape[0] == 2 else "mono"
    step = st.codec_context.frame_size or 1152
    pcm = np.ascontiguousarray(sig.astype(np.float32))  # planar float [C, n]
    for i in range(0, pcm.shape[1], step):
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, i:i + step]), format="fltp", layout=layout)
        af.sample_rate = sr
        af.pts = i
        container.mux(st.encode(af))
    container.mux(st.encode())


def write_mp3(path: str, sig: np.ndarray, sr: int) -> None:
    with av.open(path, "w", format="mp3") as c:
        _encode_audio(c, _add_audio_stream(c, "libmp3lame", sig.shape[0], sr, 64000), sig, sr)


def write_mp4(path: str, frames: list[np.ndarray], fps, audio: np.ndarray | None = None, sr: int = 48000) -> None:
    h, w = frames[0].shape[:2]
    with av.open(path, "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.thread_count = 1
        ast = _add_audio_stream(c, "aac", audio.shape[0], sr, 128000) if audio is not None else None
        for fr in frames:
            c.mux(vs.encode(av.VideoFrame.from_ndarray(fr, format="rgb24").reformat(format="yuv420p")))
        c.mux(vs.encode())
        if ast is not None:
            _encode_audio(c, ast, audio, sr)


def scene(rng: np.random.Generator, n: int, h: int, w: int) -> list[np.ndarray]:
    """Drifting coloured waves with grain: RGB uint8 frames."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    f = rng.uniform(0.05, 0.2, size=(3, 2))
    out = []
    for i in range(n):
        img = np.stack([127 + 100 * np.sin(f[c, 0] * x + f[c, 1] * y + 0.4 * i + c) for c in range(3)], -1)
        img += rng.normal(0, 6, size=img.shape)
        out.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return out


def make_inputs(out: str, rng: np.random.Generator) -> dict:
    files = {
        "tone_wav": {"file": "tone-stereo-44k.wav", "sample_rate": 44100, "seconds": 0.5, "channels": 2,
                     "format": "pcm_s16le", "tone_hz": [440.0, 660.0], "tone_amplitude": [0.5, 0.4]},
        "mono24_wav": {"file": "tone-mono-16k-s24.wav", "sample_rate": 16000, "seconds": 0.6, "channels": 1,
                       "format": "pcm_s24le", "tone_hz": [300.0], "tone_amplitude": [0.6]},
        "mono_mp3": {"file": "tone-mono-22k.mp3", "sample_rate": 22050, "seconds": 0.6, "channels": 1,
                     "format": "mp3 (libmp3lame 64 kb/s)", "tone_hz": [523.25], "tone_amplitude": [0.5]},
        "clip_mp4": {"file": "clip-72x40-24fps.mp4", "frames": 12, "height": 40, "width": 72, "fps": 24,
                     "audio_sample_rate": 48000, "tone_hz": [330.0, 495.0], "tone_amplitude": [0.4, 0.3],
                     "format": "h264 crf 18 veryfast + aac 128 kb/s stereo"},
        "ntsc_mp4": {"file": "clip-32x24-ntsc.mp4", "frames": 8, "height": 24, "width": 32, "fps": "30000/1001",
                     "format": "h264 crf 18 veryfast, no audio"},
    }
    for key in ("tone_wav", "mono24_wav"):
        m = files[key]
        write_wav(os.path.join(out, m["file"]), tone(rng, m["sample_rate"], m["seconds"], m["tone_hz"],
                                                     m["tone_amplitude"]), m["sample_rate"],
                  2 if m["format"] == "pcm_s16le" else 3)
    m = files["mono_mp3"]
    write_mp3(os.path.join(out, m["file"]), tone(rng, m["sample_rate"], m["seconds"], m["tone_hz"],
                                                 m["tone_amplitude"]), m["sample_rate"])
    m = files["clip_mp4"]
    write_mp4(os.path.join(out, m["file"]), scene(rng, m["frames"], m["height"], m["width"]), m["fps"],
              tone(rng, m["audio_sample_rate"], m["frames"] / m["fps"], m["tone_hz"], m["tone_amplitude"]),
              m["audio_sample_rate"])
    m = files["ntsc_mp4"]
    from fractions import Fraction
    write_mp4(os.path.join(out, m["file"]), scene(rng, m["frames"], m["height"], m["width"]), Fraction(30000, 1001))
    return files


# ----------------------------------------------------------------------------- goldens
VIDEO_BY_FRAME = {  # name: (height, width, frame_cap) — IC-LoRA's decode_video_by_frame + video_preprocess
    "ic": (32, 64, 9),
    "tall": (48, 32, 6),
    "up": (64, 96, 3),
}
VIDEO_BY_TIME = {  # name: (height, width, start_time, max_duration) — video_latent_from_file's decode
    "retake": (40, 72, 0.0, 12 / 24),  # the whole clip at its own size: checked against video.rgb, not stored
    "window": (32, 64, 0.125, 5 / 24),
}
AUDIO_CASES = {  # name: (file key, start_time, max_duration) — decode_audio_from_file
    "wav_full": ("tone_wav", 0.0, None),
    "wav_clip": ("tone_wav", 0.0, 0.3),
    "wav_window": ("tone_wav", 0.2, 0.2),
    "wav24_full": ("mono24_wav", 0.0, None),
    "mp3_full": ("mono_mp3", 0.0, None),
    "mp3_clip": ("mono_mp3", 0.0, 0.4),
    "mp4_full": ("clip_mp4", 0.0, 12 / 24),
    "mp4_window": ("clip_mp4", 0.1, 0.25),
}
RESAMPLE_PAIRS = [(44100, 16000), (48000, 16000), (22050, 16000), (32000, 16000), (8000, 16000),
                  (16000, 24000), (44100, 48000), (16000, 44100)]
VARIANT_PROCESSOR = {"target_sample_rate": 24000, "mel_bins": 80, "mel_hop_length": 256, "n_fft": 512}


def audio_settings(ckpt: str) -> dict:
    """The AudioProcessor arguments the reference's encode_audio takes from the AudioEncoder built from
    ``ckpt``'s metadata (AudioEncoderConfigurator)."""
    with safe_open(ckpt, "pt") as f:
        meta = {"config": json.loads(f.metadata()["config"])}
    enc = AudioEncoderConfigurator.from_metadata(meta)
    return {"target_sample_rate": enc.sample_rate, "mel_bins": enc.mel_bins, "mel_hop_length": enc.mel_hop_length,
            "n_fft": enc.n_fft}


def build_encoder(ckpt: str):
    return SingleGPUModelBuilder(model_class_configurator=AudioEncoderConfigurator, model_path=ckpt,
                                 model_sd_ops=AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER).build(device=CPU, dtype=F32).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(FIXTURES, f"media-s{SEED}"))
    args = ap.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)
    assert torchaudio.__version__.split("+")[0] == TORCHAUDIO_VERSION, torchaudio.__version__
    rng = np.random.default_rng(SEED)
    files = make_inputs(out, rng)
    path = {k: os.path.join(out, m["file"]) for k, m in files.items()}
    gold: dict[str, torch.Tensor] = {}
    report = []

    # ---- video
    for key in ("clip_mp4", "ntsc_mp4"):
        meta = get_videostream_metadata(path[key])
        gold[f"video.meta.{key}"] = torch.tensor([meta.frames, meta.height, meta.width], dtype=torch.int64)
        gold[f"video.fps.{key}"] = torch.tensor([meta.fps], dtype=torch.float64)
        frames = torch.cat(list(decode_video_by_frame(path[key], CPU)), 0)
        gold[f"video.rgb.{key}"] = frames.contiguous()  # uint8 (F, H, W, 3)
    for name, (h, w, cap) in VIDEO_BY_FRAME.items():
        gen = decode_video_by_frame(path=path["clip_mp4"], device=CPU, frame_cap=cap)
        gold[f"video.by_frame.{name}"] = video_preprocess(gen, h, w, F32, CPU).contiguous()
    for name, (h, w, start, dur) in VIDEO_BY_TIME.items():
        gen = decode_video_from_file(path=path["clip_mp4"], device=CPU, start_time=start, max_duration=dur)
        pixels = video_preprocess(gen, h, w, F32, CPU).contiguous()
        if name == "retake":  # same size: the resize is the identity, the pixels are rgb / 127.5 - 1
            rgb = gold["video.rgb.clip_mp4"].to(F32).permute(3, 0, 1, 2)[None]
            assert torch.equal(pixels, rgb / 127.5 - 1.0)
            report.append("video.by_time.retake (native size) == video.rgb / 127.5 - 1 exactly")
        else:
            gold[f"video.by_time.{name}"] = pixels

    # ---- audio decode
    decoded = {}
    for name, (key, start, dur) in AUDIO_CASES.items():
        a = decode_audio_from_file(path[key], CPU, start, dur)
        decoded[name] = a
        gold[f"audio.decoded.{name}"] = a.waveform[0].contiguous()
        gold[f"audio.rate.{name}"] = torch.tensor([a.sampling_rate], dtype=torch.int64)
        report.append(f"decoded {name}: {tuple(a.waveform.shape)} @ {a.sampling_rate}")

    # ---- resampler on its own (torchaudio.functional.resample, float32)
    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(2, 2205, generator=g) * 0.3
    gold["resample.in"] = x
    for a, b in RESAMPLE_PAIRS:
        gold[f"resample.{a}.{b}"] = torchaudio.functional.resample(x, a, b).contiguous()

    # ---- AudioProcessor (mel) and the AudioEncoder
    sets = {"tiny": os.path.join(FIXTURES, "tiny-s1234", "tiny-ltx-2.3.safetensors"),
            "real23": os.path.join(FIXTURES, "real23-s1234", "real23-ltx-2.3.safetensors")}
    processors = {k: audio_settings(p) for k, p in sets.items()}
    processors["variant"] = VARIANT_PROCESSOR
    with torch.no_grad():
        for pname, settings in processors.items():
            proc = AudioProcessor(**settings)
            for name, a in decoded.items():
                if pname == "tiny":  # real23's settings are tiny's; the variant is checked on its mel
                    gold[f"audio.resampled.{pname}.{name}"] = proc.resample_audio(a).waveform[0].clone()
                gold[f"audio.mel.{pname}.{name}"] = proc.waveform_to_mel(a).contiguous()
        for pname in ("tiny", "real23"):
            enc = build_encoder(sets[pname])
            proc = AudioProcessor(**processors[pname])
            for name, a in decoded.items():
                if a.waveform.shape[1] != 2:
                    continue  # the encoder takes stereo only: a mono mel fails in its first conv
                mel = proc.waveform_to_mel(a)
                gold[f"audio.latent.{pname}.{name}"] = enc(mel).contiguous()
            try:
                enc(proc.waveform_to_mel(decoded["wav24_full"]))
                report.append(f"{pname}: the encoder accepted a mono mel")
            except RuntimeError as e:
                report.append(f"{pname}: a mono mel fails in the encoder: {str(e).splitlines()[0][:160]}")

    gold = {k: v.clone().contiguous() for k, v in gold.items()}  # no shared storage (safetensors refuses it)
    save_file(gold, os.path.join(out, "golden_media.safetensors"))
    manifest = {
        "generation": "media",
        "variant": "media",
        "seed": SEED,
        "reference": "ltx-core 1.2.0 / ltx-pipelines 1.2.0 (media_io.decode, audio_vae.ops.AudioProcessor)",
        "pyav": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "goldens": ["golden_media.safetensors"],
        "files": files,
        "video_by_frame": {k: list(v) for k, v in VIDEO_BY_FRAME.items()},
        "video_by_time": {k: list(v) for k, v in VIDEO_BY_TIME.items()},
        "audio_cases": {k: list(v) for k, v in AUDIO_CASES.items()},
        "resample_pairs": RESAMPLE_PAIRS,
        "processors": processors,
        "checkpoints": {k: os.path.relpath(p, out) for k, p in sets.items()},
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print("\n".join(report))
    total = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"wrote {out}: {len(gold)} tensors, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
