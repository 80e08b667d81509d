"""Inputs of the LTX transformer and their preparation
(``ltx_core/model/transformer/modality.py``, ``transformer_args.py``,
``ltx_core/guidance/perturbations.py``).

A ``Modality`` is what a pipeline hands over per stream (tokens, σ, per-token timesteps,
positions, text context). ``TransformerArgsPreprocessor`` turns it into the per-block
``TransformerArgs``: projected tokens, adaLN timestep vectors, RoPE tables, prompt and
A/V cross-attention modulation, masks. Which σ feeds what (``transformer_args.py`` ::
``TransformerArgsPreprocessor.prepare`` / ``MultiModalTransformerArgsPreprocessor.prepare``):

* per-token timesteps (σ·denoise_mask) -> block adaLN, output modulation, A/V scale-shift;
* the stream's own scalar σ -> prompt adaLN (LTX-2.3);
* the *other* stream's scalar σ × ``av_ca_timestep_scale_multiplier`` -> the A/V gate.

The adaLN vectors depend on a token only through its timestep, and a stream's tokens carry one
or two distinct values (σ, and 0 for conditioning tokens; 1−strength for soft conditioning). They
are computed once per distinct value (``PerTimestepValues``) and broadcast to the tokens as each
block reads them, instead of 13 persistent per-token copies of the residual stream (9 block rows
and 4 A/V rows, over a third of a forward's activation peak). Only a stream whose timesteps take
more than ``MAX_DISTINCT_TIMESTEPS`` values keeps the per-token tables.

Perturbations (STG and modality isolation) are per-sample keep masks indexed
``[type, block, sample]``; they are decided on the host when a pass is set up, so the block
never branches on array values.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from enum import IntEnum

import mlx.core as mx
import numpy as np

from .adaln import AdaLayerNormSingle
from .rope import precompute_freqs_cis


@dataclass(frozen=True)
class Modality:
    """One stream's input. Shapes: ``latent`` [B, T, C] (noisy tokens, then any appended
    conditioning tokens), ``sigma`` [B] (a 1-element σ is broadcast to B), ``timesteps``
    [B, T] (or [B, T, 1]) = σ·denoise_mask, ``positions`` [B, n_axes, T, 2] [start, end)
    bounds (video: seconds, pixels, pixels; audio: seconds), ``context`` [B, L, D].
    ``attention_mask`` [B, T, T] in [0, 1] (1 = full attention, 0 = none) or None;
    ``context_mask`` [B, L] binary (or already additive float) or None."""

    latent: mx.array
    sigma: mx.array
    timesteps: mx.array
    positions: mx.array
    context: mx.array
    enabled: bool = True
    context_mask: mx.array | None = None
    attention_mask: mx.array | None = None
    keyframes_mask: mx.array | None = None  # [B, T, 1]; tokens > 0 get the keyframe embedding (LTX-2.5)


class PerturbationType(IntEnum):
    SKIP_VIDEO_SELF_ATTN = 0
    SKIP_AUDIO_SELF_ATTN = 1
    SKIP_A2V_CROSS_ATTN = 2
    SKIP_V2A_CROSS_ATTN = 3


@dataclass(frozen=True)
class Perturbation:
    type: PerturbationType
    blocks: tuple[int, ...] | None  # None = every block

    def is_perturbed(self, perturbation_type: PerturbationType, block: int) -> bool:
        return self.type == perturbation_type and (self.blocks is None or block in self.blocks)


@dataclass(frozen=True)
class PerturbationConfig:
    """The perturbations of one batch element."""

    perturbations: tuple[Perturbation, ...] = ()

    def is_perturbed(self, perturbation_type: PerturbationType, block: int) -> bool:
        return any(p.is_perturbed(perturbation_type, block) for p in self.perturbations)

    @staticmethod
    def empty() -> PerturbationConfig:
        return PerturbationConfig(())


class BatchedPerturbationConfig:
    """Keep masks (1 = keep, 0 = perturbed) ``[type, block, sample]`` built once per pass."""

    def __init__(self, perturbations: list[PerturbationConfig], num_blocks: int):
        self.keep = np.array(
            [[[not pc.is_perturbed(PerturbationType(t), b) for pc in perturbations] for b in range(num_blocks)]
             for t in range(len(PerturbationType))],
            dtype=np.float32,
        ).reshape(len(PerturbationType), num_blocks, len(perturbations))

    @property
    def batch_size(self) -> int:
        return self.keep.shape[2]

    def mask(self, perturbation_type: PerturbationType, block: int, dtype: mx.Dtype) -> mx.array:
        return mx.array(self.keep[perturbation_type, block]).reshape(-1, 1, 1).astype(dtype)

    def any_in_batch(self, perturbation_type: PerturbationType, block: int) -> bool:
        return bool((self.keep[perturbation_type, block] == 0).any())

    def all_in_batch(self, perturbation_type: PerturbationType, block: int) -> bool:
        return bool((self.keep[perturbation_type, block] == 0).all())

    @staticmethod
    def empty(batch_size: int, num_blocks: int) -> BatchedPerturbationConfig:
        return BatchedPerturbationConfig([PerturbationConfig.empty()] * batch_size, num_blocks)


# above this many distinct timestep values per stream the adaLN tables are kept per token
MAX_DISTINCT_TIMESTEPS = 16


@dataclass(frozen=True)
class PerTimestepValues:
    """Per-token adaLN vectors stored once per distinct timestep: ``values`` (K, n) and ``index``
    (B, T) mapping each token to its row, or None when K == 1 (then rows broadcast as (1, 1, n))."""

    values: mx.array
    index: mx.array | None

    def per_token(self, v: mx.array) -> mx.array:
        """(K, ...) -> broadcastable to (B, T, ...): the same elements the per-token table held."""
        return v[None] if self.index is None else mx.take(v, self.index, axis=0)


AdaVectors = mx.array | PerTimestepValues


@dataclass(frozen=True)
class TransformerArgs:
    x: mx.array
    context: mx.array
    context_mask: mx.array | None
    timesteps: AdaVectors  # adaLN vectors, per token (B, T, coef·D) or per distinct timestep
    embedded_timestep: AdaVectors  # pre-linear embedding (output modulation), (B, T, D) or per timestep
    positional_embeddings: tuple[mx.array, mx.array]
    cross_positional_embeddings: tuple[mx.array, mx.array] | None
    cross_scale_shift_timestep: AdaVectors | None
    cross_gate_timestep: mx.array | None  # per sample (B, 1, D)
    enabled: bool
    prompt_timestep: mx.array | None = None
    self_attention_mask: mx.array | None = None  # additive (B, 1, T, T)
    # per-block perturbation state, attached by ``with_block_perturbations``
    self_attn_perturbation_mask: mx.array | None = None
    self_attn_all_perturbed: bool = False
    cross_attn_perturbation_mask: mx.array | None = None
    cross_attn_skip_all: bool = False
    # sequence parallelism: this stream's tokens are one rank's share; gathers K/V (SequenceShards.gather_kv)
    kv_gather: object | None = None


def with_block_perturbations(
    args: TransformerArgs, perturbations: BatchedPerturbationConfig | None, block: int,
    self_type: PerturbationType, cross_type: PerturbationType,
) -> TransformerArgs:
    """``BlockPerturbationsProcessor``: a blend mask only for a partly perturbed batch, a
    skip flag when every sample is perturbed, nothing when none is (×1 is exact)."""
    if perturbations is None:
        return args
    dtype = args.x.dtype
    any_self, all_self = perturbations.any_in_batch(self_type, block), perturbations.all_in_batch(self_type, block)
    any_cross, all_cross = perturbations.any_in_batch(cross_type, block), perturbations.all_in_batch(cross_type, block)
    return replace(
        args,
        self_attn_perturbation_mask=perturbations.mask(self_type, block, dtype) if any_self and not all_self else None,
        self_attn_all_perturbed=all_self,
        cross_attn_perturbation_mask=perturbations.mask(cross_type, block, dtype) if any_cross and not all_cross
        else None,
        cross_attn_skip_all=all_cross,
    )


def prepare_self_attention_mask(attention_mask: mx.array | None, dtype: mx.Dtype) -> mx.array | None:
    """[0, 1] mask (B, Tq, Tk) -> additive (B, 1, Tq, Tk): log(m) where m > 0, finfo.min at 0."""
    if attention_mask is None:
        return None
    m = attention_mask.astype(mx.float32)
    # the smallest normal number (finfo.tiny) is the same for float32 and bfloat16
    bias = mx.log(mx.maximum(m, float(np.finfo(np.float32).tiny))).astype(dtype)
    bias = mx.where(m > 0, bias, mx.array(mx.finfo(dtype).min, dtype))
    return bias[:, None]


def prepare_context_mask(context_mask: mx.array | None, dtype: mx.Dtype) -> mx.array | None:
    """Binary (B, L) -> additive (B, 1, 1, L) (0 valid, −finfo.max pad); floats pass through."""
    if context_mask is None or mx.issubdtype(context_mask.dtype, mx.floating):
        return context_mask
    B, L = context_mask.shape[0], context_mask.shape[-1]
    return (context_mask.astype(mx.int32) - 1).astype(dtype).reshape(B, 1, -1, L) * mx.finfo(dtype).max


@dataclass
class StreamSpec:
    """What the preprocessor of one stream needs (the reference's constructor arguments)."""

    patchify_proj: object
    adaln: AdaLayerNormSingle
    inner_dim: int
    max_pos: tuple
    num_attention_heads: int
    caption_projection: object | None = None
    prompt_adaln: AdaLayerNormSingle | None = None
    cross_scale_shift_adaln: AdaLayerNormSingle | None = None
    cross_gate_adaln: AdaLayerNormSingle | None = None
    keyframes_embedding: mx.array | None = None  # (1, D), video only


class ArrayCache:
    """Results keyed by the *identity* of the arrays they were built from, so a stage builds its
    RoPE tables and masks once, not per step and pass: a stage's positions and masks are the same
    array objects at every step (only the latents change). The source arrays are held with the
    entry, so an id cannot be reused while cached; the oldest entries go first."""

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def get(self, tag: tuple, sources: tuple[mx.array, ...], build):
        key = tag + tuple(id(a) for a in sources)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry[1]
        value = build()
        self._entries[key] = (sources, value)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()


class TransformerArgsPreprocessor:
    """``(MultiModal)TransformerArgsPreprocessor`` for one stream."""

    def __init__(self, spec: StreamSpec, *, timestep_scale_multiplier: float, av_ca_timestep_scale_multiplier: float,
                 positional_embedding_theta: float, double_precision_rope: bool, use_middle_indices_grid: bool,
                 audio_cross_attention_dim: int, cross_pe_max_pos: float,
                 max_distinct_timesteps: int = MAX_DISTINCT_TIMESTEPS, cache: ArrayCache | None = None):
        self.spec = spec
        self.timestep_scale_multiplier = timestep_scale_multiplier
        self.av_ca_timestep_scale_multiplier = av_ca_timestep_scale_multiplier
        self.theta = positional_embedding_theta
        self.double_precision_rope = double_precision_rope
        self.use_middle_indices_grid = use_middle_indices_grid
        self.audio_cross_attention_dim = audio_cross_attention_dim
        self.cross_pe_max_pos = cross_pe_max_pos
        self.max_distinct_timesteps = max_distinct_timesteps
        self.cache = cache  # RoPE tables and masks kept between calls (LTXModel's)

    def _embed_timestep(self, adaln: AdaLayerNormSingle, timestep: mx.array, batch: int, dtype: mx.Dtype,
                        factor: float | None = None):
        # float32 like the reference (mask and σ are float32): ×1000 (then × factor) before the sinusoid
        scaled = timestep.astype(mx.float32) * self.timestep_scale_multiplier
        if factor is not None:
            scaled = scaled * factor
        vec, emb = adaln(scaled.reshape(-1), dtype)
        return vec.reshape(batch, -1, vec.shape[-1]), emb.reshape(batch, -1, emb.shape[-1])

    def _embed_token_timesteps(self, adaln: AdaLayerNormSingle, timesteps: mx.array, groups, dtype: mx.Dtype):
        """(vectors, embedding) of per-token timesteps (B, T): per distinct value when ``groups``
        = (distinct values, index) is given (the embedding and linear are row-wise, so each row equals
        the per-token one), per token otherwise."""
        B = timesteps.shape[0]
        if groups is None:
            return self._embed_timestep(adaln, timesteps, B, dtype)
        distinct, index = groups
        vec, emb = self._embed_timestep(adaln, distinct, 1, dtype)
        return PerTimestepValues(vec[0], index), PerTimestepValues(emb[0], index)

    def _pe(self, positions: mx.array, dim: int, max_pos, use_middle: bool, dtype: mx.Dtype, cross: bool = False):
        if self.cache is not None:
            return self.cache.get(("pe", cross, dim, dtype), (positions,),
                                  lambda: self._pe_uncached(positions, dim, max_pos, use_middle, dtype, cross))
        return self._pe_uncached(positions, dim, max_pos, use_middle, dtype, cross)

    def _pe_uncached(self, positions: mx.array, dim: int, max_pos, use_middle: bool, dtype: mx.Dtype, cross: bool):
        if cross:  # A/V cross-attention: time axis only
            positions = positions[:, 0:1]
        return precompute_freqs_cis(positions, dim, dtype, self.spec.num_attention_heads, theta=self.theta,
                                    max_pos=max_pos, use_middle_indices_grid=use_middle,
                                    double_precision=self.double_precision_rope)

    def _self_attention_mask(self, attention_mask: mx.array | None, dtype: mx.Dtype) -> mx.array | None:
        if attention_mask is None or self.cache is None:
            return prepare_self_attention_mask(attention_mask, dtype)
        return self.cache.get(("mask", dtype), (attention_mask,),
                              lambda: prepare_self_attention_mask(attention_mask, dtype))

    def prepare(self, modality: Modality, cross_modality: Modality | None) -> TransformerArgs:
        spec = self.spec
        dtype = modality.latent.dtype
        x = spec.patchify_proj(modality.latent)
        if spec.keyframes_embedding is not None and modality.keyframes_mask is not None:
            # apply_keyframes_absolute_embedding: right after patchify_proj, on tokens marked > 0
            marked = (modality.keyframes_mask > 0).astype(x.dtype)
            x = x + marked * spec.keyframes_embedding.astype(x.dtype)
        B, T = x.shape[:2]
        timesteps = modality.timesteps.reshape(B, T)
        sigma = _batched_sigma(modality.sigma, B)
        groups = timestep_groups(timesteps, self.max_distinct_timesteps)
        timestep, embedded_timestep = self._embed_token_timesteps(spec.adaln, timesteps, groups, dtype)
        prompt_timestep = None
        if spec.prompt_adaln is not None:
            prompt_timestep, _ = self._embed_timestep(spec.prompt_adaln, sigma, B, dtype)
        context = modality.context
        if spec.caption_projection is not None:
            context = spec.caption_projection(context)
        context = context.reshape(B, -1, x.shape[-1])
        args = TransformerArgs(
            x=x,
            context=context,
            context_mask=prepare_context_mask(modality.context_mask, dtype),
            timesteps=timestep,
            embedded_timestep=embedded_timestep,
            positional_embeddings=self._pe(modality.positions, spec.inner_dim, spec.max_pos,
                                           self.use_middle_indices_grid, dtype),
            cross_positional_embeddings=None,
            cross_scale_shift_timestep=None,
            cross_gate_timestep=None,
            enabled=modality.enabled,
            prompt_timestep=prompt_timestep,
            self_attention_mask=self._self_attention_mask(modality.attention_mask, dtype),
        )
        if cross_modality is None:
            return args
        # A/V cross-attention: time axis only, at the audio cross-attention width
        cross_pe = self._pe(modality.positions, self.audio_cross_attention_dim, (self.cross_pe_max_pos,), True, dtype,
                            cross=True)
        scale_shift, _ = self._embed_token_timesteps(spec.cross_scale_shift_adaln, timesteps, groups, dtype)
        av_ca_factor = self.av_ca_timestep_scale_multiplier / self.timestep_scale_multiplier
        gate, _ = self._embed_timestep(spec.cross_gate_adaln, _batched_sigma(cross_modality.sigma, B), B, dtype,
                                       factor=av_ca_factor)
        return replace(args, cross_positional_embeddings=cross_pe, cross_scale_shift_timestep=scale_shift,
                       cross_gate_timestep=gate)


def timestep_groups(timesteps: mx.array, max_distinct: int) -> tuple[mx.array, mx.array | None] | None:
    """(distinct values (K,), index (B, T) or None when K == 1) of per-token timesteps, or None
    when there are more than ``max_distinct`` of them. Read on the host: the (B, T) timesteps are
    tiny, and K decides the shapes of the whole forward."""
    try:
        host = np.array(timesteps.astype(mx.float32))
    except ValueError:  # traced (mx.compile of a whole forward): values unknown, the per-token path is exact
        return None
    distinct, inverse = np.unique(host, return_inverse=True)
    if distinct.size > max_distinct:
        return None
    index = None if distinct.size == 1 else mx.array(inverse.reshape(host.shape).astype(np.int32))
    return mx.array(distinct), index


def _batched_sigma(sigma, batch: int) -> mx.array:
    sigma = mx.array(sigma, dtype=mx.float32) if not isinstance(sigma, mx.array) else sigma
    sigma = sigma.reshape(-1)
    if sigma.size == 1 and batch > 1:
        sigma = mx.broadcast_to(sigma, (batch,))
    if sigma.size != batch:
        raise ValueError(f"sigma has {sigma.size} values for a batch of {batch}")
    return sigma
