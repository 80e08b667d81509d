"""The memory policy (``Pipeline(low_memory=None)``, the default): models are kept between
``generate`` calls when their estimated bytes fit half the memory budget, released otherwise;
``memory_budget=`` replaces the device's memory so both sides run on the tiny fixture."""

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from test_generate import guider_kwargs, setup, tiny_size  # noqa: F401 (setup: the fixture)
from test_preflight import ltx22b  # noqa: F401 (the fixture: a 22B-shaped header-only checkpoint)

from mlx_ltx.models.transformer import LTXModel
from mlx_ltx.memory_policy import _component_bytes
from mlx_ltx.pipelines import Pipeline
from mlx_ltx.validation import device_memory_bytes

HUGE = 2**50  # bytes: every tiny model fits


def _pipe(setup, **kw) -> Pipeline:
    return Pipeline.from_pretrained(setup["model"], "dev", gemma=setup["gemma"], dtype=mx.float32, **kw)


def _load_counts(p: Pipeline, calls: int = 2) -> list[dict[str, int]]:
    """Per generate call: how many times each load phase started."""
    frames, h, w = tiny_size(False)
    out = []
    for _ in range(calls):
        seen = []
        p.generate("a fox", height=h, width=w, num_frames=frames, fps=24, seed=3, num_inference_steps=2,
                   audio=False, events=seen.append, **guider_kwargs(p))
        out.append({name: sum(e.phase == name and e.kind == "start" for e in seen)
                    for name in ("text_encoder", "transformer")})
    return out


def test_default_keeps_models_when_they_fit(setup):
    """Default settings, a budget that holds everything: the second call reloads nothing."""
    p = _pipe(setup, memory_budget=HUGE)
    assert p.keeps_models and not p.low_memory
    assert _load_counts(p) == [{"text_encoder": 1, "transformer": 1}, {"text_encoder": 0, "transformer": 0}]


def test_default_releases_models_when_the_budget_is_small(setup):
    """Default settings, a budget below twice the models: every call reloads Gemma and the
    transformer (Gemma released before the transformer loads, as with low_memory=True)."""
    need = _pipe(setup, memory_budget=HUGE).estimated_model_bytes()
    p = _pipe(setup, memory_budget=2 * need - 1)
    assert not p.keeps_models and p.low_memory
    assert _load_counts(p) == [{"text_encoder": 1, "transformer": 1}] * 2
    assert p._text_encoder is None and p._transformer is None


def test_rule_boundary_and_overrides(setup):
    need = _pipe(setup, memory_budget=HUGE).estimated_model_bytes()
    assert need > 0
    assert _pipe(setup, memory_budget=2 * need).keeps_models
    assert not _pipe(setup, memory_budget=2 * need - 1).keeps_models
    # explicit choices keep their meaning whatever the budget
    assert _pipe(setup, low_memory=False, memory_budget=1).keeps_models
    assert not _pipe(setup, low_memory=True, memory_budget=HUGE).keeps_models
    # no budget given: the device's memory
    assert _pipe(setup).memory_budget == device_memory_bytes()
    for bad in (0, -5, 1.5, "8GB"):
        with pytest.raises(ValueError, match="memory_budget"):
            _pipe(setup, memory_budget=bad)


def test_estimate_counts_the_transformer_at_the_pipeline_dtype(setup):
    """The header-based transformer bytes equal the loaded model's, in float32 and bfloat16."""
    p = _pipe(setup, memory_budget=HUGE)
    for dtype in (mx.float32, mx.bfloat16):
        model = LTXModel.from_checkpoint(p.checkpoint, dtype=dtype)
        assert _component_bytes(p.checkpoint, "transformer", dtype) == \
            sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    # the two-stage pipeline also keeps the upsampler and the distilled LoRA (with the originals)
    two = Pipeline.from_pretrained(setup["converted"], "dev-two-stage", dtype=mx.float32, memory_budget=HUGE)
    assert two.estimated_model_bytes() > p.estimated_model_bytes()


