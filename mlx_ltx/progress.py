"""Generation events: what :meth:`Pipeline.generate` is doing, phase by phase.

``generate(..., events=callback)`` calls ``callback(event)`` with a :class:`ProgressEvent` at the
start and end of every phase, after every denoising step and decoded video chunk, once before
the first phase (``kind="settings"``, the resolved settings) and once at the end
(``kind="summary"``, the wall time per phase and the peak memory). The phases, in order:

``text_encoder`` (Gemma load), ``prompt`` (prompt encoding), ``duration`` (the duration head, when the
length is predicted; the settings event then follows it), ``image_encode`` (images given only),
``transformer`` (load), ``lora`` (a stage fusing the distilled LoRA), ``stage1`` (denoising steps),
``upsample``, [``lora``], ``stage2`` (two-stage pipelines), ``video_decode`` (step = frames
decoded, per tile chunk), ``audio_decode`` (audio on only), ``write`` (output_path given only).
A model kept loaded (``low_memory=False``) still gets its load phase, lasting about nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx

PHASE_LABELS = {
    "text_encoder": "text encoder load", "prompt": "prompt encoding",
    "duration": "duration prediction", "image_encode": "image encoding", "audio_encode": "audio encoding",
    "transformer": "transformer load", "lora": "LoRA fusion", "stage1": "stage 1", "stage2": "stage 2",
    "upsample": "upsampling", "video_decode": "video decode", "audio_decode": "audio decode", "write": "write",
}


@dataclass(frozen=True)
class GenerationSettings:
    """The settings a generation actually used (the defaults resolved): pixel size, frame count,
    frame rate, denoising steps per stage, seed (after the modulo), the guider params of the
    guided stages (None for the distilled pipeline, which has no guidance), and the memory plan:
    the transformer's memory mode, the guidance passes per transformer call, and the predicted
    peak bytes with the phase it falls in (None when the preflight was off); ``predicted_seconds``:
    the duration head's prediction when the frame count was predicted."""

    pipeline: str
    height: int
    width: int
    num_frames: int
    fps: float
    steps: tuple[int, ...]
    seed: int
    video_guidance: object | None = None   # guidance.MultiModalGuiderParams
    audio_guidance: object | None = None
    audio: bool = True
    memory: str | None = None
    passes_per_call: int | None = None
    predicted_peak: int | None = None
    predicted_peak_phase: str | None = None
    # the duration head's raw prediction in seconds, when num_frames was predicted (auto duration)
    predicted_seconds: float | None = None
    # the user LoRAs fused in every stage, ((path, strength), ...)
    loras: tuple[tuple[str, float], ...] = ()
    # several ranks: (how they share the work, "guidance" / "sequence", and how many there are)
    parallel: tuple[str, int] | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["steps"] = list(self.steps)
        d["loras"] = [[p, s] for p, s in self.loras]
        for k in ("video_guidance", "audio_guidance"):
            if d[k] is not None:
                d[k] = {f: list(v) if isinstance(v, tuple) else v for f, v in d[k].items()}
        return d


