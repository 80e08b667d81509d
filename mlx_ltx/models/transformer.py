"""The LTX audio-video diffusion transformer (``ltx_core/model/transformer/transformer.py``,
``model.py``): ``BasicAVTransformerBlock`` and ``LTXModel``, for LTX-2.3 and LTX-2 19B.

The checkpoint's config decides the features (``model_configurator.py`` :: ``LTXModelConfigurator``
and ``_build_caption_projections``): 2.3 has gated attention,
9-row block tables with text-query modulation and prompt adaLN, and its caption projection
before the connector; 19B has no gates, 6-row tables and the PixArt caption projections
inside this module. Row orders that are easy to get wrong:

* block table rows: 0 shift_msa, 1 scale_msa, 2 gate_msa, 3 shift_mlp, 4 scale_mlp,
  5 gate_mlp, 6 shift_q, 7 scale_q, 8 gate_ca;
* A/V tables (5 rows): **scale before shift** — rows (0, 1) for A2V, (2, 3) for V2A, 4 gate;
* prompt table: 0 shift, 1 scale; output table: 0 shift, 1 scale.

Both A/V directions read the streams as they were before either update.
"""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..config import TransformerConfig
from ..loading import Checkpoint, load_component, open_checkpoint
from .adaln import AdaLayerNormSingle, adaln_embedding_coefficient
from .block_streaming import BLOCK_PREFIX, BlockStreamer
from .attention import Attention, FeedForward, PixArtAlphaTextProjection, rms_norm
from .rope import check_rope_type
from .sequence_parallel import SequenceParallel
from .transformer_args import (
    AdaVectors,
    MAX_DISTINCT_TIMESTEPS,
    ArrayCache,
    BatchedPerturbationConfig,
    Modality,
    Perturbation,
    PerturbationConfig,
    PerturbationType,
    PerTimestepValues,
    StreamSpec,
    TransformerArgs,
    TransformerArgsPreprocessor,
    with_block_perturbations,
)

MEMORY_MODES = ("eager", "stream")
# work per evaluation inside a forward: well under a second on any Apple GPU
EVAL_FLOPS = 2e12

__all__ = [
    "BasicAVTransformerBlock", "BatchedPerturbationConfig", "LTXModel", "Modality", "Perturbation",
    "PerturbationConfig", "PerturbationType", "load_transformer", "to_denoised",
]


def ada(x: mx.array, eps: float, scale: mx.array, shift: mx.array) -> mx.array:
    """``PytorchAdaZeroFunction``: rms(x)·(1 + scale) + shift."""
    return rms_norm(x, eps) * (1 + scale) + shift


def get_ada_values(table: mx.array, timestep: AdaVectors, start: int, stop: int) -> list[mx.array]:
    """Rows [start, stop) of ``table`` plus the matching slices of the adaLN vectors: per token
    (B, T, rows·D) -> one (B, T, D) array per row; per distinct timestep -> the same values,
    broadcast to the tokens only here, one row at a time."""
    rows = table.shape[0]
    if isinstance(timestep, PerTimestepValues):
        k = timestep.values.shape[0]
        values = table[start:stop].astype(timestep.values.dtype) + timestep.values.reshape(k, rows, -1)[:, start:stop]
        return [timestep.per_token(values[:, i]) for i in range(stop - start)]
    B, T, _ = timestep.shape
    values = table[start:stop].astype(timestep.dtype) + timestep.reshape(B, T, rows, -1)[:, :, start:stop]
    return [values[:, :, i] for i in range(stop - start)]


def get_av_ca_ada_values(table: mx.array, scale_shift_timestep: mx.array, gate_timestep: mx.array, start: int):
    """(scale, shift, gate) from a 5-row A/V table: rows start, start+1 and the gate row 4."""
    scale, shift = get_ada_values(table[:4], scale_shift_timestep, start, start + 2)
    (gate,) = get_ada_values(table[4:], gate_timestep, 0, 1)
    return scale, shift, gate


class BasicAVTransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = config
        vdim, adim = c.inner_dim, c.audio_inner_dim
        gated, eps = c.apply_gated_attention, c.norm_eps
        coef = adaln_embedding_coefficient(c.cross_attention_adaln)
        self.norm_eps = eps
        self.cross_attention_adaln = c.cross_attention_adaln

        self.attn1 = Attention(vdim, None, c.num_attention_heads, c.attention_head_dim, eps, gated)
        self.attn2 = Attention(vdim, c.cross_attention_dim, c.num_attention_heads, c.attention_head_dim, eps, gated)
        self.ff = FeedForward(vdim, dim_out=vdim, bias=c.ff_bias)
        self.scale_shift_table = mx.zeros((coef, vdim))

        self.audio_attn1 = Attention(adim, None, c.audio_num_attention_heads, c.audio_attention_head_dim, eps, gated)
        self.audio_attn2 = Attention(adim, c.audio_cross_attention_dim, c.audio_num_attention_heads,
                                     c.audio_attention_head_dim, eps, gated)
        self.audio_ff = FeedForward(adim, dim_out=adim, bias=c.audio_ff_bias)
        self.audio_scale_shift_table = mx.zeros((coef, adim))

        # both directions use the audio head layout: Q from one stream, K/V from the other
        self.audio_to_video_attn = Attention(vdim, adim, c.audio_num_attention_heads, c.audio_attention_head_dim,
                                             eps, gated)
        self.video_to_audio_attn = Attention(adim, vdim, c.audio_num_attention_heads, c.audio_attention_head_dim,
                                             eps, gated)
        self.scale_shift_table_a2v_ca_audio = mx.zeros((5, adim))
        self.scale_shift_table_a2v_ca_video = mx.zeros((5, vdim))
        if c.cross_attention_adaln:
            self.prompt_scale_shift_table = mx.zeros((2, vdim))
            self.audio_prompt_scale_shift_table = mx.zeros((2, adim))

    def _text_cross_attention(self, x_normed: mx.array, args: TransformerArgs, attn: Attention, table: mx.array,
                              prompt_table: mx.array | None) -> mx.array:
        if not self.cross_attention_adaln:
            return attn(x_normed, context=args.context, mask=args.context_mask)
        shift_q, scale_q, gate = get_ada_values(table, args.timesteps, 6, 9)
        kv = prompt_table[None, None].astype(x_normed.dtype)  # (1, 1, 2, D)
        if args.prompt_timestep is not None:
            B = x_normed.shape[0]
            kv = kv + args.prompt_timestep.reshape(B, args.prompt_timestep.shape[1], 2, -1)
        shift_kv, scale_kv = kv[:, :, 0], kv[:, :, 1]
        query = x_normed * (1 + scale_q) + shift_q
        context = args.context * (1 + scale_kv) + shift_kv
        return attn(query, context=context, mask=args.context_mask) * gate

    def _av_cross_attention(self, attn: Attention, q_args: TransformerArgs, kv_args: TransformerArgs,
                            q_x: mx.array, kv_x: mx.array, q_table: mx.array, kv_table: mx.array,
                            row: int) -> mx.array:
        """A2V (row 0: Q video, K/V audio) or V2A (row 2: Q audio, K/V video), each side modulated
        by its own A/V table, gated by the query stream's gate row."""
        q_scale, q_shift, gate = get_av_ca_ada_values(q_table, q_args.cross_scale_shift_timestep,
                                                      q_args.cross_gate_timestep, row)
        kv_scale, kv_shift = get_ada_values(kv_table[:4], kv_args.cross_scale_shift_timestep, row, row + 2)
        out = attn(ada(q_x, self.norm_eps, q_scale, q_shift), context=ada(kv_x, self.norm_eps, kv_scale, kv_shift),
                   pe=q_args.cross_positional_embeddings, k_pe=kv_args.cross_positional_embeddings,
                   kv_gather=kv_args.kv_gather) * gate
        if q_args.cross_attn_perturbation_mask is not None:
            out = out * q_args.cross_attn_perturbation_mask
        return out

    def _self_and_text(self, args: TransformerArgs, attn1: Attention, attn2: Attention, table: mx.array,
                       prompt_table: mx.array | None) -> mx.array:
        x = args.x
        shift, scale, gate = get_ada_values(table, args.timesteps, 0, 3)
        out = attn1(ada(x, self.norm_eps, scale, shift), pe=args.positional_embeddings,
                    mask=args.self_attention_mask, perturbation_mask=args.self_attn_perturbation_mask,
                    all_perturbed=args.self_attn_all_perturbed, kv_gather=args.kv_gather)
        x = x + out * gate  # PytorchPostSAFunction: the residual, then its RMS norm for attn2
        return x + self._text_cross_attention(rms_norm(x, self.norm_eps), args, attn2, table, prompt_table)

    def _feed_forward(self, x: mx.array, args: TransformerArgs, ff: FeedForward, table: mx.array) -> mx.array:
        shift, scale, gate = get_ada_values(table, args.timesteps, 3, 6)
        return x + ff(ada(x, self.norm_eps, scale, shift)) * gate

    def __call__(self, video: TransformerArgs | None, audio: TransformerArgs | None) -> tuple[mx.array, mx.array]:
        vx = video.x if video is not None else None
        ax = audio.x if audio is not None else None
        run_vx = video is not None and video.enabled and vx.size > 0
        run_ax = audio is not None and audio.enabled and ax.size > 0
        run_a2v = run_vx and audio is not None and ax.size > 0
        run_v2a = run_ax and video is not None and vx.size > 0

        if run_vx:
            vx = self._self_and_text(video, self.attn1, self.attn2, self.scale_shift_table,
                                     getattr(self, "prompt_scale_shift_table", None))
        if run_ax:
            ax = self._self_and_text(audio, self.audio_attn1, self.audio_attn2, self.audio_scale_shift_table,
                                     getattr(self, "audio_prompt_scale_shift_table", None))

        vx_pre, ax_pre = vx, ax
        if run_a2v and not video.cross_attn_skip_all:
            vx = vx + self._av_cross_attention(self.audio_to_video_attn, video, audio, vx_pre, ax_pre,
                                               self.scale_shift_table_a2v_ca_video,
                                               self.scale_shift_table_a2v_ca_audio, 0)
        if run_v2a and not audio.cross_attn_skip_all:
            ax = ax + self._av_cross_attention(self.video_to_audio_attn, audio, video, ax_pre, vx_pre,
                                               self.scale_shift_table_a2v_ca_audio,
                                               self.scale_shift_table_a2v_ca_video, 2)

        if run_vx:
            vx = self._feed_forward(vx, video, self.ff, self.scale_shift_table)
        if run_ax:
            ax = self._feed_forward(ax, audio, self.audio_ff, self.audio_scale_shift_table)
        return vx, ax


