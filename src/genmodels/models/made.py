"""MADE as a density model: an autoregressive model with one masked network (Germain et al., 2015).

The tutorial's autoregressive family (§5, "Relations": diffusion is autoregression in time)
factorises the density by the chain rule, in the natural order of the coordinates,

    p(x) = Π_i p(x_i | x_{<i}),

and a MADE network (genmodels.nets.made) outputs the parameters of all d conditionals in one
pass, so ``log_prob`` is exact and costs one pass; sampling draws x_1, then x_2 given x_1, …
(d passes).

**Continuous data** (``levels=0``): each conditional is a mixture of K Gaussians (MADE-MoG,
as in Papamakarios et al. 2017, §4 / Uria et al.'s RNADE),

    p(u_i | u_{<i}) = Σ_k π_ik N(u_i; μ_ik, σ_ik²),   (π_i, μ_i, log σ_i) = MADE(u)_i,

in standardized coordinates u, with log σ soft-clamped to [−c, c], c = ``log_std_clamp``.

**Integer data** (``levels=L > 0``): each conditional is categorical over 0…L−1,
P(k_i | k_{<i}) = softmax(MADE(k)_i)[k_i], an exact probability mass P(k). The training loop
feeds integer data uniformly dequantized, y = (k + v)/L with v ~ U[0, 1)^d (benchmarks.md §4);
the model reads the cell k = ⌊L y⌋ back. ``log_prob(y)`` returns the exact density of the
piecewise-constant model on y, constant on each cell of width 1/L:

    log p(y) = log P(k) − d·log(1/L) = log P(k) + d·log L,

so that the library's bits/dim of integer data, (−log p(y) + d log L)/(d ln 2), is exactly the
discrete −log₂ P(k)/d. ``log_prob(y, output="mass")`` returns log P(k) itself (kind exact, a
probability mass). Samples are drawn as k ~ P and returned dequantized, y = (k + v)/L, a draw
from that density (``dequantize=False`` returns the cell's corner k/L).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from genmodels.models.base import Model, ModelConfig
from genmodels.nets.made import MADE
from genmodels.nets.mlp import _ACTIVATIONS, Activation
from genmodels.types import LogDensity

_OUTPUTS = ("density", "mass")


@dataclass
class MADEConfig(ModelConfig):
    """Options of the MADE family."""

    components: int = 10
    """K, Gaussians per conditional (continuous data)"""
    hidden: int = 256
    """width of the MADE's hidden layers"""
    depth: int = 2
    """hidden layers of the MADE"""
    activation: Activation = "relu"
    """nonlinearity of the MADE"""
    log_std_clamp: float = 6.0
    """soft bound c on each component's log-std (standardized units): log σ = c·tanh(ŝ/c)"""
    levels: int = 0
    """0: continuous data (mixtures of Gaussians); L > 0: integer data with L levels, fed dequantized
    as y = (k + v)/L ∈ [0, 1) (categorical conditionals); the training loop sets it from integer
    data (digits: 17)"""


