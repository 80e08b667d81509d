"""Denoisers and denoising loops shared by every LTX pipeline (twins of ``ltx_pipelines/utils``
``denoisers.py``, ``samplers.py`` and ``helpers.py :: post_process_latent / modality_from_latent_state``).

One machinery for all pipelines: a stage is ``denoise_loop(model, video_state, audio_state, sigmas,
denoiser, stepper)`` with a ``SimpleDenoiser`` (no guidance) or a ``GuidedDenoiser`` (CFG, STG,
modality isolation) and an ``EulerDiffusionStep`` or ``Res2sDiffusionStep``. The model is an
``LTXModel``; the denoisers call its ``denoise`` (the reference's ``X0Model``). Either state may be
None for an absent stream. Latents stay in their own dtype (bf16 in bf16 runs, rounded there
after each step as the reference); timesteps, guidance and the blend run in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import mlx.core as mx
import numpy as np

from .guidance import (
    POSITIVE_ONLY_GUIDER,
    MultiModalGuider,
    MultiModalGuiderFactory,
    check_stg_blocks,
)
from .latent_tools import LatentState, timesteps_from_mask
from .models.transformer_args import (
    ArrayCache,
    Modality,
    Perturbation,
    PerturbationConfig,
    PerturbationType,
)
from .sampling import EulerAncestralDiffusionStep, EulerDiffusionStep, Res2sDiffusionStep, get_res2s_coefficients


@dataclass(frozen=True)
class DenoisedLatentResult:
    """A stream's denoiser output: the (guided) x0, plus the raw pass outputs a guided denoiser ran."""

    denoised: mx.array
    cond: mx.array | None = None
    uncond: mx.array | None = None
    ptb: mx.array | None = None
    mod: mx.array | None = None


Results = tuple[DenoisedLatentResult | None, DenoisedLatentResult | None]


def post_process_latent(denoised: mx.array, denoise_mask: mx.array, clean: mx.array) -> mx.array:
    """``denoised·mask + clean·(1−mask)``: conditioned tokens keep their clean value. In float32
    (float64 when res_2s hands float64 in), cast back to ``denoised``'s dtype."""
    calc = mx.float64 if denoised.dtype == mx.float64 else mx.float32
    m = denoise_mask.astype(calc)
    return (denoised.astype(calc) * m + clean.astype(calc) * (1 - m)).astype(denoised.dtype)


def modality_from_latent_state(state: LatentState, context: mx.array, sigma: float, enabled: bool = True) -> Modality:
    if state.frozen:
        sigma = 0.0
    batch = state.latent.shape[0]
    return Modality(latent=state.latent, sigma=mx.full((batch,), sigma, dtype=mx.float32),
                    timesteps=timesteps_from_mask(state.denoise_mask, sigma), positions=state.positions,
                    context=context, enabled=enabled, attention_mask=state.attention_mask,
                    keyframes_mask=state.keyframes_mask)


def _tile(x: mx.array | None, n: int, cache: ArrayCache | None = None) -> mx.array | None:
    """``x`` repeated n times along the batch; with ``cache``, once per source array (a stage's
    positions and masks do not change between steps, so the transformer's RoPE cache hits too)."""
    if x is None or n == 1:
        return x
    if cache is None:
        return mx.concatenate([x] * n, axis=0)
    return cache.get(("tile", n), (x,), lambda: mx.concatenate([x] * n, axis=0))


def _repeat_state(state: LatentState, n: int, cache: ArrayCache | None = None) -> LatentState:
    """``[s0, s1, …, s0, s1, …]`` along the batch, matching the concatenation of per-pass contexts."""
    if n == 1:
        return state
    return replace(state, latent=_tile(state.latent, n), denoise_mask=_tile(state.denoise_mask, n, cache),
                   positions=_tile(state.positions, n, cache), clean_latent=_tile(state.clean_latent, n, cache),
                   attention_mask=_tile(state.attention_mask, n, cache),
                   keyframes_mask=_tile(state.keyframes_mask, n, cache))


