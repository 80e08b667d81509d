"""One dataclass per component, built from the checkpoint's ``__metadata__``.

The official release stores a JSON ``config`` with sections ``transformer``, ``vae``,
``audio_vae`` and ``vocoder`` (upsamplers: a flat ``config`` of their own). Every field
below carries the default the reference configurator uses when the key is absent
(``ltx_core/model/*/model_configurator.py``); a value present in the file always wins.
That rule matters: ``av_ca_timestep_scale_multiplier`` defaults to 1 in code but the
releases say 1000, and a port that trusted its default shipped broken audio.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A checkpoint's configuration is missing, malformed or contradicts the reference."""


def parse_metadata(raw: dict[str, str] | None) -> dict[str, Any]:
    """Parse safetensors ``__metadata__`` the way the reference does
    (``SafetensorsModelStateDictLoader.metadata``): each value is JSON-decoded when it is valid
    JSON and kept as the raw string otherwise (``license``, ``model_version``)."""
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    # "2.3.0" is valid JSON for nothing, but a bare "2" would parse as an int: keep versions strings
    if "model_version" in out and not isinstance(out["model_version"], str):
        out["model_version"] = str(raw["model_version"])
    return out


class _FromDict:
    """``from_dict`` takes the keys that name a field and keeps the whole section in ``raw``.

    Unknown keys are kept (the release carries keys the reference never reads) but do not
    become attributes; a field's default is used only when the section lacks the key."""

    @classmethod
    def from_dict(cls, section: dict[str, Any] | None, **overrides: Any):
        section = dict(section or {})
        names = {f.name for f in dataclasses.fields(cls)} - {"raw"}
        kwargs = {k: v for k, v in section.items() if k in names}
        kwargs.update(overrides)
        obj = cls(**kwargs, raw=section)
        obj.__post_init__()
        return obj

    def __post_init__(self) -> None:  # normalisation hook; lists from JSON become tuples
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list) and f.name != "raw":
                object.__setattr__(self, f.name, _to_tuple(v))


def _to_tuple(v: Any) -> Any:
    return tuple(_to_tuple(x) for x in v) if isinstance(v, list) else v


# The 18 values LTXModelConfigurator asserts (ltx_core/utils.py check_config_value): a checkpoint
# that sets another value describes a model this port does not implement.
_TRANSFORMER_FIXED = {
    "dropout": 0.0,
    "attention_bias": True,
    "num_vector_embeds": None,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "use_linear_projection": False,
    "only_cross_attention": False,
    "cross_attention_norm": True,
    "double_self_attention": False,
    "upcast_attention": False,
    "standardization_norm": "rms_norm",
    "norm_elementwise_affine": False,
    "qk_norm": "rms_norm",
    "positional_embedding_type": "rope",
    "use_audio_video_cross_attention": True,
    "share_ff": False,
    "av_cross_ada_norm": True,
    "use_middle_indices_grid": True,
}

_V2_TEXT_KEYS = {
    "caption_proj_before_connector": True,
    "caption_projection_first_linear": False,
    "caption_proj_input_norm": False,
    "caption_projection_second_linear": False,
}


