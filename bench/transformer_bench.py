"""Transformer benchmark: efficiency, guidance, compile, memory and the full-size 22B shapes, all on
random weights (nothing is downloaded).

    python bench/transformer_bench.py                 # default run (~10 min on 2 CPU cores)
    python bench/transformer_bench.py --quick         # smoke run (~1-2 min)
    python bench/transformer_bench.py --full-size     # + the real 48-block transformer, q4 eager / q8 stream
    python bench/transformer_bench.py --only fullsize --full-size   # the full-size rows alone

Prints Markdown tables and writes ``bench/results/<timestamp>.json`` / ``.md`` and
``bench/results/latest.md``. ``bench/README.md`` explains every row.

The reduced model keeps the LTX-2.3 block structure and head sizes (video 128, audio 64; gated attention,
cross-attention adaLN, A/V cross-attention), with fewer heads and blocks; the video token count keeps the
tokens-to-width ratio of a real 704x480x97 stage (4290 tokens at width 4096), the text context the real
1024 tokens scaled the same way, the audio tokens the real ~101 scaled the same way. Memory figures are
measured in a child process per configuration (MLX peak and the process's VmHWM), so peaks never mix.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402

FIXTURE = ROOT / "tests/reference/fixtures/real23-s1234/real23-ltx-2.3.safetensors"
RESULTS = ROOT / "bench/results"
REF_PY = ROOT / ".venv-reference/bin/python"
PREFIX = "model.diffusion_model."
GB = 1e9
# the real LTX-2.3 transformer (REFERENCE-MAP §1.2 / §2.1)
REAL_HEADS, VIDEO_HEAD, AUDIO_HEAD, REAL_BLOCKS, REAL_CONTEXT = 32, 128, 64, 48, 1024
REAL_STAGE = (97, 480, 704)  # frames, height, width of the stage whose token/width ratio is kept
REAL_STG_BLOCK = 28  # LTX-2.3 default STG block of 48
DTYPES = {"bfloat16": mx.bfloat16, "float32": mx.float32}


# ------------------------------------------------------------------------------------------------
# small helpers

def hwm_bytes() -> int:
    """VmHWM of this process (peak RSS since exec), bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def timed(fn, warmup: int = 1, reps: int = 2) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"min": min(times), "times": times}


def gbs(n) -> str:
    if n is None:
        return "—"
    return f"{n / GB:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def fmt(x, spec=".2f", none="—") -> str:
    return none if x is None else format(x, spec)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# configurations and checkpoints

def fixture_raw_metadata() -> dict[str, str]:
    _, meta = mx.load(str(FIXTURE), return_metadata=True)
    return dict(meta)


def make_metadata(heads: int, blocks: int, decoder_base: int = 128) -> dict[str, str]:
    """The real23 fixture's metadata (the 2.3 flags and block lists) with the real head sizes, channel
    counts and VAE latent width, ``heads`` heads per stream and ``blocks`` blocks."""
    meta = fixture_raw_metadata()
    cfg = json.loads(meta["config"])
    cfg["transformer"].update(
        num_attention_heads=heads, attention_head_dim=VIDEO_HEAD, audio_num_attention_heads=heads,
        audio_attention_head_dim=AUDIO_HEAD, cross_attention_dim=heads * VIDEO_HEAD,
        audio_cross_attention_dim=heads * AUDIO_HEAD, in_channels=128, out_channels=128, audio_in_channels=128,
        audio_out_channels=128, num_layers=blocks, caption_channels=3840)
    cfg["vae"].update(latent_channels=128, decoder_base_channels=decoder_base, encoder_base_channels=128)
    cfg["audio_vae"]["model"]["params"]["ddconfig"].update(z_channels=8)
    meta["config"] = json.dumps(cfg)
    return meta


def ltx_config(meta: dict[str, str]):
    from mlx_ltx.config import LTXConfig, parse_metadata

    return LTXConfig.from_metadata(parse_metadata(meta))


