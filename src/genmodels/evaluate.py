"""Metrics of a model against a ground-truth target or held-out data (design.md, "Evaluation").

- :func:`kl_to_truth`: D_KL(p‖q) = E_p[log p − log q] (tutorial §2) on fresh target samples
  when the model has a log-density, with its kind (exact / bound / estimate); otherwise the
  counting estimate on a grid (tutorial §1), which works for any sampler in 2-D.
- :func:`heldout_nll`: −(1/n) Σ log q(x_i) on any data, with its kind.
- :func:`mode_metrics`: modes captured, share of high-quality samples and reverse KL of the
  VEEGAN/PacGAN tables (benchmarks.md §2).
- :func:`energy_distance` and :func:`mmd`: two-sample distances, unbiased, O(n²) in chunks.
- :func:`evaluate_model`: all of the above in one flat ``dict`` for tables and JSON.

Randomness is always an explicit ``torch.Generator``; ``generator=None`` means a fresh
generator seeded with 0 (reproducible), never the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from genmodels.counting import (
    Grid2D,
    gaussian_mixture_cell_masses,
    kl_grid,
    kl_grid_null_mean,
    smoothed_masses,
)
from genmodels.distributions.base import Target
from genmodels.models.base import Model, NotSupportedError
from genmodels.types import Kind, LogDensity

__all__ = [
    "KLResult",
    "ModeMetrics",
    "NLLResult",
    "energy_distance",
    "evaluate_model",
    "heldout_nll",
    "kl_to_truth",
    "mmd",
    "mode_metrics",
    "target_cell_masses",
    "target_mode_metrics",
]

#: VEEGAN/PacGAN: a sample is high quality within this many standard deviations of a mode.
HQ_SIGMAS = 3.0

#: A bound on log q is the opposite bound on anything that subtracts it: KL = E[log p − log q]
#: and NLL = −E[log q]. A lower bound on log q (an ELBO) gives an upper bound on both.
FLIPPED_KIND: dict[str, Kind] = {
    "exact": "exact",
    "lower_bound": "upper_bound",
    "upper_bound": "lower_bound",
    "estimate": "estimate",
}


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _model_generator(model: torch.nn.Module, g: torch.Generator) -> torch.Generator:
    """``g`` itself for a CPU model; for a model on another device, a generator there whose
    seed is drawn from ``g`` (so the run stays reproducible from the one generator)."""
    where = _device_dtype(model)
    if where is None or where[0].type == "cpu" or where[0] == g.device:
        return g
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return torch.Generator(device=where[0]).manual_seed(seed)


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype] | None:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return None


def _model_log_prob(model: Model, x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, Kind]:
    """log q(x) in float64 on the CPU, shape (n,), and its kind, evaluated in chunks."""
    where = _device_dtype(model)
    values: list[torch.Tensor] = []
    kind: Kind | None = None
    for s in range(0, x.shape[0], chunk):
        xb = x[s : s + chunk]
        if where is not None:
            xb = xb.to(device=where[0], dtype=where[1])
        out = model.log_prob(xb)
        if not isinstance(out, LogDensity):
            raise TypeError(f"{type(model).__name__}.log_prob must return a LogDensity")
        if kind is not None and out.kind != kind:
            raise ValueError(f"log_prob changed kind between chunks: {kind} then {out.kind}")
        kind = out.kind
        values.append(out.values.detach().double().cpu().reshape(-1))
    assert kind is not None, "no points to evaluate"
    return torch.cat(values), kind


def _mean_stderr(v: torch.Tensor) -> tuple[float, float]:
    """(mean, std/√n) of a float64 vector; ±inf means give stderr inf, NaN stays NaN."""
    m = v.numel()
    mean = float(v.mean())
    if not math.isfinite(mean):
        return mean, (math.nan if math.isnan(mean) else math.inf)
    return mean, float(v.std(unbiased=True)) / math.sqrt(m) if m > 1 else math.nan


# ---------------------------------------------------------------------------------------
# KL to the truth
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KLResult:
    """An estimate of D_KL(p‖q) in nats.

    ``kind``: "exact" (only Monte-Carlo error, given by ``stderr``), "upper_bound" or
    "lower_bound" (the KL computed from a bound on log q, itself up to its ``stderr``), or
    "estimate". ``method``: "log_prob" or "grid". ``n``: samples used. ``details``: extra
    numbers of the method (see :func:`kl_to_truth`).
    """

    value: float
    stderr: float
    kind: Kind
    method: Literal["log_prob", "grid"]
    n: int
    details: dict[str, float] = field(default_factory=dict)


def target_cell_masses(target: Target, grid: Grid2D) -> np.ndarray:
    """Exact mass of every cell of ``grid`` under a 2-D target, shape (bx, by).

    Gaussian mixtures with axis-aligned components use the closed form
    (:func:`~genmodels.counting.gaussian_mixture_cell_masses`); any other target is
    integrated by Gauss–Legendre quadrature of exp(log_prob), each cell split finely
    enough that sub-cells are at most 2 ``mode_std`` wide when the target declares one.
    """
    closed = _mixture_parameters(target)
    if closed is not None:
        means, stds, weights = closed
        return gaussian_mixture_cell_masses(means, stds, weights, grid.x_edges, grid.y_edges)
    refine = 2
    if target.mode_std:
        width = max(grid.dx.max(), grid.dy.max())
        refine = int(min(8, max(2, math.ceil(width / (2.0 * target.mode_std)))))
    return grid.masses(target.log_prob, refine=refine)


def _mixture_parameters(target: Target) -> tuple[Any, Any, Any] | None:
    """(means (K, 2), stds (K, 2), weights (K,)) of an axis-aligned 2-D mixture, else None."""
    try:
        from genmodels.distributions import GaussianMixture
    except ImportError:  # pragma: no cover - the distributions package is optional here
        return None
    if not isinstance(target, GaussianMixture) or target.dim != 2:
        return None
    cov = target.covariances  # (K, 2, 2)
    diag = torch.diagonal(cov, dim1=-2, dim2=-1)
    if not bool((cov == torch.diag_embed(diag)).all()):
        return None  # rotated components: fall back to quadrature
    return target.means, diag.sqrt(), target.weights


def kl_to_truth(
    model: Model,
    target: Target,
    n: int = 20_000,
    generator: torch.Generator | None = None,
    *,
    method: Literal["auto", "log_prob", "grid"] = "auto",
    samples: torch.Tensor | None = None,
    bins: int = 50,
    alpha: float = 0.5,
    n_boot: int = 200,
    chunk: int = 8192,
) -> KLResult:
    """D_KL(p‖q) = E_p[log p(x) − log q(x)] between the target p and the model q (tutorial §2).

    **log_prob** (``method="auto"`` when ``model.has_log_prob``): draw x_1..x_n ~ p afresh
    and return the mean of d_i = log p(x_i) − log q(x_i) with stderr = std(d)/√n. The kind
    follows from the kind of log q (:data:`FLIPPED_KIND`): exact → "exact" (still with its
    Monte-Carlo stderr), a lower bound on log q → "upper_bound" on the KL, upper → "lower_bound",
    estimate → "estimate". Any log q(x_i) = −inf makes the KL +inf (stderr inf), never NaN.
    Samples with log p = −inf (a null set of p that rounding can still hit) are dropped and
    counted in ``details["n_dropped"]``. ``details["nll"]`` = −mean log q (± ``nll_stderr``)
    is the test NLL, whose floor is the target's entropy.

    **grid** (``method="auto"`` for a sample-only model on a 2-D target): the counting
    estimate D_KL(P‖Q̂) on a ``bins`` × ``bins`` grid over ``target.box`` plus one "outside"
    cell, with P the target's exact cell masses (:func:`target_cell_masses`) and Q̂ the
    histogram of n model samples smoothed with add-``alpha`` pseudo-counts,
    Q̂_c = (n_c + α)/(n + α(C+1)) (α = ½: Krichevsky–Trofimov). Kind "estimate"; stderr is
    the standard deviation over ``n_boot`` bootstrap resamples of the model samples.
    Biases pull both ways: coarse cells can only lower a KL (data processing), while the
    finite sample and the smoothing raise it. ``details["null_bias"]`` is the exact expected
    value of this estimator when the model samples the target perfectly: the smoothing's
    ≈ log(1 + α(C+1)/n) plus the sampling's ≈ (C_eff − 1)/(2n), about 0.055 nats at the
    defaults (50 × 50 bins, n = 20 000). So value − null_bias estimates the excess KL (on
    8gaussians widened by 10 % it gives 0.019 against 0.017 by log-prob), and a model is
    indistinguishable from the truth at this resolution when value ≲ null_bias + 2·stderr.
    The smoothing also caps the estimate: a model with no
    sample where P lives scores log((n + α(C+1))/α) − H(P), not +inf, so compare grid
    values only at equal n and bins. ``samples`` (n, 2) reuses model samples already drawn.

    For d ≠ 2 and no log-density there is no estimate: raises :class:`NotSupportedError`.
    """
    g = _generator(generator)
    if method == "auto":
        method = "log_prob" if model.has_log_prob else "grid"
    if method == "log_prob":
        if not model.has_log_prob:
            raise NotSupportedError(f"{type(model).__name__} has no log-density (has_log_prob=False)")
        return _kl_log_prob(model, target, n, g, chunk)
    if method != "grid":
        raise ValueError(f"unknown method {method!r}; choose auto, log_prob or grid")
    if target.dim != 2:
        raise NotSupportedError(
            f"KL to the truth needs the model's log-density for a {target.dim}-D target: "
            f"{type(model).__name__} can only sample, and the counting (grid) estimate "
            "exists only in 2-D"
        )
    if samples is None:
        samples = model.sample(n, generator=_model_generator(model, g))
    return _kl_grid_estimate(samples, target, g, bins, alpha, n_boot)


def _kl_log_prob(model: Model, target: Target, n: int, g: torch.Generator, chunk: int) -> KLResult:
    x = target.sample(n, generator=g)
    log_p = target.log_prob(x).detach().double().cpu().reshape(-1)
    keep = log_p > -math.inf  # also drops NaN
    n_dropped = int((~keep).sum())
    x, log_p = x[keep], log_p[keep]
    log_q, kind = _model_log_prob(model, x, chunk)
    d = log_p - log_q  # log q = −inf → +inf; log p is finite here, so never inf − inf
    value, stderr = _mean_stderr(d)
    nll, nll_stderr = _mean_stderr(-log_q)
    details = {
        "nll": nll,
        "nll_stderr": nll_stderr,
        "n_dropped": float(n_dropped),
        "n_log_q_neg_inf": float((log_q == -math.inf).sum()),
    }
    return KLResult(value, stderr, FLIPPED_KIND[kind], "log_prob", int(d.numel()), details)


def _kl_grid_estimate(
    samples: torch.Tensor,
    target: Target,
    g: torch.Generator,
    bins: int,
    alpha: float,
    n_boot: int,
) -> KLResult:
    samples = samples.detach().cpu().double().reshape(-1, 2)
    n = samples.shape[0]
    grid = Grid2D.regular(*target.box, bins)
    C = bins * bins
    P_cells = target_cell_masses(target, grid).reshape(-1)
    P = np.append(P_cells, max(0.0, 1.0 - P_cells.sum()))  # + the "outside" cell
    P = P / P.sum()
    idx = grid.locate(samples)
    idx[idx < 0] = C  # off the grid (and non-finite samples) go to the outside cell
    counts = np.bincount(idx, minlength=C + 1)
    value = kl_grid(P, smoothed_masses(counts, alpha), normalize=False)

    # Bootstrap over the model samples: resample the n cell indices with replacement.
    idx_t = torch.from_numpy(idx)
    boot = np.empty(n_boot)
    per_block = max(1, 4_000_000 // max(n, 1))
    for s in range(0, n_boot, per_block):
        b = min(per_block, n_boot - s)
        draw = idx_t[torch.randint(0, n, (b, n), generator=g)]
        offsets = (torch.arange(b) * (C + 1))[:, None]
        cb = torch.bincount((draw + offsets).reshape(-1), minlength=b * (C + 1))
        cb = cb.reshape(b, C + 1).numpy()
        for r in range(b):
            boot[s + r] = kl_grid(P, smoothed_masses(cb[r], alpha), normalize=False)
    stderr = float(np.std(boot, ddof=1)) if n_boot > 1 else math.nan
    details = {
        "null_bias": kl_grid_null_mean(P, n, alpha),
        "bins": float(bins),
        "alpha": alpha,
        "outside_fraction": float(counts[C] / n),
        "target_outside_mass": float(P[C]),
        "n_nonfinite": float((~torch.isfinite(samples).all(dim=1)).sum()),
    }
    return KLResult(value, stderr, "estimate", "grid", n, details)


# ---------------------------------------------------------------------------------------
# held-out NLL
# ---------------------------------------------------------------------------------------
class NLLResult(NamedTuple):
    """−(1/n) Σ log q(x_i) in nats, its standard error, and its kind."""

    mean: float
    stderr: float
    kind: Kind


def heldout_nll(model: Model, data: torch.Tensor, chunk: int = 8192) -> NLLResult:
    """NLL = −(1/n) Σ_i log q(x_i) of data (n, d), stderr = std/√n (tutorial §2, −L(θ)).

    The kind is that of −log q: a lower bound on log q (an ELBO) is an "upper_bound" on the
    NLL, and so on (:data:`FLIPPED_KIND`). Any log q = −inf makes the mean +inf.
    On data from a target p the NLL estimates H(p) + D_KL(p‖q), so it is never below H(p)
    beyond its stderr.
    """
    if not model.has_log_prob:
        raise NotSupportedError(f"{type(model).__name__} has no log-density (has_log_prob=False)")
    log_q, kind = _model_log_prob(model, data, chunk)
    mean, stderr = _mean_stderr(-log_q)
    return NLLResult(mean, stderr, FLIPPED_KIND[kind])


def bits_per_dim(nll: float, dim: int, levels: int | None = None) -> tuple[float, str]:
    """Bits per dimension of a mean NLL (nats per point) and the protocol it assumes.

    Continuous data: nll / (d ln 2). Integer data with ``levels`` grey levels, modelled
    through y = (x + u)/levels (uniform dequantization, benchmarks.md §4): the NLL of y plus
    the log-volume d·log(levels) of the map, (nll + d log levels) / (d ln 2), a bound on the
    discrete model's bits/dim.
    """
    if levels is None:
        return nll / (dim * math.log(2)), "continuous data, no dequantization"
    return (nll + dim * math.log(levels)) / (dim * math.log(2)), (
        f"uniform dequantization, y = (x + u) / {levels}, u ~ U[0, 1)^{dim}, one draw"
    )


# ---------------------------------------------------------------------------------------
# mode metrics (VEEGAN / PacGAN)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModeMetrics:
    """The VEEGAN/PacGAN mode metrics of a set of samples (benchmarks.md §2).

    ``modes``: modes captured, out of ``n_modes``; ``hq_fraction``: share of samples
    within n_sigma·std of their nearest centre; ``reverse_kl``: KL(HQ histogram ‖ uniform)
    in nats; ``hq_counts``: the HQ histogram over the modes.
    """

    modes: int
    n_modes: int
    hq_fraction: float
    reverse_kl: float
    hq_counts: tuple[int, ...] = ()


def mode_metrics(
    samples: torch.Tensor,
    centers: torch.Tensor,
    std: float,
    n_sigma: float = HQ_SIGMAS,
) -> ModeMetrics:
    """Modes captured, high-quality share and reverse KL, exactly as in VEEGAN and PacGAN.

    For samples x_i (n, d) and mode centres c_k (K, d) of isotropic standard deviation σ:

    - k(i) = argmin_k ‖x_i − c_k‖; x_i is *high quality* (HQ) when ‖x_i − c_k(i)‖ ≤ n_sigma·σ;
    - modes captured = #{k : k = k(i) for at least one HQ sample i};
    - h_k = #{HQ i : k(i) = k} / #HQ, and reverse KL = Σ_k h_k log(h_k K) = KL(h ‖ uniform).
      Modes with no HQ sample contribute 0·log 0 = 0; a single captured mode gives log K,
      an even spread 0. With no HQ sample at all h is undefined and reverse KL is NaN.

    For exact samples of a 2-D isotropic mixture, ‖x − c‖²/σ² ~ χ²₂, so
    E[hq_fraction] = P(χ²₂ ≤ 9) = 1 − e^{−4.5} ≈ 0.9889 (when modes are far apart).
    Benchmarks use 2500 samples.

    >>> centers = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    >>> m = mode_metrics(torch.tensor([[0.1, 0.0], [0.0, 0.2], [5.0, 5.0]]), centers, std=0.1)
    >>> m.modes, m.n_modes, round(m.hq_fraction, 3), round(m.reverse_kl, 4)  # log 2
    (1, 2, 0.667, 0.6931)
    """
    x = samples.detach().cpu().double().reshape(samples.shape[0], -1)
    c = torch.as_tensor(centers).detach().cpu().double().reshape(-1, x.shape[1])
    K = c.shape[0]
    if x.shape[0] == 0:
        raise ValueError("no samples")
    dist = torch.cdist(x, c, compute_mode="donot_use_mm_for_euclid_dist")  # (n, K)
    nearest_d, nearest_k = dist.min(dim=1)
    hq = nearest_d <= n_sigma * float(std)  # NaN samples are never HQ
    counts = torch.bincount(nearest_k[hq], minlength=K)
    n_hq = int(counts.sum())
    if n_hq == 0:
        reverse_kl = math.nan
    else:
        h = counts.double() / n_hq
        terms = torch.where(h > 0, h * torch.log(h * K), torch.zeros_like(h))
        reverse_kl = float(terms.sum())
    return ModeMetrics(
        modes=int((counts > 0).sum()),
        n_modes=K,
        hq_fraction=n_hq / x.shape[0],
        reverse_kl=reverse_kl,
        hq_counts=tuple(int(v) for v in counts),
    )


def target_mode_metrics(samples: torch.Tensor, target: Target, n_sigma: float = HQ_SIGMAS) -> ModeMetrics:
    """:func:`mode_metrics` with the target's ``mode_centers`` and ``mode_std``."""
    if target.mode_centers is None or target.mode_std is None:
        raise ValueError(f"target {target.name!r} declares no mode_centers / mode_std")
    return mode_metrics(samples, target.mode_centers, target.mode_std, n_sigma)


