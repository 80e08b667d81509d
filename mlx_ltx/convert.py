"""Convert the official LTX release into an MLX model folder, optionally quantized.

Two releases are read, told apart by the source itself (never by a flag): the single-file one
(LTX-2 / 2.3: one .safetensors per variant, handled here) and the split one (LTX-2.5 on: one file
per component, a folder laid out as the Hugging Face repo, the files themselves, or the repo id;
``convert_split.py``).

The folder keeps the official key names (so loading needs no second set of rules), split into
one or more safetensors files per component, and a ``config.json`` with the source metadata,
the quantization settings and the SHA-256 of every source file (a split source adds
``"layout": "split"``, each file's own metadata under ``"role_metadata"`` and its text encoder as
one file, see ``convert_split``). The source is read tensor by tensor through lazily mapped
arrays and written shard by shard, so peak memory stays near one shard plus the largest tensor
even for the 46 GB monolith. Everything is written into ``DIR.partial`` and renamed to ``DIR``
only once complete and re-read.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterable

import mlx.core as mx

from .loading import (COMPONENTS, CONVERTED_CONFIG, CONVERTED_FORMAT, Checkpoint, CheckpointError,
                      read_safetensors_header)

# file names of the official releases, newest first (HF Lightricks/LTX-2.3 and Lightricks/LTX-2)
MODEL_FILES = {
    "dev": ["ltx-2.3-22b-dev.safetensors", "ltx-2-19b-dev.safetensors"],
    "distilled": ["ltx-2.3-22b-distilled-1.1.safetensors", "ltx-2.3-22b-distilled.safetensors",
                  "ltx-2-19b-distilled.safetensors"],
}
UPSAMPLER_PATTERNS = {
    "x2": "*spatial-upscaler-x2*.safetensors",
    "x1.5": "*spatial-upscaler-x1.5*.safetensors",
    "temporal-x2": "*temporal-upscaler-x2*.safetensors",
}
# LoRAs the pipelines use: the distillation LoRA of the dev two-stage pipelines
LORA_PATTERNS = {"distilled": "*distilled-lora*.safetensors"}

# The split release (HF Lightricks/LTX-2.5, model_files.RELEASE_NAMES): what a repo-id source
# downloads, as snapshot_download allow_patterns (relative to the repo root). Only the variant's
# transformer, the text encoder, the conv video VAE (the diffusion VAE, vae/*-video-vae-bf16, is
# not built by mlx_ltx), the audio VAE, the duration head, and the requested upsamplers / LoRAs.
# The size tag (22b, 12b) is a wildcard; the transformer and text encoder are pinned to bf16 so a
# quantized sibling in the repo is never fetched as well.
SPLIT_TRANSFORMER_PATTERNS = {
    "dev": "diffusion_models/*-dev-transformer-bf16*.safetensors",
    "distilled": "diffusion_models/*-distilled-transformer-bf16*.safetensors",
}
SPLIT_ROLE_PATTERNS = {
    "text_encoder": "text_encoders/gemma4-*with-proj*-bf16*.safetensors",
    "video_vae": "vae/*video-vae-bf16*.safetensors",  # the diffusion VAE (the release's default video VAE)
    "audio_vae": "vae/*audio-vae*.safetensors",
    "duration_head": "model_patches/*duration-head*.safetensors",
}
# --video-decoder conv: the convolutional VAE file instead
SPLIT_CONV_VAE_PATTERN = "vae/*video-vae-conv*.safetensors"
SPLIT_UPSAMPLER_PATTERNS = {name: "latent_upscale_models/" + pattern for name, pattern in UPSAMPLER_PATTERNS.items()}
SPLIT_LORA_PATTERNS = {name: "loras/" + pattern for name, pattern in LORA_PATTERNS.items()}
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
QUANT_BITS = {"q8": 8, "q4": 4}
DEFAULT_SHARD_BYTES = 4 * 2**30

# Linear layers of the transformer blocks that are quantized: attention projections and the
# feed-forwards hold ~all of the 22B parameters. Norms, adaLN tables and embeddings, gate logits
# (one output per head), patchify/proj_out and the VAEs stay in full precision.
_QUANTIZED_LINEAR = re.compile(
    r"^model\.diffusion_model\.transformer_blocks\.\d+\."
    r"(attn1|attn2|audio_attn1|audio_attn2|audio_to_video_attn|video_to_audio_attn)\.(to_q|to_k|to_v|to_out\.0)"
    r"\.weight$"
    r"|^model\.diffusion_model\.transformer_blocks\.\d+\.(ff|audio_ff)\.net\.(0\.proj|2)\.weight$"
)


class ConvertError(ValueError):
    """The conversion cannot start or did not complete; nothing was left at the target."""


# written into OUT.partial while it is being filled (removed before the rename): an interrupted
# run's leftover is recognisably ours
PARTIAL_MARKER = ".mlx_ltx-partial"


def is_replaceable(path: str) -> bool:
    """True if ``path`` is a folder convert.py wrote (its config.json names our format), the
    leftover of an interrupted run, or an empty folder: the only things a conversion replaces."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    try:
        entries = os.listdir(path)
        if not entries or PARTIAL_MARKER in entries:
            return True
        with open(os.path.join(path, CONVERTED_CONFIG)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == CONVERTED_FORMAT


def _not_ours(path: str) -> ConvertError:
    return ConvertError(f"{path} exists and is not a folder written by convert.py (no {CONVERTED_CONFIG} with "
                        f"format {CONVERTED_FORMAT!r}); it was left untouched: choose another --out or move it away "
                        f"(--force only replaces an earlier conversion or an empty folder)")


def _fmt_bytes(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} bytes"


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(folder) for f in names)


