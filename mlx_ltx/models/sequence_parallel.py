"""Sequence parallelism for the LTX transformer over ``mlx.core.distributed``
(``ltx_core/multigpu/transformer/sequence_parallel.py`` and ``attention.py``).

The video tokens of a forward are split into contiguous shares, one per rank; every per-token input
(latent, timesteps, positions, keyframe marks, the rows of a self-attention mask) is cut to this
rank's share before the transformer runs, so every per-token activation (the residual stream, the
feed-forward's 4x-wide hidden, the queries and the attention output) shrinks by about the number of
ranks. Attention still sees the whole sequence:

* video self-attention (``attn1``) and video-to-audio cross-attention (audio queries, video keys and
  values) gather the keys and values of every rank after their norm and RoPE, and each rank attends
  with its own queries. The reference instead exchanges Q/K/V over heads with an all-to-all kernel;
  ``mlx.distributed`` has no all-to-all on every backend (ring, JACCL, MPI), but all of them have
  ``all_gather``, and gathering K/V moves as many bytes per rank as the all-to-all's Q, K, V and
  output together would for two ranks;
* the audio stream is small and runs whole on every rank, as in the reference (its self-attention,
  its text cross-attention, its queries of the video); the audio-to-video cross-attention reads the
  whole audio keys every rank holds;
* the text cross-attention reads the whole (small) prompt context on every rank.

The output velocities are gathered back to the whole sequence, so every rank leaves the forward
with the same numbers and the denoising loop needs no further exchange. Unlike the reference, the
shares may differ by one token (no padded keys to mask): only the exchange pads each share to the
largest, since ``all_gather`` needs the same shape from every rank, and the padding is dropped on
arrival. Each query's attention is computed over the same keys as in one process, so the result
equals the single-process forward up to the floating-point order of the GEMMs (f32: ~1e-6).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import mlx.core as mx

from .transformer_args import ArrayCache, Modality


def compute_sequence_partition(total_tokens: int, world_size: int) -> list[int]:
    """Contiguous shares that differ by at most one token, the larger ones first."""
    base, extra = divmod(total_tokens, world_size)
    return [base + (r < extra) for r in range(world_size)]


def compute_sequence_offsets(token_counts: list[int]) -> list[int]:
    offsets = [0]
    for count in token_counts[:-1]:
        offsets.append(offsets[-1] + count)
    return offsets


@dataclass(frozen=True)
class SequenceShards:
    """One forward's split of ``total`` video tokens over the ranks of ``group``."""

    group: object  # mx.distributed.Group
    counts: tuple[int, ...]

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def local(self) -> slice:
        start = compute_sequence_offsets(list(self.counts))[self.rank]
        return slice(start, start + self.counts[self.rank])

    def gather(self, x: mx.array, axis: int) -> mx.array:
        """Every rank's share of ``x`` along ``axis`` (this rank's share in, the whole sequence out)."""
        x = mx.moveaxis(x, axis, 0)
        longest = max(self.counts)
        if x.shape[0] < longest:  # all_gather needs one shape from every rank: pad, drop the padding below
            x = mx.concatenate([x, mx.zeros((longest - x.shape[0], *x.shape[1:]), dtype=x.dtype)])
        gathered = mx.distributed.all_gather(x, group=self.group)
        if min(self.counts) != longest:
            gathered = mx.concatenate([gathered[r * longest:r * longest + n] for r, n in enumerate(self.counts)])
        return mx.moveaxis(gathered, 0, axis)

    def gather_kv(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """Heads-first (B, H, T_local, d) keys and values of every rank, in one exchange."""
        both = self.gather(mx.stack([k, v]), axis=3)
        return both[0], both[1]


class SequenceParallel:
    """What a transformer call needs to run on its share of the video tokens (``LTXModel.__call__``'s
    ``sequence_parallel``): the group, and the shares of a stage's per-token inputs that stay the same
    from step to step (positions, masks), cut once per source array so that the transformer's RoPE and
    mask caches, keyed by array identity, keep hitting."""

    def __init__(self, group):
        self.group = group
        self.cache = ArrayCache(size=8)

    @property
    def size(self) -> int:
        return self.group.size()

    def applies(self, video: Modality | None) -> bool:
        """Whether the video stream is long enough to split (at least one token per rank)."""
        return video is not None and video.latent.shape[1] >= self.size

    def shards(self, video: Modality) -> SequenceShards:
        return SequenceShards(self.group, tuple(compute_sequence_partition(video.latent.shape[1], self.size)))

    def _cut(self, x: mx.array | None, axis: int, part: slice) -> mx.array | None:
        """This rank's share of a stage-constant input, cut once per source array."""
        if x is None:
            return None
        index = (slice(None),) * axis + (part,)
        return self.cache.get(("share", axis, part.start, part.stop), (x,), lambda: x[index])

    def tile_modality(self, video: Modality, shards: SequenceShards) -> Modality:
        """``tile_modality_for_rank``: this rank's share of every per-token input. A self-attention mask
        keeps all its columns (the keys are gathered), only this rank's rows (its queries)."""
        part = shards.local
        return replace(
            video,
            latent=video.latent[:, part],
            timesteps=video.timesteps[:, part],
            positions=self._cut(video.positions, 2, part),
            keyframes_mask=self._cut(video.keyframes_mask, 1, part),
            attention_mask=self._cut(video.attention_mask, 1, part),
        )
