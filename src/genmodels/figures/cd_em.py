"""``contrastive_divergence.gif`` and ``em_algorithm.gif`` (tutorial §3 and §7.4–5), from a real model.

Both GIFs minimise the same objective: the negative log-likelihood of a 1-D mixture with one
unknown location θ,

    p_θ(x) = ½ N(x; θ − a, 1) + ½ N(x; θ + a, 1),
    L(θ) = −(1/n) Σᵢ log p_θ(xᵢ) = D_KL(p̂_data‖p_θ) + const,

on n samples of p_{θ*} (the blue bowl L(θ) of the tutorial; with a > 1 the data are bimodal,
and L is still a single bowl). L, L′ and L″ are exact closed forms:
L′(θ) = −(1/n) Σᵢ [uᵢ − a tanh(a uᵢ)], L″(θ) = (1/n) Σᵢ [1 − a² sech²(a uᵢ)], uᵢ = xᵢ − θ.

**EM** (Dempster, Laird & Rubin 1977, "Maximum likelihood from incomplete data via the EM
algorithm", JRSS-B 39(1)). With z ∈ {−, +} the component and q_t(z|xᵢ) = p_{θ_t}(z|xᵢ) the
E-step's posterior (responsibility rᵢ = σ(2a(xᵢ − θ_t)) of the + component), the surrogate

    C_t(θ) = L(θ) + (1/n) Σᵢ D_KL(q_t(·|xᵢ) ‖ p_θ(·|xᵢ))

(tutorial §7.5, computed here term by term) lies above L everywhere (a KL is ≥ 0) and touches
it at θ_t: a majorizer. It equals −(1/n) Σᵢ E_{q_t}[log p_θ(xᵢ, z)] − H(q_t), a quadratic with
curvature 1 ≥ L″, so it is the narrower bowl; the M-step minimises it in closed form,
θ_{t+1} = (1/n) Σᵢ [xᵢ − a(2rᵢ − 1)], and L(θ_{t+1}) ≤ C_t(θ_{t+1}) ≤ C_t(θ_t) = L(θ_t).

**Contrastive divergence** (Hinton 2002, "Training products of experts by minimizing
contrastive divergences", Neural Computation 14(8)). Tutorial §3's surrogate is
C(θ) = D_KL(p_data‖p_θ) − D_KL(p_{θ_t}‖p_θ): the log-normaliser cancels, and [C] its slope at
θ_t equals L′(θ_t) when L is the KL. The learning gradient is the data term minus the model
term, ĝ_t = −(1/n) Σᵢ ∂_θ log p_θ(xᵢ) + (1/m) Σⱼ ∂_θ log p_θ(x̃ⱼ) at θ_t, where the x̃ⱼ come from
Langevin chains under p_{θ_t} started at the data (:class:`genmodels.samplers.Langevin`,
Hinton's initialisation); the iterates are gradient steps θ_{t+1} = θ_t − η ĝ_t.
CD supplies only that slope: for an exponential family §3's C is *exactly* the tangent line
(its log Z(θ) terms cancel), and for this mixture its curvature at θ_t, L″(θ_t) − F (F the
Fisher information), is close to 0 near the bottom. The orange C of the tutorial's GIF is a
wide, shallow bowl, so the figure draws the tangent quadratic

    C_t(θ) = L(θ_t) + L′(θ_t)(θ − θ_t) + ½ κ_t (θ − θ_t)²,   κ_t = ρ L″(θ_t), ρ < 1,

which has L's value and slope at θ_t but less curvature: it dips below L next to θ_t (it is
not a bound), and its minimum lies below L's and beyond it. The exact §3 curvature
L″(θ_t) − F is returned too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genmodels.figures.common import (
    BASELINE_PX,
    GREY,
    HEIGHT,
    LABEL_COLOR,
    MODEL_COLOR,
    TARGET_COLOR,
    WIDTH,
    FigureResult,
    new_frame,
    render,
    write_gif,
)
from genmodels.samplers import Langevin

__all__ = [
    "SURROGATE_COLOR",
    "LocationMixture",
    "cd_gradient",
    "cd_surrogate",
    "contrastive_divergence_vs_em",
    "em_step",
    "em_surrogate",
]

_F64 = torch.float64
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

#: The orange of the tutorial's surrogate C(θ) (measured from its CD/EM GIFs).
SURROGATE_COLOR = "#F2A65A"
SURROGATE_LABEL = "#D9822B"

# The bowl's axes: the middle 60% of the width, from 60 px to 340 px from the top, with
# L's minimum (y = 0) on the tutorial's baseline (y ≈ 281 px) and room below it for C's dip.
_TOP_PX, _BOTTOM_PX = 60, 340
_BOWL_BOX = (0.2, 1.0 - _BOTTOM_PX / HEIGHT, 0.6, (_BOTTOM_PX - _TOP_PX) / HEIGHT)
_BELOW = (_BOTTOM_PX - BASELINE_PX) / (BASELINE_PX - _TOP_PX)


class LocationMixture:
    """p_θ(x) = ½ N(x; θ − a, 1) + ½ N(x; θ + a, 1) and the exact NLL of data ``x`` (n,) under it.

    Every method takes θ as a float or a tensor of any shape and broadcasts over it.
    """

    def __init__(self, data: torch.Tensor, a: float) -> None:
        if a <= 0:
            raise ValueError(f"the half-distance a between the components must be positive, got {a}")
        self.x = torch.as_tensor(data, dtype=_F64).reshape(-1)
        self.a = float(a)

    def log_prob(self, x: torch.Tensor, theta) -> torch.Tensor:
        """log p_θ(x) = −u²/2 − a²/2 + log cosh(a u) − log √(2π), u = x − θ (broadcast)."""
        u = torch.as_tensor(x, dtype=_F64) - torch.as_tensor(theta, dtype=_F64)
        au = self.a * u
        log_cosh = au.abs() + torch.log1p(torch.exp(-2.0 * au.abs())) - math.log(2.0)
        return -0.5 * u**2 - 0.5 * self.a**2 + log_cosh - _LOG_SQRT_2PI

    def _u(self, theta) -> torch.Tensor:
        theta = torch.as_tensor(theta, dtype=_F64)
        return self.x - theta[..., None]

    def loss(self, theta) -> torch.Tensor:
        """L(θ) = −(1/n) Σᵢ log p_θ(xᵢ)."""
        theta = torch.as_tensor(theta, dtype=_F64)
        return -self.log_prob(self.x, theta[..., None]).mean(-1)

    def score_theta(self, x: torch.Tensor, theta) -> torch.Tensor:
        """∂_θ log p_θ(x) = u − a tanh(a u), u = x − θ."""
        u = torch.as_tensor(x, dtype=_F64) - torch.as_tensor(theta, dtype=_F64)
        return u - self.a * torch.tanh(self.a * u)

    def grad(self, theta) -> torch.Tensor:
        """L′(θ) = −(1/n) Σᵢ ∂_θ log p_θ(xᵢ)."""
        u = self._u(theta)
        return -(u - self.a * torch.tanh(self.a * u)).mean(-1)

    def curvature(self, theta) -> torch.Tensor:
        """L″(θ) = (1/n) Σᵢ [1 − a² sech²(a uᵢ)]."""
        u = self._u(theta)
        return (1.0 - self.a**2 / torch.cosh(self.a * u) ** 2).mean(-1)

    def responsibilities(self, theta: float) -> torch.Tensor:
        """E-step: rᵢ = p_θ(z = + | xᵢ) = σ(2a(xᵢ − θ)), shape (n,)."""
        return torch.sigmoid(2.0 * self.a * (self.x - theta))

    def fisher(self, theta: float, lo: float = -30.0, hi: float = 30.0, n: int = 60001) -> float:
        """F = E_{p_θ}[(∂_θ log p_θ(x))²] by the trapezoid rule (it does not depend on θ)."""
        xs = torch.linspace(theta + lo, theta + hi, n, dtype=_F64)
        p = torch.exp(self.log_prob(xs, theta))
        return float(torch.trapezoid(p * self.score_theta(xs, theta) ** 2, xs))


def em_step(model: LocationMixture, theta: float) -> float:
    """One EM iteration: E-step rᵢ at θ, M-step θ' = (1/n) Σᵢ [xᵢ − a(2rᵢ − 1)] (argmin of the surrogate)."""
    r = model.responsibilities(theta)
    return float((model.x - model.a * (2.0 * r - 1.0)).mean())


