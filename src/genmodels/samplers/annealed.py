"""Annealed Langevin dynamics over noise levels (Song & Ermon 2019, NCSN, Algorithm 1).

Langevin dynamics (tutorial §4) mixes slowly between separated modes. Annealing runs it on
a sequence of noised targets p_σ = p * N(0, σ²I), σ_1 > σ_2 > … > σ_L: the broad early
targets connect the modes, the late ones are sharp. At level i, with step
α_i = ε σ_i² / σ_L² and T steps per level,

    x ← x + (α_i / 2) ∇_x log p_{σ_i}(x) + √α_i z,   z ~ N(0, I),

which is the tutorial's Langevin update with Δt = α_i (its score evaluated at x). The
score may be a learned s_θ(x, σ) or, for a Gaussian mixture, the exact score of the
convolved mixture (``GaussianMixture.convolve(σ).score``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

ScoreFn = Callable[[torch.Tensor, float], torch.Tensor]


def geometric_sigmas(sigma_max: float, sigma_min: float, n_levels: int) -> torch.Tensor:
    """σ_i from ``sigma_max`` down to ``sigma_min``, geometrically spaced (NCSN §4.2)."""
    if not (sigma_max > sigma_min > 0) or n_levels < 1:
        raise ValueError("need sigma_max > sigma_min > 0 and at least one level")
    return torch.logspace(
        torch.log10(torch.tensor(sigma_max)),
        torch.log10(torch.tensor(sigma_min)),
        n_levels,
        dtype=torch.float64,
    )


def annealed_langevin(
    score: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator,
    steps_per_level: int = 100,
    epsilon: float = 2e-5,
    denoise: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Run NCSN's annealed Langevin dynamics from ``x`` (n, d) through ``sigmas`` (decreasing).

    ``score(x, sigma)`` returns ∇ log p_σ(x) of shape (n, d). With ``denoise`` the result
    gets one final Tweedie step x + σ_L² ∇ log p_{σ_L}(x) (Jolicoeur-Martineau et al. 2021),
    which removes the last level's noise. Returns the final positions.
    """
    if bool((sigmas.diff() >= 0).any()):
        raise ValueError("sigmas must decrease")
    sigma_last = float(sigmas[-1])
    for sigma in tqdm(sigmas.tolist(), disable=not progress, desc="annealed Langevin", unit="level"):
        alpha = epsilon * sigma**2 / sigma_last**2
        for _ in range(steps_per_level):
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + 0.5 * alpha * score(x, sigma) + alpha**0.5 * z
    if denoise:
        x = x + sigma_last**2 * score(x, sigma_last)
    return x
