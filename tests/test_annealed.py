"""Annealed Langevin over noise levels (NCSN) with the exact score of a noised mixture
reaches every mode with the right weights; plain Langevin from the same start does not."""

from __future__ import annotations

import pytest
import torch

from genmodels.distributions import GaussianMixture
from genmodels.evaluate import target_mode_metrics
from genmodels.samplers.annealed import annealed_langevin, geometric_sigmas


def _target() -> GaussianMixture:
    means = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    return GaussianMixture(means, stds=0.3, weights=torch.tensor([0.5, 0.3, 0.2]))


def _exact_score(target: GaussianMixture):
    return lambda x, sigma: target.convolve(sigma).score(x)


def test_annealing_finds_the_modes_with_their_weights() -> None:
    target = _target()
    n = 2000
    g = torch.Generator().manual_seed(0)
    sigmas = geometric_sigmas(8.0, 0.05, 12)
    x0 = float(sigmas[0]) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = annealed_langevin(_exact_score(target), x0, sigmas, g, steps_per_level=60, epsilon=5e-4, denoise=True)
    m = target_mode_metrics(x.float(), target)
    assert m.modes == 3 and m.hq_fraction > 0.95
    share = torch.tensor(m.hq_counts, dtype=torch.float64) / sum(m.hq_counts)
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    se = (w * (1 - w) / n).sqrt()
    assert bool(((share - w).abs() < 4 * se).all()), share

    # Plain Langevin at the last level only, from the same start, keeps the wrong weights:
    # chains stay in the basin they start in.
    plain = annealed_langevin(_exact_score(target), x0, sigmas[-1:], g, steps_per_level=720, epsilon=5e-4)
    m_plain = target_mode_metrics(plain.float(), target)
    share_plain = torch.tensor(m_plain.hq_counts, dtype=torch.float64) / max(sum(m_plain.hq_counts), 1)
    assert m_plain.hq_fraction < 0.95 or bool(((share_plain - w).abs() > 4 * se).any())


def test_sigmas_must_decrease() -> None:
    with pytest.raises(ValueError, match="decrease"):
        annealed_langevin(lambda x, s: -x, torch.zeros(3, 2), torch.tensor([0.1, 1.0]), torch.Generator())
