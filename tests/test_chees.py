"""ChEES-HMC (Hoffman, Radul & Sountsov 2021): warm-up, correctness, efficiency against plain
HMC, reproducibility and robustness to a NaN region."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genmodels.samplers.chees import (
    CHEES_TARGET_ACCEPT,
    ChEESHMC,
    chees_gradient,
    halton,
    normalized_chees_gradient,
    run_chees_warmup,
)
from genmodels.samplers.diagnostics import ess
from genmodels.samplers.hmc import HMC

D, CHAINS, WARMUP, DRAWS = 50, 128, 600, 200
VARIANCES = torch.logspace(-2, 0, D, dtype=torch.float64)  # condition number 100


def gaussian_log_density(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x**2 / VARIANCES).sum(-1)


def run(kernel, state, num_draws: int, generator: torch.Generator):
    """Draws (chains, draws, d), acceptance (per step the harmonic mean over chains, which
    ChEES warm-up targets, averaged over steps), gradient evaluations spent."""
    draws, accept, grads = [], [], 0
    for _ in range(num_draws):
        state, info = kernel.step(state, generator)
        draws.append(state.position)
        accept.append(float(1.0 / (1.0 / info.acceptance_rate.double().clamp_min(1e-10)).mean()))
        grads += info.num_integration_steps if hasattr(info, "num_integration_steps") else kernel.num_steps
    return torch.stack(draws, 1), float(np.mean(accept)), grads


@pytest.fixture(scope="module")
def tuned():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(CHAINS, D, generator=generator, dtype=torch.float64)
    kernel, state = run_chees_warmup(x0, gaussian_log_density, WARMUP, generator)
    draws, accept, grads = run(kernel, state, DRAWS, generator)
    return kernel, state, draws, accept, grads, generator


def test_warmup_tunes_step_size_and_trajectory_length(tuned):
    kernel, _, _, accept, _, _ = tuned
    assert math.isfinite(kernel.step_size) and kernel.step_size > 0
    assert math.isfinite(kernel.trajectory_length)
    # With M⁻¹ ≈ Σ every whitened coordinate has angular frequency 1: a quarter period is
    # π/2 · (largest std = 1). The jittered ChEES optimum for a Gaussian is T ≈ 2.25.
    quarter = math.pi / 2 * float(VARIANCES.max().sqrt())
    assert 0.5 * quarter < kernel.trajectory_length < 3 * quarter
    assert kernel.inverse_mass_matrix is not None
    # Sampling runs at dual averaging's averaged ε̄, which accepts a little more than the
    # fluctuating warm-up iterates whose harmonic-mean acceptance was steered to the target.
    assert -0.1 < accept - CHEES_TARGET_ACCEPT < 0.15


def test_recovers_second_moments(tuned):
    _, _, draws, _, _, _ = tuned
    per_chain = (draws**2).mean(1)  # (chains, d): independent chains' averages
    mean = per_chain.mean(0)
    se = per_chain.std(0) / math.sqrt(CHAINS)
    assert torch.all((mean - VARIANCES).abs() < 4 * se), ((mean - VARIANCES) / se).abs().max()


def test_ess_per_gradient_not_worse_than_hmc10(tuned):
    kernel, state, draws, _, grads, generator = tuned
    ess_chees = float(np.min(ess((draws**2).numpy())))
    hmc = HMC(kernel.step_size, 10, kernel.inverse_mass_matrix)
    draws_hmc, _, grads_hmc = run(hmc, state, DRAWS, generator)
    ess_hmc = float(np.min(ess((draws_hmc**2).numpy())))
    per_grad, per_grad_hmc = ess_chees / grads, ess_hmc / grads_hmc
    # Both counted as gradient evaluations per chain (one batched call serves all chains).
    assert per_grad >= per_grad_hmc, (ess_chees, grads, ess_hmc, grads_hmc)


def test_reproducible_with_same_seed():
    def once():
        g = torch.Generator().manual_seed(123)
        x0 = torch.randn(16, 5, generator=g, dtype=torch.float64)
        kernel, state = run_chees_warmup(x0, lambda x: -0.5 * (x**2).sum(-1), 120, g, jitter="uniform")
        draws, _, _ = run(kernel, state, 20, g)
        return kernel, draws

    (k1, d1), (k2, d2) = once(), once()
    assert k1.step_size == k2.step_size and k1.trajectory_length == k2.trajectory_length
    assert torch.equal(k1.inverse_mass_matrix, k2.inverse_mass_matrix)
    assert torch.equal(d1, d2)


def nan_region_log_density(x: torch.Tensor) -> torch.Tensor:
    value = -0.5 * (x**2).sum(-1)
    return torch.where(x[:, 0] > 0.5, torch.full_like(value, math.nan), value)


def test_nan_region_is_rejected():
    g = torch.Generator().manual_seed(1)
    x0 = torch.zeros(64, 3, dtype=torch.float64)
    kernel = ChEESHMC(step_size=0.3, trajectory_length=2.0)
    state = kernel.init(x0, nan_region_log_density)
    saw_divergent = False
    for _ in range(30):
        state, info = kernel.step(state, g)
        assert torch.isfinite(state.position).all() and torch.isfinite(state.log_density).all()
        assert bool((state.position[:, 0] <= 0.5).all())
        assert bool((info.acceptance_rate[info.is_divergent] == 0).all())
        saw_divergent |= bool(info.is_divergent.any())
    assert saw_divergent
    tuned, state = run_chees_warmup(x0, nan_region_log_density, 150, g)
    assert math.isfinite(tuned.step_size) and math.isfinite(tuned.trajectory_length)
    assert torch.isfinite(state.position).all() and bool((state.position[:, 0] <= 0.5).all())


@pytest.mark.parametrize(("time", "sign"), [(1.0, 1.0), (2.5, -1.0)])
def test_criterion_gradient_sign(time, sign):
    # Standard normal, near-exact dynamics, no jitter: ChEES(t) ∝ sin² t, so
    # d/dlog t ∝ t sin 2t is > 0 at t = 1 and < 0 at t = 2.5.
    g = torch.Generator().manual_seed(2)
    eps = 0.05
    kernel = ChEESHMC(step_size=eps, trajectory_length=time)
    state = kernel.init(
        torch.randn(256, 10, generator=g, dtype=torch.float64), lambda x: -0.5 * (x**2).sum(-1)
    )
    grads = []
    for _ in range(10):
        tr = kernel._transition(state, g, 1.0)
        grads.append(
            chees_gradient(state.position, tr.proposal, tr.momentum, tr.info.acceptance_rate, tr.time)
        )
        state = tr.state
    assert sign * np.mean(grads) > 0


def test_halton_and_jittered_step_count():
    assert [halton(i) for i in range(1, 6)] == [0.5, 0.25, 0.75, 0.125, 0.625]
    kernel = ChEESHMC(step_size=0.1, trajectory_length=1.0, max_num_steps=5)
    assert kernel.num_integration_steps(1.0) == 5  # ⌈10⌉ capped at 5
    assert kernel.num_integration_steps(0.25) == 3
    assert kernel.num_integration_steps(1e-9) == 1
    with pytest.raises(ValueError):
        ChEESHMC(step_size=0.0, trajectory_length=1.0)
    with pytest.raises(TypeError):
        kernel.step(kernel.init(torch.zeros(2, 1), lambda x: -(x**2).sum(-1)), None)


def test_harmonic_mean_option_runs():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(32, 4, generator=g, dtype=torch.float64)
    kernel, _ = run_chees_warmup(x0, lambda x: -0.5 * (x**2).sum(-1), 100, g, acceptance_mean="harmonic")
    assert math.isfinite(kernel.step_size) and 0 < kernel.trajectory_length < math.inf


@pytest.mark.parametrize(("time", "sign"), [(1.0, 1.0), (2.5, -1.0)])
def test_normalized_criterion_gradient_sign(time, sign):
    # Standard normal as in test_criterion_gradient_sign: every coordinate's term has
    # d/dlog t ∝ t sin 2t, > 0 at t = 1 and < 0 at t = 2.5.
    g = torch.Generator().manual_seed(4)
    scales = torch.ones(10, dtype=torch.float64)
    kernel = ChEESHMC(step_size=0.05, trajectory_length=time)
    state = kernel.init(
        torch.randn(256, 10, generator=g, dtype=torch.float64) * scales,
        lambda x: -0.5 * (x**2 / scales**2).sum(-1),
    )
    grads = []
    for _ in range(10):
        tr = kernel._transition(state, g, 1.0)
        grads.append(
            normalized_chees_gradient(
                state.position, tr.proposal, tr.momentum, tr.info.acceptance_rate, tr.time
            )
        )
        state = tr.state
    assert sign * np.mean(grads) > 0


def test_per_chain_step_sizes_leave_the_target_invariant():
    # Fixed per-chain ε_m spanning 8× (L from their mean): every chain is a valid HMC chain,
    # so starting from exact draws the pooled second moments stay at their true values.
    g = torch.Generator().manual_seed(5)
    n = 256
    var = torch.logspace(-1, 0, 4, dtype=torch.float64)
    eps = torch.logspace(-1.5, -0.6, n, dtype=torch.float64)
    kernel = ChEESHMC(step_size=eps, trajectory_length=1.5, inverse_mass_matrix=var)
    assert kernel.num_integration_steps(1.0) == math.ceil(1.5 / float(eps.mean()))
    x0 = torch.randn(n, 4, generator=g, dtype=torch.float64) * var.sqrt()
    state = kernel.init(x0, lambda x: -0.5 * (x**2 / var).sum(-1))
    draws = []
    for _ in range(60):
        state, _ = kernel.step(state, g)
        draws.append(state.position)
    second = torch.stack(draws).pow(2).mean((0, 1)) / var
    assert torch.all((second - 1).abs() < 0.1), second
    with pytest.raises(ValueError):
        ChEESHMC(step_size=torch.tensor([0.1, -0.1]), trajectory_length=1.0)


@pytest.mark.parametrize(
    "options",
    [
        {"step_size_adaptation": "per_chain"},
        {"criterion": "normalized"},
        {"criterion": "chees_rate"},
    ],
    ids=lambda o: next(iter(o.values())),
)
def test_warmup_options_tune_a_gaussian(options):
    g = torch.Generator().manual_seed(6)
    x0 = torch.randn(64, 8, generator=g, dtype=torch.float64)
    var = torch.logspace(-1, 0, 8, dtype=torch.float64)
    kernel, state = run_chees_warmup(x0, lambda x: -0.5 * (x**2 / var).sum(-1), 300, g, **options)
    eps = kernel.step_size
    if options.get("step_size_adaptation") == "per_chain":
        assert isinstance(eps, torch.Tensor) and eps.shape == (64,) and bool((eps > 0).all())
    else:
        assert isinstance(eps, float) and eps > 0
    # Whitened, every coordinate has angular frequency ≈ 1: T of order a quarter period.
    assert 0.5 < kernel.trajectory_length < 6.0
    draws, _, _ = run(kernel, state, 30, g)
    assert torch.isfinite(draws).all()
    with pytest.raises(ValueError):
        run_chees_warmup(x0, lambda x: -0.5 * (x**2).sum(-1), 10, g, criterion="nope")
