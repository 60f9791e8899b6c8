"""``equilibrium.gif``: Langevin as squeezing plus diffusion, π its fixed point (tutorial §4, §7.6).

The tutorial splits a Langevin step into two halves (§4;
:func:`genmodels.samplers.langevin.gradient_half_step` and
:func:`~genmodels.samplers.langevin.noise_half_step`):

* the gradient half-step x ← x + s ∇log π(x) ("gradient ascent as squeezing") pulls every
  particle uphill, so the particle density P_θ gets *sharper* than π at the modes;
* the noise half-step x ← x + √(2s) ε, ε ~ N(0, 1) ("random perturbation as diffusion")
  spreads it out again.

With x ~ π the first changes E[h(x)] by −s E[h″] and the second by +s E[h″] (to first order):
the two cancel and π is the fixed point. The figure runs this on particles of the 3-mode
target of ``mode_covering.gif`` (:func:`genmodels.figures.modes.three_mode_target`), drawn
from a smoothed π, π * N(0, τ²), and plots their Gaussian KDE (red P_θ) over π (blue) in four
frames: (1) the smoothed start, (2) after one gradient half-step (sharper than π, overshooting
at the peaks), (3) after another (spiky), (4) after the diffusion that matches both squeezes,
x ← x + √(2 s k) ε for k squeezes (a Lie–Trotter splitting of the Langevin SDE over time k·s:
the drift flow first, by k Euler steps, then the diffusion; k = 1 is the plain alternation).
Grey →← arrows under the modes mark the squeeze; dot-ended bars under the valleys span
±2 standard deviations of the perturbation.

The default τ makes the drawn cycle stationary for a Gaussian mode of variance σ²: a squeeze
multiplies the variance by (1 − s/σ²)², the diffusion adds 2sk, so V = σ² + τ² is kept when
τ² = 2sk / (1 − (1 − s/σ²)^{2k}) − σ². (At this large s the split step's fixed point is that
smoothed π, not π itself.) The fixed point π is measured separately with small steps: from
the same smoothed start, ``relax_steps`` full Langevin steps (:class:`genmodels.samplers.Langevin`,
exact score) bring D_KL(π_h‖P̂_h) — π_h = π * N(0, h²) the expected KDE, P̂_h the particles'
KDE, by quadrature — down to the value exact samples of π give (its sampling floor).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genmodels.distributions import GaussianMixture
from genmodels.figures.common import (
    ARROW_GREY,
    GREY,
    LABEL_COLOR,
    MODEL_COLOR,
    TARGET_COLOR,
    FigureResult,
    curve_axes,
    new_frame,
    render,
    write_gif,
)
from genmodels.figures.langevin import exact_score_log_density
from genmodels.figures.modes import three_mode_target
from genmodels.samplers import Langevin
from genmodels.samplers.langevin import gradient_half_step, noise_half_step

__all__ = [
    "equilibrium_sampling",
    "kde",
    "kde_on_grid",
    "kl_to_smoothed_target",
    "stationary_smoothing",
]

_F64 = torch.float64
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def kde(particles: torch.Tensor, xs: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian kernel density estimate (1/n) Σᵢ N(x; xᵢ, h²) of 1-D ``particles`` on ``xs``."""
    p = particles.reshape(-1).to(_F64)
    z = (xs[:, None] - p[None, :]) / bandwidth
    log_k = -0.5 * z**2 - math.log(bandwidth) - _LOG_SQRT_2PI
    return torch.exp(torch.logsumexp(log_k, 1) - math.log(p.numel()))


