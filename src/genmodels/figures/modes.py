"""``mode_covering.gif`` and ``mode_chasing.gif`` (tutorial §2 and §7.2–3), from real fits.

The target π is a 1-D mixture of three equally spaced Gaussians whose centre mode is
≈ 1.45× taller than the side ones (tutorial §7.2: "centre mode ≈1.4–1.5× taller", deep
valleys). Two limited models are fitted to it and four snapshots of each optimisation
are drawn:

* **mode covering** — forward KL, D_KL(π‖q_θ) = −H(π) − E_π[log q_θ], minimised by
  maximum likelihood on samples of π (tutorial §2). The model is a mixture of three
  Gaussians with one shared scale held above a floor, σ ≥ σ_min, so it cannot match
  the narrow modes: it covers all three with lower, wider bumps and leaves mass in the
  valleys ("an under-expressive model spreads out to cover every mode", §2).
* **mode chasing** — reverse KL, D_KL(q_θ‖π) = E_q[log q_θ(x) − log π(x)], minimised with
  the reparameterization x = μ + s ε, ε ~ N(0, 1) (a Gaussian generator, the P_θ of the
  tutorial's W-GAN figure). Reverse KL is infinite-penalty on mass where π has none, so
  from a broad start the generator shrinks onto the tallest mode and ends as a spike
  taller than π's peak (for a Gaussian q on a well separated mode k of weight w_k, the
  optimum is s = σ_π with height π(μ_k)/w_k).

Why two models rather than one: any family that can put a bump on each mode has its
reverse-KL optimum covering the modes too (then Σ_k w_k KL_k beats the −log w_c that a
single spike pays), so mode chasing *at the optimum* needs a family that cannot be
multimodal; and a single Gaussian fitted by forward KL only shows one broad bump. The
tutorial itself draws the two GIFs with two models (P_θ by MLE; a W-GAN generator
against π_α). The defaults keep the modes narrow enough (σ_π = 0.18 at spacing 2) that
the reverse-KL path from a broad start has no broad local optimum, and the covering
model's floor broad enough (σ_min = 0.4) that the forward fit pays more reverse KL than
the spike; both KLs of both fits are computed by quadrature and returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genmodels.distributions import GaussianMixture
from genmodels.figures.common import (
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

__all__ = [
    "Fit",
    "SharedScaleMixture",
    "fit_forward_kl",
    "fit_reverse_kl",
    "kl_by_quadrature",
    "mode_covering_vs_chasing",
    "three_mode_target",
]

_F64 = torch.float64
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def three_mode_target(
    spacing: float = 2.0, sigma: float = 0.18, centre_ratio: float = 1.45
) -> GaussianMixture:
    """1-D mixture of N(−spacing, σ²), N(0, σ²), N(spacing, σ²) with weights ∝ (1, ratio, 1).

    Equal σ, so the centre mode is ``centre_ratio`` times taller than the side modes.
    """
    if spacing <= 0 or sigma <= 0 or centre_ratio <= 0:
        raise ValueError("spacing, sigma and centre_ratio must be positive")
    means = torch.tensor([[-spacing], [0.0], [spacing]], dtype=_F64)
    weights = torch.tensor([1.0, centre_ratio, 1.0], dtype=_F64)
    return GaussianMixture(means, sigma, weights, name="three_modes")


class SharedScaleMixture(nn.Module):
    """q_θ(x) = Σ_k w_k N(x; μ_k, σ²) on R with one shared σ = σ_min + softplus(ρ) ≥ σ_min.

    Parameters: means μ (K,), logits a (K,) with w = softmax(a), and ρ. K = 1 is a
    Gaussian generator x = μ + σ ε. All in float64.
    """

    def __init__(self, means: Sequence[float], sigma: float, sigma_min: float = 0.0) -> None:
        super().__init__()
        if sigma <= sigma_min or sigma_min < 0:
            raise ValueError(f"need 0 <= sigma_min < sigma, got sigma={sigma}, sigma_min={sigma_min}")
        self.sigma_min = float(sigma_min)
        self.means = nn.Parameter(torch.tensor(list(means), dtype=_F64))
        self.logits = nn.Parameter(torch.zeros(len(means), dtype=_F64))
        self.rho = nn.Parameter(torch.tensor(math.log(math.expm1(sigma - sigma_min)), dtype=_F64))

    @property
    def sigma(self) -> torch.Tensor:
        """The shared standard deviation σ = σ_min + softplus(ρ)."""
        return self.sigma_min + nn.functional.softplus(self.rho)

    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights softmax(a), shape (K,)."""
        return torch.softmax(self.logits, 0)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q_θ(x) for x of any shape (returned with the same shape)."""
        s = self.sigma
        z = (x[..., None] - self.means) / s
        comp = torch.log_softmax(self.logits, 0) - 0.5 * z**2 - torch.log(s) - _LOG_SQRT_2PI
        return torch.logsumexp(comp, -1)


def _target_log_prob(target: GaussianMixture) -> Callable[[torch.Tensor], torch.Tensor]:
    """log π for x of any shape (1-D target)."""

    def log_p(x: torch.Tensor) -> torch.Tensor:
        return target.log_prob(x.reshape(-1, 1)).reshape(x.shape)

    return log_p


def kl_by_quadrature(
    log_p: Callable[[torch.Tensor], torch.Tensor],
    log_q: Callable[[torch.Tensor], torch.Tensor],
    lo: float,
    hi: float,
    n: int = 20001,
) -> tuple[float, float]:
    """(D_KL(p‖q), D_KL(q‖p)) by the trapezoid rule on ``n`` points of [lo, hi] (float64).

    D_KL(p‖q) = ∫ p (log p − log q) dx (tutorial §2). Choose [lo, hi] to hold all but a
    negligible part of both p and q.
    """
    xs = torch.linspace(lo, hi, n, dtype=_F64)
    with torch.no_grad():
        lp, lq = log_p(xs), log_q(xs)
        diff = lp - lq
        fwd = torch.trapezoid(torch.exp(lp) * diff, xs)
        rev = torch.trapezoid(torch.exp(lq) * (-diff), xs)
    return float(fwd), float(rev)


@dataclass
class Fit:
    """An optimisation's snapshots: ``steps`` taken and the model density on ``xs`` at each."""

    model: SharedScaleMixture
    steps: list[int]
    curves: list[np.ndarray]
    losses: list[float]


