"""Density by counting (tutorial §1): exact identities on the grid, then convergence."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import genmodels.counting as counting
from genmodels.counting import (
    Grid2D,
    cell_masses,
    gaussian_mixture_cell_masses,
    kl_grid,
    kl_grid_null_mean,
    smoothed_masses,
)


def test_doctests() -> None:
    result = doctest.testmod(counting)
    assert result.attempted > 0 and result.failed == 0


def uneven_grid() -> Grid2D:
    x_edges = np.array([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 2.5, 4.0])
    return Grid2D(x_edges, np.linspace(-1.5, 1.5, 8))


def some_points(n: int, seed: int, scale: float = 1.0, clip: float | None = None) -> np.ndarray:
    """n Gaussian points of std ``scale``, optionally clipped into [−clip, clip]²."""
    g = torch.Generator().manual_seed(seed)
    pts = (scale * torch.randn(n, 2, generator=g, dtype=torch.float64)).numpy()
    return pts if clip is None else np.clip(pts, -clip, clip)


# ---------------------------------------------------------------------------------------
# exact identities on a fixed grid
# ---------------------------------------------------------------------------------------
def test_counts_and_marginals_are_sums_of_the_joint() -> None:
    grid = uneven_grid()
    c = grid.count(some_points(3000, 0))
    assert c.n == 3000 and c.n_outside > 0  # some points fall off this grid
    assert c.n_xy.sum() + c.n_outside == c.n
    np.testing.assert_array_equal(c.n_x, c.n_xy.sum(axis=1))
    np.testing.assert_array_equal(c.n_y, c.n_xy.sum(axis=0))
    # p(x) = Σ_y p(x, y) Δy and p(y) = Σ_x p(x, y) Δx
    np.testing.assert_allclose(c.marginal_x(), (c.joint() * grid.dy).sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose(c.marginal_y(), (c.joint() * grid.dx[:, None]).sum(0), rtol=1e-13)
    # Σ p(x, y) ΔxΔy is the share of points on the grid
    np.testing.assert_allclose((c.joint() * grid.area).sum(), 1 - c.n_outside / c.n, rtol=1e-13)


def test_density_integrates_to_one_when_every_point_is_inside() -> None:
    grid = uneven_grid()
    c = grid.count(some_points(2000, 1, clip=1.49))
    assert c.n_outside == 0
    np.testing.assert_allclose((c.joint() * grid.area).sum(), 1.0, rtol=1e-13)
    np.testing.assert_allclose((c.marginal_x() * grid.dx).sum(), 1.0, rtol=1e-13)
    np.testing.assert_allclose((c.marginal_y() * grid.dy).sum(), 1.0, rtol=1e-13)
    np.testing.assert_allclose(c.masses().sum(), 1.0, rtol=1e-13)


def test_factorization_and_conditionals() -> None:
    grid = uneven_grid()
    c = grid.count(some_points(500, 2, clip=2.0))
    cond = c.conditional_y_given_x()
    full = c.n_x > 0
    assert not full.all()  # a strip is empty: its conditional is undefined (NaN)
    assert np.isnan(cond[~full]).all() and np.isfinite(cond[full]).all()
    # p(x, y) = p(x) p(y|x) on every non-empty strip; each p(·|x) integrates to one
    np.testing.assert_allclose(c.joint()[full], c.marginal_x()[full, None] * cond[full], rtol=1e-13)
    np.testing.assert_allclose((cond[full] * grid.dy).sum(axis=1), 1.0, rtol=1e-13)
    # and symmetrically p(x, y) = p(y) p(x|y)
    cond_x = c.conditional_x_given_y()
    full_y = c.n_y > 0
    np.testing.assert_allclose(
        c.joint()[:, full_y], c.marginal_y()[None, full_y] * cond_x[:, full_y], rtol=1e-13
    )


def test_expectation_of_cell_constant_h_is_the_sample_mean() -> None:
    grid = uneven_grid()
    pts = some_points(4000, 3, clip=1.49)
    c = grid.count(pts)
    assert c.n_outside == 0

    def h(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.sin(3 * x) + x * y**2

    # h constant on each cell: its value at the cell centre, for every point of the cell
    idx = grid.locate(pts)
    bx, by = grid.shape
    h_of_point = h(grid.x_centers[idx // by], grid.y_centers[idx % by])
    assert c.expectation(h) == pytest.approx(h_of_point.mean(), rel=1e-12, abs=1e-14)
    # E_{p(y|x)}[h] = Σ_y h n(x, y)/n(x) is the mean over the points of each strip
    cond = c.conditional_expectation(h)
    for i in range(bx):
        in_strip = idx // by == i
        if in_strip.any():
            assert cond[i] == pytest.approx(h_of_point[in_strip].mean(), rel=1e-12, abs=1e-14)
        else:
            assert np.isnan(cond[i])
    # the tower rule: E[h] = Σ_x p(x)Δx E_{p(y|x)}[h]
    full = c.n_x > 0
    tower = (c.marginal_x() * grid.dx)[full] @ cond[full]
    assert tower == pytest.approx(c.expectation(h), rel=1e-12)


def test_cell_edges_follow_histogram2d() -> None:
    grid = Grid2D.regular((0.0, -1.0), (2.0, 1.0), (4, 2))
    pts = np.array([[0.0, -1.0], [2.0, 1.0], [0.5, 0.0], [2.0001, 0.0], [-1e-9, 0.0], [1.0, 1.0]])
    c = grid.count(pts)
    ref, _, _ = np.histogram2d(pts[:, 0], pts[:, 1], bins=[grid.x_edges, grid.y_edges])
    np.testing.assert_array_equal(c.n_xy, ref)
    assert c.n_outside == 2
    assert grid.locate(torch.tensor([[float("nan"), 0.0]])).tolist() == [-1]


def test_grid_validation() -> None:
    with pytest.raises(ValueError):
        Grid2D(np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError):
        Grid2D.regular(0.0, 1.0, 4).count(np.zeros((3, 3)))


# ---------------------------------------------------------------------------------------
# exact cell masses
# ---------------------------------------------------------------------------------------
def gauss_log_prob(mean: tuple[float, float], std: float):
    def log_prob(x: torch.Tensor) -> torch.Tensor:
        z = (x - torch.tensor(mean, dtype=x.dtype)) / std
        return -0.5 * (z**2).sum(-1) - 2 * math.log(std) - math.log(2 * math.pi)

    return log_prob


def test_closed_form_masses_match_quadrature() -> None:
    grid = Grid2D.regular(-6.0, 6.0, 24)
    means, stds, weights = [[0.0, 0.5], [1.0, -1.0]], [0.7, 1.1], [0.3, 0.7]
    closed = gaussian_mixture_cell_masses(means, stds, weights, grid.x_edges, grid.y_edges)

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        parts = [
            math.log(w) + gauss_log_prob(tuple(m), s)(x) for m, s, w in zip(means, stds, weights, strict=True)
        ]
        return torch.logsumexp(torch.stack(parts), dim=0)

    np.testing.assert_allclose(grid.masses(log_prob), closed, atol=1e-10)
    assert closed.sum() == pytest.approx(1.0, abs=1e-3)


def test_refinement_rescues_narrow_modes() -> None:
    # a mode 20x narrower than a cell: plain 6-point quadrature is badly off, refining is not
    grid = Grid2D.regular(-1.0, 1.0, 10)
    mean, std = (0.013, -0.031), 0.01
    closed = gaussian_mixture_cell_masses([mean], std, None, grid.x_edges, grid.y_edges)
    coarse = cell_masses(gauss_log_prob(mean, std), grid.x_edges, grid.y_edges)
    fine = cell_masses(gauss_log_prob(mean, std), grid.x_edges, grid.y_edges, refine=10)
    assert np.abs(coarse - closed).max() > 0.05
    np.testing.assert_allclose(fine, closed, atol=1e-6)


# ---------------------------------------------------------------------------------------
# KL on the grid
# ---------------------------------------------------------------------------------------
def test_kl_grid_values_and_zero_cells() -> None:
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.5, 0.25])
    assert kl_grid(p, q) == pytest.approx(0.5 * math.log(2), rel=1e-14)
    assert kl_grid(p, p) == 0.0
    assert kl_grid(p, np.array([0.5, 0.5, 0.0])) == 0.0  # P = 0 cells count 0 whatever Q is
    assert kl_grid(q, p) == math.inf  # Q = 0 where P > 0
    assert kl_grid(np.array([2.0, 2.0, 0.0]), 8 * q) == pytest.approx(kl_grid(p, q))  # counts
    rng = np.random.default_rng(0)
    for _ in range(20):  # Gibbs' inequality
        a, b = rng.dirichlet(np.ones(12)), rng.dirichlet(np.ones(12))
        assert kl_grid(a, b) > 0
    with pytest.raises(ValueError):
        kl_grid(p, q[:2])


def test_smoothed_masses_and_exact_null_mean() -> None:
    counts = np.array([[0, 3], [7, 0]])
    q = smoothed_masses(counts, 0.5)
    np.testing.assert_allclose(q, (counts + 0.5) / 12.0)
    assert q.sum() == pytest.approx(1.0)
    # E[KL(P ‖ add-½ histogram of n samples of P)] computed exactly vs simulated
    rng = np.random.default_rng(1)
    p = rng.dirichlet(0.3 * np.ones(200))
    n, reps = 500, 3000
    sims = np.array([kl_grid(p, smoothed_masses(rng.multinomial(n, p))) for _ in range(reps)])
    assert kl_grid_null_mean(p, n) == pytest.approx(sims.mean(), abs=3 * sims.std() / reps**0.5)


# ---------------------------------------------------------------------------------------
# convergence to a known density: a correlated bivariate Gaussian
# ---------------------------------------------------------------------------------------
RHO = 0.6


def bivariate_log_prob(x: torch.Tensor) -> torch.Tensor:
    a, b = x[:, 0], x[:, 1]
    q = (a**2 - 2 * RHO * a * b + b**2) / (1 - RHO**2)
    return -0.5 * q - math.log(2 * math.pi) - 0.5 * math.log(1 - RHO**2)


def bivariate_sample(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return torch.stack([z[:, 0], RHO * z[:, 0] + math.sqrt(1 - RHO**2) * z[:, 1]], dim=1)


def phi(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(t / math.sqrt(2)))


def test_counts_converge_to_exact_marginal_and_conditional() -> None:
    """p̂(x) → cell average of N(0, 1) and p̂(y|x) → cell average of N(ρx, 1 − ρ²).

    n(x) ~ Binomial(n, P_i) and, given n(x), n(x, y) ~ Binomial(n(x), P_{j|i}), so the
    standardized errors are ≈ N(0, 1) on cells with enough expected points (≥ 10); we
    require |z| < 5 on all of them, and the L1 errors must fall by about √10 per decade of n.
    """
    grid = Grid2D.regular(-5.0, 5.0, 20)
    P = cell_masses(bivariate_log_prob, grid.x_edges, grid.y_edges)  # exact, (20, 20)
    P_x = phi(grid.x_edges[1:]) - phi(grid.x_edges[:-1])  # closed-form marginal masses
    np.testing.assert_allclose(P.sum(axis=1), P_x, atol=1e-6)  # mass off the grid in y
    exact_px = P_x / grid.dx  # cell average of p(x)
    cond_mass = P / P.sum(axis=1, keepdims=True)  # P_{j|i}
    exact_cond = cond_mass / grid.dy  # cell average of p(y|x) over the strip

    l1_marginal, l1_conditional = [], []
    for k, n in enumerate([1_000, 10_000, 100_000]):
        c = grid.count(bivariate_sample(n, seed=10 + k))
        # marginal p(x)
        sd_px = np.sqrt(P_x * (1 - P_x) / n) / grid.dx
        ok = n * P_x >= 10
        z = (c.marginal_x() - exact_px) / sd_px
        assert np.abs(z[ok]).max() < 5, (n, np.abs(z[ok]).max())
        l1_marginal.append(np.sum(np.abs(c.marginal_x() - exact_px) * grid.dx))
        # conditional p(y|x)
        n_x = c.n_x[:, None]
        sd_cond = np.sqrt(cond_mass * (1 - cond_mass) / np.maximum(n_x, 1)) / grid.dy
        ok = (n_x * cond_mass >= 10) & (cond_mass < 1)
        zc = (c.conditional_y_given_x() - exact_cond) / sd_cond
        assert np.abs(zc[ok]).max() < 5, (n, np.abs(zc[ok]).max())
        weight = c.n_x / n  # average the strips' L1 errors by their share of points
        err = np.nansum(np.abs(c.conditional_y_given_x() - exact_cond) * grid.dy, axis=1)
        l1_conditional.append(float(np.sum(weight * err)))
    for errs in (l1_marginal, l1_conditional):
        ratios = [errs[0] / errs[1], errs[1] / errs[2]]
        assert all(1.8 < r < 5.5 for r in ratios), (errs, ratios)  # √10 ≈ 3.16
