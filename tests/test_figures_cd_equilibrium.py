"""contrastive_divergence.gif, em_algorithm.gif, equilibrium.gif (tutorial §7.4–6): the math behind them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genmodels.figures.cd_em import (
    LocationMixture,
    cd_gradient,
    cd_surrogate,
    contrastive_divergence_vs_em,
    em_step,
    em_surrogate,
)
from genmodels.figures.equilibrium import equilibrium_sampling, kde, kde_on_grid, stationary_smoothing
from test_figures import check_gif

F64 = torch.float64


@pytest.fixture(scope="module")
def model() -> LocationMixture:
    g = torch.Generator().manual_seed(1)
    z = torch.randint(0, 2, (300,), generator=g).double() * 2 - 1
    return LocationMixture(0.3 + 1.3 * z + torch.randn(300, generator=g, dtype=F64), 1.3)


def test_closed_forms_match_finite_differences(model: LocationMixture) -> None:
    th = torch.tensor([-3.0, -1.0, 0.2, 2.5], dtype=F64)
    h = 1e-5
    fd = (model.loss(th + h) - model.loss(th - h)) / (2 * h)
    torch.testing.assert_close(model.grad(th), fd, rtol=0, atol=1e-8)
    fd2 = (model.grad(th + h) - model.grad(th - h)) / (2 * h)
    torch.testing.assert_close(model.curvature(th), fd2, rtol=0, atol=1e-7)
    # p_θ is a density: ∫ p_θ = 1
    xs = torch.linspace(-20, 20, 40001, dtype=F64)
    assert float(torch.trapezoid(torch.exp(model.log_prob(xs, 0.7)), xs)) == pytest.approx(1.0, abs=1e-10)


def test_em_surrogate_is_a_majorizer_minimised_by_the_m_step(model: LocationMixture) -> None:
    grid = torch.linspace(-6.0, 6.0, 4001, dtype=F64)
    loss = model.loss(grid)
    for theta_t in (-3.2, -1.0, 0.4, 2.0):
        c = em_surrogate(model, theta_t, grid)
        assert float((c - loss).min()) >= -1e-12  # above L everywhere
        assert float(em_surrogate(model, theta_t, theta_t)) == pytest.approx(
            float(model.loss(theta_t)), abs=1e-12
        )
        nxt = em_step(model, theta_t)
        assert float(grid[torch.argmin(c)]) == pytest.approx(nxt, abs=3e-3)  # the M-step minimises C
        # narrower than L: C is a quadratic of curvature 1 ≥ L″
        h = 1e-3
        c2 = (
            em_surrogate(model, theta_t, theta_t + h)
            - 2 * em_surrogate(model, theta_t, theta_t)
            + em_surrogate(model, theta_t, theta_t - h)
        ) / h**2
        assert float(c2) == pytest.approx(1.0, abs=1e-5)
    # EM decreases L monotonically and converges to the minimiser
    thetas = [-3.2]
    for _ in range(40):
        thetas.append(em_step(model, thetas[-1]))
    losses = model.loss(torch.tensor(thetas, dtype=F64))
    assert bool((losses[1:] <= losses[:-1] + 1e-13).all())
    assert thetas[-1] == pytest.approx(float(grid[torch.argmin(loss)]), abs=3e-3)
    assert abs(float(model.grad(thetas[-1]))) < 1e-6


def test_cd_surrogate_shares_the_slope_and_is_not_a_bound(model: LocationMixture) -> None:
    grid = torch.linspace(-6.0, 6.0, 12001, dtype=F64)
    loss = model.loss(grid)
    theta_hat = float(grid[torch.argmin(loss)])
    h = 1e-5
    for theta_t in (-3.2, -1.4, -0.5):
        slope = (
            cd_surrogate(model, theta_t, theta_t + h, 0.6) - cd_surrogate(model, theta_t, theta_t - h, 0.6)
        ) / (2 * h)
        fd_loss = (model.loss(theta_t + h) - model.loss(theta_t - h)) / (2 * h)
        assert float(slope) == pytest.approx(float(fd_loss), abs=1e-7)
        c = cd_surrogate(model, theta_t, grid, 0.6)
        assert float(cd_surrogate(model, theta_t, theta_t, 0.6)) == pytest.approx(
            float(model.loss(theta_t)), abs=1e-12
        )
        assert float((c - loss).min()) < -1e-3  # NOT an upper bound
        # the tutorial's picture: C's minimum lies below L's and beyond it
        assert float(c.min()) < float(loss.min()) and float(grid[torch.argmin(c)]) > theta_hat


def test_cd_learning_gradient_from_chains_matches_l_prime(model: LocationMixture) -> None:
    g = torch.Generator().manual_seed(0)
    for theta_t in (-2.5, -0.5):
        est, se = cd_gradient(model, theta_t, chains_per_point=10, steps=200, step_size=0.2, generator=g)
        assert abs(est - float(model.grad(theta_t))) < 4.5 * se
    # CD-1 from the data is biased toward zero (the chains have not left the data)
    est, se = cd_gradient(model, -2.5, chains_per_point=10, steps=1, step_size=0.2, generator=g)
    assert abs(est) < 0.5 * abs(float(model.grad(-2.5)))


def test_cd_em_figure(tmp_path: Path) -> None:
    lines: list[str] = []
    res = contrastive_divergence_vs_em(tmp_path, cd_chains_per_point=3, cd_steps=150, printer=lines.append)
    assert [p.name for p in res.paths] == ["contrastive_divergence.gif", "em_algorithm.gif"]
    for p in res.paths:
        check_gif(p, 4)
    em, cd = res.numbers["em"], res.numbers["cd"]
    for r in (em, cd):
        assert len(r["iterates"]) == 3 and r["iterates"][0] == -3.2
        assert r["losses"][0] > r["losses"][1] > r["losses"][2] > res.numbers["loss_min"]
        assert r["iterates"][2] < res.numbers["theta_hat"]  # approach from the left wall, no overshoot
    for g, gh, se in zip(cd["grad"], cd["cd_grad"], cd["cd_grad_se"], strict=True):
        assert abs(g - gh) < 4.5 * se
    for k in range(2):  # the CD iterates are gradient steps with the CD gradient
        assert cd["iterates"][k + 1] == pytest.approx(cd["iterates"][k] - 0.9 * cd["cd_grad"][k], abs=1e-12)
    assert any("EM iterates" in s for s in lines) and any("CD iterates" in s for s in lines)
    with pytest.raises(ValueError, match="cd_curvature_ratio"):
        contrastive_divergence_vs_em(tmp_path, cd_curvature_ratio=1.5, printer=None)


def test_kde_on_grid_matches_the_direct_sum() -> None:
    x = torch.randn(2000, generator=torch.Generator().manual_seed(2), dtype=F64)
    xs = torch.linspace(-6, 6, 2401, dtype=F64)
    torch.testing.assert_close(kde_on_grid(x, xs, 0.1), kde(x, xs, 0.1), rtol=0, atol=2e-5)


def test_stationary_smoothing_keeps_a_gaussian_mode() -> None:
    sigma, s, k = 0.2, 0.35 * 0.04, 2
    tau = stationary_smoothing(sigma, s, k)
    v = sigma**2 + tau**2
    assert (1 - s / sigma**2) ** (2 * k) * v + 2 * s * k == pytest.approx(v, rel=1e-12)


def test_equilibrium_squeezes_diffuses_and_has_pi_as_fixed_point(tmp_path: Path) -> None:
    lines: list[str] = []
    res = equilibrium_sampling(tmp_path, n_particles=6000, printer=lines.append)
    check_gif(res.paths[0], 4)
    assert res.paths[0].name == "equilibrium.gif"
    r = res.numbers
    ratio = torch.tensor(r["peak_ratio"])  # KDE / π_h at the 3 modes, per frame
    # relative sampling error of a KDE peak: ≈ 1/sqrt(n h p) with n h p ≳ 400 here → ≈ 5%
    assert bool((ratio[0] < 0.9).all())  # (1) smoothed, lower than π
    assert bool((ratio[1] > 1.05).all())  # (2) sharper than π: overshoot at every peak
    assert bool((ratio[2] > ratio[1] + 0.3).all())  # (3) spiky
    assert bool((ratio[3] < 0.9).all())  # (4) diffused back ...
    assert bool(((ratio[3] - ratio[0]).abs() < 0.1).all())  # ... to the start: the cycle is stationary
    # π is the fixed point: after the Langevin steps the KL is at the floor of exact samples
    assert r["kl_start"] > 20 * r["kl_floor"]
    assert r["kl_relaxed"] < r["kl_floor"] + 5 * r["kl_floor_sd"] + 0.5 * r["kl_floor"]
    assert any("fixed point" in s for s in lines)
    with pytest.raises(ValueError, match="squeeze"):
        equilibrium_sampling(tmp_path, squeeze=1.5, printer=None)