# ---------------------------------------------------------------------------------------
# two-sample distances
# ---------------------------------------------------------------------------------------
def _as_2d(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x).detach().cpu().double()
    return x.reshape(x.shape[0], -1)


def _pair_sum(a: torch.Tensor, b: torch.Tensor, fn: Any, chunk: int) -> float:
    """Σ_{i,j} fn(‖a_i − b_j‖) over all pairs, in blocks of ``chunk`` rows."""
    total = 0.0
    for s in range(0, a.shape[0], chunk):
        d = torch.cdist(a[s : s + chunk], b, compute_mode="donot_use_mm_for_euclid_dist")
        total += float(fn(d).sum())
    return total


def energy_distance(x: torch.Tensor, y: torch.Tensor, chunk: int = 1024) -> float:
    """Unbiased energy distance 2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖ (Székely & Rizzo), x (m, d), y (n, d).

    Each expectation is a U-statistic: Σ_{i≠j}‖x_i − x_j‖ / (m(m−1)), Σ_{i,j}‖x_i − y_j‖ / (mn).
    Zero in expectation when X and Y have the same law (so it can be slightly negative) and
    positive otherwise; its null spread shrinks like 1/n. Cost O((m + n)²) in blocks.
    """
    x, y = _as_2d(x), _as_2d(y)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("energy_distance needs at least two points in each sample")
    xy = _pair_sum(x, y, lambda d: d, chunk) / (m * n)
    xx = _pair_sum(x, x, lambda d: d, chunk) / (m * (m - 1))  # the diagonal is 0
    yy = _pair_sum(y, y, lambda d: d, chunk) / (n * (n - 1))
    return 2.0 * xy - xx - yy


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, max_points: int = 1000) -> float:
    """Median heuristic: the median distance between pooled points (evenly thinned to
    ``max_points`` per sample, deterministically)."""
    x, y = _as_2d(x), _as_2d(y)

    def thin(t: torch.Tensor) -> torch.Tensor:
        step = max(1, math.ceil(t.shape[0] / max_points))
        return t[::step]

    z = torch.cat([thin(x), thin(y)])
    d = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1)
    return float(d[iu[0], iu[1]].median())