def test_unknown_gemma_size_releases(setup):
    """A Gemma repo id that is not in the local cache: its size is unknown without a download,
    so the default releases the models."""
    p = Pipeline.from_pretrained(setup["model"], "dev", gemma="no-such-org/no-such-gemma", dtype=mx.float32,
                                 memory_budget=HUGE)
    assert p.estimated_model_bytes() is None and not p.keeps_models


# ---------------------------------------------------------------- per-request plan (preflight)
# On the 22B-shaped header-only checkpoint of test_preflight: at a real request size the denoising
# holds the peak, so the memory mode and the guidance batch decide whether it fits.
PLAN_SIZE = (121, 704, 1280)  # frames, height, width


def _pipe22b(ltx22b, **kw) -> Pipeline:
    from mlx_ltx.pipeline_stages import PIPELINES

    return Pipeline(PIPELINES["dev"], ltx22b, None, dtype=mx.bfloat16, low_memory=True, **kw)


def _prediction(p: Pipeline, memory: str, passes: int):
    from mlx_ltx.preflight import predict_peak

    frames, h, w = PLAN_SIZE
    return predict_peak(p.checkpoint, p.spec.name, h, w, frames, fps=24, dtype=p.dtype, memory=memory,
                        passes_per_call=passes, audio=True, keep_models=p.keeps_models, gemma=p.gemma,
                        decode_budget=p.decode_budget())


def _plan(p: Pipeline, **kw):
    from mlx_ltx.memory_policy import plan_memory

    frames, h, w = PLAN_SIZE
    return plan_memory(p, h, w, frames, 24.0, True, **kw)


def test_plan_prefers_eager_and_batched_guidance_when_they_fit(ltx22b, setup):
    p = _pipe22b(ltx22b, memory_budget=HUGE)
    plan = _plan(p)
    assert (plan.memory, plan.passes_per_call) == ("eager", 4)
    assert plan.prediction.peak == _prediction(p, "eager", 4).peak
    distilled = Pipeline.from_pretrained(setup["model"], "distilled", gemma=setup["gemma"], dtype=mx.float32,
                                         upsampler=setup["upsampler"], memory_budget=HUGE, low_memory=True)
    assert _plan(distilled).passes_per_call == 1  # nothing to batch without guidance


def test_plan_falls_back_to_one_pass_then_streaming_then_refuses(ltx22b):
    from mlx_ltx.preflight import PreflightError

    p = _pipe22b(ltx22b)
    assert _prediction(p, "eager", 4).phase.startswith("stage")
    eager4, eager1 = _prediction(p, "eager", 4).peak, _prediction(p, "eager", 1).peak
    stream4, stream1 = _prediction(p, "stream", 4).peak, _prediction(p, "stream", 1).peak
    assert eager1 < eager4 and stream1 < eager1 and stream1 < stream4
    p.memory_budget = eager4 - 1
    assert (_plan(p).memory, _plan(p).passes_per_call) == ("eager", 1)
    p.memory_budget = min(eager1, stream4) - 1
    assert _plan(p).memory == "stream"
    p.memory_budget = stream1 - 1
    with pytest.raises(PreflightError, match="exceeds"):
        _plan(p)
    # a fixed mode is kept; the preflight can be turned off
    p.memory_budget = HUGE
    assert _plan(p, memory="stream").memory == "stream"
    p.memory_budget = 1
    off = _plan(p, preflight=False)
    assert (off.memory, off.passes_per_call, off.prediction) == ("eager", 1, None)
    with pytest.raises(ValueError, match="memory"):
        _plan(p, memory="fast")


