"""Flow matching: the OT coupling against brute force, the conditional path and its loss against the
closed-form marginal velocity of Gaussian data, the ODE log-likelihood of a flow known in closed
form, reflow, and a short run that lowers the exact KL to the truth below a bar."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genmodels.distributions import get_target
from genmodels.evaluate import kl_to_truth
from genmodels.models import build_model
from genmodels.models.fm import FlowMatching, FlowMatchingConfig, ot_coupling
from genmodels.train import TrainConfig, load_run, train

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
S = 0.5


def _closed_form_velocity(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """The field of the straight flow x(t) = (1 − t + t s) x₀ + t μ, which carries N(0, I) at t = 0
    to N(μ, s² I) at t = 1: v(x, t) = (s − 1)(x − t μ)/(1 − t + t s) + μ."""
    t = torch.as_tensor(t, dtype=x.dtype)
    t = t[:, None] if t.dim() == 1 else t
    return (S - 1) * (x - t * MU) / (1 - t + t * S) + MU


def _marginal_velocity(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """E[x₁ − x₀ | x_t = x] for x₀ ~ N(0, I), x₁ ~ N(μ, s² I) independent, x_t = (1 − t)x₀ + t x₁:
    μ + (t s² − (1 − t)) / ((1 − t)² + t² s²) · (x − t μ) (Gaussian conditioning)."""
    t = torch.as_tensor(t, dtype=x.dtype)
    t = t[:, None] if t.dim() == 1 else t
    slope = (t * S**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * S**2)
    return MU + slope * (x - t * MU)


class FixedField(FlowMatching):
    """A flow-matching model whose velocity is a given function (plus ``delta`` · ``h``)."""

    def __init__(self, field, delta: float = 0.0, h=None, **options) -> None:
        super().__init__(2, FlowMatchingConfig(hidden=8, **options))
        self.field, self.delta, self.h = field, delta, h
        self.double()

    def velocity(self, x, t):  # type: ignore[override]
        v = self.field(x, t)
        return v if self.h is None else v + self.delta * self.h(x)


def test_ot_coupling_equals_the_brute_force_optimum() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x0, x1 = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g) + 1
        perm = ot_coupling(x0, x1)
        assert sorted(perm.tolist()) == list(range(6))
        cost = float(((x0[perm] - x1) ** 2).sum())
        best = min(float(((x0[list(p)] - x1) ** 2).sum()) for p in itertools.permutations(range(6)))
        assert cost == pytest.approx(best, rel=1e-6)


def test_ot_coupling_lowers_the_transport_cost() -> None:
    """On a 256-point batch of 8gaussians (standardized) the mean squared distance of the pairs falls
    well below that of independent pairs (≈ E|x₀|² + E|x₁|² = 4)."""
    model = build_model("fm", 2, {"coupling": "ot"})
    g = torch.Generator().manual_seed(1)
    x1 = get_target("8gaussians").sample(256, generator=g)
    x1 = (x1 - x1.mean(0)) / x1.std(0)
    x0 = torch.randn(256, 2, generator=g)
    ind = float(((x0 - x1) ** 2).sum(1).mean())
    a0, a1 = model.couple(x0, x1)
    assert torch.equal(a1, x1) and torch.equal(a0.sort(0).values, x0.sort(0).values)
    ot = float(((a0 - a1) ** 2).sum(1).mean())
    assert ind > 3.0
    assert ot < 0.5 * ind


def test_conditional_path_regression_recovers_the_marginal_velocity() -> None:
    """At fixed t, the least-squares regression of u_t = x₁ − x₀ on x_t is the marginal velocity
    E[u_t | x_t] (linear for Gaussian data): slope and intercept match the closed form."""
    model = FixedField(_marginal_velocity)
    g = torch.Generator().manual_seed(2)
    n = 50_000
    for t_val in (0.2, 0.7):
        x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
        x1 = MU + S * torch.randn(n, 2, generator=g, dtype=torch.float64)
        t = torch.full((n,), t_val, dtype=torch.float64)
        xt, ut = model.conditional_path(*model.couple(x0, x1), t, g)
        design = torch.cat([xt, torch.ones(n, 1, dtype=torch.float64)], 1)
        coef = torch.linalg.lstsq(design, ut).solution  # (3, 2)
        slope = (t_val * S**2 - (1 - t_val)) / ((1 - t_val) ** 2 + t_val**2 * S**2)
        expected = torch.cat([slope * torch.eye(2, dtype=torch.float64), (MU - slope * t_val * MU)[None]])
        resid = ut - design @ coef
        tol = 5 * float(resid.std()) / math.sqrt(n) / float(xt.std(0).min())
        torch.testing.assert_close(coef, expected, rtol=0, atol=tol)


def test_the_marginal_velocity_minimises_the_flow_matching_loss() -> None:
    """With common random numbers, the loss of v* is below the loss of v* + δh for ± perturbations."""
    n = 20_000
    u = MU + S * torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    perturbations = [lambda x: torch.ones_like(x), lambda x: x, lambda x: torch.flip(x, [1]) ** 2]
    base = float(FixedField(_marginal_velocity).loss(u, torch.Generator().manual_seed(4))["loss"])
    for h in perturbations:
        for delta in (-0.1, 0.1):
            model = FixedField(_marginal_velocity, delta, h)
            assert float(model.loss(u, torch.Generator().manual_seed(4))["loss"]) > base
    # the straight-flow field (which maps N(0, I) to the same law) is not the minimiser
    straight = float(FixedField(_closed_form_velocity).loss(u, torch.Generator().manual_seed(4))["loss"])
    assert straight > base + 0.01


def test_sigma_widens_the_path() -> None:
    model = FixedField(_marginal_velocity, sigma=0.3)
    n = 40_000
    g = torch.Generator().manual_seed(5)
    x0 = torch.zeros(n, 2, dtype=torch.float64)
    xt, ut = model.conditional_path(x0, x0 + 1, torch.full((n,), 0.5, dtype=torch.float64), g)
    assert torch.equal(ut, torch.ones_like(ut))
    assert abs(float(xt.mean()) - 0.5) < 5 * 0.3 / math.sqrt(2 * n)
    assert abs(float(xt.std()) - 0.3) < 0.01


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_ode_log_likelihood_of_a_closed_form_flow(divergence: str) -> None:
    """The linear field carries N(0, I) to N(μ, s² I): log_prob is that density exactly (also in data
    space through the standardization's Jacobian), and samples are x₁ = μ + s x₀. For an isotropic
    linear field Hutchinson's Rademacher estimate εᵀ(cI)ε = c d is exact too (kind "estimate")."""
    model = FixedField(_closed_form_velocity)
    shift, scale = torch.tensor([0.5, 2.0]), torch.tensor([3.0, 0.5])
    model.set_normalization(shift.double(), scale.double())
    x = model.denormalize(
        MU + 1.3 * S * torch.randn(200, 2, generator=torch.Generator().manual_seed(6)).double()
    )
    out = model.log_prob(x, divergence=divergence, rtol=1e-8, atol=1e-8)
    assert out.kind == ("exact" if divergence == "exact" else "estimate")
    u = (x - shift) / scale
    expected = torch.distributions.Normal(MU, S).log_prob(u).sum(1) - torch.log(scale).sum()
    torch.testing.assert_close(out.values, expected.double(), rtol=0, atol=1e-6)
    # fixed-step solvers converge to the same value
    heun = model.log_prob(x, sampler="heun", steps=200).values
    torch.testing.assert_close(heun, expected.double(), rtol=0, atol=1e-4)

    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    xs = model.sample(100, generator=torch.Generator().manual_seed(7), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(xs, model.denormalize(MU + S * z), rtol=0, atol=1e-6)


def test_fixed_step_solvers_converge_at_their_order() -> None:
    """The marginal field of the independent coupling is isotropic and linear in x, so its flow is
    z ↦ μ + s z at t = 1 (the variance (1 − t)² + t² s² is carried along), but its paths curve in t:
    Euler's error falls like 1/steps, Heun's like 1/steps². The straight field's paths are lines,
    which one Euler step integrates exactly (the point of rectified flow)."""
    z = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = MU + S * z
    model = FixedField(_marginal_velocity)
    err = {}
    for solver in ("euler", "heun"):
        for steps in (10, 40):
            xs = model.sample(300, generator=torch.Generator().manual_seed(0), sampler=solver, steps=steps)
            err[solver, steps] = float((xs - exact).abs().max())
    assert 3.0 < err["euler", 10] / err["euler", 40] < 5.5, err
    assert 12.0 < err["heun", 10] / err["heun", 40] < 20.0, err
    assert err["heun", 10] < 0.1 * err["euler", 10], err
    straight = FixedField(_closed_form_velocity)
    one = straight.sample(300, generator=torch.Generator().manual_seed(0), sampler="euler", steps=1)
    torch.testing.assert_close(one, exact, rtol=0, atol=1e-12)


def test_reflow_pairs_come_from_the_models_ode() -> None:
    model = build_model("fm", 2, {"hidden": 32, "reflow": 1, "reflow_pairs": 64}, seed=0)
    model.regenerate_pairs(torch.Generator().manual_seed(0))
    assert int(model.reflow_done) == 1
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.pairs[:, 0], z)
    with torch.no_grad():
        torch.testing.assert_close(
            model.pairs[:, 1], model._sample(64, generator=torch.Generator().manual_seed(0))
        )
    # with reflow_done > 0 the loss ignores the data batch
    u = torch.randn(32, 2)
    a = model.loss(u, torch.Generator().manual_seed(1))["loss"]
    torch.testing.assert_close(a, model.loss(u + 100, torch.Generator().manual_seed(1))["loss"])
    with pytest.raises(ValueError, match="reflow"):
        build_model("fm", 2, {"hidden": 8}).regenerate_pairs()


def test_reflow_straightens_the_flow() -> None:
    """Rectified flow (Liu et al. 2023): after a reflow round one Euler step lands closer to the
    ODE's endpoint than before it (the paths are straighter)."""
    config = TrainConfig(steps=1200, batch_size=256, lr=3e-3, progress=False, seed=0)
    opts = {"hidden": 64, "reflow": 1, "reflow_every": 600, "reflow_pairs": 4000}
    model = build_model("fm", 2, opts, seed=0)
    g = torch.Generator().manual_seed(9)

    def one_step_error(m) -> float:
        ref = m.sample(1000, generator=g.manual_seed(9), rtol=1e-5, atol=1e-5)
        one = m.sample(1000, generator=g.manual_seed(9), sampler="euler", steps=1)
        return float(((one - ref) ** 2).sum(1).mean())

    before = {}
    train(
        model,
        "8gaussians",
        config,
        on_step=lambda s, _: s == 600 and before.setdefault("e", one_step_error(model)),
    )
    assert int(model.reflow_done) == 1
    after = one_step_error(model)
    assert after < 0.5 * before["e"], (before, after)


def test_short_training_lowers_the_exact_kl_below_bar(tmp_path) -> None:
    """800 steps (OT coupling) on 8gaussians: the exact KL (ODE likelihood) falls below 0.6 nats
    (0.47 seen), under a Gaussian fit's 1.42; the untrained field (3.1) stays far above.
    Reproducible sampling and a checkpoint round trip."""
    target = get_target("8gaussians")
    opts = {"hidden": 64, "coupling": "ot"}
    config = TrainConfig(steps=800, batch_size=256, lr=3e-3, progress=False, seed=0)
    result = train("fm", "8gaussians", config, options=opts, out=tmp_path / "run")
    model = result.model
    kl = kl_to_truth(model, target, n=1500, generator=torch.Generator().manual_seed(11))
    assert kl.kind == "exact"
    assert kl.value < 0.6, kl
    kl0 = kl_to_truth(build_model("fm", 2, opts), target, n=1500, generator=torch.Generator().manual_seed(11))
    assert kl0.value > 1.5, kl0

    a = model.sample(100, generator=torch.Generator().manual_seed(5), sampler="heun", steps=20)
    b = model.sample(100, generator=torch.Generator().manual_seed(5), sampler="heun", steps=20)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    loaded, _ = load_run(tmp_path / "run")
    torch.testing.assert_close(
        loaded.sample(100, generator=torch.Generator().manual_seed(5), sampler="heun", steps=20), a
    )
    x = target.sample(100, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loaded.log_prob(x).values, model.log_prob(x).values)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"coupling": "sinkhorn"}, "coupling"),
        ({"sigma": -0.1}, "sigma"),
        ({"reflow": -1}, "reflow"),
        ({"depth": 0}, "depth"),
        ({"activation": "swish"}, "activation"),
    ],
)
def test_bad_options_are_one_line_errors(options, match) -> None:
    with pytest.raises(ValueError, match=match):
        FlowMatching(2, FlowMatchingConfig(**options))


def test_bad_solver() -> None:
    model = build_model("fm", 2, {"hidden": 8})
    with pytest.raises(ValueError, match="sampler"):
        model.sample(5, sampler="rk45")
