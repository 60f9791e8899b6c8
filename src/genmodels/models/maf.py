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

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from genmodels.models.base import ModelConfig
from genmodels.models.realnvp import Flow, LUInvertibleLinear
from genmodels.nets.made import MADE
from genmodels.nets.mlp import _ACTIVATIONS, Activation

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


def with_mixing(blocks: list[nn.Module], mixing: str, dim: int) -> nn.ModuleList:
    """The blocks with a reversal of the coordinates between consecutive ones (``reverse``), or
    a learned LU linear map started at the reversal (``lu``, Glow §3.2)."""
    flows: list[nn.Module] = []
    for i, block in enumerate(blocks):
        if i > 0:
            reverse = torch.arange(dim - 1, -1, -1)
            flows.append(LUInvertibleLinear(dim, reverse) if mixing == "lu" else Reverse())
        flows.append(block)
    return nn.ModuleList(flows)


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


class MAF(Flow):
    """A masked autoregressive flow on R^d with a standard normal base; exact ``log_prob``."""

    family = "maf"
    Config = MAFConfig
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 10_000, "lr": 1e-3, "batch_size": 256}
    tour_steps: ClassVar[int] = 1000
    #: logit preprocessing on images (held-out digits, early stopping: 2.55 → 2.17 bits/dim)
    image_options: ClassVar[dict[str, Any]] = {"logit": 0.01}

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
        blocks = [
            MaskedAffineAutoregressive(dim, cfg.hidden, cfg.depth, cfg.activation, cfg.scale_clamp)
            for _ in range(cfg.layers)
        ]
        self.flows = with_mixing(blocks, cfg.mixing, dim)