def _save(path: str, tensors: dict, metadata: dict | None = None) -> None:
    try:
        mx.save_safetensors(path, tensors, metadata=metadata)
    except RuntimeError as e:  # MLX reports write failures (disk full, permissions) as RuntimeError
        raise ConvertError(f"could not write {path}: {e}") from None


def should_quantize(key: str, shape: tuple[int, ...], group_size: int) -> bool:
    return bool(_QUANTIZED_LINEAR.match(key)) and len(shape) == 2 and shape[-1] % group_size == 0


@dataclass
class SourceFiles:
    model: str
    upsamplers: dict[str, str] = field(default_factory=dict)
    loras: dict[str, str] = field(default_factory=dict)

    def side_files(self) -> list[tuple[str, str, str]]:
        """(kind, name, path) of the upsamplers and LoRAs to copy beside the model."""
        return ([("upsampler", n, p) for n, p in self.upsamplers.items()]
                + [("lora", n, p) for n, p in self.loras.items()])


def _pick(folder: str, names: Iterable[str], what: str) -> str:
    present = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.safetensors")))
    for n in names:
        if n in present:
            return os.path.join(folder, n)
    raise ConvertError(f"{folder}: no {what} file; looked for {list(names)}, found {present or 'no .safetensors'} "
                       f"(a split release, LTX-2.5 on, is a folder with diffusion_models/, text_encoders/, vae/...)")


