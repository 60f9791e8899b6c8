"""MAF: the masked autoregressive flow (Papamakarios, Pavlakou & Murray, 2017).

A flow (tutorial §5, "Relations": x = g_1(g_2(⋯ g_t(z))), z ~ N(0, I), each g_i invertible
and of a restricted form) whose layers are affine autoregressive maps. One layer, in the
data → base direction f (MAF Eqs. 3–5, with z the layer's output):

    z_i = (x_i − μ_i(x_{<i})) · exp(−α_i(x_{<i})),      log|det ∂z/∂x| = −Σ_i α_i(x_{<i}),

where (μ_i, α_i) are output group i of a MADE network (genmodels.nets.made) on x. The
Jacobian is triangular, so the exact density

    log q(x) = log N(f(x); 0, I) + Σ_layers log|det ∂f_l/∂x|

costs one network pass per layer (MAF's fast direction). Sampling inverts each layer
coordinate by coordinate, x_i = μ_i(x_{<i}) + z_i · exp(α_i(x_{<i})), i = 1…d: d passes per
layer (MAF §3.1). The log-scale is soft-clamped, α = c·tanh(α̂/c), as in realnvp.

Between layers the order of the coordinates is reversed (``mixing="reverse"``), or replaced by
a learned LU-parametrised linear map started at the reversal (``mixing="lu"``, Glow §3.2; the
same map as realnvp's), so that every coordinate is, in some layer, conditioned on the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from genmodels.models.base import Model, ModelConfig
from genmodels.models.realnvp import LUInvertibleLinear
from genmodels.nets.made import MADE
from genmodels.nets.mlp import _ACTIVATIONS, Activation
from genmodels.types import LogDensity

_MIXINGS = ("reverse", "lu")


@dataclass
class MAFConfig(ModelConfig):
    """Options of the MAF family."""

    layers: int = 8
    """number of affine autoregressive (MADE) layers"""
    hidden: int = 128
    """width of each MADE's hidden layers"""
    depth: int = 2
    """hidden layers in each MADE"""
    activation: Activation = "relu"
    """nonlinearity of the MADEs"""
    scale_clamp: float = 3.0
    """soft bound c on the log-scale: α = c·tanh(α̂/c)"""
    mixing: Literal["reverse", "lu"] = "reverse"
    """between layers: reverse the coordinate order, or a learned LU linear map started at the reversal"""


class Reverse(nn.Module):
    """z = x[..., ::-1], log|det| = 0 (a permutation)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flip(-1), x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z.flip(-1), z.new_zeros(z.shape[0])


class MaskedAffineAutoregressive(nn.Module):
    """z_i = (x_i − μ_i(x_{<i})) e^{−α_i(x_{<i})} (MAF Eq. 5); starts as the identity."""

    def __init__(self, dim: int, hidden: int, depth: int, activation: Activation, clamp: float) -> None:
        super().__init__()
        self.made = MADE(dim, 2, hidden=hidden, depth=depth, activation=activation, zero_last=True)
        self.clamp = clamp

    def _shift_logscale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.made(x)
        mu, a_hat = out[..., 0], out[..., 1]
        return mu, self.clamp * torch.tanh(a_hat / self.clamp)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, log|det ∂z/∂x|) in one pass."""
        mu, alpha = self._shift_logscale(x)
        return (x - mu) * torch.exp(-alpha), -alpha.sum(-1)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, log|det ∂x/∂z|) by d passes: pass i fixes x_i, since μ_i, α_i read only x_{<i}."""
        x = torch.zeros_like(z)
        alpha = torch.zeros_like(z)
        for i in range(z.shape[-1]):
            mu, alpha = self._shift_logscale(x)
            x = x.clone()
            x[:, i] = mu[:, i] + z[:, i] * torch.exp(alpha[:, i])
        return x, alpha.sum(-1)


class MAF(Model):
    """A masked autoregressive flow on R^d with a standard normal base; exact ``log_prob``."""

    family = "maf"
    Config = MAFConfig
    has_log_prob = True
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 10_000, "lr": 1e-3, "batch_size": 256}
    tour_steps: ClassVar[int] = 1000

    def __init__(self, dim: int, config: MAFConfig | None = None) -> None:
        super().__init__(dim, config)
        cfg: MAFConfig = self.config
        if cfg.layers < 1:
            raise ValueError(f"layers must be >= 1, got {cfg.layers}")
        if cfg.mixing not in _MIXINGS:
            raise ValueError(f"unknown mixing {cfg.mixing!r}; choose one of: {', '.join(_MIXINGS)}")
        if cfg.activation not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {cfg.activation!r}; choose one of: {', '.join(_ACTIVATIONS)}"
            )
        if not cfg.scale_clamp > 0:
            raise ValueError(f"scale_clamp must be > 0, got {cfg.scale_clamp}")
        flows: list[nn.Module] = []
        for i in range(cfg.layers):
            if i > 0:
                if cfg.mixing == "lu":
                    flows.append(LUInvertibleLinear(dim, torch.arange(dim - 1, -1, -1)))
                else:
                    flows.append(Reverse())
            flows.append(
                MaskedAffineAutoregressive(dim, cfg.hidden, cfg.depth, cfg.activation, cfg.scale_clamp)
            )
        self.flows = nn.ModuleList(flows)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f: data → base. Returns (z, Σ log|det ∂f_l|), shapes ((n, d), (n,))."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.flows:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g = f⁻¹: base → data. Returns (x, log|det ∂g/∂z|)."""
        logdet = z.new_zeros(z.shape[0])
        for layer in reversed(self.flows):
            z, ld = layer.inverse(z)
            logdet = logdet + ld
        return z, logdet

    def _log_prob(self, u: torch.Tensor) -> LogDensity:
        """log q(u) = log N(f(u); 0, I) + log|det ∂f/∂u| (exact, one pass)."""
        z, logdet = self(u)
        log_base = -0.5 * (z**2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return LogDensity(log_base + logdet, "exact")

    def loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Maximum likelihood; ``nll`` is the data-space NLL (nats)."""
        loss = -self._log_prob(u).values.mean()
        return {"loss": loss, "nll": loss.detach() + torch.log(self.scale).sum()}

    def _sample(self, n: int, *, generator: torch.Generator | None, **options: Any) -> torch.Tensor:
        """u = g(z), z ~ N(0, I), by the d-step inverse of each layer."""
        if options:
            raise TypeError(f"maf sampling takes no options, got {', '.join(options)}")
        z = torch.randn(n, self.dim, generator=generator, device=self.device, dtype=self.scale.dtype)
        return self.inverse(z)[0]
