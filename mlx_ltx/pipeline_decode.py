"""The decoding half of a :class:`~mlx_ltx.pipelines.Pipeline`: the video decoder (tiled, chunk by
chunk: the conv decoder with the timestep-conditioned one's per-tile noise, or LTX-2.5's diffusion
decoder with its sampler's noise) and the audio decoder + vocoder.
Each decoder is built per call and released after its stream (the transformer is gone by then
in low-memory mode), so decoding never holds two large models at once."""

from __future__ import annotations

import gc

import mlx.core as mx
import numpy as np

from .media import unit_to_uint8, video_to_unit
from .models.diffusion_video_decoder import BORDERS as DIFFVAE_BORDERS


def release_memory() -> None:
    """Drop unreferenced arrays now and return MLX's cached buffers to the system."""
    gc.collect()
    mx.clear_cache()


class PipelineDecoding:
    """Mixin of :class:`~mlx_ltx.pipelines.Pipeline` (its ``checkpoint``, ``config``, ``dtype``,
    ``memory_budget``, ``keeps_models`` and ``_phase``)."""

    def decode_budget(self) -> int:
        """The bytes the tiled video decode plans its tiles for (the preflight predicts with the same):
        half of what the memory budget leaves beside the models a pipeline keeps loaded (the other
        half: the decoder's weights, the finished frames and the allocator's slack)."""
        kept = (self.estimated_model_bytes() or 0) if self.keeps_models else 0
        return max(self.memory_budget - kept, 0) // 2 or 1

    def iter_video_frames(self, latent: mx.array, key: mx.array | None = None, noise=None, tiling="auto",
                          sharing=None):
        """Float32 frames [f, H, W, 3] in [0, 1], chunk by chunk as the tiled decode (tiles planned
        for :meth:`decode_budget`, or ``tiling``: a ``vae_tiling.TilingConfig`` or None for one tile)
        finishes them, as the reference's ``decode_video``. ``key`` / ``noise``: the decoder's noise:
        the conv decoder (if timestep-conditioned) calls ``noise(shape, dtype)`` once per tile, the
        diffusion decoder once, for its sampler's start over the whole padded pixel volume (the
        reference draws it from the pipeline's generator after every denoising draw). ``sharing``
        (``distributed.TileSharing``): the tiles are divided among the ranks; an untiled decode runs on
        rank 0 alone (the other ranks yield nothing)."""
        if self.kind.video_decoder == "diffusion":
            from .models.diffusion_video_decoder import DiffusionVideoDecoder

            decoder = DiffusionVideoDecoder.from_checkpoint(self.checkpoint, dtype=self.dtype)
            if tiling == "auto":
                tiling = decoder.plan_tiling(latent.shape, self.decode_budget())

            def start(sharing):
                return decoder.iter_decode(latent, noise, tiling, self.diffvae_border, key, sharing)
        else:
            from .models.video_decoder import VideoDecoder
            from .models.vae_tiling import auto_tiling

            decoder = VideoDecoder.from_checkpoint(self.checkpoint, dtype=self.dtype)
            if tiling == "auto":
                tiling = auto_tiling(decoder, latent.shape, memory_budget=self.decode_budget(), dtype=decoder.dtype)

            def start(sharing):
                return decoder.iter_tiled_decode(latent, tiling, key=key, noise=noise, sharing=sharing)
        if tiling is None and sharing is not None:  # one tile: nothing to divide
            if not self.lead:
                return
            sharing = None
        chunks = start(sharing)
        try:
            for chunk in chunks:
                yield video_to_unit(chunk)
        finally:
            del decoder, chunks, start  # start holds the decoder too
            release_memory()

    def decode_video(self, latent: mx.array, key: mx.array | None = None, noise=None) -> np.ndarray | None:
        """uint8 frames [F, H, W, 3] (see :meth:`iter_video_frames`); with several ranks, each decodes its
        share of the tiles and rank 0 the frames (None on the others)."""
        tracker = getattr(self, "_tracker", None)
        t = self.config.vae.scale_factors[0]
        total = (latent.shape[2] - 1) * t + 1
        chunks, done = [], 0
        sharing = None
        if self.parallel is not None:
            from .distributed import TileSharing

            sharing = TileSharing(self.parallel)
        with self._phase("video_decode", total):
            for f in self.iter_video_frames(latent, key, noise, sharing=sharing):
                if not self.lead:
                    continue
                chunks.append(unit_to_uint8(f))
                done += chunks[-1].shape[0]
                if tracker is not None:
                    tracker.step(done, total)
        return np.concatenate(chunks, axis=0) if chunks else None

    def decode_audio(self, latent: mx.array) -> tuple[np.ndarray, int]:
        """float32 waveform [2, S] and its sample rate: audio VAE decoder, then the vocoder."""
        from .models.audio_vae import AudioDecoder
        from .models.vocoder import load_vocoder

        with self._phase("audio_decode"):
            decoder = AudioDecoder.from_checkpoint(self.checkpoint, dtype=self.dtype)
            mel = decoder(latent.astype(decoder.dtype))
            mx.eval(mel)
            del decoder
            vocoder = load_vocoder(self.checkpoint, dtype=self.dtype)
            wave = vocoder(mel).astype(mx.float32)
            mx.eval(wave)
            rate = int(vocoder.output_sampling_rate)
            del vocoder, mel
            release_memory()
            return np.array(wave[0]), rate
