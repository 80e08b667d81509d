"""Whole-pipeline goldens (golden_e2e.safetensors): the reference's own pipeline classes
(``DistilledPipeline``, ``TI2VidOneStagePipeline``, ``TI2VidTwoStagesPipeline``,
``TI2VidTwoStagesHQPipeline``) called end to end on the tiny checkpoint — prompt text through the
tiny Gemma and its tokenizer, a first-frame and an end-frame PNG through the CRF round trip and the
video encoder, every stage, the upsampler, the distilled LoRA, the video and audio decoders.

Nothing inside the pipelines is replaced. Their random draws are *recorded*, in the order they
are consumed, so a port with another RNG can replay them. What has to be adjusted to run the
released-model code on CPU with tiny weights in float32 is patched from outside, for the duration
of the calls only (FORMAT.md §6 lists it):

* each pipeline module's ``torch.bfloat16`` (its model, conditioning and VAE dtype) reads as
  float32, through a proxy of the module's ``torch`` name;
* ``DiffusionStage._build_transformer`` builds in the stage's dtype (it passes none, so the
  transformer keeps the file's bf16; LoRAs are still fused on the file's bf16 state dict first);
* ``res2s_audio_video_denoising_loop`` as the HQ module sees it runs with ``model_dtype=float32``
  (its default rounds the state to bf16 after every step) and a recording ``new_noise_fn``;
* ``VideoLatentShape.from_pixel_shape`` / ``AudioLatentShape.from_video_pixel_shape`` default to
  the tiny model's latent channels, mel bins, sample rate and hop (the defaults are the released
  model's 128 / 8 / 16 / 16000 / 160);
* Gemma's multimodal processor (chat template and image processor, used only by prompt
  enhancement) is not built and its ``processor_config.json`` not required: the tiny tokenizer
  has no image tokens;
* the process is pinned to at most 2 CPUs, so PyAV's automatic libx264 thread count (slice
  threads, one per CPU) is the same on every machine; the count is recorded.

Called by make_ref.py after the Gemma golden (it needs tiny-gemma3); see FORMAT.md §6. make_ref_25.py calls
it with ``model_paths=ModelPaths.from_split(...)`` (LTX-2.5 split files, FORMAT-25.md): DistilledPipeline's
stage 1 then runs the ancestral loop, whose draws are labelled ``ancestral``; ``crf.value`` is the CRF that
``ImageConditioner.resolve_crf`` gave the images (read from the video-VAE file), asserted for every pipeline.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
import types

import numpy as np
import torch

F32 = torch.float32
CPU = torch.device("cpu")
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")

PROMPT = "A red fox trots through fresh snow at dawn, birds calling in the pines"
NEGATIVE_PROMPT = "blurry, low quality, distorted"
STEPS = 3  # dev / HQ stage-1 steps (the distilled and stage-2 schedules are fixed)
E2E_PIPELINES = ("distilled", "dev", "dev-two-stage", "dev-two-stage-hq")
IMAGE_HW = (192, 256)  # taller than 128 px: libx264 then cuts 2 slices with 2 threads, so threads matter


def pin_cpus(max_cpus: int = 2) -> int:
    """Pin the process to at most ``max_cpus`` CPUs; returns the count libx264's automatic thread
    rule then sees (x264 counts the CPUs of the affinity mask)."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(cpus[:max_cpus]))
    return len(os.sched_getaffinity(0))


def conditioning_images(seed: int) -> list[np.ndarray]:
    """Two deterministic RGB uint8 images with smooth structure and grain (H.264 has work to do)."""
    g = np.random.default_rng(seed + 31)
    h, w = IMAGE_HW
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    for k in range(2):
        f = g.uniform(0.02, 0.08, size=(3, 2))
        ph = g.uniform(0, 2 * np.pi, size=3)
        chans = [127.5 + 100 * np.sin(f[c, 0] * x + f[c, 1] * y + ph[c] + k) for c in range(3)]
        img = np.stack(chans, -1) + g.normal(0, 12, size=(h, w, 3))
        out.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return out


class _TorchF32(types.ModuleType):
    """A module's ``torch`` name where ``bfloat16`` is float32 and everything else is torch."""

    bfloat16 = torch.float32

    def __getattr__(self, name):  # noqa: ANN001, ANN204
        return getattr(torch, name)


