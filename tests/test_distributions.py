"""Tests of the ground-truth targets (genmodels.distributions).

For every 2-D benchmark target: the density integrates to one over its box, the score is
the gradient of the log-density, 20k samples pass a χ² test against the cell masses of
the density (and a slightly shifted sampler fails it), and the entropy matches
benchmarks.md §1–§2. For Gaussian mixtures in 3-D with full covariances: the noise
convolution, its score and the Tweedie denoiser against Monte Carlo.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch
from scipy import stats

from genmodels.counting import cell_masses
from genmodels.distributions import (
    TARGETS,
    GaussianMixture,
    Target,
    entropy_monte_carlo,
    get_target,
)

NAMES = list(TARGETS)

#: benchmarks.md §1 and §2 (nats)
ENTROPY_TABLE = {
    "8gaussians": 2.830,
    "checkerboard": 3.466,
    "rings": 2.625,
    "moons": 2.40,
    "circles": 3.27,
    "swissroll": 2.67,
    "2spirals": 2.65,
    "pinwheel": 2.31,
    "ring8": -4.293,
    "grid25": 0.0653,
}

#: per target: (bin width of the normalisation / χ² grid, Gauss–Legendre order per cell,
#: the local length scale: noise std, or square side for the checkerboard)
GRID = {
    "8gaussians": (0.25, 6, 0.5 / 1.414),
    "checkerboard": (0.5, 2, 2.0),
    "rings": (0.16, 6, 0.08),
    "moons": (0.2, 6, 0.2),
    "circles": (0.25, 6, 0.24),
    "swissroll": (0.2, 6, 0.2),
    "2spirals": (0.2, 6, 0.1),
    "pinwheel": (0.2, 6, 0.2),
    "ring8": (0.02, 6, 0.01),
    "grid25": (0.1, 6, 0.05),
}
SHIFT_FRAC = 0.25  # the broken sampler: samples + 0.25·scale·(1, 1)/√2
N_CHI2 = 20_000


@cache
def _target(name: str) -> Target:
    return get_target(name)


@cache
def _grid(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Cell edges and exact cell masses ∫∫_cell p over the target's box."""
    t = _target(name)
    h, order, _ = GRID[name]
    lo, hi = t.box
    m = round((hi - lo) / h)
    edges = np.linspace(lo, hi, m + 1)
    return edges, cell_masses(t.log_prob, edges, edges, order=order)


def chi2_pvalue(x: np.ndarray, edges: np.ndarray, masses: np.ndarray) -> float:
    """Pearson χ² p-value of samples ``x`` (n, 2) against cell probabilities ``masses``.

    Cells with expected count < 5 are pooled together with the outside of the box into
    one bin (merged into the smallest regular bin if still below 5).
    """
    n = x.shape[0]
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
    obs, exp = counts.ravel(), masses.ravel() * n
    big = exp >= 5
    o = obs[big]
    e = exp[big]
    o_rest = obs[~big].sum() + (n - obs.sum())
    e_rest = exp[~big].sum() + max(n - exp.sum(), 0.0)
    if e_rest >= 5:
        o, e = np.append(o, o_rest), np.append(e, e_rest)
    else:
        k = int(np.argmin(e))
        o[k] += o_rest
        e[k] += e_rest
    e = e * (n / e.sum())
    stat = float(((o - e) ** 2 / e).sum())
    return float(stats.chi2.sf(stat, len(o) - 1))


# --------------------------------------------------------------------------------------
# every target
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one(name: str) -> None:
    _, masses = _grid(name)
    assert abs(masses.sum() - 1.0) < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_score_is_gradient_of_log_prob(name: str) -> None:
    t = _target(name)
    x = t.sample(200, torch.Generator().manual_seed(1)).double()
    score = t.score(x)
    assert score.shape == (200, 2) and score.dtype == torch.float64
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(t.log_prob(xr).sum(), xr)
    scale = 1.0 + float(grad.abs().max())
    torch.testing.assert_close(score, grad, rtol=1e-7, atol=1e-9 * scale)


