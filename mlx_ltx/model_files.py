"""The split release (LTX-2.5 on): one safetensors file per component, found by what it holds.

The 2.5 repo lays its files out by kind (``diffusion_models/``, ``text_encoders/``, ``vae/``,
``latent_upscale_models/``, ``loras/``, ``model_patches/``), and the reference's ``ModelPaths``
gives each component its own path: transformer, text encoder, video VAE, audio VAE, duration
head. Each file supplies its own metadata (``config.transformer`` from the transformer file,
``config.vae`` from the video-VAE file, ``config.audio_vae`` + ``config.vocoder`` from the
audio file), as the reference's builders read the metadata of the file they load.

A file's role is read from its header, never from its name: the video VAE and the audio VAE
share ``vae/``, and users rename files. Names only break ties the headers cannot: a dev and a
distilled transformer look alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .config import parse_metadata

# the roles of ``ModelPaths.from_split``, and the release file each one is (for error messages)
ROLES = ("transformer", "text_encoder", "video_vae", "audio_vae", "duration_head")
RELEASE_NAMES = {
    "transformer": "diffusion_models/ltx-2.5-22b-{dev,distilled}-transformer-bf16.safetensors",
    "text_encoder": "text_encoders/gemma4-12b-with-proj-ltx-2.5-bf16.safetensors",
    "video_vae": "vae/ltx-2.5-video-vae-bf16.safetensors",
    "video_vae_conv": "vae/ltx-2.5-video-vae-conv-bf16.safetensors",
    "audio_vae": "vae/ltx-2.5-audio-vae-bf16.safetensors",
    "duration_head": "model_patches/ltx-2.5-duration-head-bf16.safetensors",
    "upsampler": "latent_upscale_models/ltx-2.5-spatial-upscaler-x2-bf16.safetensors",
    "lora": "loras/ltx-2.5-22b-distilled-lora-450-bf16.safetensors",
}
# which role's file each section of the assembled ``config`` comes from
SECTION_ROLES = {"transformer": "transformer", "vae": "video_vae", "audio_vae": "audio_vae", "vocoder": "audio_vae"}
# the Hugging Face repo's folders; a split folder has at least the first
SPLIT_FOLDERS = ("diffusion_models", "text_encoders", "vae", "latent_upscale_models", "loras", "model_patches")
# video-VAE kinds (``config.vae._class_name``; absent means the conv autoencoder, as the reference reads it): the
# decoder each class is built as (``VideoDecoderConfigurator``'s switch). ``generations.VIDEO_DECODERS`` is this.
CONV_VAE_CLASS = "CausalVideoAutoencoder"
DIFFUSION_VAE_CLASS = "CausalDiffusionVAE"
VIDEO_VAE_KINDS = {CONV_VAE_CLASS: "conv", DIFFUSION_VAE_CLASS: "diffusion"}
# with both VAE files in a folder, the release's default (its ``ltx-2.5-video-vae`` file) decodes
DEFAULT_VIDEO_DECODER = "diffusion"


class SplitLayoutError(ValueError):
    """A split folder or file set is incomplete or ambiguous."""


@dataclass(frozen=True)
class FileInfo:
    """One safetensors file, classified from its header."""

    path: str
    role: str  # a ROLES entry, "upsampler", "lora", or "monolith" (the 2.3 single file)
    metadata: dict[str, Any] = field(repr=False)
    keys: tuple[str, ...] = field(repr=False)

    @property
    def vae_class(self) -> str:
        return ((self.metadata.get("config") or {}).get("vae") or {}).get("_class_name", CONV_VAE_CLASS)

    @property
    def vae_kind(self) -> str | None:
        """"conv" / "diffusion" for a video VAE file (None: a class this port does not know)."""
        return VIDEO_VAE_KINDS.get(self.vae_class)


def classify(path: str) -> FileInfo:
    """What a safetensors file is, from its keys and ``__metadata__``."""
    from .loading import read_safetensors_header

    header = read_safetensors_header(path)
    metadata = parse_metadata(header.pop("__metadata__", None))
    keys = tuple(header)
    cfg = metadata.get("config") if isinstance(metadata.get("config"), dict) else {}

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if "gemma_config" in metadata or "tokenizer_json" in header:
        role = "text_encoder"
    elif has("duration_head."):
        role = "duration_head"
    elif any(".lora_A." in k or ".lora_down." in k or k.endswith(("lora_A.weight", "lora_down.weight")) for k in keys):
        role = "lora"
    elif has("model.diffusion_model.") and (has("vae.") or has("audio_vae.")):
        role = "monolith"
    elif has("model.diffusion_model."):
        role = "transformer"
    elif "audio_vae" in cfg or has("audio_vae."):
        role = "audio_vae"
    elif "vae" in cfg or has("encoder.") or has("decoder."):
        role = "video_vae"
    elif "initial_conv.weight" in header:
        role = "upsampler"
    else:
        role = "unknown"
    return FileInfo(path, role, metadata, keys)


def upsampler_name(info: FileInfo) -> str:
    """The name the pipelines ask for: ``x2``, ``x1.5`` or ``temporal-x2`` (convert.py's names)."""
    cfg = info.metadata.get("config") or {}
    if cfg.get("temporal_upsample") and not cfg.get("spatial_upsample", True):
        return "temporal-x2"
    scale = cfg.get("spatial_scale", 2.0)
    return "x2" if float(scale) == 2.0 else f"x{float(scale):g}"


def is_split_folder(path: str) -> bool:
    return os.path.isdir(os.path.join(path, SPLIT_FOLDERS[0]))


def _variant_of(path: str) -> str | None:
    name = os.path.basename(path).lower()
    return "distilled" if "distilled" in name else "dev" if "dev" in name else None


@dataclass
class SplitFiles:
    """The files of one split model: a path per role, and the side files (upsamplers, LoRAs)."""

    roles: dict[str, FileInfo]
    upsamplers: dict[str, str] = field(default_factory=dict)
    loras: dict[str, str] = field(default_factory=dict)
    variant: str | None = None


def pick_video_vae(candidates: list[FileInfo], where: str, video_decoder: str | None) -> list[FileInfo]:
    """The video VAE files of the asked-for decoder kind (all when None); none of them is an error."""
    if video_decoder is not None:
        if video_decoder not in VIDEO_VAE_KINDS.values():
            kinds = sorted(set(VIDEO_VAE_KINDS.values()))
            raise SplitLayoutError(f"video_decoder={video_decoder!r}; choose from {kinds}")
        chosen = [c for c in candidates if c.vae_kind == video_decoder]
        if candidates and not chosen:
            have = ", ".join(f"{os.path.basename(c.path)} ({c.vae_kind or c.vae_class})" for c in candidates)
            raise SplitLayoutError(f"{where} has no {video_decoder} video VAE file (it has {have}): add the release's "
                                   f"{RELEASE_NAMES['video_vae' if video_decoder == 'diffusion' else 'video_vae_conv']}"
                                   f", or choose --video-decoder {candidates[0].vae_kind or 'conv'}")
        candidates = chosen
    return candidates


def _pick(candidates: list[FileInfo], role: str, where: str, variant: str | None,
          video_decoder: str | None = None) -> FileInfo | None:
    if role == "video_vae":
        candidates = pick_video_vae(candidates, where, video_decoder)
    if not candidates:
        return None
    if role == "transformer" and len(candidates) > 1:
        if variant is None:
            raise SplitLayoutError(
                f"{where} holds several transformers ({', '.join(os.path.basename(c.path) for c in candidates)}): "
                f"choose one with the pipeline (a distilled or dev pipeline picks the file named so) or pass the "
                f"transformer file itself")
        candidates = [c for c in candidates if _variant_of(c.path) == variant] or candidates
    if role == "video_vae" and len(candidates) > 1:
        # both decoders of one release: the release's default file, unless the caller chose (video_decoder)
        preferred = [c for c in candidates if c.vae_kind == DEFAULT_VIDEO_DECODER]
        candidates = preferred or candidates
    if len(candidates) > 1:
        raise SplitLayoutError(f"{where} holds several {role.replace('_', ' ')} files "
                               f"({', '.join(os.path.basename(c.path) for c in candidates)}): keep one, or pass "
                               f"the files explicitly")
    return candidates[0]


def scan_folder(folder: str, variant: str | None = None, video_decoder: str | None = None) -> SplitFiles:
    """Classify every safetensors file in a split folder's kind subfolders; other files are not the
    model's (the top level of a download holds none)."""
    paths = []
    for sub in SPLIT_FOLDERS:
        d = os.path.join(folder, sub)
        if os.path.isdir(d):
            paths += sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".safetensors"))
    return assemble([classify(p) for p in paths], folder, variant, video_decoder)


