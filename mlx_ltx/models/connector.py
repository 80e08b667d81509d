"""Text embeddings connectors and the embeddings processor
(``ltx_core/text_encoders/gemma/embeddings_connector.py``, ``embeddings_processor.py``).

Gemma hidden states -> feature extractor (``text_projection.py``) -> a stable reorder that
moves the valid tokens to the front (the connectors assume right padding, the tokenizer pads
left) -> one ``Embeddings1DConnector`` per stream. The connector overwrites every padded
position i with ``learnable_registers[i mod R]``, after which every position is valid: the
output mask is all ones and the transformer's text cross-attention runs unmasked.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..config import TransformerConfig
from ..loading import Checkpoint, CheckpointError, load_component, open_checkpoint
from .attention import Attention, FeedForward, rms_norm
from .rope import check_rope_type, precompute_freqs_cis
from .text_projection import FeatureExtractorV1, FeatureExtractorV2, build_text_projection

# The reference builds every connector with 128 registers (a constructor default the
# configurator never overrides); the real count is read from the weight when loading.
DEFAULT_NUM_LEARNABLE_REGISTERS = 128
# Connector RoPE uses the constructor's theta, not the transformer config's value.
CONNECTOR_ROPE_THETA = 10000.0


class BasicTransformerBlock1D(nn.Module):
    """Pre-norm block: ``x += attn1(rms(x))``, ``x += ff(rms(x))``; no adaLN."""

    def __init__(self, dim: int, heads: int, dim_head: int, apply_gated_attention: bool, ff_bias: bool):
        super().__init__()
        self.attn1 = Attention(dim, heads=heads, dim_head=dim_head, apply_gated_attention=apply_gated_attention)
        self.ff = FeedForward(dim, dim_out=dim, bias=ff_bias)

    def __call__(self, hidden_states: mx.array, mask: mx.array | None, pe: tuple[mx.array, mx.array]) -> mx.array:
        hidden_states = self.attn1(rms_norm(hidden_states), mask=mask, pe=pe) + hidden_states
        return self.ff(rms_norm(hidden_states)) + hidden_states


class Embeddings1DConnector(nn.Module):
    def __init__(
        self,
        attention_head_dim: int,
        num_attention_heads: int,
        num_layers: int,
        positional_embedding_max_pos=(1,),
        num_learnable_registers: int = DEFAULT_NUM_LEARNABLE_REGISTERS,
        double_precision_rope: bool = False,
        apply_gated_attention: bool = False,
        ff_bias: bool = True,
    ):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.inner_dim = num_attention_heads * attention_head_dim
        self.positional_embedding_max_pos = tuple(positional_embedding_max_pos)
        self.double_precision_rope = double_precision_rope
        self.num_learnable_registers = num_learnable_registers
        self.transformer_1d_blocks = [
            BasicTransformerBlock1D(self.inner_dim, num_attention_heads, attention_head_dim, apply_gated_attention,
                                    ff_bias)
            for _ in range(num_layers)
        ]
        self.learnable_registers = mx.zeros((num_learnable_registers, self.inner_dim))

    @classmethod
    def from_config(cls, config: TransformerConfig, audio: bool, num_learnable_registers: int) -> Embeddings1DConnector:
        """``(Audio)Embeddings1DConnectorConfigurator``: the audio connector's heads/dims/layers fall
        back to the video connector's (done in ``TransformerConfig``)."""
        check_rope_type(config.rope_type)
        if audio:
            heads, head_dim = config.audio_connector_num_attention_heads, config.audio_connector_attention_head_dim
            layers = config.audio_connector_num_layers
        else:
            heads, head_dim = config.connector_num_attention_heads, config.connector_attention_head_dim
            layers = config.connector_num_layers
        return cls(
            attention_head_dim=head_dim,
            num_attention_heads=heads,
            num_layers=layers,
            positional_embedding_max_pos=config.connector_positional_embedding_max_pos,
            num_learnable_registers=num_learnable_registers,
            double_precision_rope=config.double_precision_rope,
            apply_gated_attention=config.connector_apply_gated_attention,
            ff_bias=config.connector_ff_bias,
        )

    def _replace_padded_with_learnable_registers(self, hidden_states: mx.array, additive_attention_mask: mx.array):
        S = hidden_states.shape[1]
        R = self.num_learnable_registers
        if S % R:
            raise ValueError(f"text length {S} is not a multiple of the {R} learnable registers")
        registers = mx.tile(self.learnable_registers, (S // R, 1)).astype(hidden_states.dtype)
        valid = (additive_attention_mask[:, 0, 0, :] >= 0)[..., None]
        hidden_states = mx.where(valid, hidden_states, registers[None])
        return hidden_states, mx.zeros_like(additive_attention_mask)

    def __call__(self, hidden_states: mx.array, additive_attention_mask: mx.array) -> tuple[mx.array, mx.array]:
        """(B, S, D) right-padded features and their (B, 1, 1, S) additive mask (0 valid,
        −finfo.max pad) -> (encoded features, mask after the register fill)."""
        dtype = hidden_states.dtype
        hidden_states, additive_attention_mask = self._replace_padded_with_learnable_registers(
            hidden_states, additive_attention_mask)
        S = hidden_states.shape[1]
        positions = mx.arange(S, dtype=mx.float32)[None, None, :]
        pe = precompute_freqs_cis(positions, self.inner_dim, mx.float32, self.num_attention_heads,
                                  theta=CONNECTOR_ROPE_THETA, max_pos=self.positional_embedding_max_pos,
                                  use_middle_indices_grid=False, double_precision=self.double_precision_rope)
        # Precision choice: activations are float32 whatever the weight dtype (bf16 weights are
        # promoted per matmul). The reference runs the connector in bf16 and lands ~2.4e-2
        # (relative) away from its own float32 result on the narrow fixture connectors; in
        # float32 the port stays within the input's rounding. It runs once per prompt.
        hidden_states = hidden_states.astype(mx.float32)
        # after the register fill the additive mask is all zeros: attention runs unmasked
        for block in self.transformer_1d_blocks:
            hidden_states = block(hidden_states, None, pe)
        return rms_norm(hidden_states).astype(dtype), additive_attention_mask


def convert_to_additive_mask(attention_mask: mx.array, dtype: mx.Dtype) -> mx.array:
    """(B, S) binary -> (B, 1, 1, S): 0 for valid, −finfo(dtype).max for padding."""
    B, S = attention_mask.shape
    big = mx.finfo(dtype).max
    return ((attention_mask.astype(mx.int32) - 1).astype(dtype) * big).reshape(B, 1, 1, S)


def compute_right_pad_order(additive_mask: mx.array) -> tuple[mx.array, mx.array]:
    """Stable permutation putting each row's valid tokens first, and the reordered mask."""
    binary = (additive_mask[:, 0, 0, :] >= 0).astype(mx.int32)
    S = binary.shape[-1]
    # unique keys make any sort stable: valid tokens rank by position, pads after them
    keys = (1 - binary) * S + mx.arange(S, dtype=mx.int32)[None]
    sort_idx = mx.argsort(keys, axis=-1)
    new_binary = mx.take_along_axis(binary, sort_idx, axis=-1)
    new_additive = (new_binary.astype(additive_mask.dtype) - 1) * mx.finfo(additive_mask.dtype).max
    return sort_idx, new_additive[:, None, None, :]


def apply_right_pad_order(features: mx.array, sort_idx: mx.array) -> mx.array:
    idx = mx.broadcast_to(sort_idx[..., None], features.shape)
    return mx.take_along_axis(features, idx, axis=1)


class EmbeddingsProcessor(nn.Module):
    """Feature extractor + video connector + audio connector."""

    def __init__(
        self,
        feature_extractor: FeatureExtractorV1 | FeatureExtractorV2,
        video_connector: Embeddings1DConnector,
        audio_connector: Embeddings1DConnector,
    ):
        super().__init__()
        self.feature_extractor = feature_extractor
        self.video_connector = video_connector
        self.audio_connector = audio_connector

    def create_embeddings(
        self, video_features: mx.array, audio_features: mx.array, additive_attention_mask: mx.array
    ) -> tuple[mx.array, mx.array, mx.array]:
        """Features [B, S, D] (any padding side) + additive mask [B, 1, 1, S] ->
        (video encoding × output mask, audio encoding, binary mask [B, S] int64)."""
        sort_idx, mask_for_connector = compute_right_pad_order(additive_attention_mask)
        video_encoded, video_mask = self.video_connector(apply_right_pad_order(video_features, sort_idx),
                                                         mask_for_connector)
        B, S = video_encoded.shape[:2]
        binary_mask = (video_mask < 0.000001).reshape(B, S, 1)
        video_encoded = video_encoded * binary_mask.astype(video_encoded.dtype)
        audio_encoded, _ = self.audio_connector(apply_right_pad_order(audio_features, sort_idx), mask_for_connector)
        return video_encoded, audio_encoded, binary_mask.reshape(B, S).astype(mx.int64)

    def process_hidden_states(
        self, hidden_states: list[mx.array], attention_mask: mx.array
    ) -> tuple[mx.array, mx.array, mx.array]:
        """Gemma hidden states (embeddings + every layer, each [B, S, H]) and the tokenizer's
        binary mask [B, S] (left padded) -> (video_encoding, audio_encoding, binary_mask)."""
        video_feats, audio_feats = self.feature_extractor(hidden_states, attention_mask)
        additive_mask = convert_to_additive_mask(attention_mask, video_feats.dtype)
        return self.create_embeddings(video_feats, audio_feats, additive_mask)


def _num_registers(checkpoint: Checkpoint, component: str) -> int:
    key = checkpoint.component_keys(component).get("learnable_registers")
    if key is None:
        raise CheckpointError(f"{checkpoint.path}: the {component} has no learnable_registers tensor "
                              f"(expected under 'model.diffusion_model.*_embeddings_connector.learnable_registers')")
    return checkpoint.shapes[key][0]


def build_connector(checkpoint: Checkpoint, component: str) -> Embeddings1DConnector:
    """The unloaded connector; ``component`` is "video_connector" or "audio_connector"."""
    if component not in ("video_connector", "audio_connector"):
        raise ValueError(f"unknown connector component {component!r}")
    return Embeddings1DConnector.from_config(checkpoint.config.transformer, audio=component == "audio_connector",
                                             num_learnable_registers=_num_registers(checkpoint, component))


def load_connector(checkpoint: Checkpoint | str, component: str, dtype: mx.Dtype = mx.bfloat16) -> Embeddings1DConnector:
    ckpt = open_checkpoint(checkpoint)
    return load_component(ckpt, component, build_connector(ckpt, component), dtype=dtype)


def load_embeddings_processor(
    checkpoint: Checkpoint | str, gemma_hidden_size: int, gemma_num_layers: int, dtype: mx.Dtype = mx.bfloat16
) -> EmbeddingsProcessor:
    """The text path after Gemma. ``gemma_num_layers`` counts Gemma's transformer layers (the
    hidden states passed to ``process_hidden_states`` are that many plus the embeddings)."""
    ckpt = open_checkpoint(checkpoint)
    feature_extractor = build_text_projection(ckpt.config.transformer, gemma_hidden_size, gemma_num_layers)
    load_component(ckpt, "text_projection", feature_extractor, dtype=dtype)
    return EmbeddingsProcessor(feature_extractor, load_connector(ckpt, "video_connector", dtype),
                               load_connector(ckpt, "audio_connector", dtype))
