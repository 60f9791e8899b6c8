"""RealNVP: a normalizing flow of affine coupling layers (Dinh, Sohl-Dickstein & Bengio, 2017).

A flow is an invertible map x = g(z) of a simple base z ~ N(0, I) (tutorial §5,
"Relations": x = g_1(g_2(⋯ g_t(z))) with each g_i invertible and of a restricted form).
Its density is exact by the change of variables, written with f = g⁻¹ (data → base):

    log q(x) = log N(f(x); 0, I) + Σ_layers log |det ∂f_l/∂x|.               (RealNVP Eq. 3)

Each layer is an affine coupling with a binary mask m (RealNVP Eq. 9):

    y = m ⊙ x + (1 − m) ⊙ (x ⊙ exp(s(m ⊙ x)) + t(m ⊙ x)),
    log |det ∂y/∂x| = Σ_j (1 − m_j) s_j(m ⊙ x),

so the Jacobian is triangular and both directions cost one network pass. The log-scale
is soft-clamped, s = c·tanh(ŝ/c), which keeps training stable without limiting the
flow's range in practice.

Between couplings, ``mixing="lu"`` inserts a learned invertible linear map y = W x with
W = P L (U + diag(e^{λ})) (Glow's LU-parametrised 1×1 convolution, Kingma & Dhariwal 2018,
§3.2), log|det W| = Σ λ. Fixed alternating masks only ever split the same coordinates; a
learned rotation between them lets every coupling choose its own split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from genmodels.models.base import Model, ModelConfig
from genmodels.nets.mlp import MLP, Activation
from genmodels.types import LogDensity


@dataclass
class RealNVPConfig(ModelConfig):
    """Options of the RealNVP family."""

    layers: int = 8
    """number of affine coupling layers (masks alternate)"""
    hidden: int = 128
    """width of each coupling network"""
    depth: int = 2
    """hidden layers in each coupling network"""
    activation: Activation = "relu"
    """nonlinearity of the coupling networks (ReLU reached about half the KL of SiLU on
    8gaussians at the same budget: docs/benchmarks.md)"""
    scale_clamp: float = 3.0
    """soft bound c on the log-scale: s = c·tanh(ŝ/c)"""
    mixing: Literal["lu", "none"] = "lu"
    """a learned invertible linear map between couplings ("lu") or none"""


class AffineCoupling(nn.Module):
    """One affine coupling layer y = m⊙x + (1−m)⊙(x⊙e^{s(m⊙x)} + t(m⊙x)) (RealNVP Eq. 9)."""

    def __init__(self, mask: torch.Tensor, hidden: int, depth: int, activation: Activation, clamp: float):
        super().__init__()
        self.register_buffer("mask", mask)
        dim = mask.numel()
        # Starts as the identity: the last layer is zero, so s = t = 0.
        self.net = MLP(dim, 2 * dim, hidden=hidden, depth=depth, activation=activation, zero_last=True)
        self.clamp = clamp

    def _scale_shift(self, x_masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s_hat, t = self.net(x_masked).chunk(2, dim=-1)
        s = self.clamp * torch.tanh(s_hat / self.clamp)
        free = 1.0 - self.mask
        return s * free, t * free

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, log|det ∂y/∂x|) with shapes ((n, d), (n,))."""
        s, t = self._scale_shift(x * self.mask)
        return x * torch.exp(s) + t, s.sum(-1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, log|det ∂x/∂y|): x = m⊙y + (1−m)⊙(y − t)⊙e^{−s}, since m⊙x = m⊙y."""
        s, t = self._scale_shift(y * self.mask)
        return (y - t) * torch.exp(-s), -s.sum(-1)


class LUInvertibleLinear(nn.Module):
    """y = W x with W = P L (U + diag(e^λ)), log|det ∂y/∂x| = Σ λ (Glow §3.2).

    P is a fixed permutation, L unit lower-triangular, U strictly upper-triangular; the map
    starts as the permutation P (L = I, U = 0, λ = 0).
    """

    def __init__(self, dim: int, permutation: torch.Tensor):
        super().__init__()
        self.register_buffer("P", torch.eye(dim)[permutation])
        self.lower = nn.Parameter(torch.zeros(dim, dim))
        self.upper = nn.Parameter(torch.zeros(dim, dim))
        self.log_diag = nn.Parameter(torch.zeros(dim))
        self.register_buffer("tril_mask", torch.tril(torch.ones(dim, dim), -1))

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(self.P.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        L = self.lower * self.tril_mask + eye
        U = self.upper * self.tril_mask.T + torch.diag(torch.exp(self.log_diag))
        return L, U

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        L, U = self._factors()
        W = self.P @ L @ U
        return x @ W.T, self.log_diag.sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x = U⁻¹ L⁻¹ Pᵀ y by two triangular solves."""
        L, U = self._factors()
        b = (y @ self.P).T  # Pᵀ y, as columns
        v = torch.linalg.solve_triangular(L, b, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(U, v, upper=True).T
        return x, (-self.log_diag.sum()).expand(y.shape[0])


class Flow(Model):
    """A normalizing flow with a standard normal base: the composition of ``transforms()``,
    each layer mapping x → (f_l(x), log|det ∂f_l/∂x|) with an ``inverse``. Shared by realnvp,
    maf and nsf, which only build their layers:

        log q(u) = log N(f(u); 0, I) + Σ_l log|det ∂f_l|,   u = g(z) = f⁻¹(z), z ~ N(0, I).
    """

    autocast_unsafe_because: ClassVar[str] = (
        "its exact log-likelihood sums a log-determinant over every layer and dimension, where "
        "bfloat16's rounding accumulates"
    )

    has_log_prob = True

    def transforms(self) -> nn.ModuleList:
        """The layers f_1, …, f_L, data side first."""
        return self.flows

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f: data → base. Returns (z, Σ log|det ∂f_l|), shapes ((n, d), (n,))."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.transforms():
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g = f⁻¹: base → data. Returns (x, log|det ∂g/∂z|)."""
        logdet = z.new_zeros(z.shape[0])
        for layer in reversed(self.transforms()):
            z, ld = layer.inverse(z)
            logdet = logdet + ld
        return z, logdet

    def _log_prob(self, u: torch.Tensor) -> LogDensity:
        """log q(u) = log N(f(u); 0, I) + log|det ∂f/∂u| (exact)."""
        z, logdet = self(u)
        log_base = -0.5 * (z**2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return LogDensity(log_base + logdet, "exact")

    def loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Maximum likelihood: the mean negative log-likelihood of the batch in u-space;
        ``nll`` is the same in data space (nats), comparable with the target's entropy."""
        loss = -self._log_prob(u).values.mean()
        return {"loss": loss, "nll": loss.detach() + torch.log(self.scale).sum()}

    def _sample(self, n: int, *, generator: torch.Generator | None, **options: Any) -> torch.Tensor:
        """u = g(z), z ~ N(0, I)."""
        if options:
            raise TypeError(f"{self.family} sampling takes no options, got {', '.join(options)}")
        z = torch.randn(n, self.dim, generator=generator, device=self.device, dtype=self.scale.dtype)
        return self.inverse(z)[0]


class RealNVP(Flow):
    """A RealNVP flow on R^d (d ≥ 2) with a standard normal base; exact ``log_prob``."""

    family = "realnvp"
    Config = RealNVPConfig
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 12_000, "lr": 1e-3, "batch_size": 256}
    tour_steps: ClassVar[int] = 2500
    #: logit preprocessing on images (held-out digits, early stopping: 2.46 → 2.11 bits/dim)
    image_options: ClassVar[dict[str, Any]] = {"logit": 0.01}

    def __init__(self, dim: int, config: RealNVPConfig | None = None) -> None:
        super().__init__(dim, config)
        if dim < 2:
            raise ValueError("realnvp needs data of dimension >= 2 (a coupling splits the coordinates)")
        cfg: RealNVPConfig = self.config
        parity = torch.arange(dim) % 2
        layers: list[nn.Module] = []
        for i in range(cfg.layers):
            if cfg.mixing == "lu" and i > 0:
                # Starts as the identity, so the masks' alternation holds at initialisation.
                layers.append(LUInvertibleLinear(dim, torch.arange(dim)))
            layers.append(
                AffineCoupling(
                    ((parity + i) % 2).float(),
                    cfg.hidden,
                    cfg.depth,
                    cfg.activation,
                    cfg.scale_clamp,
                )
            )
        self.couplings = nn.ModuleList(layers)

    def transforms(self) -> nn.ModuleList:
        return self.couplings  # (the name the checkpoints of realnvp runs use)
