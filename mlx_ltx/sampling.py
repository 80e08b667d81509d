"""Sigma schedules and diffusion steps (twins of ``ltx_core/components/schedulers.py``,
``ltx_core/components/diffusion_steps.py``, ``ltx_pipelines/utils/constants.py`` and
``ltx_pipelines/utils/res2s.py``).

Schedules are float32 arrays like the reference's tensors; the steps read them as Python floats
on the host. A step object also names the loop that drives it (``denoising.denoise_loop``
dispatches on its type), so a pipeline stage is plain data: sigmas, guidance, step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

DISTILLED_SIGMA_VALUES = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0)
STAGE_2_DISTILLED_SIGMA_VALUES = (0.909375, 0.725, 0.421875, 0.0)

BASE_SHIFT_ANCHOR = 1024
MAX_SHIFT_ANCHOR = 4096


def distilled_sigmas() -> mx.array:
    """``DISTILLED_SIGMAS``: the 8-step distilled stage-1 schedule."""
    return mx.array(DISTILLED_SIGMA_VALUES, dtype=mx.float32)


def stage2_distilled_sigmas() -> mx.array:
    """``STAGE_2_DISTILLED_SIGMAS``: the 3-step refinement schedule of every two-stage pipeline."""
    return mx.array(STAGE_2_DISTILLED_SIGMA_VALUES, dtype=mx.float32)


class LTX2Scheduler:
    """Token-count-shifted schedule stretched to a terminal sigma (``LTX2Scheduler``)."""

    def execute(
        self,
        steps: int,
        latent_shape: tuple[int, ...] | None = None,
        max_shift: float = 2.05,
        base_shift: float = 0.95,
        stretch: bool = True,
        terminal: float = 0.1,
        default_number_of_tokens: int = MAX_SHIFT_ANCHOR,
    ) -> mx.array:
        """``steps + 1`` float32 sigmas from 1 to 0. ``latent_shape`` [B,C,F,H,W] sets the token count
        F·H·W; the dev pipelines pass none (4096 tokens, shift 2.05), only HQ passes its stage-1 latent."""
        if steps < 1 or (stretch and steps < 2):
            # one stretched step divides 0 by 0 (the reference returns a NaN sigma)
            raise ValueError(f"LTX2Scheduler needs steps >= {2 if stretch else 1}, got {steps}")
        tokens = math.prod(latent_shape[2:]) if latent_shape is not None else default_number_of_tokens
        # float32 rounded op by op as torch's CPU kernels round it, so the sigmas are bit-identical:
        # a sigma off by one float32 ulp moves the timestep embedding (σ·1000) enough to shift a
        # 3-step guided run by ~1e-4. The first sigma is 0.99999976 at 3 steps, not 1.
        f32 = np.float32
        sigmas = _torch_linspace(1.0, 0.0, steps + 1)
        mm = (max_shift - base_shift) / (MAX_SHIFT_ANCHOR - BASE_SHIFT_ANCHOR)
        sigma_shift = tokens * mm + (base_shift - mm * BASE_SHIFT_ANCHOR)
        e = f32(math.exp(sigma_shift))
        nonzero = sigmas != 0
        with np.errstate(divide="ignore"):
            # scalar / tensor is reciprocal(tensor) · scalar in torch, not a division
            shifted = (f32(1.0) / (e + (f32(1.0) / sigmas - f32(1.0)))).astype(f32) * e
        sigmas = np.where(nonzero, shifted, f32(0.0)).astype(f32)
        if stretch:
            one_minus_z = f32(1.0) - sigmas[nonzero]
            scale_factor = one_minus_z[-1] / f32(1.0 - terminal)
            sigmas[nonzero] = f32(1.0) - one_minus_z / scale_factor
        return mx.array(sigmas.astype(f32))


def _torch_linspace(start: float, end: float, n: int) -> np.ndarray:
    """float32 ``torch.linspace``: the first half counts up from ``start``, the second down from
    ``end``, each value one fused multiply-add (exact product, one rounding)."""
    if n == 1:
        return np.array([start], np.float32)
    step = np.float64(np.float32((end - start) / (n - 1)))
    i = np.arange(n, dtype=np.float64)
    up = np.float64(np.float32(start)) + step * i
    down = np.float64(np.float32(end)) - step * (n - 1 - i)
    return np.where(i < n // 2, up, down).astype(np.float32)


def _host_sigmas(sigmas: mx.array | list[float] | tuple[float, ...]) -> list[np.float32]:
    return [np.float32(s) for s in (sigmas.tolist() if isinstance(sigmas, mx.array) else sigmas)]


@dataclass(frozen=True)
class EulerDiffusionStep:
    """First-order Euler step in x0 space, driven by ``denoising.euler_denoising_loop``."""

    def step(self, sample: mx.array, denoised_sample: mx.array, sigmas, step_index: int) -> mx.array:
        s = _host_sigmas(sigmas)
        sigma, dt = s[step_index], s[step_index + 1] - s[step_index]
        if sigma == 0:
            raise ValueError("Sigma can't be 0.0")
        # to_velocity: computed in float32, then rounded to the sample dtype (bf16 in bf16 runs)
        velocity = ((sample.astype(mx.float32) - denoised_sample.astype(mx.float32)) / float(sigma)).astype(sample.dtype)
        return (sample.astype(mx.float32) + velocity.astype(mx.float32) * float(dt)).astype(sample.dtype)


# DistilledPipeline: the ancestral loop's generator is seeded seed + 10000, so its first draw is not
# the initial latent noise again (both would be randn of one shape from a fresh generator)
ANCESTRAL_NOISE_SEED_OFFSET = 10000
# (shape, dtype, modality "video" | "audio") -> noise
AncestralNoiseFn = Callable[[tuple[int, ...], mx.Dtype, str], mx.array]


@dataclass(frozen=True)
class EulerAncestralDiffusionStep:
    """Ancestral (SDE) Euler for rectified flow (``EulerAncestralDiffusionStep``), driven by
    ``denoising.euler_ancestral_denoising_loop``: a deterministic step to σ_down ≤ σ_next, then
    re-noised up to σ_next with the signal rescaled by α_next/α_down (α = 1 − σ), so the step stays
    variance preserving; eta 0 is plain Euler, eta 1 (the distilled stage 1 from LTX-2.5) fully
    ancestral. ``noise`` gives the loop's draws, video before audio at every non-final step."""

    eta: float = 1.0
    s_noise: float = 1.0
    noise: AncestralNoiseFn | None = None

    def step(self, sample: mx.array, denoised_sample: mx.array, sigmas, step_index: int,
             noise: mx.array | None = None) -> mx.array:
        s = _host_sigmas(sigmas)
        sigma, sigma_next = s[step_index], s[step_index + 1]
        if sigma_next == 0:
            return denoised_sample.astype(sample.dtype)
        if self.eta > 0 and noise is None:
            raise ValueError("EulerAncestralDiffusionStep needs a noise tensor when eta > 0")
        one, f32 = np.float32(1.0), np.float32
        # the reference's coefficient arithmetic is on 0-d float32 tensors: the same on the host
        sigma_down = sigma_next * (one + (sigma_next / sigma - one) * f32(self.eta))
        ratio = sigma_down / sigma
        x = sample.astype(mx.float32)
        x_next = float(ratio) * x + float(one - ratio) * denoised_sample.astype(mx.float32)
        if self.eta > 0:
            alpha_next, alpha_down = one - sigma_next, one - sigma_down
            renoise = np.sqrt(max(sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2, f32(0.0)), dtype=f32)
            x_next = float(alpha_next / alpha_down) * x_next + noise.astype(mx.float32) * self.s_noise * float(renoise)
        return x_next.astype(sample.dtype)


