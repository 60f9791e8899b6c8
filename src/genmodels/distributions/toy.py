"""The 2-D ground-truth targets: FFJORD's toy suite and PacGAN's ring and grid.

Every target samples the *continuum* form of its generator (independent random angles and
positions, never FFJORD's deterministic ``linspace``) and has an exact, or numerically
exact, log-density:

- ``8gaussians``, ``ring8``, ``grid25``: Gaussian mixtures (closed form).
- ``checkerboard``: uniform on 8 squares (closed form, -log 32 inside).
- ``rings``, ``circles``: noisy circles; the angular integral is a Bessel function I₀.
- ``moons``, ``swissroll``, ``2spirals``: a curve c(t) with t random plus noise; the density
  is a 1-D integral over t done by composite Gauss–Legendre quadrature in float64.
- ``pinwheel``: a smooth non-injective map of a Gaussian; the density is the
  change-of-variables sum over all preimages, found by root finding.

Sources: ``lib/toy_data.py`` of rtqichen/ffjord (Grathwohl et al., 2019), the sklearn
generators ``make_moons``, ``make_circles`` and ``make_swiss_roll`` that it calls, and the
ring/grid data of PacGAN (Lin et al., 2018) and VEEGAN (Srivastava et al., 2017).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from genmodels.distributions.base import Target
from genmodels.distributions.gaussian_mixture import GaussianMixture

__all__ = [
    "Checkerboard",
    "ConcentricRings",
    "CurveTarget",
    "Moons",
    "Pinwheel",
    "SwissRoll",
    "TwoSpirals",
    "circles",
    "eight_gaussians",
    "grid25",
    "grid_entropy",
    "ring8",
    "rings",
]

_LOG_2PI = math.log(2.0 * math.pi)
_F64 = torch.float64

#: a curve branch: (log weight, reflection ±1, curve t ↦ c(t) of shape (m, 2),
#: log-density of t, t₀, t₁)
Branch = tuple[
    float,
    float,
    Callable[[np.ndarray], np.ndarray],
    Callable[[np.ndarray], np.ndarray],
    float,
    float,
]


def _u(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=_F64)


def _n(n: int, generator: torch.Generator | None, d: int = 2) -> torch.Tensor:
    return torch.randn(n, d, generator=generator, dtype=_F64)


def grid_entropy(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    box: tuple[float, float],
    cell: float,
    order: int = 6,
    chunk: int = 100_000,
) -> tuple[float, float]:
    """H = -∫ p log p over the square ``box``² by tensor Gauss–Legendre quadrature.

    The box is cut into square cells of side ≈ ``cell`` with an ``order`` × ``order`` rule
    in each. Returns ``(H, mass)`` where ``mass`` = ∫ p over the box (≈ 1 when the box
    holds all the mass). Points where p = 0 contribute 0 (p log p → 0).
    """
    lo, hi = box
    m = max(1, math.ceil((hi - lo) / cell - 1e-9))
    edges = np.linspace(lo, hi, m + 1)
    t, w = np.polynomial.legendre.leggauss(order)
    half = np.diff(edges) / 2.0
    pts = ((edges[:-1] + edges[1:]) / 2.0)[:, None] + half[:, None] * t[None]
    wts = half[:, None] * w[None]
    p1, w1 = torch.from_numpy(pts.reshape(-1)), torch.from_numpy(wts.reshape(-1))
    X = torch.stack(torch.meshgrid(p1, p1, indexing="ij"), -1).reshape(-1, 2)
    W = (w1[:, None] * w1[None, :]).reshape(-1)
    h, mass = 0.0, 0.0
    with torch.no_grad():
        for xs, ws in zip(X.split(chunk), W.split(chunk), strict=True):
            lp = log_prob(xs).to(_F64)
            p = lp.exp()
            plogp = torch.where(p > 0, p * lp, torch.zeros_like(p))
            h -= float((ws * plogp).sum())
            mass += float((ws * p).sum())
    return h, mass


class _Toy2D(Target):
    """A 2-D target whose entropy is -∫ p log p by Gauss–Legendre on its box (cached)."""

    dim = 2
    #: cell side and rule order of the entropy quadrature (≤ 2 noise stds: converged to
    #: ~1e-6 nats; checked against cells half as wide)
    _entropy_cell: float = 0.2
    _entropy_order: int = 6

    def entropy(self) -> float:
        """Differential entropy -∫ p log p (nats) by :func:`grid_entropy` on ``box``; cached."""
        cached = getattr(self, "_entropy_cache", None)
        if cached is None:
            cached, _ = grid_entropy(self.log_prob, self.box, self._entropy_cell, self._entropy_order)
            self._entropy_cache = cached
        return cached


# ------------------------------------------------------------------------------------
# Gaussian mixtures
# ------------------------------------------------------------------------------------


def eight_gaussians() -> GaussianMixture:
    """FFJORD ``8gaussians``: (4·c + 0.5·ε)/1.414 with c uniform over the 8 unit compass points.

    c ∈ {(±1, 0), (0, ±1), (±1/√2, ±1/√2)}: equal-weight mixture with means 4c/1.414 (radius
    2.829) and isotropic std 0.5/1.414 = 0.3536. Box [-5, 5]².
    """
    r = 1.0 / math.sqrt(2.0)
    c = torch.tensor([(1, 0), (-1, 0), (0, 1), (0, -1), (r, r), (r, -r), (-r, r), (-r, -r)], dtype=_F64)
    return GaussianMixture(4.0 * c / 1.414, 0.5 / 1.414, name="8gaussians", box=(-5.0, 5.0))


def ring8() -> GaussianMixture:
    """PacGAN/VEEGAN ring: 8 equal Gaussians at (cos 2πk/8, sin 2πk/8), std 0.01. Box [-1.1, 1.1]².

    Entropy ≈ log 8 + log(2πe·0.01²) = -4.293 (the components do not overlap).
    """
    a = 2.0 * math.pi * torch.arange(8, dtype=_F64) / 8.0
    return GaussianMixture(torch.stack([a.cos(), a.sin()], 1), 0.01, name="ring8", box=(-1.1, 1.1))


def grid25() -> GaussianMixture:
    """PacGAN/VEEGAN grid: 25 equal Gaussians at {-4,-2,0,2,4}², std 0.05. Box [-4.5, 4.5]².

    Entropy ≈ log 25 + log(2πe·0.05²) = 0.0653.
    """
    v = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0], dtype=_F64)
    means = torch.stack(torch.meshgrid(v, v, indexing="ij"), -1).reshape(-1, 2)
    return GaussianMixture(means, 0.05, name="grid25", box=(-4.5, 4.5))


# ------------------------------------------------------------------------------------
# Checkerboard
# ------------------------------------------------------------------------------------


class Checkerboard(_Toy2D):
    """FFJORD ``checkerboard``: uniform on the 8 black squares of a 4×4 board on [-4, 4]².

    Sampling (FFJORD): x₁ ~ U[-2, 2), x₂ = U - 2·B + (⌊x₁⌋ mod 2) with U ~ U[0, 1),
    B ~ Bernoulli(½); return 2·(x₁, x₂). The support is {z ∈ [-4, 4)²: ⌊z₁/2⌋ + ⌊z₂/2⌋
    even}, of area 32, so log p = -log 32 inside and -inf outside; H = log 32 exactly.
    The score is 0 inside (and returned as 0 outside, where it is undefined).
    """

    name = "checkerboard"
    box = (-4.0, 4.0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x1 = _u(n, generator) * 4.0 - 2.0
        b = torch.randint(0, 2, (n,), generator=generator).to(_F64)
        x2 = _u(n, generator) - 2.0 * b + torch.remainder(torch.floor(x1), 2.0)
        return (2.0 * torch.stack([x1, x2], 1)).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """-log 32 on the (closed) black squares, -inf elsewhere; ``(n, 2)`` → ``(n,)``.

        Points on a square's edge count as inside, so a float32 sample that rounds onto an
        edge never gets log p = -inf (edges have measure zero).
        """
        x64 = x.to(_F64)
        u = x64 / 2.0  # board units: black cells (i, j) ∈ {-2..1}², i + j even
        f = torch.floor(u)
        on = (u == f).to(_F64)  # on a grid line: the cell below/left also touches x
        black = torch.zeros(x64.shape[0], dtype=torch.bool)
        for e1 in (0.0, 1.0):
            for e2 in (0.0, 1.0):
                i = f[:, 0] - e1 * on[:, 0]
                j = f[:, 1] - e2 * on[:, 1]
                ok = (i >= -2) & (i <= 1) & (j >= -2) & (j <= 1)
                black |= ok & (torch.remainder(i + j, 2.0) == 0)
        lp = torch.where(black, -math.log(32.0), -math.inf)
        # + 0·x keeps the output on the autograd graph (gradient 0) for callers that
        # differentiate log_prob.
        return (lp + (0.0 * x64[:, 0]).nan_to_num(0.0)).to(x.dtype)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """∇ log p = 0 (piecewise constant density); ``(n, 2)`` → ``(n, 2)``."""
        return torch.zeros_like(x)

    def entropy(self) -> float:
        """H = log 32 (uniform on area 32)."""
        return math.log(32.0)


# ------------------------------------------------------------------------------------
# Noisy concentric circles (Bessel closed form)
# ------------------------------------------------------------------------------------


class ConcentricRings(_Toy2D):
    r"""Circles of radii r_k with uniform angle, weights w_k, plus isotropic N(0, s² I) noise.

    With ρ = |x|, integrating the Gaussian over the uniform angle gives (I₀ the modified
    Bessel function of the first kind)::

        p(x) = Σ_k w_k (1 / 2π s²) exp(-(ρ² + r_k²) / 2s²) I₀(ρ r_k / s²)
        log p_k = -(ρ - r_k)² / 2s² + log i0e(ρ r_k / s²) - log 2π s²

    with i0e(z) = e^{-z} I₀(z) for stability. Analytic score (shape ``(n, 2)``)::

        ∇ log p_k = x [-1/s² + (r_k / s²) (I₁/I₀)(ρ r_k/s²) / ρ],   I₁/I₀ = i1e/i0e,

    averaged over k with posterior weights. Used for FFJORD ``rings`` (radii 3·{1, .75, .5,
    .25}, s = 0.08) and ``circles`` = sklearn ``make_circles(factor=.5, noise=.08)``·3
    (radii 3 and 1.5, s = 0.24).
    """

    def __init__(
        self,
        radii: list[float] | tuple[float, ...],
        noise_std: float,
        weights: list[float] | tuple[float, ...] | None = None,
        name: str = "rings",
        box: tuple[float, float] | None = None,
    ) -> None:
        self.radii = torch.tensor(radii, dtype=_F64)
        k = self.radii.shape[0]
        w = torch.full((k,), 1.0 / k, dtype=_F64) if weights is None else torch.tensor(weights, dtype=_F64)
        self.log_weights = (w / w.sum()).log()
        self.noise_std = float(noise_std)
        self.name = name
        r = float(self.radii.max()) + 8.0 * self.noise_std
        self.box = box if box is not None else (-math.ceil(r * 2) / 2, math.ceil(r * 2) / 2)
        self._entropy_cell = 1.5 * self.noise_std

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """k ~ Categorical(w), φ ~ U[0, 2π), x = r_k (cos φ, sin φ) + s ε; ``(n, 2)`` float32."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        phi = 2.0 * math.pi * _u(n, generator)
        x = self.radii[k, None] * torch.stack([phi.cos(), phi.sin()], 1)
        return (x + self.noise_std * _n(n, generator)).float()

    def _log_components(self, x64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s2 = self.noise_std**2
        rho = x64.square().sum(1).sqrt()[:, None]  # (n, 1)
        z = rho * self.radii / s2  # (n, K)
        log_pk = (
            -((rho - self.radii) ** 2) / (2 * s2)
            + torch.log(torch.special.i0e(z))
            - math.log(2 * math.pi * s2)
        )
        return self.log_weights + log_pk, rho, z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) (Bessel closed form above); ``(n, 2)`` → ``(n,)``, dtype of x."""
        joint, _, _ = self._log_components(x.to(_F64))
        return torch.logsumexp(joint, 1).to(x.dtype)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Analytic score (class docstring); ``(n, 2)`` → ``(n, 2)``, dtype of x."""
        with torch.no_grad():
            x64 = x.detach().to(_F64)
            s2 = self.noise_std**2
            joint, rho, z = self._log_components(x64)
            ratio = torch.special.i1e(z) / torch.special.i0e(z)  # I₁/I₀
            # (I₁/I₀)(z)/ρ → r/(2s²) as ρ → 0
            safe = torch.where(rho > 0, rho, torch.ones_like(rho))
            over_rho = torch.where(rho > 0, ratio / safe, self.radii / (2 * s2))
            coef = -1.0 / s2 + self.radii / s2 * over_rho  # (n, K)
            post = torch.softmax(joint, 1)
            return ((post * coef).sum(1, keepdim=True) * x64).to(x.dtype)