class MADEModel(Model):
    """Autoregressive density p(x) = Π p(x_i | x_{<i}) from one MADE; exact ``log_prob``."""

    family = "made"
    autocast_safe = True  # a regression/classification loss: bf16-safe
    Config = MADEConfig
    has_log_prob = True
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 6000, "lr": 1e-3, "batch_size": 256}
    tour_steps: ClassVar[int] = 2000

    def __init__(self, dim: int, config: MADEConfig | None = None) -> None:
        super().__init__(dim, config)
        cfg: MADEConfig = self.config
        if cfg.components < 1:
            raise ValueError(f"components must be >= 1, got {cfg.components}")
        if cfg.levels < 0 or cfg.levels == 1:
            raise ValueError(f"levels must be 0 (continuous) or >= 2, got {cfg.levels}")
        if cfg.activation not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {cfg.activation!r}; choose one of: {', '.join(_ACTIVATIONS)}"
            )
        if not cfg.log_std_clamp > 0:
            raise ValueError(f"log_std_clamp must be > 0, got {cfg.log_std_clamp}")
        per_dim = cfg.levels if cfg.levels else 3 * cfg.components
        self.made = MADE(dim, per_dim, hidden=cfg.hidden, depth=cfg.depth, activation=cfg.activation)

    # -- continuous: mixtures of Gaussians ----------------------------------------------
    def _mixture(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log π, μ, log σ), each (n, d, K), of the conditionals given the prefixes of u."""
        cfg: MADEConfig = self.config
        logits, mu, s_hat = self.made(u).chunk(3, dim=-1)
        log_std = cfg.log_std_clamp * torch.tanh(s_hat / cfg.log_std_clamp)
        return torch.log_softmax(logits, dim=-1), mu, log_std

    def _log_prob_continuous(self, u: torch.Tensor) -> torch.Tensor:
        log_pi, mu, log_std = self._mixture(u)
        z = (u[..., None] - mu) * torch.exp(-log_std)
        log_n = -0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(log_pi + log_n, dim=-1).sum(-1)

    # -- integer data: categorical conditionals -------------------------------------------
    def _cells(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, inside): the integer cells k = ⌊L y⌋ of y = denormalize(u), and y ∈ [0, 1)^d."""
        levels = self.config.levels
        y = self.denormalize(u)
        inside = ((y >= 0) & (y < 1)).all(-1)
        return torch.floor(y * levels).clamp(0, levels - 1).long(), inside

    def _net_input(self, k: torch.Tensor) -> torch.Tensor:
        """Cells as network inputs, the cell centres mapped to (−1, 1)."""
        return (2 * (k.to(self.scale.dtype) + 0.5) / self.config.levels - 1).to(self.scale.dtype)

    def log_mass(self, k: torch.Tensor) -> torch.Tensor:
        """log P(k) = Σ_i log softmax(MADE(k)_i)[k_i] for integer data k (n, d) in 0…L−1."""
        if not self.config.levels:
            raise ValueError("log_mass needs a categorical model (levels > 0)")
        logits = self.made(self._net_input(k))
        return torch.log_softmax(logits, dim=-1).gather(-1, k[..., None])[..., 0].sum(-1)

    # -- the contract -------------------------------------------------------------------
    def _log_prob(self, u: torch.Tensor, output: str = "density") -> LogDensity:
        """Exact log p_u(u); for integer data ``output="mass"`` gives log P(k) (module docstring)."""
        if output not in _OUTPUTS:
            raise ValueError(f"unknown output {output!r}; choose one of: {', '.join(_OUTPUTS)}")
        levels = self.config.levels
        if not levels:
            if output == "mass":
                raise ValueError("output='mass' needs integer data (levels > 0); this model is continuous")
            return LogDensity(self._log_prob_continuous(u), "exact")
        k, inside = self._cells(u)
        log_p = self.log_mass(k)
        log_scale = torch.log(self.scale).sum()  # the base class subtracts it again
        if output == "density":
            log_p = log_p + self.dim * math.log(levels)
        log_p = torch.where(inside, log_p + log_scale, torch.full_like(log_p, -math.inf))
        return LogDensity(log_p, "exact")

    def loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Maximum likelihood; ``nll`` is the data-space NLL (nats), of y for integer data."""
        if self.config.levels:
            k, _ = self._cells(u)
            loss = -self.log_mass(k).mean()
            return {"loss": loss, "nll": loss.detach() - self.dim * math.log(self.config.levels)}
        loss = -self._log_prob_continuous(u).mean()
        return {"loss": loss, "nll": loss.detach() + torch.log(self.scale).sum()}

    def prepare(self, x: torch.Tensor, generator: torch.Generator, progress: bool = False) -> None:
        """Check that integer data arrives dequantized in [0, 1) when ``levels`` is set."""
        if self.config.levels and not bool(((x >= 0) & (x < 1)).all()):
            raise ValueError(
                f"made with levels={self.config.levels} expects integer data dequantized to [0, 1) "
                "(y = (k + v)/levels); this data is not"
            )

    @torch.no_grad()
    def _sample(self, n: int, *, generator: torch.Generator | None, dequantize: bool = True) -> torch.Tensor:
        """x_1 ~ p(x_1), x_2 ~ p(x_2 | x_1), …: d passes of the MADE."""
        levels = self.config.levels
        dtype, device = self.scale.dtype, self.device
        if levels:
            k = torch.zeros(n, self.dim, dtype=torch.long, device=device)
            for i in range(self.dim):
                probs = torch.softmax(self.made(self._net_input(k))[:, i], dim=-1)
                k[:, i] = torch.multinomial(probs, 1, generator=generator)[:, 0]
            v = (
                torch.rand(n, self.dim, generator=generator, device=device, dtype=dtype)
                if dequantize
                else 0.0
            )
            return self.normalize((k.to(dtype) + v) / levels)
        u = torch.zeros(n, self.dim, dtype=dtype, device=device)
        for i in range(self.dim):
            log_pi, mu, log_std = self._mixture(u)
            c = torch.multinomial(log_pi[:, i].exp(), 1, generator=generator)  # (n, 1)
            eps = torch.randn(n, generator=generator, device=device, dtype=dtype)
            u[:, i] = mu[:, i].gather(-1, c)[:, 0] + log_std[:, i].gather(-1, c)[:, 0].exp() * eps
        return u