def init_value(key: str, shape, rkey, dtype=mx.float32) -> mx.array:
    """Random weights that keep activations O(1): Linear weights uniform with std 1/sqrt(fan_in),
    norm weights 1, everything else (biases, adaLN tables, statistics) small normals."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "weight" and ("norm" in key.rsplit(".", 2)[-2]):
        return mx.ones(shape, dtype=dtype)
    if leaf == "weight" and len(shape) == 2:
        a = math.sqrt(3.0 / shape[1])
        return mx.random.uniform(-a, a, shape, dtype=dtype, key=rkey)
    if "std-of-means" in key:
        return mx.ones(shape, dtype=dtype)
    if leaf == "weight" and len(shape) == 5:  # conv3d (O, kt, kh, kw, I) in MLX layout
        fan_in = math.prod(shape[1:])
        a = math.sqrt(3.0 / fan_in)
        return mx.random.uniform(-a, a, shape, dtype=dtype, key=rkey)
    return (0.02 * mx.random.normal(shape, key=rkey)).astype(dtype)


def randomize(module: nn.Module, seed: int, dtype=mx.float32) -> nn.Module:
    params = tree_flatten(module.parameters())
    new = []
    for i, (k, v) in enumerate(params):
        new.append((k, init_value(k, v.shape, mx.random.key(seed * 1_000_003 + i), dtype)))
    module.update(tree_unflatten(new))
    mx.eval(module.parameters())
    return module


def write_reduced_checkpoint(path: str, meta: dict[str, str], seed: int) -> int:
    """A single-file checkpoint in the official layout (``model.diffusion_model.*`` keys, bf16,
    the edited metadata) holding a random transformer. Returns its tensor bytes."""
    from mlx_ltx.models.transformer import LTXModel

    model = LTXModel(ltx_config(meta).transformer)
    randomize(model, seed)
    tensors = {PREFIX + k: v.astype(mx.bfloat16) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(path, tensors, metadata=meta)
    return sum(v.nbytes for v in tensors.values())


# ------------------------------------------------------------------------------------------------
# inputs

def shapes_for(heads: int, quick: bool = False) -> dict:
    """Token counts of the reduced model: the real 704x480x97 stage's tokens / width ratio at width
    128·heads (video grid F x H x W with the real 13 latent frames), the text context and the audio
    tokens scaled by the same factor."""
    from mlx_ltx.latent_tools import VideoLatentShape
    from mlx_ltx.models.audio_vae import AudioLatentShape

    cfg = ltx_config(make_metadata(REAL_HEADS, 1))
    f, h, w = REAL_STAGE
    real = VideoLatentShape.from_pixel_shape(f, h, w, 128, cfg.vae.scale_factors)
    real_tokens = real.frames * real.height * real.width
    real_audio = AudioLatentShape.from_video_pixel_shape(f, 24.0, cfg.audio_vae).frames
    scale = heads / REAL_HEADS
    want = real_tokens * scale
    F = real.frames
    aspect = real.width / real.height
    best = None
    for H in range(1, real.height + 1):  # the grid closest to the wanted count, then to the real aspect
        for W in range(H, 2 * H + 1):
            n = F * H * W
            cand = (abs(n - want), abs(math.log(W / H / aspect)), n, H, W)
            if best is None or cand < best:
                best = cand
    best = best[2:]
    _, H, W = best
    return {"grid": (F, H, W), "video_tokens": F * H * W, "audio_tokens": max(1, round(real_audio * scale)),
            "context": max(8, round(REAL_CONTEXT * scale)), "real_tokens": real_tokens, "real_audio": real_audio,
            "real_ratio": real_tokens / (REAL_HEADS * VIDEO_HEAD), "ratio": F * H * W / (heads * VIDEO_HEAD)}


def make_states(cfg, grid, audio_tokens: int, context: int, dtype, seed: int = 7):
    """Video / audio LatentStates, positive and negative contexts (widths of the transformer)."""
    from mlx_ltx.latent_tools import LatentState, VideoLatentShape, video_positions
    from mlx_ltx.models.audio_vae import audio_positions

    tc = cfg.transformer
    F, H, W = grid
    T = F * H * W
    keys = mx.random.split(mx.random.key(seed), 6)
    vlat = mx.random.normal((1, T, tc.in_channels), key=keys[0]).astype(dtype)
    alat = mx.random.normal((1, audio_tokens, tc.audio_in_channels), key=keys[1]).astype(dtype)
    vpos = video_positions(VideoLatentShape(1, 128, F, H, W), cfg.vae.scale_factors, 24.0)
    apos = audio_positions(audio_tokens, cfg.audio_vae, 1)
    vs = LatentState(vlat, mx.ones((1, T, 1)), vpos, vlat)
    as_ = LatentState(alat, mx.ones((1, audio_tokens, 1)), apos, alat)
    ctx = {
        "v": mx.random.normal((1, context, tc.inner_dim), key=keys[2]).astype(dtype),
        "a": mx.random.normal((1, context, tc.audio_inner_dim), key=keys[3]).astype(dtype),
        "v_neg": mx.random.normal((1, context, tc.inner_dim), key=keys[4]).astype(dtype),
        "a_neg": mx.random.normal((1, context, tc.audio_inner_dim), key=keys[5]).astype(dtype),
    }
    mx.eval(vlat, alat, vpos, apos, *ctx.values())
    return vs, as_, ctx


def modalities(vs, as_, ctx, sigma: float = 0.7):
    from mlx_ltx.denoising import modality_from_latent_state

    return (modality_from_latent_state(vs, ctx["v"], sigma), modality_from_latent_state(as_, ctx["a"], sigma))


def guided_denoiser(ctx, num_blocks: int, max_batch_size):
    """GuidedDenoiser with the LTX-2.3 default guider parameters, the STG block moved to the same
    relative depth of the reduced model (28 of 48)."""
    from dataclasses import replace

    from mlx_ltx.denoising import GuidedDenoiser
    from mlx_ltx.guidance import LTX_2_3_PARAMS, MultiModalGuider

    stg = (min(num_blocks - 1, round(REAL_STG_BLOCK * num_blocks / REAL_BLOCKS)),)
    vp = replace(LTX_2_3_PARAMS.video_guider_params, stg_blocks=stg)
    ap = replace(LTX_2_3_PARAMS.audio_guider_params, stg_blocks=stg)
    return GuidedDenoiser(ctx["v"], ctx["a"], MultiModalGuider(vp, ctx["v_neg"]), MultiModalGuider(ap, ctx["a_neg"]),
                          max_batch_size=max_batch_size), stg


def run_step(model, denoiser, vs, as_, sigma: float = 0.7):
    rv, ra = denoiser(model, vs, as_, sigma, 0)
    mx.eval(rv.denoised, ra.denoised)


# ------------------------------------------------------------------------------------------------
# recording the GEMMs and attentions of a forward

class Recorder:
    """Records every nn.Linear call (M, K, N) and every fused SDPA call (q, k shapes, mask) while a
    forward's graph is built (patches the classes in this process only)."""

    def __init__(self):
        self.gemms: list[tuple[int, int, int]] = []
        self.sdpa: list[dict] = []

    def __enter__(self):
        rec = self
        self._linear = nn.Linear.__call__
        self._qlinear = nn.QuantizedLinear.__call__
        self._sdpa = mx.fast.scaled_dot_product_attention
        orig_linear, orig_q, orig_sdpa = self._linear, self._qlinear, self._sdpa

        def linear(mod, x):
            rec.gemms.append((math.prod(x.shape[:-1]), mod.weight.shape[1], mod.weight.shape[0]))
            return orig_linear(mod, x)

        def qlinear(mod, x):
            n, k = mod.weight.shape[0], x.shape[-1]
            rec.gemms.append((math.prod(x.shape[:-1]), k, n))
            return orig_q(mod, x)

        def sdpa(q, k, v, *a, **kw):
            mask = kw.get("mask")
            rec.sdpa.append({"q": tuple(q.shape), "k": tuple(k.shape), "scale": kw.get("scale"),
                             "mask": None if mask is None else tuple(mask.shape), "dtype": str(q.dtype)})
            return orig_sdpa(q, k, v, *a, **kw)

        nn.Linear.__call__ = linear
        nn.QuantizedLinear.__call__ = qlinear
        mx.fast.scaled_dot_product_attention = sdpa
        return self

    def __exit__(self, *exc):
        nn.Linear.__call__ = self._linear
        nn.QuantizedLinear.__call__ = self._qlinear
        mx.fast.scaled_dot_product_attention = self._sdpa

    def linear_flops(self) -> int:
        return sum(2 * m * k * n for m, k, n in self.gemms)

    def attention_flops(self) -> int:  # QK^T and PV: 2·Tq·Tk·d each, per batch and head
        return sum(4 * s["q"][0] * s["q"][1] * s["q"][2] * s["k"][2] * s["q"][3] for s in self.sdpa)


def gemm_alone(gemms, dtype, seed: int = 3):
    """The same sequence of x @ W.T GEMMs on random operands, as one evaluation."""
    ops = []
    for i, (m, k, n) in enumerate(gemms):
        kx, kw = mx.random.split(mx.random.key(seed + i))
        ops.append((mx.random.normal((m, k), key=kx).astype(dtype), mx.random.normal((n, k), key=kw).astype(dtype)))
    mx.eval(ops)
    return lambda: mx.eval([x @ w.T for x, w in ops])


def sdpa_alone(calls, dtype, seed: int = 5):
    ops = []
    for i, s in enumerate(calls):
        ks = mx.random.split(mx.random.key(seed + i), 4)
        q = mx.random.normal(s["q"], key=ks[0]).astype(dtype)
        k = mx.random.normal(s["k"], key=ks[1]).astype(dtype)
        v = mx.random.normal(s["k"], key=ks[2]).astype(dtype)
        mask = None if s["mask"] is None else mx.zeros(s["mask"], dtype=dtype)
        ops.append((q, k, v, s["scale"] or 1 / math.sqrt(s["q"][3]), mask))
    mx.eval([o[:3] for o in ops])
    return lambda: mx.eval([mx.fast.scaled_dot_product_attention(q, k, v, scale=sc, mask=m) for q, k, v, sc, m in ops])


# ------------------------------------------------------------------------------------------------
# the reference (PyTorch) forward, in its own venv

TORCH_CHILD = r'''
import json, sys, time, types
import torch
try:
    import torchaudio  # noqa: F401
except Exception:  # ltx_core's audio package imports torchaudio; the transformer never uses it
    try:
        from transformers.utils import import_utils as _tf_iu
        _tf_iu.is_torchaudio_available()
    except Exception:
        pass
    sys.modules["torchaudio"] = types.ModuleType("torchaudio")
from safetensors.torch import load_file
from ltx_core.loader import SingleGPUModelBuilder
from ltx_core.model.transformer import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator
from ltx_core.model.transformer.modality import Modality

ckpt, inputs, dtype_name, gemm_path, reps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
torch.set_num_threads(int(sys.argv[6]))
dt = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
model = SingleGPUModelBuilder(model_class_configurator=LTXModelConfigurator, model_path=ckpt,
                              model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP).build(device=torch.device("cpu"), dtype=dt).eval()
x = load_file(inputs)
def mod(p):
    return Modality(latent=x[p + "latent"].to(dt), sigma=x[p + "sigma"], timesteps=x[p + "timesteps"],
                    positions=x[p + "positions"], context=x[p + "context"].to(dt), context_mask=None)
video, audio = mod("v."), mod("a.")
def best(fn, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)
with torch.inference_mode():
    fwd = best(lambda: model(video, audio, None))
    gemms = json.load(open(gemm_path))
    g = torch.Generator().manual_seed(0)
    ops = [(torch.randn(m, k, generator=g).to(dt), torch.randn(n, k, generator=g).to(dt)) for m, k, n in gemms]
    gemm = best(lambda: [a @ b.T for a, b in ops])
print(json.dumps({"forward_s": fwd, "gemm_s": gemm, "threads": torch.get_num_threads(), "torch": torch.__version__}))
'''


