"""Generative adversarial networks: the non-saturating GAN and WGAN-GP, with PacGAN packing.

A GAN "shoots in one stroke guided by a discriminator" (tutorial §6, the golf figure: 10
balls, 1 stroke each; Highlights: a single trial that "uses a discriminator to guide the
generation"). The generator is a map x = G(z) of noise z ~ N(0, I_k); it has no density, so
these families are sample-only (``has_log_prob = False``) and are scored by the counting KL
on a grid and the VEEGAN/PacGAN mode metrics (:func:`genmodels.evaluate.evaluate_model`).
A discriminator D is trained to tell data from samples, and G follows its gradient; the
generator is fitted by a reverse-KL-like pressure, so it *chases modes* and can drop some
(tutorial §6/§7, "mode chasing"; benchmarks.md §2).

**gan** (Goodfellow et al. 2014, "Generative Adversarial Nets"). With D a logit and
σ the logistic function, the discriminator minimises the logistic loss

    L_D = −E_data[log σ(D(x))] − E_z[log(1 − σ(D(G(z))))]
        = E_data[softplus(−D(x))] + E_z[softplus(D(G(z)))],

and the generator uses the *non-saturating* loss of §3 of the paper (maximise log D(G(z))
instead of minimising log(1 − D(G(z))), which has vanishing gradients early on):

    L_G = −E_z[log σ(D(G(z)))] = E_z[softplus(−D(G(z)))].

**wgan-gp** (Gulrajani et al. 2017, "Improved Training of Wasserstein GANs", Algorithm 1).
The critic D (no sigmoid) minimises

    L_D = E_z[D(G(z))] − E_data[D(x)] + λ E_x̂[(‖∇_x̂ D(x̂)‖₂ − 1)²],
    x̂ = ε x + (1 − ε) G(z),  ε ~ U[0, 1],

a soft version of the 1-Lipschitz constraint of the Kantorovich–Rubinstein dual, checked
on random interpolates between real and generated points; the generator minimises
L_G = −E_z[D(G(z))]. Defaults follow the paper: λ = 10, n_critic = 5 critic updates per
generator update, Adam with (β₁, β₂) = (0, 0.9).

**Packing** (``pack = m``; Lin, Khetan, Fanti & Oh 2018, "PacGAN: The power of two samples
in generative adversarial networks"). The discriminator judges m samples at once: its input
is the concatenation of m independent samples, all real or all generated, so its input
dimension is m·d. A generator that collapses onto few modes makes packed fakes look alike,
which a packed discriminator sees; this penalises mode collapse. A batch of b points
becomes ⌊b/m⌋ discriminator inputs (the b mod m leftover points are not used). Packing
applies to both families; for wgan-gp the interpolates and the gradient norm live in the
packed m·d space (one ε per discriminator input). PacGAN's Table 1 (benchmarks.md §2) is
the bar: PacGAN4 captures 7.8/8 ring modes (95.9 % high-quality samples) and 24.8/25 grid
modes (93.6 %).

One training step (:meth:`GAN.step`) is ``d_steps`` discriminator updates followed by one
generator update. All d_steps updates see the step's one real batch (with fresh noise,
and fresh interpolates for wgan-gp); Algorithm 1 of WGAN-GP draws a fresh real batch for each
critic update, which for the 2-D targets here (fresh exact samples at every step) makes no
measurable difference and keeps "steps" counting generator updates. The two optimisers
(``"discriminator"`` and ``"generator"``) share the training loop's learning-rate schedule and
are both checkpointed, so a resumed run continues bit for bit. All noise comes from the
generator the loop passes in.

Under ``torchrun`` (DistributedDataParallel, :mod:`genmodels.distributed`) every pass of the
step goes through ``Model.call``: the discriminator updates differentiate
:meth:`~GAN.discriminator_loss` (fakes drawn under no_grad, so the generator gets no gradient)
and the generator update :meth:`~GAN.generator_objective` (sampling inside the call, through
the frozen discriminator); ``ddp_find_unused`` tells DDP that each pass reaches one player.
Each rank draws its own noise (fakes, interpolates) from its per-rank generator, and DDP
averages the gradients of the ranks' slice losses.

Networks: MLPs in standardized coordinates u (base.py): a ReLU generator (latent k = 8,
3 hidden layers of 256) and a LeakyReLU(0.2) discriminator (3 × 256), Adam with
(β₁, β₂) = (0.5, 0.999) for gan (the usual choice since DCGAN) and the paper's (0, 0.9) for
wgan-gp. Defaults were measured on one CPU core: gan trains 10 000 steps at lr 1e-3
(≈ 2.5–5 min, depending on the load), wgan-gp 2000 steps at lr 1e-4 (each step is 5 critic
updates with a double backward pass; ≈ 2.5 min unloaded; lr 3e-4 oscillated and lost
8gaussians). ``gan`` packs by default (``pack = 4``): unpacked, it collapsed to one mode of
8gaussians in 1500 steps where pack 4 kept all 8, and on ring8 (10 000 steps) it spread its
samples so unevenly over the modes that the reverse KL was 1.28 against 0.12 packed.
Measured with the defaults (seed 0, evaluate_model, 2500 samples for the mode metrics):

- ring8: 8/8 modes, 85 % HQ, reverse KL 0.12, counting KL 0.62 at n = 5000 (PacGAN4: 7.8, 95.9 %, 0.07);
- grid25: 25/25 modes, 22 % HQ, reverse KL 0.33, counting KL 1.73 (PacGAN4: 24.8, 93.6 %, 0.04).

Convolutional networks (``net="conv"``, for square one-channel images, dim = side², side
divisible by 4, e.g. 8×8 digits) are the trunks of :mod:`genmodels.nets.conv`, DCGAN-style
(Radford et al. 2016) without batch normalisation (ruled out for the WGAN-GP critic, whose
penalty is per input: Gulrajani et al. 2017, §4): the generator maps z linearly to a
(4c, side/4, side/4) map (2×2 for digits) and upsamples it (nearest ×2 + 3×3 convolution) to
the side×side image, c = g_hidden / 8; the discriminator reads an image with stride-2
convolutions down to (4c, side/4, side/4), c = d_hidden / 8, and a linear layer to the logit.
Packing is natural there: the m packed samples are the m input channels of one image
(the packed row of m·d values is the m planes one after the other). g_depth and d_depth
are for the MLPs only.

Sharp modes are the hard part on a CPU budget: on grid25 (σ = 0.05 on a lattice of pitch 2)
the generator first matches the coarse density, a near-uniform square, and the discriminator
then sees only the fine-scale difference, which an MLP learns slowly (spectral bias); the
discriminator sat at D ≈ ½ on both sides for thousands of steps before it resolved the modes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from genmodels.models.base import Model, ModelConfig, NotSupportedError
from genmodels.nets.conv import ConvDecoder, ConvEncoder, conv_base, image_side
from genmodels.types import LogDensity

GANActivation = Literal["relu", "leaky_relu", "silu", "tanh", "elu", "gelu"]
_ACTIVATIONS: dict[str, Any] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def _mlp(in_dim: int, out_dim: int, hidden: int, depth: int, activation: str) -> nn.Sequential:
    """x ↦ W_L σ(… σ(W_1 x + b_1) …) + b_L with ``depth`` hidden layers of width ``hidden``."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), _ACTIVATIONS[activation]()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