@dataclass
class TransformerConfig(_FromDict):
    """``config.transformer``: the audio-video DiT, the text projection and both connectors."""

    num_attention_heads: int = 32
    attention_head_dim: int = 128
    in_channels: int = 128
    out_channels: int = 128
    num_layers: int = 48
    cross_attention_dim: int = 4096
    caption_channels: int = 3840
    norm_eps: float = 1e-6
    positional_embedding_theta: float = 10000.0
    positional_embedding_max_pos: tuple = (20, 2048, 2048)
    timestep_scale_multiplier: float = 1000
    use_middle_indices_grid: bool = True
    audio_num_attention_heads: int = 32
    audio_attention_head_dim: int = 64
    audio_in_channels: int = 128
    audio_out_channels: int = 128
    audio_cross_attention_dim: int = 2048
    audio_positional_embedding_max_pos: tuple = (20,)
    av_ca_timestep_scale_multiplier: float = 1  # reference code default; releases say 1000
    rope_type: str = "split"
    frequencies_precision: str | None = None  # "float64" -> numpy float64 frequency grid
    apply_gated_attention: bool = False
    cross_attention_adaln: bool = False
    use_prompt_adaln_single: bool = True
    ff_bias: bool = True
    audio_ff_bias: bool = True
    # text path (V2 = LTX-2.3: projection before the connector; V1 = LTX-2 19B)
    caption_proj_before_connector: bool | None = None
    caption_projection_first_linear: bool | None = None
    caption_proj_input_norm: bool | None = None
    caption_projection_second_linear: bool | None = None
    # embeddings connectors (Embeddings1DConnectorConfigurator)
    connector_num_attention_heads: int = 30
    connector_attention_head_dim: int = 128
    connector_num_layers: int = 2
    connector_positional_embedding_max_pos: tuple = (1,)
    connector_apply_gated_attention: bool = False
    connector_ff_bias: bool = True
    use_keyframes_abs_pos_embedding: bool = False  # LTX-2.5 only; rejected by the transformer
    audio_connector_num_attention_heads: int | None = None  # None -> the video connector's value
    audio_connector_attention_head_dim: int | None = None
    audio_connector_num_layers: int | None = None
    raw: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, want in _TRANSFORMER_FIXED.items():
            if key in self.raw and self.raw[key] != want:
                raise ConfigError(f"transformer config {key}={self.raw[key]!r}: the reference requires {want!r}")
        if self.raw and self.num_attention_heads != self.audio_num_attention_heads:
            raise ConfigError(
                "transformer config: num_attention_heads must equal audio_num_attention_heads "
                f"({self.num_attention_heads} != {self.audio_num_attention_heads})"
            )
        if self.audio_connector_num_attention_heads is None:
            self.audio_connector_num_attention_heads = self.connector_num_attention_heads
        if self.audio_connector_attention_head_dim is None:
            self.audio_connector_attention_head_dim = self.connector_attention_head_dim
        if self.audio_connector_num_layers is None:
            self.audio_connector_num_layers = self.connector_num_layers
        self.text_projection_version  # validate the caption_proj* keys now, not at first use

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def audio_inner_dim(self) -> int:
        return self.audio_num_attention_heads * self.audio_attention_head_dim

    @property
    def double_precision_rope(self) -> bool:
        return self.frequencies_precision == "float64"

    @property
    def text_projection_version(self) -> int:
        """2 when all four ``caption_proj*`` keys hold the LTX-2.3 values, 1 when none is present
        (LTX-2 19B); anything in between is an error, as in ``_create_feature_extractor``."""
        present = {k: self.raw[k] for k in _V2_TEXT_KEYS if k in self.raw}
        if not present:
            return 1
        if present == _V2_TEXT_KEYS:
            return 2
        raise ConfigError(
            f"transformer config: unsupported text projection keys {present}; LTX-2.3 needs exactly "
            f"{_V2_TEXT_KEYS} and LTX-2 none of them"
        )