def reference_forward(ckpt: str, vs, as_, ctx, dtype_name: str, gemms, tmp: str, reps: int, threads: int) -> dict:
    if not REF_PY.exists():
        return {"error": f"{REF_PY} not found"}
    from mlx_ltx.latent_tools import timesteps_from_mask

    arrays = {}
    for p, st, c in (("v.", vs, ctx["v"]), ("a.", as_, ctx["a"])):
        arrays[p + "latent"] = st.latent.astype(mx.float32)
        arrays[p + "sigma"] = mx.array([0.7], dtype=mx.float32)
        arrays[p + "timesteps"] = timesteps_from_mask(st.denoise_mask, 0.7).reshape(1, -1)
        arrays[p + "positions"] = st.positions.astype(mx.float32)
        arrays[p + "context"] = c.astype(mx.float32)
    inputs = os.path.join(tmp, "ref_inputs.safetensors")
    mx.save_safetensors(inputs, arrays)
    gemm_path = os.path.join(tmp, "gemms.json")
    with open(gemm_path, "w") as f:
        json.dump(gemms, f)
    script = os.path.join(tmp, "torch_child.py")
    with open(script, "w") as f:
        f.write(TORCH_CHILD)
    r = subprocess.run([str(REF_PY), script, ckpt, inputs, dtype_name, gemm_path, str(reps), str(threads)],
                       capture_output=True, text=True, cwd=str(ROOT))
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# child processes (one per memory configuration)

