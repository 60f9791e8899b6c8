"""Annealed importance sampling (Neal 2001) for log Z, with the reverse (upper) bound.

Tutorial §4 anneals a sampler through the tempered family π_β ∝ exp(β f(x)) q(x). To
estimate Z = ∫ exp(f(x)) dx we use the geometric path between a normalized base q and the
unnormalized target γ = exp(f):

    log γ_β(x) = (1 − β) log q(x) + β f(x),     0 = β_0 < β_1 < … < β_K = 1,

so that Z_0 = 1 and Z_K = Z. With x_0 ~ q and x_k drawn by an MCMC kernel that leaves
π_{β_k} invariant, started at x_{k−1}, the weight (Neal 2001, Eq. 3)

    log w = Σ_{k=1}^{K} (β_k − β_{k−1}) (f(x_{k−1}) − log q(x_{k−1}))

has E[w] = Z. Hence Ẑ = mean(w) over independent chains is unbiased, and log Ẑ is a
stochastic lower bound: E[log Ẑ] ≤ log Z (Jensen).

Reverse AIS (Grosse, Ghahramani & Adams 2015, "Sandwiching the marginal likelihood using
bidirectional Monte Carlo") runs the same path backwards from exact samples of
π = γ/Z; its weights satisfy E[1/w_rev] = 1/Z, so −log mean(1/w_rev) is a stochastic
upper bound on log Z. Together they sandwich log Z.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from genmodels.types import Kind

LogDensityFn = Callable[[torch.Tensor], torch.Tensor]


class _Kernel(Protocol):  # the samplers' contract (see samplers/base.py)
    def init(self, position: torch.Tensor, log_density: LogDensityFn): ...

    def step(self, state, generator: torch.Generator | None): ...


@dataclass(frozen=True)
class LogZEstimate:
    """An estimate of log Z with its standard error and what kind of bound it is.

    ``log_weights`` has shape ``(n_chains,)``. The standard error is the delta-method one,
    sd(w / mean w) / √n, which is reliable only when the weights are not degenerate
    (``ess``, the effective number of chains (Σw)²/Σw², says how far that holds).
    """

    value: float
    stderr: float
    kind: Kind
    log_weights: torch.Tensor
    ess: float


def geometric_path(f: LogDensityFn, log_q: LogDensityFn, beta: float) -> LogDensityFn:
    """x ↦ (1 − β) log q(x) + β f(x)."""

    def log_gamma(x: torch.Tensor) -> torch.Tensor:
        return (1.0 - beta) * log_q(x) + beta * f(x)

    return log_gamma


def _summarize(log_w: torch.Tensor, kind: Kind, sign: float) -> LogZEstimate:
    """log Ẑ = sign · log mean exp(sign · log w), with its delta-method standard error."""
    s = sign * log_w.double()
    n = s.numel()
    log_mean = torch.logsumexp(s, 0) - math.log(n)
    w = torch.exp(s - log_mean)  # weights normalized to mean 1
    stderr = float(w.std() / math.sqrt(n)) if n > 1 else float("inf")
    return LogZEstimate(float(sign * log_mean), stderr, kind, log_w.cpu(), importance_ess(s))


def importance_ess(log_w: torch.Tensor) -> float:
    """Kish's effective sample size (Σw)²/Σw² of the importance weights w = exp(log_w) (Kish 1965;
    Liu 1996): n for equal weights, 1 when one weight holds everything."""
    w = torch.softmax(log_w.double(), 0)
    return float(1.0 / (w * w).sum())


def sir_temperature(log_w: torch.Tensor, min_ess: float, iterations: int = 40) -> float:
    """The largest β in [0, 1] with ``importance_ess(β·log_w) >= min_ess``: 1 when the plain
    weights already have that effective sample size, else found by bisection (the ESS falls
    as β grows: d log ESS/dβ = 2(E_β f − E_2β f) ≤ 0, E_β the mean under weights ∝ e^{βf}).
    At β = 0 the ESS is the number of weights, the most there is. This is the adaptive choice of
    the next temperature in SMC samplers (Jasra et al. 2011), here for the first step from q."""
    if importance_ess(log_w) >= min_ess:
        return 1.0
    lo, hi = 0.0, 1.0  # ESS(lo) >= min_ess > ESS(hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if importance_ess(mid * log_w) >= min_ess:
            lo = mid
        else:
            hi = mid
    return lo


def ais(
    f: LogDensityFn,
    kernel_at: Callable[[float], _Kernel],
    n_chains: int,
    dim: int,
    *,
    generator: torch.Generator,
    betas: torch.Tensor | int = 200,
    steps_per_temperature: int = 1,
    base_scale: float = 1.0,
    reverse_from: torch.Tensor | None = None,
    progress: bool = False,
) -> LogZEstimate:
    """Estimate log Z = log ∫ exp(f(x)) dx by annealed importance sampling.

    ``f`` maps ``(n, dim)`` to ``(n,)`` (an unnormalized log-density). ``kernel_at(beta)``
    returns an MCMC kernel (``init``/``step``) to use at inverse temperature ``beta``
    (e.g. ``lambda b: MALA(step_size=0.05)``). ``betas`` is the schedule 0 = β_0 < … < β_K = 1
    or its number of steps K (then a sigmoid-spaced schedule, dense at both ends).
    The base is q = N(0, base_scale² I).

    Forward (default): chains start from q; returns a stochastic lower bound
    (kind ``"lower_bound"``). With ``reverse_from`` (exact samples of π = exp(f)/Z, shape
    ``(n_chains, dim)``) the path runs backwards and the result is a stochastic upper bound
    (kind ``"upper_bound"``).
    """
    schedule = sigmoid_schedule(betas) if isinstance(betas, int) else betas.double()
    if schedule[0] != 0 or schedule[-1] != 1 or bool((schedule.diff() <= 0).any()):
        raise ValueError("betas must increase strictly from 0 to 1")
    sigma = float(base_scale)

    def log_q(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * (x**2).sum(-1) / sigma**2 - dim * (math.log(sigma) + 0.5 * math.log(2 * math.pi))

    reverse = reverse_from is not None
    # the chains live where the generator draws (or where the given samples are): a CUDA
    # generator runs AIS on the GPU, as a CUDA model's f needs
    device = reverse_from.device if reverse else generator.device
    if reverse:
        x = reverse_from.detach().clone()
        if x.shape != (n_chains, dim):
            raise ValueError(f"reverse_from must have shape ({n_chains}, {dim}), got {tuple(x.shape)}")
        order = list(range(len(schedule) - 1, 0, -1))  # β_K → β_1, then weights at β_{k−1}
    else:
        x = sigma * torch.randn(n_chains, dim, generator=generator, dtype=torch.float64, device=device)
        order = list(range(1, len(schedule)))
    log_w = torch.zeros(n_chains, dtype=torch.float64, device=device)
    for k in tqdm(order, disable=not progress, desc="AIS reverse" if reverse else "AIS", unit="β"):
        lo, hi = float(schedule[k - 1]), float(schedule[k])
        if reverse:
            # Transition that leaves π_{β_k} invariant, then the weight of moving β_k → β_{k−1}.
            x = _transitions(kernel_at(hi), geometric_path(f, log_q, hi), x, steps_per_temperature, generator)
            with torch.no_grad():
                log_w += (hi - lo) * (f(x).double() - log_q(x).double())
        else:
            with torch.no_grad():
                log_w += (hi - lo) * (f(x).double() - log_q(x).double())
            x = _transitions(kernel_at(hi), geometric_path(f, log_q, hi), x, steps_per_temperature, generator)
    if reverse:
        return _summarize(log_w, "upper_bound", sign=-1.0)
    return _summarize(log_w, "lower_bound", sign=1.0)


def _transitions(
    kernel: _Kernel, log_density: LogDensityFn, x: torch.Tensor, n: int, generator: torch.Generator | None
) -> torch.Tensor:
    state = kernel.init(x, log_density)
    for _ in range(n):
        state, _ = kernel.step(state, generator)
    return state.position.detach()


def sigmoid_schedule(n: int, rad: float = 4.0) -> torch.Tensor:
    """β_k = (σ(r(2k/n − 1)) − σ(−r)) / (σ(r) − σ(−r)), k = 0…n (Grosse et al. 2015, §5)."""
    if n < 1:
        raise ValueError(f"the schedule needs at least one step, got {n}")
    t = torch.linspace(-rad, rad, n + 1, dtype=torch.float64)
    s = torch.sigmoid(t)
    return (s - s[0]) / (s[-1] - s[0])