@dataclass(frozen=True)
class ProgressEvent:
    """One generation event.

    ``phase``: a phase name (see the module docstring), ``"settings"`` or ``"summary"``;
    ``kind``: ``"start"``, ``"step"``, ``"end"``, ``"settings"`` or ``"summary"``;
    ``stage``: the stage index (0-based) for stage phases and their ``lora`` fusion, else None;
    ``step`` / ``total``: steps done and the stage's step count (``video_decode``: frames decoded
    and the frame count), None where meaningless; ``elapsed``: seconds since the phase started
    (``summary``: the whole generation); ``eta``: estimated seconds left in the phase (step events
    only); ``peak_memory``: the generation's peak so far in bytes (``mx.get_peak_memory()``);
    ``settings``: the :class:`GenerationSettings` (``settings`` and ``summary`` events);
    ``phase_times`` / ``phase_peaks``: seconds and peak bytes per phase, in phase order, repeated
    phases summed / maxed (``summary``)."""

    phase: str
    kind: str
    elapsed: float
    peak_memory: int
    step: int | None = None
    total: int | None = None
    eta: float | None = None
    stage: int | None = None
    settings: GenerationSettings | None = None
    phase_times: dict[str, float] | None = None
    phase_peaks: dict[str, int] | None = None

    def to_dict(self) -> dict:
        """JSON-ready: the None fields left out."""
        d = {"phase": self.phase, "kind": self.kind, "stage": self.stage, "step": self.step, "total": self.total,
             "elapsed": round(self.elapsed, 4), "eta": None if self.eta is None else round(self.eta, 4),
             "peak_memory": self.peak_memory,
             "settings": None if self.settings is None else self.settings.to_dict(), "phase_times": None
             if self.phase_times is None else {k: round(v, 4) for k, v in self.phase_times.items()},
             "phase_peaks": self.phase_peaks}
        return {k: v for k, v in d.items() if v is not None}


@dataclass
class Tracker:
    """Times phases, measures each one's peak memory (MLX's peak counter is reset at every phase
    start, the running maximum kept here) and sends :class:`ProgressEvent` to ``callback``."""

    callback: Callable[[ProgressEvent], None] | None = None
    phase_times: dict[str, float] = field(default_factory=dict)
    phase_peaks: dict[str, int] = field(default_factory=dict)
    _peak: int = 0  # the maximum before the last reset
    _phase: str | None = None
    _stage: int | None = None
    _start: float = 0.0
    _t0: float = field(default_factory=time.perf_counter)

    @property
    def peak_memory(self) -> int:
        """The peak since the tracker started, in bytes."""
        return max(self._peak, int(mx.get_peak_memory()))

    def _emit(self, phase: str, kind: str, elapsed: float, **kw) -> None:
        if self.callback is not None:
            self.callback(ProgressEvent(phase, kind, elapsed, self.peak_memory, **kw))

    def settings(self, settings: GenerationSettings) -> None:
        self._emit("settings", "settings", 0.0, settings=settings)

    def begin(self, phase: str, total: int | None = None, stage: int | None = None) -> None:
        """Start ``phase``, ending the running one."""
        self.end()
        self._peak = self.peak_memory
        mx.reset_peak_memory()
        self._phase, self._stage, self._start = phase, stage, time.perf_counter()
        self._emit(phase, "start", 0.0, total=total, stage=stage)

    def step(self, step: int, total: int | None) -> None:
        if self._phase is None:
            return
        elapsed = time.perf_counter() - self._start
        eta = elapsed / step * (total - step) if total and step > 0 else None
        self._emit(self._phase, "step", elapsed, step=step, total=total, eta=eta, stage=self._stage)

    def end(self) -> None:
        if self._phase is None:
            return
        elapsed = time.perf_counter() - self._start
        self.phase_times[self._phase] = self.phase_times.get(self._phase, 0.0) + elapsed
        self.phase_peaks[self._phase] = max(self.phase_peaks.get(self._phase, 0), int(mx.get_peak_memory()))
        self._emit(self._phase, "end", elapsed, stage=self._stage)
        self._phase = self._stage = None

    def phase(self, name: str, total: int | None = None, stage: int | None = None):
        """Context manager: ``begin`` then ``end``."""
        tracker = self

        class _Phase:
            def __enter__(self):
                tracker.begin(name, total, stage)
                return tracker

            def __exit__(self, *exc):
                tracker.end()
                return False

        return _Phase()

    def summary(self, settings: GenerationSettings | None) -> None:
        self.end()
        self._emit("summary", "summary", time.perf_counter() - self._t0, settings=settings,
                   phase_times=dict(self.phase_times), phase_peaks=dict(self.phase_peaks))

    @property
    def total_time(self) -> float:
        return time.perf_counter() - self._t0


def format_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


__all__ = ["GenerationSettings", "PHASE_LABELS", "ProgressEvent", "Tracker", "format_bytes"]
