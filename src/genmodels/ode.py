"""Ordinary differential equations on batches of points, and the log-density they carry.

Shared by every model that moves points with a velocity field (the probability-flow ODE of a
diffusion model, flow matching, continuous normalizing flows). Nothing here knows where the
velocity came from: it is a function ``velocity(x, s)`` of points ``x`` of shape ``(n, d)``
and a 0-dim time tensor ``s``, returning ``dx/ds`` of shape ``(n, d)``. It must act on each
row on its own (no batch statistics), since the divergence of row i is taken with respect to
row i only.

**Transport.** :func:`solve_ode` integrates ``dx/ds = v(x, s)`` from ``s0`` to ``s1``
(``s1 < s0`` runs backwards) with ``torchdiffeq.odeint``.

**Log-density: the instantaneous change of variables** (Chen et al. 2018, "Neural ordinary
differential equations"). If points move by ``dx/ds = v(x, s)`` and their density is
``p_s``, then along a trajectory

    d log p_s(x(s)) / ds = −∇·v(x(s), s),      ∇·v = tr(∂v/∂x),

(the continuity equation ∂p/∂s = −∇·(p v), read along the flow). Integrating from ``s0`` to
``s1`` with ``x(s0) = x``:

    log p_{s0}(x) = log p_{s1}(x(s1)) + ∫_{s0}^{s1} ∇·v(x(s), s) ds.

So a density known at ``s1`` (the prior, e.g. N(0, I)) gives the exact density at ``s0``
after one solve of the augmented state ``(x, ∫∇·v)``. It is the continuous version of
``log p(x) = log p(f(x)) + log |det ∂f/∂x|``: the integral of the divergence is the
log-determinant of the flow map's Jacobian.

The trace costs d backward passes when computed exactly. Hutchinson's estimator (used by
FFJORD, Grathwohl et al. 2019) replaces it with ``εᵀ (∂v/∂x) ε`` for a random probe ε with
E[εεᵀ] = I (Rademacher or Gaussian), one vector-Jacobian product. With one probe per point,
held fixed along the trajectory, the integral, and hence ``log p_{s0}(x)``, is an unbiased
estimate (its expectation over ε is the exact value).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torchdiffeq import odeint

from genmodels.types import LogDensity

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_GRID_METHODS",
    "ODELikelihood",
    "ODEResult",
    "Velocity",
    "ode_log_likelihood",
    "solve_ode",
]

ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_GRID_METHODS: tuple[str, ...] = (
    "euler",
    "midpoint",
    "heun2",
    "heun3",
    "rk4",
    "explicit_adams",
    "implicit_adams",
    "fixed_adams",
)


@dataclass(frozen=True)
class ODEResult:
    """``x`` the points at ``s1``, shape ``(n, d)``; ``nfe`` the number of velocity calls."""

    x: torch.Tensor
    nfe: int


@dataclass(frozen=True)
class ODELikelihood(LogDensity):
    """``log p_{s0}(x)`` as ``values`` ``(n,)`` with its ``kind`` ("exact" up to solver tolerance,
    or "estimate" for Hutchinson); ``x_end`` the points at ``s1`` ``(n, d)``; ``nfe`` the number of
    velocity calls, summed over chunks."""

    x_end: torch.Tensor
    nfe: int


def _check(x: torch.Tensor, s0: float, s1: float, method: str, steps: int | None) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (n, d), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    if s0 == s1:
        raise ValueError(f"s0 == s1 == {s0}: the time interval is empty")
    if method in FIXED_GRID_METHODS:
        if steps is None or steps < 1:
            raise ValueError(f"fixed-grid method {method!r} needs steps >= 1, got steps={steps}")
    elif method in ADAPTIVE_METHODS:
        if steps is not None:
            raise ValueError(f"steps is for fixed-grid methods only; {method!r} is adaptive")
    else:
        known = ", ".join(ADAPTIVE_METHODS + FIXED_GRID_METHODS)
        raise ValueError(f"unknown ODE method {method!r}; choose one of {known}")


def _odeint(func, state, s0: float, s1: float, x: torch.Tensor, method: str, rtol, atol, steps):
    """Run torchdiffeq from s0 to s1 (uniform grid of ``steps`` for fixed-grid methods); final state."""
    n_times = steps + 1 if method in FIXED_GRID_METHODS else 2
    t = torch.linspace(s0, s1, n_times, dtype=x.dtype, device=x.device)
    out = odeint(func, state, t, method=method, rtol=rtol, atol=atol)
    return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]


def _checked(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if v.shape != x.shape:
        raise ValueError(f"velocity returned shape {tuple(v.shape)}, expected {tuple(x.shape)}")
    return v


def solve_ode(
    velocity: Velocity,
    x: torch.Tensor,
    s0: float,
    s1: float,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int | None = None,
) -> ODEResult:
    """Integrate ``dx/ds = velocity(x, s)`` from ``s0`` to ``s1`` (``s1 < s0`` allowed).

    ``x`` ``(n, d)`` the points at ``s0``; returns them at ``s1`` (same shape and dtype) and the
    number of velocity calls. Adaptive methods (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun)
    use ``rtol``/``atol`` for the whole batch; fixed-grid ones (euler, midpoint, rk4, heun3, ...)
    take ``steps`` uniform steps. The result is differentiable like any torch op (the Jacobian of
    the flow map comes from autograd); call it under ``torch.no_grad()`` to only sample.
    """
    _check(x, s0, s1, method, steps)
    nfe = 0

    def func(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        return _checked(velocity(y, s), y)

    x_end = _odeint(func, x, s0, s1, x, method, rtol, atol, steps)
    return ODEResult(x=x_end, nfe=nfe)


def _divergence(v: torch.Tensor, x: torch.Tensor, probe: torch.Tensor | None) -> torch.Tensor:
    """tr(∂v/∂x) per row ``(n,)``: exact (d backward passes) when ``probe`` is None, else the
    Hutchinson estimate ``εᵀ (∂v/∂x) ε`` from one vector-Jacobian product."""
    if not v.requires_grad:  # the velocity does not depend on x at all
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    if probe is not None:
        (g,) = torch.autograd.grad(v, x, grad_outputs=probe, allow_unused=True)  # εᵀ ∂v/∂x
        return torch.zeros_like(x[:, 0]) if g is None else (g * probe).sum(dim=1)
    div = torch.zeros_like(x[:, 0])
    for i in range(x.shape[1]):
        (g,) = torch.autograd.grad(v[:, i].sum(), x, retain_graph=True, allow_unused=True)
        if g is not None:
            div = div + g[:, i]
    return div


def ode_log_likelihood(
    velocity: Velocity,
    x: torch.Tensor,
    s0: float,
    s1: float,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor],
    *,
    divergence: Literal["auto", "exact", "hutchinson"] = "auto",
    exact_max_dim: int = 16,
    probes: Literal["rademacher", "gaussian"] = "rademacher",
    generator: torch.Generator | None = None,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int | None = None,
    chunk: int = 4096,
) -> ODELikelihood:
    """``log p_{s0}(x) = prior_log_prob(x(s1)) + ∫_{s0}^{s1} ∇·v(x(s), s) ds`` (module docstring).

    ``x`` ``(n, d)`` the points at ``s0``; ``prior_log_prob`` maps ``(n, d)`` points at ``s1`` to
    ``(n,)`` log-densities. ``divergence``: "exact" (trace of ∂v/∂x, kind "exact" up to solver
    tolerance), "hutchinson" (one ``probes`` vector per point, drawn once from ``generator``,
    kind "estimate"), or "auto" (exact when ``d <= exact_max_dim``). Points are solved in chunks
    of ``chunk`` rows, each its own solve with its own error control. Works in ``x``'s dtype;
    the returned tensors are detached.
    """
    _check(x, s0, s1, method, steps)
    if divergence not in ("auto", "exact", "hutchinson"):
        raise ValueError(f"unknown divergence {divergence!r}; choose auto, exact or hutchinson")
    if probes not in ("rademacher", "gaussian"):
        raise ValueError(f"unknown probes {probes!r}; choose rademacher or gaussian")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    exact = divergence == "exact" or (divergence == "auto" and x.shape[1] <= exact_max_dim)

    probe = None
    if not exact:  # one probe per point for the whole trajectory, independent of the chunking
        dev = generator.device if generator is not None else x.device
        if probes == "gaussian":
            probe = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
        else:
            probe = torch.randint(0, 2, x.shape, generator=generator, device=dev).to(x.dtype) * 2 - 1
        probe = probe.to(x.device)

    nfe = 0
    values, ends = [], []
    for start in range(0, x.shape[0], chunk):
        xc = x[start : start + chunk].detach()
        eps = None if probe is None else probe[start : start + chunk]

        def func(s: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], eps=eps):
            nonlocal nfe
            nfe += 1
            with torch.enable_grad():
                y = state[0].detach().requires_grad_(True)
                v = _checked(velocity(y, s), y)
                div = _divergence(v, y, eps)
            return v.detach(), div.detach()

        with torch.no_grad():
            state = (xc, torch.zeros_like(xc[:, 0]))
            x_end, integral = _odeint(func, state, s0, s1, xc, method, rtol, atol, steps)
            values.append(prior_log_prob(x_end).reshape(-1) + integral)
        ends.append(x_end)
    return ODELikelihood(
        values=torch.cat(values).detach(),
        kind="exact" if exact else "estimate",
        x_end=torch.cat(ends).detach(),
        nfe=nfe,
    )
