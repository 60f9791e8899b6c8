"""Grid quadrature of log Z and grid sampling (genmodels.quadrature)."""

from __future__ import annotations

import math

import pytest
import torch

from genmodels.distributions import GaussianMixture
from genmodels.quadrature import grid_log_partition, grid_sample


def _scaled_mixture(log_scale: float):
    mix = GaussianMixture([[-1.0, 0.5], [1.2, -0.3]], stds=[0.3, 0.5], weights=[0.3, 0.7])
    return mix, (lambda x: mix.log_prob(x.double()) + log_scale)


@pytest.mark.parametrize("log_scale", [0.0, 3.7])
def test_grid_log_z_of_a_scaled_mixture(log_scale):
    _, fn = _scaled_mixture(log_scale)
    res = grid_log_partition(fn, (-3.0, -3.0), (3.0, 3.0), n=200, dtype=torch.float64)
    assert abs(res.value - log_scale) <= res.error < 1e-3  # the reported error bounds the real one
    wide = grid_log_partition(fn, (-5.0, -5.0), (5.0, 5.0), n=300, dtype=torch.float64)
    assert abs(wide.value - log_scale) < 1e-8 and wide.tail < 1e-12


def test_grid_error_reports_mass_outside_a_small_box():
    """A box that cuts the density: the outer ring recovers the mass, the error says so."""
    _, fn = _scaled_mixture(0.0)
    res = grid_log_partition(fn, (-1.0, -1.0), (1.0, 1.0), n=200, dtype=torch.float64)
    assert res.tail > 0.05
    assert abs(res.value) <= res.error  # the true log Z is 0


def test_grid_log_z_in_one_dimension():
    fn = lambda x: -0.5 * (x[:, 0] / 0.7) ** 2  # noqa: E731  ∫ = 0.7 √(2π)
    res = grid_log_partition(fn, (-4.0,), (4.0,), n=200, dtype=torch.float64)
    assert abs(res.value - math.log(0.7 * math.sqrt(2 * math.pi))) < 1e-6


def test_grid_rejects_three_dimensions_and_nan():
    with pytest.raises(ValueError, match="1 or 2 dimensions"):
        grid_log_partition(lambda x: x.sum(-1), (0, 0, 0), (1, 1, 1))
    with pytest.raises(FloatingPointError, match="NaN"):
        grid_log_partition(lambda x: x.sum(-1) * float("nan"), (0, 0), (1, 1), n=8)


def test_grid_samples_have_the_mixture_moments():
    mix, fn = _scaled_mixture(1.0)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    x = grid_sample(fn, (-3.0, -3.0), (3.0, 3.0), n, n=300, generator=g, dtype=torch.float64)
    ref = mix.sample(200_000, generator=torch.Generator().manual_seed(1)).double()
    se = ref.std(0) / math.sqrt(n)
    assert ((x.mean(0) - ref.mean(0)).abs() < 4 * se).all()
    # and a shifted density is caught
    y = grid_sample(
        lambda z: fn(z - 0.05), (-3.0, -3.0), (3.0, 3.0), n, n=300, generator=g, dtype=torch.float64
    )
    assert ((y.mean(0) - ref.mean(0)).abs() > 4 * se).any()