Pass = tuple[str, mx.array | None, mx.array | None, PerturbationConfig]


def run_passes(model, video_state: LatentState | None, audio_state: LatentState | None, sigma: float,
               passes: list[Pass], max_batch_size: int | None = 1, video_enabled: bool = True,
               audio_enabled: bool = True, cache: ArrayCache | None = None, parallel=None
               ) -> dict[str, tuple[mx.array | None, mx.array | None]]:
    """X0 outputs of each pass (name, video context, audio context, perturbations), as many whole
    passes per transformer call as fit in ``max_batch_size`` samples (at least one; None = all passes
    in one call): the reference's ``BatchSplitAdapter``, whose pipelines default to 1 sample per call.
    Each sample carries its own perturbation keep mask, so batched and one-by-one calls agree.
    ``cache``: where the batched calls' tiled positions and masks are kept between steps.
    ``parallel`` (a ``distributed.ParallelGroup``): this rank runs its share of the passes and every
    rank gets all outputs (``splits_passes``), or it runs every pass over its share of the video tokens."""
    sequence = None
    if parallel is not None and parallel.splits_passes(len(passes)):
        from .distributed import share_pass_outputs

        mine = [p for i, p in enumerate(passes) if parallel.mine(i)]
        out = run_passes(model, video_state, audio_state, sigma, mine, max_batch_size, video_enabled,
                         audio_enabled, cache)
        return share_pass_outputs(parallel, [p[0] for p in passes], out)
    if parallel is not None:
        sequence = parallel.sequence
    batch = (video_state or audio_state).latent.shape[0]
    per_call = len(passes) if max_batch_size is None else max(1, max_batch_size // batch)
    out: dict[str, tuple[mx.array | None, mx.array | None]] = {}
    for start in range(0, len(passes), per_call):
        chunk = passes[start:start + per_call]
        n = len(chunk)
        video = audio = None
        if video_state is not None:
            video = modality_from_latent_state(_repeat_state(video_state, n, cache),
                                               mx.concatenate([p[1] for p in chunk], axis=0), sigma, video_enabled)
        if audio_state is not None:
            audio = modality_from_latent_state(_repeat_state(audio_state, n, cache),
                                               mx.concatenate([p[2] for p in chunk], axis=0), sigma, audio_enabled)
        configs = [p[3] for p in chunk for _ in range(batch)]
        perturbations = None if all(not c.perturbations for c in configs) else configs
        den_v, den_a = model.denoise(video, audio, perturbations, sequence)
        for j, p in enumerate(chunk):
            out[p[0]] = (den_v[j * batch:(j + 1) * batch] if den_v is not None else None,
                         den_a[j * batch:(j + 1) * batch] if den_a is not None else None)
    return out


class SimpleDenoiser:
    """One conditioned transformer call, no guidance (distilled stages, stage 2)."""

    def __init__(self, v_context: mx.array | None, a_context: mx.array | None, parallel=None):
        self.v_context = v_context
        self.a_context = a_context
        self.parallel = parallel  # distributed.ParallelGroup: the one pass runs sequence-parallel

    def __call__(self, model, video_state: LatentState | None, audio_state: LatentState | None,
                 sigma: float, step_index: int) -> Results:
        passes: list[Pass] = [("cond", self.v_context, self.a_context, PerturbationConfig.empty())]
        den_v, den_a = run_passes(model, video_state, audio_state, sigma, passes, max_batch_size=None,
                                  parallel=self.parallel)["cond"]
        return (DenoisedLatentResult(den_v) if den_v is not None else None,
                DenoisedLatentResult(den_a) if den_a is not None else None)


class GuidedDenoiser:
    """CFG + STG + modality-isolation guidance with constant guiders (``GuidedDenoiser``).

    The passes (cond; uncond with the negative contexts; ptb skipping video/audio self-attention
    in the STG blocks; mod skipping A2V and V2A everywhere) run only when a guider needs them, in
    transformer calls of at most ``max_batch_size`` samples (1 = one pass per call as the reference
    pipelines; None = one batched call). A None guider means positive-only for that stream.
    """

    def __init__(self, v_context: mx.array | None, a_context: mx.array | None,
                 video_guider: MultiModalGuider | None = None, audio_guider: MultiModalGuider | None = None,
                 force_uncond_pass: bool = False, max_batch_size: int | None = 1, parallel=None):
        self.v_context = v_context
        self.parallel = parallel  # distributed.ParallelGroup: the passes are shared among its ranks
        self.a_context = a_context
        self.video_guider = video_guider
        self.audio_guider = audio_guider
        self.force_uncond_pass = force_uncond_pass
        self.max_batch_size = max_batch_size
        self._tiled = ArrayCache()  # this stage's tiled positions and masks
        self._last_denoised_video: mx.array | None = None
        self._last_denoised_audio: mx.array | None = None

    def guiders(self, sigma: float) -> tuple[MultiModalGuider, MultiModalGuider]:
        return self.video_guider or POSITIVE_ONLY_GUIDER, self.audio_guider or POSITIVE_ONLY_GUIDER

    def __call__(self, model, video_state: LatentState | None, audio_state: LatentState | None,
                 sigma: float, step_index: int) -> Results:
        vg, ag = self.guiders(sigma)
        result = self._guided_denoise(model, video_state, audio_state, sigma, vg, ag, step_index)
        self._last_denoised_video = result[0].denoised if result[0] is not None else None
        self._last_denoised_audio = result[1].denoised if result[1] is not None else None
        return result

    def _passes(self, vg: MultiModalGuider, ag: MultiModalGuider, has_video: bool, has_audio: bool) -> list[Pass]:
        vc, ac = self.v_context, self.a_context
        passes: list[Pass] = [("cond", vc, ac, PerturbationConfig.empty())]
        v_neg = vg.do_unconditional_generation() or (self.force_uncond_pass and has_video)
        a_neg = ag.do_unconditional_generation() or (self.force_uncond_pass and has_audio)
        if v_neg or a_neg:
            if (v_neg and vg.negative_context is None) or (a_neg and ag.negative_context is None):
                raise ValueError("Negative context is required for unconditioned denoising")
            passes.append(("uncond", vg.negative_context if vg.negative_context is not None else vc,
                           ag.negative_context if ag.negative_context is not None else ac,
                           PerturbationConfig.empty()))
        stg = []
        if vg.do_perturbed_generation():
            stg.append(Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, vg.params.stg_blocks))
        if ag.do_perturbed_generation():
            stg.append(Perturbation(PerturbationType.SKIP_AUDIO_SELF_ATTN, ag.params.stg_blocks))
        if stg:
            passes.append(("ptb", vc, ac, PerturbationConfig(tuple(stg))))
        if vg.do_isolated_modality_generation() or ag.do_isolated_modality_generation():
            passes.append(("mod", vc, ac, PerturbationConfig((Perturbation(PerturbationType.SKIP_A2V_CROSS_ATTN, None),
                                                              Perturbation(PerturbationType.SKIP_V2A_CROSS_ATTN, None)))))
        return passes

    def _guided_denoise(self, model, video_state, audio_state, sigma, vg, ag, step_index) -> Results:
        v_skip, a_skip = vg.should_skip_step(step_index), ag.should_skip_step(step_index)
        if v_skip and a_skip:
            return (_result_or_none(self._last_denoised_video), _result_or_none(self._last_denoised_audio))
        if video_state is not None and self.v_context is None:
            raise ValueError("v_context is required when video_state is provided")
        if audio_state is not None and self.a_context is None:
            raise ValueError("a_context is required when audio_state is provided")
        check_stg_blocks([g.params for g in (vg, ag) if g.do_perturbed_generation()], model.num_blocks)
        passes = self._passes(vg, ag, video_state is not None, audio_state is not None)
        r = run_passes(model, video_state, audio_state, sigma, passes, self.max_batch_size,
                       video_enabled=not v_skip, audio_enabled=not a_skip, cache=self._tiled, parallel=self.parallel)

        def combine(idx: int, guider: MultiModalGuider, skip: bool, last: mx.array | None):
            cond = r["cond"][idx]
            if cond is None:
                return None
            raw = {name: r[name][idx] if name in r else None for name in ("uncond", "ptb", "mod")}
            denoised = last if skip else guider.calculate(
                cond, *(raw[k] if raw[k] is not None else 0.0 for k in ("uncond", "ptb", "mod")))
            return _result_or_none(denoised, cond=cond, **raw)

        return (combine(0, vg, v_skip, self._last_denoised_video), combine(1, ag, a_skip, self._last_denoised_audio))