def em_surrogate(model: LocationMixture, theta_t: float, theta) -> torch.Tensor:
    """C_t(θ) = L(θ) + (1/n) Σᵢ KL(q_t(·|xᵢ) ‖ p_θ(·|xᵢ)), q_t the posterior at θ_t (broadcast over θ)."""
    q_plus = model.responsibilities(theta_t)
    q = torch.stack([1.0 - q_plus, q_plus], -1)  # (n, 2)
    theta = torch.as_tensor(theta, dtype=_F64)
    p_plus = torch.sigmoid(2.0 * model.a * model._u(theta))  # (..., n)
    log_p = torch.stack([torch.log1p(-p_plus), torch.log(p_plus)], -1)  # (..., n, 2)
    log_q = torch.log(q.clamp_min(1e-300))
    kl = (q * (log_q - log_p)).sum(-1).mean(-1)
    return model.loss(theta) + kl


def cd_surrogate(model: LocationMixture, theta_t: float, theta, ratio: float) -> torch.Tensor:
    """The tangent quadratic L(θ_t) + L′(θ_t)(θ − θ_t) + ½ ρ L″(θ_t)(θ − θ_t)² (broadcast over θ)."""
    theta = torch.as_tensor(theta, dtype=_F64)
    d = theta - theta_t
    kappa = ratio * model.curvature(theta_t)
    return model.loss(theta_t) + model.grad(theta_t) * d + 0.5 * kappa * d**2


