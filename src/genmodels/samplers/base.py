"""Shared blocks of the MCMC kernels: state and diagnostics types, gradients, Metropolis
acceptance, step-size and mass-matrix adaptation, and a sampling loop.

A kernel follows the BlackJAX pattern (see ``design.md``, "Samplers"):

    kernel = HMC(step_size=0.1, num_steps=10)          # configuration only
    state = kernel.init(position, log_density)         # State, position (n, d)
    state, info = kernel.step(state, generator)        # pure: inputs are never mutated

A *log-density* is any torch callable ``log_density(x: (n, d)) -> (n,)``; it need not be
normalized. Chains are batched along dim 0 and are independent: accept/reject is per chain.
All randomness comes from the ``torch.Generator`` passed to ``step``; the global RNG is never
used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = [
    "ChainSummary",
    "DualAveraging",
    "DualAveragingState",
    "Info",
    "Kernel",
    "LogDensityFn",
    "State",
    "WarmupResult",
    "metropolis_accept",
    "run_warmup",
    "sample_chain",
    "value_and_grad",
    "warmup_windows",
]

LogDensityFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class State:
    """What the next step needs, for n chains in d dimensions.

    ``position`` (n, d); ``log_density`` log π(x), shape (n,); ``grad`` ∇ₓ log π(x), shape
    (n, d); ``log_density_fn`` the callable they were computed from (kept here so that
    ``step(state, generator)`` needs nothing else and the kernel stays stateless).
    """

    position: torch.Tensor
    log_density: torch.Tensor
    grad: torch.Tensor
    log_density_fn: LogDensityFn


@dataclass(frozen=True)
class Info:
    """Per-chain diagnostics of one step, every field of shape (n,).

    ``acceptance_rate``: the Metropolis acceptance probability min(1, r) (0 where r is NaN;
    1 for unadjusted Langevin except at divergences). ``is_accepted``: whether the proposal
    was taken. ``is_divergent``: the proposal's energy (or log-density) was not finite, or
    |ΔH| > 1000. ``energy_error``: ΔH = H(proposal) − H(current) for HMC, −log r for MALA,
    ``None`` where it has no meaning (unadjusted Langevin).
    """

    acceptance_rate: torch.Tensor
    is_accepted: torch.Tensor
    is_divergent: torch.Tensor
    energy_error: torch.Tensor | None = None


class Kernel(Protocol):
    """The sampler contract: ``init`` builds a State, ``step`` is a pure transition."""

    def init(self, position: torch.Tensor, log_density: LogDensityFn) -> State: ...

    def step(self, state: State, generator: torch.Generator) -> tuple[State, Info]: ...


DIVERGENCE_THRESHOLD = 1000.0


def value_and_grad(log_density: LogDensityFn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(x), ∇ₓ log π(x)) with shapes (n,) and (n, d), both detached.

    The gradient is the vector–Jacobian product of log π with a vector of ones, i.e. the
    gradient of Σᵢ log π(xᵢ), which equals the per-chain gradient because the chains do not
    interact (seeding the backward pass with ones saves the ``sum`` node). Works inside
    ``torch.no_grad()``.
    """
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        value = log_density(x_)
        if value.shape != x.shape[:1]:
            raise ValueError(f"log_density must map (n, d) to (n,), got {tuple(value.shape)}")
        if not value.requires_grad:  # a log-density that does not depend on x
            return value.detach(), torch.zeros_like(x)
        (grad,) = torch.autograd.grad(value, x_, torch.ones_like(value), allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x)
    return value.detach(), grad.detach()


def _check_generator(generator: torch.Generator | None) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            "kernels draw all randomness from a torch.Generator; pass one (the global RNG is never used)"
        )
    return generator


