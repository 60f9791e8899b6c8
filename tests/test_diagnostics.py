"""MCMC diagnostics (Vehtari et al. 2021): R̂, bulk/tail ESS and MCSE against known answers.

Replicates are run as extra dimensions: an (M, N, R) array is R independent (M, N) problems, and
every diagnostic is computed per dimension, so one call covers all seeds.
"""

from __future__ import annotations

import doctest
import importlib.util
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

import genmodels.samplers.diagnostics as diagnostics
from genmodels.samplers.diagnostics import (
    ess,
    ess_bulk,
    ess_tail,
    mcse_mean,
    rank_normalized_rhat,
    split_rhat,
    summarize,
    summary,
)


def ar1(rho: float, chains: int, draws: int, reps: int, seed: int) -> np.ndarray:
    """Stationary AR(1), x_t = ρ x_{t−1} + √(1−ρ²) e_t with x_0 ~ N(0, 1); shape (chains, draws, reps)."""
    e = np.random.default_rng(seed).standard_normal((chains, reps, draws))
    c = math.sqrt(1.0 - rho**2)
    e[..., 0] /= c  # so that x_0 = c · e_0 / c = e_0 ~ N(0, 1), the stationary law
    x = lfilter([c], [1.0, -rho], e, axis=-1)
    return np.moveaxis(x, 1, 2)


def assert_mean_ratio(values: np.ndarray, target: float, rel: float = 0.10) -> None:
    """Mean of per-seed estimates within ``rel`` of ``target``; the band must exceed 3 standard errors
    of that mean, so the check is neither flaky by construction nor vacuous about the estimator's noise.
    """
    ratio = np.asarray(values) / target
    se = ratio.std(ddof=1) / math.sqrt(ratio.size)
    assert 3 * se < rel, f"too few seeds: standard error {se:.3f} of the mean ratio"
    assert abs(ratio.mean() - 1.0) < rel, f"mean ratio {ratio.mean():.3f} (se {se:.3f})"


def test_doctests() -> None:
    result = doctest.testmod(diagnostics)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------------------------
# Independent draws: R̂ ≈ 1, ESS ≈ S
# ----------------------------------------------------------------------------------------------


def test_iid_rhat_near_one() -> None:
    x = np.random.default_rng(0).standard_normal((4, 1000, 20))
    for rhat in (split_rhat(x), rank_normalized_rhat(x)):
        assert rhat.shape == (20,)
        assert np.all(np.abs(rhat - 1.0) < 0.01)


@pytest.mark.parametrize("estimator", [ess, ess_bulk, ess_tail])
def test_iid_ess_near_number_of_draws(estimator) -> None:
    x = np.random.default_rng(1).standard_normal((4, 1000, 40))
    assert_mean_ratio(estimator(x), 4000.0)


def test_ess_bulk_heavy_tails() -> None:
    """Rank normalization makes the bulk-ESS of independent Cauchy draws ≈ S (its mean does not exist)."""
    x = np.random.default_rng(2).standard_cauchy((4, 1000, 40))
    assert_mean_ratio(ess_bulk(x), 4000.0)


def test_rank_invariance() -> None:
    """Bulk-ESS and the rank-normalized (unfolded) R̂ are invariant under a monotone map; plain ESS is not."""
    x = ar1(0.7, 4, 500, 5, seed=3)
    np.testing.assert_allclose(ess_bulk(np.exp(x)), ess_bulk(x), rtol=1e-12)
    assert not np.allclose(ess(np.exp(x)), ess(x), rtol=1e-3)


# ----------------------------------------------------------------------------------------------
# AR(1): ESS = S (1 − ρ)/(1 + ρ), MCSE = √(τ/S)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.5, 0.9])
@pytest.mark.parametrize("estimator", [ess, ess_bulk])
def test_ar1_ess_matches_analytic(rho: float, estimator) -> None:
    chains, draws = 4, 2000
    x = ar1(rho, chains, draws, reps=50, seed=int(10 * rho))
    assert_mean_ratio(estimator(x), chains * draws * (1 - rho) / (1 + rho))


def test_ar1_mcse_matches_spread_of_means() -> None:
    """MCSE of the mean ≈ its analytic sd √(τ/S), τ = (1+ρ)/(1−ρ), and ≈ the sd of the means over seeds."""
    rho, chains, draws, reps = 0.5, 4, 1000, 200
    x = ar1(rho, chains, draws, reps, seed=4)
    analytic = math.sqrt((1 + rho) / (1 - rho) / (chains * draws))
    assert_mean_ratio(mcse_mean(x), analytic)
    spread = x.mean(axis=(0, 1)).std(ddof=1)  # relative standard error 1/√(2·199) ≈ 5 %
    assert abs(spread / analytic - 1.0) < 0.15