def run_child(kind: str, params: dict, timeout: float | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-params", json.dumps(params)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if r.returncode != 0:
        tail = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        return {"error": f"exit {r.returncode}: " + (tail[-1][:300] if tail else "no output")}
    return json.loads(r.stdout.strip().splitlines()[-1])


def transformer_file_bytes(ckpt, dtype) -> int:
    """Bytes of the transformer as loaded at ``dtype`` (quantized tensors as stored)."""
    from mlx_ltx.loading import Checkpoint

    sizes = {"BF16": 2, "F16": 2, "F32": 4, "U32": 4, "U8": 1, "I32": 4}
    ck = ckpt if isinstance(ckpt, Checkpoint) else Checkpoint(ckpt)
    total = 0
    for new, old in ck.component_keys("transformer").items():
        n = math.prod(ck.shapes[old])
        stored = ck.dtypes[old]
        quantized_part = stored == "U32" or (new.endswith((".scales", ".biases")) and ck.quantization)
        total += n * (sizes.get(stored, 4) if quantized_part or not stored.startswith(("BF", "F")) else dtype.size)
    return total


def predicted(ckpt, dtype, memory: str, video_tokens: int, audio_tokens: int, context: int, batch: int) -> dict:
    """Resident weights and one forward's working set as mlx_ltx.preflight counts them (None without it)."""
    try:
        from mlx_ltx import preflight
        from mlx_ltx.loading import Checkpoint
    except ImportError:
        return {}
    try:
        ck = ckpt if isinstance(ckpt, Checkpoint) else Checkpoint(ckpt)
        full, _, _ = preflight.transformer_bytes(ck, dtype)
        resident = preflight.resident_transformer_bytes(ck, dtype, memory)
        act = preflight.transformer_activation_bytes(ck.config.transformer, video_tokens, audio_tokens, context, batch,
                                                     dtype, cpu=mx.default_device() == mx.cpu)
        return {"load": resident, "forward": resident + act, "weights": full, "activations": act}
    except Exception as e:  # the module is being written concurrently: its API may move
        return {"error": f"{type(e).__name__}: {e}"}


def measured_load(path: str, dtype, memory: str):
    """(checkpoint, model, measurements) of loading a transformer and evaluating its resident weights:
    seconds, MLX peak, VmHWM before and after, and the weights' bytes at ``dtype``."""
    from mlx_ltx.loading import Checkpoint
    from mlx_ltx.models.transformer import LTXModel

    out = {"hwm_start": hwm_bytes()}
    mx.reset_peak_memory()
    t = time.perf_counter()
    ckpt = Checkpoint(path)
    model = LTXModel.from_checkpoint(ckpt, dtype, memory=memory)
    mx.eval(model.resident_parameters())
    out["load_s"] = time.perf_counter() - t
    out["load_peak"] = mx.get_peak_memory()
    out["hwm_load"] = hwm_bytes()
    out["weights"] = transformer_file_bytes(ckpt, dtype)
    return ckpt, model, out


def child_step(p: dict) -> dict:
    """Load (eager / stream), then one guided DEV step; peaks after each."""
    dtype = DTYPES[p["dtype"]]
    ckpt, model, out = measured_load(p["ckpt"], dtype, p["memory"])
    out["resident"] = sum(a.nbytes for a in model.resident_parameters())
    vs, as_, ctx = make_states(ckpt.config, tuple(p["grid"]), p["audio_tokens"], p["context"], dtype)
    if p.get("adaln") is not None:
        # a stage-2 forward (no guidance); image-to-video: the first latent frame conditioned, so two
        # distinct timesteps (σ and 0); text-to-video: one
        from mlx_ltx.denoising import SimpleDenoiser

        F, H, W = p["grid"]
        if p.get("conditioned", True):
            mask = mx.concatenate([mx.zeros((1, H * W, 1)), mx.ones((1, (F - 1) * H * W, 1))], axis=1)
            vs = vs.replace(denoise_mask=mask)
        if p["adaln"] == "per_token":  # the reference's (and this port's former) per-token tables
            model.max_distinct_timesteps = 0
        den = SimpleDenoiser(ctx["v"], ctx["a"])
    else:
        den, _ = guided_denoiser(ctx, model.num_blocks, p["max_batch_size"])
    mx.reset_peak_memory()
    t = time.perf_counter()
    run_step(model, den, vs, as_)
    out["step_s"] = time.perf_counter() - t
    out["step_peak"] = mx.get_peak_memory()
    out["hwm"] = hwm_bytes()
    batch = 4 if p["max_batch_size"] is None else 1
    out["predicted"] = predicted(ckpt, dtype, p["memory"], math.prod(p["grid"]), p["audio_tokens"], p["context"], batch)
    return out


def child_decode(p: dict) -> dict:
    """A random video decoder of the 2.3 block structure; untiled decode vs tiled (chunks yielded)."""
    from mlx_ltx.models import vae_tiling
    from mlx_ltx.models.video_decoder import VideoDecoder

    cfg = ltx_config(make_metadata(2, 1, p["decoder_base"]))
    out = {"hwm_start": hwm_bytes()}
    mx.reset_peak_memory()
    dec = VideoDecoder(cfg.vae)
    randomize(dec, 11, mx.bfloat16)
    out["weights"] = sum(v.nbytes for _, v in tree_flatten(dec.parameters()))
    out["load_peak"] = mx.get_peak_memory()
    latent = mx.random.normal((1, 128, *p["latent"]), key=mx.random.key(2))
    mx.eval(latent)
    untiled_est = vae_tiling.estimate_decode_bytes(dec.stage_widths(), tuple(p["latent"]), dec.dtype)
    mx.reset_peak_memory()
    t = time.perf_counter()
    if p["mode"] == "eager":
        mx.eval(dec(latent))
        tiles = 1
        budget = None
    else:
        budget = untiled_est // 3
        tiling = vae_tiling.auto_tiling(dec, latent.shape, memory_budget=budget)
        tiles = 0
        for chunk in dec.iter_tiled_decode(latent, tiling):
            mx.eval(chunk)
            tiles += 1
        out["tiling"] = None if tiling is None else str(tiling.latent_sizes(dec.video_scale_factors))
    out["decode_s"] = time.perf_counter() - t
    out["decode_peak"] = mx.get_peak_memory()
    out["chunks"] = tiles
    out["hwm"] = hwm_bytes()
    try:
        from mlx_ltx import preflight

        b = budget if budget is not None else 1 << 62
        out["predicted"] = out["weights"] + preflight.video_decode_activation_bytes(
            dec.stage_widths(), dec.video_scale_factors, dec.out_channels, (1, 128, *p["latent"]), b)
    except Exception as e:
        out["predicted_error"] = f"{type(e).__name__}: {e}"
    return out


def child_fullsize(p: dict) -> dict:
    """Open a converted full-size folder, load (eager / stream), run the forward at 256x256x9
    through the first ``blocks`` blocks (all resident weights loaded either way)."""
    from mlx_ltx.latent_tools import VideoLatentShape
    from mlx_ltx.models.audio_vae import AudioLatentShape

    dtype = mx.bfloat16
    ckpt, model, out = measured_load(p["folder"], dtype, p["memory"])
    cfg = ckpt.config
    f, h, w = p["pixels"]
    lat = VideoLatentShape.from_pixel_shape(f, h, w, cfg.vae.latent_channels, cfg.vae.scale_factors)
    grid = (lat.frames, lat.height, lat.width)
    audio_tokens = AudioLatentShape.from_video_pixel_shape(f, 24.0, cfg.audio_vae).frames
    vs, as_, ctx = make_states(cfg, grid, audio_tokens, p["context"], dtype)
    video, audio = modalities(vs, as_, ctx)
    total = model.num_blocks
    k = min(total, p["blocks"])
    all_blocks = model.transformer_blocks  # keeps every eagerly loaded block resident during the forward
    model.transformer_blocks = all_blocks[:k]
    mx.reset_peak_memory()
    t = time.perf_counter()
    mx.eval(*model(video, audio))
    out["forward_s"] = time.perf_counter() - t
    out["blocks_run"], out["blocks_total"] = k, total
    out["forward_peak"] = mx.get_peak_memory()
    out["hwm"] = hwm_bytes()
    out["video_tokens"], out["audio_tokens"], out["context"] = math.prod(grid), audio_tokens, p["context"]
    out["resident_after"] = sum(a.nbytes for blk in all_blocks for _, a in tree_flatten(blk.parameters())
                                if not (p["memory"] == "stream"))
    out["predicted"] = predicted(ckpt, dtype, p["memory"], math.prod(grid), audio_tokens, p["context"], 1)
    return out


CHILDREN = {"step": child_step, "decode": child_decode, "fullsize": child_fullsize}


# ------------------------------------------------------------------------------------------------
# the full-size folder, written block by block

def write_fullsize_folder(folder: str, quantize: str, group_size: int = 64, seed: int = 0) -> dict:
    """A converted-folder layout (config.json with format mlx_ltx, metadata, quantization settings,
    components -> files) of the real 48-block LTX-2.3 transformer with random weights, one file per
    block: the block Linears convert.py quantizes are quantized with mx.quantize (per distinct shape
    one random matrix, rolled by the block index), the rest random per block. Never more than one
    block's tensors in memory."""
    from mlx_ltx.convert import QUANT_BITS, _QUANTIZED_LINEAR, should_quantize
    from mlx_ltx.loading import CONVERTED_CONFIG, CONVERTED_FORMAT
    from mlx_ltx.config import parse_metadata
    from mlx_ltx.models.transformer import LTXModel

    bits = QUANT_BITS[quantize] if quantize else None
    raw = make_metadata(REAL_HEADS, REAL_BLOCKS)
    cfg = ltx_config(raw)
    skeleton = LTXModel(cfg.transformer)  # lazy arrays: nothing is allocated
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(skeleton.parameters())}
    del skeleton
    os.makedirs(folder, exist_ok=True)
    pools: dict = {}

    def pooled(shape):
        if shape not in pools:
            a = math.sqrt(3.0 / shape[1])
            w = mx.random.uniform(-a, a, shape, dtype=mx.bfloat16, key=mx.random.key(seed + len(pools)))
            pools[shape] = mx.quantize(w, group_size=group_size, bits=bits) if bits else (w,)
            mx.eval(pools[shape])
        return pools[shape]

    files, layers, total = [], 0, 0
    groups: dict[str, list[str]] = {"rest": []}
    for k in shapes:
        if k.startswith("transformer_blocks."):
            groups.setdefault(k.split(".")[1], []).append(k)
        else:
            groups["rest"].append(k)
    for gi, (name, keys) in enumerate(groups.items()):
        block = 0 if name == "rest" else int(name)
        tensors = {}
        for j, k in enumerate(keys):
            full, shape = PREFIX + k, shapes[k]
            if len(shape) == 2 and k.endswith(".weight") and (bits is None or should_quantize(full, shape, group_size)) \
                    and _QUANTIZED_LINEAR.match(full):
                parts = [mx.roll(t, block, axis=0) for t in pooled(shape)]
                if bits:
                    base = full[: -len(".weight")]
                    tensors[full], tensors[base + ".scales"], tensors[base + ".biases"] = parts
                    layers += 1
                else:
                    tensors[full] = parts[0]
            else:
                tensors[full] = init_value(k, shape, mx.random.key(seed * 7919 + gi * 1000 + j), mx.bfloat16)
        fname = f"transformer-{gi + 1:05d}.safetensors"
        mx.save_safetensors(os.path.join(folder, fname), tensors)
        total += sum(v.nbytes for v in tensors.values())
        files.append(fname)
        del tensors
    metadata = parse_metadata(raw)
    quant = None
    if bits:
        quant = {"bits": bits, "group_size": group_size, "mode": "affine", "layers": layers,
                 "predicate": _QUANTIZED_LINEAR.pattern}
    info = {"format": CONVERTED_FORMAT, "format_version": 1, "model_version": metadata.get("model_version"),
            "metadata": metadata, "quantization": quant, "components": {"transformer": files}, "upsamplers": {},
            "loras": {}, "dtype": "bfloat16", "variant": "dev"}
    with open(os.path.join(folder, CONVERTED_CONFIG), "w") as f:
        json.dump(info, f, indent=1)
    return {"bytes": total, "files": len(files), "quantized_layers": layers}


def fullsize_weight_bytes() -> dict:
    """bf16 / q8 / q4 bytes of the real transformer, from its shapes (convert.py's layout)."""
    from mlx_ltx.convert import _out_bytes, should_quantize
    from mlx_ltx.models.transformer import LTXModel

    skeleton = LTXModel(ltx_config(make_metadata(REAL_HEADS, REAL_BLOCKS)).transformer)
    shapes = {PREFIX + k: tuple(v.shape) for k, v in tree_flatten(skeleton.parameters())}
    out = {}
    for name, bits in (("bf16", None), ("q8", 8), ("q4", 4)):
        out[name] = sum(_out_bytes(s, 2, bits if bits and should_quantize(k, s, 64) else None, 64)
                        for k, s in shapes.items())
    out["params"] = sum(math.prod(s) for s in shapes.values())
    return out


