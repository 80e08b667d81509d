"""Multimodal guidance and the per-generation default parameters (twins of
``ltx_core/components/guiders.py :: MultiModalGuider*`` and ``ltx_pipelines/utils/constants.py``).

Guidance combines the x0 (denoised) predictions of up to four passes in float32:
``pred = cond + (cfg−1)(cond − uncond) + stg·(cond − ptb) + (mod−1)(cond − mod)``, then an optional
std rescale towards the conditioned prediction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import mlx.core as mx

from .config import LTXConfig
from .loading import Checkpoint


@dataclass(frozen=True)
class MultiModalGuiderParams:
    cfg_scale: float = 1.0
    stg_scale: float = 0.0
    stg_blocks: tuple[int, ...] = ()
    rescale_scale: float = 0.0
    modality_scale: float = 1.0
    skip_step: int = 0

    def __post_init__(self):
        object.__setattr__(self, "stg_blocks", tuple(int(b) for b in (self.stg_blocks or ())))


@dataclass(frozen=True)
class MultiModalGuider:
    """Constant guidance for one stream; ``negative_context`` feeds the unconditioned pass."""

    params: MultiModalGuiderParams
    negative_context: mx.array | None = None

    def calculate(self, cond: mx.array, uncond_text, uncond_perturbed, uncond_modality) -> mx.array:
        """Guided x0 from the pass outputs; a pass that was not run is given as 0.0 (its term has a
        zero scale then). Computed in float32, returned in ``cond``'s dtype."""
        p = self.params
        dtype = cond.dtype
        f32 = (lambda x: x.astype(mx.float32) if isinstance(x, mx.array) else x)
        c = cond.astype(mx.float32)
        pred = (c + (p.cfg_scale - 1) * (c - f32(uncond_text)) + p.stg_scale * (c - f32(uncond_perturbed))
                + (p.modality_scale - 1) * (c - f32(uncond_modality)))
        if p.rescale_scale != 0:
            # std over the whole tensor (every token, appended ones included), unbiased as torch.std
            factor = mx.sqrt(mx.var(c, ddof=1)) / mx.sqrt(mx.var(pred, ddof=1))
            pred = pred * (p.rescale_scale * factor + (1 - p.rescale_scale))
        return pred.astype(dtype)

    def do_unconditional_generation(self) -> bool:
        return not math.isclose(self.params.cfg_scale, 1.0)

    def do_perturbed_generation(self) -> bool:
        return not math.isclose(self.params.stg_scale, 0.0)

    def do_isolated_modality_generation(self) -> bool:
        return not math.isclose(self.params.modality_scale, 1.0)

    def should_skip_step(self, step: int) -> bool:
        """With ``skip_step`` k, only every (k+1)-th step runs the passes; the others reuse the last x0."""
        return self.params.skip_step != 0 and step % (self.params.skip_step + 1) != 0


POSITIVE_ONLY_GUIDER = MultiModalGuider(MultiModalGuiderParams())


@dataclass(frozen=True)
class MultiModalGuiderFactory:
    """Sigma-binned guidance params: ``params_by_sigma`` holds (upper bound, params) sorted by
    decreasing bound; a sigma uses the bin with the smallest bound ≥ sigma (the first bin above all)."""

    negative_context: mx.array | None = None
    params_by_sigma: tuple[tuple[float, MultiModalGuiderParams], ...] = ()

    @classmethod
    def constant(cls, params: MultiModalGuiderParams, negative_context: mx.array | None = None):
        return cls(negative_context, ((float("inf"), params),))

    @classmethod
    def from_dict(cls, sigma_to_params: Mapping[float, MultiModalGuiderParams],
                  negative_context: mx.array | None = None):
        if not sigma_to_params:
            raise ValueError("sigma_to_params must be non-empty")
        return cls(negative_context, tuple(sorted(sigma_to_params.items(), key=lambda kv: kv[0], reverse=True)))

    def params(self, sigma: float) -> MultiModalGuiderParams:
        if not self.params_by_sigma:
            raise ValueError("MultiModalGuiderFactory has no params")
        keys = [k for k, _ in self.params_by_sigma if k >= float(sigma)]
        key = keys[-1] if keys else self.params_by_sigma[0][0]
        return next(p for k, p in self.params_by_sigma if k == key)

    def build_from_sigma(self, sigma: float) -> MultiModalGuider:
        return MultiModalGuider(self.params(sigma), self.negative_context)


def _default_video_guider() -> MultiModalGuiderParams:
    return MultiModalGuiderParams(cfg_scale=3.0, stg_scale=1.0, stg_blocks=(29,), rescale_scale=0.7,
                                  modality_scale=3.0)


def _default_audio_guider() -> MultiModalGuiderParams:
    return MultiModalGuiderParams(cfg_scale=7.0, stg_scale=1.0, stg_blocks=(29,), rescale_scale=0.7,
                                  modality_scale=3.0)


DEFAULT_IMAGE_CRF = 33
LTX_2_4_IMAGE_CRF = 18


