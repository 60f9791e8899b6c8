"""``overview.gif``: probability density by counting on a 2-D grid (tutorial §1 and §7.1).

"As long as you can count, you understand everything about probability density."
Four frames: (1) a positively correlated 2-D point cloud; (2) a coarse grid of 3 × 3 lines,
the middle ones labelled x and y; (3) a finer grid of 4 × 4 lines labelled x, Δx, x+Δx and
y, Δy, y+Δy; (4) the vertical strip (x, x+Δx) and the horizontal strip (y, y+Δy) shaded,
with callouts n(y), n(x, y) and n(x). The counts and the densities

    p(x, y) = (n(x, y)/n)/(Δx Δy),   p(x) = (n(x)/n)/Δx,   p(y|x) = (n(x, y)/n(x))/Δy

are computed by :mod:`genmodels.counting` on the very grid that is drawn, printed, and
returned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genmodels.counting import Grid2D
from genmodels.figures.common import (
    LABEL_COLOR,
    LILAC,
    MODEL_COLOR,
    TARGET_COLOR,
    TITLE_COLOR,
    FigureResult,
    new_frame,
    render,
    write_gif,
)

__all__ = ["correlated_points", "density_by_counting"]


def correlated_points(n: int, rho: float, generator: torch.Generator, stretch: float = 1.6) -> np.ndarray:
    """n points of a 2-D Gaussian with unit variances times ``stretch`` and correlation ρ, (n, 2)."""
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    x = z[:, 0]
    y = rho * z[:, 0] + (1.0 - rho**2) ** 0.5 * z[:, 1]
    return (stretch * torch.stack([x, y], 1)).numpy()


def density_by_counting(
    out: str | Path,
    n: int = 80,
    rho: float = 0.8,
    bins: int = 5,
    cell: tuple[int, int] | None = None,
    seed: int = 0,
    points: np.ndarray | None = None,
    printer: Callable[[str], None] | None = print,
) -> FigureResult:
    """Write ``out/overview.gif`` and print the counts and densities of one cell.

    Args:
        out: output folder.
        n: number of points (ignored when ``points`` is given).
        rho: correlation of the Gaussian point cloud (the tutorial's "diagonal clot").
        bins: cells per axis of the fine grid of frames 3–4 (the grid spans the points'
            bounding box, so ``bins − 1`` lines are drawn inside it; 5 gives the tutorial's 4).
        cell: ``(i, j)`` index of the highlighted cell (x first); default the middle one.
        seed: seed of the points.
        points: your own points, shape (n, 2), instead of the Gaussian cloud.
        printer: where the numbers go (``None``: nowhere).

    Returns a :class:`FigureResult` whose ``numbers`` hold ``n`` (all points), ``n_xy``,
    ``n_x``, ``n_y``, ``dx``, ``dy``, ``p_xy``, ``p_x``, ``p_y``, ``p_y_given_x``, the cell
    index and its corner (x, y), plus the whole :class:`~genmodels.counting.GridCounts`
    under ``counts``.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    if points is None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not -1.0 < rho < 1.0:
            raise ValueError(f"rho must be in (-1, 1), got {rho}")
        points = correlated_points(n, rho, torch.Generator().manual_seed(seed))
    points = np.asarray(points, dtype=np.float64)
    lo, hi = points.min(0), points.max(0)
    pad = 0.06 * (hi - lo) + 1e-9
    lo, hi = lo - pad, hi + pad  # every point strictly inside the grid
    grid = Grid2D.regular((lo[0], lo[1]), (hi[0], hi[1]), bins)
    coarse = Grid2D.regular((lo[0], lo[1]), (hi[0], hi[1]), 4)
    i, j = cell if cell is not None else (bins // 2, bins // 2)
    if not (0 <= i < bins and 0 <= j < bins):
        raise ValueError(f"cell must be two indices in [0, {bins}), got {cell}")

    counts = grid.count(points)
    numbers = {
        "n": counts.n,
        "cell": (i, j),
        "x": float(grid.x_edges[i]),
        "y": float(grid.y_edges[j]),
        "dx": float(grid.dx[i]),
        "dy": float(grid.dy[j]),
        "n_xy": int(counts.n_xy[i, j]),
        "n_x": int(counts.n_x[i]),
        "n_y": int(counts.n_y[j]),
        "p_xy": float(counts.joint()[i, j]),
        "p_x": float(counts.marginal_x()[i]),
        "p_y": float(counts.marginal_y()[j]),
        "p_y_given_x": float(counts.conditional_y_given_x()[i, j]),
        "counts": counts,
    }
    if printer is not None:
        printer(
            f"overview: n = {numbers['n']} points, cell {i, j} = "
            f"[{numbers['x']:.3f}, {numbers['x'] + numbers['dx']:.3f}) × "
            f"[{numbers['y']:.3f}, {numbers['y'] + numbers['dy']:.3f}), Δx = {numbers['dx']:.3f}, "
            f"Δy = {numbers['dy']:.3f}"
        )
        printer(f"  n(x, y) = {numbers['n_xy']}   n(x) = {numbers['n_x']}   n(y) = {numbers['n_y']}")
        printer(
            f"  p(x, y) = {numbers['p_xy']:.4f}   p(x) = {numbers['p_x']:.4f}   p(y) = {numbers['p_y']:.4f}"
            f"   p(y|x) = {numbers['p_y_given_x']:.4f}"
        )

    frames = [_frame(points, grid, coarse, (i, j), numbers, k) for k in range(1, 5)]
    path = write_gif(frames, Path(out) / "overview.gif")
    return FigureResult([path], numbers)


def _frame(points, grid: Grid2D, coarse: Grid2D, cell, numbers, k: int):
    """Frame k (1–4) of overview.gif."""
    i, j = cell
    fig = new_frame("probability density")
    ax = fig.add_axes((0.22, 0.13, 0.56, 0.76))
    ax.set_axis_off()
    ax.set_xlim(grid.x_edges[0], grid.x_edges[-1])
    ax.set_ylim(grid.y_edges[0], grid.y_edges[-1])
    xe, ye = grid.x_edges, grid.y_edges
    below = ye[0] - 0.05 * (ye[-1] - ye[0])
    left = xe[0] - 0.03 * (xe[-1] - xe[0])
    text = {"color": LABEL_COLOR, "fontsize": 13, "family": "serif", "clip_on": False}
    if k == 4:
        ax.axvspan(xe[i], xe[i + 1], color=LILAC, alpha=0.55, lw=0)
        ax.axhspan(ye[j], ye[j + 1], color=LILAC, alpha=0.55, lw=0)
    if k == 2:
        for v in coarse.x_edges[1:-1]:
            ax.axvline(v, color=TARGET_COLOR, lw=1.3)
        for v in coarse.y_edges[1:-1]:
            ax.axhline(v, color=TARGET_COLOR, lw=1.3)
        ax.text(coarse.x_edges[2], below, "x", ha="center", va="top", **text)
        ax.text(left, coarse.y_edges[2], "y", ha="right", va="center", **text)
    if k >= 3:
        for v in xe[1:-1]:
            ax.axvline(v, color=TARGET_COLOR, lw=1.1)
        for v in ye[1:-1]:
            ax.axhline(v, color=TARGET_COLOR, lw=1.1)
        ax.text(xe[i], below, "x", ha="right", va="top", **text)
        ax.text((xe[i] + xe[i + 1]) / 2, below, "Δx", ha="center", va="top", **text)
        ax.text(xe[i + 1], below, "x+Δx", ha="left", va="top", **text)
        ax.text(left, ye[j], "y", ha="right", va="top", **text)
        ax.text(left, (ye[j] + ye[j + 1]) / 2, "Δy", ha="right", va="center", **text)
        ax.text(left, ye[j + 1], "y+Δy", ha="right", va="bottom", **text)
    ax.scatter(points[:, 0], points[:, 1], s=14, color=MODEL_COLOR, zorder=3, lw=0)
    if k == 4:
        arrow = {"arrowstyle": "-|>", "color": "#9A9A9A", "lw": 1.0}
        callout = {"fontsize": 12, "family": "serif", "annotation_clip": False}
        w, h = xe[-1] - xe[0], ye[-1] - ye[0]
        cx, cy = (xe[i] + xe[i + 1]) / 2, (ye[j] + ye[j + 1]) / 2
        ax.annotate(
            f"n(y) = {numbers['n_y']}",
            xy=(xe[-1] - 0.04 * w, cy),
            xytext=(xe[-1] + 0.06 * w, cy + 0.25 * h),
            color=LABEL_COLOR,
            arrowprops=arrow,
            **callout,
        )
        ax.annotate(
            f"n(x, y) = {numbers['n_xy']}",
            xy=(cx, cy),
            xytext=(xe[-1] + 0.06 * w, cy - 0.05 * h),
            color=TITLE_COLOR,
            arrowprops=arrow,
            **callout,
        )
        ax.annotate(
            f"n(x) = {numbers['n_x']}",
            xy=(cx, ye[-1] - 0.04 * h),
            xytext=(cx + 0.22 * w, ye[-1] + 0.02 * h),
            color=LABEL_COLOR,
            arrowprops=arrow,
            **callout,
        )
        fig.text(
            0.815,
            0.13,
            f"n = {numbers['n']}\np(x, y) = {numbers['p_xy']:.3f}\np(x) = {numbers['p_x']:.3f}"
            f"\np(y|x) = {numbers['p_y_given_x']:.3f}",
            fontsize=10,
            family="serif",
            color=LABEL_COLOR,
            linespacing=1.5,
        )
    return render(fig)
