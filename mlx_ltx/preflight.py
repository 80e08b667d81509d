"""Predict a generation's peak memory before anything loads, and refuse a request that cannot fit.

:func:`predict_peak` gives what ``mx.get_peak_memory()`` will report for one ``generate`` call, phase by
phase (text encoding, each denoising stage, the x2 upsampling, the video and audio decodes), each phase =
the weights resident then + its working activations, from file headers only (``Checkpoint`` shapes and
config, ``memory_policy``'s byte counts): a request that would run out of memory twenty minutes in, after
Gemma and a 40 GB transformer loaded, is refused in milliseconds, with advice re-predicted to fit
(:func:`check_fits`). The activation model is analytic (bytes per token x width, attention score matrices,
bytes per decoded value); its constants were measured with ``mx.get_peak_memory`` on random-weight models
built from the fixture checkpoints (``tests/test_preflight.py`` re-measures them). On the CPU backend the
transformer's working set is dominated by the attention scores, which ``mx.fast.scaled_dot_product_attention``
materialises there (B, heads, Tq, Tk, in the compute dtype: measured); Metal's fused kernel does not.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from types import SimpleNamespace

import mlx.core as mx

from .loading import Checkpoint
from .memory_policy import _component_bytes, _gemma_bytes, _loaded_bytes

GB = 1e9

# --- transformer forward (per call; B = guidance passes batched in the call) -------------------------
# Live while the widest attention runs, per (B, T, width) tensor of each stream: copies in the compute
# dtype + float32 copies (the bf16 and f32 runs pin the two apart): the residual stream, RoPE tables,
# adaLN values of the running sub-block, norms, q/k/v, rotated q/k and the SDPA's scaled-q and output.
# The 2.3 block (gated attention, text cross-attention adaLN) and the 19B block differ, so each has its
# own pair. Least squares over widths 256 (heads 2x128, 4x64), 768..3840 video tokens, context 256 and
# 1024, bf16 and f32, on random-weight models with the fixture sets' configs (real23, ltx2-19b):
# max error 10 % (2.3), 7 % (19B).
TOKEN_WIDTH_COPIES = {"2.3": (8.0, 6.6), "19B": (11.2, 8.3)}  # (dtype copies, float32 copies)
# The text context (B, L, width) per stream besides the input itself: modulated context, keys, values.
CONTEXT_WIDTH_COPIES = {"2.3": 3.2, "19B": 2.1}
# Score matrix of the widest attention, in copies of (B, heads, Tq, Tk) in the compute dtype: the
# CPU SDPA keeps exactly one (measured: scores x dtype size + 2 copies of q; fitted 1.01 in the
# forward); Metal's fused kernel keeps none.
CPU_SCORE_COPIES = 1.0
# (Measured after commit a15e0ba: adaLN tables per distinct timestep, not 13 per-token stream copies.)

# --- video VAE decoder -------------------------------------------------------------------------------
# A tile costs what the tile planner itself estimates (vae_tiling.estimate_decode_bytes, calibrated on the
# CPU backend against measured peaks at the fixture and the release's widths): the prediction plans the
# tiles as the pipeline does, for the same budget, and counts the largest one.
# A finished temporal chunk (full frames) leaves the tiler as one float32 array, then goes to the host:
# measured one float32 copy of it at most (fixture decodes whose chunk outweighs a tile).
DECODED_CHUNK_COPIES = 1

# --- upsampler, audio, text -----------------------------------------------------------------------
# The latent upsampler's conv3d res blocks, per value of (mid channels x output positions): measured
# 300 bytes in bf16 and 385 in f32 on the fixture x2 upsamplers (mid 32 and 64): float32 + dtype parts.
UPSAMPLER_FLOAT32_BYTES_PER_VALUE, UPSAMPLER_DTYPE_COPIES = 215, 42
# Audio VAE decoder + vocoder (+ bandwidth extension), float32, per value of the widest stage (stereo):
# measured 158 (2.3 layout) and 220 (19B HiFi-GAN) on the fixture sets at 25 and 97 frames.
AUDIO_BYTES_PER_VALUE = 190
GEMMA_DEFAULT_HIDDEN, GEMMA_DEFAULT_LAYERS = 3840, 48  # gemma-3-12b, what convert.py brings
# gemma-3-12b's weights when its size cannot be read (a repo id not downloaded): 12.19e9 parameters
GEMMA_DEFAULT_PARAMS = 12_187_000_000
TEXT_EXTRA_COPIES = 6  # besides the layers+1 hidden states every prompt keeps for the projection
CONTEXT_TOKENS = 1024  # models.gemma.TOKENIZER_MAX_LENGTH (every prompt is padded to it); no mlx-lm import

QUANT_GROUP_SIZE = 64
QUANT_BITS = {"q8": 8, "q4": 4}


class PreflightError(ValueError):
    """The predicted peak exceeds the memory budget; the message says by how much and what fits."""


@dataclass(frozen=True)
class PhaseMemory:
    weights: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.activations


@dataclass(frozen=True)
class MemoryRequest:
    """Everything a prediction depends on (kept so the advice can vary one thing and re-predict)."""

    checkpoint: Checkpoint
    pipeline: str
    height: int
    width: int
    num_frames: int
    fps: float = 24.0
    dtype: mx.Dtype = mx.bfloat16
    memory: str = "eager"
    passes_per_call: int = 1
    audio: bool = True
    keep_models: bool = False
    gemma: str | None = None
    upsampler: str | None = None
    distilled_lora: str | None = None
    quantize: str | None = None  # predict as if converted with --quantize q8 / q4
    cpu: bool = True
    decode_budget: int | None = None  # the tiled decode's planning budget (default: half the device)
    ranks: int = 1  # processes sharing the generation (distributed.py)
    parallel: str = "guidance"  # how they share it: guidance (passes; one-pass steps by tokens) or sequence


@dataclass(frozen=True)
class MemoryPrediction:
    request: MemoryRequest
    phases: dict[str, PhaseMemory]
    notes: tuple[str, ...] = field(default=())

    @property
    def phase(self) -> str:
        return max(self.phases, key=lambda p: self.phases[p].total)

    @property
    def peak(self) -> int:
        return self.phases[self.phase].total

    def describe(self) -> str:
        r, p = self.request, self.phases[self.phase]
        parts = ", ".join(f"{k} {v.total / GB:.1f}" for k, v in self.phases.items())
        return (f"predicted peak {self.peak / GB:.1f} GB in {self.phase} (weights {p.weights / GB:.1f} + "
                f"activations {p.activations / GB:.1f}) for {r.pipeline} {r.width}x{r.height}x{r.num_frames} "
                f"{r.memory}{' ' + r.quantize if r.quantize else ''}; per phase GB: {parts}")


# ------------------------------------------------------------------------------------------------
# weights

def _transformer_tensors(ckpt: Checkpoint, quantize: str | None):
    """(module key, stored dtype, shape) of the transformer, as ``convert.py --quantize`` would
    store them when ``quantize`` is given (packed uint32 weights + bf16 scales and biases per
    group of 64 for the block Linears it quantizes)."""
    from .convert import should_quantize

    out = []
    for new, old in ckpt.component_keys("transformer").items():
        shape, stored = ckpt.shapes[old], ckpt.dtypes[old]
        if quantize and should_quantize(old, shape, QUANT_GROUP_SIZE):
            bits = QUANT_BITS[quantize]
            layer = new[: -len(".weight")]
            groups = (*shape[:-1], shape[-1] // QUANT_GROUP_SIZE)
            out += [(new, "U32", (*shape[:-1], shape[-1] * bits // 32)),
                    (layer + ".scales", "BF16", groups), (layer + ".biases", "BF16", groups)]
        else:
            out.append((new, stored, shape))
    return out


def transformer_bytes(ckpt: Checkpoint, dtype: mx.Dtype, quantize: str | None = None) -> tuple[int, int, int]:
    """(all, non-block, largest block) loaded bytes of the transformer."""
    groups: dict[str, list] = {}  # "" = the non-block weights (streaming keeps them resident)
    for t in _transformer_tensors(ckpt, quantize):
        groups.setdefault(t[0].split(".", 2)[1] if t[0].startswith("transformer_blocks.") else "", []).append(t)
    sizes = {k: _loaded_bytes(v, dtype) for k, v in groups.items()}
    nonblock = sizes.pop("", 0)
    return nonblock + sum(sizes.values()), nonblock, max(sizes.values(), default=0)


def resident_transformer_bytes(ckpt: Checkpoint, dtype: mx.Dtype, memory: str, lora: bool = False,
                               quantize: str | None = None) -> int:
    """The transformer's resident bytes: all of it eager; streamed, the non-block weights and the
    running block (the next one is read only after it is released; measured: one block), and a
    second block's worth while a LoRA is fused into the block as it is read (the layer's
    dequantized weight and delta)."""
    full, nonblock, block = transformer_bytes(ckpt, dtype, quantize)
    return full if memory == "eager" else nonblock + (2 if lora else 1) * block


def _lora_bytes(ckpt: Checkpoint, path: str, dtype: mx.Dtype) -> tuple[int, int]:
    """(LoRA file bytes, original bytes of the layers it fuses), as ``memory_policy`` counts them."""
    from .models.lora import LORA_A_SUFFIX, LORA_KEY_PREFIX

    lora = Checkpoint(path)
    targets = {k.replace(LORA_KEY_PREFIX, "")[: -len(LORA_A_SUFFIX)] for k in lora.shapes if k.endswith(LORA_A_SUFFIX)}
    return os.path.getsize(lora.path), _component_bytes(ckpt, "transformer", dtype, targets)


def _gemma_widths(gemma) -> tuple[int, int]:
    """(hidden size, layers) of the text encoder; gemma-3-12b's when its config is not local."""
    try:
        from .models.gemma import read_gemma_config
        from .models.gemma4 import read_gemma4_config

        cfg = read_gemma4_config(gemma) if os.path.isfile(gemma) else read_gemma_config(gemma)
        return cfg.hidden_size, cfg.num_hidden_layers
    except Exception:  # a repo id not downloaded (the text encoder's load says why if it fails)
        return GEMMA_DEFAULT_HIDDEN, GEMMA_DEFAULT_LAYERS