@dataclass
class VideoVAEConfig(_FromDict):
    """``config.vae`` (CausalVideoAutoencoder). The encoder's width is ``latent_channels``;
    the decoder reads ``spatial_padding_mode`` (default reflect); the encoder reads
    ``spatial_padding_mode`` too when the file has it, else ``encoder_spatial_padding_mode``
    (default zeros), as ``_prepare_video_encoder_kwargs`` (see ``encoder_padding_mode``)."""

    dims: int = 3
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 128
    patch_size: int = 4
    norm_layer: str = "pixel_norm"
    latent_log_var: str = "uniform"
    encoder_blocks: tuple = ()
    decoder_blocks: tuple = ()
    encoder_spatial_padding_mode: str = "zeros"
    spatial_padding_mode: str = "reflect"
    causal_decoder: bool = False
    timestep_conditioning: bool = True  # reference decoder default; 2.3 says false
    decoder_base_channels: int = 128
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> "VideoVAEConfig":
        """``config.vae`` in either layout ``_prepare_video_encoder_kwargs`` reads: flat (the conv
        autoencoder) or nested (LTX-2.5's ``CausalDiffusionVAE``: the encoder's fields under
        ``encoder``, named ``blocks`` and ``out_channels`` = the latent width; the decoder under
        ``decoder`` is the diffusion decoder's, read by ``DiffusionDecoderConfig``)."""
        enc = section.get("encoder")
        if not isinstance(enc, dict):
            return cls.from_dict(section)
        flat = {"latent_channels": enc.get("out_channels", section.get("latent_channels", 128)),
                "encoder_blocks": enc.get("blocks", enc.get("encoder_blocks", [])),
                "encoder_spatial_padding_mode": enc.get("spatial_padding_mode",
                                                        section.get("encoder_spatial_padding_mode", "zeros"))}
        for name in ("dims", "in_channels", "patch_size", "norm_layer", "latent_log_var"):
            if name in enc:
                flat[name] = enc[name]
        obj = cls.from_dict(flat)
        obj.raw = section
        return obj

    @property
    def encoder_padding_mode(self) -> str:
        """The encoder's spatial padding: a ``spatial_padding_mode`` present in the file wins over
        ``encoder_spatial_padding_mode`` (so 2.3's single "zeros" key pads both halves); a nested
        (diffusion VAE) config's encoder says it in its own section."""
        if isinstance(self.raw.get("encoder"), dict):
            return self.encoder_spatial_padding_mode
        return self.raw.get("spatial_padding_mode", self.encoder_spatial_padding_mode)

    @property
    def scale_factors(self) -> tuple[int, int, int]:
        """(time, height, width) compression, as ``SpatioTemporalScaleFactors.from_blocks``."""
        t = s = 1
        for name, _ in self.encoder_blocks:
            if name in ("compress_time", "compress_time_res", "compress_all", "compress_all_res"):
                t *= 2
            if name in ("compress_space", "compress_space_res", "compress_all", "compress_all_res"):
                s *= 2
        return t, s * self.patch_size, s * self.patch_size


@dataclass
class AudioVAEConfig(_FromDict):
    """``config.audio_vae``: ``model.params.ddconfig`` flattened, plus the mel/STFT settings."""

    ch: int = 128
    out_ch: int = 2
    in_channels: int = 2
    ch_mult: tuple = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple = (8, 16, 32)
    resolution: int = 256
    z_channels: int = 8
    double_z: bool = True
    norm_type: str = "pixel"
    causality_axis: str = "height"
    dropout: float = 0.0
    mid_block_add_attention: bool = True
    attn_type: str = "vanilla"
    resamp_with_conv: bool = True
    mel_bins: int | None = None
    sampling_rate: int = 16000
    mel_hop_length: int = 160
    n_fft: int = 1024
    is_causal: bool = True
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> "AudioVAEConfig":
        params = section.get("model", {}).get("params", {})
        dd = params.get("ddconfig", {})
        pre = section.get("preprocessing", {})
        stft, mel = pre.get("stft", {}), pre.get("mel", {})
        over: dict[str, Any] = {}
        mel_bins = dd.get("mel_bins") or mel.get("n_mel_channels") or section.get("variables", {}).get("mel_bins")
        if mel_bins is not None:
            over["mel_bins"] = mel_bins
        for name, src, key in (("sampling_rate", params, "sampling_rate"), ("mel_hop_length", stft, "hop_length"),
                               ("n_fft", stft, "filter_length"), ("is_causal", stft, "causal")):
            if key in src:
                over[name] = src[key]
        obj = cls.from_dict(dd, **over)
        obj.raw = section
        return obj

    @property
    def latent_mel_bins(self) -> int:
        return self.mel_bins // (2 ** (len(self.ch_mult) - 1))