def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidth: float | Sequence[float] | None = None,
    chunk: int = 1024,
) -> float:
    """Unbiased MMD² with a Gaussian kernel (Gretton et al. 2012, "A Kernel Two-Sample Test").

    k(a, b) = Σ_σ exp(−‖a−b‖²/(2σ²)) and

    MMD²_u = Σ_{i≠j} k(x_i,x_j)/(m(m−1)) + Σ_{i≠j} k(y_i,y_j)/(n(n−1)) − 2 Σ_{i,j} k(x_i,y_j)/(mn),
    for x (m, d) and y (n, d). ``bandwidth``: one σ, several (their kernels are summed), or
    None for the median heuristic (:func:`median_bandwidth`). Zero in expectation when the
    two laws agree (so it can be slightly negative). Cost O((m + n)²) in blocks.
    """
    x, y = _as_2d(x), _as_2d(y)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("mmd needs at least two points in each sample")
    if bandwidth is None:
        bandwidth = median_bandwidth(x, y)
    sigmas = [float(bandwidth)] if isinstance(bandwidth, int | float) else list(bandwidth)

    def k(d: torch.Tensor) -> torch.Tensor:
        return sum(torch.exp(-(d**2) / (2.0 * s**2)) for s in sigmas)

    diag = len(sigmas)  # k(a, a) = number of bandwidths
    xx = (_pair_sum(x, x, k, chunk) - m * diag) / (m * (m - 1))
    yy = (_pair_sum(y, y, k, chunk) - n * diag) / (n * (n - 1))
    xy = _pair_sum(x, y, k, chunk) / (m * n)
    return xx + yy - 2.0 * xy


