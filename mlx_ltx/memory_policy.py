"""How many bytes a pipeline's models take once loaded, from the files' headers (nothing is
loaded): what the automatic memory policy (``Pipeline(low_memory=None)``) compares with the
memory budget to decide whether models stay loaded between ``generate`` calls.

The rule: the models are kept only if their estimated bytes are at most half the memory budget
(``memory_budget=``, default the device's memory, ``validation.device_memory_bytes``); the other
half is the working margin for the denoising activations and the tiled VAE decode (which plans
its tiles for half of what the kept models leave, ``Pipeline.decode_budget``). Otherwise everything is released as with
``low_memory=True``, Gemma before the transformer loads.

Per request (``plan_memory``), the preflight's prediction (``preflight.py``) picks the
transformer's memory mode and how many guidance passes share one transformer call."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import mlx.core as mx

from .loading import Checkpoint

# safetensors dtype -> bytes per element (the stored size of tensors that are not cast)
_ELEMENT_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                  "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}


def _loaded_bytes(tensors, dtype: mx.Dtype) -> int:
    """Bytes of ``(key, stored dtype, shape)`` tensors once loaded as ``load_strict`` loads them:
    floating tensors at ``dtype`` (0-d scalars in float32), quantized weights and their
    ``scales`` / ``biases`` as stored."""
    quantized = {k[: -len(".scales")] for k, _, _ in tensors if k.endswith(".scales")}
    total = 0
    for key, stored, shape in tensors:
        n = math.prod(shape)
        layer = key.rsplit(".", 1)[0]
        if stored.startswith(("F", "BF")) and not (layer in quantized and key.endswith((".scales", ".biases"))):
            total += n * (4 if not shape else dtype.size)
        else:
            total += n * _ELEMENT_BYTES.get(stored, 4)
    return total


def _component_bytes(checkpoint: Checkpoint, component: str, dtype: mx.Dtype, prefixes=None) -> int:
    """A checkpoint component's loaded bytes (from the header); only module keys under
    ``prefixes`` when given."""
    keys = checkpoint.component_keys(component).items()
    if prefixes is not None:
        keys = [(new, old) for new, old in keys if new.rsplit(".", 1)[0] in prefixes]
    return _loaded_bytes([(new, checkpoint.dtypes[old], checkpoint.shapes[old]) for new, old in keys], dtype)


def _gemma_bytes(gemma: str | os.PathLike, dtype: mx.Dtype) -> int | None:
    """Gemma's weights at ``dtype`` from its safetensors headers; None when that needs a download
    (a repo id not in the Hugging Face cache) or the folder is not readable."""
    from .loading import read_safetensors_header
    from .models.gemma import gemma_weight_files

    folder = os.fspath(gemma)
    if os.path.isfile(folder):  # an LTX-2.5 text-encoder bundle: its language-model tensors only
        from .models.gemma4 import language_model_tensors

        return _loaded_bytes(language_model_tensors(folder), dtype)
    try:
        if not os.path.isdir(folder):
            from huggingface_hub import snapshot_download

            folder = snapshot_download(folder, local_files_only=True, allow_patterns=["*.safetensors", "*.json"])
        tensors = []
        for path in gemma_weight_files(folder):
            header = read_safetensors_header(path)
            header.pop("__metadata__", None)
            tensors += [(k, v["dtype"], tuple(v["shape"])) for k, v in header.items()]
        return _loaded_bytes(tensors, dtype)
    except Exception:  # not local, not a Gemma folder: unknown (the text encoder's load says why)
        return None


def estimate_model_bytes(checkpoint: Checkpoint, gemma_path, dtype: mx.Dtype, upsampler_path: str | None = None,
                         distilled_lora_path: str | None = None) -> int | None:
    """The bytes of the models a pipeline that keeps them holds, at ``dtype`` (quantized tensors
    as stored): the transformer, Gemma with the connectors and text projection, the video VAE
    encoder, the upsampler and, with the distilled LoRA, its file plus the original weights of the
    layers it fuses (kept for the unfuse). None when Gemma's size is unknown without a download."""
    gemma = _gemma_bytes(gemma_path, dtype) if gemma_path is not None else 0
    if gemma is None:
        return None
    ckpt, dt = checkpoint, dtype
    total = gemma + sum(_component_bytes(ckpt, c, dt) for c in
                        ("transformer", "video_connector", "audio_connector", "text_projection", "vae_encoder"))
    if upsampler_path is not None:
        total += _component_bytes(Checkpoint(upsampler_path), "upsampler", dt)
    if distilled_lora_path is not None:
        from .models.lora import LORA_A_SUFFIX, LORA_KEY_PREFIX

        lora = Checkpoint(distilled_lora_path)
        targets = {k.replace(LORA_KEY_PREFIX, "")[: -len(LORA_A_SUFFIX)] for k in lora.shapes
                   if k.endswith(LORA_A_SUFFIX)}
        total += os.path.getsize(lora.path) + _component_bytes(ckpt, "transformer", dt, targets)
    return total