def resolve_sources(source: str, variant: str, upsamplers: list[str], loras: list[str] = ()) -> SourceFiles:
    """A local .safetensors, a local folder holding the release files, or an HF repo id (only the
    needed files are downloaded; the HF cache and offline mode are honoured)."""
    if variant not in MODEL_FILES:
        raise ConvertError(f"--variant {variant!r}: choose from {sorted(MODEL_FILES)}")
    wanted = [("upsamplers", UPSAMPLER_PATTERNS, n) for n in upsamplers] + [("loras", LORA_PATTERNS, n) for n in loras]
    for flag, patterns, name in wanted:
        if name not in patterns:
            raise ConvertError(f"--{flag} {name!r}: choose from {sorted(patterns)}")
    if os.path.isfile(source):
        if wanted:
            raise ConvertError("--upsamplers / --loras need --source to be a folder or a Hugging Face repo id, not "
                               "one file")
        return SourceFiles(model=source)
    if not os.path.isdir(source):
        if source.count("/") != 1:
            raise ConvertError(f"--source {source!r}: not a file, a folder, or a Hugging Face repo id")
        from huggingface_hub import snapshot_download

        allow = MODEL_FILES[variant] + [patterns[name] for _, patterns, name in wanted]
        try:
            source = snapshot_download(source, allow_patterns=allow)
        except Exception as e:
            raise ConvertError(f"could not fetch {allow} from {source!r} ({type(e).__name__}: {e})") from None
    files = SourceFiles(model=_pick(source, MODEL_FILES[variant], f"{variant} model"))
    for flag, patterns, name in wanted:
        found = sorted(glob.glob(os.path.join(source, patterns[name])))
        if not found:
            raise ConvertError(f"{source}: no {name} {flag[:-1]} file ({patterns[name]})")
        getattr(files, flag)[name] = found[-1]  # the highest version sorts last
    return files