# ------------------------------------------------------------------------------------------------
# the benchmark rows

def efficiency_rows(args, ckpt: str, shp: dict, tmp: str, res: dict) -> None:
    from mlx_ltx.loading import Checkpoint
    from mlx_ltx.models.transformer import LTXModel

    res["efficiency"] = []
    for dname in args.dtype:
        dtype = DTYPES[dname]
        log(f"efficiency {dname}: load")
        ck = Checkpoint(ckpt)
        model = LTXModel.from_checkpoint(ck, dtype)
        mx.eval(model.parameters())
        vs, as_, ctx = make_states(ck.config, shp["grid"], shp["audio_tokens"], shp["context"], dtype)
        video, audio = modalities(vs, as_, ctx)
        with Recorder() as rec:
            out = model(video, audio)
        mx.eval(out)
        fwd = timed(lambda m=model: mx.eval(*m(video, audio)), 0, args.reps)["min"]  # the recorded forward warmed up
        log(f"efficiency {dname}: forward {fwd:.2f} s; GEMMs alone")
        g = timed(gemm_alone(rec.gemms, dtype), 0, args.reps)["min"]
        s = timed(sdpa_alone(rec.sdpa, dtype), 0, args.reps)["min"]
        lin, att = rec.linear_flops(), rec.attention_flops()
        row = {"dtype": dname, "forward_s": fwd, "gemm_s": g, "sdpa_s": s, "linear_flops": lin,
               "attention_flops": att, "gemms": len(rec.gemms), "sdpa_calls": len(rec.sdpa),
               "achieved_gflops": (lin + att) / fwd / 1e9, "ceiling_gflops": lin / g / 1e9}
        row["efficiency"] = row["achieved_gflops"] / row["ceiling_gflops"]
        row["elementwise_s"] = max(0.0, fwd - g - s)
        if not args.no_reference:
            log(f"efficiency {dname}: reference forward (torch)")
            ref = reference_forward(ckpt, vs, as_, ctx, dname, rec.gemms, tmp, args.reps, args.torch_threads)
            if "error" not in ref:
                ref["achieved_gflops"] = (lin + att) / ref["forward_s"] / 1e9
                ref["ceiling_gflops"] = lin / ref["gemm_s"] / 1e9
                ref["efficiency"] = ref["achieved_gflops"] / ref["ceiling_gflops"]
                ref["mlx_over_torch_time"] = fwd / ref["forward_s"]
            row["reference"] = ref
        res["efficiency"].append(row)
        if dname == "bfloat16":
            res["_bf16_model"] = (model, vs, as_, ctx, fwd)
        del model


def guidance_rows(args, ckpt: str, shp: dict, res: dict) -> None:
    from mlx_ltx.loading import Checkpoint
    from mlx_ltx.models.transformer import LTXModel

    if "_bf16_model" in res:
        model, vs, as_, ctx, _ = res["_bf16_model"]
    else:
        ck = Checkpoint(ckpt)
        model = LTXModel.from_checkpoint(ck, mx.bfloat16)
        mx.eval(model.parameters())
        vs, as_, ctx = make_states(ck.config, shp["grid"], shp["audio_tokens"], shp["context"], mx.bfloat16)
    video, audio = modalities(vs, as_, ctx)
    log("guidance: one forward")
    one = timed(lambda: mx.eval(*model.denoise(video, audio)), 0 if "_bf16_model" in res else 1, args.reps)["min"]
    out = {"forward_s": one}
    for name, mbs in (("batched", None), ("one_by_one", 1)):
        den, stg = guided_denoiser(ctx, model.num_blocks, mbs)
        log(f"guidance: {name}")
        t = timed(lambda: run_step(model, den, vs, as_), 0, args.step_reps)["min"]
        out[name] = {"step_s": t, "ratio": t / one, "per_pass": t / one / 4}
        out["stg_blocks"] = list(stg)
    out["target_met"] = out["batched"]["ratio"] <= 1.15 * 4
    res["guidance"] = out


def _arrays_of(obj) -> list:
    """Every mx.array inside prepared transformer arguments (dataclasses, tuples)."""
    import dataclasses

    if isinstance(obj, mx.array):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [a for o in obj for a in _arrays_of(o)]
    if dataclasses.is_dataclass(obj):
        return [a for f in dataclasses.fields(obj) for a in _arrays_of(getattr(obj, f.name))]
    return []


def compile_rows(args, ckpt: str, shp: dict, res: dict) -> None:
    from dataclasses import replace

    from mlx_ltx.models.transformer_args import Modality

    model, vs, as_, ctx, _ = res["_bf16_model"]
    video, audio = modalities(vs, as_, ctx)
    out = {}
    # one block, its arguments prepared once (as the passes of a step share them)
    vpre, apre = model._preprocessors()
    va, aa = vpre.prepare(video, audio), apre.prepare(audio, video)
    mx.eval(_arrays_of(va), _arrays_of(aa))
    blk = model.transformer_blocks[0]

    def one_block(vx, ax):
        return blk(replace(va, x=vx), replace(aa, x=ax))

    log("compile: one block")
    plain = timed(lambda: mx.eval(*one_block(va.x, aa.x)), 1, args.reps)["min"]
    compiled = mx.compile(one_block)
    t = time.perf_counter()
    got = compiled(va.x, aa.x)
    mx.eval(*got)
    first = time.perf_counter() - t
    ref = one_block(va.x, aa.x)
    err = _max_rel(got, ref)
    comp = timed(lambda: mx.eval(*compiled(va.x, aa.x)), 0, args.reps)["min"]
    out["block"] = {"plain_s": plain, "compiled_s": comp, "ratio": comp / plain, "first_call_s": first, "max_rel_diff": err}
    if args.compile_forward:
        def forward(vl, vsig, vt, vp, vc, al, asig, at, ap, ac):
            return model(Modality(vl, vsig, vt, vp, vc), Modality(al, asig, at, ap, ac))

        arrays = (video.latent, video.sigma, video.timesteps, video.positions, video.context,
                  audio.latent, audio.sigma, audio.timesteps, audio.positions, audio.context)
        log("compile: whole forward")
        plain = timed(lambda: mx.eval(*forward(*arrays)), 1, args.reps)["min"]
        compiled = mx.compile(forward)
        t = time.perf_counter()
        got = compiled(*arrays)
        mx.eval(*got)
        first = time.perf_counter() - t
        err = _max_rel(got, forward(*arrays))
        comp = timed(lambda: mx.eval(*compiled(*arrays)), 0, args.reps)["min"]
        out["forward"] = {"plain_s": plain, "compiled_s": comp, "ratio": comp / plain, "first_call_s": first,
                          "max_rel_diff": err}
    res["compile"] = out


def _max_rel(got, ref) -> float:
    return max(float(mx.max(mx.abs(a.astype(mx.float32) - b.astype(mx.float32)))) /
               max(float(mx.max(mx.abs(b.astype(mx.float32)))), 1e-12) for a, b in zip(got, ref))


