"""Probability density by counting on a 2-D grid (tutorial §1).

"As long as you can count, you understand everything about probability density."

Cut the plane into cells of size Δx × Δy and count the n points that fall in each:

    n(x, y) = Count((x, x+Δx) × (y, y+Δy)),   n(x) = Σ_y n(x, y),   n(y) = Σ_x n(x, y).

Every density of the tutorial is then a fraction of a count divided by a width (§1):

    p(x, y) = (n(x, y)/n) / (Δx Δy)                      joint
    p(x)    = (n(x)/n) / Δx  = Σ_y p(x, y) Δy             marginal
    p(y|x)  = (n(x, y)/n(x)) / Δy = p(x, y) / p(x)        conditional
    p(x, y) = p(x) p(y|x)                                 factorization

and every expectation is a count-weighted average over cells,

    E_{p(x,y)}[h] ≈ Σ_cells h(x, y) n(x, y)/n,       E_{p(y|x)}[h] ≈ Σ_y h(y) n(x, y)/n(x).

On a fixed grid these identities hold *exactly* (they are algebra on integers); as n → ∞
each estimate converges to the cell average of the true density, and as Δ → 0 the cell
average converges to the density itself. :class:`Grid2D` holds the cells,
:class:`GridCounts` the counts and every estimate above, :func:`cell_masses` the exact
mass of each cell under a known density, and :func:`kl_grid` the KL divergence between
two gridded distributions (tutorial §2, D_KL(p‖q) = E_p[log p/q], with the integral
replaced by a sum over cells).

Arrays are ``numpy`` float64 and indexed ``[i, j]`` with i along x and j along y.

>>> grid = Grid2D.regular(0.0, 2.0, 2)            # cells of 1 × 1 on [0, 2]²
>>> counts = grid.count(np.array([[0.5, 0.5], [0.5, 1.5], [1.5, 1.5], [1.2, 1.9]]))
>>> counts.n_xy.tolist()
[[1, 1], [0, 2]]
>>> counts.marginal_x().tolist()                   # p(x) = (n(x)/n)/Δx
[0.5, 0.5]
>>> counts.conditional_y_given_x().tolist()        # p(y|x) = (n(x,y)/n(x))/Δy
[[0.5, 0.5], [0.0, 1.0]]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | list | tuple
CellFunction = np.ndarray | Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------
# exact cell masses of a known density
# ---------------------------------------------------------------------------------------
def cell_masses(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    x_edges: np.ndarray,
    y_edges: np.ndarray,
    order: int = 6,
    chunk: int = 200_000,
    refine: int = 1,
) -> np.ndarray:
    """Exact probability mass of every grid cell, ∫∫_cell p(x, y) dx dy.

    Each cell [x_i, x_{i+1}] × [y_j, y_{j+1}] is integrated with an ``order`` × ``order``
    tensor Gauss–Legendre rule applied to exp(log_prob). Returns an array of shape
    ``(len(x_edges) - 1, len(y_edges) - 1)`` indexed ``[i, j]`` (x first).

    ``refine`` > 1 first splits every cell into ``refine`` × ``refine`` equal sub-cells and
    sums their masses; use it when the density varies on a scale much smaller than a cell
    (a rule of thumb: sub-cells no wider than about two standard deviations of the
    narrowest feature). ``log_prob`` receives float64 points of shape ``(m, 2)``.
    """
    x_edges = np.asarray(x_edges, dtype=np.float64)
    y_edges = np.asarray(y_edges, dtype=np.float64)
    if refine > 1:
        fx, fy = _refine_edges(x_edges, refine), _refine_edges(y_edges, refine)
        fine = cell_masses(log_prob, fx, fy, order=order, chunk=chunk)
        bx, by = x_edges.size - 1, y_edges.size - 1
        return fine.reshape(bx, refine, by, refine).sum(axis=(1, 3))
    nodes, weights = np.polynomial.legendre.leggauss(order)  # on [-1, 1]

    def panel_points(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        half = np.diff(edges) / 2.0
        mid = (edges[:-1] + edges[1:]) / 2.0
        pts = mid[:, None] + half[:, None] * nodes[None, :]  # (cells, order)
        wts = half[:, None] * weights[None, :]
        return pts, wts

    px, wx = panel_points(x_edges)
    py, wy = panel_points(y_edges)
    X = np.repeat(px.reshape(-1), py.size)
    Y = np.tile(py.reshape(-1), px.size)
    pts = torch.from_numpy(np.stack([X, Y], axis=1))
    dens = np.empty(pts.shape[0])
    with torch.no_grad():
        for s in range(0, pts.shape[0], chunk):
            dens[s : s + chunk] = torch.exp(log_prob(pts[s : s + chunk]).double()).numpy()
    dens = dens.reshape(px.shape[0], order, py.shape[0], order)
    return np.einsum("iajb,ia,jb->ij", dens, wx, wy)


def _refine_edges(edges: np.ndarray, refine: int) -> np.ndarray:
    """Split every interval of ``edges`` into ``refine`` equal parts."""
    t = np.arange(refine) / refine
    inner = edges[:-1, None] + np.diff(edges)[:, None] * t[None, :]
    return np.append(inner.reshape(-1), edges[-1])


def _normal_interval(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Φ(b) − Φ(a) for a ≤ b, computed on the tail that keeps full relative precision."""
    a_t, b_t = torch.from_numpy(a), torch.from_numpy(b)
    upper = torch.special.ndtr(-a_t) - torch.special.ndtr(-b_t)  # accurate for a > 0
    lower = torch.special.ndtr(b_t) - torch.special.ndtr(a_t)  # accurate for b < 0
    return torch.where(a_t > 0, upper, lower).numpy()