def kde_on_grid(particles: torch.Tensor, xs: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """:func:`kde` on an evenly spaced grid ``xs`` in O(n + G·h/δ): linear binning of the particles
    onto the grid, then a discrete convolution with the Gaussian kernel (Silverman 1982, "Kernel
    density estimation using the fast Fourier transform", Appl. Statist. 31(1)); the binning
    error is O(δ²/h²) for grid spacing δ. Particles outside the grid are dropped."""
    p = particles.reshape(-1).to(_F64)
    delta = float(xs[1] - xs[0])
    pos = (p - float(xs[0])) / delta
    left = torch.floor(pos)
    frac = pos - left
    left = left.long()
    weights = torch.zeros(xs.numel() + 1, dtype=_F64)
    ok = (left >= 0) & (left < xs.numel() - 1)
    weights.index_add_(0, left[ok], 1.0 - frac[ok])
    weights.index_add_(0, left[ok] + 1, frac[ok])
    weights = weights[:-1] / p.numel()
    reach = math.ceil(12.0 * bandwidth / delta)
    offsets = torch.arange(-reach, reach + 1, dtype=_F64) * delta
    kernel = torch.exp(-0.5 * (offsets / bandwidth) ** 2 - _LOG_SQRT_2PI) / bandwidth
    dens = torch.nn.functional.conv1d(weights[None, None], kernel.flip(0)[None, None], padding=reach)
    return dens[0, 0]


def kl_to_smoothed_target(
    target: GaussianMixture, particles: torch.Tensor, bandwidth: float, lo: float, hi: float, n: int = 4001
) -> float:
    """D_KL(π_h‖P̂_h) by the trapezoid rule: π_h = π * N(0, h²) (the KDE's expectation under exact
    samples of π) against the particles' KDE P̂_h with the same bandwidth h (:func:`kde_on_grid`)."""
    xs = torch.linspace(lo, hi, n, dtype=_F64)
    log_pi = target.convolve(bandwidth).log_prob(xs[:, None]).to(_F64)
    log_q = torch.log(kde_on_grid(particles, xs, bandwidth).clamp_min(1e-300))
    return float(torch.trapezoid(torch.exp(log_pi) * (log_pi - log_q), xs))


def stationary_smoothing(sigma: float, s: float, squeezes: int) -> float:
    """τ such that π_k = N(μ, σ² + τ²) is kept by ``squeezes`` gradient half-steps of size s on
    N(μ, σ²) followed by the noise √(2 s k) ε; raises ValueError when no such τ ≥ 0 exists."""
    shrink = (1.0 - s / sigma**2) ** (2 * squeezes)
    if not 0.0 <= shrink < 1.0 or s <= 0:
        raise ValueError(f"need 0 < s < 2σ² for the squeeze to contract, got s={s}, σ={sigma}")
    v = 2.0 * s * squeezes / (1.0 - shrink)
    if v < sigma**2:
        raise ValueError(f"s={s} diffuses less than it squeezes; no stationary smoothing exists")
    return math.sqrt(v - sigma**2)


def equilibrium_sampling(
    out: str | Path,
    n_particles: int = 20000,
    spacing: float = 2.0,
    sigma: float = 0.18,
    centre_ratio: float = 1.45,
    squeeze: float = 0.35,
    squeezes: int = 2,
    smoothing: float | None = None,
    bandwidth: float = 0.05,
    relax_step_size: float = 0.002,
    relax_steps: int = 250,
    floor_repeats: int = 5,
    seed: int = 0,
    printer: Callable[[str], None] | None = print,
) -> FigureResult:
    """Squeeze and diffuse particles of the 3-mode π, write ``out/equilibrium.gif``, measure the fixed point.

    Args:
        out: output folder.
        n_particles: particles of the cloud.
        spacing, sigma, centre_ratio: the target π (:func:`three_mode_target`).
        squeeze: s/σ², the size of each gradient half-step x ← x + s ∇log π(x) relative to a mode's variance.
        squeezes: k, gradient half-steps before the diffusion x ← x + √(2sk) ε (frames 2 … k+1).
        smoothing: τ of the start π * N(0, τ²); ``None``: the τ that makes the cycle stationary.
        bandwidth: h of the KDEs (drawn and measured).
        relax_step_size, relax_steps: Δt and the number of full Langevin steps of the fixed-point run.
        floor_repeats: sets of exact samples of π used to estimate the floor of the KL.
        seed: seed of every draw. printer: where the numbers go (``None``: nowhere).

    Returns a :class:`FigureResult` with ``numbers``: ``s``, ``smoothing`` (τ), ``frames`` (the
    half-step applied before each frame), ``peak_ratio`` (KDE / π_h at the three mode centres,
    one list per frame), ``kl_frames`` (D_KL(π_h‖P̂_h) per frame), ``kl_start`` and ``kl_relaxed``
    (before and after the ``relax_steps`` Langevin steps), ``kl_floor`` and ``kl_floor_sd``
    (mean and standard deviation of that KL for exact samples of π).
    """
    if n_particles < 2 or squeezes < 1 or relax_steps < 0 or floor_repeats < 2:
        raise ValueError("need n_particles >= 2, squeezes >= 1, relax_steps >= 0 and floor_repeats >= 2")
    if not 0.0 < squeeze < 1.0:
        raise ValueError(f"squeeze (s/σ²) must lie in (0, 1), got {squeeze}")
    if bandwidth <= 0 or relax_step_size <= 0:
        raise ValueError("bandwidth and relax_step_size must be positive")
    target = three_mode_target(spacing, sigma, centre_ratio)
    s = squeeze * sigma**2
    tau = stationary_smoothing(sigma, s, squeezes) if smoothing is None else float(smoothing)
    if tau < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    gen = torch.Generator().manual_seed(seed)
    start = target.convolve(tau).sample(n_particles, generator=gen).double()

    # the drawn cycle: k gradient half-steps (squeezing), then the matching noise (diffusion)
    clouds, labels = [start], ["start: π smoothed"]
    x = start
    for k in range(squeezes):
        x = gradient_half_step(x, target.score(x), 2.0 * s)  # x + s ∇log π(x)
        clouds.append(x)
        labels.append(f"gradient half-step {k + 1}: squeezing")
    x = noise_half_step(x, 2.0 * s * squeezes, gen)  # x + √(2sk) ε
    clouds.append(x)
    labels.append("noise half-step: diffusion")

    # the fixed point: full Langevin steps with a small step from the same start
    kernel = Langevin(step_size=relax_step_size)
    state = kernel.init(start, exact_score_log_density(target))
    for _ in range(relax_steps):
        state, _ = kernel.step(state, gen)
    half = 2.2 * spacing
    lo, hi = -half - 1.0, half + 1.0
    kl_start = kl_to_smoothed_target(target, start, bandwidth, lo, hi)
    kl_relaxed = kl_to_smoothed_target(target, state.position, bandwidth, lo, hi)
    floors = [
        kl_to_smoothed_target(target, target.sample(n_particles, generator=gen).double(), bandwidth, lo, hi)
        for _ in range(floor_repeats)
    ]
    floor, floor_sd = float(np.mean(floors)), float(np.std(floors, ddof=1))

    xs = torch.linspace(-half, half, 801, dtype=_F64)
    pi = torch.exp(target.log_prob(xs[:, None])).to(_F64)
    centres = torch.tensor([-spacing, 0.0, spacing], dtype=_F64)
    pi_h_modes = torch.exp(target.convolve(bandwidth).log_prob(centres[:, None])).to(_F64)
    curves = [kde_on_grid(c, xs, bandwidth) for c in clouds]
    peak_ratio = [(kde(c, centres, bandwidth) / pi_h_modes).tolist() for c in clouds]
    kl_frames = [kl_to_smoothed_target(target, c, bandwidth, lo, hi) for c in clouds]
    numbers = {
        "s": s,
        "smoothing": tau,
        "frames": labels,
        "peak_ratio": peak_ratio,
        "kl_frames": kl_frames,
        "kl_start": kl_start,
        "kl_relaxed": kl_relaxed,
        "kl_floor": floor,
        "kl_floor_sd": floor_sd,
    }
    if printer is not None:
        printer(
            f"equilibrium: {n_particles} particles on the 3-mode π (σ = {sigma}); s = {s:.4f} "
            f"(s/σ² = {squeeze}), start π * N(0, {tau:.3f}²), KDE h = {bandwidth}"
        )
        for lab, r, k in zip(labels, peak_ratio, kl_frames, strict=True):
            printer(f"  {lab:<36} P/π at the modes ({', '.join(f'{v:.2f}' for v in r)})  KL = {k:.4f}")
        printer(
            f"  fixed point: D_KL(π_h‖P̂_h) = {kl_start:.4f} at the start → {kl_relaxed:.4f} after "
            f"{relax_steps} Langevin steps of Δt = {relax_step_size}; exact samples of π give "
            f"{floor:.4f} ± {floor_sd:.4f}"
        )

    top = 1.08 * max(float(pi.max()), max(float(c.max()) for c in curves))
    noise_sd = math.sqrt(2.0 * s * squeezes)
    images = []
    n_frames = len(clouds)
    for i, c in enumerate(curves):
        arrows = i < n_frames - 2  # a squeeze comes next
        bars = i == n_frames - 2  # the diffusion comes next
        images.append(
            _frame(
                xs.numpy(),
                pi.numpy(),
                c.numpy(),
                top,
                spacing,
                arrows,
                bars,
                noise_sd,
                f"({i + 1}) {labels[i]}",
            )
        )
    path = write_gif(images, Path(out) / "equilibrium.gif")
    return FigureResult([path], numbers)


def _frame(xs, pi, model, top, spacing, arrows, bars, noise_sd, caption):
    fig = new_frame("equilibrium sampling")
    ax = curve_axes(fig)
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(0.0, top)
    ax.plot(xs, pi, color=TARGET_COLOR, lw=2.2)
    ax.plot(xs, model, color=MODEL_COLOR, lw=2.2)
    span = xs[-1] - xs[0]
    label = {"fontsize": 15, "color": LABEL_COLOR, "clip_on": False}
    k = int(np.argmax(pi))
    ax.text(xs[k] + 0.05 * span, pi[k], r"$\pi$", va="bottom", **label)
    m = int(np.argmax(model))
    ax.text(xs[m] - 0.04 * span, model[m], r"$P_\theta$", ha="right", va="bottom", **label)
    y = -0.09 * top
    if arrows:
        style = {"arrowstyle": "-|>", "color": ARROW_GREY, "lw": 2.0, "mutation_scale": 14}
        for mode in (-spacing, 0.0, spacing):
            for side in (-1.0, 1.0):
                ax.annotate(
                    "",
                    xy=(mode + side * 0.06 * spacing, y),
                    xytext=(mode + side * 0.36 * spacing, y),
                    arrowprops=style,
                    annotation_clip=False,
                )
    if bars:
        for valley in (-0.5 * spacing, 0.5 * spacing):
            ends = np.array([valley - 2.0 * noise_sd, valley + 2.0 * noise_sd])
            ax.plot(ends, [y, y], color=GREY, lw=2.0, clip_on=False)
            ax.plot(ends, [y, y], "o", color=GREY, ms=6, clip_on=False)
    fig.text(0.5, 0.12, caption, ha="center", fontsize=10, family="serif", color=GREY)
    return render(fig)