def weight_format_rows(args, res: dict) -> None:
    """One Linear's matmul at the real width (K = N = 4096, M tokens) with bf16 weights against the
    q8 / q4 layouts convert.py writes (mx.quantized_matmul, as nn.QuantizedLinear runs it) and against
    dequantizing first (mx.dequantize then the bf16 GEMM)."""
    m, k, n = (16, 1024, 1024) if args.quick else (16, 4096, 4096)
    x = mx.random.normal((m, k), key=mx.random.key(1)).astype(mx.bfloat16)
    w = mx.random.normal((n, k), key=mx.random.key(2)).astype(mx.bfloat16)
    mx.eval(x, w)
    flops = 2 * m * k * n
    rows = [{"format": "bf16", "s": timed(lambda: mx.eval(x @ w.T), 1, 3)["min"]}]
    for bits in (8, 4):
        q = mx.quantize(w, group_size=64, bits=bits)
        mx.eval(q)
        t = timed(lambda: mx.eval(mx.quantized_matmul(x, *q, transpose=True, group_size=64, bits=bits)), 1, 1)["min"]
        d = timed(lambda: mx.eval(x @ mx.dequantize(*q, group_size=64, bits=bits).T), 1, 3)["min"]
        rows.append({"format": f"q{bits}", "s": t, "dequantize_then_gemm_s": d})
    for r in rows:
        r["gflops"] = flops / r["s"] / 1e9
        if "dequantize_then_gemm_s" in r:
            r["dequantize_then_gemm_gflops"] = flops / r["dequantize_then_gemm_s"] / 1e9
    res["weight_formats"] = {"shape": [m, k, n], "rows": rows}


def memory_rows(args, ckpt: str, shp: dict, tmp: str, res: dict) -> None:
    base = {"ckpt": ckpt, "dtype": "bfloat16", "grid": list(shp["grid"]), "audio_tokens": shp["audio_tokens"],
            "context": shp["context"]}
    configs = [("eager", 1), ("stream", 1), ("eager", None), ("stream", None)]
    configs = configs[:2] if args.quick else configs if args.all_memory else configs[:3]
    rows = []
    for memory, mbs in configs:
        log(f"memory: {memory} step, passes per call {'4' if mbs is None else '1'} (child)")
        r = run_child("step", dict(base, memory=memory, max_batch_size=mbs))
        r.update(memory=memory, passes_per_call=4 if mbs is None else 1)
        rows.append(r)
    res["memory"] = rows
    ada = []
    for conditioned in (True, False):
        for mode in ("per_token", "per_timestep"):
            # the CPU scheduler allocates a few operations ahead of the computation, so a peak varies by
            # a few MB from run to run: the least of three runs
            log(f"memory: stage-2 forward, adaLN {mode}, {'I2V' if conditioned else 'T2V'} (3 children)")
            runs = [run_child("step", dict(base, memory="eager", max_batch_size=1, adaln=mode,
                                           conditioned=conditioned)) for _ in range(3)]
            ok = [r for r in runs if "error" not in r]
            r = min(ok, key=lambda r: r["step_peak"]) if ok else runs[0]
            r.update(adaln=mode, conditioned=conditioned, step_peaks=[x.get("step_peak") for x in runs])
            ada.append(r)
    res["adaln"] = ada
    dec = []
    # the reduced decoder untiled and tiled, and the release's width (base 128) on a one-frame 2x2 latent,
    # where the tile planner's estimate was calibrated (the reduced widths' conv_out weighs more)
    for mode, base, latent in (("eager", args.decoder_base, args.decode_latent),
                               ("tiled", args.decoder_base, args.decode_latent), ("eager", 128, (1, 2, 2))):
        log(f"memory: video decode {mode}, base width {base} (child)")
        r = run_child("decode", {"mode": mode, "decoder_base": base, "latent": list(latent)})
        r.update(mode=mode, decoder_base=base, latent=list(latent))
        dec.append(r)
    res["decode"] = dec
    # bytes of the reduced model as convert.py writes it, and of the real 22B from its shapes
    from mlx_ltx.convert import convert

    sizes = {"bf16": transformer_file_bytes(ckpt, mx.bfloat16)}
    for q in ("q8", "q4"):
        out = os.path.join(tmp, f"reduced-{q}")
        convert(ckpt, "dev", out, quantize=q, hash_sources=False, progress=lambda m: None)
        sizes[q] = transformer_file_bytes(out, mx.bfloat16)
        shutil.rmtree(out, ignore_errors=True)
    res["weight_bytes"] = {"reduced": sizes, "real": fullsize_weight_bytes()}


def fullsize_rows(args, res: dict) -> None:
    root = tempfile.mkdtemp(prefix="ltx-fullsize-", dir=args.tmpdir)
    rows = []
    try:
        for quant, memory in args.full_size_configs:
            folder = os.path.join(root, quant)
            log(f"full size: writing a random {quant} folder block by block")
            t = time.perf_counter()
            info = write_fullsize_folder(folder, quant)
            info["write_s"] = time.perf_counter() - t
            log(f"full size: wrote {info['bytes'] / GB:.2f} GB in {info['write_s']:.0f} s; {quant} {memory} (child)")
            r = run_child("fullsize", {"folder": folder, "memory": memory, "blocks": args.full_size_blocks,
                                       "pixels": [9, 256, 256], "context": REAL_CONTEXT},
                          timeout=args.full_size_timeout)
            r.update(quant=quant, memory=memory, folder_bytes=info["bytes"], write_s=info["write_s"])
            if "forward_s" in r:
                r["forward_extrapolated_s"] = r["forward_s"] * r["blocks_total"] / r["blocks_run"]
            rows.append(r)
            res["fullsize"] = rows
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# report

