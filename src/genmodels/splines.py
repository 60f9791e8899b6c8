"""Monotonic rational-quadratic splines (Durkan, Bekasov, Murray & Papamakarios, 2019, §3.1, App. A).

A spline of K bins maps [−B, B] onto itself through K + 1 knots (x^k, y^k), k = 0…K, with
x^0 = y^0 = −B, x^K = y^K = B, and positive derivatives δ^k at the knots (δ^0 = δ^K = 1, so
that it joins the identity outside [−B, B], its "tails", with a continuous derivative). In
bin k, with w_k = x^{k+1} − x^k, h_k = y^{k+1} − y^k, s_k = h_k / w_k and
ξ = (x − x^k) / w_k ∈ [0, 1] (Durkan et al. Eqs. 4–6 in the notation of Gregory & Delbourgo):

    g(x)   = y^k + h_k [s_k ξ² + δ^k ξ(1−ξ)] / [s_k + (δ^{k+1} + δ^k − 2 s_k) ξ(1−ξ)],
    g'(x)  = s_k² [δ^{k+1} ξ² + 2 s_k ξ(1−ξ) + δ^k (1−ξ)²] / [s_k + (δ^{k+1} + δ^k − 2 s_k) ξ(1−ξ)]².

The inverse solves the quadratic a ξ² + b ξ + c = 0 for ξ ∈ [0, 1] (App. A, Eqs. 29–32):

    a = h_k (s_k − δ^k) + (y − y^k)(δ^{k+1} + δ^k − 2 s_k),
    b = h_k δ^k − (y − y^k)(δ^{k+1} + δ^k − 2 s_k),
    c = −s_k (y − y^k),
    ξ = 2c / (−b − √(b² − 4ac))      (the root in [0, 1], in the numerically stable form).

Unconstrained parameters: widths w = 2B [w_min + (1 − K w_min) softmax(ŵ)], the same for the
heights, and interior derivatives δ = δ_min + softplus(δ̂ + c₀) with c₀ = log(e^{1−δ_min} − 1),
so that zero parameters give the identity map (equal bins, all δ = 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812


def spline_params_count(bins: int) -> int:
    """Unconstrained parameters per transformed coordinate: K widths, K heights, K − 1 δ's."""
    return 3 * bins - 1


def _knots(raw: torch.Tensor, bound: float, min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin sizes (…, K) and knot positions (…, K + 1) on [−B, B] from unnormalized sizes."""
    bins = raw.shape[-1]
    size = min_size + (1 - min_size * bins) * torch.softmax(raw, dim=-1)
    knots = F.pad(torch.cumsum(size, dim=-1), (1, 0), value=0.0)
    knots = 2 * bound * knots - bound
    knots[..., 0] = -bound
    knots[..., -1] = bound
    return knots[..., 1:] - knots[..., :-1], knots


def rational_quadratic_spline(
    x: torch.Tensor,
    params: torch.Tensor,
    *,
    bound: float = 3.0,
    inverse: bool = False,
    min_width: float = 1e-3,
    min_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the spline (or its inverse) elementwise. Returns (y, log|dy/dx|), both x's shape.

    ``x`` has shape (…,); ``params`` (…, 3K − 1) holds (ŵ, ĥ, δ̂) as in the module docstring.
    Outside [−B, B] the map is the identity with log-derivative 0. With ``inverse=True``, ``x``
    is a value y of the spline and the result is (g⁻¹(y), log|dg⁻¹/dy|) = (x, −log g'(x)).
    """
    if params.shape[-1] % 3 != 2:
        raise ValueError(f"params must have 3K - 1 entries in the last axis, got {params.shape[-1]}")
    bins = (params.shape[-1] + 1) // 3
    if min_width * bins > 1 or min_height * bins > 1:
        raise ValueError(f"min_width and min_height must be <= 1/bins = {1 / bins:.4g}")
    w_raw, h_raw, d_raw = params[..., :bins], params[..., bins : 2 * bins], params[..., 2 * bins :]
    widths, xk = _knots(w_raw, bound, min_width)
    heights, yk = _knots(h_raw, bound, min_height)
    c0 = math.log(math.expm1(1 - min_derivative))
    interior = min_derivative + F.softplus(d_raw + c0)
    ones = torch.ones_like(interior[..., :1])
    deriv = torch.cat([ones, interior, ones], dim=-1)  # δ^0 = δ^K = 1

    inside = (x >= -bound) & (x <= bound)
    xc = x.clamp(-bound, bound)
    knots_in = yk if inverse else xk
    # Bin index: the last knot ≤ value (the top knot belongs to the last bin).
    k = torch.searchsorted(knots_in[..., 1:-1].contiguous(), xc[..., None].contiguous(), right=True)

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.gather(-1, k)[..., 0]

    x_k, y_k, w_k, h_k = pick(xk), pick(yk), pick(widths), pick(heights)
    d_k, d_k1 = pick(deriv[..., :-1]), pick(deriv[..., 1:])
    s_k = h_k / w_k
    sum_d = d_k1 + d_k - 2 * s_k
    if not inverse:
        xi = ((xc - x_k) / w_k).clamp(0, 1)
        omx = xi * (1 - xi)
        denom = s_k + sum_d * omx
        y = y_k + h_k * (s_k * xi**2 + d_k * omx) / denom  # Eq. 4
        dydx = s_k**2 * (d_k1 * xi**2 + 2 * s_k * omx + d_k * (1 - xi) ** 2) / denom**2  # Eq. 5
        logdet = torch.log(dydx)
    else:
        dy = xc - y_k
        a = h_k * (s_k - d_k) + dy * sum_d  # App. A, Eq. 29–31
        b = h_k * d_k - dy * sum_d
        c = -s_k * dy
        disc = (b**2 - 4 * a * c).clamp_min(0)
        xi = ((2 * c) / (-b - torch.sqrt(disc))).clamp(0, 1)  # Eq. 32
        y = x_k + xi * w_k
        omx = xi * (1 - xi)
        denom = s_k + sum_d * omx
        dydx = s_k**2 * (d_k1 * xi**2 + 2 * s_k * omx + d_k * (1 - xi) ** 2) / denom**2
        logdet = -torch.log(dydx)
    y = torch.where(inside, y, x)
    logdet = torch.where(inside, logdet, torch.zeros_like(logdet))
    return y, logdet