def test_geyer_truncation_on_a_known_sequence() -> None:
    """P̂ = (1.5, 0.2, 0.4, −0.9, 0.8): stop before −0.9, and the 0.4 is lowered to the running min 0.2."""
    rho = np.array([[1.0, 0.5, 0.15, 0.05, 0.3, 0.1, -0.5, -0.4, 0.4, 0.4]])
    assert diagnostics._geyer_tau(rho)[0] == pytest.approx(-1.0 + 2.0 * (1.5 + 0.2 + 0.2))


def test_antithetic_chain_ess_capped() -> None:
    """AR(1) with ρ = −0.9 has ESS = 19·S; the estimate is capped at S·log₁₀(S), as in Stan."""
    x = ar1(-0.9, 4, 1000, 5, seed=13)
    s = 4000
    np.testing.assert_allclose(ess(x), s * math.log10(s), rtol=1e-12)


def test_autocovariance_fft_matches_direct_sum() -> None:
    a = np.random.default_rng(5).standard_normal((2, 3, 37))
    got = diagnostics._autocov_fft(a)
    c = a - a.mean(axis=-1, keepdims=True)
    n = a.shape[-1]
    want = np.stack([(c[..., : n - t] * c[..., t:]).sum(-1) / n for t in range(n)], axis=-1)
    np.testing.assert_allclose(got, want, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Non-convergence is flagged
# ----------------------------------------------------------------------------------------------


def test_shifted_chain_gives_large_rhat() -> None:
    x = np.random.default_rng(6).standard_normal((4, 1000, 10))
    x[0] += 1.0  # one chain one sd off
    assert np.all(split_rhat(x) > 1.05)
    assert np.all(rank_normalized_rhat(x) > 1.05)
    # The between-chain variance enters ρ̂_t (eq. 10) as a persistent correlation, so the ESS collapses.
    assert np.all(ess(x) < 0.05 * 4000) and np.all(ess_bulk(x) < 0.05 * 4000)


def test_trend_within_chains_needs_splitting() -> None:
    """Every chain drifts from mean 0 to mean 1 halfway: the chains agree with each other, so only the
    split (first half vs second half) reveals it."""
    x = np.random.default_rng(7).standard_normal((4, 1000, 10))
    x[:, 500:] += 1.0
    unsplit = np.sqrt(  # eqs. 1-4 without splitting
        ((999 / 1000) * x.var(axis=1, ddof=1).mean(0) + x.mean(axis=1).var(axis=0, ddof=1))
        / x.var(axis=1, ddof=1).mean(0)
    )
    assert np.all(unsplit < 1.01)
    assert np.all(split_rhat(x) > 1.05)
    assert np.all(rank_normalized_rhat(x) > 1.05)


def test_different_scales_flagged_only_by_folding() -> None:
    x = np.random.default_rng(8).standard_normal((4, 1000, 10))
    x[0] *= 3.0  # same mean, three times the sd
    assert np.all(split_rhat(x) < 1.01)
    assert np.all(rank_normalized_rhat(x) > 1.05)


def test_stuck_in_tail_lowers_tail_ess() -> None:
    """Independent N(0, 1) draws, except that each chain once sits at x = −2 (a rejected move in the
    lower tail) for 50 draws (2.5 % of the time): R̂ stays ≈ 1, bulk-ESS drops moderately, tail-ESS a lot."""
    rng = np.random.default_rng(9)
    chains, draws, reps, stretch = 4, 2000, 20, 50
    x = rng.standard_normal((chains, draws, reps))
    starts = rng.integers(0, draws - stretch, size=(chains, reps))
    for m in range(chains):
        for r in range(reps):
            x[m, starts[m, r] : starts[m, r] + stretch, r] = -2.0
    bulk, tail = ess_bulk(x), ess_tail(x)
    assert np.all(rank_normalized_rhat(x) < 1.02)
    assert np.all(bulk > 0.1 * chains * draws)
    assert np.all(tail < 0.4 * bulk)


# ----------------------------------------------------------------------------------------------
# Inputs, edge cases, summary
# ----------------------------------------------------------------------------------------------


def test_torch_and_per_dimension_inputs_agree() -> None:
    x = np.random.default_rng(10).standard_normal((3, 401, 2))  # odd draws: the middle one is dropped
    for f in (split_rhat, rank_normalized_rhat, ess, ess_bulk, ess_tail, mcse_mean):
        both = f(torch.from_numpy(x).float())
        assert isinstance(both, np.ndarray) and both.shape == (2,)
        for j in range(2):
            one = f(x[..., j])
            assert isinstance(one, float)
            assert one == pytest.approx(float(both[j]), rel=1e-5)


def test_constant_and_bad_shapes() -> None:
    assert math.isnan(split_rhat(np.ones((4, 100))))
    assert math.isnan(ess(np.ones((4, 100))))
    with pytest.raises(ValueError):
        split_rhat(np.zeros(10))
    with pytest.raises(ValueError):
        ess(np.zeros((2, 3)))


def test_summarize_and_summary() -> None:
    x = np.random.default_rng(11).standard_normal((4, 500, 2))
    x[..., 1] += 3.0
    accept = torch.full((500, 4), 0.75)
    divergent = torch.zeros(500, 4, dtype=torch.bool)
    divergent[10, 2] = divergent[20, 0] = True
    info = {"accept_prob": accept, "divergent": divergent}
    s = summarize(x, names=["a", "b"], info=info)
    assert s["names"] == ["a", "b"] and s["num_chains"] == 4 and s["num_draws"] == 500
    np.testing.assert_allclose(s["mean"], x.reshape(-1, 2).mean(0))
    np.testing.assert_allclose(s["sd"], x.reshape(-1, 2).std(0, ddof=1))
    np.testing.assert_allclose(s["q5"], np.quantile(x.reshape(-1, 2), 0.05, axis=0))
    np.testing.assert_allclose(s["mcse_mean"], mcse_mean(x))
    np.testing.assert_allclose(s["ess_bulk"], ess_bulk(x))
    np.testing.assert_allclose(s["ess_tail"], ess_tail(x))
    np.testing.assert_allclose(s["rhat"], rank_normalized_rhat(x))
    assert s["accept_rate"] == pytest.approx(0.75)
    assert s["accept_rate_per_chain"].shape == (4,)
    assert s["num_divergent"] == 2
    text = summary(x, names=["a", "b"], info=info)
    lines = text.splitlines()
    assert lines[0].split() == ["mean", "sd", "mcse", "q5", "q95", "ess_bulk", "ess_tail", "r_hat"]
    assert lines[1].startswith("a") and lines[2].startswith("b")
    assert "acceptance 0.750" in lines[-1] and "2 divergent" in lines[-1]

    @dataclass(frozen=True)
    class StackedInfo:  # the kernels' per-step Info, stacked over draws: (draws, chains)
        acceptance_rate: torch.Tensor
        is_accepted: torch.Tensor
        is_divergent: torch.Tensor

    stacked = summarize(x, info=StackedInfo(accept, accept > 0.5, divergent))
    assert stacked["accept_rate"] == pytest.approx(0.75) and stacked["num_divergent"] == 2

    @dataclass(frozen=True)
    class ChainSummary:  # per-chain means and counts: (chains,)
        acceptance_rate: torch.Tensor
        num_divergent: torch.Tensor

    per_chain = summarize(
        x, info=ChainSummary(torch.tensor([0.7, 0.8, 0.9, 0.6]), torch.tensor([1, 0, 3, 0]))
    )
    assert per_chain["accept_rate"] == pytest.approx(0.75) and per_chain["num_divergent"] == 4
    np.testing.assert_allclose(per_chain["accept_rate_per_chain"], [0.7, 0.8, 0.9, 0.6], rtol=1e-6)
    plain = summary(x[..., 0])
    assert plain.splitlines()[1].startswith("x ") and "acceptance" not in plain


@pytest.mark.skipif(importlib.util.find_spec("arviz") is None, reason="arviz is not installed")
def test_matches_arviz() -> None:  # pragma: no cover - only where arviz happens to be installed
    import arviz as az

    x = ar1(0.6, 4, 1000, 1, seed=12)[..., 0]
    assert ess_bulk(x) == pytest.approx(float(az.ess(x, method="bulk")), rel=0.02)
    assert ess_tail(x) == pytest.approx(float(az.ess(x, method="tail")), rel=0.02)
    assert rank_normalized_rhat(x) == pytest.approx(float(az.rhat(x, method="rank")), rel=1e-3)
