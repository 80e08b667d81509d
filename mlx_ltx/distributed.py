"""Several processes (Macs) as one generation over ``mlx.core.distributed``: guidance-parallel and
sequence-parallel.

Guidance-parallel: a guided step runs up to four transformer passes on the same latent: conditioned, negative
prompt, STG (skipped self-attention blocks) and modality isolation. With N ranks each rank runs
the passes ``i`` with ``i % N == rank`` and the outputs are summed across ranks into every rank's
full set (each pass comes from exactly one rank, the others contribute zeros, so the sum is exact:
x + 0 = x). Every rank then applies the same guidance arithmetic to the same numbers, so the
states stay identical on every rank without any further exchange, and the result equals the
single-process run's, bit for bit.

Sequence-parallel (``models/sequence_parallel.py``): every pass runs on every rank, each over its
share of the video tokens, with the keys and values gathered inside attention and the velocities
gathered at the end. Activations per rank shrink by about the number of ranks, so a clip too long
for one Mac's memory fits two; the result equals one process's up to the GEMMs' rounding order.

The mode (``--parallel``): "guidance" splits the passes of a step that has at least one per rank and
runs the others (the distilled pipeline, stage 2: one pass) sequence-parallel; "sequence" splits
every pass by tokens; "auto" is guidance unless its memory plan does not fit and sequence's does
(``memory_policy.plan_memory``). The prompt is encoded on rank 0 alone (the others never load
Gemma) and its contexts shared; the tiles of the video decode are divided among the ranks
(:class:`TileSharing`) and only rank 0 writes.

The engine is MLX's own: ``mlx.launch`` starts the ranks (ring over Ethernet / loopback, JACCL
over Thunderbolt, MPI), ``mx.distributed.init()`` joins them. Collectives are lazy: every rank
must evaluate the same collectives in the same order, which the shared pass schedule guarantees.

Failures: a rank that dies makes the others' next collective raise ("connection to a peer was
lost"); :func:`peer_lost` recognises it so the CLI ends with one message and writes nothing.
Ranks started with different model files are refused before any work (:func:`check_same_model`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass

import mlx.core as mx

from .models.sequence_parallel import SequenceParallel

PARALLEL_MODES = ("guidance", "sequence", "auto")


def splits_passes(mode: str, passes: int, ranks: int) -> bool:
    """The rule (which the preflight predicts with): a step is shared out by whole passes unless the
    mode is "sequence" or there are fewer passes than ranks; otherwise every pass is split by tokens."""
    return mode != "sequence" and passes >= ranks


@dataclass(frozen=True)
class ParallelGroup:
    """The ranks of one generation and how they share the work (``mode`` "auto" is resolved per
    request by the memory plan into "guidance" or "sequence")."""

    group: object  # mx.distributed.Group
    mode: str = "guidance"

    @functools.cached_property
    def sequence(self) -> SequenceParallel:
        """The transformer's sequence-parallel state for this group (one per group: its cache of the
        stage inputs' shares lives as long as the group)."""
        return SequenceParallel(self.group)

    def splits_passes(self, passes: int) -> bool:
        """Whether a step of ``passes`` guidance passes is shared out by passes (else by tokens)."""
        return splits_passes(self.mode, passes, self.size)

    def resolved(self, mode: str) -> ParallelGroup:
        return self if mode == self.mode else ParallelGroup(self.group, mode)

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def size(self) -> int:
        return self.group.size()

    def mine(self, index: int) -> bool:
        """Whether this rank runs guidance pass ``index`` (round-robin over the ranks)."""
        return index % self.size == self.rank

    def all_sum(self, x: mx.array) -> mx.array:
        return mx.distributed.all_sum(x, group=self.group)


# what a launcher sets in every rank's environment: mlx.launch (ring, JACCL, NCCL), mpirun
_LAUNCHER_ENV = ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def agree_memory(parallel: ParallelGroup, budget: int, low_memory: bool) -> tuple[int, bool]:
    """The smallest memory budget of all ranks (bytes, in whole MiB) and whether any rank releases its
    models: with both the same everywhere, every rank plans alike (memory mode, guidance passes per call,
    parallel mode, decode tiles), which the collectives need to line up, within the smallest Mac."""
    mine = mx.array([[budget >> 20, int(low_memory)]], dtype=mx.int32)
    every = mx.distributed.all_gather(mine, group=parallel.group)
    return max(int(every[:, 0].min().item()), 1) << 20, bool(every[:, 1].max().item())


