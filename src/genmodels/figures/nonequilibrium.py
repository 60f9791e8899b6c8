"""Non-equilibrium sampling, forward and reverse (tutorial §5 and §7.7–9), with the exact score.

The data density is a 1-D mixture of two equal Gaussians, p_0 = ½ N(−m, s_0²) + ½ N(m, s_0²),
and the forward process is the tutorial's plain noising (variance exploding, §5 [C])

    x_t = x_0 + δ √t ε, ε ~ N(0, 1),  so  p_t = p_0 ∗ N(0, δ²t) = ½ N(−m, s_0² + δ²t) + ½ N(m, s_0² + δ²t),

a :class:`~genmodels.distributions.GaussianMixture` whose exact score ∇ log p_t is analytic
(``GaussianMixture.convolve(δ√t).score``). Three GIFs, three frames each, at the times
t − Δt, t, t + Δt; every frame draws the exact marginal (blue) and the kernel density
estimate of a cloud of particles (thin red) that were actually moved:

* ``nonequilibrium_forward.gif`` (§7.7): particles x ~ p_{t−Δt} are noised forward,
  x ← x + δ √Δt z (exact in law: p_{t−Δt} ∗ N(0, δ²Δt) = p_t), P_{t−Δt} → P_t → P_{t+Δt}; the
  curve flattens and the grey arrows under the modes point outward and move apart.
* ``nonequilibrium_reverse_ODE.gif`` (§7.8): particles x ~ p_{t+Δt} are carried back by the
  probability-flow ODE (tutorial §5 [C], forward-time notation)

      dx/dt = −(δ²/2) ∇ₓ log p_t(x),

  integrated backwards in t with the exact score (adaptive Dormand–Prince,
  :func:`genmodels.ode.solve_ode`, tolerance 1e-8), P_{t+Δt} → P_t → P_{t−Δt}; arrows inward.
  The tutorial's single Euler step x ← x + (δ²Δt/2) ∇ log p_{t+Δt}(x) (§5 [C]) is also taken
  and its error printed, to show what one large step costs.
* ``nonequilibrium_reverse_SDE.gif`` (§7.9): the tutorial's reading of the reverse SDE
  x_{t−Δt} = x_t + δ²Δt ∇ log p_t(x_t) + δ √Δt z (§5 [C]): its drift is *twice* the ODE's, i.e.
  **two** reverse steps, from p_{t+Δt} to p_{t−Δt} (the sharpest curve, an overshoot; arrows
  inward), then **one** forward noise step δ √Δt z back to p_t (the medium curve; arrows
  outward). At the figure's finite Δt both parts are done exactly (the two reverse steps by the
  probability-flow ODE over 2Δt, the noise as an exact Gaussian draw), so the composition maps
  p_{t+Δt} exactly onto p_t; as Δt → 0 it is the Euler–Maruyama step of the reverse SDE, whose
  one-step error at this Δt is printed too.

Numbers (printed and returned): for every frame, the distance between the particles' KDE
p̂ (Gaussian kernel of width h) and the exact marginal smoothed by the same kernel,
E[p̂] = p_t ∗ N(0, h²) (exact: the mixture convolved with δ²t + h², so the comparison has no
bandwidth bias), as D_KL(E[p̂] ‖ p̂) by quadrature and max |p̂ − E[p̂]|; and the same two
numbers for as many *exact* samples of p_t ("floor", the sampling error alone). A transport
that is right scores at the floor; flipping the sign of the score moves the mass outward and
scores orders of magnitude above it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
from genmodels.figures.equilibrium import kde_on_grid as kde  # the binned KDE on a uniform grid
from genmodels.ode import solve_ode

__all__ = [
    "kde",
    "marginal",
    "nonequilibrium_sampling",
    "probability_flow",
    "two_mode_target",
]

_F64 = torch.float64
#: which GIFs :func:`nonequilibrium_sampling` can write
PARTS: tuple[str, ...] = ("forward", "ode", "sde")
_FILES = {
    "forward": "nonequilibrium_forward.gif",
    "ode": "nonequilibrium_reverse_ODE.gif",
    "sde": "nonequilibrium_reverse_SDE.gif",
}


def two_mode_target(separation: float = 2.0, sigma: float = 0.3) -> GaussianMixture:
    """p_0 = ½ N(−separation/2, σ²) + ½ N(separation/2, σ²) on R (a 1-D GaussianMixture)."""
    if separation <= 0 or sigma <= 0:
        raise ValueError(f"separation and sigma must be positive, got {separation}, {sigma}")
    half = 0.5 * separation
    return GaussianMixture(torch.tensor([[-half], [half]], dtype=_F64), sigma, name="two_modes")


def marginal(base: GaussianMixture, delta: float, t: float) -> GaussianMixture:
    """p_t = p_0 ∗ N(0, δ² t), exact (the law of x_0 + δ √t ε)."""
    if t < 0:
        raise ValueError(f"t must be >= 0, got {t}")
    return base.convolve(delta * math.sqrt(t))


def probability_flow(
    x: torch.Tensor,
    base: GaussianMixture,
    delta: float,
    t0: float,
    t1: float,
    rtol: float = 1e-8,
    atol: float = 1e-8,
) -> torch.Tensor:
    """Carry x ~ p_{t0} to p_{t1} along dx/dt = −(δ²/2) ∇ log p_t(x) with the exact score.

    ``x`` is (n, 1); t1 < t0 runs the ODE backwards (the reverse, denoising direction).
    Dormand–Prince (:func:`genmodels.ode.solve_ode`) at tolerance ``rtol``/``atol``.
    """
    if min(t0, t1) < 0:
        raise ValueError(f"times must be >= 0, got {t0}, {t1}")

    def velocity(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return -0.5 * delta**2 * marginal(base, delta, max(float(s), 0.0)).score(y)

    with torch.no_grad():
        return solve_ode(velocity, x.to(_F64), t0, t1, rtol=rtol, atol=atol).x


def _density(mix: GaussianMixture, xs: torch.Tensor) -> torch.Tensor:
    return torch.exp(mix.log_prob(xs.reshape(-1, 1))).reshape(-1)


def _distances(p_ref: torch.Tensor, p_hat: torch.Tensor, xs: torch.Tensor) -> tuple[float, float]:
    """(D_KL(p_ref ‖ p̂) by the trapezoid rule, max |p̂ − p_ref|) on the grid.

    The KL integral runs where p_ref ≥ 0.01 · max p_ref (all but ≈ 1% of the mass): in the far
    tails a KDE of n points is empty by construction and would dominate with log(p_ref/0).
    """
    keep = p_ref >= 1e-2 * p_ref.max()
    ref, hat = p_ref[keep], p_hat[keep].clamp_min(1e-300)
    kl = torch.trapezoid(ref * (ref.log() - hat.log()), xs[keep])
    return float(kl), float((p_hat - p_ref).abs().max())


def nonequilibrium_sampling(
    out: str | Path,
    which: Sequence[str] = PARTS,
    separation: float = 2.0,
    sigma0: float = 0.3,
    delta: float = 1.0,
    t: float = 0.3,
    dt: float = 0.25,
    n_particles: int = 20_000,
    bandwidth: float = 0.06,
    seed: int = 0,
    printer: Callable[[str], None] | None = print,
) -> FigureResult:
    """Move particles with the exact score and write the three non-equilibrium GIFs.

    Args:
        out: output folder.
        which: the GIFs to write, a subset of ("forward", "ode", "sde").
        separation, sigma0: p_0 (:func:`two_mode_target`).
        delta: δ, the noise rate (σ²(t) = δ² t).
        t, dt: the frames are at t − Δt, t, t + Δt (needs t > Δt for the SDE's two reverse steps).
        n_particles: particles per GIF; bandwidth: h of the Gaussian KDE.
        seed: seed of the particles and the noise.
        printer: where the numbers go (``None``: nowhere).

    Returns a :class:`FigureResult` with ``numbers``: ``times`` (t − Δt, t, t + Δt),
    ``xs`` (the grid), ``exact`` {time: p_t on xs}, and for each part in ``which`` a dict with
    ``times`` (the marginal each frame should equal), ``curves`` (exact p on xs), ``kde``,
    ``kl`` and ``max_error`` (KDE vs p ∗ N(0, h²), per frame), ``floor_kl`` and
    ``floor_max_error`` (the same for exact samples), and for "ode"/"sde" ``euler_kl``: the KL
    of one Euler (ODE) or Euler–Maruyama (SDE) step of size Δt from p_{t+Δt}, against p_t.
    """
    which = tuple(which)
    if not which or any(w not in PARTS for w in which):
        raise ValueError(f"which must be a non-empty subset of {PARTS}, got {which}")
    if not 0 < dt < t:
        raise ValueError(f"need 0 < dt < t (frames at t − dt, t, t + dt), got t={t}, dt={dt}")
    if delta <= 0 or n_particles < 2 or bandwidth <= 0:
        raise ValueError("delta and bandwidth must be positive and n_particles >= 2")
    base = two_mode_target(separation, sigma0)
    times = (t - dt, t, t + dt)
    half = 0.5 * separation
    reach = half + 4.0 * math.sqrt(sigma0**2 + delta**2 * (t + dt)) + 4 * bandwidth
    xs = torch.linspace(-reach, reach, 1601, dtype=_F64)
    gen = torch.Generator().manual_seed(seed)

    def smoothed(s: float) -> torch.Tensor:  # E[KDE] of exact samples of p_s
        return _density(base.convolve(math.sqrt(delta**2 * s + bandwidth**2)), xs)

    def measure(points: torch.Tensor, s: float) -> tuple[float, float]:
        return _distances(smoothed(s), kde(points, xs, bandwidth), xs)

    def floor(s: float) -> tuple[float, float]:
        return measure(marginal(base, delta, s).sample(n_particles, gen).double(), s)

    def noise(x: torch.Tensor, span: float) -> torch.Tensor:
        return x + delta * math.sqrt(span) * torch.randn(x.shape, generator=gen, dtype=_F64)

    numbers: dict = {
        "times": times,
        "xs": xs.numpy(),
        "exact": {s: _density(marginal(base, delta, s), xs).numpy() for s in times},
    }
    runs: dict[str, tuple[list[torch.Tensor], list[float]]] = {}
    if "forward" in which:
        x = marginal(base, delta, times[0]).sample(n_particles, gen).double()
        clouds = [x, noise(x, dt)]
        clouds.append(noise(clouds[1], dt))
        runs["forward"] = (clouds, list(times))
    if "ode" in which:
        x = marginal(base, delta, times[2]).sample(n_particles, gen).double()
        clouds = [x, probability_flow(x, base, delta, times[2], times[1])]
        clouds.append(probability_flow(clouds[1], base, delta, times[1], times[0]))
        runs["ode"] = (clouds, [times[2], times[1], times[0]])
    if "sde" in which:
        x = marginal(base, delta, times[2]).sample(n_particles, gen).double()
        two_back = probability_flow(x, base, delta, times[2], times[0])  # two reverse steps
        runs["sde"] = ([x, two_back, noise(two_back, dt)], [times[2], times[0], times[1]])

    for part, (clouds, when) in runs.items():
        dist = [measure(c, s) for c, s in zip(clouds, when, strict=True)]
        floors = [floor(s) for s in when]
        r = {
            "times": when,
            "curves": [numbers["exact"][s] for s in when],
            "kde": [kde(c, xs, bandwidth).numpy() for c in clouds],
            "kl": [d[0] for d in dist],
            "max_error": [d[1] for d in dist],
            "floor_kl": [f[0] for f in floors],
            "floor_max_error": [f[1] for f in floors],
        }
        if part in ("ode", "sde"):
            x = clouds[0]
            score = marginal(base, delta, times[2]).score(x)
            step = x + (0.5 if part == "ode" else 1.0) * delta**2 * dt * score
            if part == "sde":
                step = noise(step, dt)
            r["euler_kl"] = measure(step, times[1])[0]
        numbers[part] = r

    if printer is not None:
        printer(
            f"non-equilibrium: p_0 = ½N(∓{half:g}, {sigma0:g}²), p_t = p_0 ∗ N(0, {delta:g}²t), frames at "
            f"t = {times[0]:g}, {times[1]:g}, {times[2]:g}; {n_particles} particles, KDE h = {bandwidth:g}"
        )
        names = {"forward": "forward noising", "ode": "reverse ODE (exact score)", "sde": "reverse SDE"}
        for part in runs:
            r = numbers[part]
            printer(f"  {names[part]}:")
            for k, s in enumerate(r["times"]):
                printer(
                    f"    frame {k + 1} ≙ p at t = {s:g}: KL(p∗N(0,h²)‖KDE) = {r['kl'][k]:.2e} "
                    f"(exact samples {r['floor_kl'][k]:.2e}), max |error| = {r['max_error'][k]:.4f} "
                    f"(exact samples {r['floor_max_error'][k]:.4f})"
                )
            if "euler_kl" in r:
                kind = "Euler" if part == "ode" else "Euler–Maruyama"
                printer(f"    one {kind} step of Δt = {dt:g} instead: KL to p_t = {r['euler_kl']:.2e}")

    top = 1.12 * max(float(c.max()) for c in numbers["exact"].values())
    label_of = {times[0]: r"$P_{t-\Delta t}$", times[1]: r"$P_t$", times[2]: r"$P_{t+\Delta t}$"}
    arrows_of = {
        "forward": ["out", "out", "out"],
        "ode": ["in", "in", "in"],
        "sde": ["in", "in", "out"],
    }
    title = {
        "forward": "non-equilibrium sampling\nforward time",
        "ode": "non-equilibrium sampling\nreverse time (ODE)",
        "sde": "non-equilibrium sampling\nreverse time (SDE)",
    }
    captions = {
        "forward": ["noise step x ← x + δ√Δt z"] * 3,
        "ode": ["probability-flow ODE, exact score"] * 3,
        "sde": [
            "reverse SDE, start",
            "two reverse (drift) steps: overshoot",
            "one forward noise step δ√Δt z",
        ],
    }
    paths = []
    xs_np = xs.numpy()
    for part in which:
        r = numbers[part]
        frames = []
        for k, s in enumerate(r["times"]):
            std = math.sqrt(sigma0**2 + delta**2 * s)
            caption = (
                f"{captions[part][k]}   (KL to exact {r['kl'][k]:.1e}, sampling floor {r['floor_kl'][k]:.1e})"
            )
            frames.append(
                _frame(
                    title[part],
                    xs_np,
                    r["curves"][k],
                    r["kde"][k],
                    label_of[s],
                    top,
                    half,
                    std,
                    arrows_of[part][k],
                    caption,
                    (-2.6, 2.6),
                )
            )
        paths.append(write_gif(frames, Path(out) / _FILES[part]))
    return FigureResult(paths, numbers)


def _frame(title, xs, exact, estimate, label, top, half, std, direction, caption, xlim):
    fig = new_frame(title)
    ax = curve_axes(fig)
    ax.set_xlim(*xlim)
    ax.set_ylim(0.0, top)
    ax.plot(xs, exact, color=TARGET_COLOR, lw=2.4)
    ax.plot(xs, estimate, color=MODEL_COLOR, lw=0.9, alpha=0.9)
    ax.axhline(0.0, color=GREY, lw=0.8)
    right = xs > 0
    k = int(np.argmax(np.where(right, exact, -1.0)))
    ax.text(xs[k] + 0.35, exact[k], label, fontsize=15, color=LABEL_COLOR, va="bottom", clip_on=False)
    # grey arrow pairs under each mode: outward (noise, flattening) or inward (reverse, sharpening)
    y = -0.09 * top
    near, far = 0.35 * std, 0.35 * std + 0.32
    for mu in (-half, half):
        for side in (-1.0, 1.0):
            a, b = (
                (mu + side * near, mu + side * far)
                if direction == "out"
                else (mu + side * far, mu + side * near)
            )
            ax.annotate(
                "",
                xy=(b, y),
                xytext=(a, y),
                arrowprops={"arrowstyle": "-|>", "color": ARROW_GREY, "lw": 2.2, "mutation_scale": 14},
                annotation_clip=False,
            )
    fig.text(0.5, 0.1, caption, ha="center", fontsize=9, family="serif", color=GREY)
    return render(fig)
