"""Convert the split release (LTX-2.5 on: one safetensors per component) into an mlx_ltx folder.

A split source is a folder laid out as the Hugging Face repo (``diffusion_models/``,
``text_encoders/``, ``vae/``, ...; files found by their headers, ``model_files.scan_folder``),
the files themselves (a list), or the repo id (``Lightricks/LTX-2.5``: only the files the variant
and the options need are downloaded, ``convert.SPLIT_*_PATTERNS``). A single .safetensors that
holds every component is the 2.3 release and is left to ``convert.py``.

The output is the converted-folder format of the single-file release (``convert.py``) plus:

* ``"layout": "split"``; ``"metadata"`` is the assembled metadata (``model_files.assembled_metadata``:
  each config section from its own file, the transformer file's ``model_version`` and
  ``gemma_source_checkpoint``); ``"role_metadata"`` {role: that role's parsed file metadata} (the
  video-VAE file's ``model_version`` sets the image CRF, the transformer's ``gemma_source_checkpoint``
  the Gemma check); for the text encoder it is the metadata of the file written here (the source's
  plus its ``quantization`` entry);
* the components written from all the role files (the text projection and the connectors from
  whichever of the transformer and text-encoder files holds them; the duration head's keys as
  their own component, whose file keeps the source file's metadata: the duration-head loader
  reads its config from there);
* ``"text_encoder"`` = ``"role_files"["text_encoder"]`` = ``text_encoder.safetensors``: the
  Gemma-4 bundle's language-model tensors (cast to --dtype; with --text-encoder-quantize the
  attention and MLP Linear layers whose input width --group-size divides are quantized with
  ``mx.quantize``, affine, and the file's metadata gets the ``quantization`` entry gemma4.py reads),
  its tokenizer byte tensors and ``hf_asset__*`` sidecars, and its metadata (``gemma_config``). The
  vision / audio towers are dropped: encoding never uses them. ``"role_files"["duration_head"]``
  is the duration head's file;
* ``"sources"``: role, path in the release and SHA-256 of every source file.

The text encoder (24 GB for the 12B) is streamed into its single file tensor by tensor
(``StreamingSafetensors``), the components shard by shard, so memory stays near one shard.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx

from . import model_files
from .config import parse_metadata
from .convert import (
    DTYPES,
    LORA_PATTERNS,
    SPLIT_LORA_PATTERNS,
    SPLIT_CONV_VAE_PATTERN,
    SPLIT_ROLE_PATTERNS,
    SPLIT_TRANSFORMER_PATTERNS,
    SPLIT_UPSAMPLER_PATTERNS,
    UPSAMPLER_PATTERNS,
    _QUANTIZED_LINEAR,
    ConvertError,
    _cast,
    _component_of,
    _ShardWriter,
    plan_components,
    quantization_entry,
    sha256_file,
    should_quantize,
    side_files_bytes,
    write_component,
    write_side_files,
)
from .loading import CONVERTED_CONFIG, CONVERTED_FORMAT, Checkpoint, CheckpointError, read_safetensors_header
from .model_files import RELEASE_NAMES, SplitLayoutError

TEXT_ENCODER_FILE = "text_encoder.safetensors"
# without these a converted model cannot generate; the duration head only serves auto duration
REQUIRED_ROLES = ("transformer", "text_encoder", "video_vae", "audio_vae")
# the Gemma-4 language model's Linear layers (attention projections, MLP), Comfy-flat or HF keys:
# what --text-encoder-quantize quantizes (the embedding, norms and layer scalars stay as they are)
TE_QUANTIZED_LINEAR = re.compile(r"(^|\.)layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")
# repo ids known to hold one release or the other; any other repo id is probed for split files
_SPLIT_REPO = re.compile(r"/LTX-(2\.([5-9]|\d\d+)|[3-9])", re.IGNORECASE)
_SINGLE_FILE_REPO = re.compile(r"/LTX-2(\.[0-4])?$", re.IGNORECASE)
_BYTE_TENSOR_PREFIXES = ("tokenizer_json", "hf_asset__")  # gemma4.TOKENIZER_JSON_TENSOR_KEY, HF_ASSET_TENSOR_PREFIX


@dataclass
class SplitSources:
    """The files of one split model: a path per role, the side files, and where they came from."""

    roles: dict[str, str]
    upsamplers: dict[str, str] = field(default_factory=dict)
    loras: dict[str, str] = field(default_factory=dict)
    where: str = ""
    root: str | None = None  # the release folder, to name sources by their path in it

    def side_files(self) -> list[tuple[str, str, str]]:
        return ([("upsampler", n, p) for n, p in self.upsamplers.items()]
                + [("lora", n, p) for n, p in self.loras.items()])


def split_allow_patterns(variant: str, upsamplers=(), loras=(), text_encoder: bool = True,
                         video_decoder: str | None = None) -> list[str]:
    """What a repo-id source downloads: the variant's transformer, the text encoder (unless given
    with --text-encoder), one video VAE (the diffusion one, the release's default, or the conv one
    with ``video_decoder="conv"``), the audio VAE, the duration head, the requested upsamplers and LoRAs."""
    return ([SPLIT_TRANSFORMER_PATTERNS[variant]]
            + [_role_pattern(role, video_decoder) for role in SPLIT_ROLE_PATTERNS
               if text_encoder or role != "text_encoder"]
            + [SPLIT_UPSAMPLER_PATTERNS[n] for n in upsamplers] + [SPLIT_LORA_PATTERNS[n] for n in loras])


def _role_pattern(role: str, video_decoder: str | None) -> str:
    return SPLIT_CONV_VAE_PATTERN if role == "video_vae" and video_decoder == "conv" else SPLIT_ROLE_PATTERNS[role]


def _check_names(upsamplers, loras) -> None:
    for flag, known, names in (("upsamplers", UPSAMPLER_PATTERNS, upsamplers), ("loras", LORA_PATTERNS, loras)):
        for name in names:
            if name not in known:
                raise ConvertError(f"--{flag} {name!r}: choose from {sorted(known)}")


def _text_encoder_bundle(spec: str | None) -> str | None:
    """--text-encoder with a split source: only a Gemma-4 bundle file (it then replaces the
    source's text encoder); the Gemma-3 folder of the 2.3 release is refused."""
    if spec is None:
        return None
    from .models.gemma4 import bundle_model_type

    if os.path.isfile(spec):
        try:
            model_type = bundle_model_type(spec)
        except CheckpointError:
            model_type = None
        if model_type == "gemma4_unified":
            return spec
    raise ConvertError(f"--text-encoder {spec}: an LTX-2.5 (split) source brings its own text encoder "
                       f"({RELEASE_NAMES['text_encoder']}), converted with it; a Gemma-3 folder or repo (the LTX-2 / "
                       f"2.3 text encoder) does not fit this model. Drop --text-encoder (or give a Gemma-4 bundle "
                       f".safetensors, which then replaces the source's)")


def _layout_error(e: Exception) -> ConvertError:
    return ConvertError(str(e))


def resolve_split_sources(source, variant: str, upsamplers: list[str], loras: list[str],
                          text_encoder: str | None = None, video_decoder: str | None = None) -> SplitSources | None:
    """The split release's files for ``variant`` and the options, or None when ``source`` is the
    single-file release (one checkpoint, a folder or a repo of it): decided from the source."""
    paths = [os.fspath(p) for p in source] if isinstance(source, (list, tuple)) else [os.fspath(source)]
    if len(paths) == 1:
        src = paths[0]
        if os.path.isfile(src):
            role = model_files.classify(src).role
            if role in model_files.ROLES:
                raise ConvertError(f"{src} is only the {role.replace('_', ' ')} file of the split (LTX-2.5) release: "
                                   f"give --source the folder holding all of them (laid out as the Hugging Face repo), "
                                   f"all the files, or the repo id Lightricks/LTX-2.5")
            return None
        if os.path.isdir(src):
            if not model_files.is_split_folder(src):
                return None
            _check_names(upsamplers, loras)
            te = _text_encoder_bundle(text_encoder)
            try:
                files = model_files.scan_folder(src, variant, video_decoder)
            except SplitLayoutError as e:
                raise _layout_error(e) from None
            return _sources(files, src, variant, upsamplers, loras, te, root=src)
        if src.count("/") != 1 or _SINGLE_FILE_REPO.search(src):
            return None  # convert.resolve_sources reports it / downloads the single file
        if not _SPLIT_REPO.search(src) and text_encoder is not None and not os.path.isfile(text_encoder):
            return None  # an unknown repo with a Gemma-3 text encoder: the single-file release
        _check_names(upsamplers, loras)
        te = _text_encoder_bundle(text_encoder)
        return _download(src, variant, upsamplers, loras, te, video_decoder)
    for p in paths:
        if not os.path.isfile(p):
            raise ConvertError(f"--source {p}: no such file (several --source files are the split release's files)")
    _check_names(upsamplers, loras)
    te = _text_encoder_bundle(text_encoder)
    try:
        files = model_files.assemble([model_files.classify(p) for p in paths], "the --source files", variant,
                                     video_decoder)
    except SplitLayoutError as e:
        raise _layout_error(e) from None
    return _sources(files, "the --source files", variant, upsamplers, loras, te)


def _download(repo: str, variant: str, upsamplers, loras, te: str | None,
              video_decoder: str | None = None) -> SplitSources | None:
    from huggingface_hub import snapshot_download

    allow = split_allow_patterns(variant, upsamplers, loras, text_encoder=te is None, video_decoder=video_decoder)
    try:
        folder = snapshot_download(repo, allow_patterns=allow)
    except Exception as e:
        raise ConvertError(f"could not fetch {allow} from {repo!r} ({type(e).__name__}: {e})") from None

    def find(pattern: str) -> str | None:
        found = sorted(glob.glob(os.path.join(folder, pattern)))
        return found[-1] if found else None  # the highest version sorts last

    transformer = find(SPLIT_TRANSFORMER_PATTERNS[variant])
    if transformer is None:
        if not model_files.is_split_folder(folder) and not _SPLIT_REPO.search(repo):
            return None  # no split files there: the single-file release
        raise ConvertError(f"{repo}: no {variant} transformer ({SPLIT_TRANSFORMER_PATTERNS[variant]}, the release's "
                           f"{RELEASE_NAMES['transformer']})")
    paths = {"transformer": transformer}
    for role in SPLIT_ROLE_PATTERNS:
        if role == "text_encoder" and te is not None:
            continue
        path = find(_role_pattern(role, video_decoder))
        if path is not None:
            paths[role] = path
    try:
        files = model_files.from_paths(paths, variant, video_decoder)  # each file's header must say its role
    except SplitLayoutError as e:
        raise _layout_error(e) from None
    for name in upsamplers:
        path = find(SPLIT_UPSAMPLER_PATTERNS[name])
        if path is not None:
            files.upsamplers[name] = path
    for name in loras:
        path = find(SPLIT_LORA_PATTERNS[name])
        if path is not None:
            files.loras[name] = path
    return _sources(files, repo, variant, upsamplers, loras, te, root=folder)


def _sources(files: model_files.SplitFiles, where: str, variant: str, upsamplers, loras, te: str | None,
             root: str | None = None) -> SplitSources:
    """Check the assembled files against what the conversion needs."""
    tr = files.roles["transformer"].path
    name = os.path.basename(tr).lower()
    named = "distilled" if "distilled" in name else "dev" if "dev" in name else None
    if named is not None and named != variant:
        raise ConvertError(f"{where}: no {variant} transformer (the release's {RELEASE_NAMES['transformer']}); "
                           f"{os.path.basename(tr)} is the {named} one: convert it with --variant {named}, or add the "
                           f"{variant} transformer")
    roles = {r: i.path for r, i in files.roles.items()}
    if te is not None:
        roles["text_encoder"] = te
    vae = files.roles.get("video_vae")
    if vae is not None and vae.vae_kind is None:
        raise ConvertError(f"{vae.path}: a {vae.vae_class} video VAE, a class mlx_ltx does not build; use the "
                           f"release's {RELEASE_NAMES['video_vae']} or {RELEASE_NAMES['video_vae_conv']}")
    for role in REQUIRED_ROLES:
        if role not in roles:
            fix = " or pass it with --text-encoder" if role == "text_encoder" else ""
            raise ConvertError(f"{where}: no {role.replace('_', ' ')} file (the release's {RELEASE_NAMES[role]}); "
                               f"download it from the Hugging Face repo into the folder{fix}, or pass "
                               f"--source Lightricks/LTX-2.5 to fetch what is needed")
    out = SplitSources(roles, where=where, root=root)
    for kind, wanted, found, release in (("upsampler", upsamplers, files.upsamplers, RELEASE_NAMES["upsampler"]),
                                         ("lora", loras, files.loras, RELEASE_NAMES["lora"])):
        for n in wanted:
            if n not in found:
                raise ConvertError(f"{where}: no {n} {kind} file (the release's x2 one is {release}; "
                                   f"found {sorted(found) or 'none'})")
            getattr(out, kind + "s")[n] = found[n]
    return out


# safetensors dtype names and sizes
_ST_DTYPES = {mx.bool_: ("BOOL", 1), mx.uint8: ("U8", 1), mx.int8: ("I8", 1), mx.uint16: ("U16", 2),
              mx.int16: ("I16", 2), mx.uint32: ("U32", 4), mx.int32: ("I32", 4), mx.uint64: ("U64", 8),
              mx.int64: ("I64", 8), mx.float16: ("F16", 2), mx.bfloat16: ("BF16", 2), mx.float32: ("F32", 4)}
_ST_SIZES = dict(_ST_DTYPES.values()) | {"F64": 8}
_FLOAT_NAMES = ("F16", "BF16", "F32", "F64")


class StreamingSafetensors:
    """One safetensors file written tensor by tensor: the header (names, dtypes, shapes, offsets)
    comes from the plan, then each tensor is evaluated, written and dropped, so memory stays near
    the largest tensor (``mx.save_safetensors`` evaluates them all first)."""

    def __init__(self, path: str, specs: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]):
        header: dict = {"__metadata__": metadata} if metadata else {}
        offset = 0
        for name, dtype, shape in specs:
            n = math.prod(shape) * _ST_SIZES[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.path, self.specs, self.i = path, specs, 0
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(blob)) + blob)

    def add(self, name: str, value: mx.array) -> None:
        want = self.specs[self.i] if self.i < len(self.specs) else None
        got = (name, _ST_DTYPES[value.dtype][0], tuple(value.shape))
        if got != want:
            raise ConvertError(f"{self.path}: internal error: tensor {got} written where the header has {want}")
        value = mx.contiguous(value)
        mx.eval(value)
        self.f.write(memoryview(value))
        self.i += 1

    def close(self) -> None:
        self.f.close()
        if self.i != len(self.specs):
            raise ConvertError(f"{self.path}: internal error: {len(self.specs) - self.i} tensors left unwritten")