def markdown(res: dict) -> str:
    L = []
    meta = res["meta"]
    L.append(f"# mlx_ltx transformer bench — {meta['timestamp']}")
    L.append("")
    L.append(f"mlx {meta['mlx']} ({meta['device']}), {meta['cpus']} CPUs, {meta['ram_gb']:.0f} GB RAM; "
             f"{'quick' if meta['quick'] else 'default'} run. Reduced model: {meta['blocks']} blocks, "
             f"{meta['heads']} heads (video {meta['heads']}×128 = {meta['heads'] * 128}, audio {meta['heads']}×64 = "
             f"{meta['heads'] * 64}); video grid {meta['grid']} = {meta['video_tokens']} tokens "
             f"(tokens/width {meta['ratio']:.3f}; real 704×480×97: {meta['real_tokens']}/4096 = "
             f"{meta['real_ratio']:.3f}), {meta['audio_tokens']} audio tokens, {meta['context']} context tokens; "
             f"times are the best of {meta['reps']} (guided steps: {meta.get('step_reps', 1)}); torch ran {meta.get('torch_threads')} thread(s); load average at start "
             f"{meta.get('load_average_start', [0])[0]:.1f}, at end {meta.get('load_average_end', [0])[0]:.1f}.")
    if "efficiency" in res:
        L += ["", "## 1. Efficiency (one forward)", "",
              "| dtype | forward s | GFLOP (linear + attn) | achieved GFLOP/s | MLX GEMM ceiling GFLOP/s | "
              "efficiency | GEMMs alone s | SDPA alone s | elementwise/other s | torch forward s | torch ceiling "
              "GFLOP/s | torch efficiency | MLX time ÷ torch time |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["efficiency"]:
            ref = r.get("reference") or {}
            L.append(f"| {r['dtype']} | {r['forward_s']:.2f} | {r['linear_flops'] / 1e9:.1f} + "
                     f"{r['attention_flops'] / 1e9:.1f} | {r['achieved_gflops']:.2f} | {r['ceiling_gflops']:.2f} | "
                     f"{r['efficiency']:.2f} | {r['gemm_s']:.2f} ({r['gemm_s'] / r['forward_s']:.0%}) | "
                     f"{r['sdpa_s']:.2f} ({r['sdpa_s'] / r['forward_s']:.0%}) | {r['elementwise_s']:.2f} "
                     f"({r['elementwise_s'] / r['forward_s']:.0%}) | {fmt(ref.get('forward_s'), '.3f')} | "
                     f"{fmt(ref.get('ceiling_gflops'), '.1f')} | {fmt(ref.get('efficiency'))} | "
                     f"{fmt(ref.get('mlx_over_torch_time'), '.1f')} |")
            if ref.get("error"):
                L.append(f"| | reference failed: {ref['error']} | | | | | | | | | | | |")
    if "guidance" in res:
        g = res["guidance"]
        L += ["", f"## 2. Guidance (one guided DEV step, 4 passes, STG block {g['stg_blocks']}, bf16)", "",
              "| mode | step s | ÷ one forward | per pass | target batched ≤ 4.6 |", "|---|---|---|---|---|",
              f"| one forward (cond only) | {g['forward_s']:.2f} | 1.00 | | |",
              f"| batched (max_batch_size=None) | {g['batched']['step_s']:.2f} | {g['batched']['ratio']:.2f} | "
              f"{g['batched']['per_pass']:.2f} | {'met' if g['target_met'] else 'MISSED'} |",
              f"| one by one (max_batch_size=1) | {g['one_by_one']['step_s']:.2f} | {g['one_by_one']['ratio']:.2f} | "
              f"{g['one_by_one']['per_pass']:.2f} | |"]
    if "compile" in res:
        c = res["compile"]
        L += ["", "## 3. mx.compile (bf16)", "",
              "| what | uncompiled s | compiled s | compiled ÷ uncompiled | first compiled call s | max rel. diff |",
              "|---|---|---|---|---|---|"]
        for name, key in (("one block (args prepared)", "block"), ("whole forward", "forward")):
            if key in c:
                r = c[key]
                L.append(f"| {name} | {r['plain_s']:.3f} | {r['compiled_s']:.3f} | {r['ratio']:.2f} | "
                         f"{r['first_call_s']:.1f} | {r['max_rel_diff']:.1e} |")
    if "memory" in res:
        L += ["", "## 4. Memory (child process per row; bf16 reduced model)", "",
              "| config | weights | load peak | load ÷ weights | pred. load | step s | step peak | step ÷ weights | "
              "pred. step | measured ÷ pred. | VmHWM |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["memory"]:
            name = f"{r['memory']}, {r['passes_per_call']} pass/call"
            if "error" in r:
                L.append(f"| {name} | failed: {r['error']} | | | | | | | | | |")
                continue
            p = r.get("predicted") or {}
            ratio = fmt(r["step_peak"] / p["forward"]) if p.get("forward") else "—"
            L.append(f"| {name} | {gbs(r['weights'])} | {gbs(r['load_peak'])} | {r['load_peak'] / r['weights']:.2f} | "
                     f"{gbs(p.get('load'))} | {r['step_s']:.1f} | {gbs(r['step_peak'])} | "
                     f"{r['step_peak'] / r['weights']:.2f} | {gbs(p.get('forward'))} | {ratio} | {gbs(r['hwm'])} |")
        if res.get("adaln"):
            tc = ltx_config(make_metadata(res["meta"]["heads"], res["meta"]["blocks"])).transformer
            vt, at = math.prod(res["meta"]["grid"]), res["meta"]["audio_tokens"]
            # the per-token modulation tables: 9 block rows + 4 A/V scale-shift rows per token (13 copies of
            # the residual stream); the output embedding (one more row) went too and is not counted
            tables = (9 + 4) * (vt * tc.inner_dim + at * tc.audio_inner_dim) * 2
            L += ["", "adaLN modulation, one stage-2 forward (eager, bf16; I2V: first latent frame conditioned, "
                  "timesteps σ and 0; T2V: σ only; least of 3 runs): activations = step peak − weights; the "
                  "per-token tables are "
                  f"{gbs(tables)} here ((9 + 4) rows × tokens × width × 2 bytes, both streams)", "",
                  "| request | adaLN vectors | step peak | activations | activations ÷ per-token's | drop ÷ tables |",
                  "|---|---|---|---|---|---|"]
            base_act = None
            for r in res["adaln"]:
                kind = "I2V" if r.get("conditioned", True) else "T2V"
                if "error" in r:
                    L.append(f"| {kind} | {r['adaln']} | failed: {r['error']} | | | |")
                    continue
                act = r["step_peak"] - r["weights"]
                base_act = act if r["adaln"] == "per_token" else base_act
                drop = "—" if base_act is None or r["adaln"] == "per_token" else f"{(base_act - act) / tables:.3f}"
                rel = "—" if base_act is None else f"{act / base_act:.2f}"
                name = "per token (before)" if r["adaln"] == "per_token" else "per distinct timestep (after)"
                L.append(f"| {kind} | {name} | {gbs(r['step_peak'])} | {gbs(act)} | {rel} | {drop} |")
        L += ["", "| video decode | decoder weights | latent | tiles (f, h, w latent sizes) | decode s | peak | peak ÷ weights | pred. | "
              "measured ÷ pred. | VmHWM |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res.get("decode", []):
            if "error" in r:
                L.append(f"| {r['mode']} | failed: {r['error']} | | | | | | | | |")
                continue
            pr = fmt(r["decode_peak"] / r["predicted"]) if r.get("predicted") else "—"
            L.append(f"| {r['mode']}, base {r.get('decoder_base', res['meta']['decoder_base'])} | {gbs(r['weights'])} | "
                     f"{r.get('latent', res['meta']['decode_latent'])} | {r.get('tiling') or 'untiled'} | "
                     f"{r['decode_s']:.1f} | {gbs(r['decode_peak'])} | {r['decode_peak'] / r['weights']:.1f} | "
                     f"{gbs(r.get('predicted'))} | {pr} | {gbs(r['hwm'])} |")
        wb = res.get("weight_bytes")
        if wb:
            rd, rl = wb["reduced"], wb["real"]
            L += ["", "| transformer weights | bf16 | q8 | q4 |", "|---|---|---|---|",
                  f"| reduced (this run, convert.py) | {gbs(rd['bf16'])} | {gbs(rd['q8'])} ({rd['q8'] / rd['bf16']:.2f}) | "
                  f"{gbs(rd['q4'])} ({rd['q4'] / rd['bf16']:.2f}) |",
                  f"| real LTX-2.3 ({rl['params'] / 1e9:.2f} B params, from shapes) | {gbs(rl['bf16'])} | "
                  f"{gbs(rl['q8'])} ({rl['q8'] / rl['bf16']:.2f}) | {gbs(rl['q4'])} ({rl['q4'] / rl['bf16']:.2f}) |"]
    wf = res.get("weight_formats")
    if wf:
        m, k, n = wf["shape"]
        L += ["", f"Matmul by weight format (x [{m}, {k}] @ W.T, W [{n}, {k}]; what one block Linear does per "
              f"{m} tokens):", "", "| weights | s | GFLOP/s | dequantize + bf16 GEMM s | GFLOP/s |", "|---|---|---|---|---|"]
        for r in wf["rows"]:
            L.append(f"| {r['format']} | {r['s']:.4f} | {r['gflops']:.2f} | {fmt(r.get('dequantize_then_gemm_s'), '.4f')} | "
                     f"{fmt(r.get('dequantize_then_gemm_gflops'))} |")
    fs = res.get("fullsize")
    src = ""
    if fs is None and res.get("_carried_fullsize"):
        fs, src = res["_carried_fullsize"]
        src = " (carried over from earlier runs: see the source column)"
    if fs:
        L += ["", f"## 5. Full size: 48 blocks, real widths, random weights, 256×256×9{src}", "",
              "| config | folder | load s | load peak | forward blocks run | forward s (run) | forward s (48 blocks, "
              "extrapolated) | forward peak | pred. peak | measured ÷ pred. | VmHWM | peak ÷ weights | source |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in fs:
            name = f"{r['quant']} {r['memory']}"
            if "error" in r:
                L.append(f"| {name} | {gbs(r.get('folder_bytes'))} | failed: {r['error']} | | | | | | | | | | |")
                continue
            p = r.get("predicted") or {}
            pr = fmt(r["forward_peak"] / p["forward"]) if p.get("forward") else "—"
            L.append(f"| {name} | {gbs(r['folder_bytes'])} | {r['load_s']:.0f} | {gbs(r['load_peak'])} | "
                     f"{r['blocks_run']}/{r['blocks_total']} | {r['forward_s']:.0f} | "
                     f"{r['forward_extrapolated_s']:.0f} | {gbs(r['forward_peak'])} | {gbs(p.get('forward'))} | {pr} | "
                     f"{gbs(r['hwm'])} | {r['forward_peak'] / r['weights']:.2f} | {r.get('source', 'this run')} |")
        r0 = fs[0]
        if "video_tokens" in r0:
            L.append("")
            L.append(f"{r0['video_tokens']} video tokens, {r0['audio_tokens']} audio tokens, {r0['context']} context "
                     f"tokens per stream; weights as loaded {gbs(r0.get('weights'))} ({r0['quant']}).")
    return "\n".join(L) + "\n"


# ------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run (~1-2 min)")
    ap.add_argument("--full-size", action="store_true", help="also the real 48-block transformer (q4 eager, q8 stream)")
    ap.add_argument("--only", nargs="+", choices=["efficiency", "guidance", "compile", "memory", "fullsize"],
                    help="run only these rows")
    ap.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["bfloat16", "float32"])
    ap.add_argument("--heads", type=int, help="heads per stream of the reduced model (default 4; quick 2)")
    ap.add_argument("--blocks", type=int, help="blocks of the reduced model (default 8; quick 4)")
    ap.add_argument("--reps", type=int, help="timed repetitions (best is reported; default 2; quick 1)")
    ap.add_argument("--step-reps", type=int, help="timed repetitions of a guided step (default 1)")
    ap.add_argument("--all-memory", action="store_true", help="also the stream + 4 passes per call memory row")
    ap.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference forward")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="threads of the PyTorch reference (default 1: MLX's CPU ops run on one thread)")
    ap.add_argument("--decoder-base", type=int, default=None, help="video decoder base width (real: 128)")
    ap.add_argument("--full-size-blocks", type=int, default=1,
                    help="blocks the full-size forward runs (all 48 are loaded; time is extrapolated)")
    ap.add_argument("--full-size-configs", nargs="+", default=["q4:eager", "q8:stream"],
                    help="quantization:memory pairs of the full-size rows (q4|q8 : eager|stream)")
    ap.add_argument("--full-size-timeout", type=float, default=3600.0)
    ap.add_argument("--compile-forward", action="store_true",
                    help="also mx.compile the whole forward (its first call traces for minutes on the CPU)")
    ap.add_argument("--tmpdir", default=None, help="where the temporary checkpoints go (default: system temp)")
    ap.add_argument("--render", metavar="STAMP", help="re-render bench/results/STAMP.json (.md and latest.md)")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--child-params", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.render:
        write_results(json.loads((RESULTS / f"{args.render}.json").read_text()), args.render)
        return
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.child_params))))
        return
    args.heads = args.heads or (2 if args.quick else 4)
    args.blocks = args.blocks or (4 if args.quick else 8)
    args.reps = args.reps or (1 if args.quick else 2)
    args.step_reps = args.step_reps or 1
    args.decoder_base = args.decoder_base or (16 if args.quick else 32)
    args.decode_latent = (2, 2, 2) if args.quick else (2, 4, 4)
    args.full_size_configs = [tuple(c.split(":")) for c in args.full_size_configs]
    rows = set(args.only or ["efficiency", "guidance", "compile", "memory"])
    if args.full_size:
        rows.add("fullsize")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    shp = shapes_for(args.heads, args.quick)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    res: dict = {"meta": {
        "timestamp": stamp, "mlx": mx.__version__, "device": str(mx.default_device()), "cpus": os.cpu_count(),
        "ram_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, "quick": args.quick,
        "heads": args.heads, "blocks": args.blocks, "reps": args.reps, "step_reps": args.step_reps, "grid": list(shp["grid"]),
        "video_tokens": shp["video_tokens"], "audio_tokens": shp["audio_tokens"], "context": shp["context"],
        "ratio": shp["ratio"], "real_ratio": shp["real_ratio"], "real_tokens": shp["real_tokens"],
        "decode_latent": list(args.decode_latent), "decoder_base": args.decoder_base,
        "torch_threads": args.torch_threads, "load_average_start": os.getloadavg(),
        "rows": sorted(rows), "git": subprocess.run(["git", "-C", str(ROOT), "log", "--oneline", "-1"],
                                                   capture_output=True, text=True).stdout.strip()}}
    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="ltx-bench-", dir=args.tmpdir)
    try:
        reduced = {"efficiency", "guidance", "compile", "memory"} & rows
        ckpt = os.path.join(tmp, "reduced-ltx-2.3.safetensors")
        if reduced:
            log(f"writing the reduced random checkpoint ({args.blocks} blocks, {args.heads} heads)")
            res["meta"]["reduced_bytes"] = write_reduced_checkpoint(ckpt, make_metadata(args.heads, args.blocks), 1234)
        if "efficiency" in rows or "compile" in rows:
            efficiency_rows(args, ckpt, shp, tmp, res) if "efficiency" in rows else None
        if "guidance" in rows:
            guidance_rows(args, ckpt, shp, res)
        if "compile" in rows:
            if "_bf16_model" not in res:
                args_dt = args.dtype
                args.dtype, args.no_reference = ["bfloat16"], True
                efficiency_rows(args, ckpt, shp, tmp, res)
                res.pop("efficiency")
                args.dtype = args_dt
            compile_rows(args, ckpt, shp, res)
        res.pop("_bf16_model", None)
        if "memory" in rows:
            memory_rows(args, ckpt, shp, tmp, res)
            log("weight formats: matmul speed")
            weight_format_rows(args, res)
        if "fullsize" in rows:
            fullsize_rows(args, res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        res.pop("_bf16_model", None)
    res["meta"]["wall_s"] = time.perf_counter() - t0
    res["meta"]["load_average_end"] = os.getloadavg()
    write_results(res, stamp)
    log(f"done in {res['meta']['wall_s']:.0f} s; wrote bench/results/{stamp}.json, .md and latest.md")


def write_results(res: dict, stamp: str) -> None:
    """``<stamp>.json`` / ``.md`` and latest.md (a run without full-size rows shows the last measured
    full-size row of every configuration, from the saved runs)."""
    if "fullsize" not in res:
        carried, seen = [], set()
        for prev in sorted(RESULTS.glob("*.json"), reverse=True):
            try:
                data = json.loads(prev.read_text())
            except ValueError:
                continue
            for r in data.get("fullsize") or []:
                key = (r.get("quant"), r.get("memory"))
                if key not in seen and "error" not in r:
                    seen.add(key)
                    carried.append(dict(r, source=prev.name))
        if carried:
            res["_carried_fullsize"] = (sorted(carried, key=lambda r: (r["quant"], r["memory"])), "earlier runs")
    md = markdown(res)
    res.pop("_carried_fullsize", None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(res, indent=1, default=str))
    (RESULTS / f"{stamp}.md").write_text(md)
    (RESULTS / "latest.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