def _result_or_none(denoised: mx.array | None, **passes) -> DenoisedLatentResult | None:
    return DenoisedLatentResult(denoised, **passes) if denoised is not None else None


class FactoryGuidedDenoiser(GuidedDenoiser):
    """Guiders resolved per step from sigma (``FactoryGuidedDenoiser``); the audio stream falls back
    to the video factory when it has none."""

    def __init__(self, v_context: mx.array | None, a_context: mx.array | None,
                 video_guider_factory: MultiModalGuiderFactory | None = None,
                 audio_guider_factory: MultiModalGuiderFactory | None = None,
                 force_uncond_pass: bool = False, max_batch_size: int | None = 1, parallel=None):
        super().__init__(v_context, a_context, force_uncond_pass=force_uncond_pass, max_batch_size=max_batch_size,
                         parallel=parallel)
        self.video_guider_factory = video_guider_factory
        self.audio_guider_factory = audio_guider_factory

    def guiders(self, sigma: float) -> tuple[MultiModalGuider, MultiModalGuider]:
        vf = self.video_guider_factory
        af = self.audio_guider_factory or vf
        return (vf.build_from_sigma(sigma) if vf else POSITIVE_ONLY_GUIDER,
                af.build_from_sigma(sigma) if af else POSITIVE_ONLY_GUIDER)


