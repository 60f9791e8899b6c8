"""Tempering: the tempered family of tutorial §4 and parallel tempering (replica exchange).

The tutorial writes the tempered family as (with its Z_β(x) corrected to Z(β) [C])

    π_β(x) = exp(β f(x)) q(x) / Z(β),     q = N(0, I),   β ∈ [0, 1],

which moves from the simple Gaussian q (β = 0) to the multimodal target (β = 1). For a
target with log-density log π, choose f = log π − log q so that π_1 = π
(:func:`tempered_f`). Its "principled implementation" runs chains at several β at once and
exchanges their states: parallel tempering (Swendsen & Wang 1986; Geyer 1991). A swap of
the states x_j, x_{j+1} of neighbouring temperatures β_j, β_{j+1} is accepted with

    min(1, exp((β_j − β_{j+1}) (f(x_{j+1}) − f(x_j)))),

(the q factors cancel), which leaves the product ∏_j π_{β_j} invariant. Even and odd
neighbour pairs alternate from step to step (deterministic even–odd swaps, Lingenheil et
al. 2009).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genmodels.samplers.base import Kernel, LogDensityFn, State


def log_standard_normal(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) for x of shape (n, d)."""
    return -0.5 * (x**2).sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)


def tempered_f(log_pi: LogDensityFn) -> LogDensityFn:
    """f = log π − log q with q = N(0, I), so that the tempered family ends at π_1 = π."""
    return lambda x: log_pi(x) - log_standard_normal(x)


def tempered_log_density(f: LogDensityFn, beta: torch.Tensor) -> LogDensityFn:
    """x ↦ β f(x) + log q(x) (unnormalized log π_β), with ``beta`` of shape (n,) or scalar."""
    return lambda x: beta * f(x) + log_standard_normal(x)


@dataclass(frozen=True)
class TemperingState:
    """Chains at every temperature: ``inner`` holds T·n chains, temperature-major (the
    chains of β_0 first); ``betas`` (T,); ``step`` counts steps (it picks even or odd swaps)."""

    inner: State
    betas: torch.Tensor
    n_chains: int
    step: int

    def positions(self) -> torch.Tensor:
        """Positions as (T, n, d)."""
        return self.inner.position.reshape(len(self.betas), self.n_chains, -1)

    def at_beta_one(self) -> torch.Tensor:
        """The chains of the last temperature (β = 1 for a standard ladder), shape (n, d)."""
        return self.positions()[-1]


@dataclass(frozen=True)
class TemperingInfo:
    """``swap_rate`` (T − 1,): the mean swap acceptance probability of each neighbour pair
    tried at this step (NaN for pairs not tried); ``kernel_acceptance`` (T,): the mean
    acceptance of the within-temperature moves; ``chain_acceptance`` (T, n): each chain's, per
    temperature (for adapting step sizes per replica)."""

    swap_rate: torch.Tensor
    kernel_acceptance: torch.Tensor
    chain_acceptance: torch.Tensor


class ParallelTempering:
    """Replica exchange over a ladder ``betas`` (increasing, ending at 1) with any kernel.

    ``init(position, f)`` takes ``position`` (n, d) (copied to every temperature) or
    (T, n, d), and the f of the tempered family (use :func:`tempered_f` for a target's
    log-density). ``step`` makes one kernel move at every temperature, then one round of
    even or odd neighbour swaps.
    """

    def __init__(self, kernel: Kernel, betas: torch.Tensor | list[float]):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) < 2 or bool((betas.diff() <= 0).any()):
            raise ValueError("betas must be an increasing 1-D ladder with at least two temperatures")
        if float(betas[0]) < 0 or float(betas[-1]) > 1:
            raise ValueError("betas must lie in [0, 1]")
        self.kernel = kernel
        self.betas = betas
        self._f: LogDensityFn | None = None

    def init(self, position: torch.Tensor, f: LogDensityFn) -> TemperingState:
        T = len(self.betas)
        if position.ndim == 2:
            position = position.unsqueeze(0).expand(T, *position.shape)
        if position.ndim != 3 or position.shape[0] != T:
            raise ValueError(f"position must be (n, d) or ({T}, n, d), got {tuple(position.shape)}")
        n = position.shape[1]
        betas = self.betas.to(position.device)
        beta_per_chain = betas.to(position.dtype).repeat_interleave(n)
        self._f = f
        log_density = tempered_log_density(f, beta_per_chain)
        inner = self.kernel.init(position.reshape(T * n, -1), log_density)
        return TemperingState(inner, betas, n, 0)

    def step(self, state: TemperingState, generator: torch.Generator) -> tuple[TemperingState, TemperingInfo]:
        T, n = len(state.betas), state.n_chains
        inner, info = self.kernel.step(state.inner, generator)
        f = self._f
        assert f is not None, "call init first"
        x = inner.position.reshape(T, n, -1)
        with torch.no_grad():
            fx = f(inner.position).reshape(T, n).double()
        first = state.step % 2
        lo = torch.arange(first, T - 1, 2)
        swap_rate = torch.full((T - 1,), float("nan"), dtype=torch.float64, device=fx.device)
        if len(lo) > 0:
            hi = lo + 1
            log_r = (state.betas[lo] - state.betas[hi])[:, None] * (fx[hi] - fx[lo])  # (pairs, n)
            prob = torch.exp(log_r.clamp(max=0.0)).nan_to_num(0.0)
            u = torch.rand(prob.shape, generator=generator, dtype=prob.dtype, device=prob.device)
            accept = u < prob
            swap_rate[lo] = prob.mean(1)
            new_x = x.clone()
            a = accept[:, :, None]
            new_x[lo] = torch.where(a, x[hi], x[lo])
            new_x[hi] = torch.where(a, x[lo], x[hi])
            if bool(accept.any()):
                inner = self.kernel.init(new_x.reshape(T * n, -1), inner.log_density_fn)
        chain_acc = info.acceptance_rate.reshape(T, n)
        info_out = TemperingInfo(swap_rate, chain_acc.double().mean(1), chain_acc)
        return TemperingState(inner, state.betas, n, state.step + 1), info_out


def geometric_ladder(n_temperatures: int, beta_min: float = 0.01) -> torch.Tensor:
    """β_j = beta_min^{(T−1−j)/(T−1)}, j = 0…T−1: geometric from ``beta_min`` to 1."""
    if n_temperatures < 2:
        raise ValueError("a ladder needs at least two temperatures")
    exponents = torch.linspace(1.0, 0.0, n_temperatures, dtype=torch.float64)
    return beta_min**exponents