class ParallelPipeline:
    """Mixin of :class:`~mlx_ltx.pipelines.Pipeline`: the ranks it runs on (``parallel``, None alone)."""

    _parallel: ParallelGroup | None = None

    @property
    def parallel(self) -> ParallelGroup | None:
        return self._parallel

    @parallel.setter
    def parallel(self, group: ParallelGroup | None) -> None:
        """Join ``group`` (every rank at once: it exchanges the memory policies, :func:`agree_memory`)."""
        self._parallel = group
        if group is not None:
            self.memory_budget, self.low_memory = agree_memory(group, self.memory_budget, self.low_memory)

    def request_parallel(self, plan) -> ParallelGroup | None:
        """The group with the mode this request's memory plan (``memory_policy.MemoryPlan``) resolved;
        without a plan "auto" is guidance."""
        group = self._parallel
        if group is None:
            return None
        mode = plan.parallel if plan is not None and plan.parallel is not None else group.mode
        return group.resolved("guidance" if mode == "auto" else mode)

    def agree_plan(self, plan):
        """Rank 0's memory plan (``memory_policy.MemoryPlan``) on every rank. The ranks plan with the same
        budget, but a prediction can still differ (the Gemma files only rank 0 needs), and a different
        batching or mode would misalign the collectives."""
        if self._parallel is None:
            return plan
        modes, shares = ("eager", "stream"), (None, "guidance", "sequence")
        mine = [mx.array([modes.index(plan.memory), plan.passes_per_call, shares.index(plan.parallel)],
                         dtype=mx.int32)] if self.lead else None
        memory, passes, share = share_from_rank0(self._parallel, mine)[0].tolist()
        return dataclasses.replace(plan, memory=modes[memory], passes_per_call=passes, parallel=shares[share])

    @property
    def lead(self) -> bool:
        """Whether this process reports, decodes the audio and writes: rank 0, or a process alone."""
        return self._parallel is None or self._parallel.rank == 0


def init_parallel(mode: str | None = "auto") -> ParallelGroup | None:
    """The group this process belongs to (launched by ``mlx.launch``), or None when it runs alone
    (a plain ``python -m mlx_ltx.generate`` is a group of one). Without a launcher and without an
    explicit ``mode`` no backend is even tried; under a launcher ``mode`` None means "auto"."""
    if mode is not None and mode not in PARALLEL_MODES:
        raise ValueError(f"parallel mode {mode!r}; choose from {PARALLEL_MODES}")
    if not mx.distributed.is_available() or (mode is None and not any(v in os.environ for v in _LAUNCHER_ENV)):
        return None
    group = mx.distributed.init()
    if group.size() == 1:
        return None
    return ParallelGroup(group, mode or "auto")


_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16, "int32": mx.int32}


def share_from_rank0(parallel: ParallelGroup, arrays: list[mx.array | None] | None) -> list[mx.array | None]:
    """Rank 0's ``arrays`` (None entries allowed) on every rank; the others pass None. MLX has no
    broadcast: the shapes go first as JSON bytes, then each array is summed with zeros elsewhere,
    which is exact (x + 0 = x)."""
    header = b""
    if parallel.rank == 0:
        header = json.dumps([None if a is None else [list(a.shape), str(a.dtype).removeprefix("mlx.core.")]
                             for a in arrays]).encode()
    n = int(parallel.all_sum(mx.array([len(header)], dtype=mx.int32)).item())
    raw = mx.array(bytearray(header), dtype=mx.uint8) if parallel.rank == 0 else mx.zeros((n,), dtype=mx.uint8)
    specs = json.loads(bytes(bytearray(parallel.all_sum(raw).tolist())))  # one rank non-zero: no uint8 overflow
    out = []
    for i, spec in enumerate(specs):
        if spec is None:
            out.append(None)
            continue
        mine = arrays[i] if parallel.rank == 0 else mx.zeros(tuple(spec[0]), dtype=_DTYPES[spec[1]])
        out.append(parallel.all_sum(mine))
    mx.eval([a for a in out if a is not None])
    return out


