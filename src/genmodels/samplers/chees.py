"""ChEES-HMC: many-chain HMC with a jittered trajectory length tuned by the ChEES criterion
(Hoffman, Radul & Sountsov 2021, "An Adaptive-MCMC Scheme for Setting Trajectory Lengths in
Hamiltonian Monte Carlo", AISTATS, PMLR 130; the criterion in §3, the gradient estimator,
jitter and Adam-based adaptation in §4 / Algorithm 1).

All n chains share one step size ε, one trajectory length T and one diagonal inverse mass
M⁻¹. At every step one jitter u ∈ (0, 1] is drawn for all chains, each chain integrates
L = ⌈u·T/ε⌉ leapfrog steps (the same L for every chain, so the step batches) and is accepted
or rejected on its own. Because u is drawn independently of the state, each step is a mixture
of HMC kernels with fixed L, each of which leaves π invariant, so the jittered kernel does too.

Warm-up (``run_chees_warmup``) adapts

* ε by dual averaging (Hoffman & Gelman 2014, Alg. 5; ``base.DualAveraging``) on the
  harmonic mean over chains of the acceptance probabilities, n / Σ_m 1/α_m, towards
  δ = 0.651 (Beskos et al. 2013's asymptotically optimal HMC acceptance), as Hoffman et al.
  2021 do. All chains share one ε, and the harmonic mean is dominated by the chains that
  accept least, so ε is set for the worst-placed chains instead of the typical one: with the
  arithmetic mean a minority of chains in high-curvature regions can rarely accept while the
  mean is on target, and such chains bias per-chain estimates (on the Banana the per-chain
  b² of ``benchmarks/bench_mcmc.py`` then stalls near 0.17; see docs/benchmarks.md). The cost
  is a smaller ε where curvature varies a lot (Neal's funnel). ``acceptance_mean="arithmetic"``
  keeps the plain mean;
* log T by Adam ascent on a stochastic estimate of the gradient of the ChEES criterion

      ChEES(T) = ¼ E[(‖x' − E[x]‖² − ‖x − E[x]‖²)²],

  with x the current and x' the proposed state. With α_m the acceptance probabilities of the
  chains, x̄ = (1/n) Σ_m x_m and x̄' = Σ_m α_m x'_m / Σ_m α_m, the per-chain estimate for a
  trajectory of time t = u·T is

      ĝ_m = t · (‖x'_m − x̄'‖² − ‖x_m − x̄‖²) · (x'_m − x̄')ᵀ v'_m,

  (v'_m = dx'_m/dt the final velocity; the factor t = ∂t/∂log T turns d/dt into d/dlog T),
  and ĝ = Σ_m α_m ĝ_m / Σ_m α_m is their acceptance-weighted average (Algorithm 1). Norms are
  measured in the coordinates whitened by the current diagonal mass, z = x / √(M⁻¹), in which
  (z' − z̄')ᵀ ż' = (x' − x̄')ᵀ p'. During warm-up T is only clipped from above, to
  ε·max_num_steps: right after a dual-averaging restart ε is briefly ~10× too large, and a
  lower clip T ≥ ε would push T past the first maximum of the jittered criterion (for a
  standard Gaussian, ¼E[…] averaged over t ~ U(0, T] ∝ ½ − sin(2T)/(4T), which has local
  maxima at T ≈ 2.25, 5.45, …). The log-space iterate average of T, clipped to
  [ε, ε·max_num_steps], is what warm-up returns;
* the diagonal M⁻¹ from the positions of all chains in Stan's doubling windows, exactly as
  ``base.run_warmup`` does (``warmup_windows``, ``regularized_variance``).

Options of ``run_chees_warmup`` beyond the paper:

* ``criterion="normalized"`` (the default; ``"chees"`` is the paper's): T ascends the
  coordinate-wise normalized criterion Σ_i ¼E[(a'_i − a_i)²]/Var[a_i], a_i = (x_i − E x_i)²
  (``normalized_chees_gradient``), i.e. ½ Σ_i (1 − lag-1 autocorrelation of a_i). For
  independent coordinates (a Gaussian in its eigenbasis) ChEES is the unweighted sum of the
  same terms, so T's optimum is the same; with
  heavy-tailed coordinates (Neal's funnel: the xᵢ, i ≥ 1, whose ‖·‖² is dominated by a few
  chains in the mouth) ChEES follows those few chains, the normalized criterion weighs every
  coordinate by its own spread. It is the default because it matched ChEES on the Gaussians
  and Rosenbrock and needed fewer gradients on the Banana and the funnel in
  ``benchmarks/bench_mcmc.py`` (docs/benchmarks.md);
* ``criterion="chees_rate"``: ascend ChEES/T (ChEES per gradient evaluation, since E[L] ∝ T):
  ∂ log(ChEES/T)/∂ log T ∝ ĝ − ChEES-estimate;
* ``step_size_adaptation="per_chain"``: one dual averaging per chain on its own acceptance
  probability, per-chain ε_m with one L = ⌈u·T/ε̄⌉ (ε̄ their mean), see ``ChEESHMC``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from genmodels.samplers.base import (
    DIVERGENCE_THRESHOLD,
    DualAveraging,
    Info,
    LogDensityFn,
    State,
    _check_generator,
    init_state,
    mass_windows,
    metropolis_accept,
    regularized_variance,
    select,
)
from genmodels.samplers.hmc import kinetic_energy, leapfrog

__all__ = [
    "ChEESHMC",
    "ChEESInfo",
    "chees_criterion",
    "chees_gradient",
    "halton",
    "normalized_chees_gradient",
    "run_chees_warmup",
]

CHEES_TARGET_ACCEPT = 0.651


def halton(index: int, base: int = 2) -> float:
    """The ``index``-th element (index ≥ 1) of the van der Corput / Halton sequence in ``base``,
    a low-discrepancy sequence in (0, 1): 1/2, 1/4, 3/4, 1/8, 5/8, … for base 2."""
    if index < 1:
        raise ValueError("halton index must be >= 1")
    result, f, i = 0.0, 1.0 / base, index
    while i > 0:
        result += f * (i % base)
        i //= base
        f /= base
    return result


@dataclass(frozen=True)
class ChEESInfo(Info):
    """``Info`` plus the number of leapfrog steps L (= gradient evaluations) of the step and
    the jitter u that set it, shared by all chains."""

    num_integration_steps: int = 0
    jitter: float = 1.0


@dataclass(frozen=True)
class _Transition:
    state: State
    info: ChEESInfo
    proposal: torch.Tensor  # (n, d) end of the trajectory, before accept/reject
    momentum: torch.Tensor  # (n, d) final momentum p'
    time: float | torch.Tensor  # t = L·ε (per chain (n,) with per-chain ε)


@dataclass(frozen=True, eq=False)
class ChEESHMC:
    """HMC with a jittered trajectory length shared by all chains (Hoffman et al. 2021).

    Each step draws u ~ U(0, 1] from the generator, runs L = min(⌈u·T/ε⌉, ``max_num_steps``)
    leapfrog steps (at least 1) for every chain with p ~ N(0, M) and accepts per chain with
    probability min(1, exp(−ΔH)). A non-finite ΔH (e.g. a NaN log-density) is a rejection.
    ``inverse_mass_matrix`` is ``None`` (identity) or a positive (d,) diagonal.

    ``step_size`` may also be a per-chain (n,) tensor ε_m: then L = ⌈u·T/ε̄⌉ with ε̄ the mean
    of the ε_m, still one L for all chains (so the step batches), and chain m integrates its L
    steps with its own ε_m, i.e. for a time L·ε_m. Each chain's kernel is then a jittered HMC
    kernel with fixed ε_m, so every chain still leaves π invariant.
    """

    step_size: float | torch.Tensor
    trajectory_length: float
    inverse_mass_matrix: torch.Tensor | None = None
    max_num_steps: int = 1000

    def __post_init__(self) -> None:
        eps = self.step_size
        if isinstance(eps, torch.Tensor):
            if eps.ndim != 1 or not bool(((eps > 0) & torch.isfinite(eps)).all()):
                raise ValueError("a per-chain step_size must be a positive, finite (n,) tensor")
        elif not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"step_size must be positive and finite, got {eps}")
        if not (self.trajectory_length > 0 and math.isfinite(self.trajectory_length)):
            raise ValueError(f"trajectory_length must be positive and finite, got {self.trajectory_length}")
        if self.max_num_steps < 1:
            raise ValueError("max_num_steps must be >= 1")
        m = self.inverse_mass_matrix
        if m is not None and (m.ndim != 1 or not bool((m > 0).all())):
            raise ValueError("inverse_mass_matrix must be None or a positive (d,) diagonal")

    def init(self, position: torch.Tensor, log_density: LogDensityFn) -> State:
        """State at ``position`` (n, d)."""
        return init_state(position, log_density)

    @property
    def reference_step_size(self) -> float:
        """ε, or with per-chain step sizes their mean ε̄ (which sets L)."""
        eps = self.step_size
        return float(eps.double().mean()) if isinstance(eps, torch.Tensor) else eps

    def num_integration_steps(self, jitter: float) -> int:
        """L = ⌈u·T/ε⌉ (ε̄ with per-chain step sizes) clipped to [1, ``max_num_steps``]."""
        steps = math.ceil(jitter * self.trajectory_length / self.reference_step_size)
        return int(min(max(steps, 1), self.max_num_steps))

    def step(self, state: State, generator: torch.Generator) -> tuple[State, ChEESInfo]:
        """One transition of every chain with a jitter u ~ U(0, 1] drawn from ``generator``."""
        generator = _check_generator(generator)
        u = 1.0 - float(torch.rand((), generator=generator, dtype=torch.float64))  # (0, 1]
        tr = self._transition(state, generator, u)
        return tr.state, tr.info

    def _transition(self, state: State, generator: torch.Generator, jitter: float) -> _Transition:
        x = state.position
        inv_mass = None if self.inverse_mass_matrix is None else self.inverse_mass_matrix.to(x)
        e = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        p0 = e if inv_mass is None else e / inv_mass.sqrt()
        num_steps = self.num_integration_steps(jitter)
        x1, p1, value1, grad1 = leapfrog(
            x, p0, state.grad, self.step_size, num_steps, state.log_density_fn, inv_mass
        )
        energy_error = (-value1 + kinetic_energy(p1, inv_mass)) - (
            -state.log_density + kinetic_energy(p0, inv_mass)
        )
        finite = torch.isfinite(energy_error) & torch.isfinite(x1).all(-1) & torch.isfinite(grad1).all(-1)
        divergent = ~finite | (energy_error.abs() > DIVERGENCE_THRESHOLD)
        log_ratio = torch.where(finite, -energy_error, torch.full_like(energy_error, -torch.inf))
        acceptance_rate, accept = metropolis_accept(log_ratio, generator)
        new = select(accept, State(x1, value1, grad1, state.log_density_fn), state)
        info = ChEESInfo(acceptance_rate, accept, divergent, energy_error, num_steps, jitter)
        return _Transition(new, info, x1, p1, num_steps * self.step_size)


def _whitened(x: torch.Tensor, inverse_mass: torch.Tensor | None) -> torch.Tensor:
    return x if inverse_mass is None else x / inverse_mass.sqrt()


def chees_criterion(
    position: torch.Tensor,
    proposal: torch.Tensor,
    acceptance_rate: torch.Tensor,
    inverse_mass: torch.Tensor | None = None,
) -> torch.Tensor:
    """Acceptance-weighted estimate of ChEES = ¼ E[(‖x' − E x‖² − ‖x − E x‖²)²] (§3):
    Σ_m α_m ¼ (‖x'_m − x̄'‖² − ‖x_m − x̄‖²)² / Σ_m α_m, norms in whitened coordinates."""
    c, _, w = _centered_terms(position, proposal, acceptance_rate, inverse_mass)
    return (w * 0.25 * c**2).sum() / w.sum().clamp_min(1e-20)


def _centered_terms(
    position: torch.Tensor,
    proposal: torch.Tensor,
    acceptance_rate: torch.Tensor,
    inverse_mass: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_m = ‖x'_m − x̄'‖² − ‖x_m − x̄‖², x'_m − x̄' (raw coordinates), weights α_m) with
    non-finite proposals (weight 0) replaced by the current position so they cannot poison x̄'."""
    x, x1 = position.double(), proposal.double()
    ok = torch.isfinite(x1).all(-1) & (acceptance_rate > 1e-4)
    w = torch.where(ok, acceptance_rate.double(), torch.zeros_like(acceptance_rate, dtype=torch.float64))
    x1 = torch.where(ok[:, None], x1, x)
    inv = None if inverse_mass is None else inverse_mass.double()
    x_c = x - x.mean(0)
    x1_c = x1 - (w[:, None] * x1).sum(0) / w.sum().clamp_min(1e-20)
    c = _whitened(x1_c, inv).pow(2).sum(-1) - _whitened(x_c, inv).pow(2).sum(-1)
    return c, x1_c, w


def _weighted_mean(g: torch.Tensor, w: torch.Tensor) -> float:
    """Σ_m w_m g_m / Σ_m w_m over the chains whose ĝ_m is finite; 0 when no chain has weight."""
    w = torch.where(torch.isfinite(g), w, torch.zeros_like(w))
    g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
    total = float(w.sum())
    return float((w * g).sum()) / total if total > 0 else 0.0


def chees_gradient(
    position: torch.Tensor,
    proposal: torch.Tensor,
    momentum: torch.Tensor,
    acceptance_rate: torch.Tensor,
    time: float | torch.Tensor,
    inverse_mass: torch.Tensor | None = None,
) -> float:
    """Estimate of ∂ChEES/∂log T for one jittered step (Algorithm 1):

        ĝ = Σ_m α_m ĝ_m / Σ_m α_m,   ĝ_m = t (‖x'_m − x̄'‖² − ‖x_m − x̄‖²) (x'_m − x̄')ᵀ p'_m

    (whitened norms; (z'−z̄')ᵀ ż' = (x'−x̄')ᵀ p' for z = x/√M⁻¹). Chains with α < 10⁻⁴ or a
    non-finite proposal or ĝ_m get weight 0. Returns 0 when no chain has weight."""
    c, x1_c, w = _centered_terms(position, proposal, acceptance_rate, inverse_mass)
    if isinstance(time, torch.Tensor):  # per-chain trajectory times t_m (n,)
        time = time.double()
    p1 = torch.nan_to_num(momentum.double(), nan=0.0, posinf=0.0, neginf=0.0)
    g = time * c * (x1_c * p1).sum(-1)
    return _weighted_mean(g, w)


class _PerChainDualAveraging:
    """``base.DualAveraging`` (Hoffman & Gelman 2014, Alg. 5, same constants) run
    independently for every chain on its own acceptance probability: tensors of shape (n,)."""

    def __init__(self, adapter: DualAveraging, step_size: torch.Tensor) -> None:
        self.a = adapter
        self.log_eps = step_size.double().log()
        self.mu = math.log(10.0) + self.log_eps
        self.log_eps_avg = torch.zeros_like(self.log_eps)
        self.error_avg = torch.zeros_like(self.log_eps)
        self.t = 0

    @property
    def step_size(self) -> torch.Tensor:
        return self.log_eps.exp()

    @property
    def final_step_size(self) -> torch.Tensor:
        return self.log_eps_avg.exp()

    def update(self, acceptance_rate: torch.Tensor) -> None:
        alpha = torch.nan_to_num(acceptance_rate.double(), nan=0.0).clamp(0.0, 1.0)
        self.t += 1
        eta = 1.0 / (self.t + self.a.t0)
        self.error_avg = (1.0 - eta) * self.error_avg + eta * (self.a.target_accept - alpha)
        self.log_eps = self.mu - math.sqrt(self.t) / self.a.gamma * self.error_avg
        w = self.t ** (-self.a.kappa)
        self.log_eps_avg = w * self.log_eps + (1.0 - w) * self.log_eps_avg


def normalized_chees_gradient(
    position: torch.Tensor,
    proposal: torch.Tensor,
    momentum: torch.Tensor,
    acceptance_rate: torch.Tensor,
    time: float | torch.Tensor,
    inverse_mass: torch.Tensor | None = None,
) -> float:
    """Estimate of ∂C/∂log T for the coordinate-wise normalized ChEES criterion

        C(T) = ¼ Σ_i E[(a'_i − a_i)²] / Var[a_i],   a_i = (x_i − E x_i)²,

    i.e. Σ_i ESJD(a_i) / (4 Var a_i) = ½ Σ_i (1 − ρ₁(a_i)) with ρ₁ the lag-1 autocorrelation of
    the centered square of coordinate i. For independent coordinates (a Gaussian in its
    eigenbasis) ChEES is Σ_i ¼E[(a'_i − a_i)²] and both have the same maximizer in T; C
    weights every coordinate by its own scale instead of by its share of ‖x − E x‖², so no
    heavy-tailed coordinate dominates and it does not depend on the mass matrix. Per chain

        ĝ_m = t Σ_i (a'_{mi} − a_{mi}) (x'_{mi} − x̄'_i) ẋ'_{mi} / V_i,   ẋ' = M⁻¹ p',

    V_i the variance over chains of a_{mi}, averaged with the weights of ``chees_gradient``."""
    _, x1_c, w = _centered_terms(position, proposal, acceptance_rate, None)
    x = position.double()
    a = (x - x.mean(0)).pow(2)
    a1 = x1_c.pow(2)
    var_a = a.var(0).clamp_min(1e-30)
    p1 = torch.nan_to_num(momentum.double(), nan=0.0, posinf=0.0, neginf=0.0)
    v1 = p1 if inverse_mass is None else p1 * inverse_mass.double()
    if isinstance(time, torch.Tensor):
        time = time.double()
    g = time * ((a1 - a) * x1_c * v1 / var_a).sum(-1)
    return _weighted_mean(g, w)


@dataclass
class _Adam:
    """Adam (Kingma & Ba 2015) on one scalar, as a maximizer; ``beta1 = 0`` is RMSProp with
    bias correction, the variant of the reference implementation of Hoffman et al. 2021."""

    learning_rate: float
    beta1: float
    beta2: float
    m: float = 0.0
    v: float = 0.0
    t: int = 0

    def ascent_step(self, grad: float) -> float:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad * grad
        m_hat = self.m / (1 - self.beta1**self.t) if self.beta1 > 0 else self.m
        v_hat = self.v / (1 - self.beta2**self.t)
        return self.learning_rate * m_hat / (math.sqrt(v_hat) + 1e-20)


def run_chees_warmup(
    position: torch.Tensor,
    log_density: LogDensityFn,
    num_steps: int,
    generator: torch.Generator,
    *,
    target_accept: float = CHEES_TARGET_ACCEPT,
    initial_step_size: float = 0.1,
    initial_trajectory_length: float | None = None,
    learning_rate: float = 0.025,
    beta1: float = 0.0,
    beta2: float = 0.95,
    max_log_update: float = 0.35,
    max_num_steps: int = 1000,
    jitter: Literal["halton", "uniform"] = "halton",
    acceptance_mean: Literal["arithmetic", "harmonic"] = "harmonic",
    step_size_adaptation: Literal["shared", "per_chain"] = "shared",
    criterion: Literal["chees", "chees_rate", "normalized"] = "normalized",
    adapt_mass: bool = True,
) -> tuple[ChEESHMC, State]:
    """Tune ε, T and a diagonal M⁻¹ for ``ChEESHMC`` with the n chains of ``position`` (n, d).

    Per step i (jitter u_i = Halton(i + 1) in base 2, or U(0, 1] from ``generator``):

    1. one ChEES-HMC transition with the current (ε_i, T_i, M⁻¹);
    2. ε: ``DualAveraging(target_accept)`` on the harmonic mean n / Σ 1/α_m of the chains'
       acceptance probabilities (``acceptance_mean="arithmetic"``: their plain mean);
    3. log T_{i+1} = log T_i + clip(Adam(ĝ_i), ±``max_log_update``) with ĝ_i from
       ``chees_gradient``, then T clipped to ≤ ε_{i+1}·``max_num_steps``; the returned
       T is the iterate average log T̄ ← w log T + (1 − w) log T̄, w = k^{-1/2} (k counts the
       steps since the last mass update);
    4. if ``adapt_mass``, Stan's windows: at each window end M⁻¹ ← ``regularized_variance`` of
       the window's positions of all chains; dual averaging restarts from the current ε and the
       T average restarts.

    ``step_size_adaptation="per_chain"``: step 2 runs dual averaging separately for every chain
    on its own acceptance probability (``acceptance_mean`` is then unused), giving per-chain
    step sizes ε_m; L = ⌈u·T/ε̄⌉ with ε̄ their mean, chain m's trajectory lasts L·ε_m, and the
    ChEES gradient uses each chain's own time t_m = L·ε_m. The clip of T uses ε̄.

    ``criterion="normalized"``: step 3 uses ``normalized_chees_gradient`` (the coordinate-wise
    normalized criterion); ``"chees_rate"``: ĝ − ``chees_criterion`` (ascent on ChEES/T).

    T starts at ``initial_trajectory_length`` (default: ``initial_step_size``, i.e. one step).
    Returns the tuned kernel (ε̄ of dual averaging, averaged T) and the final state.
    """
    generator = _check_generator(generator)
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    if criterion not in ("chees", "chees_rate", "normalized"):
        raise ValueError(f"unknown criterion {criterion!r}")
    if step_size_adaptation not in ("shared", "per_chain"):
        raise ValueError(f"unknown step_size_adaptation {step_size_adaptation!r}")
    per_chain = step_size_adaptation == "per_chain"
    adapter = DualAveraging(target_accept=target_accept)
    n = position.shape[0]
    da = adapter.init(initial_step_size)
    if per_chain:
        da_m = _PerChainDualAveraging(adapter, torch.full((n,), float(initial_step_size)))
    adam = _Adam(learning_rate, beta1, beta2)
    log_t = math.log(initial_trajectory_length or initial_step_size)
    log_t_avg, k = log_t, 0
    inverse_mass: torch.Tensor | None = None
    in_window, window_end = mass_windows(num_steps, adapt_mass)
    state = init_state(position, log_density)
    collected: list[torch.Tensor] = []
    for i in range(num_steps):
        eps = da_m.step_size.to(position.dtype) if per_chain else da.step_size
        eps_ref = float(da_m.step_size.mean()) if per_chain else eps
        log_t = min(log_t, math.log(eps_ref * max_num_steps))
        kernel = ChEESHMC(eps, math.exp(log_t), inverse_mass, max_num_steps)
        u = halton(i + 1) if jitter == "halton" else 1.0 - float(torch.rand((), generator=generator))
        previous = state
        tr = kernel._transition(state, generator, u)
        state, alpha = tr.state, tr.info.acceptance_rate.double()
        if per_chain:
            da_m.update(alpha)
            eps_ref = float(da_m.step_size.mean())
        else:
            if acceptance_mean == "harmonic":
                mean_accept = float(1.0 / (1.0 / alpha.clamp_min(1e-10)).mean())
            else:
                mean_accept = float(alpha.mean())
            da = adapter.update(da, mean_accept)
            eps_ref = da.step_size

        gradient_fn = normalized_chees_gradient if criterion == "normalized" else chees_gradient
        grad = gradient_fn(
            previous.position, tr.proposal, tr.momentum, tr.info.acceptance_rate, tr.time, inverse_mass
        )
        if criterion == "chees_rate":  # ∂(ChEES/T)/∂log T ∝ ∂ChEES/∂log T − ChEES
            value = chees_criterion(previous.position, tr.proposal, tr.info.acceptance_rate, inverse_mass)
            grad -= float(value) if math.isfinite(float(value)) else 0.0
        update = adam.ascent_step(grad)
        log_t += min(max(update, -max_log_update), max_log_update)
        log_t = min(log_t, math.log(eps_ref * max_num_steps))
        k += 1
        w = k**-0.5
        log_t_avg = w * log_t + (1.0 - w) * log_t_avg

        if in_window[i]:
            collected.append(state.position)
        if i + 1 in window_end:
            inverse_mass = regularized_variance(torch.cat(collected)).to(state.position.dtype)
            collected = []
            if per_chain:
                da_m = _PerChainDualAveraging(adapter, da_m.step_size)
            else:
                da = adapter.init(da.step_size)
            k, log_t_avg = 0, log_t
    if per_chain:
        eps_final = da_m.final_step_size.to(position.dtype)
        eps_ref = float(eps_final.double().mean())
        trajectory = min(max(math.exp(log_t_avg), eps_ref), eps_ref * max_num_steps)
        return ChEESHMC(eps_final, trajectory, inverse_mass, max_num_steps), state
    eps = da.final_step_size
    trajectory = min(max(math.exp(log_t_avg), eps), eps * max_num_steps)
    return ChEESHMC(eps, trajectory, inverse_mass, max_num_steps), state