def metropolis_accept(
    log_ratio: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chain Metropolis test: accept when log u < log r, u ~ U(0, 1).

    ``log_ratio`` (n,) is log r; a NaN ratio is a rejection. Returns the acceptance
    probability min(1, r) (0 where r is NaN) and the boolean decisions, both (n,).
    """
    log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
    acceptance_rate = torch.exp(torch.clamp(log_ratio, max=0.0))
    u = torch.rand(log_ratio.shape, generator=generator, dtype=log_ratio.dtype, device=log_ratio.device)
    return acceptance_rate, torch.log(u) < log_ratio


def select(accept: torch.Tensor, proposal: State, current: State) -> State:
    """Per chain, the proposal where ``accept`` (n,) is true, else the current state."""
    a1 = accept[:, None]
    return State(
        position=torch.where(a1, proposal.position, current.position),
        log_density=torch.where(accept, proposal.log_density, current.log_density),
        grad=torch.where(a1, proposal.grad, current.grad),
        log_density_fn=current.log_density_fn,
    )


def init_state(position: torch.Tensor, log_density: LogDensityFn) -> State:
    """State at ``position`` (n, d): evaluates log π and ∇ log π once."""
    if position.ndim != 2:
        raise ValueError(f"position must have shape (n_chains, d), got {tuple(position.shape)}")
    value, grad = value_and_grad(log_density, position)
    return State(position.detach().clone(), value, grad, log_density)


# -- sampling loop --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainSummary:
    """Per-chain summary of a run: mean acceptance probability (n,), number of divergent
    steps (n,), and the final state (to continue sampling)."""

    acceptance_rate: torch.Tensor
    num_divergent: torch.Tensor
    state: State


def sample_chain(
    kernel: Kernel, state: State, num_samples: int, generator: torch.Generator, thin: int = 1
) -> tuple[torch.Tensor, ChainSummary]:
    """Run ``num_samples · thin`` steps and keep every ``thin``-th position.

    Returns positions of shape (num_samples, n_chains, d) and a ``ChainSummary`` over all
    steps taken.
    """
    if num_samples < 0 or thin < 1:
        raise ValueError("num_samples must be >= 0 and thin >= 1")
    n, d = state.position.shape
    out = state.position.new_empty(num_samples, n, d)
    accept = torch.zeros(n, dtype=torch.float64, device=state.position.device)
    divergent = torch.zeros(n, dtype=torch.long, device=state.position.device)
    for i in range(num_samples):
        for _ in range(thin):
            state, info = kernel.step(state, generator)
            accept += info.acceptance_rate.double()
            divergent += info.is_divergent.long()
        out[i] = state.position
    steps = max(1, num_samples * thin)
    return out, ChainSummary(accept / steps, divergent, state)


# -- adaptation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DualAveragingState:
    """log ε_t, its weighted average log ε̄_t, the running mean error H̄_t, the shrinkage
    point μ and the iteration count t (Hoffman & Gelman 2014, Alg. 5)."""

    log_step_size: float
    log_step_size_avg: float
    error_avg: float
    mu: float
    t: int

    @property
    def step_size(self) -> float:
        """ε_t, the step size to use at the next iteration."""
        return math.exp(self.log_step_size)

    @property
    def final_step_size(self) -> float:
        """ε̄_t = exp(log ε̄_t), the step size to keep after adaptation."""
        return math.exp(self.log_step_size_avg)


@dataclass(frozen=True)
class DualAveraging:
    """Step-size adaptation by dual averaging (Hoffman & Gelman 2014, "The No-U-Turn
    Sampler", JMLR 15, Alg. 5 and Eq. 6) toward a target acceptance probability δ:

        H̄_t     = (1 − 1/(t + t₀)) H̄_{t−1} + (δ − α_t) / (t + t₀)
        log ε_t = μ − (√t / γ) H̄_t
        log ε̄_t = t^{−κ} log ε_t + (1 − t^{−κ}) log ε̄_{t−1}

    with μ = log(10 ε₀) and the paper's constants γ = 0.05, t₀ = 10, κ = 0.75. δ = 0.8 suits
    HMC; 0.574 is optimal for MALA (Roberts & Rosenthal 1998).
    """

    target_accept: float = 0.8
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75

    def init(self, step_size: float) -> DualAveragingState:
        """Start at ε₀ = ``step_size`` with μ = log(10 ε₀)."""
        log_eps = math.log(step_size)
        return DualAveragingState(log_eps, 0.0, 0.0, math.log(10.0) + log_eps, 0)

    def update(self, state: DualAveragingState, acceptance_rate: float) -> DualAveragingState:
        """One iteration of Alg. 5 given the observed acceptance probability α_t ∈ [0, 1]."""
        alpha = 0.0 if math.isnan(acceptance_rate) else min(1.0, max(0.0, acceptance_rate))
        t = state.t + 1
        eta = 1.0 / (t + self.t0)
        error_avg = (1.0 - eta) * state.error_avg + eta * (self.target_accept - alpha)
        log_eps = state.mu - math.sqrt(t) / self.gamma * error_avg
        w = t ** (-self.kappa)
        log_eps_avg = w * log_eps + (1.0 - w) * state.log_step_size_avg
        return DualAveragingState(log_eps, log_eps_avg, error_avg, state.mu, t)


def warmup_windows(
    num_steps: int, init_buffer: int = 75, term_buffer: int = 50, base_window: int = 25
) -> list[tuple[int, int]]:
    """Slow adaptation windows [start, end) of Stan's windowed warm-up (Stan Reference
    Manual, "HMC algorithm parameters: automatic parameter tuning").

    Warm-up is an initial fast interval (``init_buffer`` steps, step size only), a series of
    slow windows whose length doubles from ``base_window`` (at the end of each, the mass
    matrix is re-estimated and dual averaging restarts), and a final fast interval
    (``term_buffer``). The last slow window is stretched to end where the final interval
    starts. When ``num_steps`` is too short for the defaults, the buffers become 15 % and
    10 % of it, as in Stan; under 20 steps there are no windows.

    >>> warmup_windows(1000)
    [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    """
    if num_steps < 20:
        return []
    if init_buffer + base_window + term_buffer > num_steps:
        init_buffer = int(0.15 * num_steps)
        term_buffer = int(0.1 * num_steps)
        base_window = num_steps - init_buffer - term_buffer
    end_slow = num_steps - term_buffer
    windows: list[tuple[int, int]] = []
    start, size = init_buffer, base_window
    while start < end_slow:
        end = start + size
        if end + 2 * size > end_slow:  # the next window would not fit: stretch this one
            end = end_slow
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


def regularized_variance(samples: torch.Tensor) -> torch.Tensor:
    """Stan's diagonal metric estimate from ``samples`` (m, d):
    (m / (m + 5)) · var + 1e-3 · 5 / (m + 5), shape (d,)."""
    m = samples.shape[0]
    var = samples.double().var(dim=0, unbiased=True)
    return (m / (m + 5.0)) * var + 1e-3 * (5.0 / (m + 5.0))


@dataclass(frozen=True)
class WarmupResult:
    """Tuned step size, diagonal inverse mass matrix (d,) (``None`` if not adapted) and the
    state of the chains at the end of warm-up."""

    step_size: float
    inverse_mass: torch.Tensor | None
    state: State


def mass_windows(num_steps: int, adapt_mass: bool = True) -> tuple[list[bool], set[int]]:
    """For each warm-up step, whether its position feeds the mass-matrix estimate, and the
    set of step counts (i + 1) at which a slow window ends (Stan's ``warmup_windows``)."""
    windows = warmup_windows(num_steps) if adapt_mass else []
    in_window = [False] * num_steps
    for start, end in windows:
        for i in range(start, end):
            in_window[i] = True
    return in_window, {end for _, end in windows}


def run_warmup(
    kernel_factory: Callable[[float, torch.Tensor | None], Kernel],
    position: torch.Tensor,
    log_density: LogDensityFn,
    num_steps: int,
    generator: torch.Generator,
    target_accept: float = 0.8,
    *,
    initial_step_size: float = 0.1,
    adapt_mass: bool = True,
) -> WarmupResult:
    """Adapt one step size shared by all chains and, optionally, a diagonal inverse mass.

    ``kernel_factory(step_size, inverse_mass)`` builds the kernel to run (``inverse_mass`` is
    ``None`` or a (d,) tensor; a kernel without a mass matrix may ignore it). Each step feeds
    the mean acceptance probability over chains to ``DualAveraging`` (Hoffman & Gelman 2014).
    If ``adapt_mass``, the steps follow Stan's windows (``warmup_windows``): at the end of each
    slow window the inverse mass becomes the regularized per-dimension variance of the
    positions of all chains over that window, ``regularized_variance`` with m = window
    length × chains, and dual averaging restarts from the current step size. After warm-up
    the step size is the averaged ε̄ (Alg. 5).
    """
    generator = _check_generator(generator)
    adapter = DualAveraging(target_accept=target_accept)
    da = adapter.init(initial_step_size)
    inverse_mass: torch.Tensor | None = None
    in_window, window_end = mass_windows(num_steps, adapt_mass)
    state = init_state(position, log_density)
    collected: list[torch.Tensor] = []
    for i in range(num_steps):
        kernel = kernel_factory(da.step_size, inverse_mass)
        state, info = kernel.step(state, generator)
        da = adapter.update(da, float(info.acceptance_rate.double().mean()))
        if in_window[i]:
            collected.append(state.position)
        if i + 1 in window_end:
            inverse_mass = regularized_variance(torch.cat(collected)).to(state.position.dtype)
            collected = []
            da = adapter.init(da.step_size)
    return WarmupResult(da.final_step_size, inverse_mass, state)