def phi(j: int, neg_h: float) -> float:
    """φⱼ(z) = (eᶻ − Σ_{k<j} zᵏ/k!) / zʲ, with the Taylor limit 1/j! at z ≈ 0."""
    if abs(neg_h) < 1e-10:
        return 1.0 / math.factorial(j)
    remainder = sum(neg_h**k / math.factorial(k) for k in range(j))
    return (math.exp(neg_h) - remainder) / (neg_h**j)


def get_res2s_coefficients(h: float, c2: float = 0.5) -> tuple[float, float, float]:
    """(a21, b1, b2) of the 2-stage exponential Runge-Kutta step of size ``h = ln(σ/σ_next)``."""
    a21 = c2 * phi(1, -h * c2)
    b2 = phi(2, -h) / c2
    b1 = phi(1, -h) - b2
    return a21, b1, b2


def get_sde_coeff(sigma_next, eta: float, sigma_max=1.0):
    """(alpha_ratio, sigma_down, sigma_up) for ``sigma_up = eta·sigma_next`` (the branch res_2s uses).
    Scalars stay in their numpy type so the float32 full-schedule sigmas of legacy mode round as the
    reference's float32 tensors do, and the float64 substep sigmas keep float64."""
    t = type(sigma_next)
    sigma_up = min(t(sigma_next * t(eta)), t(sigma_next * t(0.9999)))
    sigma_signal = t(sigma_max) - sigma_next
    sigma_residual = t(math.sqrt(max(sigma_next**2 - sigma_up**2, t(0.0))))
    alpha_ratio = sigma_signal + sigma_residual
    sigma_down = sigma_residual / alpha_ratio if alpha_ratio != 0 else sigma_next
    return alpha_ratio, sigma_down, sigma_up


