"""Forward noising processes of diffusion models (tutorial §5), in one parametrisation.

Every process here is linear: given the clean x₀,

    x_t = α(t) x₀ + σ(t) ε,   ε ~ N(0, I),   t ∈ [t_min, 1].

It is the solution of the forward SDE dx = f(t) x dt + g(t) dw with f = d log α/dt and
g² = dσ²/dt − 2 f σ² (Song et al. 2021, "Score-based generative modeling through SDEs",
eqs. 11–12, 29–30). In the *scaled* coordinates

    x̄ = x / α,   σ̃ = σ / α   (so x̄_t = x₀ + σ̃(t) ε),

every such process is the tutorial's additive chain x_t = x₀ + N(0, σ̃² I) — the variance
exploding (VE) case — run on its own clock σ̃(t) (Karras et al. 2022, "EDM", §2 and eq. 4):
the probability-flow ODE and the reverse SDE are the same in x̄ for all of them, and only the
noise levels a network is trained on differ. ``genmodels.diffusion.solvers`` therefore work
in (x̄, σ̃), and a process only needs to say how t, α and σ̃ relate:

============  =============================================  ===============================
process       α(t)                                           σ(t)
============  =============================================  ===============================
``ve``        1                                              σ_min (σ_max/σ_min)^t
``vp``        exp(−½ B(t)),  B(t) = ∫₀ᵗ β = β₀t + ½(β₁−β₀)t²  √(1 − α²)
``subvp``     exp(−½ B(t))                                   1 − α²
``ddpm``      √ᾱ_i at t = i/N, ᾱ_i = ∏_{j≤i}(1 − β_j),       √(1 − α²)
              log ᾱ linear in t between the N levels
============  =============================================  ===============================

(VE and VP are Song et al.'s eqs. 30–32; sub-VP their eq. 34; DDPM is Ho et al. 2020 with the
linear β schedule 10⁻⁴ … 0.02 or the cosine schedule of Nichol & Dhariwal 2021, eq. 17,
with the continuous-time interpolation of Lu et al. 2022, "DPM-Solver", App. D.)
"""

from __future__ import annotations

import math
from typing import Literal

import torch

ProcessName = Literal["vp", "subvp", "ve", "ddpm"]
PROCESSES: tuple[str, ...] = ("vp", "subvp", "ve", "ddpm")


Density = Literal["time", "log_sigma", "log_normal"]
DENSITIES: tuple[str, ...] = ("time", "log_sigma", "log_normal")
#: the log-normal training density of Karras et al. (2022): log σ̃ ~ N(−1.2, 1.2²), for data
#: of unit variance (genmodels standardizes every dataset)
LOG_NORMAL_MEAN, LOG_NORMAL_STD = -1.2, 1.2