def rings() -> ConcentricRings:
    """FFJORD ``rings``: radii 3·{1, .75, .5, .25}, equal weights, noise std 0.08. Box [-4, 4]²."""
    return ConcentricRings([3.0, 2.25, 1.5, 0.75], 0.08, name="rings", box=(-4.0, 4.0))


def circles() -> ConcentricRings:
    """FFJORD ``circles``: sklearn make_circles(factor=.5, noise=.08)·3: radii 3, 1.5, std 0.24."""
    return ConcentricRings([3.0, 1.5], 0.24, name="circles", box=(-5.0, 5.0))


# ------------------------------------------------------------------------------------
# Curves plus noise: 1-D Gauss–Legendre quadrature along the generating variable
# ------------------------------------------------------------------------------------


class CurveTarget(_Toy2D):
    r"""x = σ_b · c_b(t) + noise, with branch b ~ w, t ~ q_b on [t₀, t₁]: density by quadrature.

    The density is a 1-D integral over the generating variable::

        p(x) = Σ_b w_b ∫ q_b(t) k(σ_b x - c_b(t)) dt
             ≈ Σ_j exp(log w_b + log ω_j + log q_b(t_j) + log k(σ_b x - c_b(t_j)))

    (σ_b = ±1 a reflection, k(y) = k₁(y₁) k₁(y₂) a separable noise density). Nodes t_j and
    weights ω_j are composite Gauss–Legendre: each curve is cut into panels of equal arc
    length ``panel_frac``·s (s the noise std, so the integrand is a low-degree polynomial on
    each panel) with ``order`` nodes each; all in float64, as a logsumexp. With the defaults
    (panels of one s and 10 nodes; 1.5 s and 12 nodes for 2spirals, 600-2500 nodes in all)
    the relative error of p, against 16-node panels of s/10, is < 1e-13 at sample points
    and < 1e-6 anywhere in the box (the integrand sharpens far from the curve).

    The isotropic Gaussian kernel uses all nodes at once (|x - σ_b c_j|² is one matrix
    product). Other kernels only use, per point, the panels whose log-contribution bound
    is within ``_prune`` = 30 nats of the best one (rigorous bounds from the panel's
    radius; the result is identical to using all nodes). The analytic score is the
    quadrature-posterior average of the node scores, the exact gradient of ``log_prob``::

        ∇ log p(x) = Σ_j π_j(x) σ_{b(j)} ∇_y log k(y_j),  π_j ∝ ω_j q(t_j) k(y_j).

    Subclasses give the branches through :meth:`_branches` and, for a non-Gaussian noise,
    the 1-D kernel through :meth:`_log_kernel_1d`.
    """

    noise_std: float = 0.1
    panel_frac: float = 1.0  # panel arc length / noise_std
    order: int = 10  # Gauss–Legendre nodes per panel
    _prune: float = 30.0
    _chunk: int = 8192
    _gaussian_kernel: bool = True  # isotropic N(0, s² I) noise: matrix-product path
    #: centre of the kernel's mass relative to 0 and its extra radius (for pruning only)
    _kernel_offset: tuple[float, float] = (0.0, 0.0)
    _kernel_radius: float = 0.0

    # -- to be provided ---------------------------------------------------------------
    def _branches(self) -> list[Branch]:
        """List of (log w_b, σ_b, curve c_b: t (m,) → (m, 2), log q_b: t (m,) → (m,), t₀, t₁)."""
        raise NotImplementedError

    def _log_kernel_1d(self, y: torch.Tensor, want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log k₁(y) and d/dy log k₁(y), elementwise. Default N(0, s²)."""
        s2 = self.noise_std**2
        lk = -y.square() / (2 * s2) - 0.5 * math.log(2 * math.pi * s2)
        return lk, (-y / s2 if want_grad else None)

    # -- quadrature -------------------------------------------------------------------
    def _build(self) -> None:
        t_gl, w_gl = np.polynomial.legendre.leggauss(self.order)
        centres, logw, signs, mids, radii = [], [], [], [], []
        off = np.asarray(self._kernel_offset)
        for log_wb, sign, curve, log_q, t0, t1 in self._branches():
            fine = np.linspace(t0, t1, 20001)
            seg = np.linalg.norm(np.diff(curve(fine), axis=0), axis=1)
            arc = np.concatenate([[0.0], np.cumsum(seg)])
            n_pan = max(1, math.ceil(arc[-1] / (self.panel_frac * self.noise_std)))
            edges = np.interp(np.linspace(0.0, arc[-1], n_pan + 1), arc, fine)
            half = np.diff(edges) / 2.0
            mid = (edges[:-1] + edges[1:]) / 2.0
            t = mid[:, None] + half[:, None] * t_gl[None]  # (P, q)
            c = curve(t.reshape(-1)).reshape(n_pan, self.order, 2)
            lq = log_q(t.reshape(-1)).reshape(t.shape)
            lw = log_wb + np.log(half[:, None] * w_gl[None]) + lq
            # pruning geometry in x-space: the kernel mass of node j sits near σ_b (c_j + off)
            cm = curve(mid) + off
            rad = np.linalg.norm(c + off - cm[:, None], axis=2).max(1) + self._kernel_radius
            centres.append(c)
            logw.append(lw)
            signs.append(np.full(n_pan, sign))
            mids.append(sign * cm)
            radii.append(rad)
        self._c = torch.from_numpy(np.concatenate(centres))  # (P, q, 2)
        self._lw = torch.from_numpy(np.concatenate(logw))  # (P, q)
        self._sign = torch.from_numpy(np.concatenate(signs))  # (P,)
        self._mid = torch.from_numpy(np.concatenate(mids))  # (P, 2)
        self._rad = torch.from_numpy(np.concatenate(radii))  # (P,)
        self._lw_max = self._lw.max(1).values  # (P,)
        self._cx = (self._sign[:, None, None] * self._c).reshape(-1, 2)  # (N, 2), x-space

    def _ensure(self) -> None:
        if not hasattr(self, "_c"):
            self._build()

    @property
    def n_nodes(self) -> int:
        """Total number of quadrature nodes (all branches)."""
        self._ensure()
        return int(self._lw.numel())

    def _eval(
        self, xs: torch.Tensor, want_score: bool, prune: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log p ``(B,)`` and optionally the score ``(B, 2)`` for one chunk ``xs`` (B, 2)."""
        if self._gaussian_kernel:
            return self._eval_gaussian(xs, want_score)
        s2 = self.noise_std**2
        B = xs.shape[0]
        with torch.no_grad():
            if prune:
                dist = torch.cdist(xs.detach(), self._mid)  # (B, P)
                low = (dist - self._rad).clamp(min=0.0)
                up = dist + self._rad
                # bounds on each panel's best log-contribution (Gaussian part of k)
                best = (self._lw_max - up.square() / (2 * s2)).max(1, keepdim=True).values
                keep = (self._lw_max - low.square() / (2 * s2)) >= best - self._prune
            else:
                keep = torch.ones(B, self._mid.shape[0], dtype=torch.bool)
            pt, pan = keep.nonzero(as_tuple=True)  # the (point, panel) pairs, (M,)
        c = self._c[pan]  # (M, q, 2)
        sign = self._sign[pan][:, None]  # (M, 1)
        xp = xs[pt]  # (M, 2)
        l0, g0 = self._log_kernel_1d(sign * xp[:, :1] - c[..., 0], want_score)
        l1, g1 = self._log_kernel_1d(sign * xp[:, 1:] - c[..., 1], want_score)
        L = self._lw[pan] + l0 + l1  # (M, q)
        # logsumexp over the pairs of each point
        mx = torch.full((B,), -math.inf, dtype=_F64).scatter_reduce(
            0, pt, L.detach().max(1).values, reduce="amax", include_self=True
        )
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        e = torch.exp(L - mx[pt, None])
        tot = torch.zeros(B, dtype=_F64).index_add(0, pt, e.sum(1))
        lp = torch.log(tot) + mx
        if not want_score:
            return lp, None
        assert g0 is not None and g1 is not None
        post = e * sign / tot[pt, None]
        grad = torch.stack([(post * g0).sum(1), (post * g1).sum(1)], 1)
        return lp, torch.zeros(B, 2, dtype=_F64).index_add(0, pt, grad)

    def _eval_gaussian(self, xs: torch.Tensor, want_score: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Isotropic Gaussian noise: node j is N(σ_b c_j, s² I) in x-space, and
        |x - σ_b c_j|² = |x|² - 2 x·σ_b c_j + |c_j|² for all (point, node) pairs is one
        matrix product; the score is (Σ_j π_j σ_b c_j - x)/s²."""
        s2 = self.noise_std**2
        cx = self._cx
        d2 = xs.square().sum(1, keepdim=True) - 2.0 * xs @ cx.T + cx.square().sum(1)
        L = self._lw.reshape(-1) - d2.clamp(min=0.0) / (2 * s2) - math.log(2 * math.pi * s2)
        lp = torch.logsumexp(L, 1)
        if not want_score:
            return lp, None
        return lp, (torch.softmax(L, 1) @ cx - xs) / s2

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) by the Gauss–Legendre quadrature above; ``(n, 2)`` → ``(n,)``, dtype of x."""
        self._ensure()
        x64 = x.to(_F64)
        out = [self._eval(xc, False)[0] for xc in x64.split(self._chunk)]
        return torch.cat(out).to(x.dtype) if out else x.new_zeros(0)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Quadrature-posterior average of node scores (exact gradient of ``log_prob``)."""
        self._ensure()
        with torch.no_grad():
            x64 = x.detach().to(_F64)
            out = [self._eval(xc, True)[1] for xc in x64.split(self._chunk)]
            return (torch.cat(out) if out else x64.new_zeros(0, 2)).to(x.dtype)


class Moons(CurveTarget):
    """FFJORD ``moons``: sklearn ``make_moons(noise=0.1)``·2 + (-1, -0.2), continuum form.

    Half the mass on each arc, t ~ U[0, π]: outer c(t) = 2(cos t, sin t) + (-1, -0.2),
    inner c(t) = 2(1 - cos t, 1 - sin t - ½) + (-1, -0.2); x = c(t) + N(0, 0.2² I).
    p(x) = ½ Σ_arcs (1/π) ∫₀^π N(x; c(t), 0.2² I) dt, by quadrature (:class:`CurveTarget`).
    """

    name = "moons"
    box = (-4.5, 4.5)
    noise_std = 0.2
    _entropy_cell = 0.2

    @staticmethod
    def _outer(t: np.ndarray) -> np.ndarray:
        return np.stack([2 * np.cos(t) - 1.0, 2 * np.sin(t) - 0.2], -1)

    @staticmethod
    def _inner(t: np.ndarray) -> np.ndarray:
        return np.stack([2 * (1 - np.cos(t)) - 1.0, 2 * (0.5 - np.sin(t)) - 0.2], -1)

    def _branches(self) -> list[Branch]:
        def lq(t: np.ndarray) -> np.ndarray:
            return np.full(t.shape, -math.log(math.pi))

        half = math.log(0.5)
        return [
            (half, 1.0, self._outer, lq, 0.0, math.pi),
            (half, 1.0, self._inner, lq, 0.0, math.pi),
        ]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        inner = torch.randint(0, 2, (n,), generator=generator).bool()
        t = math.pi * _u(n, generator)
        outer = torch.stack([2 * t.cos() - 1.0, 2 * t.sin() - 0.2], 1)
        inn = torch.stack([2 * (1 - t.cos()) - 1.0, 2 * (0.5 - t.sin()) - 0.2], 1)
        c = torch.where(inner[:, None], inn, outer)
        return (c + self.noise_std * _n(n, generator)).float()


class SwissRoll(CurveTarget):
    """FFJORD ``swissroll``: sklearn ``make_swiss_roll(noise=1.0)[:, [0, 2]] / 5``.

    t = 1.5π(1 + 2U), U ~ U[0, 1); x = (t cos t, t sin t)/5 + N(0, 0.2² I) (the dropped
    height column is independent). p(x) = (1/3π) ∫_{1.5π}^{4.5π} N(x; c(t), 0.2² I) dt by
    quadrature (:class:`CurveTarget`).
    """

    name = "swissroll"
    box = (-4.5, 4.5)
    noise_std = 0.2
    _entropy_cell = 0.2

    @staticmethod
    def _curve(t: np.ndarray) -> np.ndarray:
        return np.stack([t * np.cos(t), t * np.sin(t)], -1) / 5.0

    def _branches(self) -> list[Branch]:
        def lq(t: np.ndarray) -> np.ndarray:
            return np.full(t.shape, -math.log(3 * math.pi))

        return [(0.0, 1.0, self._curve, lq, 1.5 * math.pi, 4.5 * math.pi)]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        t = 1.5 * math.pi * (1 + 2 * _u(n, generator))
        c = torch.stack([t * t.cos(), t * t.sin()], 1) / 5.0
        return (c + self.noise_std * _n(n, generator)).float()


class TwoSpirals(CurveTarget):
    r"""FFJORD ``2spirals``: two interleaved spirals with box and Gaussian noise.

    n = √U·3π (density q(n) = 2n/(3π)² on [0, 3π]); d = (-n cos n + ½U₁, n sin n + ½U₂);
    x = ±d/3 + N(0, 0.1² I), sign ± with probability ½. With c(n) = (-n cos n, n sin n)/3
    and b = 1/6, the noise ±(U₁, U₂)/6 + N(0, s²I) has density
    k(y) = Π_i (1/b)[Φ(y_i/s) - Φ((y_i - b)/s)] at y = ±x - c(n), so::

        p(x) = ½ Σ_± ∫₀^{3π} q(n) k(±x - c(n)) dn,

    by quadrature (:class:`CurveTarget`), with the erf-difference evaluated without
    cancellation or underflow (see :meth:`_log_kernel_1d`).
    """

    name = "2spirals"
    box = (-4.0, 4.0)
    noise_std = 0.1
    _box_width = 1.0 / 6.0
    panel_frac = 1.5
    order = 12
    _entropy_cell = 0.2
    _gaussian_kernel = False
    _kernel_offset = (1.0 / 12.0, 1.0 / 12.0)
    _kernel_radius = math.sqrt(2.0) / 12.0

    @staticmethod
    def _curve(t: np.ndarray) -> np.ndarray:
        return np.stack([-t * np.cos(t), t * np.sin(t)], -1) / 3.0

    def _branches(self) -> list[Branch]:
        top = 3 * math.pi

        def lq(t: np.ndarray) -> np.ndarray:
            return np.log(2 * t / top**2)

        half = math.log(0.5)
        return [(half, 1.0, self._curve, lq, 0.0, top), (half, -1.0, self._curve, lq, 0.0, top)]

    def _log_kernel_1d(self, y: torch.Tensor, want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """k₁(y) = (1/b)[Φ(y/s) - Φ((y-b)/s)]: U[0, b] convolved with N(0, s²).

        k₁ is symmetric about b/2, so with w = min(y, b - y) ≤ b/2 the difference is
        ½[erfc(-w/(s√2)) - erfc((b-w)/(s√2))] ≥ ¾ Φ(w/s): no cancellation. Where erfc
        underflows (|w| ≳ 3.7, a node's contribution ≲ e^{-690}) the log is taken from
        log_ndtr instead, so log p stays finite everywhere.
        """
        s, b = self.noise_std, self._box_width
        flip = y > b / 2
        w = torch.where(flip, b - y, y)
        r2 = 1.0 / (s * math.sqrt(2.0))
        diff = torch.special.erfc(-w * r2) - torch.special.erfc((b - w) * r2)  # 2·ΔΦ
        lk = torch.log(diff) - math.log(2.0 * b)
        tiny = diff < 1e-280
        if bool(tiny.any()):
            wt = w[tiny]
            hi = torch.special.log_ndtr(wt / s)
            lo = torch.special.log_ndtr((wt - b) / s)
            lk = lk.masked_scatter(tiny, hi + torch.log1p(-torch.exp(lo - hi)) - math.log(b))
        if not want_grad:
            return lk, None
        # d/dw log ΔΦ = [φ(w/s) - φ((w-b)/s)] / (s ΔΦ), with ΔΦ = exp(lk)·b
        lphi_hi = -0.5 * (w / s) ** 2 - 0.5 * _LOG_2PI - math.log(s * b)
        lphi_lo = -0.5 * ((w - b) / s) ** 2 - 0.5 * _LOG_2PI - math.log(s * b)
        g = torch.exp(lphi_hi - lk) - torch.exp(lphi_lo - lk)
        return lk, torch.where(flip, -g, g)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        t = _u(n, generator).sqrt() * 3 * math.pi
        u = _u(2 * n, generator).reshape(2, n)
        d = torch.stack([-t * t.cos() + 0.5 * u[0], t * t.sin() + 0.5 * u[1]], 1)
        sign = 1.0 - 2.0 * torch.randint(0, 2, (n,), generator=generator).to(_F64)
        return (sign[:, None] * d / 3.0 + self.noise_std * _n(n, generator)).float()


# ------------------------------------------------------------------------------------
# Pinwheel: change of variables summed over all preimages
# ------------------------------------------------------------------------------------


def _bracketed_newton(
    fun: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    a: torch.Tensor,
    b: torch.Tensor,
    tol: float,
    max_iter: int = 100,
) -> torch.Tensor:
    """Roots of monotone functions, one per bracket [a_i, b_i] with a sign change, shape (R,).

    ``fun(x, idx)`` returns (f_idx(x), f'_idx(x)) for the entries ``idx``. Newton steps
    that leave the current bracket are replaced by bisection; only unconverged entries
    (|f| ≥ tol and bracket wider than 1e-15) are iterated. ``a`` and ``b`` are overwritten.
    """
    x = 0.5 * (a + b)
    fa = fun(a, torch.arange(a.shape[0]))[0]
    act = torch.arange(a.shape[0])
    for _ in range(max_iter):
        if act.numel() == 0:
            break
        xa = x[act]
        f, df = fun(xa, act)
        same = (f > 0) == (fa[act] > 0)
        lo = torch.where(same, xa, a[act])
        hi = torch.where(same, b[act], xa)
        step = xa - f / df
        step = torch.where((step >= lo) & (step <= hi), step, 0.5 * (lo + hi))
        done = (f.abs() < tol) | (hi - lo < 1e-15)
        a[act], b[act] = lo, hi
        fa[act] = torch.where(same, f, fa[act])
        x[act] = torch.where(done, xa, step)
        act = act[~done]
    return x


class Pinwheel(_Toy2D):
    r"""FFJORD ``pinwheel``: 5 arms of a Gaussian bent by an exponential rotation.

    Sampling: k ~ U{0..4}, f = (f₀, f₁), f₀ ~ N(1, 0.3²), f₁ ~ N(0, 0.1²),
    a = 2πk/5 + 0.25 e^{f₀}, x = 2 R(a)ᵀ f = 2 (f₀ cos a + f₁ sin a, -f₀ sin a + f₁ cos a).

    Density (change of variables, summed over every preimage). Write y = x/2. The map
    f ↦ y = f₀ u(a) + f₁ v(a), u = (cos a, -sin a), v = (sin a, cos a), has Jacobian
    columns ∂y/∂f₀ = (1 + a'f₁) u - a'f₀ v, ∂y/∂f₁ = v, so |det| = |1 + a'(f₀) f₁| with
    a'(f₀) = 0.25 e^{f₀}; x = 2y adds a factor 1/4::

        p(x) = (1/5) Σ_k Σ_{f: y = R(a_k(f₀))ᵀ f} N(f₀; 1, .3²) N(f₁; 0, .1²) / (4 |1 + a' f₁|).

    Root finding: the rotation keeps |f| = |y| = r, so every preimage is
    f = r(cos β, sin β) with β - 2πk/5 - 0.25 e^{r cos β} ≡ θ (mod 2π), θ = arg y. Over all
    five arms at once this is G(β) = (5/2π)(β - θ - 0.25 e^{r cos β}) ∈ ℤ (the arm is that
    integer mod 5), and G(β + 2π) = G(β) + 5, so there are at least 5 preimages. Every
    integer crossed by G between consecutive breakpoints is one root. The breakpoints are
    a grid of ``n_grid`` angles on [-π, π] plus the (at most two) folds where
    G' = (5/2π)(1 + a'f₁) vanishes (see :meth:`_breakpoints`), so G is monotone between
    neighbours and no root is missed, even next to the caustics 1 + a'f₁ = 0 where p has
    an integrable singularity. Each root is refined by Newton's method safeguarded by its
    bracket and finished with one differentiable Newton step from the detached root
    (implicit-function trick), so ``log_prob`` has exact autograd gradients; the score is
    that gradient. Agrees to 1e-12 in log p with a brute-force sign-change search over a
    4·10⁵-point f₀ grid on [-4, 4.5] per arm (sample points and uniform points of the box).
    """

    name = "pinwheel"
    box = (-5.0, 5.0)
    radial_std = 0.3
    tangential_std = 0.1
    rate = 0.25
    n_arms = 5
    n_grid = 64
    _chunk = 65536
    _entropy_cell = 0.2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.randint(0, self.n_arms, (n,), generator=generator).to(_F64)
        f = _n(n, generator) * torch.tensor([self.radial_std, self.tangential_std], dtype=_F64)
        f0 = f[:, 0] + 1.0
        f1 = f[:, 1]
        a = 2 * math.pi * k / self.n_arms + self.rate * f0.exp()
        x = torch.stack([f0 * a.cos() + f1 * a.sin(), -f0 * a.sin() + f1 * a.cos()], 1)
        return (2.0 * x).float()

    def _G(self, beta: torch.Tensor, r: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self.n_arms / (2 * math.pi) * (beta - theta - self.rate * torch.exp(r * beta.cos()))

    def _G_beta(self, beta: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return self.n_arms / (2 * math.pi) * (1 + self.rate * torch.exp(r * beta.cos()) * r * beta.sin())

    def _breakpoints(self, r: torch.Tensor) -> torch.Tensor:
        """Sorted angles ``(B, n_grid + 3)`` on [-π, π] between which G is monotone.

        G' ∝ φ(β) = 1 + c r sin β e^{r cos β} (c = rate). sin β e^{r cos β} has one minimum
        on (-π, 0), at cos β* = 2r / (1 + √(1 + 4r²)); if φ(β*) < 0, φ vanishes at exactly
        two folds β₁ < β* < β₂ (φ is monotone on [-π, β*] and on [β*, 0]) and G is
        monotone on [-π, β₁], [β₁, β₂], [β₂, π]. The folds are added to a uniform grid of
        ``n_grid`` intervals.
        """
        B = r.shape[0]
        c = self.rate
        cos_star = 2 * r / (1 + torch.sqrt(1 + 4 * r.square()))
        b_star = -torch.acos(cos_star)
        folds = torch.stack([b_star, b_star], 1)  # (B, 2), harmless duplicates if no fold
        has = 1 + c * r * b_star.sin() * torch.exp(r * cos_star) < 0
        if bool(has.any()):
            rf, bs = r[has], b_star[has]

            def phi(beta: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                rr = rf[idx]
                e = c * rr * torch.exp(rr * beta.cos())
                return 1 + e * beta.sin(), e * (beta.cos() - rr * beta.sin().square())

            left = _bracketed_newton(phi, torch.full_like(bs, -math.pi), bs.clone(), 1e-13)
            right = _bracketed_newton(phi, bs.clone(), torch.zeros_like(bs), 1e-13)
            folds[has] = torch.stack([left, right], 1)
        grid = torch.linspace(-math.pi, math.pi, self.n_grid + 1, dtype=_F64).expand(B, -1)
        return torch.cat([grid, folds], 1).sort(1).values

    def _log_prob_chunk(self, x: torch.Tensor) -> torch.Tensor:
        y = x / 2.0
        r = y.square().sum(1).sqrt()
        theta = torch.atan2(y[:, 1], y[:, 0])
        B = x.shape[0]
        with torch.no_grad():
            rd, thd = r.detach(), theta.detach()
            grid = self._breakpoints(rd)  # (B, M+3), G monotone between neighbours
            F = torch.floor(self._G(grid, rd[:, None], thd[:, None]))  # (B, M+3)
            lo_f = torch.minimum(F[:, :-1], F[:, 1:])
            cnt = (F[:, 1:] - F[:, :-1]).abs().long()  # integers crossed per interval
            pt, iv = cnt.nonzero(as_tuple=True)
            reps = cnt[pt, iv]
            pt = pt.repeat_interleave(reps)
            iv = iv.repeat_interleave(reps)
            start = torch.cumsum(reps, 0) - reps
            offs = torch.arange(int(reps.sum())) - start.repeat_interleave(reps)
            m = lo_f[pt, iv] + 1.0 + offs.to(_F64)  # the integer each root solves G = m for
            rr, tt = rd[pt], thd[pt]

            def g_m(beta: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return self._G(beta, rr[idx], tt[idx]) - m[idx], self._G_beta(beta, rr[idx])

            beta0 = _bracketed_newton(g_m, grid[pt, iv], grid[pt, iv + 1], 1e-11)
        # one differentiable Newton step: exact first derivatives via the implicit function
        rp, tp = r[pt], theta[pt]
        beta = beta0 - (self._G(beta0, rp, tp) - m) / self._G_beta(beta0, rp)
        f0 = rp * beta.cos()
        f1 = rp * beta.sin()
        jac = 1.0 + self.rate * f0.exp() * f1
        sr, st = self.radial_std, self.tangential_std
        lr = (
            -0.5 * ((f0 - 1.0) / sr) ** 2
            - 0.5 * (f1 / st) ** 2
            - _LOG_2PI
            - math.log(sr * st)
            - torch.log(jac.abs())
            - math.log(4.0 * self.n_arms)
        )
        # logsumexp of the roots of each point
        mx = torch.full((B,), -math.inf, dtype=_F64).scatter_reduce(
            0, pt, lr.detach(), reduce="amax", include_self=True
        )
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        tot = torch.zeros(B, dtype=_F64).index_add(0, pt, torch.exp(lr - mx[pt]))
        return torch.log(tot) + mx

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) by the preimage sum above; ``(n, 2)`` → ``(n,)``, dtype of x."""
        x64 = x.to(_F64)
        out = [self._log_prob_chunk(xc) for xc in x64.split(self._chunk)]
        return torch.cat(out).to(x.dtype) if out else x.new_zeros(0)