@dataclass
class GANConfig(ModelConfig):
    """Options of the non-saturating GAN (and, with other defaults, of WGAN-GP)."""

    net: Literal["mlp", "conv"] = "mlp"
    """generator and discriminator: MLPs, or DCGAN-style convolutional networks for square
    one-channel images (dim = side², side divisible by 4; module docstring)"""
    latent_dim: int = 8
    """dimension k of the generator's noise z ~ N(0, I_k)"""
    g_hidden: int = 256
    """width of the generator's hidden layers (conv: g_hidden / 8 base channels, at least 8)"""
    g_depth: int = 3
    """hidden layers of the generator (MLP only)"""
    g_activation: GANActivation = "relu"
    """nonlinearity of the generator"""
    d_hidden: int = 256
    """width of the discriminator's hidden layers (conv: d_hidden / 8 base channels, at least 8)"""
    d_depth: int = 3
    """hidden layers of the discriminator (MLP only)"""
    d_activation: GANActivation = "leaky_relu"
    """nonlinearity of the discriminator ("leaky_relu" has slope 0.2)"""
    pack: int = 4
    """PacGAN packing m: the discriminator judges m samples concatenated (input m·d); 1 is
    the plain GAN of Goodfellow et al."""
    d_steps: int = 1
    """discriminator (critic) updates per generator update (n_critic)"""
    beta1: float = 0.5
    """Adam β₁ of both optimisers (0.5: the usual GAN choice since DCGAN)"""
    beta2: float = 0.999
    """Adam β₂ of both optimisers"""