@pytest.mark.parametrize("name", NAMES)
def test_samples_match_density_chi2(name: str) -> None:
    t = _target(name)
    edges, masses = _grid(name)
    x = t.sample(N_CHI2, torch.Generator().manual_seed(2024))
    assert x.shape == (N_CHI2, 2) and x.dtype == torch.float32
    x = x.double().numpy()
    assert chi2_pvalue(x, edges, masses) > 1e-3
    # the test has power: a sampler off by a quarter of the noise scale fails it
    shift = SHIFT_FRAC * GRID[name][2] / math.sqrt(2.0)
    assert chi2_pvalue(x + shift, edges, masses) < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_entropy_matches_table(name: str) -> None:
    assert abs(_target(name).entropy() - ENTROPY_TABLE[name]) < 0.01


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_dtype_and_sampler_rng(name: str) -> None:
    t = _target(name)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    a = t.sample(50, torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(3), expected), "sample() must not touch the global RNG"
    b = t.sample(50, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    lp32, lp64 = t.log_prob(a), t.log_prob(a.double())
    assert lp32.dtype == torch.float32 and lp64.dtype == torch.float64
    assert lp64.shape == (50,) and bool(torch.isfinite(lp64).all())
    torch.testing.assert_close(lp32, lp64.float())


def test_get_target_unknown_name() -> None:
    with pytest.raises(ValueError, match="nope") as info:
        get_target("nope")
    for name in NAMES:
        assert name in str(info.value)
    assert "\n" not in str(info.value)


def test_registry_names() -> None:
    assert NAMES == [
        "8gaussians",
        "checkerboard",
        "rings",
        "moons",
        "circles",
        "swissroll",
        "2spirals",
        "pinwheel",
        "ring8",
        "grid25",
    ]
    for name in NAMES:
        assert get_target(name).name == name


def test_mode_metadata() -> None:
    for name, std in (("8gaussians", 0.5 / 1.414), ("ring8", 0.01), ("grid25", 0.05)):
        t = get_target(name)
        assert t.mode_std == pytest.approx(std)
        assert t.mode_centers is not None and t.mode_centers.shape[1] == 2
    assert get_target("ring8").mode_centers.shape[0] == 8
    assert get_target("grid25").mode_centers.shape[0] == 25


# --------------------------------------------------------------------------------------
# Gaussian mixtures in 3-D with full covariances
# --------------------------------------------------------------------------------------


def _random_gm(k: int, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(k, 3, generator=g, dtype=torch.float64)
    A = torch.randn(k, 3, 3, generator=g, dtype=torch.float64)
    cov = 0.3 * A @ A.transpose(-1, -2) + 0.1 * torch.eye(3, dtype=torch.float64)
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(means, covariances=cov, weights=w, name="gm3")


def test_gm_single_component_closed_forms() -> None:
    gm = _random_gm(1)
    mu, cov = gm.means[0].numpy(), gm.covariances[0].numpy()
    x = gm.sample(100, torch.Generator().manual_seed(3)).double()
    sigma, scale = 0.7, 0.8
    ref = stats.multivariate_normal(scale * mu, scale**2 * cov + sigma**2 * np.eye(3))
    conv = gm.convolve(sigma, scale=scale)
    np.testing.assert_allclose(conv.log_prob(x).numpy(), ref.logpdf(x.numpy()), rtol=1e-12)
    assert gm.entropy() == pytest.approx(stats.multivariate_normal(mu, cov).entropy(), rel=1e-12)


def test_gm_log_prob_and_score() -> None:
    gm = _random_gm(4)
    x = gm.sample(300, torch.Generator().manual_seed(4)).double()
    comps = [
        stats.multivariate_normal(m, c) for m, c in zip(gm.means.numpy(), gm.covariances.numpy(), strict=True)
    ]
    dens = sum(w * c.pdf(x.numpy()) for w, c in zip(gm.weights.numpy(), comps, strict=True))
    np.testing.assert_allclose(gm.log_prob(x).numpy(), np.log(dens), rtol=1e-10)
    for target in (gm, gm.convolve(0.5), gm.convolve(1.3, scale=0.6)):
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(target.log_prob(xr).sum(), xr)
        torch.testing.assert_close(target.score(x), grad, rtol=1e-9, atol=1e-10)


def test_gm_convolve_matches_monte_carlo() -> None:
    """p_σ(x) = E_{x₀~p} N(x; s x₀, σ² I), estimated with 400k draws, within 5 s.e."""
    gm = _random_gm(3)
    sigma, scale = 0.6, 0.9
    conv = gm.convolve(sigma, scale=scale)
    x0 = gm.sample(400_000, torch.Generator().manual_seed(5)).double()
    x = conv.sample(5, torch.Generator().manual_seed(6)).double()
    d2 = torch.cdist(x, scale * x0).square()
    k = torch.exp(-d2 / (2 * sigma**2)) / (2 * math.pi * sigma**2) ** 1.5  # (5, N)
    est, se = k.mean(1), k.std(1) / math.sqrt(x0.shape[0])
    dens = conv.log_prob(x).exp()
    assert bool(((est - dens).abs() < 5 * se).all()), (est, dens, se)


def test_gm_denoise_matches_importance_sampling() -> None:
    """D(x, σ) = E[x₀ | x₀ + σε = x] vs the self-normalised estimate Σ w_i x₀ᵢ / Σ w_i."""
    gm = _random_gm(3, seed=1)
    sigma = 0.8
    x0 = gm.sample(400_000, torch.Generator().manual_seed(7)).double()
    x = gm.convolve(sigma).sample(4, torch.Generator().manual_seed(8)).double()
    den = gm.denoise(x, sigma)
    for i in range(x.shape[0]):
        logw = -(x[i] - x0).square().sum(1) / (2 * sigma**2)
        w = torch.softmax(logw, 0)  # (N,)
        est = (w[:, None] * x0).sum(0)
        # delta-method standard error of a self-normalised estimate
        se = ((w[:, None] ** 2) * (x0 - est).square()).sum(0).sqrt()
        assert bool(((den[i] - est).abs() < 5 * se + 1e-12).all()), (den[i], est, se)
    # Tweedie, the posterior-mean formula, and a per-row σ all agree
    post = gm.convolve(sigma)
    torch.testing.assert_close(den, x + sigma**2 * post.score(x), rtol=1e-10, atol=1e-12)
    sig = torch.tensor([0.8, 0.3, 1.5, 0.05], dtype=torch.float64)
    rows = torch.stack([gm.denoise(x[i : i + 1], float(s))[0] for i, s in enumerate(sig)])
    torch.testing.assert_close(gm.denoise(x, sig), rows, rtol=1e-10, atol=1e-12)
    assert gm.denoise(x.float(), sigma).dtype == torch.float32


def test_gm_entropy_quadrature_vs_monte_carlo() -> None:
    gm = _random_gm(3, seed=1)
    h = gm.entropy()
    assert gm.entropy_method == "gauss-hermite"
    assert h == pytest.approx(entropy_monte_carlo(gm, n=200_000, seed=3), abs=0.012)
    # a narrow component inside a broad one defeats the quadrature: Monte Carlo instead
    nested = GaussianMixture([[0.0, 0.0], [0.3, 0.0], [0.0, 0.2]], [1.0, 0.05, 0.3])
    nested.entropy()
    assert nested.entropy_method == "monte carlo"


def test_gm_constructor_forms() -> None:
    means = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    iso = GaussianMixture(means, 0.5)
    per = GaussianMixture(means, torch.tensor([0.5, 0.5]))
    diag = GaussianMixture(means, torch.full((2, 2), 0.5))
    full = GaussianMixture(means, covariances=0.25 * torch.eye(2).expand(2, 2, 2))
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for other in (per, diag, full):
        torch.testing.assert_close(other.log_prob(x), iso.log_prob(x))
    assert iso.mode_std == pytest.approx(0.5)
    assert GaussianMixture(means, torch.tensor([0.5, 0.6])).mode_std is None
    with pytest.raises(ValueError):
        GaussianMixture(means)
    with pytest.raises(ValueError):
        GaussianMixture(means, torch.ones(2, 2, 2))
