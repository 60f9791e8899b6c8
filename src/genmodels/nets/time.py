"""Time (noise-level) conditioned networks: a sinusoidal embedding and an MLP denoiser for vectors."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from genmodels.nets.mlp import _ACTIVATIONS, Activation


def _check_activation(activation: str) -> None:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(_ACTIVATIONS)}")


def broadcast_condition(c: Tensor | float, n: int, like: Tensor) -> Tensor:
    """The conditioning value as a (n,) tensor with ``like``'s dtype and device.

    Accepts a python number, a 0-d or single-element tensor (shared by the whole batch) or a
    tensor of shape (n,) or (n, 1).
    """
    c = torch.as_tensor(c, dtype=like.dtype, device=like.device).reshape(-1)
    if c.numel() == 1:
        return c.expand(n)
    if c.numel() != n:
        raise ValueError(f"conditioning c has {c.numel()} values, expected 1 or the batch size {n}")
    return c


CONDITIONINGS: tuple[str, ...] = ("add", "film", "input")


class SinusoidalEmbedding(nn.Module):
    """c ↦ [cos(c ω_0), …, cos(c ω_{h−1}), sin(c ω_0), …, sin(c ω_{h−1})], h = dim / 2.

    The frequencies are ω_k = P^(−k/h), k = 0, …, h − 1, with P = ``max_period`` (the
    Transformer positional encoding of Vaswani et al. 2017, as used for the time in DDPM).
    Maps c of shape (n,) (float, e.g. ¼ log σ or 1000 t) to (n, dim); it has no parameters.
    """

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim <= 0 or dim % 2 != 0:
            raise ValueError(f"SinusoidalEmbedding needs a positive even dim, got {dim}")
        if max_period <= 0:
            raise ValueError(f"max_period must be positive, got {max_period}")
        self.dim = dim
        self.max_period = float(max_period)

    def forward(self, c: Tensor) -> Tensor:
        if c.ndim != 1:
            raise ValueError(f"SinusoidalEmbedding expects c of shape (n,), got {tuple(c.shape)}")
        if not c.is_floating_point():
            c = c.to(torch.get_default_dtype())
        half = self.dim // 2
        k = torch.arange(half, dtype=c.dtype, device=c.device)
        omega = torch.exp(-math.log(self.max_period) * k / half)  # (h,)
        angles = c[:, None] * omega[None, :]  # (n, h)
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}"


class TimeEmbedding(nn.Sequential):
    """c ↦ σ(W_2 σ(W_1 e(c) + b_1) + b_2): the sinusoidal embedding e of dimension ``emb_dim``
    followed by a two-layer MLP to width ``out_dim``, (n,) -> (n, out_dim).

    The trailing activation is there because every consumer applies its own linear projection
    next (as in DDPM's ``temb_proj(nonlinearity(temb))``).
    """

    def __init__(self, emb_dim: int, out_dim: int, activation: Activation = "silu") -> None:
        _check_activation(activation)
        act = _ACTIVATIONS[activation]
        super().__init__(
            SinusoidalEmbedding(emb_dim),
            nn.Linear(emb_dim, out_dim),
            act(),
            nn.Linear(out_dim, out_dim),
            act(),
        )


class TimeMLP(nn.Module):
    """A noise-conditioned MLP denoiser for vectors, (x, c) ↦ f(x, c), (n, d), (n,) -> (n, out_dim).

    With τ = TimeEmbedding(c) ∈ R^hidden (see :class:`TimeEmbedding`), the ``depth`` hidden
    layers are

        h_1 = σ(W_1 x + b_1 + E_1 τ),   h_l = σ(W_l h_{l−1} + b_l + E_l τ),  l = 2, …, depth,

    (additive conditioning with a separate projection E_l per layer), and the output is
    W_out h_depth + b_out. ``out_dim`` defaults to ``dim``; ``zero_last`` zero-initialises
    the output layer (off by default).

    ``conditioning`` chooses how the noise level enters: ``"add"`` as above; ``"film"`` also
    scales each unit, h_l = σ((1 + G_l τ) ⊙ (W_l h_{l−1} + b_l) + E_l τ) (FiLM, Perez et al.
    2018), so the sharpness of a unit can change with the noise level; ``"input"``
    concatenates the sinusoidal embedding e(c) to the input and nothing else (no embedding MLP
    and no projections: about a third of the parameters and work of ``"add"`` at the same
    width, the network of torchcfm's examples). ``fourier=K > 0`` feeds the network [x,
    sin(2^k π x), cos(2^k π x)], k = 0, …, K − 1, per coordinate instead of x (the positional
    encoding of Mildenhall et al. 2020; Tancik et al. 2020 show that it lifts an MLP's bias
    towards smooth functions, which blurs sharp edges of a density).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        hidden: int = 256,
        depth: int = 3,
        emb_dim: int = 64,
        activation: Activation = "silu",
        zero_last: bool = False,
        conditioning: Literal["add", "film", "input"] = "add",
        fourier: int = 0,
    ) -> None:
        super().__init__()
        _check_activation(activation)
        if depth < 1:
            raise ValueError(f"TimeMLP needs depth >= 1, got {depth}")
        if conditioning not in CONDITIONINGS:
            raise ValueError(
                f"unknown conditioning {conditioning!r}; choose one of: {', '.join(CONDITIONINGS)}"
            )
        if fourier < 0:
            raise ValueError(f"fourier must be >= 0 octaves, got {fourier}")
        self.dim = dim
        self.out_dim = dim if out_dim is None else out_dim
        self.fourier = fourier
        self.conditioning = conditioning
        in_width = dim * (1 + 2 * fourier)
        self.time: nn.Module
        if conditioning == "input":
            self.time = SinusoidalEmbedding(emb_dim)
            in_width += emb_dim
        else:
            self.time = TimeEmbedding(emb_dim, hidden, activation)
        self.layers = nn.ModuleList(nn.Linear(in_width if i == 0 else hidden, hidden) for i in range(depth))
        self.time_proj = None
        if conditioning != "input":
            self.time_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.act = _ACTIVATIONS[activation]()
        self.out = nn.Linear(hidden, self.out_dim)
        if zero_last:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.time_scale = None
        if conditioning == "film":
            self.time_scale = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
            for lin in self.time_scale:  # created last, zero: starts as the additive network
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, c: Tensor | float) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"TimeMLP expects x of shape (n, {self.dim}), got {tuple(x.shape)}")
        tau = self.time(broadcast_condition(c, x.shape[0], x))  # (n, hidden), or (n, emb_dim) for input
        h = x
        if self.fourier:
            freqs = math.pi * 2.0 ** torch.arange(self.fourier, dtype=x.dtype, device=x.device)
            angles = (x[:, :, None] * freqs).flatten(1)  # (n, d K)
            h = torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=1)
        if self.time_proj is None:  # conditioning="input"
            h = torch.cat([h, tau], dim=1)
            for layer in self.layers:
                h = self.act(layer(h))
            return self.out(h)
        for i, (layer, proj) in enumerate(zip(self.layers, self.time_proj, strict=True)):
            pre = layer(h)
            if self.time_scale is not None:
                pre = pre * (1.0 + self.time_scale[i](tau))
            h = self.act(pre + proj(tau))
        return self.out(h)