def model_fingerprint(checkpoint) -> str:
    """A digest of what a rank will load: each file's name, size and header metadata (not its
    bytes: hashing tens of GB on every start is too slow; different weights of one name and size
    would pass, different releases, conversions, variants or quantizations do not)."""
    parts = []
    files = sorted(set(checkpoint.files.values()))
    for path in files:
        parts.append([os.path.basename(path), os.path.getsize(path)])
    parts.append(checkpoint.metadata)
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def check_same_model(parallel: ParallelGroup, checkpoint) -> None:
    """Refuse, on every rank and before any work, ranks that opened different model files."""
    mine = model_fingerprint(checkpoint)
    digests = mx.distributed.all_gather(mx.array(bytearray(bytes.fromhex(mine)), dtype=mx.uint8)[None],
                                        group=parallel.group)
    ranks = [bytes(bytearray(row.tolist())).hex() for row in digests]
    if len(set(ranks)) > 1:
        odd = [r for r, d in enumerate(ranks) if d != ranks[0]]
        raise ValueError(f"the ranks opened different models (rank 0 vs rank(s) {odd}: file names, sizes or "
                         f"metadata differ; this rank has {checkpoint.path}): put the same model folder on every "
                         f"host, at the path given to --model")


class RunAbandoned(RuntimeError):
    """This rank was told to stop (SIGTERM): ``mlx.launch`` terminates the other ranks as soon as one
    exits with an error, usually before their next collective would have noticed."""


def stop_on_sigterm() -> None:
    """Turn the launcher's SIGTERM into :class:`RunAbandoned`, so the rank unwinds (a video being
    written is removed with its temporary name) and says why, instead of dying silently."""
    import signal

    def handler(signum, frame):
        raise RunAbandoned("stopped by the launcher (SIGTERM)")

    signal.signal(signal.SIGTERM, handler)


def peer_lost(error: BaseException) -> bool:
    """Whether ``error`` means another rank died or became unreachable mid-run: MLX's report of a
    lost connection, or the launcher stopping this rank because another one failed."""
    if isinstance(error, RunAbandoned):
        return True
    return isinstance(error, RuntimeError) and "peer" in str(error).lower() and "lost" in str(error).lower()


class TileSharing:
    """The tiles of one tiled video decode divided among the ranks: tile ``i`` is decoded by rank
    ``i % N``. The decoders (``vae_tiling.tiled_apply``, ``DiffusionVideoDecoder.iter_decode``) decode a
    temporal group's own tiles first, so the ranks work at the same time, then exchange the group's
    tiles in tile order (each tile summed with the others' zeros: exact, as for the passes), so every
    rank blends the same tiles in the same order as one process does: the frames are bit-identical.
    Every rank still makes every tile's random draws, in order, so the noise streams stay aligned."""

    def __init__(self, parallel: ParallelGroup):
        self.parallel = parallel

    def mine(self, index: int) -> bool:
        return self.parallel.mine(index)

    def group(self, first: int, count: int, decode, shape):
        """Tiles ``first .. first + count`` (one temporal group) in order on every rank: this rank's
        decoded first (``decode(i, True)``, evaluated, so the ranks decode at the same time), the
        others' only drawn for (``decode(i, False)``), then each exchanged with its ``shape(i)``."""
        own = {}
        for i in range(count):
            run = self.mine(first + i)
            own[i] = decode(i, run)
            if run:
                mx.eval(own[i])
        for i in range(count):
            yield self.exchange(first + i, own.pop(i), shape(i))

    def exchange(self, index: int, tile: mx.array | None, shape: tuple[int, ...]) -> mx.array:
        """Tile ``index`` on every rank, in float32 (what the blending reads; exact from bf16 too):
        ``tile`` from its owner (None elsewhere) of ``shape``."""
        mine = tile.astype(mx.float32) if tile is not None else mx.zeros(shape, dtype=mx.float32)
        return self.parallel.all_sum(mine)


def share_pass_outputs(parallel: ParallelGroup, names: list[str],
                       outputs: dict[str, tuple[mx.array | None, mx.array | None]]
                       ) -> dict[str, tuple[mx.array | None, mx.array | None]]:
    """Every pass's (video, audio) outputs on every rank: this rank's passes (``outputs``) summed with
    the zeros it holds for the others' (each pass is computed by exactly one rank)."""
    mine = next(iter(outputs.values()))
    result: dict[str, list] = {n: [None, None] for n in names}
    for stream in (0, 1):
        if mine[stream] is None:
            continue
        ref = mine[stream]
        stacked = mx.stack([outputs[n][stream] if n in outputs else mx.zeros(ref.shape, ref.dtype) for n in names])
        summed = parallel.all_sum(stacked)
        for i, n in enumerate(names):
            result[n][stream] = summed[i]
    return {n: (v, a) for n, (v, a) in result.items()}
