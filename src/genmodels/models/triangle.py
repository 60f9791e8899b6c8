"""Divergence triangle: a generator, an energy-based model and an inference model trained jointly.

Han, Nijkamp, Fang, Hill, Zhu & Wu, "Divergence Triangle for Joint Training of Generator
Model, Energy-based Model, and Inferential Model", CVPR 2019 (arXiv:1812.10907, §3);
the tutorial's first reference (``shared/tutorial.md`` §8, item 1). Three models, three joint
distributions over (x, z):

    Q(x, z) = q_data(x) q_φ(z|x)     the data with the inference model (encoder),
    P(x, z) = p(z) p_θ(x|z)          the generator: z ~ N(0, I), x = g_θ(z) + σ ε,
    Π(x, z) = π_α(x) q_φ(z|x)        the energy-based model with the same inference model,

and one objective, minimised over the generator θ and the inference model φ and maximised
over the energy α:

    Δ(θ, α, φ) = KL(Q‖P) + KL(P‖Π) − KL(Q‖Π).

Its three sides, each a method here (per-sample Monte-Carlo terms, standardized coordinates
u; KLs are invariant under the affine standardization, the constants are not):

- **KL(Q‖P)**, the VAE side (:meth:`Triangle.vae_terms`): KL(Q‖P) = −H(q_data) − E_data ELBO(x),
  so minimising it over (θ, φ) is maximising the ELBO; it covers the data's modes ("wake").
- **KL(P‖Π)**, the mode-chasing side (:meth:`Triangle.mode_chasing_terms`): with (z, x) ~ P,

      KL(P‖Π) = E_P[log p(z) + log p_θ(x|z) − log q_φ(z|x) − log π̃_α(x)] + log Z(α),

  π̃ the unnormalized EBM density. The generator moves its samples up the EBM's log-density
  (like a GAN's generator following its critic) while −E_P log q_φ(z|x) keeps it from
  collapsing: it bounds the generator's intractable entropy, −H(p_θ(x)) ≤ E_P[log p(z) +
  log p_θ(x|z) − log q_φ(z|x)], with equality when q_φ is the generator's posterior. For φ this
  term is the "sleep" phase of wake–sleep: the encoder learns to invert synthesized pairs.
- **KL(Q‖Π)**, the EBM's data side (:meth:`Triangle.data_energy_terms`): the q_φ factors
  cancel, KL(Q‖Π) = KL(q_data‖π_α) = −H(q_data) − E_data log π̃_α(x) + log Z(α).

For α only KL(P‖Π) − KL(Q‖Π) matters; log Z cancels and it is
E_data log π̃_α − E_{p_θ} log π̃_α + const: maximising it is contrastive divergence with the
generator as the sampler (the tutorial's CD, §3 with its [C] correction, with p_θ in place of
the MCMC-evolved p_θt), gradient E_data[∇f_α] − E_{p_θ}[∇f_α] with no MCMC at all
(:meth:`Triangle.ebm_loss`). Summing the three sides, H(q_data) and log Z cancel, so Δ
itself is estimated without either (logged as ``delta``).

**The parts come from the library.** The generator and inference model are the VAE family's
Gaussian decoder and encoder (:class:`~genmodels.models.vae.VAE`, a submodule ``vae``; its
ELBO, its importance-weighted bound and its sampler). The energy-based model is the EBM
family's (:class:`~genmodels.models.ebm.EBM`, a submodule ``ebm``): π̃_α(u) = exp(f_α(u)) q(u)
with q a Gaussian fitted to the data in :meth:`prepare` and f_α an MLP (``net="conv"``: a
convolutional trunk) whose output layer starts at zero (so π starts at q). The reference q is
a re-parametrisation of the paper's π_α = exp(f_α)/Z: it does not change any gradient above,
it keeps Z finite, and it gives the quadrature box. Its log Z comes from the EBM's quadrature
in 1-D and 2-D (exact up to the reported grid error) and from AIS otherwise (an estimate).

**One training step** (:meth:`Triangle.step`) draws a batch of (z, x̃) ~ P by
reparameterisation, then (1) takes an Adam step of α on E_P f_α(x̃) − E_data f_α(x) (max Δ),
plus by default the energy penalty λ(E f(x)² + E f(x̃)²) of Du & Mordatch 2019 (``energy_reg``:
without it the game, linear in f, ran away in short runs; the option's docstring gives its
cost), and (2) an Adam step of θ and φ on KL(Q‖P) + KL(P‖Π) (min Δ, minus constants). Each
has its own optimiser (``ebm``, ``generator``, ``inference``) and learning-rate multiplier.
The generator's noise σ is fixed (``decoder_std``), as in the paper.

**Measured** (8gaussians, defaults, seed 0, 2000 steps, cosine schedule, ≈ 65 s on a shared
CPU core): the EBM's KL to the truth (quadrature, exact) fell from 1.41 nats (the fitted
Gaussian it starts as) to 0.43 ± 0.01, where it had already been at 600 steps (the energy
penalty's bias, see ``energy_reg``); the generator's counting KL (50 × 50 grid, 20 000 draws;
null bias 0.06) fell from 4.6 to 0.60, its IWAE-bound KL (k = 100) to ≤ 0.55. On rings (same
settings) the EBM went from 0.95 to only 0.86 and the generator reached 0.80.

**Why the EBM stalls** (measured, see the options ``negative_steps``, ``negative_restart``,
``energy_reg_decay``): the α-step's gradient E_data ∇f − E_{p_θ} ∇f lives only where the data
or the generator put mass, and log Z cancels from Δ, so nothing in the objective holds π_α's
mass down elsewhere; the generator's KL(P‖Π) is mode-seeking and never sees it. Without the
penalty the EBM's KL grew (mass where no sample goes, at a small energy gap) or the game ran
away; MCMC-refined negatives, with or without restarts from q, and a fading penalty did not
beat the constant penalty on both 8gaussians and rings, nor did a slower EBM (``ebm_lr_mult``
0.2 with λ = 0.02: 1.08 and 0.92 at 1200 steps).

**Persistent chains** (``buffer_chains``, as in the ``coop`` family, where they took its EBM
from 0.45 to 0.09 on 8gaussians): the EBM's negatives pooled over the generator's draws and
the ``ebm`` family's parallel-tempered replay buffer, which does visit the stray mass. Here
they helped the rings' EBM a lot (0.86 → 0.48 at λ = 0.1, 0.57 at λ = 0.03) but 8gaussians'
only with the penalty nearly gone (λ = 0: 0.19, generator 0.30), which breaks the rings (EBM
1.84): the penalty's bias toward q, not missing negatives, is what holds 8gaussians' EBM at
0.43. Off by default; the option's docstring has the table.

**Densities.** ``log_prob(x)`` (no options) is the EBM's, log π_α(x), kind "exact" in 2-D
(quadrature) and "estimate" (AIS) otherwise: the better defined of the two, since the
generator's marginal p_θ(x) = ∫ p(z) p_θ(x|z) dz has only bounds. The submodules ``ebm`` and
``vae`` work in this model's standardized coordinates u (their own standardization is the
identity): score them through this model (``log_prob``, ``sample``), or map their draws back
with x = shift + scale · u. ``model="generator"`` gives
the generator's importance-weighted lower bound from the inference model (Burda et al. 2016),
kind "lower_bound". ``sample`` draws from the EBM π_α, the model whose density ``log_prob``
gives: the generator's draws, the amortized sampler the triangle trains for π_α, are the
chains' starts, refined by MALA on π_α with its step size adapted in a warm-up
(``refine_steps``, ``warmup``). ``refine_steps=0`` gives the generator's own draws g(z) + σε.
Measured (seed 0, default options): on digits (5,059 steps) the refinement took the samples'
Fréchet distance from 311 to 33–37 (two sampling seeds); on 2-D targets (3,000 steps, before
the Fourier features became the default) their grid KL from 0.59 to 0.53 (8gaussians), 0.83
to 0.52 (rings), 0.66 to 0.50 (checkerboard), 0.84 to 0.42 (2spirals), 3.62 to 2.09 (grid25).
Where the EBM itself is poor the samples show it: pinwheel after 800 steps, EBM KL 6.1, grid
KL 1.05 → 4.31 (with the Fourier features its EBM KL there is 2.0).

**Data-parallel training** (``torchrun``; :mod:`genmodels.distributed`): each rank takes its
slice of the global batch and draws its own noise (pairs of P, the encoder's draws, the MCMC);
the two passes of a step go through :meth:`Model.call`, the EBM's
(:meth:`Triangle._ebm_objective`) and the generator and inference model's
(:meth:`Triangle._generator_objective`, which makes the draws x̃ = g_θ(z) + σ ε from their noise
inside the pass), so DDP averages each side's gradient (``ddp_find_unused``: each pass reaches
one side). The MCMC (``negative_steps``, ``buffer_chains``) runs on the plain module; its step
size adapts to the acceptance averaged over the ranks, the persistent chains are the ``ebm``
family's one shared buffer (a step's min(``buffer_chains``, global batch) chains split evenly
over the ranks, all draws written in rank order), and a non-finite loss is judged on its mean
over the ranks, so all ranks stop together. The buffers stay identical on every rank without
DDP's broadcast (``ddp_sync_buffers`` False). One process is unaffected: bit for bit what it
was without DDP.

Provenance: the objective and the three models are as in ``shared/tutorial.md`` §8 item 1 (the
paper's §3 body was not reachable through the search tools, only its abstract); the
decompositions above are derived here and checked against closed forms on a linear-Gaussian
triangle in ``tests/test_triangle.py``.

Images: ``net="conv"`` makes all three networks convolutional (the small DCGAN-style trunks
of :mod:`genmodels.nets.conv`, not the paper's architectures). Not in this implementation: the
paper's extensions (learning from incomplete data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from genmodels import distributed as ddp
from genmodels.models.base import Model, ModelConfig, SampleConfig
from genmodels.models.ebm import AUTO_FOURIER_FEATURES, EBM, EBMConfig, chains_per_rank
from genmodels.models.vae import (
    _LOG_2PI,
    LOG_STD_BOUND,
    VAE,
    VAEConfig,
    _gaussian_log_prob,
    _randn,
    _soft_clamp,
)
from genmodels.nets.mlp import _ACTIVATIONS, Activation
from genmodels.types import LogDensity


@dataclass
class TriangleConfig(ModelConfig):
    """Options of the divergence-triangle family."""

    latent_dim: int = 0
    """dimension of z; 0: the data's dimension (as for the VAE)"""
    net: Literal["mlp", "conv"] = "mlp"
    """the three networks: MLPs, or for square one-channel images (dim = side², side divisible
    by 4, e.g. 8×8 digits) convolutional trunks (:mod:`genmodels.nets.conv`): the VAE's
    ``net="conv"`` encoder and decoder as inference model and generator, the EBM's
    ``energy="conv"`` as f_α. Not picked on images: on digits with a 90 s budget (seed 0) conv
    took 9× the time per step (796 steps against 7332) for the same EBM bits/dim (2.945 against
    2.942, AIS) and worse samples (FD 513 against 268, recall 0.08 against 0.57)"""
    hidden: int = 128
    """width of the generator (decoder) and inference (encoder) MLPs (conv: hidden / 8 base
    channels, at least 8)"""
    depth: int = 3
    """hidden layers of the generator and of the inference model (0: linear maps; MLPs only)"""
    activation: Activation = "silu"
    """nonlinearity of all three networks"""
    ebm_hidden: int = 128
    """width of the energy network f_α (conv: ebm_hidden / 8 base channels, at least 8)"""
    ebm_depth: int = 3
    """hidden layers of the energy network f_α (MLP only)"""
    fourier_features: int = -1
    """F > 0: the energy MLP reads random Fourier features [u, sin Bu, cos Bu], B an F × d matrix
    of N(0, s²) entries fixed at construction (the ``ebm`` family's option, Tancik et al. 2020),
    so that f_α can curve as sharply as narrow modes need; 0: the MLP reads u; -1 (auto): 64 for
    the MLP energy in 1-D and 2-D, else 0 (beyond 2-D unmeasured). EBM KL at 3,000 steps (seed
    0) without → with: ring8 3.01 → 0.46, grid25 2.72 → 0.40, 8gaussians 0.49 → 0.30, rings
    0.87 → 0.24, checkerboard 0.62 → 0.29, moons 0.20 → 0.34 (docs/benchmarks.md)"""
    fourier_scale: float = 16.0
    """s: standard deviation of the frequencies B in standardized units (fourier_features > 0)"""
    decoder_std: float = 0.15
    """σ of the generator's noise x = g_θ(z) + σ ε in standardized units, fixed as in the paper;
    0: learned, one per data dimension. On 8gaussians (1000 steps) a learned σ collapsed the
    posterior (σ → 1, the VAE's one-Gaussian optimum; generator counting KL 1.47) where σ = 0.15
    reached 0.67; 0.1 reached 0.77"""
    ebm_lr_mult: float = 1.0
    """learning rate of the energy network α, as a multiple of the training loop's"""
    generator_lr_mult: float = 1.0
    """learning rate of the generator θ, as a multiple of the training loop's"""
    inference_lr_mult: float = 1.0
    """learning rate of the inference model φ, as a multiple of the training loop's"""
    beta1: float = 0.5
    """Adam β₁ of the three optimisers (0.5, the usual choice for adversarial games)"""
    energy_reg: float = 0.1
    """weight λ of the penalty λ·(mean f(x)² + mean f(x̃)²) on the EBM step (Du & Mordatch
    2019); 0: the paper's objective alone. Without it the EBM, linear in f, ran away on
    8gaussians (energy gap in the thousands, EBM KL 5–100 nats after 600 steps) while the
    generator lagged behind. The penalty has a cost: the α-step's optimum is then
    f = (q_data − p_θ)/(2λ(q_data + p_θ)), which tends to 0 (π → the reference q) as the
    generator fits the data, so it bounds how far π improves; 0.03 gave EBM KL 0.71, 0.1 gave
    0.42 (1000 steps)"""
    energy_reg_decay: Literal["none", "lr"] = "none"
    """"lr": the energy penalty's weight follows the learning-rate schedule, λ_t = λ · lr_t / lr
    (with the default cosine schedule it fades to 0 by the last step, removing its bias while
    the EBM's steps are already small); "none": λ throughout. Not a default: without the penalty
    the EBM's mass escapes to where neither the data nor the generator go (the α-step has no
    gradient there, the energy gap stays small): 2000 steps gave EBM KL 1.69 on 8gaussians and
    15.6 on rings (constant λ: 0.43 and 0.86)"""
    gap_reg: float = 0.0
    """weight γ of the penalty γ·(mean f(x) − mean f(x̃))² on the EBM step (as the EBM family's
    ``gap_reg``): zero in expectation once the generator fits, it caps how fast the energy
    runs away from a generator that lags behind"""
    negative_steps: int = 0
    """MCMC steps of the EBM's kernel (MALA, step size adapted to its target acceptance) on π̃_α
    applied to the generator's draws before they serve as the EBM's negative samples (the
    tutorial's CD, §3 [C], started at p_θ); 0: the draws themselves (the paper's α-step). Not a
    default: with energy_reg = 0 and 5 steps, 8gaussians (2000 steps) ended at EBM KL 1.43
    (generator 0.39), no better than the untrained 1.41"""
    negative_restart: float = 0.0
    """fraction of the EBM's negative chains started at draws of its reference q instead of the
    generator's draws (then refined by the same ``negative_steps``): they explore the EBM's mass
    where the generator never goes. With energy_reg = 0, 10 steps and 0.25 (1500 steps): EBM KL
    0.41 on 8gaussians but a runaway on rings (682 nats, energy gap 135)"""
    buffer_chains: int = 0
    """persistent chains of π_α advanced per step (the ``ebm`` family's replay buffer with
    parallel tempering, :meth:`EBM._ml_loss`, as the ``coop`` family's option of the same name)
    whose states join the generator's draws as the EBM's negatives, the expectation under π
    pooled over both; they reach the EBM's mass where neither the data nor the generator go.
    0: the generator's draws alone (the paper's α-step). Not a default (2000 steps, seed 0, EBM
    KL / generator counting KL; without: 8gaussians 0.43 / 0.63, rings 0.86 / 0.80): with 256
    chains and energy_reg 0.1, 0.45 / 0.72 and 0.48 / 0.85; with energy_reg 0.03, 0.42 / 0.52
    and 0.57 / 0.86 (seed 1: 0.42 / 0.53 against 0.43 / 0.67, rings 0.59 / 0.88 against
    0.81 / 0.80); with 0.01, 0.46 / 0.40
    and 0.69 / 0.88; with 0, 0.19 / 0.30 and 1.84 / 0.84. The rings' EBM gains at every λ,
    8gaussians' only once λ ≤ 0.003, where the rings' EBM grows sharp spurious mass; the rings'
    generator always lost a little; about 2.7 times the time per step"""
    buffer_size: int = 2000
    """chains in the persistent buffer (buffer_chains > 0)"""
    buffer_steps: int = 10
    """MCMC steps of the persistent chains per training step (buffer_chains > 0; with the EBM's
    4 temperatures each replica takes buffer_steps // 4)"""
    grid_size: int = 400
    """cells per axis of the EBM's quadrature grid for log Z in 1-D and 2-D"""