def _snapshots(
    model: SharedScaleMixture,
    loss_fn: Callable[[], torch.Tensor],
    steps: int,
    snapshots: Sequence[int],
    lr: float,
    xs: torch.Tensor,
) -> Fit:
    """Adam on ``loss_fn``; store q_θ on ``xs`` after each step count in ``snapshots``."""
    if steps < max(snapshots) or min(snapshots) < 0:
        raise ValueError(f"snapshots must lie in [0, steps={steps}], got {list(snapshots)}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    fit = Fit(model, [], [], [])

    def record(step: int, loss: float) -> None:
        with torch.no_grad():
            fit.curves.append(torch.exp(model.log_prob(xs)).numpy())
        fit.steps.append(step)
        fit.losses.append(loss)

    wanted = sorted(set(snapshots))
    loss = float("nan")
    for step in range(steps + 1):
        if step in wanted:
            record(step, loss)
        if step == steps:
            break
        opt.zero_grad()
        value = loss_fn()
        value.backward()
        opt.step()
        loss = float(value.detach())
    return fit


def fit_forward_kl(
    target: GaussianMixture,
    model: SharedScaleMixture,
    xs: torch.Tensor,
    n_samples: int = 2000,
    steps: int = 300,
    snapshots: Sequence[int] = (0, 85, 110, 300),
    lr: float = 0.03,
    generator: torch.Generator | None = None,
) -> Fit:
    """Maximum likelihood on n samples of π: minimise −(1/n) Σ log q_θ(x_i), which is
    D_KL(π̂‖q_θ) up to the constant −H(π̂) (tutorial §2)."""
    data = target.sample(n_samples, generator=generator).double().reshape(-1)
    return _snapshots(model, lambda: -model.log_prob(data).mean(), steps, snapshots, lr, xs)


def fit_reverse_kl(
    target: GaussianMixture,
    model: SharedScaleMixture,
    xs: torch.Tensor,
    n_mc: int = 256,
    steps: int = 300,
    snapshots: Sequence[int] = (0, 120, 140, 300),
    lr: float = 0.03,
    generator: torch.Generator | None = None,
) -> Fit:
    """Minimise D_KL(q_θ‖π) = E_q[log q_θ(x) − log π(x)] by the reparameterization trick.

    For a mixture, E_q[f] = Σ_k w_k E_ε[f(μ_k + σ ε)], ε ~ N(0, 1): every component is
    reparameterized with the same ``n_mc`` fresh draws of ε, and the weights enter
    exactly, so the estimate is unbiased and differentiable in (μ, σ, w).
    """
    log_p = _target_log_prob(target)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    def loss() -> torch.Tensor:
        eps = torch.randn(n_mc, 1, generator=gen, dtype=_F64)
        x = model.means + model.sigma * eps  # (n_mc, K)
        per_component = (model.log_prob(x) - log_p(x)).mean(0)
        return (model.weights * per_component).sum()

    return _snapshots(model, loss, steps, snapshots, lr, xs)


def mode_covering_vs_chasing(
    out: str | Path,
    which: Sequence[str] = ("covering", "chasing"),
    spacing: float = 2.0,
    target_sigma: float = 0.18,
    centre_ratio: float = 1.45,
    sigma_min: float = 0.4,
    init_sigma: float = 1.4,
    forward_steps: int = 300,
    forward_snapshots: Sequence[int] = (0, 85, 110, 300),
    reverse_steps: int = 300,
    reverse_snapshots: Sequence[int] = (0, 120, 140, 300),
    n_samples: int = 2000,
    n_mc: int = 256,
    lr: float = 0.03,
    seed: int = 0,
    printer: Callable[[str], None] | None = print,
) -> FigureResult:
    """Fit both models, write ``mode_covering.gif`` and/or ``mode_chasing.gif``, print the KLs.

    Args:
        out: output folder.
        which: the GIFs to write, a subset of ("covering", "chasing"); both fits always run.
        spacing, target_sigma, centre_ratio: the target (:func:`three_mode_target`).
        sigma_min: the floor of the covering mixture's shared σ.
        init_sigma: the broad starting σ of both models (frame 1, "almost flat").
        forward_steps, forward_snapshots: Adam steps of the MLE fit and the 4 drawn steps.
        reverse_steps, reverse_snapshots: the same for the reverse-KL fit.
        n_samples: samples of π for maximum likelihood; n_mc: ε draws per reverse-KL step.
        lr: Adam learning rate; seed: seed of the samples and of ε.
        printer: where the numbers go (``None``: nowhere).

    Returns a :class:`FigureResult` with ``numbers``: ``forward_fit`` and ``reverse_fit``,
    each a dict of ``forward_kl`` D(π‖q), ``reverse_kl`` D(q‖π) (quadrature), ``at_modes``
    q at the three mode centres, ``sigma``, ``means``, ``weights``; plus ``target_at_modes``.
    """
    which = tuple(which)
    bad = [w for w in which if w not in ("covering", "chasing")]
    if bad or not which:
        raise ValueError(f"which must be a non-empty subset of ('covering', 'chasing'), got {which}")
    if len(forward_snapshots) < 1 or len(reverse_snapshots) < 1:
        raise ValueError("snapshots must name at least one step")
    target = three_mode_target(spacing, target_sigma, centre_ratio)
    log_p = _target_log_prob(target)
    half = 2.2 * spacing
    xs = torch.linspace(-half, half, 801, dtype=_F64)
    gen = torch.Generator().manual_seed(seed)

    spread = 0.75 * spacing
    covering = fit_forward_kl(
        target,
        SharedScaleMixture([-spread, 0.0, spread], init_sigma, sigma_min),
        xs,
        n_samples,
        forward_steps,
        forward_snapshots,
        lr,
        gen,
    )
    chasing = fit_reverse_kl(
        target,
        SharedScaleMixture([0.125 * spacing], init_sigma, 0.0),
        xs,
        n_mc,
        reverse_steps,
        reverse_snapshots,
        lr,
        gen,
    )

    centres = torch.tensor([-spacing, 0.0, spacing], dtype=_F64)
    lo, hi = -spacing - 12 * max(init_sigma, target_sigma), spacing + 12 * max(init_sigma, target_sigma)
    numbers: dict = {"target_at_modes": torch.exp(log_p(centres)).tolist()}
    for name, fit in (("forward_fit", covering), ("reverse_fit", chasing)):
        m = fit.model
        fwd, rev = kl_by_quadrature(log_p, m.log_prob, lo, hi)
        with torch.no_grad():
            numbers[name] = {
                "forward_kl": fwd,
                "reverse_kl": rev,
                "at_modes": torch.exp(m.log_prob(centres)).tolist(),
                "sigma": float(m.sigma),
                "means": m.means.tolist(),
                "weights": m.weights.tolist(),
            }
    if printer is not None:
        printer(f"modes: target π at the modes {_fmt(numbers['target_at_modes'])}")
        for name, label in (("forward_fit", "forward KL (MLE)"), ("reverse_fit", "reverse KL")):
            r = numbers[name]
            printer(
                f"  {label:<17} fit: D(π‖q) = {r['forward_kl']:.4f}  D(q‖π) = {r['reverse_kl']:.4f}  "
                f"q at the modes {_fmt(r['at_modes'])}  σ = {r['sigma']:.3f}"
            )

    curve = torch.exp(log_p(xs)).numpy()
    xs_np = xs.numpy()
    paths = []
    if "covering" in which:
        top = 1.08 * max(curve.max(), max(c.max() for c in covering.curves))
        frames = [
            _frame("mode covering", xs_np, curve, c, "$P_{data}$", top, f"maximum likelihood, step {s}")
            for s, c in zip(covering.steps, covering.curves, strict=True)
        ]
        paths.append(write_gif(frames, Path(out) / "mode_covering.gif"))
    if "chasing" in which:
        top = 1.08 * max(curve.max(), max(c.max() for c in chasing.curves))
        frames = [
            _frame("mode chasing", xs_np, curve, c, r"$\pi_\alpha$", top, f"reverse KL, step {s}")
            for s, c in zip(chasing.steps, chasing.curves, strict=True)
        ]
        paths.append(write_gif(frames, Path(out) / "mode_chasing.gif"))
    return FigureResult(paths, numbers)


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _frame(title, xs, target_curve, model_curve, target_label, top, caption):
    fig = new_frame(title)
    ax = curve_axes(fig)
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(0.0, top)
    ax.plot(xs, target_curve, color=TARGET_COLOR, lw=2.2)
    ax.plot(xs, model_curve, color=MODEL_COLOR, lw=2.2)
    ax.axhline(0.0, color=GREY, lw=0.8)
    label = {"fontsize": 15, "color": LABEL_COLOR, "clip_on": False}
    k = int(np.argmax(target_curve))
    ax.text(xs[k] + 0.04 * (xs[-1] - xs[0]), target_curve[k], target_label, va="bottom", **label)
    m = int(np.argmax(model_curve))
    ax.text(xs[m] - 0.04 * (xs[-1] - xs[0]), model_curve[m], r"$P_\theta$", ha="right", va="bottom", **label)
    fig.text(0.5, 0.12, caption, ha="center", fontsize=10, family="serif", color=GREY)
    return render(fig)
