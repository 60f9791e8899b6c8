"""ODE transport and the instantaneous change of variables (genmodels.ode)."""

from __future__ import annotations

import math

import pytest
import torch

from genmodels.ode import ode_log_likelihood, solve_ode
from genmodels.types import LogDensity

F64 = torch.float64
A = torch.tensor([[0.3, 1.2], [-0.4, 0.5]], dtype=F64)  # not symmetric, tr A = 0.8


def linear(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return x @ A.T


def std_normal(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z**2).sum(dim=1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


def _tanh_field(d: int, seed: int = 0):
    """A nonlinear, time-dependent velocity v(x, s) = U tanh(W x + s b) − 0.2 x."""
    g = torch.Generator().manual_seed(seed)
    W, U = torch.randn(8, d, generator=g, dtype=F64), torch.randn(d, 8, generator=g, dtype=F64) / 3
    b = torch.randn(8, generator=g, dtype=F64)
    return lambda x, s: torch.tanh(x @ W.T + s * b) @ U.T - 0.2 * x


def _points(n: int, d: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize(("s0", "s1"), [(0.0, 1.0), (1.0, 0.0), (0.2, -0.7)])
@pytest.mark.parametrize(("method", "steps"), [("dopri5", None), ("rk4", 100)])
def test_solve_linear_ode_matches_matrix_exponential(s0, s1, method, steps):
    x = _points(5)
    res = solve_ode(linear, x, s0, s1, method=method, steps=steps, rtol=1e-10, atol=1e-10)
    expected = x @ torch.linalg.matrix_exp(A * (s1 - s0)).T
    assert res.x.dtype == F64 and res.x.shape == x.shape
    assert torch.allclose(res.x, expected, atol=1e-6, rtol=0)
    assert res.nfe > 0 and (method != "rk4" or res.nfe == 4 * steps)


@pytest.mark.parametrize(("s0", "s1"), [(0.0, 1.0), (1.0, 0.0)])
def test_log_likelihood_of_linear_flow_is_the_gaussian_closed_form(s0, s1):
    """x(s1) = expm(AΔ) x with N(0, I) at s1 ⇒ p_{s0} = N(0, C), C = expm(−AΔ) expm(−AΔ)ᵀ."""
    x = _points(6)
    res = ode_log_likelihood(linear, x, s0, s1, std_normal, divergence="exact", rtol=1e-10, atol=1e-10)
    M_inv = torch.linalg.matrix_exp(-A * (s1 - s0))
    truth = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=F64), M_inv @ M_inv.T).log_prob(x)
    assert isinstance(res, LogDensity) and res.kind == "exact"
    assert res.values.shape == (6,) and res.values.dtype == F64
    assert torch.allclose(res.values, truth, atol=1e-6, rtol=0)  # fails by |2 tr(A) Δ| if the sign flips
    assert torch.allclose(res.x_end, x @ torch.linalg.matrix_exp(A * (s1 - s0)).T, atol=1e-6)


def test_log_likelihood_of_nonlinear_flow_matches_jacobian_log_det():
    """∫∇·v ds is log|det ∂x(s1)/∂x(s0)|; the Jacobian from autograd through a fine rk4 solve."""
    v, x = _tanh_field(2), _points(4)
    res = ode_log_likelihood(v, x, 0.0, 1.0, std_normal, divergence="exact", rtol=1e-10, atol=1e-10)
    flow = lambda z: solve_ode(v, z[None], 0.0, 1.0, method="rk4", steps=200).x[0]  # noqa: E731
    jacobians = [torch.autograd.functional.jacobian(flow, xi) for xi in x]
    log_dets = torch.stack([torch.linalg.slogdet(J)[1] for J in jacobians])
    x_end = solve_ode(v, x, 0.0, 1.0, method="rk4", steps=200).x
    assert log_dets.abs().min() > 0.1  # the check has teeth
    assert torch.allclose(res.values, std_normal(x_end) + log_dets, atol=1e-6, rtol=0)


@pytest.mark.parametrize("probes", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probes):
    v, x = _tanh_field(3, seed=2), _points(1, d=3)
    exact = ode_log_likelihood(v, x, 0.0, 1.0, std_normal, divergence="exact", rtol=1e-8, atol=1e-8)
    g = torch.Generator().manual_seed(0)
    est = ode_log_likelihood(
        v, x.repeat(2000, 1), 0.0, 1.0, std_normal, divergence="hutchinson", probes=probes, generator=g
    )
    assert est.kind == "estimate"
    se = est.values.std() / math.sqrt(est.values.numel())
    assert se > 1e-3  # the estimates do vary
    assert abs(est.values.mean() - exact.values[0]) < 4 * se


def test_auto_divergence_and_chunks():
    v2 = _tanh_field(2)
    assert ode_log_likelihood(v2, _points(3), 0.0, 1.0, std_normal).kind == "exact"
    v20, x20 = _tanh_field(20), _points(10, d=20)

    def run(chunk: int):
        g = torch.Generator().manual_seed(5)
        tight = {"rtol": 1e-9, "atol": 1e-9}
        return ode_log_likelihood(v20, x20, 0.0, 1.0, std_normal, generator=g, chunk=chunk, **tight)

    one, many = run(4096), run(3)
    assert one.kind == "estimate"
    # same probes whatever the chunking (drawn once for all points); solves differ only by tolerance
    assert torch.allclose(one.values, many.values, atol=1e-6, rtol=0) and many.nfe > one.nfe


def test_outputs_are_detached_and_keep_dtype():
    w = torch.tensor(0.5, requires_grad=True)
    v = lambda x, s: -w * x  # noqa: E731
    x = torch.randn(4, 2)  # float32
    res = ode_log_likelihood(v, x, 0.0, 1.0, std_normal)
    assert res.values.dtype == torch.float32 and not res.values.requires_grad
    assert not res.x_end.requires_grad
    # v = −w x: x(1) = e^{−w} x, ∫∇·v = −2w
    assert torch.allclose(res.values, std_normal(x * math.exp(-0.5)) - 1.0, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": torch.zeros(3)}, "2-D"),
        ({"x": torch.tensor([[0.0, float("nan")]])}, "NaN"),
        ({"method": "rk5"}, "unknown ODE method"),
        ({"method": "rk4"}, "needs steps"),
        ({"s1": 0.0}, "s0 == s1"),
        ({"divergence": "trace"}, "unknown divergence"),
        ({"probes": "uniform"}, "unknown probes"),
    ],
)
def test_bad_inputs_raise(kwargs, message):
    args = {"x": torch.zeros(2, 2), "s0": 0.0, "s1": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        ode_log_likelihood(lambda x, s: x, args.pop("x"), args.pop("s0"), args.pop("s1"), std_normal, **args)


def test_solve_ode_bad_inputs_and_velocity_shape():
    with pytest.raises(ValueError, match="2-D"):
        solve_ode(linear, torch.zeros(2, 2, 1), 0.0, 1.0)
    with pytest.raises(ValueError, match="fixed-grid methods only"):
        solve_ode(linear, torch.zeros(2, 2, dtype=F64), 0.0, 1.0, steps=10)
    with pytest.raises(ValueError, match="velocity returned shape"):
        solve_ode(lambda x, s: x[:, :1], torch.zeros(2, 2), 0.0, 1.0)
