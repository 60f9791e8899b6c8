"""MADE: a masked autoencoder for distribution estimation (Germain, Gregor, Murray & Larochelle, 2015).

An MLP whose weight matrices are multiplied by fixed binary masks so that output group i
depends only on the inputs x_{<i}: the network computes all d autoregressive conditionals
p(x_i | x_{<i}) in one pass (MADE §4).

**Ordering.** The natural one: input i (0-based) has degree m(i) = i + 1. Hidden unit k of
every hidden layer has degree m(k) = 1 + (k mod (d − 1)) (cycling over 1…d−1, deterministic,
MADE §4.2 with the "ordered" connectivity instead of random degrees). Masks (MADE Eqs. 12–13):

    hidden layer:  M[k, j] = 1[m(k) ≥ m_in(j)],
    output layer:  M[i, k] = 1[m_out(i) > m(k)],  with m_out(i) = i + 1,

so output i is connected only through units of degree ≤ i, i.e. to inputs 0…i−1. Output 0
depends on nothing (it is a constant, its bias). A model that wants another ordering
permutes its inputs before the network (e.g. a flow reverses the order between layers).

With ``out_per_dim = m`` each dimension gets a group of m outputs (e.g. a shift and a
log-scale, or the parameters of a spline or a mixture); the group of dimension i has
degree i + 1 as a whole. The output has shape ``(n, d, m)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from genmodels.nets.mlp import _ACTIVATIONS, Activation


class MaskedLinear(nn.Linear):
    """y = (W ⊙ M) x + b with a fixed binary mask M (a buffer) of the weight's shape."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor) -> None:
        super().__init__(in_features, out_features)
        if mask.shape != (out_features, in_features):
            raise ValueError(f"mask must have shape ({out_features}, {in_features}), got {tuple(mask.shape)}")
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def made_degrees(dim: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The degrees (input (d,), hidden (hidden,)) of the natural ordering (module docstring)."""
    d_in = torch.arange(1, dim + 1)
    d_hidden = torch.arange(hidden) % max(dim - 1, 1) + 1
    return d_in, d_hidden


class MADE(nn.Module):
    """x (n, d) ↦ outputs (n, d, m) where output group i depends only on x_{<i} (natural order).

    ``depth`` masked hidden layers of width ``hidden`` (≥ d − 1 so every input reaches the
    last output); ``zero_last`` starts the output layer at zero (a flow then starts as the
    identity).
    """

    def __init__(
        self,
        dim: int,
        out_per_dim: int = 1,
        hidden: int = 64,
        depth: int = 2,
        activation: Activation = "relu",
        zero_last: bool = False,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(_ACTIVATIONS)}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1 (MADE needs a hidden layer), got {depth}")
        if hidden < max(dim - 1, 1):
            raise ValueError(f"hidden must be >= dim - 1 = {dim - 1} so every input reaches the outputs")
        if out_per_dim < 1:
            raise ValueError(f"out_per_dim must be >= 1, got {out_per_dim}")
        self.dim, self.out_per_dim = dim, out_per_dim
        d_in, d_hidden = made_degrees(dim, hidden)
        layers: list[nn.Module] = []
        prev = d_in
        for _ in range(depth):
            mask = (d_hidden[:, None] >= prev[None, :]).float()  # MADE Eq. 12
            layers += [MaskedLinear(prev.numel(), hidden, mask), _ACTIVATIONS[activation]()]
            prev = d_hidden
        d_out = torch.arange(1, dim + 1).repeat_interleave(out_per_dim)  # group i has degree i + 1
        last = MaskedLinear(hidden, dim * out_per_dim, (d_out[:, None] > prev[None, :]).float())  # Eq. 13
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d) → (n, d, out_per_dim)."""
        return self.net(x).reshape(x.shape[0], self.dim, self.out_per_dim)