# ---------------------------------------------------------------------------------------
# everything at once
# ---------------------------------------------------------------------------------------
def evaluate_model(
    model: Model,
    target: Target,
    n: int = 20_000,
    generator: torch.Generator | None = None,
    *,
    summary: bool = True,
    mode_n: int = 2500,
    energy_n: int = 2000,
    bins: int = 50,
) -> dict[str, Any]:
    """Score a model against a target, as a dict for tables and JSON.

    Draws model samples once (on the model's device, with a generator seeded from
    ``generator`` there): n for the grid KL of a sample-only model, else only the
    ``max(mode_n, energy_n)`` that the mode metrics and the energy distance use. Keys:

    - ``target``, ``family``, ``n_samples``;
    - ``kl``, ``kl_stderr``, ``kl_kind``, ``kl_method`` (:func:`kl_to_truth`; the grid method
      reuses the samples and adds ``kl_null_bias``, the floor a perfect sampler scores; the
      log_prob method adds ``nll`` and ``nll_stderr`` on the target samples, whose floor is
      the target's entropy);
    - ``modes``, ``n_modes``, ``hq_fraction``, ``reverse_kl`` on the first ``mode_n`` samples
      (2500, as in the PacGAN tables) when the target declares ``mode_centers``;
    - ``energy_distance`` between the first ``energy_n`` samples and as many fresh target
      samples.

    With ``summary`` (the default) every value is a str, int or float, one table row; with
    ``summary=False`` the dict also holds ``kl_details`` (a dict) and ``hq_counts`` (a list).
    A KL of +inf stays a float; ``json.dumps`` writes it as ``Infinity``.
    """
    g = _generator(generator)
    # With a log-density the KL needs only target samples; model samples serve the mode
    # metrics and the energy distance (sampling is the slow part for MCMC-based models).
    n_model = max(mode_n, energy_n) if model.has_log_prob else n
    samples = model.sample(n_model, generator=_model_generator(model, g)).detach().cpu().float()
    out: dict[str, Any] = {
        "target": target.name,
        "family": getattr(model, "family", type(model).__name__),
        "n_samples": int(samples.shape[0]),
    }
    if model.has_log_prob:
        kl = kl_to_truth(model, target, n, g)
    else:
        kl = kl_to_truth(model, target, n, g, method="grid", samples=samples, bins=bins)
    out.update(kl=kl.value, kl_stderr=kl.stderr, kl_kind=kl.kind, kl_method=kl.method)
    if kl.method == "grid":
        out["kl_null_bias"] = kl.details["null_bias"]
    else:
        out["nll"], out["nll_stderr"] = kl.details["nll"], kl.details["nll_stderr"]
    if not summary:
        out["kl_details"] = dict(kl.details)
    if target.mode_centers is not None and target.mode_std is not None:
        mm = target_mode_metrics(samples[:mode_n], target)
        out.update(modes=mm.modes, n_modes=mm.n_modes, hq_fraction=mm.hq_fraction, reverse_kl=mm.reverse_kl)
        if not summary:
            out["hq_counts"] = list(mm.hq_counts)
    ref = target.sample(min(energy_n, samples.shape[0]), generator=g)
    out["energy_distance"] = energy_distance(samples[:energy_n], ref)
    return out
