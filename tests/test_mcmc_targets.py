"""MCMC benchmark targets: normalization, score, exact moments, and the b² metric."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from genmodels.distributions.mcmc_targets import (
    Banana,
    IllConditionedGaussian,
    NealsFunnel,
    Rosenbrock,
    bias_squared,
    steps_to_threshold,
)

TARGETS = {
    "banana": lambda: Banana(),
    "funnel": lambda: NealsFunnel(10),
    "icg": lambda: IllConditionedGaussian(100, 100.0),
    "icg_rot": lambda: IllConditionedGaussian(20, 1000.0, rotation_seed=0),
    "rosenbrock": lambda: Rosenbrock(36, 0.1),
}


def test_banana_normalized_on_grid():
    t = Banana()
    x0 = torch.linspace(-70.0, 70.0, 1401, dtype=torch.float64)
    x1 = torch.linspace(-12.0, 160.0, 3441, dtype=torch.float64)
    g0, g1 = torch.meshgrid(x0, x1, indexing="ij")
    p = t.log_prob(torch.stack([g0.flatten(), g1.flatten()], 1)).exp().reshape(g0.shape)
    total = torch.trapezoid(torch.trapezoid(p, x1, dim=1), x0)
    assert abs(float(total) - 1.0) < 1e-6


def _independent_log_prob(name, t, x):
    """log p from torch.distributions, factorized differently from the implementation."""
    zero, one = torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64)
    if name == "banana":
        return Normal(zero, 10.0).log_prob(x[:, 0]) + Normal(0.03 * (x[:, 0] ** 2 - 100), 1.0).log_prob(
            x[:, 1]
        )
    if name == "funnel":
        sd = torch.exp(x[:, :1] / 2)
        return Normal(zero, 3.0).log_prob(x[:, 0]) + Normal(0.0, sd).log_prob(x[:, 1:]).sum(1)
    if name.startswith("icg"):
        cov = torch.diag(t.eigenvalues) if t.rotation is None else t.covariance
        return MultivariateNormal(torch.zeros(t.dim, dtype=torch.float64), cov).log_prob(x)
    if name == "rosenbrock":
        h = t.dim // 2
        xs, ys = x[:, :h], x[:, h:]
        return (Normal(one, 1.0).log_prob(xs) + Normal(xs**2, math.sqrt(t.Q)).log_prob(ys)).sum(1)
    raise KeyError(name)


@pytest.mark.parametrize("name", list(TARGETS))
def test_log_prob_matches_independent_formula_and_dtype(name):
    t = TARGETS[name]()
    g = torch.Generator().manual_seed(1)
    x = t.sample(500, generator=g, dtype=torch.float64)
    x = x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)  # off-sample points too
    torch.testing.assert_close(t.log_prob(x), _independent_log_prob(name, t, x), rtol=1e-10, atol=1e-9)
    assert t.log_prob(x.float()).dtype == torch.float32
    assert t.sample(3, generator=g).dtype == torch.float32


@pytest.mark.parametrize("name", list(TARGETS))
def test_score_matches_autograd(name):
    t = TARGETS[name]()
    x = t.sample(200, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    auto = _autograd_score(t, x)
    torch.testing.assert_close(t.score(x), auto, rtol=1e-9, atol=1e-9)
    assert t.score(x.float()).dtype == torch.float32


def _autograd_score(t, x):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(t.log_prob(x).sum(), x)
    return g


@pytest.mark.parametrize("name", list(TARGETS))
def test_sampling_is_reproducible(name):
    t = TARGETS[name]()
    a = t.sample(10, generator=torch.Generator().manual_seed(5))
    b = t.sample(10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (10, t.dim)


@pytest.mark.parametrize("name", list(TARGETS))
def test_exact_samples_reproduce_moments(name):
    t = TARGETS[name]()
    n = 40_000
    x = t.sample(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    se_mean = (t.variance / n).sqrt()
    se_m2 = (t.variance_of_square / n).sqrt()
    assert ((x.mean(0) - t.mean).abs() < 4 * se_mean).all()
    assert ((x.pow(2).mean(0) - t.second_moment).abs() < 4 * se_m2).all()


@pytest.mark.parametrize("name", ["banana", "icg", "icg_rot", "rosenbrock"])
def test_variance_of_square_matches_samples(name):
    """Var[x²] itself against a large exact sample (loose: its estimator is heavy-tailed)."""
    t = TARGETS[name]()
    x = t.sample(200_000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(x.pow(2).var(0), t.variance_of_square, rtol=0.1, atol=0.0)


@pytest.mark.parametrize("name,reps,n", [("banana", 2000, 100), ("icg", 200, 500), ("rosenbrock", 400, 200)])
def test_bias_squared_of_exact_samples_is_one_over_n(name, reps, n):
    """E[b²_mean] = 1/n exactly for iid draws; check the mean of n·b² over replicates ≈ 1.

    The funnel is left out: Var[xᵢ²] is set by events of probability ~e^{-large}, so the
    replicate average of n·b² is far below 1 with overwhelming probability at any feasible size.
    """
    t = TARGETS[name]()
    x = t.sample(reps * n, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    m2 = x.reshape(reps, n, t.dim).pow(2).mean(1)
    nb2 = n * bias_squared(m2, t, reduce="mean")
    tol = 4 * float(nb2.std()) / math.sqrt(reps)
    assert abs(float(nb2.mean()) - 1.0) < tol
    assert (bias_squared(m2, t, reduce="max") >= bias_squared(m2, t, reduce="mean")).all()


def test_bias_squared_values_and_reduce():
    t = Banana()
    m2 = t.second_moment + torch.tensor([10.0 * math.sqrt(20000.0), 0.0], dtype=torch.float64)
    assert float(bias_squared(m2, t)) == pytest.approx(100.0)
    assert float(bias_squared(m2, t, reduce="mean")) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        bias_squared(m2, t, reduce="median")


def test_steps_to_threshold_synthetic():
    t = IllConditionedGaussian(4, 100.0)
    sd = t.variance_of_square.sqrt()
    # b² (max) per row: 1.0, 0.0, 0.25, 0.0081, 0.0049, 0.0001 -> stays below 0.01 from index 3.
    rel = torch.tensor([1.0, 0.0, 0.5, 0.09, 0.07, 0.01], dtype=torch.float64)
    running = t.second_moment + rel[:, None] * sd * torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    assert steps_to_threshold(running, t, threshold=0.01) == 3
    assert steps_to_threshold(running, t, threshold=2.0) == 0
    assert steps_to_threshold(running[:3], t, threshold=0.01) is None
    # mean reduction: b² = rel² · (1 + 1 + 0.25 + 0)/4 -> rows 3.. are below 0.01 (0.0046, ...).
    assert steps_to_threshold(running, t, threshold=0.01, reduce="mean") == 3


def test_closed_form_entropy_matches_monte_carlo():
    for t in (Banana(), NealsFunnel(5), IllConditionedGaussian(10, 100.0, rotation_seed=1), Rosenbrock(6)):
        x = t.sample(100_000, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        lp = t.log_prob(x)
        assert abs(-float(lp.mean()) - t.entropy()) < 4 * float(lp.std()) / math.sqrt(len(lp))


def test_conventions():
    icg = IllConditionedGaussian(100, 100.0)
    torch.testing.assert_close(icg.eigenvalues[[0, -1]], torch.tensor([0.1, 10.0], dtype=torch.float64))
    rot = IllConditionedGaussian(20, 1000.0, rotation_seed=0)
    torch.testing.assert_close(rot.rotation.T @ rot.rotation, torch.eye(20, dtype=torch.float64))
    torch.testing.assert_close(rot.second_moment.sum(), rot.eigenvalues.sum())
    assert Rosenbrock(36, 0.1).second_moment[18] == pytest.approx(10.1)
    assert Banana().variance_of_square[1] == pytest.approx(4610.0)


def test_funnel_moments_by_quadrature():
    """Sampling can't pin the funnel's heavy-tailed moments; integrate over x₀ instead.

    Given x₀, xᵢ ~ N(0, e^{x₀}) has E[xᵢ²|x₀] = e^{x₀} and E[xᵢ⁴|x₀] = 3e^{2x₀}.
    """
    t = NealsFunnel(10)
    x0 = torch.linspace(-60.0, 80.0, 280_001, dtype=torch.float64)
    w = Normal(torch.zeros((), dtype=torch.float64), 3.0).log_prob(x0).exp()
    m2 = torch.trapezoid(w * x0.exp(), x0)
    m4 = torch.trapezoid(w * 3 * (2 * x0).exp(), x0)
    torch.testing.assert_close(t.second_moment[1:], m2.expand(9), rtol=1e-9, atol=0.0)
    torch.testing.assert_close(t.variance_of_square[1:], (m4 - m2**2).expand(9), rtol=1e-9, atol=0.0)
    torch.testing.assert_close(t.second_moment[0], torch.trapezoid(w * x0**2, x0), rtol=1e-9, atol=0.0)
    torch.testing.assert_close(
        t.variance_of_square[0], torch.trapezoid(w * x0**4, x0) - 81.0, rtol=1e-9, atol=0.0
    )