# denoiser(model, video_state, audio_state, sigma, step_index) -> (video result, audio result)
Denoiser = Callable[..., Results]
OnStep = Callable[[int, "LatentState | None", "LatentState | None"], None]


def _denoised(result: DenoisedLatentResult | None) -> mx.array | None:
    return result.denoised if result is not None else None


def euler_denoising_loop(model, video_state: LatentState | None, audio_state: LatentState | None, sigmas,
                         denoiser: Denoiser, stepper: EulerDiffusionStep | None = None,
                         on_step: OnStep | None = None) -> tuple[LatentState | None, LatentState | None]:
    """Euler over ``sigmas`` (all but the last are steps): denoise, blend with the mask, step.
    ``on_step(i, video_state, audio_state)`` gets the states after step i (evaluated)."""
    stepper = stepper or EulerDiffusionStep()
    s = sigmas.tolist() if isinstance(sigmas, mx.array) else list(sigmas)
    states = [video_state, audio_state]
    for i in range(len(s) - 1):
        results = denoiser(model, states[0], states[1], s[i], i)
        for k in (0, 1):
            den = _denoised(results[k])
            if states[k] is not None and den is not None:
                den = post_process_latent(den, states[k].denoise_mask, states[k].clean_latent)
                states[k] = replace(states[k], latent=stepper.step(states[k].latent, den, s, i))
        mx.eval([st.latent for st in states if st is not None])
        if on_step is not None:
            on_step(i, states[0], states[1])
    return states[0], states[1]