@dataclass
class HifiGanConfig(_FromDict):
    """One HiFi-GAN/BigVGAN generator (``create_vocoder`` defaults)."""

    resblock_kernel_sizes: tuple = (3, 7, 11)
    upsample_rates: tuple = (6, 5, 2, 2, 2)
    upsample_kernel_sizes: tuple = (16, 15, 8, 4, 4)
    resblock_dilation_sizes: tuple = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_initial_channel: int = 1024
    resblock: str = "1"
    output_sampling_rate: int = 24000
    activation: str = "snake"
    use_tanh_at_final: bool = True
    use_bias_at_final: bool = True
    stereo: bool = True
    # bandwidth extension only
    input_sampling_rate: int | None = None
    n_fft: int | None = None
    hop_length: int | None = None
    num_mels: int | None = None
    raw: dict = field(default_factory=dict, repr=False)


@dataclass
class VocoderConfig:
    """``config.vocoder``: flat HiFi-GAN (LTX-2 19B, 24 kHz) or ``vocoder`` + ``bwe`` (LTX-2.3:
    16 kHz generator followed by bandwidth extension to 48 kHz); ``"bwe" in cfg`` decides, as in
    ``VocoderConfigurator``."""

    vocoder: HifiGanConfig
    bwe: HifiGanConfig | None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> "VocoderConfig":
        if "bwe" in section:
            bwe = section["bwe"]
            for key in ("input_sampling_rate", "output_sampling_rate", "n_fft", "hop_length", "num_mels"):
                if key not in bwe:
                    raise ConfigError(f"vocoder config: bwe section lacks {key!r}")
            # the 16 kHz generator's output rate is the BWE's input rate
            voc = HifiGanConfig.from_dict(section.get("vocoder", {}), output_sampling_rate=bwe["input_sampling_rate"])
            return cls(vocoder=voc, bwe=HifiGanConfig.from_dict(bwe), raw=section)
        return cls(vocoder=HifiGanConfig.from_dict(section), bwe=None, raw=section)

    @property
    def output_sampling_rate(self) -> int:
        return (self.bwe or self.vocoder).output_sampling_rate

    def check_supported(self) -> None:
        """The values ``VocoderConfigurator`` asserts before building (``check_config_value``:
        an absent key fails as well). Checked when the vocoder is built, not when the file is
        opened, as in the reference."""
        if self.bwe is None:
            checks = [("vocoder", self.raw, {"resblock": "1", "stereo": True})]
        else:
            want = {"resblock": "AMP1", "stereo": True, "activation": "snakebeta"}
            checks = [(f"vocoder.{name}", self.raw.get(name, {}), want) for name in ("vocoder", "bwe")]
        for where, section, want in checks:
            for key, value in want.items():
                if section.get(key) != value:
                    raise ConfigError(f"{where} config {key}={section.get(key)!r}: the reference supports only "
                                      f"{value!r} here")


@dataclass
class UpsamplerConfig(_FromDict):
    """A latent upsampler file's flat ``config`` (``LatentUpsamplerConfigurator``)."""

    in_channels: int = 128
    mid_channels: int = 512
    num_blocks_per_stage: int = 4
    dims: int = 3
    spatial_upsample: bool = True
    temporal_upsample: bool = False
    spatial_scale: float = 2.0
    rational_resampler: bool = False
    raw: dict = field(default_factory=dict, repr=False)


@dataclass
class LTXConfig:
    """Every component's configuration of one single-file checkpoint."""

    transformer: TransformerConfig
    vae: VideoVAEConfig
    audio_vae: AudioVAEConfig
    vocoder: VocoderConfig
    model_version: str | None
    metadata: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], source: str = "checkpoint") -> "LTXConfig":
        cfg = metadata.get("config")
        if not isinstance(cfg, dict):
            raise ConfigError(f"{source}: no JSON 'config' in the safetensors __metadata__; is it an LTX checkpoint?")
        missing = [s for s in ("transformer", "vae", "audio_vae", "vocoder") if s not in cfg]
        if missing:
            raise ConfigError(f"{source}: config lacks the section(s) {missing}")
        return cls(
            transformer=TransformerConfig.from_dict(cfg["transformer"]),
            vae=VideoVAEConfig.from_section(cfg["vae"]),
            audio_vae=AudioVAEConfig.from_section(cfg["audio_vae"]),
            vocoder=VocoderConfig.from_section(cfg["vocoder"]),
            model_version=metadata.get("model_version"),
            metadata=metadata,
        )
