"""NSF: neural spline flows with rational-quadratic splines (Durkan, Bekasov, Murray & Papamakarios, 2019).

A flow (tutorial §5, "Relations": x = g_1(g_2(⋯ g_t(z))), z ~ N(0, I), each g_i invertible
and of a restricted form) whose layers transform coordinates elementwise by monotonic
rational-quadratic splines (genmodels.splines: K bins on [−B, B], identity tails, derivative 1
at ±B) whose knots are computed by a conditioner network:

- ``transform="coupling"`` (RQ-NSF (C), Durkan et al. §3.2 with RealNVP's coupling): the first
  ⌊d/2⌋ coordinates x_A pass unchanged and condition the rest, z_B = RQS(x_B; θ(x_A)) with θ
  an MLP; log|det| = Σ_{i∈B} log g'_i. Both directions cost one pass.
- ``transform="autoregressive"`` (RQ-NSF (AR), §3.2 with MAF's structure): z_i = RQS(x_i; θ_i(x_{<i}))
  with θ a MADE; the density costs one pass, sampling d passes.

Between layers the coordinate order is reversed (``mixing="reverse"``; with the fixed coupling
mask this makes the masks alternate), or a learned LU linear map started at the reversal
(``mixing="lu"``, Glow §3.2, as Durkan et al. use between their layers). Exact density:

    log q(x) = log N(f(x); 0, I) + Σ_layers log|det ∂f_l/∂x|.

Every layer starts as the identity (zero last layers give equal bins and unit derivatives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from genmodels.models.base import ModelConfig
from genmodels.models.maf import with_mixing
from genmodels.models.realnvp import Flow
from genmodels.nets.made import MADE
from genmodels.nets.mlp import _ACTIVATIONS, MLP, Activation
from genmodels.splines import rational_quadratic_spline, spline_params_count

_TRANSFORMS = ("coupling", "autoregressive")
_MIXINGS = ("reverse", "lu")


@dataclass
class NSFConfig(ModelConfig):
    """Options of the NSF family."""

    transform: Literal["coupling", "autoregressive"] = "coupling"
    """conditioner structure: an MLP on the unchanged half (coupling) or a MADE (autoregressive)"""
    layers: int = 6
    """number of spline layers"""
    bins: int = 8
    """K, the number of spline bins"""
    bound: float = 4.0
    """B: the splines act on [−B, B] (standardized units) and are the identity outside"""
    hidden: int = 64
    """width of each conditioner network"""
    depth: int = 2
    """hidden layers in each conditioner network"""
    activation: Activation = "relu"
    """nonlinearity of the conditioners"""
    mixing: Literal["reverse", "lu"] = "lu"
    """between layers: reverse the coordinates, or a learned LU linear map started at the reversal"""
    min_bin: float = 1e-3
    """minimum bin width and height, as a fraction of 2B"""
    min_derivative: float = 1e-3
    """minimum derivative at the interior knots"""


class _SplineLayer(nn.Module):
    def __init__(self, cfg: NSFConfig) -> None:
        super().__init__()
        self.spline_kw = {
            "bound": cfg.bound,
            "min_width": cfg.min_bin,
            "min_height": cfg.min_bin,
            "min_derivative": cfg.min_derivative,
        }

    def _spline(
        self, x: torch.Tensor, params: torch.Tensor, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return rational_quadratic_spline(x, params, inverse=inverse, **self.spline_kw)


class SplineCoupling(_SplineLayer):
    """z_A = x_A, z_B = RQS(x_B; θ(x_A)) with θ an MLP (coupling, A = the first ⌊d/2⌋ coordinates)."""

    def __init__(self, dim: int, cfg: NSFConfig) -> None:
        super().__init__(cfg)
        self.split = dim // 2
        self.n_params = spline_params_count(cfg.bins)
        self.net = MLP(
            self.split,
            (dim - self.split) * self.n_params,
            hidden=cfg.hidden,
            depth=cfg.depth,
            activation=cfg.activation,
            zero_last=True,
        )

    def _transform(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        params = self.net(x_a).reshape(x.shape[0], x_b.shape[1], self.n_params)
        z_b, ld = self._spline(x_b, params, inverse)
        return torch.cat([x_a, z_b], dim=-1), ld.sum(-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(x, inverse=False)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_A = z_A, x_B = RQS⁻¹(z_B; θ(z_A)): one pass."""
        return self._transform(z, inverse=True)


class SplineAutoregressive(_SplineLayer):
    """z_i = RQS(x_i; θ_i(x_{<i})) with θ a MADE (natural order)."""

    def __init__(self, dim: int, cfg: NSFConfig) -> None:
        super().__init__(cfg)
        self.made = MADE(
            dim,
            spline_params_count(cfg.bins),
            hidden=cfg.hidden,
            depth=cfg.depth,
            activation=cfg.activation,
            zero_last=True,
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, ld = self._spline(x, self.made(x), inverse=False)
        return z, ld.sum(-1)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d passes: pass i fixes x_i = RQS⁻¹(z_i; θ_i(x_{<i}))."""
        x = torch.zeros_like(z)
        ld = torch.zeros_like(z)
        for i in range(z.shape[-1]):
            params = self.made(x)[:, i]
            xi, ldi = self._spline(z[:, i], params, inverse=True)
            x = x.clone()
            x[:, i] = xi
            ld[:, i] = ldi
        return x, ld.sum(-1)


class NSF(Flow):
    """A rational-quadratic neural spline flow with a standard normal base; exact ``log_prob``."""

    family = "nsf"
    Config = NSFConfig
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 6000, "lr": 1e-3, "batch_size": 256}
    tour_steps: ClassVar[int] = 1000

    def __init__(self, dim: int, config: NSFConfig | None = None) -> None:
        super().__init__(dim, config)
        cfg: NSFConfig = self.config
        if cfg.transform not in _TRANSFORMS:
            raise ValueError(f"unknown transform {cfg.transform!r}; choose one of: {', '.join(_TRANSFORMS)}")
        if cfg.mixing not in _MIXINGS:
            raise ValueError(f"unknown mixing {cfg.mixing!r}; choose one of: {', '.join(_MIXINGS)}")
        if cfg.activation not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {cfg.activation!r}; choose one of: {', '.join(_ACTIVATIONS)}"
            )
        if cfg.transform == "coupling" and dim < 2:
            raise ValueError(
                "nsf with transform='coupling' needs data of dimension >= 2; use 'autoregressive'"
            )
        if cfg.layers < 1:
            raise ValueError(f"layers must be >= 1, got {cfg.layers}")
        if cfg.bins < 1:
            raise ValueError(f"bins must be >= 1, got {cfg.bins}")
        if not cfg.bound > 0:
            raise ValueError(f"bound must be > 0, got {cfg.bound}")
        if not 0 <= cfg.min_bin < 1 / cfg.bins:
            raise ValueError(f"min_bin must be in [0, 1/bins) = [0, {1 / cfg.bins:.4g}), got {cfg.min_bin}")
        if not 0 < cfg.min_derivative < 1:
            raise ValueError(f"min_derivative must be in (0, 1), got {cfg.min_derivative}")
        block = SplineCoupling if cfg.transform == "coupling" else SplineAutoregressive
        self.flows = with_mixing([block(dim, cfg) for _ in range(cfg.layers)], cfg.mixing, dim)