def assemble(infos: list[FileInfo], where: str, variant: str | None = None,
             video_decoder: str | None = None) -> SplitFiles:
    """Roles from classified files; a monolith or an unrecognised file among them is an error."""
    by_role: dict[str, list[FileInfo]] = {}
    for info in infos:
        if info.role == "monolith":
            raise SplitLayoutError(f"{info.path} is a single-file (LTX-2.3-style) checkpoint: open it on its own, "
                                   f"not as part of a split model")
        if info.role == "unknown":
            raise SplitLayoutError(f"{info.path}: not an LTX component (no transformer, text-encoder, VAE, "
                                   f"upsampler, LoRA or duration-head tensors); move it out of {where}")
        if info.role == "lora" and "distilled" not in os.path.basename(info.path).lower():
            continue  # a user's LoRA kept beside the release's: not part of the model
        by_role.setdefault(info.role, []).append(info)
    roles = {}
    for role in ROLES:
        picked = _pick(by_role.get(role, []), role, where, variant, video_decoder)
        if picked is not None:
            roles[role] = picked
    if "transformer" not in roles:
        raise SplitLayoutError(f"{where}: no transformer file (expected {RELEASE_NAMES['transformer']})")
    upsamplers = {upsampler_name(i): i.path for i in by_role.get("upsampler", [])}
    loras = {"distilled": i.path for i in by_role.get("lora", []) if "distilled" in os.path.basename(i.path).lower()}
    return SplitFiles(roles, upsamplers, loras, variant or _variant_of(roles["transformer"].path))


