"""Small convolutional trunks for square images stored as flat vectors: image → vector, vector → image.

Shared by the families whose networks read or write whole images: the VAE (encoder q_φ(z|x),
decoder μ_θ(z)), the GANs (generator, discriminator / critic), the EBM (energy f_θ(u), also
inside the Divergence Triangle and CoopNets) and CoopNets' generator. The layout follows DCGAN
(Radford, Metz & Chintala 2016, §3): strided convolutions instead of pooling to downsample, no
fully connected hidden layers, only a linear map between the flat vector and the smallest
feature map. Two departures, both for reasons of this library:

- **no batch normalisation**: it couples the samples of a batch, so the critic's output for one
  input would depend on the others, which the per-sample gradient penalty of WGAN-GP forbids
  (Gulrajani et al. 2017, §4, "No critic batch normalization"), and a VAE's bound for one image
  would depend on the batch it is evaluated in; at these sizes (8×8 digits, a few thousand
  steps) the trunks train without it;
- **upsampling by nearest-neighbour ×2 then a 3×3 convolution** rather than a transposed
  convolution, whose uneven kernel overlap draws checkerboard patterns (Odena, Dumoulin & Olah
  2016, "Deconvolution and checkerboard artifacts").

With base width c and :data:`LEVELS` = 2 resolution changes, for a side s divisible by 4:

    ConvEncoder:  (C, s, s) —conv 3×3→ (c, s, s) —conv 3×3 /2→ (2c, s/2, s/2)
                  —conv 3×3 /2→ (4c, s/4, s/4) —flatten, linear→ out_dim
    ConvDecoder:  in_dim —linear→ (4c, s/4, s/4) —up ×2, conv 3×3→ (2c, s/2, s/2)
                  —up ×2, conv 3×3→ (c, s, s) —conv 3×3→ (C, s, s)

every convolution but the last followed by the activation. For 8×8 digits the smallest map is
2×2. Flat vectors are channel-major: a (C, s, s) image is the vector of its C planes one after
the other, so a vector of C·s² values chunked in C equal parts gives the planes (the VAE's
decoder writes its mean and log-std as two planes; PacGAN's m packed samples are m planes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

#: resolution changes of the trunks (stride-2 convolutions down, ×2 upsamplings up)
LEVELS = 2


def image_side(dim: int, net: str, option: str = "net") -> int:
    """The side s of square one-channel images with dim = s² pixels, s divisible by 2^LEVELS.

    Raises a one-line ValueError naming the option ``{option}={net}`` otherwise (e.g. the EBM's
    ``energy=conv``)."""
    side = math.isqrt(max(dim, 0))
    factor = 2**LEVELS
    if side * side != dim or side == 0 or side % factor:
        raise ValueError(
            f"{option}={net} needs square one-channel images with a side divisible by {factor} "
            f"(dim = side², e.g. 64 for 8×8); dim={dim}"
        )
    return side


def conv_base(hidden: int) -> int:
    """Base width c of a trunk from a family's MLP width option: hidden / 8, at least 8 (as the
    diffusion family's U-Net)."""
    return max(8, hidden // 8)


class _Trunk(nn.Module):
    @staticmethod
    def _check_sizes(side: int, channels: int, base: int, vector: int, name: str) -> None:
        if side % 2**LEVELS or side < 2**LEVELS:
            raise ValueError(f"side must be a positive multiple of {2**LEVELS}, got {side}")
        if channels < 1 or base < 1 or vector < 1:
            raise ValueError(f"channels, base and {name} must be >= 1, got {channels}, {base}, {vector}")

    def _check_width(self, x: Tensor, width: int, what: str) -> None:
        if x.shape[-1] != width:
            name = type(self).__name__
            raise ValueError(f"{name} expects {what} of width {width}, got shape {tuple(x.shape)}")


class ConvEncoder(_Trunk):
    """Image → vector, (…, C·s²) → (…, out_dim); the layout is in the module docstring.

    ``activation`` is a factory of the nonlinearity module (e.g. ``nn.SiLU``); ``zero_last``
    initialises the final linear map to zero, so the output starts at exactly 0 (an energy
    network f ≡ 0 leaves an EBM at its reference, as the MLP's ``zero_last``)."""

    def __init__(
        self,
        side: int,
        out_dim: int,
        *,
        channels: int = 1,
        base: int = 16,
        activation: Callable[[], nn.Module] = nn.SiLU,
        zero_last: bool = False,
    ) -> None:
        super().__init__()
        self._check_sizes(side, channels, base, out_dim, "out_dim")
        self.side, self.channels = side, channels
        layers: list[nn.Module] = [nn.Conv2d(channels, base, 3, padding=1), activation()]
        width = base
        for _ in range(LEVELS):
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), activation()]
            width *= 2
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(width * (side // 2**LEVELS) ** 2, out_dim)
        if zero_last:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        self._check_width(x, self.channels * self.side**2, "images flattened")
        lead = x.shape[:-1]
        h = self.convs(x.reshape(-1, self.channels, self.side, self.side))
        return self.linear(h.flatten(1)).reshape(*lead, -1)


class ConvDecoder(_Trunk):
    """Vector → image, (…, in_dim) → (…, C·s²) channel-major; the layout is in the module docstring.

    ``activation`` is a factory of the nonlinearity module (e.g. ``nn.ReLU``); the output is
    linear (no squashing: the families work in standardized coordinates). ``zero_last``
    initialises the final convolution to zero, so the output starts at exactly 0 (CoopNets adds
    it to an affine map that then alone sets the untrained generator)."""

    def __init__(
        self,
        in_dim: int,
        side: int,
        *,
        channels: int = 1,
        base: int = 16,
        activation: Callable[[], nn.Module] = nn.SiLU,
        zero_last: bool = False,
    ) -> None:
        super().__init__()
        self._check_sizes(side, channels, base, in_dim, "in_dim")
        self.in_dim, self.side, self.channels = in_dim, side, channels
        width = base * 2**LEVELS
        self.start = (width, side // 2**LEVELS, side // 2**LEVELS)
        self.linear = nn.Sequential(nn.Linear(in_dim, math.prod(self.start)), activation())
        layers: list[nn.Module] = []
        for _ in range(LEVELS):
            layers += [
                nn.Upsample(scale_factor=2.0, mode="nearest"),
                nn.Conv2d(width, width // 2, 3, padding=1),
            ]
            layers += [activation()]
            width //= 2
        last = nn.Conv2d(width, channels, 3, padding=1)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        self.convs = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        self._check_width(z, self.in_dim, "vectors")
        lead = z.shape[:-1]
        h = self.linear(z.reshape(-1, self.in_dim)).reshape(-1, *self.start)
        return self.convs(h).reshape(*lead, self.channels * self.side**2)
