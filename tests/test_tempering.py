"""Parallel tempering (tutorial §4): finds every mode of a well-separated mixture where
the same kernel without tempering, from the same start, stays in one."""

from __future__ import annotations

import pytest
import torch

from genmodels.distributions import GaussianMixture
from genmodels.evaluate import target_mode_metrics
from genmodels.samplers import MALA, sample_chain
from genmodels.samplers.tempering import ParallelTempering, geometric_ladder, tempered_f


def _four_modes() -> GaussianMixture:
    means = torch.tensor([[-3.0, -3.0], [-3.0, 3.0], [3.0, -3.0], [3.0, 3.0]], dtype=torch.float64)
    return GaussianMixture(means, stds=0.4)


def test_tempering_finds_every_mode_where_the_plain_kernel_stays_in_one() -> None:
    target = _four_modes()
    start = torch.tensor([[-3.0, -3.0]], dtype=torch.float64).repeat(128, 1)
    g = torch.Generator().manual_seed(0)

    plain = MALA(step_size=0.15)
    draws, _ = sample_chain(plain, plain.init(start, target.log_prob), 1500, g)
    assert target_mode_metrics(draws[-1].float(), target).modes == 1

    pt = ParallelTempering(MALA(step_size=0.15), geometric_ladder(12, 0.02))
    state = pt.init(start, tempered_f(target.log_prob))
    swap_rates = []
    for _ in range(1500):
        state, info = pt.step(state, g)
        swap_rates.append(info.swap_rate)
    metrics = target_mode_metrics(state.at_beta_one().float(), target)
    assert metrics.modes == 4
    # Equal weights: each mode's share of 128 chains is Binomial(128, 1/4), sd ≈ 4.9.
    counts = torch.tensor(metrics.hq_counts, dtype=torch.float64)
    assert bool(((counts - 32).abs() < 4 * 4.9).all()), counts
    assert bool((torch.stack(swap_rates).nanmean(0) > 0.2).all())


def test_swaps_keep_each_temperature_at_its_own_distribution() -> None:
    """Started from exact samples of every π_β of a Gaussian (where π_β is Gaussian with
    known variance 1/(1 + β(1/σ² − 1)) per coordinate), tempering leaves each unchanged."""
    sigma2 = 0.25
    log_pi = lambda x: -0.5 * (x**2).sum(-1) / sigma2  # noqa: E731  (normalizing constant irrelevant)
    betas = geometric_ladder(5, 0.1)
    var = 1.0 / (1.0 + betas * (1.0 / sigma2 - 1.0))
    g = torch.Generator().manual_seed(3)
    n = 4000
    start = torch.randn(len(betas), n, 1, generator=g, dtype=torch.float64) * var.sqrt()[:, None, None]
    pt = ParallelTempering(MALA(step_size=0.3), betas)
    state = pt.init(start, tempered_f(log_pi))
    for _ in range(30):
        state, _ = pt.step(state, g)
    x = state.positions()[..., 0]
    est = (x**2).mean(1)
    se = var * (2.0 / n) ** 0.5  # sd of the mean of χ²₁·var over n draws
    assert bool(((est - var).abs() < 4 * se).all()), (est, var)


def test_bad_ladders_are_refused() -> None:
    with pytest.raises(ValueError, match="increasing"):
        ParallelTempering(MALA(step_size=0.1), [0.5, 0.2, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ParallelTempering(MALA(step_size=0.1), [0.5, 1.5])