def euler_ancestral_denoising_loop(model, video_state: LatentState | None, audio_state: LatentState | None, sigmas,
                                   denoiser: Denoiser, stepper: EulerAncestralDiffusionStep,
                                   on_step: OnStep | None = None) -> tuple[LatentState | None, LatentState | None]:
    """``euler_ancestral_denoising_loop``: per step the x0 blended with the mask (float32), then at
    a non-final step one noise draw per stream (video first) and the ancestral step, blended with the
    mask again; the final step (σ_next = 0) takes the blended x0. States keep their dtype (the
    reference's ``model_dtype``) between steps."""
    if stepper.eta > 0 and stepper.noise is None:
        raise ValueError("the ancestral loop needs the stepper's noise source")
    s = sigmas.tolist() if isinstance(sigmas, mx.array) else list(sigmas)
    states = [video_state, audio_state]
    for i in range(len(s) - 1):
        results = denoiser(model, states[0], states[1], s[i], i)
        terminal = s[i + 1] == 0
        for k, modality in ((0, "video"), (1, "audio")):
            den = _denoised(results[k])
            st = states[k]
            if st is None or den is None:
                continue
            den = post_process_latent(den.astype(mx.float32), st.denoise_mask, st.clean_latent)
            if terminal:
                states[k] = replace(st, latent=den.astype(st.latent.dtype))
                continue
            noise = stepper.noise(tuple(st.latent.shape), st.latent.dtype, modality) if stepper.eta > 0 else None
            x_next = stepper.step(st.latent.astype(mx.float32), den, s, i, noise)
            if noise is not None:
                x_next = post_process_latent(x_next, st.denoise_mask, st.clean_latent)
            states[k] = replace(st, latent=x_next.astype(st.latent.dtype))
        mx.eval([st.latent for st in states if st is not None])
        if on_step is not None:
            on_step(i, states[0], states[1])
        if terminal:
            break
    return states[0], states[1]


_HP = mx.float64  # res_2s update math, as the reference on CPU/CUDA; MLX has float64 on the CPU stream only


def _inject_sde_noise(state: LatentState, sample: mx.array, target: mx.array, sigma, sigma_next, noise: mx.array,
                      eta: float, legacy_mode: bool) -> mx.array:
    if legacy_mode:
        x_next = Res2sDiffusionStep.step(sample, target, sigma, sigma_next, noise, eta)
        return post_process_latent(x_next, state.denoise_mask, state.clean_latent)
    mask = state.denoise_mask.astype(_HP)
    return Res2sDiffusionStep.step(sample, target, mask * float(sigma), mask * float(sigma_next), noise, eta)