def _te_quantized(key: str, shape: tuple[int, ...], group_size: int) -> bool:
    return bool(TE_QUANTIZED_LINEAR.search(key)) and len(shape) == 2 and shape[-1] % group_size == 0


class SplitJob:
    """One split conversion: :meth:`plan` checks everything and returns the bytes it will write;
    :meth:`write` fills the folder, writes its config.json and verifies it."""

    def __init__(self, sources: SplitSources, variant: str, dtype: str, bits: int | None, te_bits: int | None,
                 group_size: int, shard_bytes: int, hash_sources: bool, progress: Callable[[str], None]):
        self.sources, self.variant, self.dtype = sources, variant, dtype
        self.target = DTYPES[dtype]
        self.bits, self.te_bits, self.group_size = bits, te_bits, group_size
        self.shard_bytes, self.hash_sources, self.progress = shard_bytes, hash_sources, progress

    def plan(self) -> int:
        try:
            return self._plan()
        except SplitLayoutError as e:  # e.g. a file without its config section
            raise _layout_error(e) from None

    def _plan(self) -> int:
        from .models.gemma4 import check_gemma_version, language_model_tensors, read_gemma4_config

        roles = self.sources.roles
        self.src = src = Checkpoint(dict(roles), variant=self.variant)  # every header, keys unique across files
        src.config  # every config section, each from its file
        te_path = roles["text_encoder"]
        check_gemma_version(src.role_metadata("transformer"), read_gemma4_config(te_path), roles["transformer"],
                            te_path)
        lm = language_model_tensors(te_path)
        lm_keys = {k for k, _, _ in lm}
        te_keys = [k for k in src.shapes if src.files[k] == te_path]
        byte_keys = [k for k in te_keys if k.startswith(_BYTE_TENSOR_PREFIXES)]
        # the TE file's text projection / connectors are components; its towers are dropped
        te_components = [k for k in te_keys if k not in lm_keys and k not in byte_keys and _component_of(k)]
        self.dropped = [k for k in te_keys if k not in lm_keys and k not in byte_keys and k not in te_components]
        keys = [k for k in src.shapes if src.files[k] != te_path] + te_components
        self.plan_files, total = plan_components(src, keys, self.sources.where, self.bits, self.group_size,
                                                 self.target)
        if self.bits and not any(should_quantize(k, src.shapes[k], self.group_size)
                                 for k in self.plan_files.get("transformer", [])):
            raise ConvertError(f"--quantize q{self.bits}: no transformer linear layer has an input width divisible by "
                               f"--group-size {self.group_size}")
        # the text encoder file: (key, safetensors dtype, shape) in write order, quantized triples included
        self.te_specs: list[tuple[str, str, tuple[int, ...]]] = []
        self.te_quantized = 0
        tgt = _ST_DTYPES[self.target][0]
        for key, dtype, shape in lm + [(k, src.dtypes[k], src.shapes[k]) for k in byte_keys]:
            out_dtype = tgt if dtype in _FLOAT_NAMES and len(shape) > 0 else dtype
            if self.te_bits and _te_quantized(key, shape, self.group_size):
                base = key[: -len(".weight")]
                self.te_specs += [(key, "U32", (*shape[:-1], shape[-1] * self.te_bits // 32)),
                                  (base + ".scales", tgt, (*shape[:-1], shape[-1] // self.group_size)),
                                  (base + ".biases", tgt, (*shape[:-1], shape[-1] // self.group_size))]
                self.te_quantized += 1
            else:
                self.te_specs.append((key, out_dtype, shape))
        if self.te_bits and not self.te_quantized:
            raise ConvertError(f"--text-encoder-quantize q{self.te_bits}: no linear layer of the text encoder "
                               f"{te_path} has an input width divisible by --group-size {self.group_size}")
        total += sum(math.prod(s) * _ST_SIZES[d] for _, d, s in self.te_specs)
        total += side_files_bytes(self.sources, self.target)
        if "duration_head" not in roles:
            self.progress(f"{self.sources.where}: no duration head file ({RELEASE_NAMES['duration_head']}); the "
                          f"converted model needs an explicit frame count (no auto duration)")
        return total

    def write(self, out_dir: str) -> dict:
        src, roles, progress = self.src, self.sources.roles, self.progress
        arrays = {path: mx.load(path) for path in dict.fromkeys(roles.values())}  # lazy
        by_key = {}  # a component's keys may come from several files
        for path, tensors in arrays.items():
            by_key.update({k: (path, tensors) for k in tensors})
        components: dict[str, list[str]] = {}
        quantized_layers = 0
        for comp, keys in self.plan_files.items():
            meta = None
            limit = self.shard_bytes
            if comp == "duration_head":  # one file with its source's metadata: the duration-head loader's config
                meta = read_safetensors_header(roles["duration_head"]).get("__metadata__") or {}
                limit = 2**62
            writer = _ShardWriter(out_dir, comp, limit, meta)
            view = _PopView(by_key)
            quantized_layers += write_component(writer, view, keys, src.shapes, self.target, self.bits,
                                                self.group_size)
            components[comp] = writer.written
            progress(f"{comp}: {len(keys)} tensors -> {len(writer.written)} file(s)")
        te_meta = self._write_text_encoder(out_dir, _PopView(by_key))
        del arrays, by_key
        side = write_side_files(self.sources, out_dir, self.target, progress)
        role_metadata = {r: src.role_metadata(r) for r in roles if r != "text_encoder"}
        role_metadata["text_encoder"] = parse_metadata(te_meta)
        role_files = {"text_encoder": TEXT_ENCODER_FILE}
        if "duration_head" in components:
            role_files["duration_head"] = components["duration_head"][0]
        te_quant = quantization_entry(self.te_bits, self.group_size, self.te_quantized, TE_QUANTIZED_LINEAR.pattern)
        info = {"format": CONVERTED_FORMAT, "format_version": 1, "layout": "split",
                "model_version": src.metadata.get("model_version"), "metadata": src.metadata,
                "role_metadata": role_metadata, "role_files": role_files,
                "quantization": quantization_entry(self.bits, self.group_size, quantized_layers,
                                                   _QUANTIZED_LINEAR.pattern),
                "components": components, "upsamplers": side["upsampler"], "loras": side["lora"],
                "text_encoder": TEXT_ENCODER_FILE, "text_encoder_quantization": te_quant,
                "text_encoder_dropped": len(self.dropped), "dtype": self.dtype, "variant": self.variant}
        info["sources"] = [{"role": role, "file": self._name(path), "bytes": os.path.getsize(path),
                            "sha256": sha256_file(path) if self.hash_sources else None}
                           for role, path in [*roles.items(), *((k, p) for k, _, p in self.sources.side_files())]]
        with open(os.path.join(out_dir, CONVERTED_CONFIG), "w") as f:
            json.dump(info, f, indent=1)
        self._verify(out_dir, info)
        return info

    def _name(self, path: str) -> str:
        root = self.sources.root
        if root and os.path.abspath(path).startswith(os.path.abspath(root) + os.sep):
            return os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        return os.path.basename(path)

    def _write_text_encoder(self, out_dir: str, arrays: _PopView) -> dict[str, str]:
        te_path = self.sources.roles["text_encoder"]
        meta = dict(read_safetensors_header(te_path).get("__metadata__") or {})
        if self.te_bits:
            meta["quantization"] = json.dumps({"group_size": self.group_size, "bits": self.te_bits, "mode": "affine"})
        writer = StreamingSafetensors(os.path.join(out_dir, TEXT_ENCODER_FILE), self.te_specs, meta)
        try:
            specs = iter(self.te_specs)
            for key, _, _ in specs:
                value = arrays.pop(key)
                if key.endswith(".weight") and self.te_bits and _te_quantized(key, tuple(value.shape), self.group_size):
                    wq, scales, biases = mx.quantize(_cast(value, self.target), group_size=self.group_size,
                                                     bits=self.te_bits)
                    base = key[: -len(".weight")]
                    writer.add(key, wq)
                    writer.add(base + ".scales", scales)
                    writer.add(base + ".biases", biases)
                    next(specs), next(specs)  # the scales and biases entries
                else:
                    writer.add(key, _cast(value, self.target))
        except BaseException:
            writer.f.close()  # the folder is removed by the caller
            raise
        writer.close()
        self.progress(f"text encoder: {len(self.te_specs)} tensors -> {TEXT_ENCODER_FILE}"
                      + (f" ({self.te_quantized} linear layers quantized to {self.te_bits} bits)" if self.te_bits
                         else "") + (f"; {len(self.dropped)} vision/audio tower tensors dropped" if self.dropped
                                     else ""))
        return meta

    def _verify(self, folder: str, info: dict) -> None:
        """Re-read what was written: every planned tensor once (quantized ones with scales and
        biases), the folder opens as a checkpoint with the same config, the text encoder file holds
        its planned tensors and its config reads."""
        from .models.gemma4 import read_gemma4_config

        out = Checkpoint(folder)
        expected = set()
        for keys in self.plan_files.values():
            for k in keys:
                expected.add(k)
                if self.bits and should_quantize(k, self.src.shapes[k], self.group_size):
                    expected |= {k[: -len(".weight")] + ".scales", k[: -len(".weight")] + ".biases"}
        if set(out.shapes) != expected:
            missing, extra = sorted(expected - set(out.shapes)), sorted(set(out.shapes) - expected)
            raise ConvertError(f"verification failed: {len(missing)} tensors missing in the output, e.g. "
                               f"{missing[:3]}; {len(extra)} unexpected, e.g. {extra[:3]}")
        out.config  # noqa: B018 (the sections parse from the stored metadata)
        te = os.path.join(folder, TEXT_ENCODER_FILE)
        header = read_safetensors_header(te)
        header.pop("__metadata__", None)
        if {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items()} != \
                {k: (d, s) for k, d, s in self.te_specs}:
            raise ConvertError(f"verification failed: {te} does not hold the planned text-encoder tensors")
        read_gemma4_config(te)
        if out.role_path("duration_head"):
            read_safetensors_header(out.role_path("duration_head"))
        for name in [*info["upsamplers"].values(), *info["loras"].values()]:
            read_safetensors_header(os.path.join(folder, name))


class _PopView:
    """``pop(key)`` over the lazily loaded tensors of several files (each tensor popped from its
    file's dict, so a written tensor is not kept alive)."""

    def __init__(self, by_key: dict[str, tuple[str, dict]]):
        self.by_key = by_key

    def pop(self, key: str) -> mx.array:
        _, tensors = self.by_key.pop(key)
        return tensors.pop(key)