# ---------------------------------------------------------------------------------------- per request
MEMORY_CHOICES = ("auto", "eager", "stream")


@dataclass(frozen=True)
class MemoryPlan:
    """How one request runs: the transformer's memory mode, the guidance passes batched per
    transformer call, and the prediction that chose them (None when the preflight is off)."""

    memory: str
    passes_per_call: int
    prediction: object | None = None  # preflight.MemoryPrediction
    parallel: str | None = None  # several ranks: "guidance" or "sequence" (distributed.py)


def plan_memory(pipeline, height: int, width: int, num_frames: int, fps: float, audio: bool,
                memory: str = "auto", preflight: bool = True) -> MemoryPlan:
    """The first configuration whose predicted peak fits ``pipeline.memory_budget``: eager before
    streamed (streaming re-reads every block each forward), and the guidance passes of a guided
    stage batched into one call before one call each (a streamed step then reads its blocks once
    instead of once per pass, and small calls underuse a GPU; on the CPU backend an eager batched
    step measures about 4 % slower than one pass at a time, bench/results).
    ``memory`` "eager" / "stream" fixes the mode. Nothing fits: :class:`~mlx_ltx.preflight.PreflightError`
    with advice; ``preflight=False`` skips the prediction (eager for "auto", passes one by one).
    Several ranks (``pipeline.parallel``): the prediction is one rank's; parallel mode "auto" tries
    guidance-parallel (no exchange inside a forward) before sequence-parallel (about 1/N of the
    activations per rank), each with every memory candidate, so sequence is chosen only when it is
    what makes the request fit."""
    if memory not in MEMORY_CHOICES:
        raise ValueError(f"memory={memory!r}; choose one of {MEMORY_CHOICES}")
    group = getattr(pipeline, "parallel", None)
    if not preflight:
        return unplanned(memory, group)
    from .preflight import check_fits, predict_peak

    passes = max_guidance_passes(pipeline.spec)
    modes = ("eager", "stream") if memory == "auto" else (memory,)
    shares = [None] if group is None else ["guidance", "sequence"] if group.mode == "auto" else [group.mode]
    candidates = [(p, m, b) for p in shares for m in modes for b in dict.fromkeys((passes, 1))]
    common = dict(fps=fps, dtype=pipeline.dtype, audio=audio, keep_models=not pipeline.low_memory,
                  gemma=pipeline.gemma, upsampler=pipeline.upsampler_path, distilled_lora=pipeline.distilled_lora_path,
                  decode_budget=pipeline.decode_budget(), ranks=1 if group is None else group.size)
    prediction = None
    for share, mode, batch in candidates:
        prediction = predict_peak(pipeline.checkpoint, pipeline.spec.name, height, width, num_frames, memory=mode,
                                  passes_per_call=batch, parallel=share or "guidance", **common)
        if prediction.peak <= pipeline.memory_budget:
            return MemoryPlan(mode, batch, prediction, share)
    # the leanest candidate does not fit either: check_fits raises, with the advice
    return MemoryPlan(mode, batch, check_fits(prediction, pipeline.memory_budget), share)


def unplanned(memory: str, group=None) -> MemoryPlan:
    """The plan without a prediction: eager for "auto", guidance passes one by one, several ranks
    guidance-parallel for "auto"."""
    share = None if group is None else "guidance" if group.mode == "auto" else group.mode
    return MemoryPlan("eager" if memory == "auto" else memory, 1, None, share)


def max_guidance_passes(spec) -> int:
    """At most 4 transformer passes per guided step (cond, uncond, STG, modality); 1 unguided."""
    return 4 if spec.guided else 1