def res2s_denoising_loop(model, video_state: LatentState | None, audio_state: LatentState | None, sigmas,
                         denoiser: Denoiser, stepper: Res2sDiffusionStep | None = None,
                         on_step: OnStep | None = None) -> tuple[LatentState | None, LatentState | None]:
    """res_2s (``res2s_audio_video_denoising_loop``): per step a model call at σ, an exponential-RK
    midpoint at √(σ·σ_next) with substep SDE noise (and bong anchor refinement), a second call there,
    the RK combination and step SDE noise. A schedule ending in 0 ends at 0.0011 instead, followed
    by one last call whose blended x0 is the result (after the last ``on_step``). The state keeps its
    dtype between steps; the update math runs in float64 on the CPU stream."""
    stepper = stepper or Res2sDiffusionStep()
    states = [video_state, audio_state]
    present = [k for k in (0, 1) if states[k] is not None]
    if not present:
        raise ValueError("At least one of video_state or audio_state must be provided")
    dtypes = [st.latent.dtype if st is not None else None for st in states]
    s32 = [np.float32(x) for x in (sigmas.tolist() if isinstance(sigmas, mx.array) else sigmas)]
    n_full = len(s32) - 1
    if s32[-1] == 0:
        s32 = s32[:-1] + [np.float32(0.0011), np.float32(0.0)]
    s64 = [np.float64(x) for x in s32]
    noise = stepper.noise_source()

    def blended(results, k, ref_states):
        den = _denoised(results[k])
        if den is None:
            raise ValueError("res_2s needs a denoised output for every present stream")
        return post_process_latent(den, ref_states[k].denoise_mask, ref_states[k].clean_latent)

    for i in range(n_full):
        sigma, sigma_next = s64[i], s64[i + 1]
        h = float(-np.log(sigma_next / sigma))
        a21, b1, b2 = get_res2s_coefficients(h)
        sub_sigma = np.sqrt(sigma * sigma_next)
        results = denoiser(model, states[0], states[1], float(s32[i]), i)
        with mx.stream(mx.cpu):
            anchor = {k: states[k].latent.astype(_HP) for k in present}
            d1 = {k: blended(results, k, states).astype(_HP) for k in present}
            eps1 = {k: d1[k] - anchor[k] for k in present}
            x_mid = {k: anchor[k] + h * a21 * eps1[k] for k in present}
            for k in present:
                x_mid[k] = _inject_sde_noise(states[k], anchor[k], x_mid[k], sigma, sub_sigma,
                                             noise(states[k].latent.shape, "substep"), stepper.substep_eta,
                                             stepper.legacy_mode)
            if stepper.bongmath and h < 0.5 and sigma > 0.03:
                # fixed-point refinement of the anchor so that x_mid is consistent with eps_1
                for _ in range(stepper.bongmath_max_iter):
                    for k in present:
                        anchor[k] = x_mid[k] - h * a21 * eps1[k]
                        eps1[k] = d1[k] - anchor[k]
            mid = [replace(states[k], latent=x_mid[k].astype(dtypes[k])) if k in present else None for k in (0, 1)]
            mx.eval([m.latent for m in mid if m is not None])
        # the midpoint call is made with step index 0, as the reference (a skip_step guider never skips it)
        results2 = denoiser(model, mid[0], mid[1], float(sub_sigma), 0)
        with mx.stream(mx.cpu):
            x_next = {}
            for k in present:
                eps2 = blended(results2, k, states).astype(_HP) - anchor[k]
                x_next[k] = anchor[k] + h * (b1 * eps1[k] + b2 * eps2)
            for k in present:
                if stepper.legacy_mode:
                    lo, hi = s32[i], s32[i + 1]  # the float32 schedule, as the reference's legacy path
                else:
                    lo, hi = sigma, sigma_next
                x_next[k] = _inject_sde_noise(states[k], anchor[k], x_next[k], lo, hi,
                                              noise(states[k].latent.shape, "step"), stepper.eta, stepper.legacy_mode)
                states[k] = replace(states[k], latent=x_next[k].astype(dtypes[k]))
            mx.eval([states[k].latent for k in present])
        if on_step is not None:
            on_step(i, states[0], states[1])
    if s32[-1] == 0:
        results = denoiser(model, states[0], states[1], float(s32[n_full]), n_full)
        for k in present:
            states[k] = replace(states[k], latent=blended(results, k, states).astype(dtypes[k]))
        mx.eval([states[k].latent for k in present])
    return states[0], states[1]


def denoise_loop(model, video_state: LatentState | None, audio_state: LatentState | None, sigmas,
                 denoiser: Denoiser,
                 stepper: EulerDiffusionStep | EulerAncestralDiffusionStep | Res2sDiffusionStep | None = None,
                 on_step: OnStep | None = None) -> tuple[LatentState | None, LatentState | None]:
    """The one loop entry of every pipeline stage: the step type picks the loop (Euler by default).
    The model's cached RoPE tables and masks are this stage's, and so are the sequence-parallel shares of
    its positions and masks: dropped when it ends."""
    if stepper is None or isinstance(stepper, EulerDiffusionStep):
        loop = euler_denoising_loop
    elif isinstance(stepper, EulerAncestralDiffusionStep):
        loop = euler_ancestral_denoising_loop
    elif isinstance(stepper, Res2sDiffusionStep):
        loop = res2s_denoising_loop
    else:
        raise ValueError(f"unsupported stepper {type(stepper).__name__}; use EulerDiffusionStep, "
                         f"EulerAncestralDiffusionStep or Res2sDiffusionStep")
    try:
        return loop(model, video_state, audio_state, sigmas, denoiser, stepper, on_step)
    finally:
        parallel = getattr(denoiser, "parallel", None)
        for cache in (getattr(model, "args_cache", None), parallel and parallel.sequence.cache):
            if cache is not None:
                cache.clear()