class LTXModel(nn.Module):
    """The audio-video transformer. ``__call__`` returns velocities; ``denoise`` returns X0
    (``X0Model``: latent − velocity·timesteps per token, in float32)."""

    def __init__(self, config: TransformerConfig, caption_channels: int | None = None):
        super().__init__()
        check_rope_type(config.rope_type)
        c = self.config = config
        vdim, adim = c.inner_dim, c.audio_inner_dim
        coef = adaln_embedding_coefficient(c.cross_attention_adaln)
        with_prompt_adaln = c.cross_attention_adaln and c.use_prompt_adaln_single
        # LTX-2 19B (V1 text path): the PixArt caption projections live in the transformer
        with_caption_projection = c.text_projection_version == 1
        caption_channels = c.caption_channels if caption_channels is None else caption_channels

        self.patchify_proj = nn.Linear(c.in_channels, vdim, bias=True)
        if c.use_keyframes_abs_pos_embedding:  # LTX-2.5: marks single-pixel-frame tokens (keyframes_mask)
            self.keyframes_abs_pos_embedding = mx.zeros((1, vdim))
        self.adaln_single = AdaLayerNormSingle(vdim, coef)
        if with_prompt_adaln:
            self.prompt_adaln_single = AdaLayerNormSingle(vdim, 2)
        if with_caption_projection:
            self.caption_projection = PixArtAlphaTextProjection(caption_channels, vdim)
        self.scale_shift_table = mx.zeros((2, vdim))
        self.proj_out = nn.Linear(vdim, c.out_channels)

        self.audio_patchify_proj = nn.Linear(c.audio_in_channels, adim, bias=True)
        self.audio_adaln_single = AdaLayerNormSingle(adim, coef)
        if with_prompt_adaln:
            self.audio_prompt_adaln_single = AdaLayerNormSingle(adim, 2)
        if with_caption_projection:
            self.audio_caption_projection = PixArtAlphaTextProjection(caption_channels, adim)
        self.audio_scale_shift_table = mx.zeros((2, adim))
        self.audio_proj_out = nn.Linear(adim, c.audio_out_channels)

        self.av_ca_video_scale_shift_adaln_single = AdaLayerNormSingle(vdim, 4)
        self.av_ca_audio_scale_shift_adaln_single = AdaLayerNormSingle(adim, 4)
        self.av_ca_a2v_gate_adaln_single = AdaLayerNormSingle(vdim, 1)
        self.av_ca_v2a_gate_adaln_single = AdaLayerNormSingle(adim, 1)

        self.transformer_blocks = [BasicAVTransformerBlock(c) for _ in range(c.num_layers)]
        #: set by ``from_checkpoint(memory="stream")``
        self.block_streamer: BlockStreamer | None = None
        #: evaluation cadence in blocks (None: automatic, ``eval_interval``; 0: only at the end)
        self.eval_every: int | None = None
        #: adaLN vectors per distinct timestep up to this many values per stream, per token above
        self.max_distinct_timesteps = MAX_DISTINCT_TIMESTEPS
        #: RoPE tables and masks of recent calls, keyed by the identity of their positions / masks
        #: (denoise_loop clears it when a stage ends; a direct caller may call .clear())
        self.args_cache = ArrayCache(size=6)  # a stage: 4 RoPE tables and up to 2 masks

    @classmethod
    def build(cls, checkpoint: Checkpoint) -> LTXModel:
        """The unloaded model this checkpoint describes."""
        caption_channels = None
        key = checkpoint.component_keys("transformer").get("caption_projection.linear_1.weight")
        if key is not None:  # caption_channels is not in every released config: trust the weight
            caption_channels = checkpoint.shapes[key][1]
        return cls(checkpoint.config.transformer, caption_channels)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint | str, dtype: mx.Dtype = mx.bfloat16,
                        memory: str = "eager") -> LTXModel:
        """``memory``: "eager" keeps every weight once read; "stream" reads each block just before
        it runs and releases it after (``block_streaming.py``), keeping only the non-block weights."""
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory={memory!r}; choose one of {MEMORY_MODES}")
        ckpt = open_checkpoint(checkpoint)
        # strict checks of every tensor either way; the arrays are lazy until a forward reads them
        model = load_component(ckpt, "transformer", cls.build(ckpt), dtype=dtype)
        if memory == "stream":
            model.block_streamer = BlockStreamer(ckpt, dtype, model.num_blocks)
        return model

    @property
    def num_blocks(self) -> int:
        return len(self.transformer_blocks)

    @property
    def memory(self) -> str:
        return "stream" if self.block_streamer is not None else "eager"

    def resident_parameters(self) -> list[mx.array]:
        """The arrays that stay loaded: all of them eagerly, the non-block ones when streaming
        (evaluating a streamed block's arrays would read it for nothing)."""
        if self.block_streamer is None:
            return [v for _, v in tree_flatten(self.parameters())]
        return [v for k, v in tree_flatten(self.parameters()) if not k.startswith(BLOCK_PREFIX)]

    def eval_interval(self, video_tokens: int, audio_tokens: int, batch: int = 1) -> int:
        """Blocks per evaluation inside a forward (0 = none until the end). ``eval_every`` when set;
        otherwise as many blocks as make about ``EVAL_FLOPS`` of work, so that no single GPU
        submission runs long enough for the macOS watchdog. Outputs do not depend on it."""
        if self.eval_every is not None:
            return self.eval_every
        c = self.config
        # per sample: 14·D² linear weights per token and block (self 4, text q/out 2, FF 8), 4·T²·D of attention
        flops = batch * sum(2 * t * 14 * d * d + 4 * t * t * d
                            for t, d in ((video_tokens, c.inner_dim), (audio_tokens, c.audio_inner_dim)))
        every = int(EVAL_FLOPS // max(flops, 1))
        return 0 if every >= self.num_blocks else max(1, every)

    def _preprocessors(self) -> tuple[TransformerArgsPreprocessor, TransformerArgsPreprocessor]:
        c = self.config
        common = {
            "timestep_scale_multiplier": c.timestep_scale_multiplier,
            "av_ca_timestep_scale_multiplier": c.av_ca_timestep_scale_multiplier,
            "positional_embedding_theta": c.positional_embedding_theta,
            "double_precision_rope": c.double_precision_rope,
            "use_middle_indices_grid": c.use_middle_indices_grid,
            "audio_cross_attention_dim": c.audio_cross_attention_dim,
            "cross_pe_max_pos": max(c.positional_embedding_max_pos[0], c.audio_positional_embedding_max_pos[0]),
            "max_distinct_timesteps": self.max_distinct_timesteps,
            "cache": self.args_cache,
        }
        video = StreamSpec(self.patchify_proj, self.adaln_single, c.inner_dim, c.positional_embedding_max_pos,
                           c.num_attention_heads, getattr(self, "caption_projection", None),
                           getattr(self, "prompt_adaln_single", None), self.av_ca_video_scale_shift_adaln_single,
                           self.av_ca_a2v_gate_adaln_single, getattr(self, "keyframes_abs_pos_embedding", None))
        audio = StreamSpec(self.audio_patchify_proj, self.audio_adaln_single, c.audio_inner_dim,
                           c.audio_positional_embedding_max_pos, c.audio_num_attention_heads,
                           getattr(self, "audio_caption_projection", None),
                           getattr(self, "audio_prompt_adaln_single", None), self.av_ca_audio_scale_shift_adaln_single,
                           self.av_ca_v2a_gate_adaln_single)
        return TransformerArgsPreprocessor(video, **common), TransformerArgsPreprocessor(audio, **common)

    def _process_output(self, table: mx.array, proj_out: nn.Linear, x: mx.array, embedded_timestep: AdaVectors):
        if isinstance(embedded_timestep, PerTimestepValues):
            values = table[None].astype(x.dtype) + embedded_timestep.values[:, None]  # (K, 2, D)
            shift, scale = embedded_timestep.per_token(values[:, 0]), embedded_timestep.per_token(values[:, 1])
        else:
            values = table[None, None].astype(x.dtype) + embedded_timestep[:, :, None]
            shift, scale = values[:, :, 0], values[:, :, 1]
        # norm_out: LayerNorm without affine (it subtracts the mean, unlike the block norms)
        x = mx.fast.layer_norm(x, None, None, self.config.norm_eps)
        return proj_out(x * (1 + scale) + shift)

    def __call__(
        self,
        video: Modality | None,
        audio: Modality | None,
        perturbations: BatchedPerturbationConfig | list[PerturbationConfig] | None = None,
        sequence_parallel: SequenceParallel | None = None,
    ) -> tuple[mx.array | None, mx.array | None]:
        """Velocities (video [B, T, C], audio [B, Ta, Ca]); a stream passed as None gives None.
        ``perturbations``: one ``PerturbationConfig`` per batch element (or a batched config);
        ``sequence_parallel``: this rank runs its share of the video tokens (``sequence_parallel.py``)
        and every rank returns the whole velocities."""
        if video is None and audio is None:
            raise ValueError("LTXModel needs at least one of video or audio")
        shards = None
        if sequence_parallel is not None and sequence_parallel.applies(video):
            shards = sequence_parallel.shards(video)
            video = sequence_parallel.tile_modality(video, shards)
        video_pre, audio_pre = self._preprocessors()
        video_args = video_pre.prepare(video, audio) if video is not None else None
        audio_args = audio_pre.prepare(audio, video) if audio is not None else None
        if shards is not None:
            video_args = replace(video_args, kv_gather=shards.gather_kv)
        if isinstance(perturbations, (list, tuple)):
            perturbations = BatchedPerturbationConfig(list(perturbations), self.num_blocks)
        if perturbations is not None:
            batch = (video_args or audio_args).x.shape[0]
            if perturbations.batch_size != batch or perturbations.keep.shape[1] != self.num_blocks:
                raise ValueError(f"perturbations cover {perturbations.batch_size} samples x {perturbations.keep.shape[1]}"
                                 f" blocks; the call has {batch} samples x {self.num_blocks} blocks")
        batch = (video_args or audio_args).x.shape[0]
        # sharded: every rank evaluates at the same blocks (the largest share's cadence)
        video_tokens = _tokens(video_args) if shards is None else max(shards.counts)
        every = self.eval_interval(video_tokens, _tokens(audio_args), batch)
        for i, block in enumerate(self.transformer_blocks):
            if video_args is not None:
                video_args = with_block_perturbations(video_args, perturbations, i,
                                                      PerturbationType.SKIP_VIDEO_SELF_ATTN,
                                                      PerturbationType.SKIP_A2V_CROSS_ATTN)
            if audio_args is not None:
                audio_args = with_block_perturbations(audio_args, perturbations, i,
                                                      PerturbationType.SKIP_AUDIO_SELF_ATTN,
                                                      PerturbationType.SKIP_V2A_CROSS_ATTN)
            vx, ax = block(video_args, audio_args)
            video_args = _with_x(video_args, vx)
            audio_args = _with_x(audio_args, ax)
            if self.block_streamer is not None:
                mx.eval([t for t in (vx, ax) if t is not None])  # reads the block, then it can go
                self.block_streamer.reopen(block, i)
            elif every and (i + 1) % every == 0 and i + 1 < self.num_blocks:
                mx.eval([t for t in (vx, ax) if t is not None])
        vout = (self._process_output(self.scale_shift_table, self.proj_out, video_args.x, video_args.embedded_timestep)
                if video_args is not None else None)
        if shards is not None:
            vout = shards.gather(vout, axis=1)
        aout = (self._process_output(self.audio_scale_shift_table, self.audio_proj_out, audio_args.x,
                                     audio_args.embedded_timestep) if audio_args is not None else None)
        return vout, aout

    def denoise(self, video: Modality | None, audio: Modality | None,
                perturbations: BatchedPerturbationConfig | list[PerturbationConfig] | None = None,
                sequence_parallel: SequenceParallel | None = None):
        """``X0Model``: the denoised latents (per-token ``latent − velocity·timesteps``)."""
        vel_v, vel_a = self(video, audio, perturbations, sequence_parallel)
        den_v = to_denoised(video.latent, vel_v, video.timesteps) if vel_v is not None else None
        den_a = to_denoised(audio.latent, vel_a, audio.timesteps) if vel_a is not None else None
        return den_v, den_a


def _tokens(args: TransformerArgs | None) -> int:
    return 0 if args is None else args.x.shape[1]


def _with_x(args: TransformerArgs | None, x: mx.array | None) -> TransformerArgs | None:
    return None if args is None else replace(args, x=x)


def to_denoised(sample: mx.array, velocity: mx.array, timesteps: mx.array) -> mx.array:
    """``sample − velocity·timesteps`` in float32, cast back to the sample dtype; ``timesteps``
    is per token [B, T] (or [B, T, 1]) or anything broadcastable to it."""
    t = timesteps.astype(mx.float32)
    if t.ndim == 2:
        t = t[..., None]
    return (sample.astype(mx.float32) - velocity.astype(mx.float32) * t).astype(sample.dtype)


def load_transformer(checkpoint: Checkpoint | str, dtype: mx.Dtype = mx.bfloat16, memory: str = "eager") -> LTXModel:
    return LTXModel.from_checkpoint(checkpoint, dtype, memory)