# ------------------------------------------------------------------------------------------------
# activations

def transformer_activation_bytes(tc, video_tokens: int, audio_tokens: int, context: int, batch: int,
                                 dtype: mx.Dtype, cpu: bool = True, ranks: int = 1) -> int:
    """Working set of one transformer call (``tc`` a ``TransformerConfig``), weights excluded.
    ``ranks`` > 1: sequence-parallel, this rank's share of the video tokens plus the gathered keys
    and values of the whole sequence (models/sequence_parallel.py)."""
    s = dtype.size
    key_tokens, video_tokens = video_tokens, -(-video_tokens // ranks)
    dv, da = tc.inner_dim, tc.audio_inner_dim
    layout = "2.3" if tc.cross_attention_adaln else "19B"
    tokens = video_tokens * dv + audio_tokens * da
    in_dtype, in_f32 = TOKEN_WIDTH_COPIES[layout]
    # the context inputs themselves (19B: caption_channels wide before its projection) + their copies
    ctx_in = (tc.caption_channels * 2 if tc.text_projection_version == 1 else dv + da)
    work = s * (in_dtype * tokens + CONTEXT_WIDTH_COPIES[layout] * context * (dv + da) + context * ctx_in)
    work += 4 * in_f32 * tokens
    scores = 0
    if cpu:  # the widest attention's (heads, Tq, Tk): self, text cross or A/V cross
        hv, ha = tc.num_attention_heads, tc.audio_num_attention_heads
        scores = max(hv * video_tokens * max(key_tokens, context), ha * audio_tokens * max(audio_tokens, context),
                     ha * max(video_tokens, key_tokens) * audio_tokens)
    # inputs: latents, float32 positions and timesteps, per token and stream
    io = (video_tokens * (tc.in_channels * (s + 4) + 3 * 2 * 4 + 8)
          + audio_tokens * (tc.audio_in_channels * (s + 4) + 2 * 4 + 8))
    # sequence-parallel: the whole sequence's K/V (self-attention and V2A widths), padded shares + gathered
    gathered = 0 if ranks == 1 else 2 * 2 * key_tokens * (dv + _av_width(tc)) * s
    return int(batch * (work + s * CPU_SCORE_COPIES * scores + io + gathered))


def _av_width(tc) -> int:
    """The A/V cross-attention's inner width (the audio heads)."""
    return tc.audio_num_attention_heads * tc.audio_attention_head_dim


@functools.lru_cache(maxsize=8)
def _decoder_stages(ckpt: Checkpoint):
    """The video decoder's (channels, upscale, conv input channels) stages, from an unloaded
    skeleton (MLX arrays are lazy: building it allocates nothing); cached for the advice's re-predictions."""
    from .models.video_decoder import VideoDecoder

    dec = VideoDecoder(ckpt.config.vae, ckpt.component_shapes("vae_decoder"))
    return dec.stage_widths(), dec.video_scale_factors, dec.out_channels


def video_decode_activation_bytes(stages, scale_factors, out_channels: int, latent_shape, budget: int,
                                  cpu: bool = True) -> int:
    """Working set of the tiled decode: tiles planned as ``vae_tiling.auto_tiling`` plans them for
    ``budget``, the largest costing its ``vae_tiling.estimate_decode_bytes`` (float32 activations, the
    decoder's default), or a finished float32 chunk of whole frames if that is larger."""
    from .models import vae_tiling

    stub = SimpleNamespace(stage_widths=lambda: stages, video_scale_factors=scale_factors)
    tiling = vae_tiling.auto_tiling(stub, latent_shape, memory_budget=budget, dtype=mx.float32, cpu=cpu)
    _, _, F, H, W = latent_shape
    tile = (F, H, W)
    if tiling is not None:  # the longest tile per axis, as the tiled decode cuts them
        sizes = tiling.latent_sizes(scale_factors)
        tile = tuple(max(lat.stop - lat.start for lat, _, _ in vae_tiling.axis_tiles(n, 1, sz, axis == 0))
                     for axis, (n, sz) in enumerate(zip((F, H, W), sizes)))
    f = tile[0]
    st, sh, sw = scale_factors
    chunk = out_channels * ((f - 1) * st + 1) * H * sh * W * sw * 4 * DECODED_CHUNK_COPIES
    return max(vae_tiling.estimate_decode_bytes(stages, tile, mx.float32, cpu), chunk)


def diffusion_decode_activation_bytes(ckpt: Checkpoint, latent_shape, budget: int, dtype: mx.Dtype) -> int:
    """LTX-2.5's diffusion decoder: its tiles planned for ``budget`` as the pipeline plans them
    (``DiffusionVideoDecoder.plan_tiling``), costed by ``diffusion_tiling.estimate_decode_bytes``
    (activations in the pipeline's dtype), or a finished float32 chunk of whole frames if larger."""
    from .models import diffusion_tiling
    from .models.diffusion_video_decoder import VIDEO_SCALE, DiffusionDecoderConfig
    from .models.neighborhood_attention import na_block_bytes

    cfg = DiffusionDecoderConfig.from_vae_section(ckpt.config.vae.raw)
    thw = cfg.work_latent_thw(latent_shape)
    size, block = mx.zeros((), dtype).itemsize, na_block_bytes(dtype)
    tiling = diffusion_tiling.auto_tiling(cfg, thw, budget, size, block)
    F, Hp, Wp = (thw[0] - 1) * VIDEO_SCALE[0] + 1, thw[1] * VIDEO_SCALE[1], thw[2] * VIDEO_SCALE[2]
    tile = None if tiling is None else tuple(min(a.tile_size, n) if a.is_tiled() else n for a, n in
                                             zip((tiling.frames, tiling.height, tiling.width), (F, Hp, Wp)))
    frames = F if tiling is None or not tiling.frames.is_tiled() else min(F, 2 * tiling.frames.tile_size)
    chunk = 3 * frames * Hp * Wp * 4 * DECODED_CHUNK_COPIES
    return max(diffusion_tiling.estimate_decode_bytes(cfg, thw, tile, size, block), chunk)


def _audio_activation_bytes(cfg, seconds: float) -> int:
    """Audio VAE decoder + vocoder (+ bandwidth extension), float32: the widest stage's values."""
    a = cfg.audio_vae
    mel_frames = seconds * a.sampling_rate / a.mel_hop_length
    widest = a.ch * max(a.ch_mult) * mel_frames * (a.mel_bins or 64) / 2 ** (len(a.ch_mult) - 1)
    for gan in (cfg.vocoder.vocoder, cfg.vocoder.bwe):
        if gan is None:
            continue
        # the vocoder reads mel frames; the bandwidth extension its own hop on the 16 kHz waveform
        rate = (gan.input_sampling_rate / gan.hop_length if gan.input_sampling_rate and gan.hop_length
                else a.sampling_rate / a.mel_hop_length)
        length, ch = rate * seconds, gan.upsample_initial_channel
        widest = max(widest, ch * length)
        for u in gan.upsample_rates:
            ch, length = ch / 2, length * u
            widest = max(widest, ch * length)
    return int(2 * AUDIO_BYTES_PER_VALUE * widest)  # stereo


# ------------------------------------------------------------------------------------------------
# the prediction

def predict_peak(checkpoint: Checkpoint | str, pipeline: str, height: int, width: int, num_frames: int, *,
                 fps: float = 24.0, dtype: mx.Dtype = mx.bfloat16, memory: str = "eager", passes_per_call: int = 1,
                 audio: bool = True, keep_models: bool = False, gemma: str | None = None,
                 upsampler: str | None = None, distilled_lora: str | None = None, quantize: str | None = None,
                 device: mx.Device | None = None, decode_budget: int | None = None, ranks: int = 1,
                 parallel: str = "guidance") -> MemoryPrediction:
    """The peak memory of one ``generate`` call, before anything loads. ``passes_per_call``: guidance
    passes batched per transformer call in guided stages (1..4; unguided stages run 1); ``keep_models``:
    the pipeline keeps its models between calls (``low_memory=False``: steady state of a second call);
    ``quantize``: as if converted with ``--quantize``; ``decode_budget``: the tile planner's budget
    (default half the device memory, as the pipeline); ``ranks`` / ``parallel``: one rank's peak when
    that many share the generation in that mode (distributed.py)."""
    from .models.vae_tiling import default_memory_budget
    from .pipeline_stages import PIPELINES

    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {sorted(PIPELINES)}")
    if memory not in ("eager", "stream"):
        raise ValueError(f"memory={memory!r}; choose 'eager' or 'stream'")
    if quantize is not None and quantize not in QUANT_BITS:
        raise ValueError(f"quantize={quantize!r}; choose one of {sorted(QUANT_BITS)}")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
    device = mx.default_device() if device is None else device
    req = MemoryRequest(ckpt, pipeline, height, width, num_frames, float(fps), dtype, memory, int(passes_per_call),
                        audio, keep_models, gemma, upsampler, distilled_lora, quantize,
                        device.type == mx.cpu, default_memory_budget() if decode_budget is None else decode_budget,
                        int(ranks), parallel)
    return _predict(req)


def _predict(req: MemoryRequest) -> MemoryPrediction:
    from .distributed import splits_passes
    from .latent_tools import AudioLatentShape, VideoLatentShape
    from .pipeline_stages import PIPELINES, DenoiserKind

    ckpt, dt, spec, cfg = req.checkpoint, req.dtype, PIPELINES[req.pipeline], req.checkpoint.config
    tc, notes = cfg.transformer, []
    if ckpt.quantization and req.quantize:
        notes.append("the checkpoint is already quantized; quantize= is ignored")
    full, nonblock, block = transformer_bytes(ckpt, dt, None if ckpt.quantization else req.quantize)
    comp = {c: _component_bytes(ckpt, c, dt) if ckpt.has_component(c) else 0 for c in
            ("video_connector", "audio_connector", "text_projection", "vae_encoder", "vae_decoder",
             "audio_vae_decoder", "vocoder")}
    text_models = comp["video_connector"] + comp["audio_connector"] + comp["text_projection"]
    gemma_bytes, hidden, layers = 0, GEMMA_DEFAULT_HIDDEN, GEMMA_DEFAULT_LAYERS
    if req.gemma is not None:
        gemma_bytes, (hidden, layers) = _gemma_bytes(req.gemma, dt), _gemma_widths(req.gemma)
        if gemma_bytes is None:  # unknown without a download (memory_policy): the documented gemma-3-12b
            gemma_bytes = GEMMA_DEFAULT_PARAMS * dt.size
            notes.append(f"Gemma's size is unknown without a download: counted as gemma-3-12b "
                         f"({gemma_bytes / GB:.1f} GB)")
    else:
        notes.append("no Gemma given: the text encoder's weights are not counted")
    lora_file = lora_originals = 0
    if req.distilled_lora is not None and spec.needs_distilled_lora:
        lora_file, lora_originals = _lora_bytes(ckpt, req.distilled_lora, dt)
    up_bytes, up_cfg = 0, None
    if spec.two_stage and req.upsampler is not None:
        up = Checkpoint(req.upsampler)
        up_bytes, up_cfg = _component_bytes(up, "upsampler", dt), up.upsampler_config
    elif spec.two_stage:
        notes.append("no upsampler given: its weights are not counted")
    if spec.needs_distilled_lora and req.distilled_lora is None:
        notes.append("no distilled LoRA given: its file is not counted")

    # the models a pipeline keeping them holds in every phase (memory_policy.estimate_model_bytes)
    kept = 0
    if req.keep_models:
        kept = gemma_bytes + text_models + comp["vae_encoder"] + up_bytes
        kept += lora_file + lora_originals if req.memory == "eager" else 0
    resident_transformer = resident_transformer_bytes(ckpt, dt, req.memory, bool(lora_file),
                                                      None if ckpt.quantization else req.quantize)

    phases: dict[str, PhaseMemory] = {}
    prompts = 2 if spec.guided else 1
    L = CONTEXT_TOKENS
    # Gemma's hidden states (every layer's, for the projection) + the connectors' work, per prompt
    text_act = prompts * L * (hidden * (layers + 1 + TEXT_EXTRA_COPIES) + (tc.inner_dim + tc.audio_inner_dim) * 8)
    text_weights = kept + resident_transformer if req.keep_models else gemma_bytes + text_models
    phases["text"] = PhaseMemory(text_weights, text_act * dt.size)

    sf = cfg.vae.scale_factors
    # the audio stream is denoised in every stage, even when only the video is kept (audio=False)
    audio_tokens = AudioLatentShape.from_video_pixel_shape(req.num_frames, req.fps, cfg.audio_vae).frames
    for i, stage in enumerate(spec.stages):
        lat = VideoLatentShape.from_pixel_shape(req.num_frames, req.height // stage.size_divisor,
                                                req.width // stage.size_divisor, cfg.vae.latent_channels, sf)
        passes = 1 if stage.denoiser is DenoiserKind.SIMPLE else 4
        batch = max(1, min(passes, req.passes_per_call))
        split_passes = req.ranks > 1 and splits_passes(req.parallel, passes, req.ranks)
        if split_passes:  # each rank runs its share of the passes, whole
            batch = min(batch, -(-passes // req.ranks))
        act = transformer_activation_bytes(tc, lat.token_count(), audio_tokens, L, batch, dt, req.cpu,
                                           1 if split_passes else req.ranks)
        weights = resident_transformer + (kept if req.keep_models else 0)
        if stage.distilled_lora is not None and req.memory == "eager" and not req.keep_models:
            weights += lora_file  # loaded for the fusion, kept until the stages end
        phases[f"stage{i + 1}"] = PhaseMemory(weights, act)
        if i == 0 and spec.two_stage:
            # the transformer stays loaded while the latent is upsampled between the stages
            values = (up_cfg.mid_channels if up_cfg is not None else 1024) * lat.frames * lat.height * lat.width * 4
            per_value = UPSAMPLER_FLOAT32_BYTES_PER_VALUE + UPSAMPLER_DTYPE_COPIES * dt.size
            phases["upsample"] = PhaseMemory(resident_transformer + (kept if req.keep_models else up_bytes),
                                             per_value * values)
    final = VideoLatentShape.from_pixel_shape(req.num_frames, req.height, req.width, cfg.vae.latent_channels, sf)
    from .generations import describe

    if describe(ckpt).video_decoder == "diffusion":
        decode = diffusion_decode_activation_bytes(ckpt, tuple(final), req.decode_budget, dt)
    else:
        stages, scale_factors, out_channels = _decoder_stages(ckpt)
        decode = video_decode_activation_bytes(stages, scale_factors, out_channels, tuple(final),
                                               req.decode_budget, req.cpu)
    after = kept + (full if req.memory == "eager" else nonblock) if req.keep_models else 0
    phases["video_decode"] = PhaseMemory(after + comp["vae_decoder"], decode)
    if req.audio:
        phases["audio_decode"] = PhaseMemory(after + comp["audio_vae_decoder"] + comp["vocoder"],
                                             _audio_activation_bytes(cfg, req.num_frames / req.fps))
    return MemoryPrediction(req, phases, tuple(notes))


# ------------------------------------------------------------------------------------------------
# the check and its advice

def check_fits(prediction: MemoryPrediction, budget_bytes: int | None = None) -> MemoryPrediction:
    """``prediction`` when its peak fits ``budget_bytes`` (default the device's memory), else a
    :class:`PreflightError` naming the prediction and the options that were re-predicted to fit."""
    from .validation import device_memory_bytes

    budget = device_memory_bytes() if budget_bytes is None else int(budget_bytes)
    if prediction.peak <= budget:
        return prediction
    raise PreflightError(f"{prediction.describe()}; that exceeds the {budget / GB:.1f} GB memory budget. "
                         + " ".join(advice(prediction, budget)))


def _fits(req: MemoryRequest, budget: int, **changes) -> MemoryPrediction | None:
    p = _predict(dataclasses.replace(req, **changes))
    return p if p.peak <= budget else None


def advice(prediction: MemoryPrediction, budget: int) -> list[str]:
    """Concrete options that fit ``budget``, each re-predicted: streaming, quantization, a smaller
    size at the same aspect ratio, fewer frames."""
    from .generations import describe
    from .model_files import RELEASE_NAMES

    req, out = prediction.request, []
    if prediction.phase == "video_decode" and describe(req.checkpoint).video_decoder == "diffusion":
        out.append(f"The diffusion video decoder's activations are the peak: --video-decoder conv decodes with the "
                   f"release's convolutional VAE file ({RELEASE_NAMES['video_vae_conv']}) in far less.")
    if req.ranks > 1 and req.parallel != "sequence" and (p := _fits(req, budget, parallel="sequence")):
        out.append(f"--parallel sequence fits (predicted {p.peak / GB:.1f} GB per rank).")
    if req.memory == "eager" and (p := _fits(req, budget, memory="stream")):
        out.append(f"--memory stream fits (predicted {p.peak / GB:.1f} GB).")
    if not req.checkpoint.quantization and req.quantize is None:  # the first that fits, as little changed as can be
        for q, mode in [(q, m) for q in ("q8", "q4") for m in dict.fromkeys((req.memory, "stream"))]:
            if p := _fits(req, budget, quantize=q, memory=mode):
                flag = " with --memory stream" if mode != req.memory else ""
                out.append(f"Converting with convert.py --quantize {q}{flag} fits (predicted {p.peak / GB:.1f} GB).")
                break
    size = largest_size(req, budget)
    if size is not None:
        out.append(f"At this aspect ratio, --height {size[0]} --width {size[1]} fits.")
    frames = most_frames(req, budget)
    if frames is not None:
        out.append(f"At {req.width}x{req.height}, --num-frames {frames} fits.")
    if not out:
        out.append("Nothing tried fits (streaming, q8/q4, smaller sizes, fewer frames): use a device with more "
                   "memory.")
    return out


def largest_size(req: MemoryRequest, budget: int) -> tuple[int, int] | None:
    """The largest valid (height, width) below the request's, near its aspect ratio, that fits: multiples
    of the VAE's 32 pixels, 64 for two-stage pipelines (their stage 1 runs at half size)."""
    from .pipeline_stages import PIPELINES

    div = req.checkpoint.config.vae.scale_factors[1] * (2 if PIPELINES[req.pipeline].two_stage else 1)
    for h in range(req.height // div * div, 0, -div):
        w = max(div, round(h * req.width / req.height / div) * div)
        if (h, w) != (req.height, req.width) and w <= req.width and _fits(req, budget, height=h, width=w):
            return h, w
    return None


def most_frames(req: MemoryRequest, budget: int) -> int | None:
    """The most frames (8k+1) below the request's that fit at its size (bisection: peaks grow with frames)."""
    t = req.checkpoint.config.vae.scale_factors[0]
    lo, hi = 0, (req.num_frames - 1) // t - 1  # k in frames = k*t + 1
    if hi < 0 or not _fits(req, budget, num_frames=1):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits(req, budget, num_frames=mid * t + 1):
            lo = mid
        else:
            hi = mid - 1
    return lo * t + 1
