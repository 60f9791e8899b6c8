"""MCMC kernels: exact integrator identities first, then statistics of known targets with
tolerances derived from the sampling error (chains are independent, so the spread of the
per-chain averages across chains gives an honest standard error)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genmodels.distributions import GaussianMixture
from genmodels.samplers import (
    HMC,
    MALA,
    DualAveraging,
    Langevin,
    State,
    kinetic_energy,
    leapfrog,
    run_warmup,
    sample_chain,
    value_and_grad,
)

K_SIGMA = 4.0  # tolerance = K_SIGMA standard errors


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _std_normal(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x**2).sum(-1)


def _correlated_gaussian() -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    """A 5-D Gaussian with mean μ and covariance Q diag(0.25 … 4) Qᵀ (condition number 16)."""
    d = 5
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(123), dtype=torch.float64))
    cov = q @ torch.diag(torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)) @ q.T
    mean = torch.tensor([1.0, -0.5, 0.0, 2.0, 0.5], dtype=torch.float64)
    return GaussianMixture(mean[None], covariances=cov[None]), mean, cov


def _assert_within(estimate: torch.Tensor, truth: torch.Tensor, stderr: torch.Tensor, what: str) -> None:
    z = ((estimate - truth) / stderr).abs()
    assert bool((z < K_SIGMA).all()), f"{what}: |z| = {z.tolist()} (estimate {estimate.tolist()})"


def _check_moments(draws: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> None:
    """draws (T, n_chains, d). Per-chain averages of x and (x − μ)² are independent across chains,
    so their cross-chain sd / √n_chains is the standard error of the grand average."""
    n_chains = draws.shape[1]
    m_chain = draws.mean(0)  # (n, d)
    v_chain = ((draws - mean) ** 2).mean(0)
    _assert_within(m_chain.mean(0), mean, m_chain.std(0) / math.sqrt(n_chains), "mean")
    _assert_within(v_chain.mean(0), cov.diagonal(), v_chain.std(0) / math.sqrt(n_chains), "variance")


# -- leapfrog: exact properties ------------------------------------------------------------


def _oscillator(x0: float, p0: float, eps: float, n: int) -> tuple[float, float]:
    x = torch.tensor([[x0]], dtype=torch.float64)
    p = torch.tensor([[p0]], dtype=torch.float64)
    _, g = value_and_grad(_std_normal, x)
    x1, p1, _, _ = leapfrog(x, p, g, eps, n, _std_normal)
    return float(x1), float(p1)


def test_leapfrog_is_second_order_on_the_harmonic_oscillator() -> None:
    # log π = −x²/2, unit mass: x(t) = x₀ cos t + p₀ sin t, p(t) = −x₀ sin t + p₀ cos t.
    x0, p0, T = 1.0, 0.5, 1.0
    exact = (x0 * math.cos(T) + p0 * math.sin(T), -x0 * math.sin(T) + p0 * math.cos(T))
    errors = []
    for eps in (0.1, 0.05, 0.025):
        x, p = _oscillator(x0, p0, eps, round(T / eps))
        errors.append(math.hypot(x - exact[0], p - exact[1]))
    for coarse, fine in itertools.pairwise(errors):
        assert 3.6 < coarse / fine < 4.4, errors


def test_leapfrog_energy_error_is_bounded_and_scales_as_eps_squared() -> None:
    def max_energy_error(eps: float, T: float = 100.0) -> tuple[float, float]:
        x = torch.tensor([[1.0]], dtype=torch.float64)
        p = torch.tensor([[0.5]], dtype=torch.float64)
        logp, g = value_and_grad(_std_normal, x)
        h0 = float(-logp + kinetic_energy(p))
        errs = []
        for _ in range(round(T / eps)):
            x, p, logp, g = leapfrog(x, p, g, eps, 1, _std_normal)
            errs.append(abs(float(-logp + kinetic_energy(p)) - h0))
        half = len(errs) // 2
        return max(errs[:half]), max(errs[half:])

    early, late = max_energy_error(0.2)
    assert late < 1.05 * early  # no drift over 500 steps: the error oscillates, bounded
    assert early < 0.2**2  # bounded by O(ε²)
    early_fine, _ = max_energy_error(0.1)
    assert 3.6 < early / early_fine < 4.4


@pytest.mark.parametrize("mass", ["identity", "diagonal", "dense"])
def test_leapfrog_is_reversible(mass: str) -> None:
    target = GaussianMixture([[-1.0, 0.0], [1.5, 1.0]], stds=[0.7, 1.2])
    inverse_mass = {
        "identity": None,
        "diagonal": torch.tensor([0.5, 2.0], dtype=torch.float64),
        "dense": torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64),
    }[mass]
    g = _gen(0)
    x0 = torch.randn(16, 2, generator=g, dtype=torch.float64)
    p0 = torch.randn(16, 2, generator=g, dtype=torch.float64)
    _, g0 = value_and_grad(target.log_prob, x0)
    x1, p1, _, g1 = leapfrog(x0, p0, g0, 0.1, 50, target.log_prob, inverse_mass)
    x2, p2, _, _ = leapfrog(x1, -p1, g1, 0.1, 50, target.log_prob, inverse_mass)
    assert torch.allclose(x2, x0, atol=1e-10, rtol=0) and torch.allclose(-p2, p0, atol=1e-10, rtol=0)


# -- statistics: kernels recover known targets ---------------------------------------------


def test_mala_recovers_a_correlated_gaussian() -> None:
    target, mean, cov = _correlated_gaussian()
    g = _gen(1)
    x0 = torch.randn(512, 5, generator=g, dtype=torch.float64)
    warm = run_warmup(lambda eps, _m: MALA(eps), x0, target.log_prob, 300, g, 0.574, adapt_mass=False)
    draws, summary = sample_chain(MALA(warm.step_size), warm.state, 200, g)
    assert abs(float(summary.acceptance_rate.mean()) - 0.574) < 0.05  # dual averaging hit its target
    _check_moments(draws, mean, cov)


def test_hmc_with_warmup_recovers_a_correlated_gaussian() -> None:
    target, mean, cov = _correlated_gaussian()
    g = _gen(2)
    x0 = torch.randn(512, 5, generator=g, dtype=torch.float64)
    warm = run_warmup(lambda eps, m: HMC(eps, 5, m), x0, target.log_prob, 300, g, 0.8)
    # the adapted inverse mass is the (regularized) marginal variance of each coordinate
    assert torch.allclose(warm.inverse_mass, cov.diagonal(), rtol=0.1)
    kernel = HMC(warm.step_size, 5, warm.inverse_mass)
    draws, summary = sample_chain(kernel, warm.state, 100, g)
    # With a fixed trajectory length the acceptance is not monotone in ε on this ill-conditioned
    # target (leapfrog's stability limit ε < 2σ_min is close), so the averaged ε̄ lands on the
    # safe side of δ = 0.8 (as in Stan); the ±0.05 check is on a well-conditioned target below.
    assert float(summary.acceptance_rate.mean()) > 0.75
    assert int(summary.num_divergent.sum()) == 0
    _check_moments(draws, mean, cov)


@pytest.mark.parametrize("mass", ["identity", "dense"])
def test_hmc_leaves_a_bimodal_mixture_invariant(mass: str) -> None:
    # Stationarity: start from exact draws; after K steps the law must be unchanged. The modes
    # overlap enough that chains cross between them, so a wrong kernel would move the weights.
    target = GaussianMixture([[-1.5], [1.5]], stds=[0.8, 1.0], weights=[0.3, 0.7])
    inverse_mass = None if mass == "identity" else torch.tensor([[2.0]], dtype=torch.float64)
    g = _gen(3)
    n = 4000
    x = target.sample(n, generator=g).double()
    kernel = HMC(0.4, 5, inverse_mass)
    _, summary = sample_chain(kernel, kernel.init(x, target.log_prob), 1, g, thin=20)
    y = summary.state.position[:, 0]
    assert float(summary.acceptance_rate.mean()) > 0.5
    left = (y < 0).double()
    w = target.weights
    mu = (w * target.means[:, 0]).sum()
    second = (w * (target.means[:, 0] ** 2 + target.covariances[:, 0, 0])).sum()
    sd = target.covariances[:, 0, 0].sqrt()
    p_left = float((w * 0.5 * torch.erfc(target.means[:, 0] / (sd * math.sqrt(2)))).sum())  # P(x < 0)
    for stat, truth in ((left, p_left), (y, float(mu)), (y**2, float(second))):
        _assert_within(stat.mean(), torch.tensor(truth), stat.std() / math.sqrt(n), "mixture moment")


def test_unadjusted_langevin_has_the_predicted_bias_and_mala_removes_it() -> None:
    # On N(0, 1): x' = (1 − Δt/2) x + √Δt e  ⇒  v = (1 − Δt/2)² v + Δt  ⇒  v = 1 / (1 − Δt/4).
    dt = 0.5
    v_ula = 1.0 / (1.0 - dt / 4.0)
    g = _gen(4)
    x0 = torch.randn(2000, 1, generator=g, dtype=torch.float64)
    for kernel, truth in ((Langevin(dt), v_ula), (MALA(dt), 1.0)):
        state = kernel.init(x0, _std_normal)
        _, burn = sample_chain(kernel, state, 1, g, thin=50)
        draws, _ = sample_chain(kernel, burn.state, 200, g)
        v_chain = (draws[..., 0] ** 2).mean(0)
        estimate, stderr = v_chain.mean(), v_chain.std() / math.sqrt(v_chain.numel())
        _assert_within(estimate, torch.tensor(truth), stderr, type(kernel).__name__)
        other = 1.0 if truth == v_ula else v_ula
        assert abs(float(estimate) - other) > K_SIGMA * float(stderr)  # the bias is resolved


def test_warmup_reaches_the_target_acceptance_of_hmc() -> None:
    std = torch.linspace(0.5, 2.0, 10, dtype=torch.float64)

    def log_density(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((x / std) ** 2).sum(-1)

    g = _gen(6)
    x0 = torch.randn(512, 10, generator=g, dtype=torch.float64)
    warm = run_warmup(lambda eps, m: HMC(eps, 5, m), x0, log_density, 300, g, 0.8)
    _, summary = sample_chain(HMC(warm.step_size, 5, warm.inverse_mass), warm.state, 50, g)
    assert abs(float(summary.acceptance_rate.mean()) - 0.8) < 0.05


def test_dual_averaging_converges_on_a_known_acceptance_curve() -> None:
    # α(ε) = exp(−ε) deterministically: the fixed point is ε* = −log δ.
    adapter = DualAveraging(target_accept=0.8)
    state = adapter.init(1.0)
    for _ in range(2000):
        state = adapter.update(state, math.exp(-state.step_size))
    assert abs(math.exp(-state.final_step_size) - 0.8) < 0.01
    assert state.t == 2000


# -- robustness and the functional contract ------------------------------------------------


def _nan_right_of_one(x: torch.Tensor) -> torch.Tensor:
    logp = _std_normal(x)
    return torch.where(x[:, 0] > 1.0, torch.full_like(logp, math.nan), logp)


@pytest.mark.parametrize("kernel", [Langevin(0.5), MALA(0.5), HMC(0.3, 5)], ids=lambda k: type(k).__name__)
def test_nan_log_density_is_a_divergent_rejection(kernel) -> None:
    g = _gen(5)
    state = kernel.init(torch.full((256, 2), 0.8, dtype=torch.float64), _nan_right_of_one)
    divergent = 0
    for _ in range(30):
        state, info = kernel.step(state, g)
        divergent += int(info.is_divergent.sum())
        assert not bool((info.is_divergent & info.is_accepted).any())
        assert bool(torch.isfinite(state.position).all() & torch.isfinite(state.log_density).all())
        assert bool((state.position[:, 0] <= 1.0).all())
    assert divergent > 0


@pytest.mark.parametrize(
    "make", [lambda: Langevin(0.3), lambda: MALA(0.3), lambda: HMC(0.2, 4, torch.tensor([1.0, 0.5]))]
)
def test_same_seed_same_chains_and_global_rng_untouched(make) -> None:
    target = GaussianMixture([[-1.0, 0.0], [1.5, 1.0]], stds=[0.7, 1.2])
    x0 = torch.zeros(32, 2)
    global_before = torch.get_rng_state()

    def run(seed: int) -> torch.Tensor:
        kernel = make()
        draws, _ = sample_chain(kernel, kernel.init(x0, target.log_prob), 20, _gen(seed))
        return draws

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), global_before)


def test_step_does_not_mutate_its_inputs_and_needs_a_generator() -> None:
    kernel = HMC(0.3, 3)
    state = kernel.init(torch.randn(8, 3, generator=_gen(9)), _std_normal)
    snapshot = State(state.position.clone(), state.log_density.clone(), state.grad.clone(), _std_normal)
    new_state, _ = kernel.step(state, _gen(0))
    assert new_state is not state
    for field in ("position", "log_density", "grad"):
        assert torch.equal(getattr(state, field), getattr(snapshot, field))
    with pytest.raises(TypeError, match="Generator"):
        kernel.step(state, None)


def _banana(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x[:, 0] / 2) ** 2 - 0.5 * (x[:, 1] - 0.5 * x[:, 0] ** 2) ** 2


def test_leapfrog_per_chain_step_sizes_match_scalar_ones() -> None:
    g = _gen(11)
    x, p = (
        torch.randn(6, 2, generator=g, dtype=torch.float64),
        torch.randn(6, 2, generator=g, dtype=torch.float64),
    )
    _, g0 = value_and_grad(_banana, x)
    eps = torch.tensor([0.05, 0.1, 0.2, 0.05, 0.1, 0.2], dtype=torch.float64)
    x1, p1, v1, g1 = leapfrog(x, p, g0, eps, 7, _banana)
    for m, e in enumerate(eps.tolist()):
        xs, ps, vs, gs = leapfrog(x[m : m + 1], p[m : m + 1], g0[m : m + 1], e, 7, _banana)
        torch.testing.assert_close(torch.cat([x1[m], p1[m], g1[m]]), torch.cat([xs[0], ps[0], gs[0]]))
        torch.testing.assert_close(v1[m], vs[0])


def test_compiled_log_density_matches_eager_and_counts_as_a_log_density() -> None:
    from genmodels.samplers.hmc import CompiledLogDensity

    x = torch.randn(16, 2, generator=_gen(12), dtype=torch.float64)
    f = CompiledLogDensity(_banana)
    torch.testing.assert_close(f(x), _banana(x))
    value, grad = f.value_and_grad(x)
    v_ref, g_ref = value_and_grad(_banana, x)
    torch.testing.assert_close(value, v_ref)
    torch.testing.assert_close(grad, g_ref)
    # leapfrog uses the log-density's own value_and_grad: same trajectory as eager
    p = torch.randn(16, 2, generator=_gen(13), dtype=torch.float64)
    a = leapfrog(x, p, g_ref, 0.1, 5, f)
    b = leapfrog(x, p, g_ref, 0.1, 5, _banana)
    for u, w in zip(a, b, strict=True):
        torch.testing.assert_close(u, w)
    # a function the compiler cannot handle falls back to the eager path
    bad = CompiledLogDensity(lambda y: torch.from_numpy((y.detach().numpy() ** 2).sum(-1)) * 0 + _banana(y))
    _, gb = bad.value_and_grad(x)
    torch.testing.assert_close(gb, g_ref)