def sha256_file(path: str, chunk: int = 16 * 2**20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _component_of(key: str) -> str | None:
    for name, ops in COMPONENTS.items():
        # the VAE statistics match both VAE halves; they are stored once, with the encoder (first)
        if name != "upsampler" and ops.apply(key) is not None:
            return name
    return None


def _out_bytes(shape: tuple[int, ...], dtype_size: int, bits: int | None, group_size: int) -> int:
    n = math.prod(shape)
    if bits is None:
        return n * dtype_size
    return n * bits // 8 + 2 * (n // group_size) * dtype_size  # packed weights + scales + biases


@dataclass
class Plan:
    """What will be written: per output file, the source keys in order."""

    files: dict[str, list[str]]
    bytes: int


class _ShardWriter:
    """Accumulates converted tensors and flushes a shard when it reaches the size limit."""

    def __init__(self, out_dir: str, stem: str, limit: int, metadata: dict[str, str] | None = None):
        self.out_dir, self.stem, self.limit = out_dir, stem, limit
        self.metadata = metadata  # written into every shard (e.g. the duration head's config)
        self.pending: dict[str, mx.array] = {}
        self.size = 0
        self.written: list[str] = []

    def add(self, key: str, value: mx.array) -> None:
        if self.pending and self.size + value.nbytes > self.limit:
            self.flush()
        self.pending[key] = value
        self.size += value.nbytes

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"{self.stem}-{len(self.written) + 1:05d}.safetensors"
        _save(os.path.join(self.out_dir, name), self.pending, self.metadata)  # evaluates, then we drop them
        self.written.append(name)
        self.pending, self.size = {}, 0


def convert(
    source: "str | os.PathLike | list[str]",
    variant: str,
    out: str,
    *,
    quantize: str | None = None,
    group_size: int = 64,
    dtype: str = "bfloat16",
    upsamplers: Iterable[str] = (),
    loras: Iterable[str] = (),
    text_encoder: str | None = None,
    text_encoder_quantize: str | None = None,
    video_decoder: str | None = None,
    force: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    hash_sources: bool = True,
    progress: Callable[[str], None] = print,
) -> str:
    """Convert; returns the output folder. See ``convert.py --help`` for the options.

    ``source``: the single-file release (a .safetensors, a folder holding it, an HF repo id) or the
    split one (a folder laid out as the HF repo, a list of its files, an HF repo id); which one it
    is comes from the source (``convert_split.resolve_split_sources``)."""
    from .convert_split import SplitJob, resolve_split_sources

    if dtype not in DTYPES:
        raise ConvertError(f"--dtype {dtype!r}: choose from {sorted(DTYPES)}")
    if quantize is not None and quantize not in QUANT_BITS:
        raise ConvertError(f"--quantize {quantize!r}: choose from {sorted(QUANT_BITS)}")
    if text_encoder_quantize is not None and text_encoder_quantize not in QUANT_BITS:
        raise ConvertError(f"--text-encoder-quantize {text_encoder_quantize!r}: choose from {sorted(QUANT_BITS)}")
    if variant not in MODEL_FILES:
        raise ConvertError(f"--variant {variant!r}: choose from {sorted(MODEL_FILES)}")
    out = os.path.abspath(os.fspath(out).rstrip("/"))
    partial = out + ".partial"
    if os.path.lexists(out):
        if not is_replaceable(out):
            raise _not_ours(out)
        if not force:
            raise ConvertError(f"{out} exists; pass --force to replace it")
    if os.path.lexists(partial) and not is_replaceable(partial):
        raise _not_ours(partial)
    bits = QUANT_BITS.get(quantize) if quantize else None
    target = DTYPES[dtype]
    if video_decoder is not None and video_decoder not in ("diffusion", "conv"):
        raise ConvertError(f"--video-decoder {video_decoder!r}: choose diffusion or conv")
    split = resolve_split_sources(source, variant, list(upsamplers), list(loras), text_encoder, video_decoder)
    if split is not None:
        job = SplitJob(split, variant, dtype, bits, QUANT_BITS.get(text_encoder_quantize or ""), group_size,
                       shard_bytes, hash_sources, progress)
        total = job.plan()  # every check before anything is written
    else:
        if isinstance(source, (list, tuple)):
            if len(source) != 1:
                raise ConvertError(f"--source: several files are the split release (LTX-2.5 on); {list(source)} "
                                   f"are not")
            source = source[0]
        files = resolve_sources(os.fspath(source), variant, list(upsamplers), list(loras))
        src = Checkpoint(files.model)
        if not isinstance(src.metadata.get("config"), dict):
            raise ConvertError(f"{files.model}: no LTX 'config' in its metadata; is it an official LTX checkpoint?")
        src.config  # validates every section before anything is written
        plan_files, total = plan_components(src, src.shapes, files.model, bits, group_size, target)
        if bits and not any(should_quantize(k, src.shapes[k], group_size) for k in plan_files.get("transformer", [])):
            raise ConvertError(f"--quantize {quantize}: no transformer linear layer has an input width divisible by "
                               f"--group-size {group_size}")
        total += side_files_bytes(files, target)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < total * 1.05 + 2**20:
        raise ConvertError(f"not enough disk space in {parent}: the conversion writes about {total / 1e9:.2f} GB, "
                           f"{free / 1e9:.2f} GB are free")

    shutil.rmtree(partial, ignore_errors=True)  # a previous interrupted run (checked above)
    trash = None  # where the replaced OUT waits until the new one is in place
    try:
        os.makedirs(partial)
        open(os.path.join(partial, PARTIAL_MARKER), "w").close()
        if split is not None:
            info = job.write(partial)  # config.json written and the folder verified
        else:
            info = _write(src, files, partial, plan_files, target, bits, group_size, shard_bytes, progress)
            info["sources"] = [{"file": os.path.basename(p), "bytes": os.path.getsize(p),
                                "sha256": sha256_file(p) if hash_sources else None}
                               for p in [files.model, *(path for _, _, path in files.side_files())]]
            info["dtype"] = dtype
            info["variant"] = variant
            if text_encoder:
                progress(f"text encoder: {text_encoder}")
                info["text_encoder"] = _convert_text_encoder(text_encoder, os.path.join(partial, "text_encoder"),
                                                             dtype, text_encoder_quantize, group_size)
            with open(os.path.join(partial, CONVERTED_CONFIG), "w") as f:
                json.dump(info, f, indent=1)
            _verify(partial, src, info)
        os.remove(os.path.join(partial, PARTIAL_MARKER))
        if os.path.lexists(out):
            if not is_replaceable(out):  # it changed while we were converting
                raise _not_ours(out)
            trash = tempfile.mkdtemp(prefix=os.path.basename(out) + ".replaced-", dir=parent)
            os.rename(out, os.path.join(trash, "old"))
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if trash and not os.path.lexists(out) and os.path.lexists(os.path.join(trash, "old")):
            os.rename(os.path.join(trash, "old"), out)  # put the previous conversion back
        if trash:
            shutil.rmtree(trash, ignore_errors=True)
        raise
    if trash:
        shutil.rmtree(trash, ignore_errors=True)
    for line in report(out, info):
        progress(line)
    return out


def plan_components(src: Checkpoint, keys: Iterable[str], where: str, bits: int | None, group_size: int,
                    target: mx.Dtype) -> tuple[dict[str, list[str]], int]:
    """{component: source keys in order} and the bytes they will take; a key of no component is an error."""
    plan_files: dict[str, list[str]] = {}
    total = 0
    unknown = []
    for key in keys:
        comp = _component_of(key)
        if comp is None:
            unknown.append(key)
            continue
        plan_files.setdefault(comp, []).append(key)
        q = bits if bits and should_quantize(key, src.shapes[key], group_size) else None
        total += _out_bytes(src.shapes[key], target.size, q, group_size)
    if unknown:
        raise ConvertError(f"{where}: {len(unknown)} tensors belong to no LTX component, e.g. {unknown[:3]}")
    return plan_files, total


def side_files_bytes(files, target: mx.Dtype) -> int:
    return sum(math.prod(v["shape"]) * target.size for _, _, path in files.side_files()
               for k, v in read_safetensors_header(path).items() if k != "__metadata__")


def report(out: str, info: dict) -> list[str]:
    """What a conversion wrote: quantization, components, side files, size on disk."""
    q = info.get("quantization")
    lines = [f"quantized {q['layers']} transformer linear layers: {q['bits']} bits, group size {q['group_size']}"
             if q else f"not quantized (tensors in {info.get('dtype')})"]
    comps = info.get("components", {})
    lines.append("components: " + ", ".join(f"{c} ({len(f)} file{'s' if len(f) != 1 else ''})"
                                            for c, f in comps.items()))
    for kind in ("upsamplers", "loras"):
        if info.get(kind):
            lines.append(f"{kind}: {', '.join(info[kind])}")
    te = info.get("text_encoder")
    if te:
        tq = info.get("text_encoder_quantization")
        how = (f" (quantized {tq['layers']} linear layers: {tq['bits']} bits, group size {tq['group_size']})"
               if tq else "")
        lines.append(f"text encoder: {te}{'' if te.endswith('.safetensors') else '/'}{how}")
    lines.append(f"wrote {out}: {_fmt_bytes(folder_bytes(out))} on disk")
    return lines


def _cast(value: mx.array, target: mx.Dtype) -> mx.array:
    """Floating tensors to ``target``; 0-d scalars stay as the reference keeps them."""
    return value.astype(target) if mx.issubdtype(value.dtype, mx.floating) and value.ndim > 0 else value


def write_component(writer: _ShardWriter, arrays: dict, keys: list[str], shapes: dict, target: mx.Dtype,
                    bits: int | None, group_size: int) -> int:
    """Cast (and quantize) ``keys`` popped from the lazily loaded ``arrays`` into ``writer``;
    returns the number of quantized layers."""
    quantized_layers = 0
    for key in keys:
        value = _cast(arrays.pop(key), target)  # popped: a read tensor must not outlive its shard
        if bits and should_quantize(key, shapes[key], group_size):
            wq, scales, biases = mx.quantize(value, group_size=group_size, bits=bits)
            base = key[: -len(".weight")]
            writer.add(key, wq)
            writer.add(base + ".scales", scales)
            writer.add(base + ".biases", biases)
            quantized_layers += 1
        else:
            writer.add(key, value)
    writer.flush()
    return quantized_layers


def write_side_files(files, out_dir: str, target: mx.Dtype, progress) -> dict[str, dict[str, str]]:
    """The upsamplers and LoRAs beside the model, cast, their metadata kept as it was."""
    side: dict[str, dict[str, str]] = {"upsampler": {}, "lora": {}}
    for kind, name, path in files.side_files():
        raw_meta = read_safetensors_header(path).get("__metadata__") or {}
        if kind == "upsampler" and not isinstance(Checkpoint(path).metadata.get("config"), dict):
            raise ConvertError(f"{path}: no upsampler 'config' in its metadata")
        tensors = {k: _cast(v, target) for k, v in mx.load(path).items()}
        fname = f"{kind}-{name}.safetensors"
        _save(os.path.join(out_dir, fname), tensors, metadata=raw_meta)
        side[kind][name] = fname
        progress(f"{kind} {name}: {len(tensors)} tensors")
    return side


def quantization_entry(bits: int | None, group_size: int, layers: int, pattern: str) -> dict | None:
    return None if not bits else {"bits": bits, "group_size": group_size, "mode": "affine", "layers": layers,
                                  "predicate": pattern}


def _write(src: Checkpoint, files: SourceFiles, out_dir: str, plan: dict[str, list[str]], target: mx.Dtype,
           bits: int | None, group_size: int, shard_bytes: int, progress) -> dict:
    components: dict[str, list[str]] = {}
    quantized_layers = 0
    arrays = mx.load(src.path)  # lazy; each tensor is read when its shard is written
    for comp, keys in plan.items():
        writer = _ShardWriter(out_dir, comp, shard_bytes)
        quantized_layers += write_component(writer, arrays, keys, src.shapes, target, bits, group_size)
        components[comp] = writer.written
        progress(f"{comp}: {len(keys)} tensors -> {len(writer.written)} file(s)")
    del arrays
    side = write_side_files(files, out_dir, target, progress)
    metadata = {k: v for k, v in src.metadata.items()}
    quant = quantization_entry(bits, group_size, quantized_layers, _QUANTIZED_LINEAR.pattern)
    return {"format": CONVERTED_FORMAT, "format_version": 1, "layout": "single",
            "model_version": metadata.get("model_version"), "metadata": metadata, "quantization": quant,
            "components": components, "upsamplers": side["upsampler"], "loras": side["lora"]}


def _convert_text_encoder(spec: str, out_dir: str, dtype: str, quantize: str | None, group_size: int) -> str:
    """Gemma through mlx-lm's own converter (it downloads, sanitizes the multimodal layout and
    quantizes as mlx-lm models expect)."""
    from mlx_lm import convert as lm_convert

    kwargs = {"hf_path": spec, "mlx_path": out_dir, "dtype": dtype}
    if quantize:
        kwargs.update(quantize=True, q_bits=QUANT_BITS[quantize], q_group_size=group_size)
    try:
        lm_convert(**kwargs)
    except Exception as e:  # unknown repo, unsupported architecture...: one line naming the source
        raise ConvertError(f"--text-encoder {spec}: mlx-lm could not convert it ({type(e).__name__}: {e})") from e
    return "text_encoder"


def _verify(folder: str, src: Checkpoint, info: dict) -> None:
    """Re-read what was written: every source tensor is there once (quantized ones with their
    scales and biases), and the folder opens as a checkpoint."""
    out = Checkpoint(folder)
    expected = set(src.shapes)
    if info["quantization"]:
        extra = {k for k in out.shapes if k.endswith((".scales", ".biases"))}
    else:
        extra = set()
    got = set(out.shapes)
    if got != expected | extra:
        missing = sorted(expected - got)
        raise ConvertError(f"verification failed: {len(missing)} tensors missing in the output, e.g. {missing[:3]}")
    for name in [*info["upsamplers"].values(), *info["loras"].values()]:
        read_safetensors_header(os.path.join(folder, name))


__all__ = ["ConvertError", "convert", "is_replaceable", "report", "resolve_sources", "should_quantize",
           "CheckpointError"]
