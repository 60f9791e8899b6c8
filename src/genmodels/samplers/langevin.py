"""Langevin dynamics (unadjusted) and its Metropolis-adjusted version (MALA).

Both propose, for each chain x ∈ R^d (batched as (n, d)), the tutorial's update (§4)

    x' = x + (Δt/2) ∇ₓ log π(x) + √Δt e,     e ~ N(0, I),

that is x' ~ q(· | x) = N(x + (Δt/2) ∇ log π(x), Δt I). ``Langevin`` always moves (it
samples π only as Δt → 0); ``MALA`` accepts x' with probability

    min(1, π(x') q(x | x') / (π(x) q(x' | x))),
    log q(y | x) = −|y − x − (Δt/2) ∇ log π(x)|² / (2 Δt) + const,

which makes π exactly invariant for any Δt (Roberts & Tweedie 1996, "Exponential
convergence of Langevin distributions and their discrete approximations", Bernoulli 2(4)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genmodels.samplers.base import (
    Info,
    LogDensityFn,
    State,
    _check_generator,
    init_state,
    metropolis_accept,
    select,
    value_and_grad,
)

__all__ = ["MALA", "Langevin", "gradient_half_step", "langevin_proposal", "noise_half_step"]


def gradient_half_step(x: torch.Tensor, score: torch.Tensor, step_size: float) -> torch.Tensor:
    """The tutorial's "squeezing" half of a Langevin step: x + (Δt/2) ∇ log π(x) (§4).

    With x ~ π it changes E[h(x)] by −(Δt/2) E[h''(x)] + o(Δt) (integration by parts)."""
    return x + 0.5 * step_size * score


def noise_half_step(x: torch.Tensor, step_size: float, generator: torch.Generator) -> torch.Tensor:
    """The tutorial's "diffusing" half of a Langevin step: x + √Δt e, e ~ N(0, I) (§4).

    With x ~ π it changes E[h(x)] by +(Δt/2) E[h''(x)] + o(Δt) (second-order Taylor)."""
    e = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + step_size**0.5 * e


def langevin_proposal(state: State, step_size: float, generator: torch.Generator) -> State:
    """x' = x + (Δt/2) ∇ log π(x) + √Δt e, e ~ N(0, I) (tutorial §4), evaluated at x'.

    Returns the State at x' (position (n, d), log π(x') (n,), ∇ log π(x') (n, d)).
    """
    x_new = noise_half_step(gradient_half_step(state.position, state.grad, step_size), step_size, generator)
    value, grad = value_and_grad(state.log_density_fn, x_new)
    return State(x_new, value, grad, state.log_density_fn)


def _log_q(to: State, frm: State, step_size: float) -> torch.Tensor:
    """log q(to | frm) = −|to − frm − (Δt/2) ∇ log π(frm)|² / (2 Δt), up to a constant; (n,)."""
    mean = gradient_half_step(frm.position, frm.grad, step_size)
    return -(((to.position - mean) ** 2) / (2.0 * step_size)).sum(-1)


def _finite(s: State) -> torch.Tensor:
    """(n,) bool: log π and every component of ∇ log π are finite."""
    return torch.isfinite(s.log_density) & torch.isfinite(s.grad).all(-1)


@dataclass(frozen=True)
class _LangevinKernel:
    """What Langevin and MALA share: a positive step size Δt and the initial state.

    ``step_size`` is a float, or a tensor ``(n, 1)`` giving each chain its own Δt (the chains
    are independent, so each is a valid kernel for its own Δt).
    """

    step_size: float | torch.Tensor

    def __post_init__(self) -> None:
        if not bool(torch.all(torch.as_tensor(self.step_size) > 0)):
            raise ValueError(f"step_size must be positive, got {self.step_size}")

    def init(self, position: torch.Tensor, log_density: LogDensityFn) -> State:
        """State at ``position`` (n, d)."""
        return init_state(position, log_density)


@dataclass(frozen=True)
class Langevin(_LangevinKernel):
    """Unadjusted Langevin algorithm: x ← x + (Δt/2) ∇ log π(x) + √Δt e (tutorial §4).

    Every proposal is taken, so the chain is biased at finite Δt: on N(0, 1),
    x' = (1 − Δt/2) x + √Δt e has stationary variance v = Δt / (1 − (1 − Δt/2)²)
    = 1 / (1 − Δt/4) instead of 1. The one exception: a proposal where log π or its gradient
    is not finite is refused (the chain stays) and flagged divergent.
    """

    def step(self, state: State, generator: torch.Generator) -> tuple[State, Info]:
        """One unadjusted Langevin move of every chain; ``acceptance_rate`` is 1 (0 if divergent)."""
        generator = _check_generator(generator)
        proposal = langevin_proposal(state, self.step_size, generator)
        ok = _finite(proposal)
        new_state = select(ok, proposal, state)
        return new_state, Info(ok.to(state.position.dtype), ok, ~ok, None)


@dataclass(frozen=True)
class MALA(_LangevinKernel):
    """Metropolis-adjusted Langevin algorithm (Roberts & Tweedie 1996).

    Proposal x' ~ N(x + (Δt/2) ∇ log π(x), Δt I), accepted per chain with log-ratio

        log r = log π(x') − log π(x) + log q(x | x') − log q(x' | x).

    A non-finite log r (e.g. log π(x') = NaN) is a rejection and flagged divergent.
    ``energy_error`` is −log r (the analogue of HMC's ΔH). The optimal acceptance rate in
    high dimension is 0.574 (Roberts & Rosenthal 1998).
    """

    def step(self, state: State, generator: torch.Generator) -> tuple[State, Info]:
        """One MALA transition of every chain."""
        generator = _check_generator(generator)
        proposal = langevin_proposal(state, self.step_size, generator)
        log_ratio = (
            proposal.log_density
            - state.log_density
            + _log_q(state, proposal, self.step_size)
            - _log_q(proposal, state, self.step_size)
        )
        divergent = ~torch.isfinite(log_ratio) | ~_finite(proposal)
        log_ratio = torch.where(divergent, torch.full_like(log_ratio, -torch.inf), log_ratio)
        acceptance_rate, accept = metropolis_accept(log_ratio, generator)
        return select(accept, proposal, state), Info(acceptance_rate, accept, divergent, -log_ratio)
