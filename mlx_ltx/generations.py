"""What a checkpoint is, decided in one place from its files' metadata and keys.

LTX generations differ by data, not by code paths: the transformer file's ``model_version``
(defaults, the distilled stage-1 sampler; the Gemma provenance check is ``gemma4.check_gemma_version``), the
video-VAE file's ``model_version`` (the image CRF, as ``ImageConditioner.default_image_crf``
reads it), ``config.vae._class_name`` (the decoder kind, ``VIDEO_DECODERS``), the text encoder's Gemma
``model_type`` (its loaders: ``text_encoder.GEMMA_FAMILIES``) and whether a duration head is there. :func:`describe` reads all of it once;
the pipelines consult the :class:`ModelKind` and the registries below instead of comparing
versions themselves, so a new generation adds rows here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .guidance import PipelineParams, detect_params, parse_model_version
from .loading import Checkpoint
from .model_files import CONV_VAE_CLASS, RELEASE_NAMES, VIDEO_VAE_KINDS

# config.vae._class_name -> the decoder this port builds for it (VideoDecoderConfigurator's switch):
# "conv" (models/video_decoder.py) or "diffusion" (models/diffusion_video_decoder.py)
VIDEO_DECODERS = VIDEO_VAE_KINDS
# the generation whose release ships a duration head (model_patches/): its clips have no default length
DURATION_HEAD_SINCE = (2, 5)


@dataclass(frozen=True)
class ModelKind:
    """Everything generation-dependent about one checkpoint."""

    version: tuple[int, ...]          # the transformer file's model_version, parsed (() = unversioned)
    layout: str                       # "single" | "split" (a converted folder keeps its source's)
    params: PipelineParams            # detect_params of the transformer file
    image_crf: int                    # the CRF images are re-compressed at (video-VAE file's version)
    video_vae_class: str              # config.vae._class_name of the video-VAE file
    video_decoder: str | None         # its VIDEO_DECODERS kind, "conv" / "diffusion" (None: unknown class)
    text_encoder_family: str | None   # the bundled TE's model_type; None when the TE is not in the checkpoint
    has_duration_head: bool

    @property
    def name(self) -> str:
        return ".".join(map(str, self.version[:2])) if self.version else "2.0"

    @property
    def ships_duration_head(self) -> bool:
        return self.version >= DURATION_HEAD_SINCE


def _version(metadata: dict) -> tuple[int, ...]:
    v = metadata.get("model_version")
    return parse_model_version(None if v is None else str(v))


def describe(checkpoint: Checkpoint) -> ModelKind:
    """Read a checkpoint's kind from its files (headers only)."""
    tr = checkpoint.role_metadata("transformer")
    vae_meta = checkpoint.role_metadata("video_vae")
    vae_cfg = ((vae_meta.get("config") or {}).get("vae") or {}) if isinstance(vae_meta.get("config"), dict) else {}
    te = checkpoint.role_metadata("text_encoder") if checkpoint.role_path("text_encoder") else {}
    gemma_cfg = te.get("gemma_config") if isinstance(te.get("gemma_config"), dict) else None
    return ModelKind(
        version=_version(tr),
        layout=checkpoint.layout,
        params=detect_params(None if tr.get("model_version") is None else str(tr["model_version"])),
        image_crf=detect_params(None if vae_meta.get("model_version") is None
                                else str(vae_meta["model_version"])).default_image_crf,
        video_vae_class=vae_cfg.get("_class_name", CONV_VAE_CLASS),
        video_decoder=VIDEO_DECODERS.get(vae_cfg.get("_class_name", CONV_VAE_CLASS)),
        text_encoder_family=None if gemma_cfg is None else gemma_cfg.get("model_type"),
        has_duration_head=checkpoint.has_component("duration_head"),
    )


def check_buildable(kind: ModelKind, checkpoint: Checkpoint) -> None:
    """Refuse, before anything loads, a checkpoint whose parts this port does not build."""
    if kind.video_decoder is None:
        where = checkpoint.role_path("video_vae") or checkpoint.path
        raise ValueError(f"{where}: its video VAE is a {kind.video_vae_class!r}, a class mlx_ltx does not build "
                         f"(it builds {', '.join(sorted(VIDEO_DECODERS))}); use the release's "
                         f"{RELEASE_NAMES['video_vae']} or {RELEASE_NAMES['video_vae_conv']}")


# the release names carry the generation: ltx-2.3-22b-distilled-lora-384, ltx-2-19b-…, ltx-2.5-22b-…
_NAME_GENERATION = re.compile(r"ltx-?2(?:\.(\d+))?(?![\d.])")


def lora_generation(path: str, metadata: dict | None = None) -> tuple[int, int] | None:
    """The (major, minor) generation a LoRA was made for: its ``model_version`` metadata when it has
    one, else the release naming in its file name; None when neither says (then it is not checked:
    LoRA tensors of 2.3 and 2.5 have the same shapes, so nothing else can tell)."""
    if metadata and metadata.get("model_version") is not None:
        v = parse_model_version(str(metadata["model_version"]))
        if len(v) >= 1:
            return (v[0], v[1] if len(v) > 1 else 0)
    m = _NAME_GENERATION.search(os.path.basename(path).lower())
    return None if m is None else (2, int(m.group(1) or 0))


def check_lora_generation(kind: ModelKind, path: str, metadata: dict | None = None) -> None:
    """A LoRA made for another generation than the transformer's is refused (same shapes, wrong
    weights: it would run and produce garbage)."""
    lora = lora_generation(path, metadata)
    model = (kind.version + (0, 0))[:2] if kind.version else (2, 0)
    if lora is not None and lora != model:
        def name(v):
            return f"LTX-{v[0]}.{v[1]}" if v != (2, 0) else "LTX-2 (19B)"
        raise ValueError(f"{path} is a LoRA for {name(lora)}, but the model is {name(model)}: use the LoRA released "
                         f"with the model (for LTX-2.5: {RELEASE_NAMES['lora']})")
