"""``langevin.gif``: a Langevin chain carries particles from noise to the target (tutorial §4).

"Small steps get us to faraway places." Particles start from noise x_0 ~ N(0, s_0² I) and
each takes the tutorial's unadjusted Langevin step (§4, :class:`genmodels.samplers.Langevin`)

    x_{t+Δt} = x_t + (Δt/2) ∇ₓ log π(x_t) + √Δt e_t,   e_t ~ N(0, I),

with the target's exact score ∇ₓ log π (``target.score``, analytic for Gaussian mixtures).
Frames show the particles at chosen step counts over the target's density contours
(the hand-drawn ``chain.jpg`` of the tutorial, P_0 → P_1 → … → π, made real). For each
frame the counting KL between the target and the particles is printed and returned:
D_KL(P‖Q̂) over the cells of a grid (tutorial §1–2), where P are the target's exact cell
masses and Q̂ the add-½ histogram of the particles (:mod:`genmodels.counting`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from genmodels.counting import Grid2D, kl_grid, kl_grid_null_mean, smoothed_masses
from genmodels.distributions import Target, get_target
from genmodels.figures.common import (
    GREY,
    MODEL_COLOR,
    TARGET_COLOR,
    FigureResult,
    new_frame,
    render,
    write_gif,
)
from genmodels.plots import density_on_grid
from genmodels.samplers import Langevin

__all__ = ["exact_score_log_density", "langevin_chain"]


class _ExactScore(torch.autograd.Function):
    """log π(x) whose backward pass returns the target's own score ∇ₓ log π(x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, target: Target) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.target = target
        with torch.no_grad():
            return target.log_prob(x).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out[:, None] * ctx.target.score(x.detach()).to(x.dtype), None


def exact_score_log_density(target: Target) -> Callable[[torch.Tensor], torch.Tensor]:
    """log π as a sampler log-density whose gradient is ``target.score`` (not autograd of log π).

    The samplers take ∇ log π from autograd; this wrapper makes autograd return the
    target's exact (analytic, where it has one) score instead.
    """

    def log_density(x: torch.Tensor) -> torch.Tensor:
        return _ExactScore.apply(x, target)

    return log_density


def langevin_chain(
    out: str | Path,
    target: str | Target = "8gaussians",
    n_particles: int = 500,
    step_size: float = 0.02,
    frames: Sequence[int] = (0, 8, 30, 150),
    init_std: float = 1.0,
    grid_bins: int = 20,
    seed: int = 0,
    printer: Callable[[str], None] | None = print,
) -> FigureResult:
    """Run a Langevin chain from noise and write ``out/langevin.gif``, one frame per entry of ``frames``.

    Args:
        out: output folder.
        target: a 2-D target of the library (name or instance).
        n_particles: number of independent chains drawn.
        step_size: Δt.
        frames: step counts at which a frame is drawn (increasing; 0 is the noise).
        init_std: s_0 of the starting noise N(0, s_0² I).
        grid_bins: cells per axis of the grid over ``target.box`` for the counting KL.
        seed: seed of the noise.
        printer: where the numbers go (``None``: nowhere).

    Returns a :class:`FigureResult` with ``numbers``: ``steps`` and ``times`` (t = steps·Δt)
    of the frames, ``kl_grid`` (the counting KL of each frame), ``kl_floor`` (its expected
    value for exact samples of π, the best a frame can show), ``positions`` (one array
    (n_particles, 2) per frame).
    """
    tgt = get_target(target) if isinstance(target, str) else target
    if tgt.dim != 2:
        raise ValueError(f"langevin_chain draws 2-D targets, {tgt.name} has dimension {tgt.dim}")
    frames = [int(f) for f in frames]
    if not frames or min(frames) < 0 or any(b <= a for a, b in itertools.pairwise(frames)):
        raise ValueError(f"frames must be increasing step counts >= 0, got {frames}")
    if n_particles < 1 or init_std <= 0:
        raise ValueError("n_particles must be >= 1 and init_std > 0")

    gen = torch.Generator().manual_seed(seed)
    kernel = Langevin(step_size=step_size)
    x0 = init_std * torch.randn(n_particles, 2, generator=gen, dtype=torch.float64)
    state = kernel.init(x0, exact_score_log_density(tgt))
    positions = []
    for step in range(frames[-1] + 1):
        if step in frames:
            positions.append(state.position.numpy().copy())
        if step < frames[-1]:
            state, _ = kernel.step(state, gen)

    grid = Grid2D.regular(tgt.box[0], tgt.box[1], grid_bins)
    masses = grid.masses(lambda x: tgt.log_prob(x), refine=2)
    masses = masses / masses.sum()
    kls = [kl_grid(masses, smoothed_masses(grid.count(p).n_xy)) for p in positions]
    floor = kl_grid_null_mean(masses, n_particles)
    times = [s * step_size for s in frames]
    numbers = {"steps": frames, "times": times, "kl_grid": kls, "kl_floor": floor, "positions": positions}
    if printer is not None:
        printer(
            f"langevin: {n_particles} particles on {tgt.name}, Δt = {step_size}; counting KL on a "
            f"{grid_bins}×{grid_bins} grid (exact samples of π score {floor:.3f} on average)"
        )
        for s, t, k in zip(frames, times, kls, strict=True):
            printer(f"  step {s:>4}  t = {t:6.2f}  KL(π‖particles) = {k:.3f}")

    xs, ys, dens = density_on_grid(tgt.log_prob, tgt.box, 160)
    levels = np.linspace(dens.max() * 0.08, dens.max(), 5)
    images = [
        _frame(xs, ys, dens, levels, p, tgt.box, s, t, k)
        for p, s, t, k in zip(positions, frames, times, kls, strict=True)
    ]
    path = write_gif(images, Path(out) / "langevin.gif")
    return FigureResult([path], numbers)


def _frame(xs, ys, dens, levels, positions, box, step, t, kl):
    fig = new_frame("Langevin dynamics")
    side = 0.84
    ax = fig.add_axes((0.5 - side * 405 / 720 / 2, 0.06, side * 405 / 720, side))
    ax.set_axis_off()
    ax.contour(xs, ys, dens, levels=levels, colors=TARGET_COLOR, linewidths=1.0)
    ax.scatter(positions[:, 0], positions[:, 1], s=5, color=MODEL_COLOR, lw=0, alpha=0.8)
    ax.set_xlim(box)
    ax.set_ylim(box)
    ax.set_aspect("equal")
    label = "noise, t = 0" if step == 0 else f"t = {t:.2f} ({step} steps)"
    fig.text(0.03, 0.80, label, fontsize=12, family="serif", color=GREY)
    fig.text(0.03, 0.73, f"counting KL {kl:.2f}", fontsize=10, family="serif", color=GREY)
    return render(fig)
