"""A small noise-conditioned U-Net for images (e.g. 8×8 digits), without attention."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genmodels.nets.time import TimeEmbedding, broadcast_condition


class ResBlock(nn.Module):
    """h ↦ S h + conv₂(σ(GN(conv₁(σ(GN(h))) + E τ))), (n, c_in, H, W), (n, t) -> (n, c_out, H, W).

    GN is GroupNorm (per sample, so no coupling across the batch), σ is SiLU, conv₁ and conv₂ are
    3×3 convolutions, E τ is a linear projection of the time features τ added per channel, and S is
    the identity when c_in = c_out and a 1×1 convolution otherwise.
    """

    def __init__(self, c_in: int, c_out: int, temb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip: nn.Module = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, h: Tensor, tau: Tensor) -> Tensor:
        r = self.conv1(nn.functional.silu(self.norm1(h)))
        r = r + self.time_proj(tau)[:, :, None, None]
        r = self.conv2(nn.functional.silu(self.norm2(r)))
        return self.skip(h) + r


class Downsample(nn.Module):
    """A stride-2 3×3 convolution, (n, c, H, W) -> (n, c, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(h)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling then a 3×3 convolution, (n, c, H, W) -> (n, c, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """A noise-conditioned U-Net, (x, c) ↦ f(x, c), (n, C, H, W), (n,) -> (n, C, H, W).

    With widths c_i = base · mults[i] for the levels i = 0, …, L − 1 (L = len(mults)) and the time
    features τ = TimeEmbedding(c) ∈ R^(4 base):

    * a 3×3 input convolution C -> base;
    * down path: at level i a :class:`ResBlock` (-> c_i) whose output s_i is kept as a skip, then
      (except at the last level) a stride-2 :class:`Downsample` halving H and W;
    * a middle :class:`ResBlock` at width c_{L−1};
    * up path, i = L − 1, …, 0: concatenate s_i on the channels, a :class:`ResBlock` (-> c_i),
      then (except at level 0) an :class:`Upsample` (nearest ×2 + conv);
    * GroupNorm, SiLU and a 3×3 output convolution c_0 -> C.

    H and W must be divisible by 2^(L−1). With ``image_shape = (C, H, W)`` given (which then fixes
    ``channels``), flattened inputs of shape (n, C·H·W) are accepted too and the output is returned
    flattened. Every width (base · mult) must be divisible by ``groups``.
    """

    def __init__(
        self,
        channels: int = 1,
        base: int = 32,
        mults: tuple[int, ...] = (1, 2),
        emb_dim: int = 64,
        groups: int = 8,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        if len(mults) < 1:
            raise ValueError("UNet needs at least one level (mults must be non-empty)")
        widths = [base * m for m in mults]
        if any(w <= 0 or w % groups != 0 for w in widths):
            raise ValueError(f"every width base·mult {widths} must be a positive multiple of groups={groups}")
        if image_shape is not None:
            image_shape = (int(image_shape[0]), int(image_shape[1]), int(image_shape[2]))
            channels = image_shape[0]
        self.channels = channels
        self.image_shape = image_shape
        self.factor = 2 ** (len(mults) - 1)
        if image_shape is not None:
            self._check_hw(image_shape[1], image_shape[2], image_shape)
        temb_dim = 4 * base
        self.time = TimeEmbedding(emb_dim, temb_dim)
        self.inp = nn.Conv2d(channels, base, 3, padding=1)

        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        width = base
        for i, w in enumerate(widths):
            self.down_blocks.append(ResBlock(width, w, temb_dim, groups))
            width = w
            if i < len(widths) - 1:
                self.downsamples.append(Downsample(w))
        self.mid = ResBlock(width, width, temb_dim, groups)

        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i in reversed(range(len(widths))):
            self.up_blocks.append(ResBlock(width + widths[i], widths[i], temb_dim, groups))
            width = widths[i]
            if i > 0:
                self.upsamples.append(Upsample(width))

        self.out_norm = nn.GroupNorm(groups, width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def _check_hw(self, H: int, W: int, shape: tuple[int, ...]) -> None:
        if H % self.factor != 0 or W % self.factor != 0:
            raise ValueError(
                f"UNet with {int(math.log2(self.factor)) + 1} levels needs H and W divisible by "
                f"{self.factor}, got input shape {shape}"
            )

    def forward(self, x: Tensor, c: Tensor | float) -> Tensor:
        shape = tuple(x.shape)
        flat = x.ndim == 2
        if flat:
            if self.image_shape is None:
                raise ValueError(
                    f"UNet got flattened input of shape {shape}; build it with image_shape=(C, H, W) "
                    "to accept flattened inputs"
                )
            if x.shape[1] != math.prod(self.image_shape):
                raise ValueError(
                    f"UNet built for image_shape={self.image_shape} expects flattened input of shape "
                    f"(n, {math.prod(self.image_shape)}), got {shape}"
                )
            x = x.reshape(x.shape[0], *self.image_shape)
        elif x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"UNet expects input of shape (n, {self.channels}, H, W), got {shape}")
        self._check_hw(x.shape[2], x.shape[3], shape)

        tau = self.time(broadcast_condition(c, x.shape[0], x))  # (n, 4 base)
        h = self.inp(x)
        skips: list[Tensor] = []
        for i, block in enumerate(self.down_blocks):
            h = block(h, tau)
            skips.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
        h = self.mid(h, tau)
        for j, block in enumerate(self.up_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), tau)
            if j < len(self.upsamples):
                h = self.upsamples[j](h)
        out = self.out(nn.functional.silu(self.out_norm(h)))
        return out.reshape(shape) if flat else out


def time_network(
    dim: int,
    net: str,
    *,
    hidden: int,
    depth: int,
    emb_dim: int,
    activation: str = "silu",
    conditioning: str = "add",
    fourier: int = 0,
) -> nn.Module:
    """The noise- or time-conditioned network of the diffusion and flow-matching families:
    ``net="mlp"``, a :class:`~genmodels.nets.time.TimeMLP` of width ``hidden``; ``"unet"``, a
    :class:`UNet` for square one-channel images (dim = side², side even) with 8·max(1, hidden/64)
    base channels (a multiple of its 8 groups at any width; 32 at the default 256)."""
    from genmodels.nets.time import TimeMLP

    if net == "unet":
        side = math.isqrt(dim)
        if side * side != dim or side % 2:
            raise ValueError(f"net=unet needs square one-channel images with an even side; dim={dim}")
        return UNet(base=8 * max(1, hidden // 64), image_shape=(1, side, side), emb_dim=emb_dim)
    return TimeMLP(
        dim,
        hidden=hidden,
        depth=depth,
        emb_dim=emb_dim,
        activation=activation,  # type: ignore[arg-type]
        conditioning=conditioning,  # type: ignore[arg-type]
        fourier=fourier,
    )
