"""The tutorial's equilibrium argument (§4), measured, and the one-call sampling API.

With x ~ π, the gradient half-step x + (Δt/2)∇log π(x) changes E[h(x)] by −(Δt/2)E[h''],
the noise half-step x + √Δt e by +(Δt/2)E[h''], and the full Langevin step by only o(Δt):
π is the fixed point. Antithetic noise (e and −e) removes the odd noise terms, so the
Monte-Carlo error is far below the effects measured.
"""

from __future__ import annotations

import math

import pytest
import torch

from genmodels.distributions import GaussianMixture
from genmodels.samplers import sample
from genmodels.samplers.langevin import gradient_half_step, noise_half_step

DT = 0.004
N = 1_000_000


def _three_modes() -> GaussianMixture:
    means = torch.tensor([[-2.5], [0.0], [1.5]], dtype=torch.float64)
    return GaussianMixture(means, stds=0.5, weights=torch.tensor([0.2, 0.5, 0.3]))


@pytest.mark.parametrize(
    ("h", "h2"),
    [(lambda x: x**2, lambda x: 2.0 + 0.0 * x), (torch.sin, lambda x: -torch.sin(x))],
    ids=["x^2", "sin"],
)
def test_half_steps_cancel_at_equilibrium(h, h2) -> None:
    target = _three_modes()
    g = torch.Generator().manual_seed(0)
    x = target.sample(N, generator=g).double()
    first_order = 0.5 * DT * float(h2(x).mean())  # (Δt/2) E[h'']
    score = target.score(x)

    squeezed = gradient_half_step(x, score, DT)
    diffused = noise_half_step(x, DT, g)
    diffused_anti = 2 * x - diffused
    x1 = squeezed
    full = noise_half_step(x1, DT, g)
    full_anti = 2 * x1 - full

    d_grad = float((h(squeezed) - h(x)).mean())
    d_noise = float((0.5 * (h(diffused) + h(diffused_anti)) - h(x)).mean())
    d_full = float((0.5 * (h(full) + h(full_anti)) - h(x)).mean())
    assert d_grad == pytest.approx(-first_order, rel=0.1)
    assert d_noise == pytest.approx(first_order, rel=0.1)
    assert abs(d_full) < 0.1 * abs(first_order), (d_full, first_order)


def test_sample_api_recovers_moments_with_each_kernel() -> None:
    """`sample` with warm-up: HMC, ChEES-HMC and MALA recover a correlated Gaussian's mean and variance."""
    cov = torch.tensor([[1.0, 0.8], [0.8, 2.0]], dtype=torch.float64)
    prec = torch.linalg.inv(cov)
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)

    def log_density(x: torch.Tensor) -> torch.Tensor:
        d = x - mean
        return -0.5 * ((d @ prec) * d).sum(-1)

    for kernel in ("hmc", "chees", "mala"):
        result = sample(
            log_density,
            torch.zeros(2, dtype=torch.float64),
            kernel,
            n_steps=400,
            n_chains=256,
            generator=torch.Generator().manual_seed(1),
            progress=False,
        )
        assert result.draws.shape == (400, 256, 2)
        chain_means = result.draws.mean(0)  # (chains, d): independent across chains
        se = chain_means.std(0) / math.sqrt(256)
        assert bool(((chain_means.mean(0) - mean).abs() < 4 * se).all()), kernel
        var = result.draws.reshape(-1, 2).var(0)
        assert torch.allclose(var, cov.diagonal(), rtol=0.1), (kernel, var)
        text = result.summary()
        assert "ess_bulk" in text and "r_hat" in text and "divergent" in text


def test_sample_api_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown kernel 'nuts'"):
        sample(lambda x: -x.pow(2).sum(-1), torch.zeros(2), "nuts", generator=torch.Generator())
    with pytest.raises(ValueError, match="needs step_size"):
        sample(lambda x: -x.pow(2).sum(-1), torch.zeros(2), "langevin", generator=torch.Generator())
    with pytest.raises(TypeError, match=r"torch\.Generator"):
        sample(lambda x: -x.pow(2).sum(-1), torch.zeros(2), "hmc")