def gaussian_mixture_cell_masses(
    means: ArrayLike,
    stds: ArrayLike | float,
    weights: ArrayLike | None,
    x_edges: np.ndarray,
    y_edges: np.ndarray,
) -> np.ndarray:
    """Closed-form cell masses of a 2-D mixture of axis-aligned Gaussians.

    For p = Σ_k w_k N(μ_k, diag(σ_kx², σ_ky²)) the mass of cell [x_i, x_{i+1}] × [y_j, y_{j+1}] is

        P_ij = Σ_k w_k [Φ((x_{i+1}−μ_kx)/σ_kx) − Φ((x_i−μ_kx)/σ_kx)]
                     · [Φ((y_{j+1}−μ_ky)/σ_ky) − Φ((y_j−μ_ky)/σ_ky)],

    exact to float64 rounding whatever the ratio of cell size to σ (quadrature fails when a
    mode is much narrower than a cell). ``means`` (K, 2); ``stds`` a scalar, (K,) or (K, 2);
    ``weights`` (K,) summing to 1, or None for equal weights. Returns (bx, by).
    """
    mu = np.asarray(torch.as_tensor(means).detach().cpu().double(), dtype=np.float64)
    K = mu.shape[0]
    if mu.ndim != 2 or mu.shape[1] != 2:
        raise ValueError(f"means must have shape (K, 2), got {mu.shape}")
    sd = np.asarray(torch.as_tensor(stds).detach().cpu().double(), dtype=np.float64)
    sd = np.broadcast_to(sd[:, None] if sd.ndim == 1 else sd, (K, 2))
    w = (
        np.full(K, 1.0 / K)
        if weights is None
        else np.asarray(torch.as_tensor(weights).detach().cpu().double(), dtype=np.float64)
    )
    x_edges = np.asarray(x_edges, dtype=np.float64)
    y_edges = np.asarray(y_edges, dtype=np.float64)

    def axis_masses(edges: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
        z = (edges[None, :] - m[:, None]) / s[:, None]  # (K, cells + 1)
        return _normal_interval(z[:, :-1], z[:, 1:])  # (K, cells)

    mx = axis_masses(x_edges, mu[:, 0], sd[:, 0])
    my = axis_masses(y_edges, mu[:, 1], sd[:, 1])
    return np.einsum("k,ki,kj->ij", w, mx, my)


# ---------------------------------------------------------------------------------------
# the grid and its counts
# ---------------------------------------------------------------------------------------
def _as_points(points: ArrayLike) -> np.ndarray:
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().double().numpy()
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {pts.shape}")
    return pts


def _pair(v: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(v, tuple | list):
        a, b = v
        return float(a), float(b)
    return float(v), float(v)


@dataclass(frozen=True, eq=False)
class Grid2D:
    """Rectangular cells [x_i, x_{i+1}) × [y_j, y_{j+1}), i < bx, j < by (tutorial §1).

    ``x_edges`` (bx + 1,) and ``y_edges`` (by + 1,) are strictly increasing; the widths
    Δx_i, Δy_j may vary. Cells are half-open except the last one along each axis, which
    also holds its right edge (the convention of ``numpy.histogram2d``); a point outside
    [x_0, x_bx] × [y_0, y_by] belongs to no cell.
    """

    x_edges: np.ndarray
    y_edges: np.ndarray

    def __post_init__(self) -> None:
        for name in ("x_edges", "y_edges"):
            e = np.asarray(getattr(self, name), dtype=np.float64)
            if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0):
                raise ValueError(f"{name} must be a strictly increasing 1-D array of >= 2 edges")
            object.__setattr__(self, name, e)

    @classmethod
    def regular(
        cls,
        lo: float | tuple[float, float],
        hi: float | tuple[float, float],
        bins: int | tuple[int, int],
    ) -> Grid2D:
        """Equal cells on [lo_x, hi_x] × [lo_y, hi_y]; a scalar applies to both axes.

        ``Grid2D.regular(*target.box, 50)`` is the 50 × 50 grid over a target's box.
        """
        (lx, ly), (hx, hy) = _pair(lo), _pair(hi)
        bx, by = (bins, bins) if isinstance(bins, int) else bins
        return cls(np.linspace(lx, hx, bx + 1), np.linspace(ly, hy, by + 1))

    # -- geometry -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(bx, by), the number of cells along x and along y."""
        return self.x_edges.size - 1, self.y_edges.size - 1

    @property
    def dx(self) -> np.ndarray:
        """Cell widths Δx_i, shape (bx,)."""
        return np.diff(self.x_edges)

    @property
    def dy(self) -> np.ndarray:
        """Cell heights Δy_j, shape (by,)."""
        return np.diff(self.y_edges)

    @property
    def area(self) -> np.ndarray:
        """Cell areas Δx_i Δy_j, shape (bx, by)."""
        return self.dx[:, None] * self.dy[None, :]

    @property
    def x_centers(self) -> np.ndarray:
        """Cell midpoints along x, shape (bx,)."""
        return (self.x_edges[:-1] + self.x_edges[1:]) / 2.0

    @property
    def y_centers(self) -> np.ndarray:
        """Cell midpoints along y, shape (by,)."""
        return (self.y_edges[:-1] + self.y_edges[1:]) / 2.0

    # -- counting -----------------------------------------------------------------------
    def locate(self, points: ArrayLike) -> np.ndarray:
        """Flat cell index i·by + j of each point, shape (n,); −1 for points off the grid."""
        pts = _as_points(points)
        bx, by = self.shape
        ix = np.searchsorted(self.x_edges, pts[:, 0], side="right") - 1
        iy = np.searchsorted(self.y_edges, pts[:, 1], side="right") - 1
        ix[pts[:, 0] == self.x_edges[-1]] = bx - 1  # the last cell is closed on the right
        iy[pts[:, 1] == self.y_edges[-1]] = by - 1
        inside = (ix >= 0) & (ix < bx) & (iy >= 0) & (iy < by)
        return np.where(inside, ix * by + iy, -1)

    def count(self, points: ArrayLike) -> GridCounts:
        """Count the points, shape (n, 2), in every cell: n(x, y) of tutorial §1."""
        idx = self.locate(points)
        return GridCounts(self, self.counts_from_index(idx), int(idx.size))

    def counts_from_index(self, idx: np.ndarray) -> np.ndarray:
        """n(x, y), shape (bx, by), from flat indices of :meth:`locate` (−1 is dropped)."""
        bx, by = self.shape
        return np.bincount(idx[idx >= 0], minlength=bx * by).reshape(bx, by)

    def masses(
        self, log_prob: Callable[[torch.Tensor], torch.Tensor], order: int = 6, refine: int = 1
    ) -> np.ndarray:
        """Exact cell masses ∫∫_cell p under ``log_prob`` (see :func:`cell_masses`), (bx, by)."""
        return cell_masses(log_prob, self.x_edges, self.y_edges, order=order, refine=refine)

    def cell_values(self, h: CellFunction) -> np.ndarray:
        """h on the cells, shape (bx, by): an array as is, or a callable h(X, Y) at centres."""
        if callable(h):
            X, Y = np.meshgrid(self.x_centers, self.y_centers, indexing="ij")
            return np.asarray(h(X, Y), dtype=np.float64) * np.ones(self.shape)
        return np.broadcast_to(np.asarray(h, dtype=np.float64), self.shape)


@dataclass(frozen=True, eq=False)
class GridCounts:
    """Counts n(x, y) of n points on a :class:`Grid2D` and the densities of tutorial §1.

    ``n`` is the number of points counted, including the ``n_outside`` that fell off the
    grid, so Σ_cells p(x, y) ΔxΔy = 1 − n_outside/n (= 1 when every point is inside).
    Strips with no points (n(x) = 0) have no conditional p(y|x) = 0/0: it is NaN there,
    and so is E_{p(y|x)}[h]; nothing else is ever NaN.
    """

    grid: Grid2D
    counts: np.ndarray
    n: int

    @property
    def n_xy(self) -> np.ndarray:
        """n(x, y), integer counts per cell, shape (bx, by)."""
        return self.counts

    @property
    def n_x(self) -> np.ndarray:
        """n(x) = Σ_y n(x, y), points in each vertical strip, shape (bx,)."""
        return self.counts.sum(axis=1)

    @property
    def n_y(self) -> np.ndarray:
        """n(y) = Σ_x n(x, y), points in each horizontal strip, shape (by,)."""
        return self.counts.sum(axis=0)

    @property
    def n_outside(self) -> int:
        """Points that fell off the grid."""
        return self.n - int(self.counts.sum())

    def masses(self) -> np.ndarray:
        """Cell probabilities n(x, y)/n, shape (bx, by)."""
        return self.counts / self.n

    def joint(self) -> np.ndarray:
        """p(x, y) = (n(x, y)/n) / (Δx Δy), shape (bx, by)."""
        return self.counts / self.n / self.grid.area

    def marginal_x(self) -> np.ndarray:
        """p(x) = (n(x)/n) / Δx = Σ_y p(x, y) Δy, shape (bx,)."""
        return self.n_x / self.n / self.grid.dx

    def marginal_y(self) -> np.ndarray:
        """p(y) = (n(y)/n) / Δy = Σ_x p(x, y) Δx, shape (by,)."""
        return self.n_y / self.n / self.grid.dy

    def conditional_y_given_x(self) -> np.ndarray:
        """p(y|x) = (n(x, y)/n(x)) / Δy = p(x, y)/p(x), shape (bx, by); NaN rows where n(x)=0.

        Each non-empty row i integrates to one: Σ_j p(y_j|x_i) Δy_j = 1.
        """
        n_x = self.n_x[:, None].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cond = self.counts / n_x / self.grid.dy[None, :]
        return np.where(n_x > 0, cond, np.nan)

    def conditional_x_given_y(self) -> np.ndarray:
        """p(x|y) = (n(x, y)/n(y)) / Δx, shape (bx, by); NaN columns where n(y)=0."""
        n_y = self.n_y[None, :].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cond = self.counts / n_y / self.grid.dx[:, None]
        return np.where(n_y > 0, cond, np.nan)

    def expectation(self, h: CellFunction) -> float:
        """E_{p(x,y)}[h] ≈ Σ_cells h(x, y) n(x, y)/n (tutorial §1).

        ``h`` is an array (bx, by) of cell values or a callable h(X, Y) evaluated at the cell
        centres. For h constant on every cell and all points inside the grid this equals
        the plain sample mean (1/n) Σ_i h(x_i, y_i) exactly.
        """
        return float((self.grid.cell_values(h) * self.counts).sum() / self.n)

    def conditional_expectation(self, h: CellFunction) -> np.ndarray:
        """E_{p(y|x)}[h] ≈ Σ_y h(x, y) n(x, y)/n(x) for every strip, shape (bx,).

        ``h`` as in :meth:`expectation` (an array (by,) broadcasts as h(y)); NaN where n(x)=0.
        """
        hv = self.grid.cell_values(h)
        n_x = self.n_x.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (hv * self.counts).sum(axis=1) / n_x
        return np.where(n_x > 0, out, np.nan)


# ---------------------------------------------------------------------------------------
# KL between gridded distributions
# ---------------------------------------------------------------------------------------
def kl_grid(p_masses: ArrayLike, q_masses: ArrayLike, normalize: bool = True) -> float:
    """D_KL(P‖Q) = Σ_c P_c log(P_c / Q_c) between two distributions on the same cells.

    The tutorial's D_KL(p‖q) = E_p[log p/q] (§2) with the integral replaced by a sum over
    cells; by the data-processing inequality it is at most the KL of the continuous
    densities. ``p_masses`` and ``q_masses`` are non-negative arrays of the same shape
    (cell probabilities or counts). With ``normalize`` each is divided by its sum first, so
    the result is the KL between the two distributions conditioned on the cells given
    (append an explicit "outside" cell to account for mass off the grid).

    Zero cells: P_c = 0 contributes 0 (0·log 0 = 0, whatever Q_c); P_c > 0 with Q_c = 0
    makes the KL +inf. Smooth an empirical Q first (:func:`smoothed_masses`) to avoid that.
    """
    p = np.asarray(p_masses, dtype=np.float64)
    q = np.asarray(q_masses, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {q.shape}")
    if (p < 0).any() or (q < 0).any():
        raise ValueError("masses must be non-negative")
    if normalize:
        p, q = p / p.sum(), q / q.sum()
    support = p > 0
    ps, qs = p[support], q[support]
    if (qs == 0).any():
        return math.inf
    return float(np.sum(ps * (np.log(ps) - np.log(qs))))


def smoothed_masses(counts: ArrayLike, alpha: float = 0.5) -> np.ndarray:
    """Add-α cell probabilities Q̂_c = (n_c + α) / (n + α C) over C cells, same shape.

    α = ½ is the Krichevsky–Trofimov (Jeffreys-prior) estimate; it keeps every Q̂_c > 0 so
    :func:`kl_grid` against it is finite, at the price of a small bias towards uniform.
    """
    c = np.asarray(counts, dtype=np.float64)
    return (c + alpha) / (c.sum() + alpha * c.size)


def kl_grid_null_mean(p_masses: ArrayLike, n: int, alpha: float = 0.5) -> float:
    """E[D_KL(P ‖ Q̂)] when Q̂ is the add-α histogram of n exact samples from P.

    The floor of the counting estimate: a perfect model still scores this much. With
    n_c ~ Binomial(n, P_c) marginally (exactly, under the multinomial) and linearity of
    expectation,

        E[KL] = Σ_c P_c log P_c − Σ_c P_c E[log(n_c + α)] + log(n + α C),

    computed exactly by summing the binomial pmf over ±12 standard deviations. For cells
    with n P_c ≫ 1 each term is ≈ (1 − P_c)/(2n), so E[KL] ≈ (C_eff − 1)/(2n).
    ``p_masses`` must sum to one (include an "outside" cell if needed).
    """
    p = np.asarray(p_masses, dtype=np.float64).reshape(-1)
    C = p.size
    p = p[p > 0]
    mean = n * p
    sd = np.sqrt(n * p * (1 - p))
    k_lo = np.maximum(0, np.floor(mean - 12 * sd - 10)).astype(np.int64)
    k_hi = np.minimum(n, np.ceil(mean + 12 * sd + 10)).astype(np.int64)
    expected_log = np.empty(p.size)
    width = int((k_hi - k_lo).max()) + 1
    step = max(1, 2_000_000 // width)  # rows per block, to bound memory
    for s in range(0, p.size, step):
        lo, hi, pp = k_lo[s : s + step], k_hi[s : s + step], p[s : s + step]
        k = torch.from_numpy(lo[:, None] + np.arange(width)[None, :]).double()
        valid = k <= torch.from_numpy(hi)[:, None]
        k = torch.where(valid, k, torch.zeros_like(k))
        lp = torch.from_numpy(np.log(pp))[:, None]
        lq = torch.from_numpy(np.log1p(-pp))[:, None]
        log_pmf = (math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1) + k * lp) + torch.where(
            k < n, (n - k) * lq, torch.zeros_like(k)
        )
        pmf = torch.where(valid, torch.exp(log_pmf), torch.zeros_like(k))
        pmf = pmf / pmf.sum(dim=1, keepdim=True)
        expected_log[s : s + step] = (pmf * torch.log(k + alpha)).sum(dim=1).numpy()
    return float(np.sum(p * np.log(p)) - np.sum(p * expected_log) + math.log(n + alpha * C))