class Process:
    """A linear forward process x_t = α(t) x₀ + σ(t) ε on t ∈ [t_min, 1]; see the module doc.

    Subclasses define ``log_alpha(t)`` and ``sigma_tilde(t)`` and the inverse
    ``t_of_sigma_tilde``; all methods take and return float64 tensors of any shape.
    """

    name: str = "process"
    #: True when training draws t from the N levels i/N only (DDPM)
    discrete: bool = False
    t_min: float

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma_tilde_sq(self, t: torch.Tensor) -> torch.Tensor:
        """σ̃(t)² (smooth at t = 0, unlike σ̃ itself for VP)."""
        raise NotImplementedError

    def sigma_tilde(self, t: torch.Tensor) -> torch.Tensor:
        """σ̃(t) = σ(t)/α(t), the noise level of the scaled coordinates x̄ = x/α."""
        return self.sigma_tilde_sq(t).sqrt()

    def t_of_sigma_tilde(self, sigma_tilde: torch.Tensor) -> torch.Tensor:
        """The inverse of σ̃(t) on [t_min, 1]."""
        raise NotImplementedError

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.alpha(t) * self.sigma_tilde(t)

    @property
    def sigma_tilde_min(self) -> float:
        return float(self.sigma_tilde(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_tilde_max(self) -> float:
        return float(self.sigma_tilde(torch.tensor(1.0, dtype=torch.float64)))

    def drift_and_diffusion(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(t) = d log α/dt and g²(t) = dσ²/dt − 2 f σ² of the forward SDE (by autograd)."""
        t = t.detach().to(torch.float64).requires_grad_(True)
        with torch.enable_grad():
            log_a = self.log_alpha(t) + 0.0 * t  # keeps the graph when α is constant (VE)
            var = torch.exp(2 * log_a) * self.sigma_tilde_sq(t)
            f = torch.autograd.grad(log_a.sum(), t, retain_graph=True)[0]
            dvar = torch.autograd.grad(var.sum(), t)[0]
        return f.detach(), (dvar - 2 * f * var).detach()

    def sample_t(
        self,
        n: int,
        generator: torch.Generator | None,
        device: torch.device | str = "cpu",
        density: Density = "time",
        log_mean: float = LOG_NORMAL_MEAN,
        log_std: float = LOG_NORMAL_STD,
    ) -> torch.Tensor:
        """Training times (float64, shape (n,)): uniform on [t_min, 1] (``time``); with
        log σ̃ uniform (``log_sigma``: density ∝ d log σ̃/dt ∝ g²/σ², the importance
        distribution of the likelihood weighting, Song et al. 2021b, §4); or with log σ̃ normal
        N(log_mean, log_std²) truncated to [σ̃_min, σ̃_max] (``log_normal``, Karras et al.
        2022, §5, by the inverse CDF so that nothing piles up at the ends)."""
        where = generator.device if generator is not None else None
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=where)
        if density == "time":
            return (self.t_min + (1.0 - self.t_min) * u).to(device)
        lo, hi = math.log(self.sigma_tilde_min), math.log(self.sigma_tilde_max)
        if density == "log_sigma":
            log_s = lo + (hi - lo) * u
        elif density == "log_normal":
            a, b = (torch.special.ndtr(_f64((v - log_mean) / log_std)) for v in (lo, hi))
            log_s = log_mean + log_std * torch.special.ndtri(a + (b - a) * u)
        else:
            raise ValueError(f"unknown density {density!r}; choose one of: {', '.join(DENSITIES)}")
        return (
            self.t_of_sigma_tilde(torch.exp(log_s).clamp(math.exp(lo), math.exp(hi)))
            .clamp(self.t_min, 1.0)
            .to(device)
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(σ̃ from {self.sigma_tilde_min:.3g} to {self.sigma_tilde_max:.3g}, "
            f"t_min={self.t_min:.3g})"
        )


def _f64(t: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class VE(Process):
    """Variance exploding: α = 1, σ(t) = σ_min (σ_max/σ_min)^t, t ∈ [0, 1] (SMLD / NCSN)."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 50.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.s_min, self.s_max = float(sigma_min), float(sigma_max)
        self.t_min = 0.0

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(_f64(t))

    def sigma_tilde(self, t: torch.Tensor) -> torch.Tensor:
        return self.s_min * (self.s_max / self.s_min) ** _f64(t)

    def sigma_tilde_sq(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_tilde(t) ** 2

    def t_of_sigma_tilde(self, sigma_tilde: torch.Tensor) -> torch.Tensor:
        return (_f64(sigma_tilde) / self.s_min).log() / math.log(self.s_max / self.s_min)


class VP(Process):
    """Variance preserving with linear β(t) = β₀ + (β₁ − β₀)t; ``sub=True`` gives sub-VP.

    B(t) = ∫₀ᵗ β(s) ds, α = e^{−B/2}; VP: σ² = 1 − α², σ̃² = e^{B} − 1;
    sub-VP: σ = 1 − α², σ̃ = (1 − α²)/α. ``t_min`` is where σ̃ reaches ``sigma_min``.
    """

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, sigma_min: float = 0.002, sub: bool = False
    ) -> None:
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.b0, self.b1, self.sub = float(beta_min), float(beta_max), sub
        self.name = "subvp" if sub else "vp"
        self.t_min = float(self.t_of_sigma_tilde(_f64(sigma_min)))
        if not 0 < self.t_min < 1:
            raise ValueError(f"sigma_min={sigma_min} is outside the process's range")

    def _B(self, t: torch.Tensor) -> torch.Tensor:
        t = _f64(t)
        return self.b0 * t + 0.5 * (self.b1 - self.b0) * t**2

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * self._B(t)

    def sigma_tilde(self, t: torch.Tensor) -> torch.Tensor:
        if self.sub:  # (1 − e^{−B}) e^{B/2} = 2 sinh(B/2)
            return 2.0 * torch.sinh(0.5 * self._B(t))
        return torch.expm1(self._B(t)).sqrt()

    def sigma_tilde_sq(self, t: torch.Tensor) -> torch.Tensor:
        return (2.0 * torch.sinh(0.5 * self._B(t))) ** 2 if self.sub else torch.expm1(self._B(t))

    def t_of_sigma_tilde(self, sigma_tilde: torch.Tensor) -> torch.Tensor:
        s = _f64(sigma_tilde)
        B = 2.0 * torch.asinh(0.5 * s) if self.sub else torch.log1p(s**2)
        db = self.b1 - self.b0
        return 2.0 * B / (self.b0 + torch.sqrt(self.b0**2 + 2.0 * db * B))  # root of ½Δβ t² + β₀t = B


class DDPM(Process):
    """The discrete DDPM chain q(x_i | x_{i−1}) = N(√(1−β_i) x_{i−1}, β_i I), i = 1…N.

    ᾱ_i = ∏_{j≤i} (1 − β_j); the level i sits at t = i/N with α = √ᾱ_i. Between levels
    log ᾱ is interpolated linearly in t, which makes the samplers' continuous clock exact at
    every level. Training draws t from the levels only (``discrete``).
    """

    name = "ddpm"
    discrete = True

    def __init__(self, n_steps: int = 1000, schedule: Literal["linear", "cosine"] = "linear") -> None:
        if n_steps < 2:
            raise ValueError(f"a DDPM needs at least 2 levels, got n_steps={n_steps}")
        i = torch.arange(n_steps + 1, dtype=torch.float64)
        if schedule == "linear":  # Ho et al. 2020, scaled for N ≠ 1000 as in Nichol & Dhariwal
            scale = 1000.0 / n_steps
            betas = torch.linspace(scale * 1e-4, scale * 0.02, n_steps, dtype=torch.float64)
        elif schedule == "cosine":  # Nichol & Dhariwal 2021, eq. 17, s = 0.008, β ≤ 0.999
            f = torch.cos((i / n_steps + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of: linear, cosine")
        self.n_steps, self.schedule = n_steps, schedule
        self.betas = betas
        #: log ᾱ_i for i = 0…N (log ᾱ_0 = 0)
        self.log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log1p(-betas).cumsum(0)])
        self.t_min = 1.0 / n_steps

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        pos = (_f64(t) * self.n_steps).clamp(0, self.n_steps)
        lo = pos.floor().clamp(max=self.n_steps - 1)
        w = pos - lo
        lab = self.log_alpha_bar.to(pos.device)
        return 0.5 * ((1 - w) * lab[lo.long()] + w * lab[lo.long() + 1])

    def sigma_tilde_sq(self, t: torch.Tensor) -> torch.Tensor:
        return torch.expm1(-2.0 * self.log_alpha(t))

    def t_of_sigma_tilde(self, sigma_tilde: torch.Tensor) -> torch.Tensor:
        target = -torch.log1p(_f64(sigma_tilde) ** 2)  # log ᾱ, decreasing in i
        lab = self.log_alpha_bar.to(target.device)
        hi = torch.searchsorted(-lab, -target.contiguous()).clamp(1, self.n_steps)
        lo = hi - 1
        w = (target - lab[lo]) / (lab[hi] - lab[lo])
        return (lo + w.clamp(0, 1)) / self.n_steps

    def sample_t(
        self,
        n: int,
        generator: torch.Generator | None,
        device: torch.device | str = "cpu",
        density: Density = "time",
        log_mean: float = LOG_NORMAL_MEAN,
        log_std: float = LOG_NORMAL_STD,
    ) -> torch.Tensor:
        """Training levels, returned as t = i/N: i ~ U{1…N} (``time``), or with probability
        ∝ log σ̃_i − log σ̃_{i−1} (``log_sigma``; level 1 gets the interval of level 2), times
        the normal density of log σ̃_i (``log_normal``)."""
        where = generator.device if generator is not None else None
        if density == "time":
            i = torch.randint(1, self.n_steps + 1, (n,), generator=generator, device=where)
            return (i.to(torch.float64) / self.n_steps).to(device)
        log_s = 0.5 * torch.log(torch.expm1(-self.log_alpha_bar[1:]))
        gaps = log_s.diff()
        probs = torch.cat([gaps[:1], gaps]).clamp_min(0)
        if density == "log_normal":
            probs = probs * torch.exp(-0.5 * ((log_s - log_mean) / log_std) ** 2)
        elif density != "log_sigma":
            raise ValueError(f"unknown density {density!r}; choose one of: {', '.join(DENSITIES)}")
        i = torch.multinomial(probs.to(where or "cpu"), n, replacement=True, generator=generator) + 1
        return (i.to(torch.float64) / self.n_steps).to(device)


def make_process(
    name: str,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 50.0,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    n_steps: int = 1000,
    schedule: Literal["linear", "cosine"] = "linear",
) -> Process:
    """The process called ``name`` (one of ``PROCESSES``) with the given parameters."""
    if name == "ve":
        return VE(sigma_min, sigma_max)
    if name in ("vp", "subvp"):
        return VP(beta_min, beta_max, sigma_min, sub=name == "subvp")
    if name == "ddpm":
        return DDPM(n_steps, schedule)
    raise ValueError(f"unknown process {name!r}; choose one of: {', '.join(PROCESSES)}")
