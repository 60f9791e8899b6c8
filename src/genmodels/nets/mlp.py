"""A plain multilayer perceptron."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Activation = Literal["silu", "relu", "tanh", "gelu", "elu"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
}


class MLP(nn.Sequential):
    """x ↦ W_L σ(… σ(W_1 x + b_1) …) + b_L with ``depth`` hidden layers of width ``hidden``.

    ``zero_last`` initialises the output layer to zero, so that e.g. a coupling layer
    starts as the identity map.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 128,
        depth: int = 2,
        activation: Activation = "silu",
        zero_last: bool = False,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(_ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[activation]()]
            width = hidden
        last = nn.Linear(width, out_dim)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        super().__init__(*layers)


class RandomFourierFeatures(nn.Module):
    """x ↦ [x, sin(B x), cos(B x)] with B a fixed (``features`` × ``dim``) matrix of N(0, s²)
    entries, s = ``scale`` (Tancik et al. 2020, "Fourier features let networks learn high
    frequency functions in low dimensional domains", Gaussian mapping; Rahimi & Recht 2007).

    Unlike the axis-aligned positional encoding sin(2^k π x) the directions of B are isotropic,
    so the network's bias does not favour the coordinate axes. B is drawn from torch's global
    generator at construction (seed it for a reproducible network) and kept as a buffer, so a
    checkpoint restores the same features.

    ``smoothing`` = σ ≥ 0 (an attribute, 0 at construction) damps each pair by exp(−½σ²‖b_k‖²):
    the features of u convolved with N(0, σ²I), since E sin(b·(u + σε)) = e^{−σ²‖b‖²/2} sin(b·u).
    Annealing σ to 0 lets frequencies above 1/σ in gradually (coarse to fine, as BARF, Lin et
    al. 2021).
    """

    def __init__(self, dim: int, features: int, scale: float) -> None:
        super().__init__()
        if features < 1 or not scale > 0:
            raise ValueError(
                f"random Fourier features need features >= 1 and scale > 0, got {features}, {scale}"
            )
        self.dim = dim
        self.out_dim = dim + 2 * features
        self.register_buffer("B", scale * torch.randn(features, dim))
        self.smoothing = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = x @ self.B.T
        sin, cos = torch.sin(angles), torch.cos(angles)
        if self.smoothing > 0:
            damp = torch.exp(-0.5 * self.smoothing**2 * (self.B**2).sum(-1)).to(x.dtype)
            sin, cos = sin * damp, cos * damp
        return torch.cat([x, sin, cos], dim=-1)