def from_paths(paths: dict[str, str], variant: str | None = None, video_decoder: str | None = None) -> SplitFiles:
    """Explicit files per role (``ModelPaths.from_split``); each is checked to be what its role says."""
    infos = {}
    for role, path in paths.items():
        if role not in ROLES:
            raise SplitLayoutError(f"unknown component {role!r}; choose from {ROLES}")
        info = classify(os.fspath(path))
        if info.role != role:
            raise SplitLayoutError(f"{path} was given as the {role.replace('_', ' ')} file but its tensors are "
                                   f"those of the {info.role.replace('_', ' ')}")
        infos[role] = info
    if "video_vae" in infos:
        pick_video_vae([infos["video_vae"]], paths["video_vae"], video_decoder)
    if "transformer" not in infos:
        raise SplitLayoutError(f"a split model needs its transformer file ({RELEASE_NAMES['transformer']})")
    return SplitFiles(infos, variant=variant or _variant_of(infos["transformer"].path))


def assembled_metadata(files: SplitFiles) -> dict[str, Any]:
    """The metadata the components see: ``config`` with each section from its own file, and the
    transformer file's ``model_version`` / ``gemma_source_checkpoint`` (what ``detect_params`` and
    the Gemma check read)."""
    config: dict[str, Any] = {}
    for section, role in SECTION_ROLES.items():
        info = files.roles.get(role)
        cfg = (info.metadata.get("config") if info is not None else None) or {}
        if section in cfg:
            config[section] = cfg[section]
    tr = files.roles["transformer"].metadata
    out = {k: v for k, v in tr.items() if k != "config"}
    out["config"] = config
    return out


def missing_section_error(where: str, section: str) -> SplitLayoutError:
    role = SECTION_ROLES[section]
    return SplitLayoutError(f"{where}: no {role.replace('_', ' ')} file (a safetensors with config.{section}, the "
                            f"release's {RELEASE_NAMES[role]}); download it from the Hugging Face repo into the "
                            f"folder, or pass it with the other files")