@dataclass
class WGANGPConfig(GANConfig):
    """Options of WGAN-GP (Gulrajani et al. 2017; defaults from their Algorithm 1)."""

    pack: int = 1
    """PacGAN packing m: the critic judges m samples concatenated (input m·d)"""
    d_steps: int = 5
    """critic updates per generator update (n_critic; the paper uses 5)"""
    beta1: float = 0.0
    """Adam β₁ of both optimisers (the paper: 0)"""
    beta2: float = 0.9
    """Adam β₂ of both optimisers (the paper: 0.9)"""
    gp_weight: float = 10.0
    """λ, the weight of the gradient penalty E[(‖∇D(x̂)‖ − 1)²] (the paper: 10)"""


class GAN(Model):
    """Non-saturating GAN (Goodfellow et al. 2014) with optional PacGAN packing; sample-only."""

    family = "gan"
    autocast_safe = True  # a regression/classification loss: bf16-safe
    Config = GANConfig
    has_log_prob = False
    #: 40,000 steps (≈ 5½ minutes on one core): ring8 HQ 85 % at 10,000 steps, 98 % at 40,000;
    #: grid25 HQ 22 % → 68 % (docs/benchmarks.md)
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 40_000, "lr": 1e-3, "batch_size": 256}
    tour_steps: ClassVar[int] = 3000
    image_options: ClassVar[dict[str, Any]] = {"net": "conv"}
    #: each backward pass of :meth:`step` reaches one player only (module docstring)
    ddp_find_unused: ClassVar[bool] = True

    def __init__(self, dim: int, config: GANConfig | None = None) -> None:
        super().__init__(dim, config)
        c: GANConfig = self.config
        if c.net not in ("mlp", "conv"):
            raise ValueError(f"unknown net {c.net!r}; choose one of: mlp, conv")
        for name in ("latent_dim", "g_hidden", "d_hidden", "pack", "d_steps"):
            if getattr(c, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(c, name)}")
        for name in ("g_depth", "d_depth"):
            if getattr(c, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(c, name)}")
        for name in ("g_activation", "d_activation"):
            if getattr(c, name) not in _ACTIVATIONS:
                choices = ", ".join(_ACTIVATIONS)
                raise ValueError(f"unknown {name} {getattr(c, name)!r}; choose one of: {choices}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(c, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(c, name)}")
        self.generator_net: nn.Module
        self.discriminator: nn.Module
        if c.net == "conv":  # packed samples enter the discriminator as c.pack channels
            side = image_side(dim, "conv")
            g_act, d_act = _ACTIVATIONS[c.g_activation], _ACTIVATIONS[c.d_activation]
            self.generator_net = ConvDecoder(c.latent_dim, side, base=conv_base(c.g_hidden), activation=g_act)
            self.discriminator = ConvEncoder(
                side, 1, channels=c.pack, base=conv_base(c.d_hidden), activation=d_act
            )
        else:
            self.generator_net = _mlp(c.latent_dim, dim, c.g_hidden, c.g_depth, c.g_activation)
            self.discriminator = _mlp(c.pack * dim, 1, c.d_hidden, c.d_depth, c.d_activation)

    # -- packing ----------------------------------------------------------------------
    def pack_samples(self, u: torch.Tensor) -> torch.Tensor:
        """(b, d) → (⌊b/m⌋, m·d): row i is samples i·m, …, i·m + m − 1 concatenated.

        The b mod m leftover rows are dropped; fewer than m rows is an error.
        """
        m = self.config.pack
        b = u.shape[0]
        if b < m:
            raise ValueError(f"a batch of {b} cannot be packed by pack={m}: use batch_size >= pack")
        return u[: (b // m) * m].reshape(b // m, m * u.shape[1])

    def critic(self, u: torch.Tensor) -> torch.Tensor:
        """D on a batch of (unpacked) points u (b, d): one logit per packed input, (⌊b/m⌋,)."""
        return self.discriminator(self.pack_samples(u)).squeeze(-1)

    def generate(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """n generator outputs G(z) in u-space, z ~ N(0, I) drawn from ``generator``."""
        z = torch.randn(
            n, self.config.latent_dim, generator=generator, device=self.device, dtype=self.scale.dtype
        )
        return self.generator_net(z)

    # -- the two losses ---------------------------------------------------------------
    def discriminator_loss(
        self, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """Logistic loss E[softplus(−D(real))] + E[softplus(D(fake))]; ``"loss"`` is minimised."""
        d_real, d_fake = self.critic(real), self.critic(fake)
        loss = nn.functional.softplus(-d_real).mean() + nn.functional.softplus(d_fake).mean()
        return {
            "loss": loss,
            "d_real": torch.sigmoid(d_real).mean().detach(),
            "d_fake": torch.sigmoid(d_fake).mean().detach(),
        }

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Non-saturating: −E[log σ(D(G(z)))] = E[softplus(−D(G(z)))]."""
        return nn.functional.softplus(-self.critic(fake)).mean()

    def generator_objective(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """The generator's loss on n fresh samples G(z): :meth:`generator_loss` of
        :meth:`generate`, in one method so that the generator's graph runs inside
        ``Model.call`` (the DDP wrapper's forward under torchrun)."""
        return self.generator_loss(self.generate(n, generator))

    # -- optimisation -----------------------------------------------------------------
    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        self._optimizers = {
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas),
            "generator": torch.optim.Adam(self.generator_net.parameters(), lr=lr, betas=betas),
        }
        return self._optimizers

    def step(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """``d_steps`` discriminator updates on the batch, then one generator update.

        Logs ``loss`` (the discriminator's loss, averaged over its updates), ``g_loss`` and
        the family's diagnostics. Raises :class:`~genmodels.train.TrainingDiverged` when a
        loss is not finite.
        """
        opt_d, opt_g = self.optimizers["discriminator"], self.optimizers["generator"]
        real = self.normalize(batch)
        b = real.shape[0]
        sums: dict[str, float] = {}
        for _ in range(self.config.d_steps):
            with torch.no_grad():
                fake = self.generate(b, generator)
            opt_d.zero_grad(set_to_none=True)
            out = self.call("discriminator_loss", real, fake, generator)
            self._check(out["loss"], "discriminator")
            out["loss"].backward()
            opt_d.step()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        logs = {k: v / self.config.d_steps for k, v in sums.items()}

        # The generator step: gradients flow through the frozen D into G.
        opt_g.zero_grad(set_to_none=True)
        self.discriminator.requires_grad_(False)
        try:
            g_loss = self.call("generator_objective", b, generator)
            self._check(g_loss, "generator")
            g_loss.backward()
        finally:
            self.discriminator.requires_grad_(True)
        opt_g.step()
        logs["g_loss"] = float(g_loss.detach())
        return logs

    def _check(self, loss: torch.Tensor, which: str) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            from genmodels.train import TrainingDiverged

            raise TrainingDiverged(f"{self.family} {which} loss is {value}; try a lower --lr")

    # -- the generative side ----------------------------------------------------------
    def _sample(self, n: int, *, generator: torch.Generator | None, **options: Any) -> torch.Tensor:
        """u = G(z), z ~ N(0, I_k), one network pass."""
        if options:
            raise TypeError(f"{self.family} sampling takes no options, got {', '.join(options)}")
        return self.generate(n, generator)

    def log_prob(self, x: torch.Tensor, **options: Any) -> LogDensity:
        raise NotSupportedError(
            f"the {self.family} family is an implicit model with no log-density (has_log_prob=False); "
            "it can only be sampled: score it with evaluate_model (counting KL on a grid and mode metrics)"
        )


class WGANGP(GAN):
    """WGAN-GP (Gulrajani et al. 2017, Algorithm 1) with optional PacGAN packing; sample-only."""

    family = "wgan-gp"
    Config = WGANGPConfig
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 2000, "lr": 1e-4, "batch_size": 256}
    tour_steps: ClassVar[int] = 300

    def __init__(self, dim: int, config: WGANGPConfig | None = None) -> None:
        super().__init__(dim, config)
        if not (self.config.gp_weight >= 0 and math.isfinite(self.config.gp_weight)):
            raise ValueError(f"gp_weight must be a finite number >= 0, got {self.config.gp_weight}")

    def gradient_penalty(
        self, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """E_x̂[(‖∇_x̂ D(x̂)‖₂ − 1)²] on x̂ = ε·real + (1 − ε)·fake, ε ~ U[0, 1] per (packed)
        discriminator input; the gradient is in the packed m·d input space. Differentiable
        (create_graph), so it can be minimised over D's weights."""
        real_p, fake_p = self.pack_samples(real), self.pack_samples(fake)
        eps = torch.rand(real_p.shape[0], 1, generator=generator, device=real.device, dtype=real.dtype)
        x_hat = (eps * real_p + (1.0 - eps) * fake_p).detach().requires_grad_(True)
        out = self.discriminator(x_hat).sum()
        (grad,) = torch.autograd.grad(out, x_hat, create_graph=True)
        return ((grad.norm(dim=1) - 1.0) ** 2).mean()

    def discriminator_loss(
        self, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """E[D(fake)] − E[D(real)] + λ·gradient penalty; ``wasserstein`` = E[D(real)] − E[D(fake)]."""
        w = self.critic(real).mean() - self.critic(fake).mean()
        gp = self.gradient_penalty(real, fake, generator)
        return {"loss": -w + self.config.gp_weight * gp, "wasserstein": w.detach(), "gp": gp.detach()}

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """−E[D(G(z))]."""
        return -self.critic(fake).mean()
