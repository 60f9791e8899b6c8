"""Cooperative learning (CoopNets): an energy-based model and a generator taught by its MCMC.

Xie, Lu, Gao, Zhu & Wu, "Cooperative Training of Descriptor and Generator Networks", TPAMI
2018 (arXiv:1609.09408), and "Cooperative Learning of Energy-Based Model and Latent Variable
Model via MCMC Teaching", AAAI 2018. Two models of the same data learn together:

- the **EBM** ("descriptor") π_α(u) = exp(f_α(u)) q(u) / Z(α), with f_α the negative energy
  and q the Gaussian reference fitted to the data: exactly the library's
  :class:`~genmodels.models.ebm.EBM` (its network, reference, quadrature / AIS log Z and
  training-health logic are reused, not copied). The submodule ``ebm`` works in this model's
  standardized coordinates u (its own standardization is the identity): score it through this
  model's ``log_prob``, or map its draws back with x = shift + scale · u;
- the **generator** u = g_θ(z) + σ ε, z ~ N(0, I_k), ε ~ N(0, I_d): a latent-variable model
  (a non-linear factor analysis) with an MLP g_θ (``genmodels.nets.mlp``).

For square one-channel images ``net="conv"`` makes both networks convolutional
(:mod:`genmodels.nets.conv`): the EBM's f is its ``energy="conv"`` trunk and the generator's
residual a convolutional decoder, both with zero output layers, so the start below is unchanged.
The training loop picks it on such images: on digits (351 steps) the MLP pair's energy ran away
twice (and at 1858 steps five times, stopping the run) while the conv pair's did not, and its
revised samples reached FD 38.5 against 395.

One training step (:meth:`Coop.step`, Algorithm 1 of the TPAMI paper; the student drafts,
the advisor revises, the student learns from the revision):

1. **propose**: z_i ~ N(0, I_k), x̂_i = g_θ(z_i), i = 1..b;
2. **revise** (the EBM's MCMC): ``langevin_steps`` Langevin steps on π_α started at x̂_i,
   x ← x + (Δt/2) ∇ log π_α(x) + √Δt e (tutorial §4), give x̃_i. The kernels are those of
   ``genmodels.samplers``, run through :meth:`EBM.run_chains`: unadjusted Langevin as in the
   paper, or (the default) MALA, the same proposal with a Metropolis test. Unadjusted Langevin
   at a fixed Δt diverges once the EBM's modes are narrower than about √Δt/2 (measured: the
   rings target blew up three times in 1200 steps at Δt = 0.02); MALA rejects those moves.
   Its Δt adapts toward acceptance ``target_accept`` (0.9) but never above ``step_size``: a
   revision that moves far blurs the generator, which learns its conditional mean (adapted to
   MALA's usual 0.574, Δt grew to ≈ 0.1 and on rings the generator collapsed to a blob);
3. **EBM update**: the maximum-likelihood learning gradient of tutorial §3,
   L'(α) = E_data[∇_α f_α(x)] − E_π[∇_α f_α(x)], with the synthesized x̃ standing in for
   draws of π_α. We minimise mean f(x̃) − mean f(x) (gradient −L'), the same loss as the
   EBM family's ``method="mle"``; the chains start at the generator's proposals instead of
   q or a persistent buffer ("modified contrastive divergence").

   Addition (``buffer_chains``, not in the papers): the expectation under π is pooled over
   the b revised samples and ``buffer_chains`` states of the ``ebm`` family's persistent,
   parallel-tempered replay buffer (:meth:`EBM._ml_loss`), both estimates of draws of π.
   Short revisions never carry a proposal from one mode to another, so with x̃ alone the
   relative masses of separated modes are a null direction of the EBM's gradient: they
   drifted freely (8gaussians, 900 steps: EBM mode masses 0.004–0.34 against 0.125, KL 1.45).
   The tempered chains do move between modes and anchor them. The pooled fixed point is
   EBM mass = data mass + (b/m)(data mass − generator mass), so the generator's errors are
   amplified by b/m at first; m = b keeps that factor 1 (measured: m = 64 left EBM KL 0.37,
   m = 256 gave 0.15 after 900 steps);
4. **generator update, MCMC teaching**: regress g_θ onto the revised examples **with the
   same latent z that produced them**, minimising (1/b) Σ ‖x̃_i − g_θ(z_i)‖² (the complete-
   data log-likelihood of the generator, Σ ‖x̃_i − g_θ(z_i)‖² / (2σ²), up to the scale that
   Adam ignores). z_i is known because the generator made x̂_i from it, so no inference is
   needed: the generator absorbs the MCMC transition x̂ → x̃ and, at the fixed point, g(z)
   itself lands where the Langevin revision would take it. The noise σ of the generator is
   estimated too (``learn_sigma``): its complete-data maximum-likelihood estimate is
   σ² = mean ‖x̃ − g(z)‖² / d (the M-step of factor analysis for an isotropic noise), tracked
   by a moving average over steps.

   Optional (``infer_z=True``, Step G2 of the TPAMI algorithm): before the regression, revise
   z too by ``z_steps`` Langevin steps on the generator's posterior
   log p(z | x̃) = −½‖z‖² − ‖x̃ − g_θ(z)‖² / (2σ²) + const, started at z_i (the alternating
   back-propagation inference), and regress onto x̃ with the revised z̃. Off by default, as in
   the AAAI paper's MCMC teaching with the known z: on 8gaussians (earlier defaults: unadjusted
   Langevin, no buffer; 800 steps, 64-wide nets, one seed) it lowered the generator's grid KL
   1.09 → 1.00 but raised the EBM's 0.51 → 0.73, and it adds ``z_steps`` generator passes
   per step.

Each step logs ``energy_gap`` = mean f(data) − mean f(x̃) (the EBM's learning signal; it
oscillates around 0 when the EBM has caught up), ``revision_gain`` = mean f(x̃) − mean f(x̂)
(how far uphill the EBM's MCMC moved the generator's proposals), ``revision_dist`` = mean
‖x̃ − x̂‖, and ``g_loss`` = mean ‖x̃ − g(z)‖² (the generator's regression loss before its
update), ``sigma`` (the generator's σ), and the MCMC acceptance (1 for unadjusted Langevin)
and gradient norm; with ``buffer_chains`` the persistent chains' step size is kept apart.

Learning rates: both Adam optimisers follow the training loop's schedule; the generator's is
multiplied by ``g_lr_ratio`` (the balance between the two learners).

Density and samples:

- ``log_prob`` is the **EBM's** log π_α (``model="ebm"``, the default and the family's
  density): log Z by quadrature in 1-D and 2-D (kind ``exact`` up to the grid error), by AIS
  otherwise (kind ``estimate``), exactly as the ``ebm`` family. ``model="generator"`` raises
  :class:`NotSupportedError`: the generator's density ∫ N(u; g(z), σ²I) N(z; 0, I) dz needs
  an inference model (cf. the divergence triangle, the ``triangle`` family) that CoopNets
  does not have; score its samples by the counting KL instead
  (``kl_to_truth(model, target, method="grid", samples=model.sample(n, refine_steps=0))``).
- ``sample`` draws x̂ = g(z) and, by default, revises them with the same Langevin revision
  as training (``refine_steps=-1``): the cooperative sampler whose outputs the EBM was fitted
  against. ``refine_steps=0`` gives the generator alone, its model g(z) + σε (one network
  pass; ``noise=False``: the mean g(z), as the papers display). The generator learns the
  conditional mean E[x̃ | z] of the revision, so the Langevin noise averages out of g and the
  mean alone draws a thinner distribution than the EBM's (8gaussians, 1200 steps: grid KL
  1.21 for g(z) against 0.69 for g(z) + σε).

Data-parallel training (``torchrun``; :mod:`genmodels.distributed`): each rank takes its slice
of the global batch and draws its own noise (latents, revision, persistent chains, z
inference); the MCMC runs on the plain module, and the two differentiated losses, the EBM's
(:meth:`Coop._ebm_objective`, with the persistent chains' term inside) and the generator's
(:meth:`Coop._teaching_loss`), go through :meth:`Model.call`, so DDP averages each player's
gradient (``ddp_find_unused``: each pass reaches one player). What must be decided alike on
every rank is global: the revision's Δt adapts to the acceptance averaged over the ranks; the
persistent chains are the ``ebm`` family's one shared buffer, the ranks splitting a step's
min(``buffer_chains``, global batch) chains evenly and writing all draws in rank order; the
health check reads the logs averaged over the ranks (a divergence on one rank restores the
EBM on all); σ's moving average and the generator's finiteness check read the regression loss
averaged over the ranks. Every buffer is thus identical on all ranks without DDP's broadcast
(``ddp_sync_buffers`` False). One process is unaffected: bit for bit what it was without DDP.

The generator starts as the EBM's reference q (an affine skip A z + b set to q in
:meth:`prepare`, plus an MLP with a zero output layer; :class:`Generator`): both models start
at the same distribution. A generator started collapsed (a plain random MLP) stayed a blob
that the EBM chased around the plane.

Defaults: Adam at lr 1e-2 for the EBM and 2e-3 for the generator (``g_lr_ratio`` 0.2), cosine
decay over 1200 steps. Measured (seed 0, one CPU thread on a machine shared with ~5 other
jobs; KLs: the EBM's by quadrature, exact; the samples' by counting on the grid, floor 0.056):

- 8gaussians (untrained: EBM 1.42, generator 1.44): EBM 0.089, revised samples 0.27,
  generator alone 0.80 (its mean g(z) 1.39), 117 s. The previous defaults (unadjusted
  Langevin, no buffer, fixed σ, lr 2e-3 for both) gave 0.45, 0.49 and 1.60 in 1200 steps.
  Without the cap of Δt at ``step_size``: 0.020, 0.23, 0.65 (140 s).
- rings: **not solved**. EBM 1.31 → 1.11 → 2.41 at steps 400, 800, 1200, revised samples
  ≈ 1.0, generator ≈ 1.1; the unadjusted kernel diverged (three restarts), 20 revision
  steps did no better (EBM 1.57 at 800 steps), and without the Δt cap the generator's mean
  collapsed to a blob (grid KL 3.0).
- grid25: **fails**. The EBM grows spurious, sharp modes (KL 25–1500 after 300–600 steps at
  lr 1e-2, 3e-3 or with warmup; at lr 1e-2 it stopped as diverged after five restarts, the
  MALA step having shrunk to 5e-5): revised samples ≈ 2.8–3.6, generator ≈ 3.8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from genmodels import distributed as ddp
from genmodels.models.base import Model, ModelConfig, NotSupportedError, SampleConfig
from genmodels.models.ebm import EBM, SNAPSHOT_EVERY, STEP_ADAPT_RATE, EBMConfig, _Frozen, chains_per_rank
from genmodels.nets.conv import ConvDecoder, conv_base, image_side
from genmodels.nets.mlp import _ACTIVATIONS, MLP, Activation
from genmodels.samplers.langevin import Langevin
from genmodels.types import LogDensity


@dataclass
class CoopConfig(ModelConfig):
    """Options of cooperative learning (CoopNets)."""

    net: Literal["mlp", "conv"] = "mlp"
    """both networks: MLPs, or for square one-channel images (dim = side², side divisible by 4,
    e.g. 8×8 digits) convolutional trunks (:mod:`genmodels.nets.conv`): the generator's
    residual a :class:`~genmodels.nets.conv.ConvDecoder` (still added to the affine skip), the
    EBM's f its ``energy="conv"``"""
    latent_dim: int = 8
    """dimension k of the generator's latent z ~ N(0, I_k)"""
    g_hidden: int = 128
    """width of the generator MLP (conv: g_hidden / 8 base channels, at least 8)"""
    g_depth: int = 3
    """hidden layers of the generator MLP (MLP only)"""
    g_activation: Activation = "relu"
    """nonlinearity of the generator"""
    hidden: int = 128
    """width of the EBM's MLP f (conv: hidden / 8 base channels, at least 8)"""
    depth: int = 3
    """hidden layers of the EBM's MLP f (MLP only)"""
    activation: Activation = "silu"
    """nonlinearity of the EBM (smooth, so that the score Langevin follows is continuous)"""
    langevin_steps: int = 10
    """Langevin steps of the EBM's revision x̂ → x̃ per training step (and when sampling)"""
    step_size: float = 0.02
    """Langevin step size Δt of the revision, in standardized units (noise √Δt per step;
    langevin keeps it; mala adapts it toward ``target_accept`` but never above this value)"""
    kernel: Literal["langevin", "mala"] = "mala"
    """kernel of the revision: mala (Langevin with a Metropolis test, which rejects the moves
    that make the unadjusted kernel blow up where f is steep) or langevin (unadjusted, as in
    the paper)"""
    target_accept: float = 0.9
    """mala: the revision's Δt adapts (Robbins–Monro on log Δt, as the ebm family's chains) toward
    this acceptance rate, so it shrinks with the width of the EBM's modes; higher than MALA's
    efficient 0.574 for a gentler revision that the generator can follow; 0: Δt stays fixed"""
    buffer_chains: int = 256
    """persistent chains of π advanced per step (the ``ebm`` family's replay buffer with
    parallel tempering, :meth:`EBM._ml_loss`) whose states join the revised samples as the
    EBM's negatives; they anchor the relative masses of separated modes, which the revision
    (short chains that keep the generator's proposals in the mode they start in) leaves
    unconstrained. 0: the revised samples alone, as in the papers"""
    buffer_size: int = 2000
    """chains in the persistent buffer (buffer_chains > 0)"""
    g_lr_ratio: float = 0.2
    """the generator's learning rate divided by the EBM's (the training loop's lr)"""
    infer_z: bool = False
    """also revise z by Langevin on the generator's posterior p(z | x̃) before the regression
    (Step G2 of the TPAMI algorithm); off: regress onto x̃ with the z that made x̂"""
    z_steps: int = 10
    """Langevin steps on p(z | x̃) (infer_z)"""
    z_step_size: float = 0.01
    """Langevin step size for z (infer_z)"""
    sigma: float = 0.1
    """σ of the generator u = g(z) + σε in standardized units (the initial value when
    learn_sigma): the noise of its samples and of the posterior p(z | x̃) (infer_z)"""
    learn_sigma: bool = True
    """estimate σ by maximum likelihood from the complete data (z, x̃): σ² = mean ‖x̃ − g(z)‖² / d,
    tracked by an exponential moving average over the steps; off: σ stays ``sigma``"""
    beta1: float = 0.5
    """Adam β₁ of both optimisers"""
    beta2: float = 0.999
    """Adam β₂ of both optimisers"""
    grid_size: int = 400
    """cells per axis of the quadrature grid for the EBM's log Z in 1-D and 2-D"""