@dataclass
class TriangleSampleConfig(SampleConfig):
    """Options of ``sample`` for the divergence triangle."""

    refine_steps: int = 200
    """MALA (or Langevin) steps on the EBM π_α after the warm-up, started at the generator's
    draws, so that the samples are π_α's; 0: the generator's draws themselves (no warm-up)"""
    warmup: int = 100
    """steps before those that adapt MALA's step size to acceptance 0.574 (dual averaging, as the
    ``ebm`` family's sampler); 0, or the langevin kernel: ``step_size`` as given"""
    step_size: float = 0.001
    """step size Δt of the refining kernel (standardized units); with a warm-up, where it starts"""
    kernel: Literal["langevin", "mala"] = "mala"
    """the refining kernel: MALA, or unadjusted Langevin (tutorial §4)"""
    mean: bool = False
    """start from the decoder mean g_θ(z) instead of a draw g_θ(z) + σ ε"""


class Triangle(Model):
    """Generator + EBM + inference model trained on the divergence triangle (module docstring)."""

    family: ClassVar[str] = "triangle"
    autocast_unsafe_because: ClassVar[str] = (
        "its energy-based model learns from the small difference of the mean energies of data and of samples,"
        " which bfloat16's 8-bit mantissa would swamp"
    )
    Config: ClassVar[type[ModelConfig]] = TriangleConfig
    SampleConfig: ClassVar[type[SampleConfig]] = TriangleSampleConfig
    has_log_prob: ClassVar[bool] = True
    #: the KLs on 8gaussians stop improving by ~1000–1500 steps at these settings (module docstring)
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 3000, "lr": 1e-3, "batch_size": 256}
    tour_steps: ClassVar[int] = 800
    #: checkpoints written before the Fourier features became the default
    options_before: ClassVar[dict[str, Any]] = {"fourier_features": 0}
    #: under DDP the EBM's pass and the generator and inference model's pass each reach one side
    ddp_find_unused: ClassVar[bool] = True
    #: the step keeps every buffer identical on all ranks itself (the step size from the acceptance
    #: averaged over the ranks, gathered chain updates), so DDP need not broadcast rank 0's buffers
    #: (the EBM's chains) at every forward
    ddp_sync_buffers: ClassVar[bool] = False
    config: TriangleConfig

    def __init__(self, dim: int, config: TriangleConfig | None = None) -> None:
        super().__init__(dim, config)
        c = self.config
        _validate(c)
        #: generator p_θ(x|z) (the decoder) and inference model q_φ(z|x) (the encoder)
        self.vae = VAE(
            dim,
            VAEConfig(
                latent_dim=c.latent_dim,
                net=c.net,
                hidden=c.hidden,
                depth=c.depth,
                activation=c.activation,
                kl_warmup=0,
                decoder_variance="per_dimension",
            ),
        )
        if c.decoder_std > 0:  # fixed σ: store the raw value whose soft clamp is log σ
            raw = LOG_STD_BOUND * math.atanh(math.log(c.decoder_std) / LOG_STD_BOUND)
            with torch.no_grad():
                self.vae.decoder_log_std.fill_(raw)
            self.vae.decoder_log_std.requires_grad_(False)
        #: the energy-based model π_α(u) ∝ exp(f_α(u)) q(u), learned here by the triangle
        self.ebm = EBM(
            dim,
            EBMConfig(
                method="mle" if c.buffer_chains else "cd",
                chains="persistent",
                buffer_size=c.buffer_size,
                mcmc_steps=c.buffer_steps,
                energy=c.net,
                hidden=c.ebm_hidden,
                depth=c.ebm_depth,
                activation=c.activation,
                grid_size=c.grid_size,
                fourier_features=triangle_fourier_features(c, dim),
                fourier_scale=c.fourier_scale,
                fourier_smoothing=False,  # no data noise to smooth at
                data_noise=0.0,  # the joint models learn from the data itself
                reinit_from="reference",
            ),
        )
        self.latent_dim = self.vae.latent_dim
        self._lr_set: dict[str, float] = {}

    # -- the three models --------------------------------------------------------------
    def generate(self, n: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, x̃) ~ P by reparameterisation: z ~ N(0, I), x̃ = g_θ(z) + σ ε; each (n, ·), u-space."""
        z, eps = self._draw(n, generator)
        return z, self._pair(z, eps)

    def _draw(self, n: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise of n pairs of P: z ~ N(0, I_k) and ε ~ N(0, I_d), drawn in that order."""
        like = self.shift
        return _randn((n, self.latent_dim), generator, like), _randn((n, self.dim), generator, like)

    def _pair(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̃ = g_θ(z) + σ ε, differentiable in θ (the reparameterised draw of P from its noise)."""
        mu, log_sigma = self.vae.decode(z)
        return mu + torch.exp(log_sigma) * eps

    def log_pi_tilde(self, u: torch.Tensor) -> torch.Tensor:
        """log π̃_α(u) = f_α(u) + log q(u), the EBM's unnormalized log-density, (n,)."""
        return self.ebm.unnormalized(u)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) = −log π̃_α(u) at data-space x: log π_α(x) = −E(x) − log Z − Σ_j log scale_j."""
        return -self.log_pi_tilde(self.normalize(x.to(self.scale.dtype)))

    def log_partition(self, **options: Any) -> dict[str, Any]:
        """log Z of π̃_α in u-space with its error and kind (:meth:`EBM.log_partition`)."""
        return self.ebm.log_partition(**options)

    # -- the three sides of the triangle ----------------------------------------------
    def vae_terms(self, u: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """−ELBO(u) per data point (n,), one reparameterised draw of q_φ(z|u), KL exact:
        its mean over the data is KL(Q‖P) + H(q_data)."""
        m, log_s = self.vae.encode(u)
        z = m + torch.exp(log_s) * _randn(tuple(m.shape), generator, m)
        mu, log_sigma = self.vae.decode(z)
        kl = 0.5 * (m**2 + torch.exp(2 * log_s) - 1 - 2 * log_s).sum(-1)
        return kl - _gaussian_log_prob(u, mu, log_sigma)

    def mode_chasing_terms(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(z) + log p_θ(x|z) − log q_φ(z|x) − log π̃_α(x) per pair (z, x) ~ P, (n,): its
        mean is KL(P‖Π) − log Z(α). Differentiable in θ through x = g_θ(z) + σ ε."""
        mu, log_sigma = self.vae.decode(z)
        m, log_s = self.vae.encode(x)
        log_prior = -0.5 * (z**2).sum(-1) - 0.5 * self.latent_dim * _LOG_2PI
        return (
            log_prior
            + _gaussian_log_prob(x, mu, log_sigma)
            - _gaussian_log_prob(z, m, log_s)
            - self.log_pi_tilde(x)
        )

    def data_energy_terms(self, u: torch.Tensor) -> torch.Tensor:
        """−log π̃_α(u) per data point (n,): its mean is KL(Q‖Π) + H(q_data) − log Z(α)."""
        return -self.log_pi_tilde(u)

    def ebm_loss(
        self,
        u: torch.Tensor,
        x_gen: torch.Tensor,
        energy_reg: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """mean f_α(x̃) − mean f_α(u) (+ the optional energy and gap penalties), minimised over α: the α part
        of −Δ, contrastive divergence with the generator's draws x̃ as negative samples.

        With ``buffer_chains`` = m > 0 the expectation under π is pooled over the b draws x̃ and m
        states of the EBM's persistent chains, advanced here by :meth:`EBM._ml_negatives` on the
        first m data points (as the ``coop`` family does): the contrastive term becomes
        (b·[mean f(x̃) − mean f(u)] + m·[mean f(chains) − mean f(u[:m])]) / (b + m). The penalties
        stay on the data and x̃. (:meth:`step` runs the same two halves, the chains on the plain
        module and :meth:`_ebm_objective` through :meth:`Model.call`.)"""
        lam = self.config.energy_reg if energy_reg is None else energy_reg
        return self._ebm_objective(u, x_gen, lam, self._persistent_negatives(u, generator))

    def _persistent_negatives(
        self, u: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """With ``buffer_chains``: (the data rows, the persistent chains) that the EBM's loss pools
        with the generator's draws, the chains advanced on the plain module (this rank's share
        under DDP, the updates of all ranks gathered into the one buffer); None without."""
        if not self.config.buffer_chains:
            return None
        across = self.data_parallel
        m = chains_per_rank(self.config.buffer_chains, u.shape[0], across, self.family)
        if generator is None:  # the kernels draw only from an explicit generator
            seed = int(torch.randint(2**62, ()))
            generator = torch.Generator(device=self.device).manual_seed(seed)
        eps = self.ebm.mcmc_step_size.clone()  # _ml_negatives sets it to its chains' median
        u_m, neg, _ = self.ebm._ml_negatives(u[:m].detach(), generator, across)
        self.ebm.mcmc_step_size.copy_(eps)
        return u_m, neg

    def _ebm_objective(
        self,
        u: torch.Tensor,
        x_gen: torch.Tensor,
        energy_reg: float,
        persistent: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """The differentiated half of :meth:`ebm_loss` on finished negatives (the draws ``x_gen``
        and the chains in ``persistent``): :meth:`step` runs it through :meth:`Model.call`, so
        DDP averages α's gradient."""
        f_data, f_gen = self.ebm.f(u), self.ebm.f(x_gen.detach())
        loss = f_gen.mean() - f_data.mean()
        if persistent is not None:
            u_m, neg = persistent
            b, m = x_gen.shape[0], u_m.shape[0]
            loss = (b * loss + m * self.ebm._ml_objective(u_m, neg)["loss"]) / (b + m)
        if energy_reg > 0:
            loss = loss + energy_reg * ((f_data**2).mean() + (f_gen**2).mean())
        if self.config.gap_reg > 0:
            loss = loss + self.config.gap_reg * (f_data.mean() - f_gen.mean()) ** 2
        return loss

    def _generator_objective(
        self, u: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """The (θ, φ) step's differentiated terms: the means of −ELBO(u) (``kl_qp``) and of the
        mode-chasing terms on the pairs (z, g_θ(z) + σ ε) (``kl_p_pi``), the draw x̃ made here
        from its noise so that its path through the generator is inside the pass. :meth:`step`
        runs it through :meth:`Model.call` (DDP averages θ's and φ's gradients) with α frozen."""
        x = self._pair(z, eps)
        kl_qp = self.vae_terms(u, generator).mean()
        kl_p_pi = self.mode_chasing_terms(z, x).mean()
        return {"kl_qp": kl_qp, "kl_p_pi": kl_p_pi}

    def objective(self, u: torch.Tensor, generator: torch.Generator | None, n: int | None = None) -> dict:
        """The three sides on the data batch ``u`` and ``n`` (default len(u)) fresh (z, x̃) ~ P,
        per sample (u-space nats), and Δ:

        - ``kl_qp``: −ELBO(u), mean = KL(Q‖P) + H(q_data);
        - ``kl_p_pi``: mode-chasing terms, mean = KL(P‖Π) − log Z;
        - ``kl_q_pi``: −log π̃(u), mean = KL(Q‖Π) + H(q_data) − log Z;
        - ``delta``: mean kl_qp + mean kl_p_pi − mean kl_q_pi = Δ (the constants cancel), a
          scalar.
        """
        z, x = self.generate(u.shape[0] if n is None else n, generator)
        out = {
            "kl_qp": self.vae_terms(u, generator),
            "kl_p_pi": self.mode_chasing_terms(z, x),
            "kl_q_pi": self.data_energy_terms(u),
        }
        out["delta"] = out["kl_qp"].mean() + out["kl_p_pi"].mean() - out["kl_q_pi"].mean()
        return out

    # -- optimisation -----------------------------------------------------------------
    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, 0.999)
        groups = {
            "ebm": self.ebm.parameters(),
            "generator": self.vae.decoder.parameters(),
            "inference": self.vae.encoder.parameters(),
        }
        self._optimizers = {}
        for name, params in groups.items():
            params = [p for p in params if p.requires_grad]
            if name == "generator" and self.vae.decoder_log_std.requires_grad:
                params.append(self.vae.decoder_log_std)
            self._optimizers[name] = torch.optim.Adam(params, lr=lr * self._mult(name), betas=betas)
        self._lr_set = {name: lr * self._mult(name) for name in groups}
        self._base_lr = lr
        return self._optimizers

    def _mult(self, name: str) -> float:
        return getattr(self.config, f"{name}_lr_mult")

    def _apply_lr_mults(self) -> None:
        """The training loop sets every group's lr to its schedule before each step; scale it by
        the model's multiplier (once: a value this method set is left alone)."""
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                if group["lr"] != self._lr_set.get(name):
                    group["lr"] = group["lr"] * self._mult(name)
                    self._lr_set[name] = group["lr"]

    def prepare(self, x: torch.Tensor, generator: torch.Generator, progress: bool = False) -> None:
        """Fit the EBM's reference Gaussian q and its quadrature box to the (standardized) data."""
        self.ebm.prepare(self.normalize(x.to(self.shift.dtype)), generator, progress)

    def step(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """One step of each player on a data batch: α up Δ, then (θ, φ) down Δ (module docstring).

        Logs ``delta`` (Δ estimated on the batch), ``kl_qp`` (−ELBO), ``kl_p_pi`` (KL(P‖Π) − log Z),
        ``kl_q_pi`` (−E_data log π̃), ``ebm_loss``, ``energy_gap`` (mean f(data) − mean f(x̃)) and
        ``decoder_std`` (the mean σ); ``loss`` is the (θ, φ) loss kl_qp + kl_p_pi.

        Under DDP (:mod:`genmodels.distributed`) the two passes go through :meth:`Model.call`
        (:meth:`_ebm_objective`, :meth:`_generator_objective`: each player's gradient averaged over
        the ranks), the MCMC (``negative_steps``, ``buffer_chains``) runs on the plain module with
        this rank's noise, its step size adapts to the acceptance averaged over the ranks, the
        persistent chains' updates are gathered into the one shared buffer, and a non-finite loss
        is judged on the mean over the ranks, so every rank stops together.
        """
        self._apply_lr_mults()
        opts = self.optimizers
        u = self.normalize(batch)
        z, eps = self._draw(u.shape[0], generator)
        with torch.no_grad():  # the draws as the EBM's negatives; (2) redraws them with their graph
            x_gen = self._pair(z, eps)
        # (1) α: maximise Δ, i.e. minimise E_P f − E_data f
        negatives = self.refine_negatives(x_gen, generator)
        opts["ebm"].zero_grad(set_to_none=True)
        lam = self.config.energy_reg
        if self.config.energy_reg_decay == "lr":
            lam = lam * self._lr_set["ebm"] / (self._base_lr * self.config.ebm_lr_mult)
        persistent = self._persistent_negatives(u, generator)
        ebm_loss = self.call("_ebm_objective", u, negatives, lam, persistent)
        self._check(ebm_loss, "ebm")
        ebm_loss.backward()
        opts["ebm"].step()
        # (2) θ, φ: minimise KL(Q‖P) + KL(P‖Π) with the energy held fixed
        opts["generator"].zero_grad(set_to_none=True)
        opts["inference"].zero_grad(set_to_none=True)
        frozen = [p for p in self.ebm.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            terms = self.call("_generator_objective", u, z, eps, generator)
            kl_qp, kl_p_pi = terms["kl_qp"], terms["kl_p_pi"]
            with torch.no_grad():
                kl_q_pi = self.data_energy_terms(u).mean()
                f_data, f_gen = self.ebm.f(u).mean(), self.ebm.f(x_gen).mean()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        loss = kl_qp + kl_p_pi
        self._check(loss, "generator and inference")
        loss.backward()
        opts["generator"].step()
        opts["inference"].step()
        return {
            "loss": float(loss.detach()),
            "delta": float((kl_qp + kl_p_pi - kl_q_pi).detach()),
            "kl_qp": float(kl_qp.detach()),
            "kl_p_pi": float(kl_p_pi.detach()),
            "kl_q_pi": float(kl_q_pi),
            "ebm_loss": float(ebm_loss.detach()),
            "energy_gap": float(f_data - f_gen),
            "decoder_std": float(torch.exp(_soft_clamp(self.vae.decoder_log_std.detach())).mean()),
        }

    def _check(self, loss: torch.Tensor, who: str) -> None:
        """TrainingDiverged unless ``loss`` is finite; under DDP judged on its mean over the ranks
        (not finite if any rank's is), so that all ranks stop together."""
        value = ddp.mean_across(loss.detach()) if self.data_parallel else loss
        if not bool(torch.isfinite(value)):
            from genmodels.train import TrainingDiverged

            where = " (averaged over the ranks)" if self.data_parallel else ""
            raise TrainingDiverged(f"triangle: the {who} loss became {float(value)}{where}; try a lower --lr")

    def refine_negatives(self, x_gen: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The EBM's negative samples: the generator's draws after ``negative_steps`` steps of the
        EBM's kernel on π̃_α (:meth:`EBM.run_chains`, on the plain module), its step size adapted as
        in the EBM's CD (to the acceptance averaged over the ranks under DDP)."""
        k = self.config.negative_steps
        if k == 0:
            return x_gen.detach()
        start = x_gen.detach()
        m = round(self.config.negative_restart * start.shape[0])
        if m > 0:
            start = torch.cat([start[m:], self.ebm.sample_q(m, generator)])
        eps = self.ebm.mcmc_step_size.to(x_gen.dtype)
        neg, acc, _ = self.ebm.run_chains(start, k, generator, float(eps))
        mean_acc = ddp.mean_across(acc.mean()) if self.data_parallel else acc.mean()  # a global step size
        self.ebm.mcmc_step_size.copy_(self.ebm._adapted(eps, mean_acc))
        return neg

    # -- sampling and densities ---------------------------------------------------------
    def _sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None,
        refine_steps: int = 200,
        warmup: int = 100,
        step_size: float = 0.001,
        kernel: str = "mala",
        mean: bool = False,
    ) -> torch.Tensor:
        """The generator's draws (z ~ N(0, I), u = g_θ(z) + σ ε, or g_θ(z) with ``mean``), then,
        unless ``refine_steps`` is 0, ``warmup`` steps of MALA adapting its step size (dual
        averaging to acceptance 0.574) and ``refine_steps`` steps of ``kernel`` on the EBM's π̃_α
        (Langevin: x ← x + (Δt/2)∇log π̃ + √Δt e, tutorial §4; MALA adds the Metropolis test)."""
        if refine_steps < 0 or warmup < 0:
            raise ValueError(f"refine_steps and warmup must be >= 0, got {refine_steps} and {warmup}")
        if kernel not in ("langevin", "mala"):
            raise ValueError(f"unknown kernel {kernel!r}; choose one of: langevin, mala")
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size}")
        u = self.vae._sample(n, generator=generator, mean=mean)
        if refine_steps == 0:
            return u
        if generator is None:  # the kernels draw only from an explicit generator
            seed = int(torch.randint(2**62, ()))
            generator = torch.Generator(device=self.device).manual_seed(seed)
        # π̃_α is the EBM's own p̃ in the same u coordinates: its sampler, from the generator's draws
        return self.ebm.mcmc_from(u, generator, kernel, refine_steps, warmup, step_size)

    @torch.no_grad()
    def _log_prob(
        self,
        u: torch.Tensor,
        model: Literal["ebm", "generator"] = "ebm",
        method: Literal["iwae", "elbo"] = "iwae",
        k: int = 100,
        seed: int = 0,
    ) -> LogDensity:
        """``model="ebm"`` (default): log π_α(u) = log π̃_α(u) − log Z, kind "exact" in 1-D/2-D
        (quadrature), "estimate" otherwise (AIS). ``model="generator"``: a lower bound on
        log p_θ(u) from k draws of the inference model, ``method`` iwae (L_k) or elbo
        (:meth:`VAE._log_prob`), kind "lower_bound"."""
        if model == "ebm":
            return self.ebm._log_prob(u)
        if model == "generator":
            return self.vae._log_prob(u, method=method, k=k, seed=seed)
        raise ValueError(f"unknown model {model!r}; choose one of: ebm, generator")


def triangle_fourier_features(c: TriangleConfig, dim: int) -> int:
    """The Fourier features of the EBM's energy MLP (``fourier_features``; auto: 64 for the MLP
    energy in 1-D and 2-D, else 0)."""
    if c.fourier_features >= 0:
        return c.fourier_features
    return AUTO_FOURIER_FEATURES if c.net == "mlp" and dim <= 2 else 0


def _validate(c: TriangleConfig) -> None:
    checks = [
        (c.latent_dim >= 0, f"latent_dim must be >= 0 (0: the data's dimension), got {c.latent_dim}"),
        (c.net in ("mlp", "conv"), f"unknown net {c.net!r}; choose one of: mlp, conv"),
        (c.hidden >= 1, f"hidden must be >= 1, got {c.hidden}"),
        (c.depth >= 0, f"depth must be >= 0, got {c.depth}"),
        (c.ebm_hidden >= 1 and c.ebm_depth >= 1, "ebm_hidden and ebm_depth must be >= 1"),
        (
            c.activation in _ACTIVATIONS,
            f"unknown activation {c.activation!r}; choose one of: {', '.join(_ACTIVATIONS)}",
        ),
        (
            c.decoder_std == 0 or abs(math.log(c.decoder_std)) < LOG_STD_BOUND
            if c.decoder_std >= 0
            else False,
            f"decoder_std must be 0 (learned) or in (e^-7, e^7), got {c.decoder_std}",
        ),
        (0.0 <= c.beta1 < 1.0, f"beta1 must be in [0, 1), got {c.beta1}"),
        (c.energy_reg >= 0, f"energy_reg must be >= 0, got {c.energy_reg}"),
        (
            c.energy_reg_decay in ("none", "lr"),
            f"unknown energy_reg_decay {c.energy_reg_decay!r}; choose one of: none, lr",
        ),
        (c.gap_reg >= 0, f"gap_reg must be >= 0, got {c.gap_reg}"),
        (c.grid_size >= 8, f"grid_size must be >= 8, got {c.grid_size}"),
        (c.fourier_features >= -1, f"fourier_features must be >= 0, or -1 (auto); got {c.fourier_features}"),
        (
            c.fourier_features <= 0 or c.net == "mlp",
            f"fourier_features feed the MLP energy; net={c.net} takes none (set fourier_features=0)",
        ),
        (c.fourier_scale > 0, f"fourier_scale must be positive, got {c.fourier_scale}"),
        (c.buffer_chains >= 0, f"buffer_chains must be >= 0, got {c.buffer_chains}"),
        (c.buffer_size >= 1, f"buffer_size must be >= 1, got {c.buffer_size}"),
        (c.buffer_steps >= 1, f"buffer_steps must be >= 1, got {c.buffer_steps}"),
        (c.negative_steps >= 0, f"negative_steps must be >= 0, got {c.negative_steps}"),
        (0.0 <= c.negative_restart <= 1.0, f"negative_restart must be in [0, 1], got {c.negative_restart}"),
    ]
    for name in ("ebm_lr_mult", "generator_lr_mult", "inference_lr_mult"):
        v = getattr(c, name)
        checks.append((v > 0 and math.isfinite(v), f"{name} must be a positive number, got {v}"))
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