def cd_gradient(
    model: LocationMixture,
    theta_t: float,
    chains_per_point: int,
    steps: int,
    step_size: float,
    generator: torch.Generator,
) -> tuple[float, float]:
    """The CD learning gradient at θ_t and its Monte-Carlo standard error.

    ĝ = −mean_data ∂_θ log p_θ(x) + mean_chains ∂_θ log p_θ(x̃): the chains (``chains_per_point``
    per data point) start at the data and take ``steps`` Langevin steps under p_{θ_t}
    (tutorial §3 [C]: Hinton's CD starts the run at the data).
    """
    kernel = Langevin(step_size=step_size)
    start = model.x.repeat(chains_per_point)[:, None]
    state = kernel.init(start, lambda y: model.log_prob(y[:, 0], theta_t))
    for _ in range(steps):
        state, _ = kernel.step(state, generator)
    model_term = model.score_theta(state.position[:, 0], theta_t)
    data_term = model.score_theta(model.x, theta_t)
    g = float(-data_term.mean() + model_term.mean())
    se = float(model_term.std() / math.sqrt(model_term.numel()))
    return g, se


def contrastive_divergence_vs_em(
    out: str | Path,
    n_data: int = 400,
    a: float = 1.3,
    theta_true: float = 0.0,
    theta_start: float = -3.2,
    iterations: int = 3,
    cd_lr: float = 0.9,
    cd_curvature_ratio: float = 0.6,
    cd_chains_per_point: int = 10,
    cd_steps: int = 300,
    cd_step_size: float = 0.2,
    seed: int = 0,
    printer: Callable[[str], None] | None = print,
) -> FigureResult:
    """Run EM and CD on the same mixture NLL, write both GIFs, print the iterates and L values.

    Args:
        out: output folder (``contrastive_divergence.gif`` and ``em_algorithm.gif``).
        n_data, a, theta_true: n data points from p_{θ*}, θ* = ``theta_true``, components ±a.
        theta_start: θ_{t−1}, the first iterate of both methods (on the bowl's left wall).
        iterations: iterates drawn (θ_{t−1}, θ_t, θ_{t+1} for 3), one frame each after L alone.
        cd_lr: η of the CD gradient steps; cd_curvature_ratio: ρ in (0, 1) of the drawn C.
        cd_chains_per_point, cd_steps, cd_step_size: the Langevin chains of the CD model term.
        seed: seed of the data and the chains. printer: where the numbers go (``None``: nowhere).

    Returns a :class:`FigureResult` with ``numbers``: ``theta_hat`` and ``loss_min`` (the grid
    minimiser and minimum of L), ``em`` and ``cd`` dicts with ``iterates``, ``losses`` (L at
    each), and for CD ``grad`` (L′), ``cd_grad`` (ĝ), ``cd_grad_se``, ``kappa`` and
    ``exact_curvature`` (L″(θ_t) − F, the curvature of §3's C at θ_t); and ``fisher``.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not 0.0 < cd_curvature_ratio < 1.0:
        raise ValueError(
            f"cd_curvature_ratio must lie in (0, 1) (below L's curvature), got {cd_curvature_ratio}"
        )
    if n_data < 2 or cd_lr <= 0 or cd_chains_per_point < 1 or cd_steps < 1:
        raise ValueError("n_data must be >= 2, cd_lr > 0, cd_chains_per_point >= 1 and cd_steps >= 1")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 2, (n_data,), generator=gen).double() * 2.0 - 1.0
    data = theta_true + a * z + torch.randn(n_data, generator=gen, dtype=_F64)
    model = LocationMixture(data, a)

    em_iterates = [float(theta_start)]
    for _ in range(iterations - 1):
        em_iterates.append(em_step(model, em_iterates[-1]))

    cd_iterates, cd_grads, cd_ses = [float(theta_start)], [], []
    for k in range(iterations):
        g, se = cd_gradient(model, cd_iterates[-1], cd_chains_per_point, cd_steps, cd_step_size, gen)
        cd_grads.append(g)
        cd_ses.append(se)
        if k < iterations - 1:
            cd_iterates.append(cd_iterates[-1] - cd_lr * g)

    fisher = model.fisher(theta_true)
    grid = torch.linspace(theta_true - 5.0, theta_true + 5.0, 2001, dtype=_F64)
    losses = model.loss(grid)
    k_min = int(torch.argmin(losses))
    numbers = {
        "theta_hat": float(grid[k_min]),
        "loss_min": float(losses[k_min]),
        "fisher": fisher,
        "em": {"iterates": em_iterates, "losses": model.loss(torch.tensor(em_iterates)).tolist()},
        "cd": {
            "iterates": cd_iterates,
            "losses": model.loss(torch.tensor(cd_iterates)).tolist(),
            "grad": model.grad(torch.tensor(cd_iterates)).tolist(),
            "cd_grad": cd_grads,
            "cd_grad_se": cd_ses,
            "kappa": (cd_curvature_ratio * model.curvature(torch.tensor(cd_iterates))).tolist(),
            "exact_curvature": (model.curvature(torch.tensor(cd_iterates)) - fisher).tolist(),
        },
    }
    if printer is not None:
        printer(
            f"cd/em: L(θ) = NLL of ½N(θ−{a},1)+½N(θ+{a},1) on {n_data} points; "
            f"min L = {numbers['loss_min']:.4f} at θ ≈ {numbers['theta_hat']:.3f}"
        )
        for name in ("em", "cd"):
            r = numbers[name]
            its = "  ".join(f"θ={t:+.3f} L={v:.4f}" for t, v in zip(r["iterates"], r["losses"], strict=True))
            printer(f"  {name.upper()} iterates: {its}")
        r = numbers["cd"]
        for t, g, gh, se, c in zip(
            r["iterates"], r["grad"], r["cd_grad"], r["cd_grad_se"], r["exact_curvature"], strict=True
        ):
            printer(
                f"  CD at θ={t:+.3f}: L′ = {g:+.4f}, CD gradient (chains from data) = {gh:+.4f} ± {se:.4f};"
                f" curvature of §3's C = {c:+.3f}"
            )

    base = numbers["loss_min"]
    lo_x, hi_x = theta_true - 4.0, theta_true + 4.0
    xs = torch.linspace(lo_x, hi_x, 600, dtype=_F64)
    curve = (model.loss(xs) - base).numpy()
    em_c = [(em_surrogate(model, t, xs) - base).numpy() for t in em_iterates]
    cd_c = [(cd_surrogate(model, t, xs, cd_curvature_ratio) - base).numpy() for t in cd_iterates]
    top = 1.35 * float(model.loss(theta_start) - base)
    paths = []
    for title, name, its, curves in (
        ("contrastive divergence", "contrastive_divergence.gif", cd_iterates, cd_c),
        ("EM algorithm", "em_algorithm.gif", em_iterates, em_c),
    ):
        bottom = -_BELOW * top  # L's minimum on the tutorial's baseline
        frames = [_frame(title, xs.numpy(), curve, [], [], model, base, (bottom, top), len(its))]
        for k in range(len(its)):
            frames.append(
                _frame(
                    title, xs.numpy(), curve, its[: k + 1], curves[k], model, base, (bottom, top), len(its)
                )
            )
        paths.append(write_gif(frames, Path(out) / name))
    return FigureResult(paths, numbers)


def _iterate_label(k: int, count: int) -> str:
    offset = k - (count - 2) if count >= 2 else 0
    if offset == 0:
        return r"$\theta_t$"
    return rf"$\theta_{{t{offset:+d}}}$"


def _frame(title, xs, curve, iterates, surrogate, model, base, ylim, total):
    fig = new_frame(title)
    ax = fig.add_axes(_BOWL_BOX)
    ax.set_axis_off()
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(*ylim)
    span, height = xs[-1] - xs[0], ylim[1] - ylim[0]
    label = {"fontsize": 15, "color": LABEL_COLOR, "clip_on": False}
    ax.plot(xs, curve, color=TARGET_COLOR, lw=2.4, zorder=2)
    inside = np.nonzero(curve <= ylim[1])[0]
    k = inside[-1]
    ax.text(xs[k] + 0.02 * span, curve[k], r"$L(\theta)$", ha="left", va="top", **label)
    if len(iterates):
        ax.plot(xs, surrogate, color=SURROGATE_COLOR, lw=2.2, zorder=3)
        inside = np.nonzero((surrogate <= ylim[1]) & (surrogate >= ylim[0]))[0]
        k = inside[-1]
        ax.text(
            xs[k] + 0.01 * span,
            surrogate[k],
            r"$C(\theta)$",
            color=SURROGATE_LABEL,
            fontsize=14,
            ha="left",
            va="bottom" if surrogate[k] < 0.5 * ylim[1] else "top",
            clip_on=False,
        )
        t = iterates[-1]
        lt = float(model.loss(t)) - base
        slope = float(model.grad(t))
        px_x = _BOWL_BOX[2] * WIDTH / span  # pixels per unit of θ and of L
        px_y = _BOWL_BOX[3] * HEIGHT / height
        half = 38.0 / math.hypot(px_x, slope * px_y)  # a segment 76 px long whatever the slope
        seg = np.array([t - half, t + half])
        ax.plot(seg, lt + slope * (seg - t), color=MODEL_COLOR, lw=2.6, zorder=4)
        ax.text(
            t - half - 0.01 * span,
            lt - slope * half,
            r"$C'(\theta)$",
            color=MODEL_COLOR,
            fontsize=13,
            ha="right",
            va="center",
        )
        for k, th in enumerate(iterates):
            y = float(model.loss(th)) - base
            ax.scatter([th], [y], s=55, color=GREY, zorder=5, edgecolor="white", linewidth=0.8)
            newest = k == len(iterates) - 1
            ax.text(
                th + (0.0 if newest else -0.01 * span),
                y - 0.05 * height,
                _iterate_label(k, total),
                color=GREY,
                fontsize=13,
                ha="center" if newest else "right",
                va="top",
                zorder=6,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.85},
            )
    return render(fig)