@dataclass
class CoopSampleConfig(SampleConfig):
    """Options of ``sample`` for CoopNets."""

    refine_steps: int = -1
    """Langevin revision steps under the EBM applied to the generator's samples g(z):
    -1 = as in training (``langevin_steps``), 0 = the generator alone"""
    noise: bool = True
    """the generator alone (refine_steps=0) draws g(z) + σε, its model; off: the mean g(z)"""


#: weight of the newest step in the moving average of the generator's σ² (learn_sigma)
SIGMA_EMA = 0.02


class Coop(Model):
    """CoopNets: an EBM and a generator trained together by MCMC teaching (module docstring)."""

    family: ClassVar[str] = "coop"
    autocast_unsafe_because: ClassVar[str] = (
        "its energy-based model learns from the small difference of the mean energies of data and"
        " of MCMC samples,"
        " which bfloat16's 8-bit mantissa would swamp"
    )
    Config: ClassVar[type[ModelConfig]] = CoopConfig
    SampleConfig: ClassVar[type[SampleConfig]] = CoopSampleConfig
    has_log_prob: ClassVar[bool] = True
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 1200, "lr": 1e-2, "batch_size": 256}
    tour_steps: ClassVar[int] = 700
    #: held-out digits (bench_digits, 351 steps, seed 0; the EBM's AIS bits/dim): mlp 5.24, FD 395,
    #: 9 classes, two restarts (at 90 s, 1858 steps: diverged); conv 4.16, FD 38.5, 10 classes
    image_options: ClassVar[dict[str, Any]] = {"net": "conv"}
    #: under DDP the EBM's pass and the generator's pass each reach one player only
    ddp_find_unused: ClassVar[bool] = True
    #: the step keeps every buffer identical on all ranks itself (σ and the step size from values
    #: averaged over the ranks, gathered chain updates, global recoveries), so DDP need not
    #: broadcast rank 0's buffers (the EBM's chains) at every forward
    ddp_sync_buffers: ClassVar[bool] = False
    config: CoopConfig

    def __init__(self, dim: int, config: CoopConfig | None = None) -> None:
        super().__init__(dim, config)
        c = self.config
        _validate(c)
        if c.net == "conv":  # the one-line error names net=conv, not the inner EBM's energy=conv
            image_side(dim, "conv")
        ebm_config = EBMConfig(
            method="mle",
            chains="persistent" if c.buffer_chains else "short-run",
            buffer_size=c.buffer_size,
            kernel=c.kernel,
            mcmc_steps=c.langevin_steps,
            step_size=c.step_size,
            energy=c.net,
            hidden=c.hidden,
            depth=c.depth,
            activation=c.activation,
            grid_size=c.grid_size,
            data_noise=0.0,  # the joint models learn from the data itself
            reinit_from="reference",
        )
        #: the energy-based model π(u) ∝ exp(f(u)) q(u); it lives in this model's u-space
        #: (its own shift and scale stay 0 and 1)
        self.ebm = EBM(dim, ebm_config)
        #: the generator's mean g_θ(z) = A z + b + MLP(z): an affine skip, set by :meth:`prepare`
        #: to the EBM's reference q, plus an MLP (net=conv: a conv decoder) with a zero output layer
        self.generator_net = Generator(dim, c)
        #: the generator's noise σ (learned when ``learn_sigma``)
        self.register_buffer("g_sigma", torch.tensor(float(c.sigma)))

    # -- the two models -----------------------------------------------------------------
    def f(self, u: torch.Tensor) -> torch.Tensor:
        """The EBM's negative energy f(u), shape (n,)."""
        return self.ebm.f(u)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) = −(f(u) + log q(u)) at data-space x, (n,): log p(x) = −E(x) − log Z − Σ log scale."""
        return -self.ebm.unnormalized(self.normalize(x.to(self.scale.dtype)))

    def latent(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """n draws z ~ N(0, I_k)."""
        return torch.randn(
            n, self.config.latent_dim, generator=generator, device=self.device, dtype=self.scale.dtype
        )

    def revise(
        self, x_hat: torch.Tensor, generator: torch.Generator, steps: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The EBM's MCMC revision: ``steps`` (default ``langevin_steps``) kernel steps on
        π = exp(f) q from ``x_hat`` (n, d) with the current step size (:meth:`EBM.run_chains`).
        Returns x̃ (n, d), each chain's acceptance (n,) and ‖∇ log π(x̃)‖ (n,)."""
        steps = self.config.langevin_steps if steps is None else steps
        return self.ebm.run_chains(x_hat, steps, generator)

    def infer_latent(self, z: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``z_steps`` Langevin steps on log p(z | x) = −½‖z‖² − ‖x − g(z)‖²/(2σ²) + const from z."""
        c = self.config
        target = x.detach()

        def log_posterior(zz: torch.Tensor) -> torch.Tensor:
            resid = target - self.generator_net(zz)
            return -0.5 * (zz**2).sum(-1) - 0.5 * (resid**2).sum(-1) / sigma**2

        sigma = float(self.g_sigma)

        kernel = Langevin(step_size=c.z_step_size)
        with _Frozen(self.generator_net):
            state = kernel.init(z.detach(), log_posterior)
            for _ in range(c.z_steps):
                state, _ = kernel.step(state, generator)
        return state.position.detach()

    # -- optimisation -------------------------------------------------------------------
    def prepare(self, x: torch.Tensor, generator: torch.Generator, progress: bool = False) -> None:
        """Fit the EBM's reference q and quadrature box to the (standardized) data."""
        self.ebm.prepare(self.normalize(x.to(self.shift.dtype)), generator, progress)
        self.generator_net.start_at(self.ebm.ref_mean, self.ebm.ref_chol)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        self._optimizers = {
            "ebm": torch.optim.Adam(self.ebm.parameters(), lr=lr, betas=betas),
            "generator": torch.optim.Adam(self.generator_net.parameters(), lr=lr, betas=betas),
        }
        return self._optimizers

    def step(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """One CoopNets step on a data-space batch: propose, revise, update the EBM, teach the
        generator (module docstring). The EBM's health logic (:class:`EBM`) restores its last
        good state and halves both learning rates and the step size on divergence.

        Under DDP (:mod:`genmodels.distributed`) the MCMC (revision, persistent chains, z
        inference) runs on the plain module with this rank's noise; the two differentiated losses
        go through :meth:`Model.call` (:meth:`_ebm_objective`, :meth:`_teaching_loss`), so DDP
        averages each player's gradient; and every decision is global: the revision's step size
        adapts to the acceptance averaged over the ranks, the persistent chains' updates are
        gathered into the one shared buffer, the health check reads the logs averaged over the
        ranks, and σ's moving average and the generator's finiteness check read the regression
        loss averaged over the ranks (the global batch's)."""
        if not bool(self.ebm.prepared):
            raise RuntimeError("call prepare(data_sample, generator) first (the training loop does)")
        g = _generator(generator, self.device)
        c = self.config
        ebm, opt_e, opt_g = self.ebm, self.optimizers["ebm"], self.optimizers["generator"]
        across = self.data_parallel
        if ebm._snapshot is None:
            ebm._take_snapshot(opt_e)
        u = self.normalize(batch)
        b = u.shape[0]

        # 1. propose, 2. revise by the EBM's MCMC
        z = self.latent(b, g)
        with torch.no_grad():
            x_hat = self.generator_net(z)
        eps = ebm.mcmc_step_size.to(u.dtype)
        x_tilde, acc, grad = self.revise(x_hat, g)
        if c.kernel == "mala" and c.target_accept > 0:  # log Δt += κ (acceptance − target)
            mean_acc = ddp.mean_across(acc.mean()) if across else acc.mean()
            adapted = eps * torch.exp(STEP_ADAPT_RATE * (mean_acc - c.target_accept))
            ebm.mcmc_step_size.copy_(adapted.clamp(1e-8, c.step_size))

        # 3. the EBM: minimise mean f(x̃) − mean f(x), gradient −(E_data ∇f − E_x̃ ∇f), the
        # model's expectation pooled over the revised samples and the persistent chains
        persistent = None
        if c.buffer_chains:
            m = chains_per_rank(c.buffer_chains, b, across, self.family)
            revision_eps = ebm.mcmc_step_size.clone()  # _ml_negatives sets it to its chains' median
            u_m, neg, _ = ebm._ml_negatives(u[:m], g, across)
            ebm.mcmc_step_size.copy_(revision_eps)
            persistent = (u_m, neg)
        out = self.call("_ebm_objective", u, x_tilde, persistent)
        e_loss = out["loss"]
        with torch.no_grad():
            f_hat = self.f(x_hat).mean()
        logs = {
            "loss": float(e_loss.detach()),
            "energy_gap": float(out["f_data"] - out["f_tilde"]),
            "revision_gain": float(out["f_tilde"] - f_hat),
            "revision_dist": float((x_tilde - x_hat).norm(dim=-1).mean()),
            "accept": float(acc.mean()),
            "chain_grad": float(grad.mean()),
            "mcmc_step": float(eps),
        }
        logs = ebm._global_logs(logs, across)
        if not ebm._healthy(logs):  # every rank skips the backward together
            return ebm._recover(opt_e, logs)
        opt_e.zero_grad(set_to_none=True)
        e_loss.backward()
        _step_scaled(opt_e, float(ebm.lr_factor))

        # 4. MCMC teaching: regress g(z) onto x̃ with the same z (or the revised z̃)
        z_fit = self.infer_latent(z, x_tilde, g) if c.infer_z else z
        opt_g.zero_grad(set_to_none=True)
        g_loss = self.call("_teaching_loss", x_tilde, z_fit)
        g_value = float(ddp.mean_across(g_loss.detach()) if across else g_loss.detach())
        if not math.isfinite(g_value):  # a global decision: the mean is not finite on every rank
            from genmodels.train import TrainingDiverged

            raise TrainingDiverged(f"coop generator loss is {g_value}; try a lower --lr")
        g_loss.backward()
        _step_scaled(opt_g, c.g_lr_ratio * float(ebm.lr_factor))
        logs["g_loss"] = g_value
        if c.learn_sigma:  # σ² = mean ‖x̃ − g(z)‖² / d, the complete-data MLE, averaged over steps
            var = (1 - SIGMA_EMA) * float(self.g_sigma) ** 2 + SIGMA_EMA * logs["g_loss"] / self.dim
            self.g_sigma.fill_(math.sqrt(var))
        logs["sigma"] = float(self.g_sigma)

        if not all(bool(torch.isfinite(p).all()) for p in ebm.parameters()):
            return ebm._recover(opt_e, logs)  # the weights are equal on every rank: a global decision
        ebm.updates += 1
        if int(ebm.updates) % SNAPSHOT_EVERY == 0:
            ebm._take_snapshot(opt_e)
        ebm._last_logs = logs
        return logs

    def _ebm_objective(
        self, u: torch.Tensor, x_tilde: torch.Tensor, persistent: tuple[torch.Tensor, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        """The EBM's differentiated loss (step 3) on data ``u`` and revised samples ``x_tilde``:
        mean f(x̃) − mean f(u), pooled with the persistent chains' :meth:`EBM._ml_objective` on
        ``persistent`` = (data rows, chains) when ``buffer_chains`` (weights b and m, the counts).
        Run through :meth:`Model.call`, so DDP averages its gradient; also returns the detached
        means ``f_data`` and ``f_tilde`` for the logs."""
        f_data, f_tilde = self.f(u), self.f(x_tilde)
        loss = f_tilde.mean() - f_data.mean()
        if persistent is not None:
            u_m, neg = persistent
            b, m = u.shape[0], u_m.shape[0]
            loss = (b * loss + m * self.ebm._ml_objective(u_m, neg)["loss"]) / (b + m)
        return {"loss": loss, "f_data": f_data.mean().detach(), "f_tilde": f_tilde.mean().detach()}

    def _teaching_loss(self, x_tilde: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The generator's differentiated loss (step 4): mean ‖x̃ − g(z)‖², run through
        :meth:`Model.call`, so DDP averages its gradient."""
        return ((x_tilde - self.generator_net(z)) ** 2).sum(-1).mean()

    # -- the generative side --------------------------------------------------------------
    def _sample(
        self, n: int, *, generator: torch.Generator | None, refine_steps: int = -1, noise: bool = True
    ) -> torch.Tensor:
        """x̂ = g(z), z ~ N(0, I_k), then ``refine_steps`` revision steps under the EBM
        (-1: ``langevin_steps``, as in training; 0: the generator alone, g(z) + σε, or g(z)
        without ``noise``)."""
        if refine_steps < -1:
            raise ValueError(f"refine_steps must be >= 0, or -1 for langevin_steps; got {refine_steps}")
        g = _generator(generator, self.device)
        x_hat = self.generator_net(self.latent(n, g))
        steps = self.config.langevin_steps if refine_steps == -1 else refine_steps
        if steps == 0:
            if not noise:
                return x_hat
            eps = torch.randn(x_hat.shape, generator=g, device=self.device, dtype=x_hat.dtype)
            return x_hat + self.g_sigma.to(x_hat.dtype) * eps
        return self.revise(x_hat, g, steps)[0]

    def _log_prob(self, u: torch.Tensor, model: str = "ebm") -> LogDensity:
        """log π(u) of the EBM (``model="ebm"``): quadrature log Z in ≤ 2-D (exact), AIS
        otherwise (estimate). ``model="generator"`` has no density here (NotSupportedError)."""
        if model == "generator":
            raise NotSupportedError(
                "coop: the generator u = g(z) + σε has no tractable log-density and CoopNets has no "
                "inference model to estimate it; use model='ebm' (the default) for the EBM's density, "
                "or score the generator's samples (sample(n, refine_steps=0)) with "
                "kl_to_truth(..., method='grid')"
            )
        if model != "ebm":
            raise ValueError(f"unknown model {model!r}; choose one of: ebm, generator")
        return self.ebm._log_prob(u)

    def log_partition(
        self, method: Literal["auto", "grid", "ais"] = "auto", **options: Any
    ) -> dict[str, Any]:
        """log Z of the EBM in standardized coordinates (see :meth:`EBM.log_partition`)."""
        return self.ebm.log_partition(method, **options)


class Generator(nn.Module):
    """g(z) = A z + b + MLP(z), or with ``net="conv"`` A z + b + ConvDecoder(z) (the residual
    drawn as an image). :meth:`start_at` sets the affine part to the EBM's Gaussian
    reference q = N(m, LLᵀ) (A = [L, 0] on the first d latent coordinates, b = m) and the
    residual's output layer starts at zero, so the untrained generator draws from q, the untrained
    EBM's density: both models start at the same distribution, and the generator's proposals
    cover the data's extent from the first step (a generator that starts collapsed spreads only
    as fast as the EBM's drift field diverges, since it learns E[x̃ | z] and the Langevin noise
    averages out)."""

    def __init__(self, dim: int, c: CoopConfig) -> None:
        super().__init__()
        self.skip = nn.Linear(c.latent_dim, dim)
        self.net: nn.Module
        if c.net == "conv":
            side, act = image_side(dim, "conv"), _ACTIVATIONS[c.g_activation]
            self.net = ConvDecoder(
                c.latent_dim, side, base=conv_base(c.g_hidden), activation=act, zero_last=True
            )
        else:
            self.net = MLP(c.latent_dim, dim, c.g_hidden, c.g_depth, c.g_activation, zero_last=True)

    @torch.no_grad()
    def start_at(self, mean: torch.Tensor, chol: torch.Tensor) -> None:
        """A = [L, 0] (the first min(k, d) latent coordinates), b = m."""
        k = min(self.skip.in_features, chol.shape[0])
        self.skip.weight.zero_()
        self.skip.weight[:, :k] = chol[:, :k].to(self.skip.weight.dtype)
        self.skip.bias.copy_(mean.to(self.skip.bias.dtype))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.skip(z) + self.net(z)


def _step_scaled(opt: torch.optim.Optimizer, factor: float) -> None:
    """``opt.step()`` with every group's learning rate multiplied by ``factor`` for this step
    only (the training loop sets the scheduled rate before each step; restoring it keeps
    repeated calls outside the loop from compounding the factor)."""
    saved = [group["lr"] for group in opt.param_groups]
    for group in opt.param_groups:
        group["lr"] *= factor
    opt.step()
    for group, lr in zip(opt.param_groups, saved, strict=True):
        group["lr"] = lr


def _generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """The samplers draw from an explicit generator: ``generator``, or one seeded from the
    global RNG when none is given."""
    if generator is not None:
        return generator
    seed = int(torch.randint(2**62, ()))
    return torch.Generator(device=device).manual_seed(seed)


def _validate(c: CoopConfig) -> None:
    acts = ", ".join(_ACTIVATIONS)
    checks = [
        (c.latent_dim >= 1, f"latent_dim must be >= 1, got {c.latent_dim}"),
        (c.net in ("mlp", "conv"), f"unknown net {c.net!r}; choose one of: mlp, conv"),
        (c.g_hidden >= 1 and c.g_depth >= 0, "g_hidden must be >= 1 and g_depth >= 0"),
        (c.hidden >= 1 and c.depth >= 1, "hidden and depth must be >= 1"),
        (c.g_activation in _ACTIVATIONS, f"unknown g_activation {c.g_activation!r}; choose one of: {acts}"),
        (c.activation in _ACTIVATIONS, f"unknown activation {c.activation!r}; choose one of: {acts}"),
        (c.langevin_steps >= 1, f"langevin_steps must be >= 1, got {c.langevin_steps}"),
        (c.step_size > 0, f"step_size must be positive, got {c.step_size}"),
        (c.kernel in ("langevin", "mala"), f"unknown kernel {c.kernel!r}; choose one of: langevin, mala"),
        (c.g_lr_ratio > 0, f"g_lr_ratio must be positive, got {c.g_lr_ratio}"),
        (0.0 <= c.target_accept < 1.0, f"target_accept must be in [0, 1), got {c.target_accept}"),
        (c.buffer_chains >= 0, f"buffer_chains must be >= 0, got {c.buffer_chains}"),
        (c.buffer_size >= 1, f"buffer_size must be >= 1, got {c.buffer_size}"),
        (c.z_steps >= 1, f"z_steps must be >= 1, got {c.z_steps}"),
        (c.z_step_size > 0, f"z_step_size must be positive, got {c.z_step_size}"),
        (c.sigma > 0, f"sigma must be positive, got {c.sigma}"),
        (0.0 <= c.beta1 < 1.0 and 0.0 <= c.beta2 < 1.0, "beta1 and beta2 must be in [0, 1)"),
        (c.grid_size >= 8, f"grid_size must be >= 8, got {c.grid_size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
