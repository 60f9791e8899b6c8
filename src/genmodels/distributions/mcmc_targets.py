"""MCMC benchmark targets with exact moments, and the MCHMC bias metric b².

The targets are those of the MicroCanonicalHMC benchmarks (Robnik, De Luca, Silverstein &
Seljak, "Microcanonical Hamiltonian Monte Carlo", JMLR 2023; repository
``JakobRobnik/MicroCanonicalHMC``, file ``benchmarks/benchmarks_mchmc.py``), which take
Banana and Neal's funnel from the inference-gym (``tensorflow_probability``
``inference_gym.targets.Banana`` / ``NealsFunnel``):

- :class:`Banana` x₀ ~ N(0, 10²), x₁ | x₀ ~ N(c(x₀² − 100), 1), c = 0.03.
- :class:`NealsFunnel` x₀ ~ N(0, 3²), xᵢ | x₀ ~ N(0, e^{x₀}) for i = 1..d−1 (x₀ first, as
  in the inference-gym; the MCHMC repository puts the funnel variable last).
- :class:`IllConditionedGaussian` zero mean, covariance eigenvalues log-spaced from κ^{-1/2}
  to κ^{1/2} (the MCHMC convention), optionally rotated by a fixed-seed random orthogonal
  matrix built exactly as in MCHMC (``np.random.RandomState(seed).randn(d, d)``, QR).
- :class:`Rosenbrock` d/2 independent pairs (x, y), x ~ N(1, 1), y | x ~ N(x², Q), Q the
  *variance* (MCHMC: ``scale=sqrt(Q)`` and ``(x² − y)²/Q`` in −log p). The layout is MCHMC's:
  the first d/2 coordinates are the x's and the last d/2 the y's, so pair i is
  ``(x[i], x[i + d/2])``.

Each target exposes the exact per-coordinate ``mean`` E[x], ``second_moment`` E[x²] and
``variance_of_square`` Var[x²] = E[x⁴] − E[x²]² as float64 ``(d,)`` tensors, derived in the
class docstrings. :func:`bias_squared` and :func:`steps_to_threshold` implement the MCHMC
metric b² = max_i (or mean_i) (Ê[x_i²] − E[x_i²])² / Var[x_i²] and the "steps until b² stays
below 0.01" cost.

Sampling draws float64 standard normals from the given ``torch.Generator`` and transforms them
(float32 output by default, as the :class:`Target` contract says); ``log_prob`` and ``score``
compute in float64 and return the input dtype.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from genmodels.distributions.base import Target

__all__ = [
    "Banana",
    "IllConditionedGaussian",
    "MomentTarget",
    "NealsFunnel",
    "Rosenbrock",
    "bias_squared",
    "steps_to_threshold",
]

_LOG_2PI = math.log(2.0 * math.pi)


class MomentTarget(Target):
    """A :class:`Target` that also knows its exact per-coordinate moments.

    Subclasses set ``mean``, ``second_moment`` and ``variance_of_square`` (float64, ``(d,)``)
    and implement ``_sample64`` (float64 draws) and ``_log_prob64`` / ``_score64`` (float64 in,
    float64 out).
    """

    mean: torch.Tensor
    second_moment: torch.Tensor
    variance_of_square: torch.Tensor

    @property
    def variance(self) -> torch.Tensor:
        """Var[x_i] = E[x_i²] − E[x_i]², float64 ``(d,)``."""
        return self.second_moment - self.mean**2

    def _normals(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(n, self.dim, dtype=torch.float64, generator=generator)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``n`` exact independent draws, shape ``(n, dim)`` (float32 unless ``dtype`` says)."""
        return self._sample64(self._normals(n, generator)).to(dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self._log_prob64(x.to(torch.float64)).to(x.dtype)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The analytic score ∇ log p(x), shape ``(n, dim)``, in the input dtype."""
        return self._score64(x.detach().to(torch.float64)).to(x.dtype)

    def _sample64(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _log_prob64(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score64(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Banana(MomentTarget):
    """The inference-gym Banana (also MCHMC's): x₀ ~ N(0, 10²), x₁ | x₀ ~ N(c(x₀² − 100), 1).

    Moments. Write x₀ = 10 z₀, x₁ = a w + z₁ with z₀, z₁ iid N(0, 1), w = z₀² − 1 and
    a = 100 c (= 3 for c = 0.03). Using E[z²ᵏ] = (2k−1)!!: E[w] = 0, E[w²] = 2,
    E[w⁴] = E[z⁸] − 4E[z⁶] + 6E[z⁴] − 4E[z²] + 1 = 105 − 60 + 18 − 4 + 1 = 60. Hence
    E[x] = (0, 0); E[x₀²] = 100, Var[x₀²] = 2·100² = 20000; E[x₁²] = 2a² + 1 (= 19);
    E[x₁⁴] = 60a⁴ + 6·2a² + 3, so Var[x₁²] = 56a⁴ + 8a² + 2 (= 4610 for a = 3; MCHMC's
    Monte-Carlo value is 4600.9). The map (z₀, z₁) → x has Jacobian 10, so the entropy is
    H = ½ log(2πe·100) + ½ log(2πe).
    """

    name = "banana"
    dim = 2
    box = (-40.0, 50.0)

    def __init__(self, curvature: float = 0.03) -> None:
        self.curvature = float(curvature)
        a = 100.0 * self.curvature
        self.mean = torch.zeros(2, dtype=torch.float64)
        self.second_moment = torch.tensor([100.0, 2 * a**2 + 1], dtype=torch.float64)
        self.variance_of_square = torch.tensor([20000.0, 56 * a**4 + 8 * a**2 + 2], dtype=torch.float64)

    def _sample64(self, z: torch.Tensor) -> torch.Tensor:
        x0 = 10.0 * z[:, 0]
        x1 = self.curvature * (x0**2 - 100.0) + z[:, 1]
        return torch.stack([x0, x1], dim=1)

    def _log_prob64(self, x: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[:, 0], x[:, 1]
        r = x1 - self.curvature * (x0**2 - 100.0)
        return -0.5 * (x0 / 10.0) ** 2 - 0.5 * r**2 - _LOG_2PI - math.log(10.0)

    def _score64(self, x: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[:, 0], x[:, 1]
        r = x1 - self.curvature * (x0**2 - 100.0)
        return torch.stack([-x0 / 100.0 + 2.0 * self.curvature * x0 * r, -r], dim=1)

    def entropy(self) -> float:
        return 0.5 * (1.0 + _LOG_2PI + math.log(100.0)) + 0.5 * (1.0 + _LOG_2PI)


class NealsFunnel(MomentTarget):
    """Neal's funnel (inference-gym ``NealsFunnel``): x₀ ~ N(0, 3²), xᵢ | x₀ ~ N(0, e^{x₀}).

    Moments. x₀: mean 0, E[x₀²] = 9, Var[x₀²] = 2·9² = 162. For i ≥ 1, xᵢ = e^{x₀/2} zᵢ with
    zᵢ ~ N(0, 1) independent of x₀, and E[e^{k x₀}] = e^{9k²/2}: E[xᵢ] = 0,
    E[xᵢ²] = E[e^{x₀}] = e^{4.5}, E[xᵢ⁴] = 3E[e^{2x₀}] = 3e^{18}, so Var[xᵢ²] = 3e^{18} − e^{9}.
    (Var[xᵢ²] is dominated by rare large x₀; sample estimates of E[xᵢ²] converge very slowly.)
    Entropy: H = ½ log(2πe·9) + (d−1)(½ log(2πe) + ½ E[x₀]) = ½ log(2πe·9) + (d−1)·½ log(2πe).
    ``box`` is only a plotting window; the funnel has no small box holding nearly all mass.
    """

    name = "funnel"
    box = (-30.0, 30.0)

    def __init__(self, dim: int = 10) -> None:
        if dim < 2:
            raise ValueError("NealsFunnel needs dim >= 2")
        self.dim = int(dim)
        m = self.dim - 1
        self.mean = torch.zeros(self.dim, dtype=torch.float64)
        self.second_moment = torch.tensor([9.0] + [math.exp(4.5)] * m, dtype=torch.float64)
        self.variance_of_square = torch.tensor(
            [162.0] + [3.0 * math.exp(18.0) - math.exp(9.0)] * m, dtype=torch.float64
        )

    def _sample64(self, z: torch.Tensor) -> torch.Tensor:
        x0 = 3.0 * z[:, :1]
        return torch.cat([x0, z[:, 1:] * torch.exp(0.5 * x0)], dim=1)

    def _log_prob64(self, x: torch.Tensor) -> torch.Tensor:
        x0, rest = x[:, 0], x[:, 1:]
        m = self.dim - 1
        lp0 = -0.5 * (x0 / 3.0) ** 2 - 0.5 * _LOG_2PI - math.log(3.0)
        lpr = -0.5 * torch.exp(-x0) * (rest**2).sum(dim=1) - 0.5 * m * x0 - 0.5 * m * _LOG_2PI
        return lp0 + lpr

    def _score64(self, x: torch.Tensor) -> torch.Tensor:
        x0, rest = x[:, :1], x[:, 1:]
        m = self.dim - 1
        e = torch.exp(-x0)
        g0 = -x0 / 9.0 - 0.5 * m + 0.5 * e * (rest**2).sum(dim=1, keepdim=True)
        return torch.cat([g0, -rest * e], dim=1)

    def entropy(self) -> float:
        return 0.5 * (1.0 + _LOG_2PI + math.log(9.0)) + (self.dim - 1) * 0.5 * (1.0 + _LOG_2PI)


class IllConditionedGaussian(MomentTarget):
    """MCHMC's ill-conditioned Gaussian: N(0, Σ), Σ = R diag(λ) Rᵀ.

    Convention (MCHMC ``benchmarks_mchmc.IllConditionedGaussian``): the eigenvalues (variances)
    are λ_k = logspace(−½ log₁₀ κ, ½ log₁₀ κ, d), i.e. from κ^{-1/2} to κ^{1/2}, so max/min = κ
    and their geometric mean is 1. ``rotation_seed=None`` (default) gives R = I (diagonal);
    an integer builds R exactly as MCHMC does: Q from ``np.linalg.qr`` of
    ``np.random.RandomState(seed).randn(d, d)``.

    Moments. Each xᵢ ~ N(0, Σᵢᵢ) with Σᵢᵢ = Σ_k R_ik² λ_k (= λᵢ when diagonal): E[xᵢ] = 0,
    E[xᵢ²] = Σᵢᵢ, E[xᵢ⁴] = 3Σᵢᵢ², so Var[xᵢ²] = 2Σᵢᵢ². Entropy: ½ Σ_k log(2πe λ_k).
    """

    name = "ill_conditioned_gaussian"

    def __init__(self, dim: int = 100, condition: float = 100.0, rotation_seed: int | None = None) -> None:
        self.dim = int(dim)
        self.condition = float(condition)
        self.rotation_seed = rotation_seed
        h = 0.5 * math.log10(self.condition)
        self.eigenvalues = torch.from_numpy(np.logspace(-h, h, self.dim)).to(torch.float64)
        if rotation_seed is None:
            self.rotation = None
            sigma_diag = self.eigenvalues.clone()
            self.box = (-5.0 * self.condition**0.25, 5.0 * self.condition**0.25)
        else:
            rng = np.random.RandomState(seed=rotation_seed)
            q, _ = np.linalg.qr(rng.randn(self.dim, self.dim))
            self.rotation = torch.from_numpy(q).to(torch.float64)
            self.covariance = self.rotation @ torch.diag(self.eigenvalues) @ self.rotation.T
            self.precision = self.rotation @ torch.diag(1.0 / self.eigenvalues) @ self.rotation.T
            sigma_diag = torch.diagonal(self.covariance).clone()
            self.box = (-5.0 * float(sigma_diag.max()) ** 0.5, 5.0 * float(sigma_diag.max()) ** 0.5)
        self.mean = torch.zeros(self.dim, dtype=torch.float64)
        self.second_moment = sigma_diag
        self.variance_of_square = 2.0 * sigma_diag**2

    def _sample64(self, z: torch.Tensor) -> torch.Tensor:
        y = z * self.eigenvalues.sqrt()
        return y if self.rotation is None else y @ self.rotation.T

    def _log_prob64(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.rotation is None else x @ self.rotation  # coordinates in the eigenbasis
        quad = (y**2 / self.eigenvalues).sum(dim=1)
        return -0.5 * quad - 0.5 * self.dim * _LOG_2PI - 0.5 * self.eigenvalues.log().sum()

    def _score64(self, x: torch.Tensor) -> torch.Tensor:
        if self.rotation is None:
            return -x / self.eigenvalues
        return -x @ self.precision  # precision is symmetric

    def entropy(self) -> float:
        return float(0.5 * (self.dim * (1.0 + _LOG_2PI) + self.eigenvalues.log().sum()))


class Rosenbrock(MomentTarget):
    """MCHMC's Rosenbrock: d/2 iid pairs x ~ N(1, 1), y | x ~ N(x², Q), Q a variance.

    Layout (MCHMC ``benchmarks_mchmc.Rosenbrock``): coordinates ``0..d/2−1`` are the x's and
    ``d/2..d−1`` the y's; pair i is ``(x[i], x[i + d/2])``. −log p = ½ Σ [(x − 1)² + (x² − y)²/Q]
    + const, so Q is the conditional variance of y (MCHMC samples it with scale √Q).

    Moments. For x ~ N(1, 1), E[x^{2k}] = Σ_j C(2k, 2j)(2j−1)!!: E[x²] = 2, E[x⁴] = 10,
    E[x⁸] = 1 + 28 + 210 + 420 + 105 = 764. So E[x] = 1, Var[x²] = 10 − 4 = 6. With
    y = x² + √Q z: E[y] = 2, E[y²] = E[x⁴] + Q = 10 + Q (MCHMC's numerical value for Q = 0.1
    is 10.0984), E[y⁴] = E[x⁸] + 6Q E[x⁴] + 3Q² = 764 + 60Q + 3Q², so
    Var[y²] = 764 + 60Q + 3Q² − (10 + Q)². Entropy: (d/2)(½ log(2πe) + ½ log(2πe Q)).
    """

    name = "rosenbrock"
    box = (-5.0, 20.0)

    def __init__(self, dim: int = 36, Q: float = 0.1) -> None:
        if dim % 2:
            raise ValueError("Rosenbrock needs an even dim")
        self.dim = int(dim)
        self.Q = float(Q)
        h, q = self.dim // 2, self.Q
        ones = torch.ones(h, dtype=torch.float64)
        self.mean = torch.cat([ones, 2.0 * ones])
        self.second_moment = torch.cat([2.0 * ones, (10.0 + q) * ones])
        self.variance_of_square = torch.cat(
            [6.0 * ones, (764.0 + 60 * q + 3 * q**2 - (10.0 + q) ** 2) * ones]
        )

    def _sample64(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dim // 2
        x = 1.0 + z[:, :h]
        y = x**2 + math.sqrt(self.Q) * z[:, h:]
        return torch.cat([x, y], dim=1)

    def _log_prob64(self, v: torch.Tensor) -> torch.Tensor:
        h = self.dim // 2
        x, y = v[:, :h], v[:, h:]
        quad = ((x - 1.0) ** 2 + (y - x**2) ** 2 / self.Q).sum(dim=1)
        return -0.5 * quad - h * _LOG_2PI - 0.5 * h * math.log(self.Q)

    def _score64(self, v: torch.Tensor) -> torch.Tensor:
        h = self.dim // 2
        x, y = v[:, :h], v[:, h:]
        r = (y - x**2) / self.Q
        return torch.cat([-(x - 1.0) + 2.0 * x * r, -r], dim=1)

    def entropy(self) -> float:
        return (self.dim // 2) * (1.0 + _LOG_2PI + 0.5 * math.log(self.Q))


def bias_squared(
    samples_second_moment: torch.Tensor, target: MomentTarget, reduce: str = "max"
) -> torch.Tensor:
    """MCHMC's b² = max_i (or mean_i) (Ê[x_i²] − E[x_i²])² / Var[x_i²] (benchmarks.md §5).

    ``samples_second_moment`` is the estimate Ê[x²] with shape ``(..., d)``; the reduction is
    over the last axis and the result (float64) has shape ``(...)``. For n exact independent
    draws E[(Ê[x_i²] − E[x_i²])²] = Var[x_i²]/n, so E[b²] = 1/n with ``reduce="mean"``.
    """
    m2 = torch.as_tensor(samples_second_moment, dtype=torch.float64)
    per_dim = (m2 - target.second_moment) ** 2 / target.variance_of_square
    if reduce == "max":
        return per_dim.amax(dim=-1)
    if reduce == "mean":
        return per_dim.mean(dim=-1)
    raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")


def steps_to_threshold(
    running_second_moments: torch.Tensor,
    target: MomentTarget,
    threshold: float = 0.01,
    reduce: str = "max",
) -> int | None:
    """The first index t with b²(s) < ``threshold`` for every s ≥ t, or ``None``.

    ``running_second_moments`` has shape ``(T, d)``: row s is Ê[x²] after step s (row 0 after
    the first step, so the step count is t + 1 when rows are per-step). ``None`` when the last
    row is not below the threshold.
    """
    b2 = bias_squared(running_second_moments, target, reduce=reduce)
    if b2.ndim != 1:
        raise ValueError("running_second_moments must have shape (T, d)")
    above = torch.nonzero(b2 >= threshold).flatten()
    if len(above) == 0:
        return 0
    last = int(above[-1])
    return None if last == len(b2) - 1 else last + 1
