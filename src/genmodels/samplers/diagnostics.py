"""Convergence diagnostics for MCMC draws: split-R̂, rank-normalized R̂, bulk/tail ESS, MCSE.

All definitions follow Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization,
folding, and localization: An improved R̂ for assessing convergence of MCMC", *Bayesian Analysis*
16(2), 667-718 (cited below as "VGSCB"), which are also the definitions of Stan and ArviZ.

Shapes. Every function takes one array (``numpy`` or ``torch``) of draws

    x : (M, N)       M chains of N draws of one scalar quantity, or
    x : (M, N, D)    the same for D quantities, each handled on its own,

and returns a Python ``float`` for the first shape and a ``numpy`` float64 array of shape (D,) for
the second. Computation is in float64 ``numpy`` whatever the input.

Notation (VGSCB §2-§3). For draws θ_{nm} (n = 1..N, m = 1..M)

    θ̄_m  = (1/N) Σ_n θ_{nm},          θ̄ = (1/M) Σ_m θ̄_m,
    B     = N/(M−1) Σ_m (θ̄_m − θ̄)²                        between-chain variance   (eq. 1)
    s_m²  = 1/(N−1) Σ_n (θ_{nm} − θ̄_m)²,   W = (1/M) Σ_m s_m²   within-chain variance (eq. 2)
    var̂⁺  = (N−1)/N · W + B/N                              marginal variance         (eq. 3)
    R̂     = √(var̂⁺ / W)                                                             (eq. 4)

*Split* chains: each chain is cut into its first and second half (the middle draw is dropped when
N is odd), so M → 2M and N → ⌊N/2⌋; a trend within a chain then shows as a between-chain
difference (VGSCB §2).

*Rank normalization* (eq. 14): with r_{nm} the rank of θ_{nm} among all S = MN pooled draws
(ties get their average rank),

    z_{nm} = Φ⁻¹((r_{nm} − 3/8) / (S + 1/4)),

which makes R̂ and ESS well defined for heavy tails and invariant to monotone transforms.

*Folding* (§4): ζ_{nm} = |θ_{nm} − median(θ)|; R̂ of ζ detects chains with equal location but
different scale.

*Effective sample size* (§3.2, eqs. 10-13): with ρ̂_{t,m} the lag-t autocorrelation of chain m
(computed by FFT),

    ρ̂_t   = 1 − (W − (1/M) Σ_m s_m² ρ̂_{t,m}) / var̂⁺                                (eq. 10)
    P̂_k   = ρ̂_{2k} + ρ̂_{2k+1},  summed while positive (Geyer's initial positive sequence),
            then made non-increasing, P̂_k ← min(P̂_0..P̂_k) (initial monotone sequence)
    τ̂     = −1 + 2 Σ_{k=0}^{K} P̂_k                                                  (eq. 12)
    ESS   = S / τ̂                                                                     (eq. 11)

As in Stan, τ̂ is floored at 1/log₁₀(S) so the ESS of antithetic chains stays ≤ S·log₁₀(S).

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((4, 1000))
    >>> abs(rank_normalized_rhat(x) - 1.0) < 0.01
    True
    >>> 3000 < ess_bulk(x) < 5000
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.special import ndtri
from scipy.stats import rankdata

__all__ = [
    "ess",
    "ess_bulk",
    "ess_tail",
    "mcse_mean",
    "rank_normalized_rhat",
    "split_rhat",
    "summarize",
    "summary",
]

ArrayLike = np.ndarray | torch.Tensor

_ACCEPT_KEYS = ("accept_prob", "acceptance_rate", "accept_rate", "acceptance", "accept", "accepted")
_DIVERGENT_KEYS = ("divergent", "diverging", "divergence", "divergences", "is_divergent", "num_divergent")


# ----------------------------------------------------------------------------------------------
# Array plumbing
# ----------------------------------------------------------------------------------------------


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _to_dcn(x: Any) -> tuple[np.ndarray, bool]:
    """(M, N) or (M, N, D) → (D, M, N) float64, plus whether the input was scalar-valued."""
    a = _as_numpy(x)
    if a.ndim == 2:
        return a[None], True
    if a.ndim == 3:
        return np.moveaxis(a, 2, 0), False
    raise ValueError(f"expected draws of shape (chains, draws) or (chains, draws, dim), got {a.shape}")


def _out(v: np.ndarray, scalar: bool) -> float | np.ndarray:
    return float(v[0]) if scalar else v


def _split_chains(a: np.ndarray) -> np.ndarray:
    """(..., M, N) → (..., 2M, ⌊N/2⌋): first halves, then second halves; drops the middle draw of odd N."""
    n = a.shape[-1]
    half = n // 2
    if half < 2:
        raise ValueError(f"need at least 4 draws per chain to split chains, got {n}")
    return np.concatenate([a[..., :half], a[..., n - half :]], axis=-2)


def _rank_normalize(a: np.ndarray) -> np.ndarray:
    """z = Φ⁻¹((r − 3/8)/(S + 1/4)) with r the average rank among the S = M·N pooled draws (eq. 14).

    a: (D, M, N) → (D, M, N).
    """
    d, m, n = a.shape
    s = m * n
    r = rankdata(a.reshape(d, s), method="average", axis=1)
    return ndtri((r - 0.375) / (s + 0.25)).reshape(d, m, n)


def _fold(a: np.ndarray) -> np.ndarray:
    """ζ = |θ − median(θ)| with the median over all pooled draws; a: (D, M, N) → (D, M, N)."""
    med = np.median(a.reshape(a.shape[0], -1), axis=1)
    return np.abs(a - med[:, None, None])


def _rhat_core(a: np.ndarray) -> np.ndarray:
    """R̂ = √(var̂⁺/W) of eqs. 1-4 for chains as given (no splitting); a: (D, M, N) → (D,).

    NaN where W = 0 (all chains constant) or the input has non-finite values.
    """
    _, m, n = a.shape
    if m < 2:
        raise ValueError("R-hat needs at least two chains (after splitting)")
    chain_mean = a.mean(axis=2)  # (D, M)
    b = n * chain_mean.var(axis=1, ddof=1)  # eq. 1
    w = a.var(axis=2, ddof=1).mean(axis=1)  # eq. 2
    var_plus = (n - 1) / n * w + b / n  # eq. 3
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.sqrt(var_plus / w)  # eq. 4
    return np.where(w > 0, r, np.nan)


def _autocov_fft(a: np.ndarray) -> np.ndarray:
    """Biased autocovariance γ̂_{t,m} = (1/N) Σ_{n=1}^{N−t} (θ_n − θ̄_m)(θ_{n+t} − θ̄_m), t = 0..N−1.

    By the Wiener-Khinchin theorem, via an FFT of length ≥ 2N (zero padding avoids wrap-around):
    γ̂ = IFFT(|FFT(θ − θ̄_m)|²)[:N] / N.  a: (..., N) → (..., N).
    """
    n = a.shape[-1]
    centered = a - a.mean(axis=-1, keepdims=True)
    nfft = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centered, n=nfft, axis=-1)
    return np.fft.irfft(f * np.conj(f), n=nfft, axis=-1)[..., :n] / n


def _geyer_tau(rho: np.ndarray) -> np.ndarray:
    """τ̂ = −1 + 2 Σ_{k=0}^{K} P̂_k (eq. 12) with Geyer's initial monotone positive-pair sequence.

    rho: (D, T) autocorrelations ρ̂_0 = 1, ρ̂_1, ... → (D,). The pair sums P̂_k = ρ̂_{2k} + ρ̂_{2k+1}
    are kept while positive (initial positive sequence: K is the last k before the first P̂_k ≤ 0),
    then replaced by their running minimum (initial monotone sequence), so that the
    noisy tail of the autocorrelation neither inflates τ̂ nor, summed in full, cancels it
    (the sample autocorrelations of a centred series sum to −1/2 over all lags).
    """
    k = rho.shape[1] // 2
    pairs = rho[:, 0 : 2 * k : 2] + rho[:, 1 : 2 * k : 2]  # P̂_k, (D, K)
    keep = np.cumprod(pairs > 0, axis=1).astype(bool)  # up to, not including, the first P̂_k ≤ 0
    mono = np.minimum.accumulate(np.where(keep, pairs, 0.0), axis=1)  # running min; 0 after truncation
    return -1.0 + 2.0 * mono.sum(axis=1)


def _ess_core(a: np.ndarray) -> np.ndarray:
    """ESS = S/τ̂ (eqs. 10-13) for chains as given (no splitting, no normalization); a: (D, M, N) → (D,).

    NaN where the within-chain variance is 0 or the input has non-finite values.
    """
    _, m, n = a.shape
    s = m * n
    if n < 4:
        raise ValueError(f"ESS needs at least 4 draws per chain, got {n}")
    acov = _autocov_fft(a)  # (D, M, N), biased: acov[..., 0] = (N−1)/N s_m²
    s2 = acov[..., 0] * n / (n - 1)  # s_m², (D, M)
    w = s2.mean(axis=1)  # eq. 2
    var_plus = (n - 1) / n * w
    if m > 1:
        var_plus = var_plus + a.mean(axis=2).var(axis=1, ddof=1)  # + B/N
    with np.errstate(divide="ignore", invalid="ignore"):
        rho_m = acov / acov[..., :1]  # ρ̂_{t,m}, (D, M, N)
        # eq. 10: ρ̂_t = 1 − (W − (1/M) Σ_m s_m² ρ̂_{t,m}) / var̂⁺
        rho = 1.0 - (w[:, None] - (s2[..., None] * rho_m).mean(axis=1)) / var_plus[:, None]
    rho[:, 0] = 1.0
    tau = _geyer_tau(rho)
    tau = np.maximum(tau, 1.0 / math.log10(s))  # Stan's floor, bounds the ESS of antithetic chains
    ess_ = s / tau  # eq. 11
    ok = np.isfinite(a).all(axis=(1, 2)) & (w > 0)
    return np.where(ok, ess_, np.nan)


# ----------------------------------------------------------------------------------------------
# R-hat
# ----------------------------------------------------------------------------------------------


def split_rhat(x: ArrayLike) -> float | np.ndarray:
    """Split-R̂ (VGSCB eqs. 1-4 on split chains, §2).

    Each of the M chains of N draws is cut in half, giving 2M chains of ⌊N/2⌋, and

        R̂ = √(var̂⁺ / W),   var̂⁺ = (N−1)/N · W + B/N,

    with B and W the between- and within-chain variances of eqs. 1-2 over the split chains.
    Values near 1 (Stan/VGSCB recommend < 1.01) indicate the chains agree on location.

    x: (M, N) → float, or (M, N, D) → (D,). NaN for constant draws.
    """
    a, scalar = _to_dcn(x)
    return _out(_rhat_core(_split_chains(a)), scalar)


def rank_normalized_rhat(x: ArrayLike) -> float | np.ndarray:
    """The improved R̂ of VGSCB §4: max of the rank-normalized split-R̂ of x and of folded x.

        R̂ = max( R̂_split(z(θ)),  R̂_split(z(|θ − median θ|)) ),

    with z(·) the rank normalization of eq. 14 over all pooled draws. The first term detects
    chains that disagree on location (robust to heavy tails), the second chains that agree on
    location but disagree on scale, which plain split-R̂ misses.

    x: (M, N) → float, or (M, N, D) → (D,).
    """
    a, scalar = _to_dcn(x)
    split = _split_chains(a)
    bulk = _rhat_core(_rank_normalize(split))
    tail = _rhat_core(_rank_normalize(_fold(split)))
    return _out(np.fmax(bulk, tail), scalar)


# ----------------------------------------------------------------------------------------------
# Effective sample size and Monte Carlo standard error
# ----------------------------------------------------------------------------------------------


def ess(x: ArrayLike, split: bool = True) -> float | np.ndarray:
    """Plain effective sample size of the mean of x (VGSCB eqs. 10-13; no rank normalization).

        ESS = S / τ̂,   τ̂ = −1 + 2 Σ_{k=0}^{K} P̂_k,   P̂_k = ρ̂_{2k} + ρ̂_{2k+1},

    with the multi-chain autocorrelation ρ̂_t of eq. 10 (per-chain autocovariances by FFT) and
    K given by Geyer's initial monotone positive-pair sequence. ``split=True`` (the default, as in
    Stan/ArviZ) computes it on the 2M half chains. Requires a finite variance of x.

    x: (M, N) → float, or (M, N, D) → (D,). For independent draws ESS ≈ S = M·N; for AR(1)
    draws with coefficient ρ, ESS ≈ S (1 − ρ)/(1 + ρ).
    """
    a, scalar = _to_dcn(x)
    if split:
        a = _split_chains(a)
    return _out(_ess_core(a), scalar)


def ess_bulk(x: ArrayLike) -> float | np.ndarray:
    """Bulk-ESS (VGSCB §4): the ESS of the rank-normalized split chains, ESS(z(θ)) with z of eq. 14.

    Measures how well the centre of the distribution is explored; well defined for heavy tails.

    x: (M, N) → float, or (M, N, D) → (D,).
    """
    a, scalar = _to_dcn(x)
    return _out(_ess_core(_rank_normalize(_split_chains(a))), scalar)


def ess_tail(x: ArrayLike, prob: float = 0.05) -> float | np.ndarray:
    """Tail-ESS (VGSCB §4): min of the ESS of the lower and upper quantile indicators.

        ESS_tail = min( ESS(I(θ ≤ q̂_α)),  ESS(I(θ ≤ q̂_{1−α})) ),   α = ``prob`` = 0.05,

    with q̂ the empirical quantiles over all pooled draws and the ESS of eqs. 10-13 on split
    chains. It is the ESS of the estimates of the 5 % and 95 % quantiles (of the tail
    probabilities), small when the chains visit the tails rarely or in long stretches.

    x: (M, N) → float, or (M, N, D) → (D,).
    """
    a, scalar = _to_dcn(x)
    split = _split_chains(a)
    flat = split.reshape(split.shape[0], -1)
    out = []
    for p in (prob, 1.0 - prob):
        q = np.quantile(flat, p, axis=1)
        out.append(_ess_core((split <= q[:, None, None]).astype(np.float64)))
    return _out(np.fmin(out[0], out[1]), scalar)


def mcse_mean(x: ArrayLike) -> float | np.ndarray:
    """Monte Carlo standard error of the posterior-mean estimate: MCSE = sd(θ) / √ESS(θ).

    sd is over all S pooled draws (ddof = 1) and ESS is the plain :func:`ess` on split chains
    (the mean is not rank invariant, so no rank normalization; as Stan's ``mcse_mean``).

    x: (M, N) → float, or (M, N, D) → (D,).
    """
    a, scalar = _to_dcn(x)
    sd = a.reshape(a.shape[0], -1).std(axis=1, ddof=1)
    return _out(sd / np.sqrt(_ess_core(_split_chains(a))), scalar)


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------


def _pick(info: Any, keys: Sequence[str]) -> Any:
    """The first of ``keys`` present and not None: a Mapping key, or a dataclass/NamedTuple attribute."""
    if info is None:
        return None
    for key in keys:
        value = info.get(key) if isinstance(info, Mapping) else getattr(info, key, None)
        if value is not None:
            return value
    return None


def summarize(samples: ArrayLike, names: Sequence[str] | None = None, info: Any = None) -> dict[str, Any]:
    """The numbers behind :func:`summary`, one entry per quantity.

    samples: (M, N) or (M, N, D). Returns a dict with

        "names"      list of D names (``names`` or "x[0]", "x[1]", ...)
        "mean", "sd" (D,)  pooled mean and sd (ddof = 1) over all S = M·N draws
        "mcse_mean"  (D,)  sd / √ESS (:func:`mcse_mean`)
        "q5", "q95"  (D,)  pooled 5 % and 95 % quantiles
        "ess_bulk", "ess_tail", "rhat"  (D,)  :func:`ess_bulk`, :func:`ess_tail`,
                     :func:`rank_normalized_rhat`
        "num_chains", "num_draws"  M, N

    and, when ``info`` (a dict, or a dataclass/NamedTuple such as the samplers' stacked ``Info``
    or their ``ChainSummary``) holds them,

        "accept_rate"    mean over all draws and chains of the acceptance probability (key
                         ``accept_prob``, ``acceptance_rate``, ``accept_rate``, ``acceptance``,
                         ``accept`` or ``accepted``) of shape (N, M) = (draws, chains) or (M,),
                         and per chain as "accept_rate_per_chain" (M,);
        "num_divergent"  total number of divergent transitions: the sum of flags (N, M) or of
                         per-chain counts (M,) (key ``divergent``, ``diverging``, ``divergence``,
                         ``divergences``, ``is_divergent`` or ``num_divergent``).

    Note the draws here are (chains, draws, ...) while the kernels' info is (draws, chains).
    """
    a, _ = _to_dcn(samples)
    d, m, n = a.shape
    if names is None:
        names = [f"x[{i}]" for i in range(d)] if d > 1 else ["x"]
    names = list(names)
    if len(names) != d:
        raise ValueError(f"got {len(names)} names for {d} quantities")
    flat = a.reshape(d, -1)
    split = _split_chains(a)
    sd = flat.std(axis=1, ddof=1)
    out: dict[str, Any] = {
        "names": names,
        "mean": flat.mean(axis=1),
        "sd": sd,
        "mcse_mean": sd / np.sqrt(_ess_core(split)),
        "q5": np.quantile(flat, 0.05, axis=1),
        "q95": np.quantile(flat, 0.95, axis=1),
        "ess_bulk": np.atleast_1d(ess_bulk(np.moveaxis(a, 0, 2))),
        "ess_tail": np.atleast_1d(ess_tail(np.moveaxis(a, 0, 2))),
        "rhat": np.atleast_1d(rank_normalized_rhat(np.moveaxis(a, 0, 2))),
        "num_chains": m,
        "num_draws": n,
    }
    accept = _pick(info, _ACCEPT_KEYS)
    if accept is not None:
        acc = _as_numpy(accept)
        out["accept_rate"] = float(acc.mean())
        if acc.ndim >= 2:  # (draws, chains, ...)
            out["accept_rate_per_chain"] = acc.reshape(acc.shape[0], acc.shape[1], -1).mean(axis=(0, 2))
        elif acc.ndim == 1 and acc.shape[0] == m:  # already per chain (e.g. ChainSummary)
            out["accept_rate_per_chain"] = acc
    divergent = _pick(info, _DIVERGENT_KEYS)
    if divergent is not None:  # flags (draws, chains) or per-chain counts (chains,): the total either way
        out["num_divergent"] = round(float(_as_numpy(divergent).sum()))
    return out


def summary(samples: ArrayLike, names: Sequence[str] | None = None, info: Any = None) -> str:
    """A printable table of :func:`summarize`: one row per quantity, then the kernel statistics.

    Columns: mean, sd, mcse (of the mean), q5, q95, ess_bulk, ess_tail, r_hat (rank-normalized,
    VGSCB §4). Footer: chains × draws, and the mean acceptance rate and number of divergent
    transitions when ``info`` has them. VGSCB recommend r_hat < 1.01 and ess_bulk, ess_tail > 100·M
    before trusting the estimates.
    """
    s = summarize(samples, names=names, info=info)
    width = max(8, *(len(nm) for nm in s["names"]))
    cols = ("mean", "sd", "mcse", "q5", "q95", "ess_bulk", "ess_tail", "r_hat")
    keys = ("mean", "sd", "mcse_mean", "q5", "q95", "ess_bulk", "ess_tail", "rhat")
    fmts = ("{:>10.4g}",) * 5 + ("{:>9.0f}",) * 2 + ("{:>7.3f}",)
    head = " " * width + "".join(f"{c:>{10 if i < 5 else (9 if i < 7 else 7)}}" for i, c in enumerate(cols))
    lines = [head]
    for i, nm in enumerate(s["names"]):
        row = "".join(f.format(s[k][i]) for f, k in zip(fmts, keys, strict=True))
        lines.append(f"{nm:<{width}}{row}")
    foot = f"{s['num_chains']} chains × {s['num_draws']} draws"
    if "accept_rate" in s:
        foot += f"; mean acceptance {s['accept_rate']:.3f}"
    if "num_divergent" in s:
        foot += f"; {s['num_divergent']} divergent transitions"
    lines.append(foot)
    return "\n".join(lines)
