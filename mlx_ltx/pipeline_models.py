"""The models a :class:`~mlx_ltx.pipelines.Pipeline` loads lazily, one copy each: the transformer
(eager or streamed, with each stage's LoRAs fused in place and unfused for the next), the video
encoder, the upsampler with the latent statistics, and the LTX-2.5 duration head that predicts a
clip's length when no frame count is given (``DurationPredictor`` + ``resolve_num_frames``); and
the images, encoded for every stage before the transformer loads."""

from __future__ import annotations

import mlx.core as mx

from .conditioning import IMAGE_CONDITIONINGS, ImageConditioningInput
from .memory_policy import unplanned
from .model_files import RELEASE_NAMES
from .models.duration_head import (
    AUTO_DURATION_MAX_SECONDS,
    AUTO_DURATION_MIN_SECONDS,
    resolve_num_frames,
    validate_auto_duration,
)
from .pipeline_decode import release_memory as _release
from .pipeline_stages import Contexts, Geometry, StageSpec


class PipelineModels:
    """Mixed into ``Pipeline``: reads its ``checkpoint``, ``dtype``, ``spec``, ``loras``, paths and
    memory policy, and keeps the loaded models in its ``_transformer``, ``_video_encoder``, ... slots."""

    def transformer(self):
        """The transformer, in the memory mode of the running request's plan (eager without one);
        a kept model in the other mode is released and loaded again."""
        mode = (self._plan or unplanned(self.memory)).memory
        if self._transformer is not None and self._transformer.memory != mode:
            self._transformer = self._distilled_lora = None
            _release()
        if self._transformer is None:
            from .models.transformer import LTXModel

            with self._phase("transformer"):
                self._transformer = LTXModel.from_checkpoint(self.checkpoint, dtype=self.dtype, memory=mode)
                if getattr(self, "_tracker", None) is not None:  # the load's real time, not the first step's
                    mx.eval(self._transformer.resident_parameters())
            self._lora_strength = None
        return self._transformer

    def model_for(self, stage: StageSpec):
        """The transformer with the stage's LoRAs fused in place: the user's LoRAs, then the distilled
        LoRA at the stage's strength, aggregated in that order in one fusion (the reference's stages:
        ``loras=(*loras, distilled_lora)``). Another stage's set is unfused first (one copy of the weights)."""
        model = self.transformer()
        user = self.loras if stage.user_loras else ()  # IC-LoRA's stage 2 runs without them
        wanted = user + (((self.distilled_lora_path, stage.distilled_lora),)
                         if stage.distilled_lora is not None else ())
        if wanted != (self._lora_strength or ()):  # None: a fresh model, nothing fused
            from .models.lora import fuse_loras, load_lora, unfuse_loras

            index = self.spec.stages.index(stage) if stage in self.spec.stages else None
            with self._phase("lora", stage=index):
                unfuse_loras(model)
                # opened per fusion: lazy factors, read only while the touched layers are fused
                loras = [(load_lora(path), strength) for path, strength in user]
                if stage.distilled_lora is not None:
                    if self._distilled_lora is None:
                        self._distilled_lora = load_lora(self.distilled_lora_path)
                    loras.append((self._distilled_lora, stage.distilled_lora))
                if loras:
                    # low memory: the restore re-reads the touched tensors from the checkpoint instead
                    # of keeping their originals (the distilled LoRA touches nearly every Linear)
                    fuse_loras(model, loras, restore_from=self.checkpoint if self.low_memory else None)
            self._lora_strength = wanted
        return model

    def video_encoder(self):
        if self._video_encoder is None:
            from .models.video_vae import VideoEncoder

            self._video_encoder = VideoEncoder.from_checkpoint(self.checkpoint, dtype=self.dtype)
        return self._video_encoder

    def upsample(self, video_latent: mx.array) -> mx.array:
        from .models.upsampler import (
            LatentUpsampler,
            load_latent_statistics,
            upsample_video,
        )

        with self._phase("upsample"):
            if self._upsampler is None:
                self._upsampler = LatentUpsampler.from_file(self.upsampler_path, dtype=self.dtype)
                self._statistics = load_latent_statistics(self.checkpoint, dtype=self.dtype)
            out = upsample_video(video_latent.astype(self.dtype), self._statistics, self._upsampler)
            mx.eval(out)
            if self.low_memory:
                self._upsampler = self._statistics = None
                _release()
        return out

    def release(self) -> None:
        """Drop every loaded model."""
        self._text_encoder = self._transformer = self._video_encoder = None
        self._upsampler = self._statistics = self._distilled_lora = None
        self._lora_strength = None
        _release()

    def _auto_duration_bounds(self, num_frames: int | None, auto_duration, fps) -> tuple[float, float] | None:
        """The (min, max) seconds of an automatic length, or None for an explicit / default one."""
        if num_frames is not None:
            if auto_duration is not None:
                raise ValueError(f"give either {self._name('num_frames')} or {self._name('auto_duration')}, not both")
            return None
        if auto_duration is None and not self.kind.has_duration_head and not self.kind.ships_duration_head:
            return None  # 2.3 and older: the generation's default length
        if not self.kind.has_duration_head:
            raise ValueError(f"{self.checkpoint.path} has no duration head, so the clip length cannot be predicted: "
                             f"pass {self._name('num_frames')} (8k+1), or add the release's "
                             f"{RELEASE_NAMES['duration_head']} to the model folder")
        try:
            lo, hi = (AUTO_DURATION_MIN_SECONDS, AUTO_DURATION_MAX_SECONDS) if auto_duration is None \
                else (float(auto_duration[0]), float(auto_duration[1]))
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"{self._name('auto_duration')} must be (min_seconds, max_seconds); "
                             f"got {auto_duration!r}") from None
        validate_auto_duration(lo, hi)
        return lo, hi

    def duration_head(self):
        if self._duration_head is None:
            from .models.duration_head import load_duration_head

            self._duration_head = load_duration_head(self.checkpoint.role_path("duration_head"), dtype=self.dtype)
        return self._duration_head

    def predict_num_frames(self, contexts: Contexts, fps: float, bounds: tuple[float, float]) -> int:
        """``DurationPredictor`` + ``resolve_num_frames``: the positive prompt's contexts -> seconds
        -> a frame count (8k+1) within ``bounds`` seconds; the head is dropped afterwards."""
        with self._phase("duration"):
            seconds = self.duration_head().predict_seconds(contexts.video, contexts.audio)
            self._duration_head = None
        self.last_duration = resolve_num_frames(seconds, fps, *bounds)
        n = self.last_duration.num_frames
        t = self.config.vae.scale_factors[0]
        if (n - 1) % t:  # the reference caps at the maximum even off the grid; the model needs tk+1
            raise ValueError(f"{self._name('auto_duration')} {bounds[0]:g} to {bounds[1]:g} s at {fps:g} fps holds no "
                             f"{t}k+1 frame count (got {n}); widen it or pass {self._name('num_frames')}")
        return n

    def _stage_conditionings(self, images: list[ImageConditioningInput], geometry: Geometry,
                             crf_threads: int | None = None) -> list[list]:
        """Every stage's image conditionings, encoded at that stage's size before the transformer
        is loaded (then the encoder can go)."""
        out = []
        for stage in self.spec.stages:
            h, w = geometry.height // stage.size_divisor, geometry.width // stage.size_divisor
            if images:
                build = IMAGE_CONDITIONINGS[self.spec.image_conditioning]
                items = build(images, h, w, self.video_encoder(), self.dtype, crf_threads, default_crf=self.kind.image_crf)
                mx.eval([getattr(i, "latent", getattr(i, "keyframes", None)) for i in items])
            else:
                items = []
            out.append(items)
        if self.low_memory and self._video_encoder is not None:
            self._video_encoder = None
            _release()
        return out