NoiseFn = Callable[[tuple[int, ...], str], mx.array]


@dataclass(frozen=True)
class Res2sDiffusionStep:
    """res_2s second-order sampler with SDE noise (``Res2sDiffusionStep`` + the loop's options).

    ``eta`` is the step-level noise strength (the substep always uses 0.5, as the reference);
    ``bongmath`` runs ``bongmath_max_iter`` anchor refinements when h < 0.5 and σ > 0.03;
    ``legacy_mode`` (the HQ default) injects noise with the scalar schedule sigmas and blends with
    the mask afterwards, otherwise per-token sigmas (σ·mask) are used. ``noise_seed`` seeds the
    step noise and ``noise_seed + 10000`` the substep noise; HQ passes none, so the reference's
    -1 (2⁶⁴−1) is the default. ``new_noise`` replaces the draws (``(shape, "step"|"substep") ->``
    float64 array); the loop consumes them in the reference's order.
    """

    eta: float = 0.5
    substep_eta: float = 0.5
    bongmath: bool = True
    bongmath_max_iter: int = 100
    legacy_mode: bool = True
    noise_seed: int = -1
    new_noise: NoiseFn | None = None

    def noise_source(self) -> NoiseFn:
        """A noise function with its own two generators, restarted per loop call as the reference."""
        if self.new_noise is not None:
            return self.new_noise
        keys = {"step": mx.random.key(self.noise_seed % 2**64),
                "substep": mx.random.key((self.noise_seed + 10000) % 2**64)}

        def draw(shape: tuple[int, ...], kind: str) -> mx.array:
            keys[kind], sub = mx.random.split(keys[kind])
            return get_new_noise(shape, sub)

        return draw

    @staticmethod
    def step(sample: mx.array, denoised_sample: mx.array, sigma, sigma_next, noise: mx.array, eta: float):
        """Variance-preserving re-noise of the target ``denoised_sample`` reached from ``sample``;
        ``sigma``/``sigma_next`` are scalars or per-token arrays broadcastable to the sample."""
        if isinstance(sigma_next, mx.array):
            return _sde_step_per_token(sample, denoised_sample, sigma, sigma_next, noise, eta)
        alpha_ratio, sigma_down, sigma_up = get_sde_coeff(sigma_next, eta)
        if sigma_up == 0 or sigma_next == 0:
            return denoised_sample
        eps_next = (sample - denoised_sample) / float(sigma - sigma_next)
        denoised_next = sample - float(sigma) * eps_next
        return float(alpha_ratio) * (denoised_next + float(sigma_down) * eps_next) + float(sigma_up) * noise


def _sde_step_per_token(sample, denoised_sample, sigma, sigma_next, noise, eta):
    sigma_up = mx.minimum(sigma_next * eta, sigma_next * 0.9999)
    # the reference returns the target unchanged as soon as ANY token has sigma_next == 0 (e.g. a
    # conditioned token with mask 0), so non-legacy mode adds no noise to such a state at all
    if bool(mx.any(sigma_up == 0).item()) or bool(mx.any(sigma_next == 0).item()):
        return denoised_sample
    sigma_residual = mx.sqrt(mx.maximum(sigma_next**2 - sigma_up**2, 0.0))
    alpha_ratio = (1.0 - sigma_next) + sigma_residual
    sigma_down = sigma_residual / alpha_ratio
    eps_next = (sample - denoised_sample) / (sigma - sigma_next)
    denoised_next = sample - sigma * eps_next
    return alpha_ratio * (denoised_next + sigma_down * eps_next) + sigma_up * noise


def get_new_noise(shape: tuple[int, ...], key: mx.array) -> mx.array:
    """res_2s SDE noise (``_get_new_noise``): Gaussian, standardised over the whole tensor, then per
    sample over the last two dims (T, C), unbiased std, float64 (on the CPU stream: no float64 on GPUs)."""
    with mx.stream(mx.cpu):
        n = mx.random.normal(shape, key=key).astype(mx.float64)
        n = (n - mx.mean(n)) / mx.sqrt(mx.var(n, ddof=1))
        axes = (-2, -1)
        return (n - mx.mean(n, axis=axes, keepdims=True)) / mx.sqrt(mx.var(n, axis=axes, keepdims=True, ddof=1))
