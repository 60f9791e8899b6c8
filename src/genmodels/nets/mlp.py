"""A plain multilayer perceptron."""

from __future__ import annotations

from typing import Literal

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
