"""Samplers and likelihoods of diffusion models, written once in scaled coordinates.

Every process of :mod:`genmodels.diffusion.processes` is, in x̄ = x/α, the additive chain
x̄ = x₀ + σ̃ ε of the tutorial (§5). Everything a sampler needs is then the **denoiser**

    D(x̄, σ̃) = E[x₀ | x̄]   (Tweedie: D = x̄ + σ̃² ∇ log p_σ̃(x̄), tutorial §5 [C]),

whether it comes from a trained network (converted from its ε, x₀, v or score output) or
is exact (:class:`MixtureDenoiser`, for a Gaussian mixture). ``ε̂ = (x̄ − D)/σ̃`` is the
predicted noise and ``∇ log p = (D − x̄)/σ̃²`` the score. With σ̃ as the clock
(Karras et al. 2022, "EDM", eqs. 1–6):

- probability-flow ODE   dx̄/dσ̃ = (x̄ − D(x̄, σ̃))/σ̃ — the tutorial's dx = −(δ²/2)∇log p dt
  with δ²t = σ̃²;
- reverse SDE            dx̄ = −2σ̃ ∇log p dσ̃ + √(2σ̃) dw̄ — the tutorial's
  x_{t−Δt} = x_t + δ²Δt ∇log p + δ√Δt z, with δ²Δt = σ̃_t² − σ̃_s².

The samplers (``steps`` = number of noise levels walked, the last step always lands on σ̃ = 0):

========== ==========================================================================  ======
sampler    update from σ̃_i = σ to σ̃_{i+1} = s                                          NFE
========== ==========================================================================  ======
euler      x̄ ← x̄ + (s − σ)(x̄ − D)/σ  (ODE, Euler; identical to DDIM with η = 0)         N
heun       Euler, then the trapezoid correction at s > 0 (EDM Algorithm 1)              2N − 1
ddim       x̄ ← D + √(s² − c²) ε̂ + c z,  c = η s √(1 − s²/σ²)  (Song et al. 2021a, eq. 12) N
ancestral  ddim with η = 1: a draw from q(x̄_s | x̄_σ, x₀ = D), DDPM's posterior        N
           (tutorial §5 [C]: the Brownian bridge; Ho et al. 2020, eqs. 6–7)
sde        x̄ ← x̄ + (σ² − s²)∇log p + √(σ² − s²) z  (reverse SDE, Euler–Maruyama in σ̃²)  N
pc         sde predictor, then Langevin corrector at s with step 2(r‖z‖/‖∇log p‖)²       2N − 1
           (norms averaged over the batch), r = ``snr`` (Song et al. 2021b, Algorithms 4–5)
dpmpp2m    x̄ ← (s/σ) x̄ + (1 − s/σ) D′,  D′ = (1 + 1/2r) D_i − (1/2r) D_{i−1},             N
           r = h_{i−1}/h_i, h = log(σ/s); first and last step first order
           (Lu et al. 2022, "DPM-Solver++", Algorithm 2, written in x̄)
ode        adaptive Dormand–Prince (torchdiffeq) on dx̄/d log σ̃ = x̄ − D, then D          adaptive
ncsn       annealed Langevin over the levels (Song & Ermon 2019, Algorithm 1), then D   N·T + 1
========== ==========================================================================  ======

Likelihoods: :func:`ode_log_prob` (the instantaneous change of variables along the
probability-flow ODE, exact trace or Hutchinson; :mod:`genmodels.ode`) and
:func:`ddpm_elbo` (the variational bound of the discrete chain, tutorial §5 [C]).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from genmodels.diffusion.processes import DDPM, Process
from genmodels.ode import ODELikelihood, ode_log_likelihood, solve_ode
from genmodels.samplers.annealed import annealed_langevin
from genmodels.types import LogDensity

#: D(x̄ (n, d), σ̃ (a 0-dim or (n,) float64 tensor)) → x̂₀ (n, d)
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Sampler = Literal["euler", "heun", "ddim", "ancestral", "sde", "pc", "dpmpp2m", "ode", "ncsn"]
SAMPLERS: tuple[str, ...] = ("euler", "heun", "ddim", "ancestral", "sde", "pc", "dpmpp2m", "ode", "ncsn")
Spacing = Literal["edm", "uniform", "trailing", "logsnr"]
SPACINGS: tuple[str, ...] = ("edm", "uniform", "trailing", "logsnr")


def sigma_grid(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    spacing: Spacing = "edm",
    process: Process | None = None,
    rho: float = 7.0,
) -> torch.Tensor:
    """The noise levels σ̃_0 = σ_max > … > σ̃_{N−1} = σ_min, then σ̃_N = 0; shape (N + 1,).

    ``edm``: σ̃_i = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ (EDM eq. 5);
    ``logsnr``: geometric (uniform in log σ̃, i.e. in log-SNR); ``uniform``: uniform in the
    process's time t from 1 to t_min (needs ``process``; DDPM's levels when N divides them);
    ``trailing``: uniform in t from 1 down to 1/N (t_i = 1 − i/N,
    Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", Table 2):
    no call is spent at the nearly clean σ_min, the last step jumps from t = 1/N to the data.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    frac = (
        torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    )
    if spacing == "edm":
        a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
        levels = (a + frac * (b - a)) ** rho
    elif spacing == "logsnr":
        levels = torch.exp(math.log(sigma_max) + frac * (math.log(sigma_min) - math.log(sigma_max)))
    elif spacing in ("uniform", "trailing"):
        if process is None:
            raise ValueError(f"spacing={spacing!r} needs the process (its clock t)")
        if spacing == "trailing":  # t = 1, 1 − 1/N, …, 1/N: DDPM's own levels when N divides them
            t = (1.0 - torch.arange(steps, dtype=torch.float64) / steps).clamp_min(process.t_min)
        else:
            t = 1.0 + frac * (process.t_min - 1.0)
        levels = process.sigma_tilde(t)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")
    return torch.cat([levels, torch.zeros(1, dtype=torch.float64)])


@dataclass(frozen=True)
class SampleResult:
    """``x`` the samples (n, d) at σ̃ = 0; ``nfe`` the number of denoiser evaluations."""

    x: torch.Tensor
    nfe: int


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None and generator.device != x.device:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: Sampler = "heun",
    generator: torch.Generator | None = None,
    *,
    eta: float = 0.0,
    snr: float = 0.16,
    corrector_steps: int = 1,
    steps_per_level: int = 20,
    langevin_step: float = 0.2,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    progress: bool = False,
) -> SampleResult:
    """Walk ``x`` (n, d), distributed as p at σ̃ = ``sigmas[0]``, down the levels ``sigmas``
    (decreasing, ending at 0; see :func:`sigma_grid`) with ``sampler`` (module table).

    ``eta``: DDIM's η; ``snr`` and ``corrector_steps``: the pc corrector; ``steps_per_level``
    and ``langevin_step`` (the step α_i = langevin_step · σ̃_i²): ncsn; ``rtol``/``atol``: ode.
    Noise comes from ``generator`` only. Returns the samples at σ̃ = 0 and the NFE.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    sigmas = sigmas.to(torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2 or float(sigmas[-1]) != 0.0 or bool((sigmas.diff() >= 0).any()):
        raise ValueError("sigmas must decrease strictly and end at 0 (use sigma_grid)")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {tuple(x.shape)}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if sampler == "ode":
        if len(sigmas) < 3:
            raise ValueError(
                "the ode sampler integrates from sigmas[0] to sigmas[-2] > 0: give at least 2 steps"
            )
        return _sample_ode(denoiser, x, float(sigmas[0]), float(sigmas[-2]), rtol, atol)
    if sampler == "ncsn":
        return _sample_ncsn(denoiser, x, sigmas[:-1], generator, steps_per_level, langevin_step, progress)
    if sampler == "ancestral":
        sampler, eta = "ddim", 1.0
    nfe, d_prev, h_prev = 0, None, None
    pairs = list(itertools.pairwise(sigmas))
    for sig, s in tqdm(pairs, disable=not progress, desc=f"diffusion {sampler}", unit="step"):
        den = denoiser(x, sig)
        nfe += 1
        sf, ssf = float(sig), float(s)
        if ssf == 0.0 and sampler != "heun":  # the last step lands on the denoised mean
            x = den
            break
        if sampler == "euler":
            x = x + (ssf - sf) * (x - den) / sf
        elif sampler == "heun":
            d = (x - den) / sf
            x_next = x + (ssf - sf) * d
            if ssf > 0:
                d2 = (x_next - denoiser(x_next, s)) / ssf
                nfe += 1
                x_next = x + (ssf - sf) * 0.5 * (d + d2)
            x = x_next
        elif sampler == "ddim":
            eps_hat = (x - den) / sf
            c = eta * ssf * math.sqrt(max(0.0, 1.0 - (ssf / sf) ** 2))
            x = den + math.sqrt(max(0.0, ssf**2 - c**2)) * eps_hat
            if c > 0:
                x = x + c * _noise(x, generator)
        elif sampler in ("sde", "pc"):
            var = sf**2 - ssf**2
            x = x + var * (den - x) / sf**2 + math.sqrt(var) * _noise(x, generator)
            if sampler == "pc":
                for _ in range(corrector_steps):
                    score = (denoiser(x, s) - x) / ssf**2
                    nfe += 1
                    z = _noise(x, generator)
                    # norms averaged over the batch, as in Song et al.'s code: per sample, the
                    # ratio explodes where the score vanishes (at a mode, in low dimension)
                    ratio = float(z.norm(dim=-1).mean() / score.norm(dim=-1).mean().clamp_min(1e-12))
                    step = 2.0 * (snr * ratio) ** 2
                    x = x + step * score + math.sqrt(2.0 * step) * z
        elif sampler == "dpmpp2m":
            h = math.log(sf / ssf)
            if d_prev is None:
                d_mix = den
            else:
                r = h_prev / h
                d_mix = (1 + 0.5 / r) * den - (0.5 / r) * d_prev
            x = (ssf / sf) * x + (1 - ssf / sf) * d_mix
            d_prev, h_prev = den, h
    return SampleResult(x, nfe)


def _log_sigma_velocity(denoiser: Denoiser) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """dx̄/d log σ̃ = x̄ − D(x̄, σ̃): the probability-flow ODE on the clock u = log σ̃."""

    def velocity(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return x - denoiser(x, u.to(torch.float64).exp())

    return velocity


def _sample_ode(
    denoiser: Denoiser, x: torch.Tensor, sigma_max: float, sigma_min: float, rtol: float, atol: float
):
    out = solve_ode(
        _log_sigma_velocity(denoiser), x, math.log(sigma_max), math.log(sigma_min), rtol=rtol, atol=atol
    )
    return SampleResult(denoiser(out.x, torch.tensor(sigma_min, dtype=torch.float64)), out.nfe + 1)


def _sample_ncsn(denoiser, x, levels, generator, steps_per_level: int, langevin_step: float, progress: bool):
    def score(x_: torch.Tensor, sigma: float) -> torch.Tensor:
        return (denoiser(x_, torch.tensor(sigma, dtype=torch.float64)) - x_) / sigma**2

    sigma_last = float(levels[-1])
    x = annealed_langevin(
        score,
        x,
        levels,
        generator,
        steps_per_level=steps_per_level,
        epsilon=langevin_step * sigma_last**2,  # α_i = ε σ_i²/σ_L² = langevin_step · σ_i²
        denoise=True,
        progress=progress,
    )
    return SampleResult(x, len(levels) * steps_per_level + 1)


def ode_log_prob(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor],
    *,
    divergence: Literal["auto", "exact", "hutchinson"] = "auto",
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    chunk: int = 4096,
) -> ODELikelihood:
    """log p(x) of the model at σ̃ = ``sigma_min``, through the probability-flow ODE.

    With u = log σ̃ and dx̄/du = v = x̄ − D(x̄, e^u):

        log p_{σ_min}(x) = log p_{σ_max}(x̄(u_max)) + ∫_{u_min}^{u_max} ∇·v du

    (Song et al. 2021b, eq. 39; :func:`genmodels.ode.ode_log_likelihood`), with
    ``prior_log_prob`` the log-density at σ̃ = σ_max (N(0, (1 + σ_max²) I) for standardized
    data). Exact trace (kind "exact", up to the solver's tolerance) in low dimension,
    Hutchinson's estimate (kind "estimate") above.
    """
    return ode_log_likelihood(
        _log_sigma_velocity(denoiser),
        x,
        math.log(sigma_min),
        math.log(sigma_max),
        prior_log_prob,
        divergence=divergence,
        generator=generator,
        rtol=rtol,
        atol=atol,
        chunk=chunk,
    )


def gaussian_prior_log_prob(
    sigma_max: float, data_var: float = 1.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """log N(x̄; 0, (data_var + σ_max²) I): the law of x̄ at σ̃ = σ_max for data of variance
    ``data_var`` per dimension, to second moments (VP's N(0, I) prior, in x̄)."""
    var = data_var + sigma_max**2

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * (x**2).sum(-1) / var - 0.5 * x.shape[-1] * math.log(2 * math.pi * var)

    return log_prob


def ddpm_elbo(
    denoiser: Denoiser,
    process: DDPM,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    levels: int | None = None,
) -> LogDensity:
    """The variational lower bound of the discrete chain (Ho et al. 2020, eq. 5; tutorial §5 [C]).

        log p(x₀) ≥ −KL(q(x_N|x₀) ‖ N(0, I)) − Σ_{i=2}^{N} KL(q(x_{i−1}|x_i, x₀) ‖ p(x_{i−1}|x_i))
                    + log p(x₀|x₁)

    with p(x_{i−1}|x_i) = q(x_{i−1} | x_i, x̂₀ = D) of variance β̃_i (the ancestral sampler), so
    KL_i = ᾱ_{i−1} β_i |x₀ − x̂₀|² / (2 (1 − ᾱ_i)(1 − ᾱ_{i−1})), and the decoder
    p(x₀|x₁) = N(x̂₀(x₁), β₁ I) (continuous data: no discretization). One draw of x_i per level;
    ``levels`` = K draws K levels i ∈ {2…N} per point uniformly at random instead (unbiased,
    noisier).
    x₀ is (n, d); returns kind "lower_bound" (its expectation is the bound).
    """
    if x0.ndim != 2:
        raise ValueError(f"x0 must have shape (n, d), got {tuple(x0.shape)}")
    N, d = process.n_steps, x0.shape[1]
    lab = process.log_alpha_bar.to(x0.device)
    ab = lab.exp()
    betas = process.betas.to(x0.device)
    x64 = x0.to(torch.float64)
    # prior term: KL(N(√ᾱ_N x₀, (1 − ᾱ_N) I) ‖ N(0, I))
    aN = float(ab[N])
    total = -0.5 * (aN * (x64**2).sum(-1) + d * ((1 - aN) - 1 - math.log(1 - aN)))

    def sq_err(i: torch.Tensor) -> torch.Tensor:  # |x₀ − D(x̄_i, σ̃_i)|², one level per row
        sig = torch.sqrt(1.0 / ab[i] - 1.0)
        x_bar = x0 + sig.to(x0.dtype)[:, None] * _noise(x0, generator)
        den = denoiser(x_bar, sig)
        return ((x0 - den) ** 2).sum(-1).to(torch.float64)

    n = x0.shape[0]
    b1 = float(betas[0])
    ones = torch.ones(n, dtype=torch.long, device=x0.device)
    total = total - sq_err(ones) / (2 * b1) - 0.5 * d * math.log(2 * math.pi * b1)
    if levels is None:
        draws, weight = [ones * i for i in range(2, N + 1)], 1.0
    else:
        draws = [
            torch.randint(
                2, N + 1, (n,), generator=generator, device=generator.device if generator else None
            ).to(x0.device)
            for _ in range(levels)
        ]
        weight = (N - 1) / levels
    for i in draws:
        coef = ab[i - 1] * betas[i - 1] / (2 * (1 - ab[i]) * (1 - ab[i - 1]))
        total = total - weight * coef * sq_err(i)
    return LogDensity(total.to(x0.dtype), "lower_bound")


class MixtureDenoiser:
    """The exact denoiser of a Gaussian mixture p: D(x̄, σ̃) = E[x₀ | x₀ + σ̃ε = x̄]
    (``GaussianMixture.denoise``), differentiable in x̄ when x̄ requires grad (for the
    divergence in :func:`ode_log_prob`). ``prior_log_prob(σ_max)`` is the exact log p_{σ_max}."""

    def __init__(self, mixture) -> None:  # a genmodels.distributions.GaussianMixture
        self.mixture = mixture

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        if isinstance(sigma, torch.Tensor) and sigma.numel() > 1:  # one σ̃ per row
            if torch.is_grad_enabled() and x.requires_grad:
                raise ValueError("the differentiable exact denoiser takes one σ̃ for all rows")
            return self.mixture.denoise(x, sigma)
        s = float(sigma)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return self.mixture.denoise(x, s)
        log_p = self.mixture.convolve(s).log_prob(x).sum()
        (score,) = torch.autograd.grad(log_p, x, create_graph=True)
        return x + s**2 * score

    def prior_log_prob(self, sigma_max: float) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.mixture.convolve(sigma_max).log_prob
