"""Hamiltonian Monte Carlo with a leapfrog integrator (Neal 2011, "MCMC using Hamiltonian
dynamics", Handbook of Markov Chain Monte Carlo, ch. 5).

With potential U(x) = −log π(x) and a Gaussian momentum p ~ N(0, M), the Hamiltonian is

    H(x, p) = −log π(x) + ½ pᵀ M⁻¹ p.

Each step draws a fresh momentum, integrates Hamilton's equations ẋ = M⁻¹ p,
ṗ = ∇ log π(x) with L leapfrog steps of size ε (Neal 2011, Eqs. 5.18-5.20), and accepts the
end point with probability min(1, exp(−ΔH)) (Eq. 5.24 ff.), per chain. Leapfrog is
volume-preserving and reversible, so this leaves π exactly invariant. The inverse mass M⁻¹
is the identity, a diagonal (d,) or a dense (d, d) matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genmodels.samplers.base import (
    DIVERGENCE_THRESHOLD,
    Info,
    LogDensityFn,
    State,
    _check_generator,
    init_state,
    metropolis_accept,
    select,
    value_and_grad,
)

__all__ = ["HMC", "kinetic_energy", "leapfrog"]


def _velocity(momentum: torch.Tensor, inverse_mass: torch.Tensor | None) -> torch.Tensor:
    """M⁻¹ p for p (n, d) and M⁻¹ None (identity), (d,) (diagonal) or (d, d) (dense)."""
    if inverse_mass is None:
        return momentum
    if inverse_mass.ndim == 1:
        return momentum * inverse_mass
    return momentum @ inverse_mass.T


def kinetic_energy(momentum: torch.Tensor, inverse_mass: torch.Tensor | None = None) -> torch.Tensor:
    """K(p) = ½ pᵀ M⁻¹ p per chain; (n, d) → (n,)."""
    return 0.5 * (momentum * _velocity(momentum, inverse_mass)).sum(-1)


def leapfrog(
    position: torch.Tensor,
    momentum: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    num_steps: int,
    log_density: LogDensityFn,
    inverse_mass: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num_steps`` leapfrog steps of size ε for H = −log π(x) + ½ pᵀ M⁻¹ p (Neal 2011,
    Eqs. 5.18-5.20), each

        p ← p + (ε/2) ∇ log π(x)
        x ← x + ε M⁻¹ p
        p ← p + (ε/2) ∇ log π(x)

    ``position``, ``momentum``, ``grad`` (= ∇ log π(position)) are (n, d). Returns the end
    position and momentum (n, d), log π there (n,) and its gradient (n, d); one gradient
    evaluation per step. The map is time-reversible: negating the final momentum and
    integrating again returns to the start. Non-finite values propagate (the caller rejects).
    """
    x, p, g = position, momentum, grad
    value = None
    for _ in range(num_steps):
        p = p + 0.5 * step_size * g
        x = x + step_size * _velocity(p, inverse_mass)
        value, g = value_and_grad(log_density, x)
        p = p + 0.5 * step_size * g
    if value is None:  # zero steps
        value, g = value_and_grad(log_density, x)
    return x, p, value, g


@dataclass(frozen=True, eq=False)
class HMC:
    """Hamiltonian Monte Carlo with a fixed trajectory of ``num_steps`` leapfrog steps.

    Per chain: p ~ N(0, M); (x', p') = leapfrog(x, p); ΔH = H(x', p') − H(x, p); accept with
    probability min(1, exp(−ΔH)) (Neal 2011, §5.3.2). A non-finite ΔH is a rejection;
    non-finite or |ΔH| > 1000 is flagged divergent. ``inverse_mass_matrix`` M⁻¹ is ``None``
    (identity), shape (d,) (diagonal) or (d, d) (dense, symmetric positive definite).
    """

    step_size: float
    num_steps: int
    inverse_mass_matrix: torch.Tensor | None = None
    _mass_cholesky: torch.Tensor | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not self.step_size > 0:
            raise ValueError(f"step_size must be positive, got {self.step_size}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        m = self.inverse_mass_matrix
        if m is not None:
            if m.ndim == 1:
                if not bool((m > 0).all()):
                    raise ValueError("a diagonal inverse mass matrix must be positive")
            elif m.ndim == 2 and m.shape[0] == m.shape[1]:
                # p ~ N(0, M) with M = (M⁻¹)⁻¹ = L Lᵀ: p = L e.
                mass = torch.linalg.inv(m)
                object.__setattr__(self, "_mass_cholesky", torch.linalg.cholesky(0.5 * (mass + mass.T)))
            else:
                raise ValueError(f"inverse_mass_matrix must be (d,) or (d, d), got {tuple(m.shape)}")

    def init(self, position: torch.Tensor, log_density: LogDensityFn) -> State:
        """State at ``position`` (n, d)."""
        return init_state(position, log_density)

    def _momentum(self, shape: torch.Size, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """p ~ N(0, M), shape (n, d)."""
        e = torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
        m = self.inverse_mass_matrix
        if m is None:
            return e
        if m.ndim == 1:
            return e / m.to(like).sqrt()
        return e @ self._mass_cholesky.to(like).T

    def step(self, state: State, generator: torch.Generator) -> tuple[State, Info]:
        """One HMC transition of every chain."""
        generator = _check_generator(generator)
        x = state.position
        inv_mass = None if self.inverse_mass_matrix is None else self.inverse_mass_matrix.to(x)
        p0 = self._momentum(x.shape, x, generator)
        x1, p1, value1, grad1 = leapfrog(
            x, p0, state.grad, self.step_size, self.num_steps, state.log_density_fn, inv_mass
        )
        h0 = -state.log_density + kinetic_energy(p0, inv_mass)
        h1 = -value1 + kinetic_energy(p1, inv_mass)
        energy_error = h1 - h0
        finite = torch.isfinite(energy_error) & torch.isfinite(x1).all(-1) & torch.isfinite(grad1).all(-1)
        divergent = ~finite | (energy_error.abs() > DIVERGENCE_THRESHOLD)
        log_ratio = torch.where(finite, -energy_error, torch.full_like(energy_error, -torch.inf))
        acceptance_rate, accept = metropolis_accept(log_ratio, generator)
        proposal = State(x1, value1, grad1, state.log_density_fn)
        return select(accept, proposal, state), Info(acceptance_rate, accept, divergent, energy_error)