# ltx_pipelines/utils/constants.py :: DEFAULT_NEGATIVE_PROMPT (the guided pipelines' default)
DEFAULT_NEGATIVE_PROMPT = (
    "has_subtitles, has_blurbox, transition from black, transition to black, speech_ending_short, "
    "blurry, out of focus, overexposed, underexposed, low contrast, washed out colors, excessive noise, "
    "grainy texture, poor lighting, flickering, motion blur, distorted proportions, unnatural skin tones, "
    "deformed facial features, asymmetrical face, missing facial features, extra limbs, disfigured hands, "
    "wrong hand count, artifacts around text, inconsistent perspective, camera shake, incorrect depth of "
    "field, background too sharp, background clutter, distracting reflections, harsh shadows, inconsistent "
    "lighting direction, color banding, cartoonish rendering, 3D CGI look, unrealistic materials, uncanny "
    "valley effect, incorrect ethnicity, wrong gender, exaggerated expressions, wrong gaze direction, "
    "mismatched lip sync, silent or muted audio, distorted voice, robotic voice, echo, background noise, "
    "off-sync audio, incorrect dialogue, added dialogue, repetitive speech, jittery movement, awkward "
    "pauses, incorrect timing, unnatural transitions, inconsistent framing, tilted camera, flat lighting, "
    "inconsistent tone, cinematic oversaturation, stylized filters, or AI artifacts."
)


@dataclass(frozen=True)
class PipelineParams:
    """Default generation parameters of one model generation (``PipelineParams``)."""

    seed: int = 10
    stage_1_height: int = 512
    stage_1_width: int = 768
    num_frames: int = 121
    frame_rate: float = 24.0
    num_inference_steps: int = 40
    default_image_crf: int = DEFAULT_IMAGE_CRF
    video_guider_params: MultiModalGuiderParams = field(default_factory=_default_video_guider)
    audio_guider_params: MultiModalGuiderParams = field(default_factory=_default_audio_guider)

    @property
    def stage_2_height(self) -> int:
        return int(self.stage_1_height * 2)

    @property
    def stage_2_width(self) -> int:
        return int(self.stage_1_width * 2)


LTX_2_PARAMS = PipelineParams()
LTX_2_3_PARAMS = replace(
    LTX_2_PARAMS, num_inference_steps=30,
    video_guider_params=replace(LTX_2_PARAMS.video_guider_params, stg_blocks=(28,)),
    audio_guider_params=replace(LTX_2_PARAMS.audio_guider_params, stg_blocks=(28,)),
)
# HQ (res_2s) preset: STG off, weaker video rescale; not derived from a detected generation
LTX_2_3_HQ_PARAMS = PipelineParams(
    num_inference_steps=15, stage_1_height=1088 // 2, stage_1_width=1920 // 2,
    video_guider_params=MultiModalGuiderParams(cfg_scale=3.0, stg_scale=0.0, rescale_scale=0.45, modality_scale=3.0),
    audio_guider_params=MultiModalGuiderParams(cfg_scale=7.0, stg_scale=0.0, rescale_scale=1.0, modality_scale=3.0),
)
LTX_2_4_PARAMS = replace(LTX_2_3_PARAMS, default_image_crf=LTX_2_4_IMAGE_CRF)

# newest first: a checkpoint gets the params of the newest generation it is at or above
_PARAMS_SINCE_VERSION: tuple[tuple[tuple[int, ...], PipelineParams], ...] = (
    ((2, 4), LTX_2_4_PARAMS),
    ((2, 3), LTX_2_3_PARAMS),
)


def parse_model_version(version: str | None) -> tuple[int, ...]:
    """Leading numeric dot-separated components; "-" is read as "." ("2.4-rc2" -> (2, 4)), and an
    unset or non-numeric version gives () (older than every generation)."""
    parts: list[int] = []
    for part in (version or "").replace("-", ".").split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def detect_params(source: Checkpoint | LTXConfig | str | None) -> PipelineParams:
    """``detect_params``: the defaults of the checkpoint's generation, from its ``model_version``
    metadata (a Checkpoint, its config, or the version string); 19B and unversioned files get LTX_2_PARAMS."""
    if isinstance(source, Checkpoint):
        version = source.metadata.get("model_version")
    elif isinstance(source, LTXConfig):
        version = source.model_version
    else:
        version = source
    parsed = parse_model_version(None if version is None else str(version))
    for since, params in _PARAMS_SINCE_VERSION:
        if parsed >= since:
            return params
    return LTX_2_PARAMS


def check_stg_blocks(params: Sequence[MultiModalGuiderParams], num_blocks: int) -> None:
    """The reference silently ignores an STG block the model does not have (STG becomes a no-op);
    here it is an error naming the block."""
    for p in params:
        bad = [b for b in p.stg_blocks if not 0 <= b < num_blocks]
        if bad and not math.isclose(p.stg_scale, 0.0):
            raise ValueError(f"STG block(s) {bad} do not exist: the transformer has {num_blocks} blocks "
                             f"(0..{num_blocks - 1}); pass stg_blocks within that range")