def test_generate_reports_plan_and_phase_peaks(setup):
    p = _pipe(setup, memory_budget=HUGE, low_memory=True, memory="stream")
    frames, h, w = tiny_size(False)
    seen = []
    result = p.generate("a fox", height=h, width=w, num_frames=frames, fps=24, seed=3, num_inference_steps=2,
                        audio=False, events=seen.append, **guider_kwargs(p))
    st = result.settings
    assert (st.memory, st.passes_per_call) == ("stream", 4) and st.predicted_peak > 0
    assert st.predicted_peak_phase in result.phase_peaks or st.predicted_peak_phase.startswith(("stage", "text"))
    assert set(result.phase_peaks) == set(result.phase_times)
    assert result.peak_memory == max(result.phase_peaks.values()) > 0
    assert seen[-1].phase_peaks == result.phase_peaks
    with pytest.raises(ValueError, match="memory"):
        _pipe(setup, memory="fast")


class _Ranks:
    """A stand-in for ``distributed.ParallelGroup`` (what the plan reads: mode, size, resolved)."""

    def __init__(self, mode: str, size: int = 2):
        self.mode, self.size = mode, size

    def resolved(self, mode: str):
        return _Ranks(mode, self.size)


def _parallel_prediction(p: Pipeline, parallel: str, ranks: int = 2, memory: str = "eager", passes: int = 4):
    from mlx_ltx.preflight import predict_peak

    frames, h, w = PLAN_SIZE
    return predict_peak(p.checkpoint, p.spec.name, h, w, frames, fps=24, dtype=p.dtype, memory=memory,
                        passes_per_call=passes, audio=True, keep_models=p.keeps_models, gemma=p.gemma,
                        decode_budget=p.decode_budget(), ranks=ranks, parallel=parallel)


def test_parallel_predictions_per_rank(ltx22b):
    """One rank's transformer activations: guidance-parallel on 2 ranks runs 2 of the 4 passes per call,
    sequence-parallel about half the tokens (plus the gathered keys and values) for every pass."""
    p = _pipe22b(ltx22b)
    one = _prediction(p, "eager", 4).phases["stage1"]
    guidance = _parallel_prediction(p, "guidance").phases["stage1"]
    sequence = _parallel_prediction(p, "sequence").phases["stage1"]
    assert one.weights == guidance.weights == sequence.weights  # every rank holds the weights
    assert guidance.activations == _prediction(p, "eager", 2).phases["stage1"].activations
    assert 0.45 < sequence.activations / one.activations < 0.7, sequence.activations / one.activations
    four = _parallel_prediction(p, "sequence", ranks=4).phases["stage1"]
    assert four.activations < sequence.activations


def test_plan_parallel_auto_takes_sequence_only_when_it_alone_fits(ltx22b):
    """Several ranks, mode "auto": guidance-parallel while some guidance candidate fits, sequence-parallel
    when only it does; a fixed mode is kept; a refusal names --parallel sequence when that fits."""
    from mlx_ltx.preflight import PreflightError

    p = _pipe22b(ltx22b)
    p._parallel = _Ranks("auto")
    p.memory_budget = HUGE
    assert (_plan(p).parallel, _plan(p).passes_per_call) == ("guidance", 4)
    p.memory_budget = 12 * 2**30  # (the decode's tiles are planned for half of it)
    assert _parallel_prediction(p, "guidance", memory="stream", passes=1).peak > p.memory_budget
    plan = _plan(p)
    assert plan.parallel == "sequence" and plan.prediction.peak <= p.memory_budget
    assert plan.prediction.peak == _parallel_prediction(p, "sequence", memory=plan.memory,
                                                        passes=plan.passes_per_call).peak
    assert p.request_parallel(plan).mode == "sequence"
    p._parallel = _Ranks("guidance")
    with pytest.raises(PreflightError, match="--parallel sequence fits"):
        _plan(p)
    p._parallel = _Ranks("sequence")
    assert _plan(p).parallel == "sequence"
    off = _plan(p, preflight=False)
    assert off.parallel == "sequence"
    p._parallel = _Ranks("auto")
    assert p.request_parallel(_plan(p, preflight=False)).mode == "guidance"