class DrawRecorder:
    """Records every ``torch.randn`` the pipelines make, labelled by the site that drew it:
    ``noiser`` (GaussianNoiser: stage noise), ``decoder`` (the timestep-conditioned video decoder),
    ``sde`` (res_2s SDE noise, recorded as ``_get_new_noise`` returns it, float64), ``ancestral`` (the
    ancestral Euler loop's per-step noise: DistilledPipeline stage 1 at model_version >= 2.5). The diffusion
    video decoder's x_t draw (LTX-2.5) is a ``decoder`` draw too."""

    SITES = {"_sample_noise": "noiser", "_memory_efficient_forward": "decoder",
             "_ancestral_euler_denoising_loop": "ancestral",
             "_decode_pixels": "decoder", "_decode_temporal_group_isolated": "decoder"}  # the diffusion decoder

    def __init__(self, decoder_draw_dtype: torch.dtype | None = None):
        """``decoder_draw_dtype``: the decoder's draws are rounded to it (and the pipeline gets the rounded
        values), e.g. bfloat16 for the diffusion decoder's large pixel-volume draw: what a bf16 pipeline
        draws, and half the bytes to store."""
        self.draws: list[tuple[str, torch.Tensor]] = []
        self._in_sde = False
        self._decoder_dtype = decoder_draw_dtype

    def _site(self) -> str:
        for frame in inspect.stack()[2:12]:
            if frame.function in self.SITES:
                return self.SITES[frame.function]
            if frame.function == "forward" and frame.filename.endswith("conv_video_decoder.py"):
                return "decoder"
        raise AssertionError("a torch.randn from an unexpected site: " + " <- ".join(
            f.function for f in inspect.stack()[1:8]))

    @contextlib.contextmanager
    def recording(self):
        orig = torch.randn

        def randn(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t = orig(*args, **kwargs)
            if not self._in_sde and t.device.type != "meta":  # meta: parameter init of a model being built
                site = self._site()
                if site == "decoder" and self._decoder_dtype is not None:
                    t = t.to(self._decoder_dtype).to(t.dtype)
                self.draws.append((site, t.detach().clone()))
            return t

        torch.randn = randn
        try:
            yield self
        finally:
            torch.randn = orig

    def new_noise_fn(self, real):  # noqa: ANN001, ANN201
        def draw(x, generator):  # noqa: ANN001, ANN202
            self._in_sde = True
            try:
                n = real(x, generator)
            finally:
                self._in_sde = False
            self.draws.append(("sde", n.detach().clone()))
            return n

        return draw


def _patch(stack: contextlib.ExitStack, obj, name: str, value) -> None:  # noqa: ANN001
    # a class attribute is restored from the class __dict__, so a staticmethod stays one
    old = obj.__dict__[name] if isinstance(obj, type) and name in obj.__dict__ else getattr(obj, name)
    setattr(obj, name, value)
    stack.callback(setattr, obj, name, old)


def e2e_golden(*, out_dir: str, prefix: str, ckpt_path: str | None, upsampler_path: str, lora_path: str,  # noqa: PLR0915
               gemma_dir: str | None, V: dict, seed: int, latent_c: int, audio_z: int, audio_mel_lat: int,
               report: list[str], model_paths=None, pipelines: tuple[str, ...] = E2E_PIPELINES,
               tiling_config="auto", key_prefix: str = "", decoder_draw_dtype: torch.dtype | None = None,
               ) -> tuple[dict[str, torch.Tensor], dict]:  # noqa: ANN001
    """``model_paths``: a ``ModelPaths`` (e.g. ``ModelPaths.from_split(...)``, LTX-2.5); default
    ``ModelPaths.from_monolith(ckpt_path, gemma_dir)`` (then the tiny tokenizer is copied into ``gemma_dir``).
    ``tiling_config``: passed to every pipeline call unless "auto" (the pipelines' default, ``AUTO_TILING``; a
    diffusion video VAE needs an explicit one on CPU, where the reference's auto tiling cannot size tiles).
    Keys are ``{key_prefix}{pipeline}.*``. ``decoder_draw_dtype``: see ``DrawRecorder``."""
    import av
    from PIL import Image

    import ltx_pipelines.distilled as m_distilled
    import ltx_pipelines.ti2vid_one_stage as m_one
    import ltx_pipelines.ti2vid_two_stages as m_two
    import ltx_pipelines.ti2vid_two_stages_hq as m_hq
    from ltx_core.components.guiders import MultiModalGuiderParams
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps
    from ltx_core.text_encoders.gemma import gemma_assets
    from ltx_core.types import AudioLatentShape, VideoLatentShape
    from ltx_pipelines.utils import blocks
    from ltx_pipelines.utils import samplers as m_samplers
    from ltx_pipelines.utils.args import ImageConditioningInput
    from ltx_pipelines.utils.constants import LTX_2_3_HQ_PARAMS, detect_params
    from ltx_pipelines.utils.media_io import decode as m_decode
    from ltx_pipelines.utils.model_paths import ModelPaths

    crf_threads = pin_cpus(2)
    out: dict[str, torch.Tensor] = {}

    paths = model_paths if model_paths is not None else ModelPaths.from_monolith(ckpt_path, gemma_dir)
    # ---- inputs: a tokenizer beside the tiny Gemma, two conditioning images as PNG files
    if model_paths is None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(os.path.join(ASSETS, "tiny_tokenizer", name), os.path.join(gemma_dir, name))
    images = conditioning_images(seed)
    names = ["e2e-first.png", "e2e-last.png"]
    for img, name in zip(images, names):
        Image.fromarray(img).save(os.path.join(out_dir, name), optimize=False, compress_level=6)

    # ---- the CRF round trip (media_io.preprocess) at PyAV's automatic thread count and pinned ones
    def preprocess_at(img: np.ndarray, crf: int, threads: int | None) -> np.ndarray:
        if threads is None:
            return m_decode.preprocess(img, crf)

        class _Container:
            def __init__(self, c):  # noqa: ANN001
                self._c = c

            def add_stream(self, *a, **k):  # noqa: ANN002, ANN003, ANN202
                s = self._c.add_stream(*a, **k)
                s.codec_context.thread_count = threads
                return s

            def __getattr__(self, n):  # noqa: ANN001, ANN204
                return getattr(self._c, n)

        proxy = types.SimpleNamespace(**{k: getattr(av, k) for k in dir(av) if not k.startswith("__")})
        proxy.open = lambda f, *a, **k: _Container(av.open(f, *a, **k)) if "w" in a[:1] else av.open(f, *a, **k)
        with contextlib.ExitStack() as st:
            _patch(st, m_decode, "av", proxy)
            return m_decode.preprocess(img, crf)

    crf = detect_params(paths.video_vae()).default_image_crf  # what ImageConditioner reads (checked below)
    for k, img in enumerate(images):
        decoded = np.array(Image.open(os.path.join(out_dir, names[k])).convert("RGB"))
        assert np.array_equal(decoded, img)
        auto = preprocess_at(img, crf, None)
        t1, t2 = preprocess_at(img, crf, 1), preprocess_at(img, crf, 2)
        assert np.array_equal(auto, t2 if crf_threads == 2 else t1), "PyAV auto threads != the CPU count"
        assert not np.array_equal(t1, t2), "1 and 2 libx264 threads give the same pixels: the test would be blind"
        out[f"crf.img{k}.out.preprocess_u8"] = torch.from_numpy(auto.copy())
        out[f"crf.img{k}.out.preprocess_u8.threads1"] = torch.from_numpy(t1.copy())
        out[f"crf.img{k}.out.preprocess_u8.threads2"] = torch.from_numpy(t2.copy())
        report.append(f"e2e.crf img{k}: 1 vs 2 threads max |diff| "
                      f"{int(np.abs(t1.astype(int) - t2.astype(int)).max())} code values")
    out["crf.threads"] = torch.tensor([crf_threads], dtype=torch.int64)
    out["crf.value"] = torch.tensor([crf], dtype=torch.int64)

    # ---- geometry: the stage-1 grid of the pipeline golden; sizes are multiples of 64 for two stages
    # two latent frames (9 pixel frames) keep the stored frames small; sizes are multiples of 64
    _, h_lat, w_lat = V["pipe_grid"]
    frames, height, width, fps = 9, 64 * h_lat, 64 * w_lat, float(V["fps"])
    acfg = V["metadata"]["config"]["audio_vae"]
    a_kw = {"channels": audio_z, "mel_bins": audio_mel_lat, "sample_rate": acfg["model"]["params"]["sampling_rate"],
            "hop_length": acfg["preprocessing"]["stft"]["hop_length"],
            "audio_latent_downsample_factor": 2 ** (len(acfg["model"]["params"]["ddconfig"]["ch_mult"]) - 1)}
    num_layers = V["metadata"]["config"]["transformer"]["num_layers"]
    image_inputs = [ImageConditioningInput(os.path.join(out_dir, names[0]), 0, 0.9),
                    ImageConditioningInput(os.path.join(out_dir, names[1]), frames - 1, 0.8)]

    def clamp_blocks(p: MultiModalGuiderParams) -> MultiModalGuiderParams:  # a tiny model has no block 28
        from dataclasses import replace
        return replace(p, stg_blocks=[min(b, num_layers - 1) for b in (p.stg_blocks or [])])

    detected = detect_params(paths.transformer())
    guiders = {"dev": (clamp_blocks(detected.video_guider_params), clamp_blocks(detected.audio_guider_params)),
               "hq": (clamp_blocks(LTX_2_3_HQ_PARAMS.video_guider_params),
                      clamp_blocks(LTX_2_3_HQ_PARAMS.audio_guider_params))}
    distilled_lora = [LoraPathStrengthAndSDOps(lora_path, 1.0, LTXV_LORA_COMFY_RENAMING_MAP)]
    hq_strengths = (0.25, 0.5)

    def build(name: str):  # noqa: ANN202
        if name == "distilled":
            return m_distilled.DistilledPipeline(paths, upsampler_path, [], device=CPU)
        if name == "dev":
            return m_one.TI2VidOneStagePipeline(paths, [], device=CPU)
        if name == "dev-two-stage":
            return m_two.TI2VidTwoStagesPipeline(paths, distilled_lora, upsampler_path, [], device=CPU)
        return m_hq.TI2VidTwoStagesHQPipeline(paths, distilled_lora, *hq_strengths, upsampler_path, (), device=CPU)

    def call(name: str, pipe):  # noqa: ANN001, ANN202
        common = {"prompt": PROMPT, "seed": seed, "height": height, "width": width, "frame_rate": fps,
                  "images": image_inputs, "num_frames": frames}
        if tiling_config != "auto":
            common["tiling_config"] = tiling_config
        if name == "distilled":
            return pipe(**common)
        vg, ag = guiders["hq" if name == "dev-two-stage-hq" else "dev"]
        return pipe(**common, negative_prompt=NEGATIVE_PROMPT, num_inference_steps=STEPS, video_guider_params=vg,
                    audio_guider_params=ag)

    for name in pipelines:
        p = f"{key_prefix}{name}."
        rec = DrawRecorder(decoder_draw_dtype)
        log: dict[str, list] = {"stage": [], "ctx": [], "up": [], "vdec": [], "adec": [], "built": [], "crf": []}
        with contextlib.ExitStack() as st:
            for mod in (m_distilled, m_one, m_two, m_hq):
                _patch(st, mod, "torch", _TorchF32("torch"))
            _patch(st, m_hq, "res2s_audio_video_denoising_loop", functools.partial(
                m_samplers.res2s_audio_video_denoising_loop, model_dtype=F32,
                new_noise_fn=rec.new_noise_fn(m_samplers._get_new_noise)))
            v_from = VideoLatentShape.from_pixel_shape
            a_from = AudioLatentShape.from_video_pixel_shape
            _patch(st, VideoLatentShape, "from_pixel_shape", staticmethod(
                lambda shape, latent_channels=latent_c, **k: v_from(shape, latent_channels, **k)))
            _patch(st, AudioLatentShape, "from_video_pixel_shape", staticmethod(
                lambda shape, **k: a_from(shape, **{**a_kw, **k})))
            _patch(st, gemma_assets, "_REQUIRED_ASSET_FILENAMES", ("tokenizer_config.json",))
            _patch(st, blocks, "get_gemma_ops", lambda path, real=blocks.get_gemma_ops: (
                real(path)[0], tuple(op for op in real(path)[1] if op.name != "ProcessorLoad")))
            _record_calls(st, blocks.DiffusionStage, "__call__", lambda a, k, r: log["stage"].append((k, r)))
            build_tr = blocks.DiffusionStage._build_transformer
            _patch(st, blocks.DiffusionStage, "_build_transformer",
                   lambda self, real=build_tr, **k: real(self, **{"dtype": self._dtype, **k}))
            _record_calls(st, blocks.DiffusionStage, "_build_transformer", lambda a, k, r: log["built"].append(_lora_probe(r)))
            _record_calls(st, blocks.PromptEncoder, "__call__", lambda a, k, r: log["ctx"].extend(r))
            _record_calls(st, blocks.ImageConditioner, "resolve_crf",
                          lambda a, k, r: log["crf"].extend(img.crf for img in r))
            _record_calls(st, blocks.VideoUpsampler, "__call__", lambda a, k, r: log["up"].append(r))
            _record_calls(st, blocks.VideoDecoder, "__call__", lambda a, k, r: log["vdec"].append(a[1]))
            _record_calls(st, blocks.AudioDecoder, "__call__", lambda a, k, r: log["adec"].append((a[1], r)))
            with torch.inference_mode(), rec.recording():
                pipe = build(name)
                result = call(name, pipe)
                video_iter, audio = result[0], result[1]
                frames_out = torch.cat([c.float() for c in video_iter], dim=0)
        assert log["crf"] and set(log["crf"]) == {crf}, f"{name}: ImageConditioner used CRF {log['crf']}, not {crf}"
        # the stage-2 distilled LoRA is really fused: a weight it touches differs from stage 1's
        if len(log["built"]) == 2 and name != "distilled":
            w1, w2 = log["built"]
            assert not torch.equal(w1, w2), f"{name}: the distilled LoRA did not change the stage-2 weights"
            report.append(f"e2e.{name}: distilled LoRA fused in stage 2, probe weight moved by "
                          f"{(w2 - w1).abs().max().item():.3e}")
        for j, (kwargs, (vstate, astate)) in enumerate(log["stage"]):
            out[p + f"stage{j}.video.latent"] = vstate.latent
            out[p + f"stage{j}.audio.latent"] = astate.latent
            for i, item in enumerate(kwargs["video"].conditionings):
                lat = getattr(item, "latent", getattr(item, "keyframes", None))
                if lat is not None:
                    out[p + f"stage{j}.cond{i}.latent"] = lat
        for i, ctx in enumerate(log["ctx"]):
            out[p + f"ctx{i}.video"] = ctx.video_encoding
            out[p + f"ctx{i}.audio"] = ctx.audio_encoding
        if log["up"]:
            out[p + "upscaled.video.latent"] = log["up"][0]
        out[p + "decode.video.latent"] = log["vdec"][0]
        out[p + "decode.audio.latent"] = log["adec"][0][0]
        # [F, H, W, 3] in [0, 1], stored as round(x · 65535) in uint16 (≤ 7.7e-6 off; a quarter of float32's size)
        out[p + "out.frames_u16"] = torch.round(frames_out.clamp(0, 1) * 65535).to(torch.int32).to(torch.uint16)
        out[p + "out.waveform"] = audio.waveform.float()
        out[p + "out.sample_rate"] = torch.tensor([int(audio.sampling_rate)], dtype=torch.int64)
        sites = []
        for k, (site, tensor) in enumerate(rec.draws):
            out[p + f"draw{k}.{site}"] = tensor
            sites.append(site)
        report.append(f"e2e.{key_prefix}{name}: {len(log['stage'])} stage(s), draws {','.join(sites)}, frames "
                      f"{tuple(frames_out.shape)}, waveform {tuple(audio.waveform.shape)}")
        del pipe, result, video_iter

    meta = {"prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "seed": seed, "num_frames": frames,
            "height": height, "width": width, "fps": fps, "steps": STEPS, "crf_threads": crf_threads,
            "images": [[names[0], 0, 0.9], [names[1], frames - 1, 0.8]],
            "distilled_lora": os.path.basename(lora_path), "hq_lora_strengths": list(hq_strengths),
            "guiders": {k: {"video": _params_json(v), "audio": _params_json(a)} for k, (v, a) in guiders.items()}}
    return out, meta


def _params_json(p) -> dict:  # noqa: ANN001
    return {"cfg_scale": p.cfg_scale, "stg_scale": p.stg_scale, "rescale_scale": p.rescale_scale,
            "modality_scale": p.modality_scale, "skip_step": p.skip_step, "stg_blocks": list(p.stg_blocks or [])}


def _lora_probe(x0) -> torch.Tensor:  # noqa: ANN001
    """Block 0's video ``attn1.to_q`` weight (the test LoRA touches it)."""
    model = getattr(x0, "velocity_model", x0)
    return model.transformer_blocks[0].attn1.to_q.weight.detach().float().clone()


def _record_calls(stack: contextlib.ExitStack, cls, name: str, sink) -> None:  # noqa: ANN001
    orig = getattr(cls, name)

    @functools.wraps(orig)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = orig(*args, **kwargs)
        sink(args, kwargs, result)
        return result

    _patch(stack, cls, name, wrapper)


__all__ = ["conditioning_images", "e2e_golden", "pin_cpus"]
