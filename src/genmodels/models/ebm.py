"""Energy-based model: p_θ(x) = exp(f_θ(x)) q(x) / Z(θ), learned three ways (tutorial §3).

f_θ is a network giving the **negative energy**; q is a fixed reference density, so that

    log p_θ(x) = f_θ(x) + log q(x) − log Z(θ),     Z(θ) = ∫ exp(f_θ(x)) q(x) dx.

The tutorial writes p_θ = exp(f_θ)/Z (§3) and uses exactly this tilted form with a reference
q for noise-contrastive estimation and tempering (§3, §4). A reference does two jobs here: it
makes Z finite for any network whose output grows slower than quadratically (every MLP), and
it is where chains are (re)started and the noise of NCE comes from. By default q is a
Gaussian fitted to the (standardized) data; ``reference="flow"`` trains one of the library's
flows (``flow_family``: RealNVP by default, or MAF, NSF, MADE) on the data first and uses the
defensive mixture q = (1 − w) flow + w Gaussian (flow-contrastive estimation, Gao et al. 2020;
w = ``reference_mix``); ``reference="target"`` takes a built-in target's density as q (the same
mixture), e.g. a known density close to the data.
The output layer of f starts at zero, so the untrained model is q itself. f is an MLP, or for
square one-channel images (``energy="conv"``) a convolutional trunk (:mod:`genmodels.nets.conv`),
which the training loop picks on such images (held-out digits: 2.59 bits/dim against the MLP's
3.10 with the same 90 s budget; ``image_options``).

Methods (``method``):

- ``"mle"``: maximum likelihood by MCMC, "analysis by synthesis". The gradient of the
  log-likelihood is (tutorial §3)

      L'(θ) = E_data[∇_θ f_θ(x)] − E_{p_θ}[∇_θ f_θ(x)],

  the second expectation taken over synthesized examples x̃ drawn from p_θ by MCMC (the
  kernels of ``genmodels.samplers``). We minimise mean f(x̃) − mean f(x), whose gradient is
  −L'. Chains are ``"persistent"`` (a replay buffer of chains that continue from one step to
  the next, each with its own MALA step size, a fraction ``reinit`` restarted each step;
  Tieleman 2008, Du & Mordatch 2019) or ``"short-run"`` (every step starts fresh from q and
  runs ``mcmc_steps`` steps; Nijkamp et al. 2019: the learned short-run sampler, not p_θ, is
  then the model's sampler). Persistent chains do not mix between well-separated modes, so
  the relative weights of such modes are not learned without tempering (docs/benchmarks.md,
  rings): by default every persistent chain has hotter replicas (``temperatures``). On sharp
  modes the model sharpens faster than chains revisited every ``buffer_size``/batch updates can
  follow, and the energy runs away; by default the data is therefore convolved with noise
  annealed to zero over the first half of the run (``data_noise``), restarted chains start at
  data points (``reinit_from``), and step sizes adapt at every kernel step. An MLP on u alone
  could not curve as sharply as the PacGAN modes (peaks 1.2× too wide), so in 1-D and 2-D the
  MLP reads random Fourier features [u, sin Bu, cos Bu] (``fourier_features``, Tancik et al.
  2020), smoothed at the current noise level (E sin(b·(u + σε)) = e^{−σ²‖b‖²/2} sin(b·u)) so
  that f gains its high frequencies as the data sharpens, and mle and cd train at lr 3e-3
  (``train_defaults_by_option``; at nce's 1e-2 they diverged).
- ``"cd"``: contrastive divergence, the same loss with chains started at the data batch
  (Hinton 2002). With C(θ) = KL(p_data‖p_θ) − KL(p_θt‖p_θ), the corrected form of tutorial §3
  ([C] in ``shared/tutorial.md``) is ∂C/∂θ = −E_data[∇f_θ] + E_{p_θt}[∇f_θ], the very
  gradient of our loss; p_θt is in practice the distribution after ``mcmc_steps`` steps.
- ``"nce"``: noise-contrastive estimation (Gutmann & Hyvärinen 2010), tutorial §3 with its
  correction: the "true" examples are the observed data, the noise x̃ ~ q, and the logit is
  log p_θ(x)/q(x) = f_θ(x) + c with a learned constant c = −log Z. We minimise

      −mean_i log σ(f(x_i) + c) − mean_j log(1 − σ(f(x̃_j) + c)),

  so the model is learned without sampling from it.

Everything happens in the standardized coordinates u = (x − shift)/scale of
:class:`~genmodels.models.base.Model`.

log Z: in 1-D and 2-D by quadrature on a grid (``genmodels.quadrature``; ``log_prob`` is then
labelled exact, up to the grid error that :meth:`EBM.log_partition` reports), in any
dimension by annealed importance sampling along the geometric path from N(0, I) to exp(f) q
(the tutorial's tempering, §4; ``genmodels.samplers.ais``; labelled an estimate, with its
standard error).

Data-parallel training (``torchrun``; :mod:`genmodels.distributed`): each rank takes its slice
of the global batch and draws its own noise (data noise, chain draws and restarts, the MCMC's
proposals, NCE's noise); the chains run on the plain module, and only the loss on them goes
through :meth:`Model.call`, so DDP averages the gradients. What must be decided alike on every
rank is global: short-run and CD chains adapt their step size to the acceptance averaged over
the ranks; the persistent chains are one buffer of ``buffer_size`` chains that every rank holds
and that the ranks advance together, each its own draw of B/N chains (B the global batch), all
draws gathered and written in rank order, so the buffer and its step sizes stay identical on
every rank, as much per step is done as by one process with batch B, and rank 0's checkpoint
holds all of it; the health check below reads the logs averaged over the ranks. The reference q
(``prepare``, before the wrapper) is fitted identically on every rank; a flow reference is
trained data-parallel itself. One process is unaffected: bit for bit what it was without DDP.

Training health: every step logs the energy gap mean f(data) − mean f(samples), the mean
norm of the chains' gradient ∇_u log p, and the acceptance rate. When the loss, the energies
or the weights become non-finite, or the gap exceeds ``max_energy_gap``, the model restores
its last good state, halves both the learning rate and the MCMC step size, and says so; after
``max_recoveries`` such restarts it stops with :class:`genmodels.train.TrainingDiverged`.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from genmodels import distributed as ddp
from genmodels.models.base import Model, ModelConfig, SampleConfig
from genmodels.nets.conv import ConvEncoder, conv_base, image_side
from genmodels.nets.mlp import _ACTIVATIONS, MLP, Activation, RandomFourierFeatures
from genmodels.quadrature import GridLogZ, grid_log_partition, grid_sample
from genmodels.samplers.ais import sir_temperature
from genmodels.samplers.base import run_warmup
from genmodels.samplers.hmc import HMC
from genmodels.samplers.langevin import MALA, Langevin
from genmodels.samplers.tempering import ParallelTempering, geometric_ladder, log_standard_normal
from genmodels.types import LogDensity

Method = Literal["mle", "cd", "nce"]
KernelName = Literal["mala", "langevin", "hmc"]
#: target acceptance rates of the adapted kernels (Roberts & Rosenthal 1998; Stan)
TARGET_ACCEPT = {"mala": 0.574, "hmc": 0.8}
LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class EBMConfig(ModelConfig):
    """Options of the energy-based model."""

    method: Method = "nce"
    """learning rule: nce (noise-contrastive estimation, no sampling: the robust default),
    mle (maximum likelihood by MCMC), cd (contrastive divergence)"""
    energy: Literal["mlp", "conv", "quadratic"] = "mlp"
    """the network f: an MLP; conv, for square one-channel images (dim = side², side divisible
    by 4, e.g. 8×8 digits), the convolutional trunk of :class:`genmodels.nets.conv.ConvEncoder`
    (strided 3×3 convolutions with ``activation``, then a linear map to f, zero at the start as
    the MLP's); or a quadratic −½uᵀWu + bᵀu (a Gaussian energy)"""
    hidden: int = 128
    """width of the MLP (conv: hidden / 8 base channels, at least 8)"""
    depth: int = 3
    """hidden layers of the MLP"""
    activation: Activation = "silu"
    """nonlinearity of the MLP (smooth, so that the score the samplers follow is continuous)"""
    fourier_features: int = -1
    """F > 0: the MLP sees [u, sin(Bu), cos(Bu)] with B an F × d matrix of N(0, s²) entries,
    fixed at construction (random Fourier features, Tancik et al. 2020), so that f can curve
    as sharply as narrow modes need; 0: the MLP sees u; -1 (auto): 64 where the data noise
    anneals (``data_noise`` > 0: mle with persistent chains, and cd; an MLP energy) in 1-D and
    2-D, else 0. Short-run chains never visit most of the space, and f grew spikes there that
    wrecked the density (8gaussians, 600 steps: KL 5061 against 1.42 untrained). With
    the features, mle's peaks on the PacGAN ring and grid came out at their width (HQ 99 %
    against 92–93 %); without the annealing to bring the high frequencies in gradually they
    made mle diverge (docs/benchmarks.md). Beyond 2-D they are not measured, hence off"""
    fourier_scale: float = 16.0
    """s: standard deviation of the frequencies B in standardized units (fourier_features > 0)"""
    fourier_smoothing: bool = True
    """while the data noise anneals (σ > 0), damp the feature of frequency b by e^{−σ²‖b‖²/2}
    (the features smoothed at the noise's scale), so that f gains detail as the data does"""
    reference: Literal["gaussian", "flow", "target"] = "gaussian"
    """q: a Gaussian fitted to the data, a flow of the library trained on the data first
    (``flow_family``), or a built-in target's density (``reference_target``)"""
    flow_family: str = "realnvp"
    """reference=flow: the family trained on the data as q, one with an exact log-density and
    sampling: realnvp, maf, nsf or made (default options, ``flow_steps`` steps)"""
    flow_steps: int = 3000
    """training steps of the flow reference (reference=flow)"""
    reference_target: str = ""
    """reference=target: the built-in target (``genmodels datasets``) whose density is q, mapped
    to the standardized coordinates with its Jacobian; it must have the data's dimension"""
    reference_mix: float = 0.5
    """weight w of the fitted Gaussian in the flow or target reference q = (1 − w)·flow + w·Gaussian"""
    chains: Literal["persistent", "short-run"] = "persistent"
    """mle: persistent chains with a replay buffer, or short-run chains from q every step"""
    kernel: KernelName = "mala"
    """MCMC kernel of the chains: mala, langevin (unadjusted) or hmc"""
    mcmc_steps: int = 20
    """kernel steps per training step (k of CD-k for method cd); with tempering each of the
    T replicas takes max(1, mcmc_steps // T) steps, so that tempered chains cost about what
    plain ones do"""
    step_size: float = 0.01
    """MCMC step size Δt in standardized units (initial value; mala and hmc adapt it to their
    target acceptance while training, langevin keeps it)"""
    leapfrog: int = 5
    """leapfrog steps per HMC transition"""
    buffer_size: int = 10_000
    """persistent chains kept in the replay buffer"""
    reinit: float = 0.05
    """fraction of the persistent chains restarted from q at each step"""
    temperatures: int = 4
    """persistent chains: replicas per chain on a geometric ladder β ∈ [0.01, 1] of the tempered
    family exp(β f̃) N(0, I), f̃ = f + log q − log N(0, I), exchanged by parallel tempering
    (tutorial §4) so that chains move between separated modes and keep their weights; 1 = no
    tempering"""
    reinit_from: Literal["reference", "data", "uniform"] = "data"
    """where restarted (and initial) persistent chains start: data points (as in contrastive
    divergence; the chains then run on and forget their start), draws of q, or uniform over
    the quadrature box. From data, chains stuck between sharp modes are replaced by chains in
    them (with ``data_noise`` this is what kept mle stable on the PacGAN grid)"""
    energy_reg: float = 0.0
    """weight α of the penalty α·(mean f(x)² + mean f(x̃)²) (Du & Mordatch 2019); 0 is pure MLE"""
    gap_reg: float = 0.0
    """weight γ of the penalty γ·(mean f(x) − mean f(x̃))²: zero in expectation where the model
    fits (there E_data f = E_model f), it stops the energy from running away from chains that
    cannot follow"""
    energy_floor: float = 0.0
    """F > 0: f = −F + softplus(g + F), a smooth floor F nats below f's starting level, with g the
    network. Where the model has next to no mass f is flat, so persistent chains stuck there
    diffuse out instead of being pushed deeper (the runaway of sharp targets); the mass the
    floor adds is ≤ e^{−F} of q's. 0 = no floor"""
    data_noise: float = 0.3
    """σ₀ (mle and cd): learn from the data convolved with N(0, σ²I) in standardized units, σ
    annealed geometrically from σ₀ to σ₀/100 over the first ``data_noise_fraction`` of the run,
    then 0. The model sharpens gradually from a smooth density, and persistent chains follow its
    modes as they narrow instead of having to find modes that are already sharp. The geometric
    schedule narrows every mode wider than σ₀/100 at the same relative rate, whatever its width
    (a linear one narrows sharp modes fastest at its end); the noise levels form a geometric
    sequence as in Song & Ermon 2019 (NCSN), here annealed while learning rather than sampling.
    Without it (0 = off) mle diverged on the PacGAN grid (modes 0.018 wide in standardized
    units); docs/benchmarks.md"""
    data_noise_fraction: float = 0.5
    """share of the training steps over which the data noise anneals to 0"""
    grid_size: int = 400
    """cells per axis of the quadrature grid for log Z in 1-D and 2-D"""
    max_energy_gap: float = 1e4
    """|mean f(data) − mean f(samples)| above this counts as divergence"""
    max_recoveries: int = 5
    """restarts from the last good state before training stops as diverged"""


@dataclass
class EBMSampleConfig(SampleConfig):
    """Options of ``sample`` for the energy-based model."""

    sampler: Literal["auto", "mala", "hmc", "langevin", "short-run", "grid"] = "auto"
    """auto: the short-run sampler for short-run models, else mala; grid: exact draws from
    the quadrature grid (1-D and 2-D)"""
    steps: int = 200
    """kernel steps after warm-up (mala, hmc, langevin)"""
    warmup: int = 100
    """warm-up steps adapting the step size (mala, hmc)"""
    init: Literal["auto", "buffer", "reference", "resample"] = "auto"
    """where chains start: the persistent buffer, q, or q importance-resampled by the weights
    exp(f) (sampling–importance–resampling, already distributed as p when q covers p well;
    tempered where the weights degenerate, as in high dimension: ``EBM.resample_q``);
    auto: the buffer when the model has persistent chains, else resample"""


#: draws of q per returned draw in ``EBM.resample_q``
SIR_OVERSAMPLE = 16


@dataclass
class ChainShare:
    """One draw of persistent chains advanced by one rank in one step (:meth:`EBM._persistent_run`)."""

    idx: torch.Tensor
    """(n,) the chains' rows in the buffer"""
    neg: torch.Tensor
    """(n, d) their new cold positions"""
    hot: torch.Tensor
    """(T − 1, n, d) the new positions of their hot replicas ((0, n, d) without tempering)"""
    steps: torch.Tensor
    """(T, n) the adapted step sizes, the hot replicas' then the cold chains' (last row)"""
    accept: torch.Tensor | None = None
    """(n,) the cold chains' mean acceptance (for the logs; not gathered)"""
    grad: torch.Tensor | None = None
    """(n,) the norm of ∇ log p̃ at the cold chains' new positions (for the logs; not gathered)"""
    eps: torch.Tensor | None = None
    """(n,) the cold chains' step sizes before this step (for the logs; not gathered)"""


class QuadraticEnergy(nn.Module):
    """f(u) = −½ uᵀ W u + bᵀ u with W symmetric; zero at initialisation."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(dim, dim))
        self.b = nn.Parameter(torch.zeros(dim))

    @property
    def W(self) -> torch.Tensor:
        return 0.5 * (self.raw + self.raw.T)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((u @ self.W) * u).sum(-1, keepdim=True) + u @ self.b[:, None]


class EBM(Model):
    """Energy-based model p(u) ∝ exp(f(u)) q(u); see the module docstring."""

    family: ClassVar[str] = "ebm"
    autocast_unsafe_because: ClassVar[str] = (
        "its loss is the small difference of the mean energies of data and of MCMC samples,"
        " which bfloat16's 8-bit mantissa would swamp"
    )
    Config: ClassVar[type[ModelConfig]] = EBMConfig
    SampleConfig: ClassVar[type[SampleConfig]] = EBMSampleConfig
    has_log_prob: ClassVar[bool] = True
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 6000, "lr": 1e-2, "batch_size": 256, "warmup": 0.25}
    #: mle and cd learn at a third of nce's rate: with the Fourier features at 1e-2 mle diverged
    #: on the PacGAN ring as the data noise fell below 0.04 (also with the features' layer at
    #: 0.3× the rate); nce at 3e-3 had not converged in 6000 steps (8gaussians KL 0.36 against 0.003)
    train_defaults_by_option: ClassVar[dict[str, dict[Any, dict[str, Any]]]] = {
        "method": {"mle": {"lr": 3e-3}, "cd": {"lr": 3e-3}}
    }
    tour_steps: ClassVar[int] = 3000
    #: the step keeps every buffer identical on all ranks itself (global decisions, gathered chain
    #: updates), so DDP need not broadcast rank 0's buffers (the chains) at every forward
    ddp_sync_buffers: ClassVar[bool] = False
    #: checkpoints from before the data-noise schedule learned from the data itself
    options_before: ClassVar[dict[str, Any]] = {"data_noise": 0.0, "fourier_features": 0}
    #: held-out digits (bench_digits, 90 s of one shared core, seed 0; AIS estimates): mlp 3.10 bits/dim,
    #: FD 1724, 5 classes (17 325 steps); conv 2.59, FD 781, 7 classes (6205 steps; 3000 steps: 2.60)
    image_options: ClassVar[dict[str, Any]] = {"energy": "conv"}
    config: EBMConfig

    def __init__(self, dim: int, config: EBMConfig | None = None) -> None:
        super().__init__(dim, config)
        c = self.config
        _validate(c)
        self.__dict__["_fourier"] = None
        if c.energy == "mlp":
            n_features = fourier_features(c, dim)
            if n_features:
                features = RandomFourierFeatures(dim, n_features, c.fourier_scale)
                mlp = MLP(features.out_dim, 1, c.hidden, c.depth, c.activation, zero_last=True)
                self.f_net: nn.Module = nn.Sequential(features, mlp)
                self.__dict__["_fourier"] = features  # a reference, not a second submodule
            else:
                self.f_net = MLP(dim, 1, c.hidden, c.depth, c.activation, zero_last=True)
        elif c.energy == "conv":
            side = image_side(dim, "conv", option="energy")
            act = _ACTIVATIONS[c.activation]
            self.f_net = ConvEncoder(side, 1, base=conv_base(c.hidden), activation=act, zero_last=True)
        else:
            self.f_net = QuadraticEnergy(dim)
        if c.method == "nce":
            #: the NCE constant c = −log Z
            self.c = nn.Parameter(torch.zeros(()))
        if c.reference == "flow":
            from genmodels.models import get_family

            self.flow = get_family(c.flow_family)(dim)
            self.flow.requires_grad_(False)
        #: reference=target: the target whose density is q (no parameters; rebuilt from its name)
        self.__dict__["_ref_target"] = None
        if c.reference == "target":
            from genmodels.distributions import get_target

            target = get_target(c.reference_target)
            if target.dim != dim:
                raise ValueError(
                    f"reference_target {c.reference_target!r} has dimension {target.dim}, the data {dim}"
                )
            self.__dict__["_ref_target"] = target
        # The reference Gaussian N(ref_mean, ref_chol ref_cholᵀ) and the quadrature box (in u).
        self.register_buffer("ref_mean", torch.zeros(dim))
        self.register_buffer("ref_chol", torch.eye(dim))
        self.register_buffer("box_lo", torch.full((dim,), -4.0))
        self.register_buffer("box_hi", torch.full((dim,), 4.0))
        size = c.buffer_size if c.method == "mle" and c.chains == "persistent" else 0
        self.register_buffer("chains", torch.zeros(size, dim))
        self.register_buffer("chain_step", torch.full((size,), float(c.step_size)))
        hot = c.temperatures - 1 if size else 0
        self.register_buffer("hot_chains", torch.zeros(hot, size, dim))
        # Each hot replica adapts its own step size: a hot density exp(β f̃) N(0, I) is far wider
        # than the cold one, so the cold chain's step would freeze it (and tempering with it).
        self.register_buffer("hot_step", torch.full((hot, size), float(c.step_size)))
        # Adapted MCMC step size, learning-rate factor and restarts: all checkpointed.
        self.register_buffer("mcmc_step_size", torch.tensor(float(c.step_size), dtype=torch.float64))
        self.register_buffer("lr_factor", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("recoveries", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("updates", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("prepared", torch.tensor(False))
        self._snapshot: dict[str, Any] | None = None
        self._last_logs: dict[str, float] = {}
        self._logz_cache: tuple[tuple, Any] | None = None
        # The run's length (the data-noise schedule's horizon), set by the loop (plan) and
        # checkpointed: the smoothing of the Fourier features depends on it, also after loading.
        self.register_buffer(
            "planned_steps", torch.tensor(int(self.train_defaults["steps"]), dtype=torch.int64)
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        # Checkpoints from before per-replica step sizes: the hot replicas start from the cold
        # chains' step sizes and adapt from there.
        key = prefix + "hot_step"
        if key not in state_dict and prefix + "chain_step" in state_dict:
            state_dict[key] = state_dict[prefix + "chain_step"].expand_as(self.hot_step).clone()
        if prefix + "updates" not in state_dict:  # checkpoints from before the data-noise schedule
            state_dict[prefix + "updates"] = torch.zeros((), dtype=torch.int64)
        if prefix + "planned_steps" not in state_dict:  # ... and from before it was checkpointed
            state_dict[prefix + "planned_steps"] = self.planned_steps.clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- the density ------------------------------------------------------------------
    def f(self, u: torch.Tensor) -> torch.Tensor:
        """The negative energy f_θ(u), shape (n,)."""
        if self._fourier is not None and self.config.fourier_smoothing:
            self._fourier.smoothing = self.data_noise_level()
        g = self.f_net(u).squeeze(-1)
        floor = self.config.energy_floor
        if floor > 0:
            return torch.nn.functional.softplus(g + floor) - floor
        return g

    def _log_gaussian(self, u: torch.Tensor) -> torch.Tensor:
        z = torch.linalg.solve_triangular(self.ref_chol, (u - self.ref_mean).T, upper=False).T
        log_det = torch.log(torch.diagonal(self.ref_chol)).sum()
        return -0.5 * (z**2).sum(-1) - log_det - 0.5 * self.dim * LOG_2PI

    def _sample_gaussian(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=self.ref_mean.dtype, device=self.device)
        return self.ref_mean + z @ self.ref_chol.T

    def _log_ref(self, u: torch.Tensor) -> torch.Tensor:
        """log-density in u of the flow (trained in u) or of the target (in data space x =
        shift + scale·u, hence + Σ log scale)."""
        target = self._ref_target
        if target is None:
            return self.flow.log_prob(u).values
        x = self.shift + self.scale * u  # targets keep their parameters on the CPU
        return target.log_prob(x.cpu()).to(device=u.device, dtype=u.dtype) + torch.log(self.scale).sum()

    def _sample_ref(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        target = self._ref_target
        if target is None:
            return self.flow.sample(n, generator=generator)
        if generator is not None and generator.device.type != "cpu":  # targets sample on the CPU
            seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
            generator = torch.Generator().manual_seed(seed)
        x = target.sample(n, generator=generator).to(device=self.device, dtype=self.shift.dtype)
        return (x - self.shift) / self.scale

    def log_q(self, u: torch.Tensor) -> torch.Tensor:
        """log q(u) of the reference, shape (n,). The flow and target references are the
        defensive mixture q = (1 − w)·flow + w·Gaussian, w = ``reference_mix``, so that q covers
        the data even where the flow left a hole (a region NCE's noise never visits cannot be
        corrected)."""
        if self.config.reference == "gaussian":
            return self._log_gaussian(u)
        w = self.config.reference_mix
        log_flow = self._log_ref(u) + math.log1p(-w)
        if w == 0:
            return log_flow
        return torch.logaddexp(log_flow, self._log_gaussian(u) + math.log(w))

    def sample_q(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """n draws from the reference q, in u."""
        if self.config.reference == "gaussian":
            return self._sample_gaussian(n, generator)
        x = self._sample_ref(n, generator)
        w = self.config.reference_mix
        if w == 0:
            return x
        pick = torch.rand(n, generator=generator, device=self.device) < w
        return torch.where(pick[:, None], self._sample_gaussian(n, generator), x)

    def resample_q(
        self, n: int, generator: torch.Generator | None, oversample: int = SIR_OVERSAMPLE
    ) -> torch.Tensor:
        """n draws by sampling–importance–resampling: ``oversample``·n draws of q, resampled
        with weights p/q ∝ exp(f). Exact as oversample → ∞; with finite oversampling a good
        start for MCMC, with every mode represented in proportion to its learned mass when q
        covers the modes (chains started from q alone keep q's proportions until they mix).

        In high dimension the weights degenerate: on 8×8 digits the effective sample size of
        3,200 weights was 1.08, so every chain would start from the same point. The weights are
        then tempered, exp(β·f) with the largest β ≤ 1 whose effective sample size is at least
        n/2 (:func:`sir_temperature`; adaptive tempering as in SMC samplers, Jasra et al. 2011):
        the draws follow q·e^{βf}, between q and the model, and the MCMC that follows goes the
        rest of the way. Where plain SIR's weights are healthy, β = 1 and nothing changes."""
        with torch.no_grad():
            pool = self.sample_q(n * oversample, generator)
            log_w = torch.cat([self.f(chunk) for chunk in pool.split(65536)]).double()
            beta = sir_temperature(log_w, n / 2)
            where = generator.device if generator is not None else "cpu"  # multinomial draws there
            weights = torch.softmax(beta * log_w, 0).to(where)  # β = 1: plain SIR, exactly
            idx = torch.multinomial(weights, n, replacement=True, generator=generator)
        return pool[idx.to(pool.device)]

    def unnormalized(self, u: torch.Tensor) -> torch.Tensor:
        """log p̃(u) = f(u) + log q(u), the log-density the samplers follow; (n,)."""
        return self.f(u) + self.log_q(u)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) = −(f(u) + log q(u)) at data-space x: log p(x) = −E(x) − log Z − Σ log scale."""
        return -self.unnormalized(self.normalize(x.to(self.scale.dtype)))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """∇ₓ log p(x) in data space, shape (n, d)."""
        with torch.enable_grad():
            x_ = x.detach().to(self.scale.dtype).requires_grad_(True)
            (g,) = torch.autograd.grad(self.unnormalized(self.normalize(x_)).sum(), x_)
        return g.detach()

    def log_partition(
        self, method: Literal["auto", "grid", "ais"] = "auto", **options: Any
    ) -> dict[str, Any]:
        """log Z of p̃ = exp(f) q in standardized coordinates, with its error and kind.

        ``auto``: quadrature in 1-D and 2-D (kind ``exact``; ``error`` is the grid error),
        AIS otherwise (kind ``estimate``; ``error`` is its standard error). Results are
        cached until the parameters change. ``options`` go to the AIS run (``n_chains``,
        ``betas``, ``generator``) or the grid (``n``).
        """
        if method == "auto":
            method = "grid" if self.dim <= 2 else "ais"
        key = (method, tuple(sorted(options.items(), key=str)), self._logz_version())
        if self._logz_cache is not None and self._logz_cache[0] == key:
            return self._logz_cache[1]
        if method == "grid":
            result = self._grid_logz(int(options.get("n", self.config.grid_size)))
            out = {
                "value": result.value,
                "error": result.error,
                "kind": "exact",
                "method": "grid",
                "tail": result.tail,
                "cells": result.n,
            }
        elif method == "ais":
            out = self._ais_logz(**options)
        else:
            raise ValueError(f"unknown log Z method {method!r}; choose one of: auto, grid, ais")
        self._logz_cache = (key, out)
        return out

    def _logz_version(self) -> tuple:
        """Identifies the weights and reference behind a cached log Z (not ``_version``: that name
        is nn.Module's own, read into every state dict's metadata)."""
        tensors = [*self.parameters(), self.ref_mean, self.ref_chol, self.box_lo, self.box_hi]
        return (*((id(t), t._version) for t in tensors), str(self.device))

    def _grid_logz(self, n: int) -> GridLogZ:
        with torch.no_grad():
            return grid_log_partition(
                self.unnormalized, self.box_lo, self.box_hi, n, dtype=self.shift.dtype, device=self.device
            )

    def _ais_logz(
        self, n_chains: int = 1000, betas: int = 500, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        from genmodels.samplers.ais import ais

        g = generator if generator is not None else torch.Generator(device=self.device).manual_seed(0)
        step = float(self.mcmc_step_size)
        with _Frozen(self):
            est = ais(
                lambda u: self.unnormalized(u.to(self.shift.dtype)),
                lambda beta: MALA(step_size=step),
                n_chains,
                self.dim,
                generator=g,
                betas=betas,
            )
        return {"value": est.value, "error": est.stderr, "kind": "estimate", "method": "ais", "ess": est.ess}

    def _log_prob(self, u: torch.Tensor) -> LogDensity:
        logz = self.log_partition()
        with torch.no_grad():
            values = self.unnormalized(u) - logz["value"]
        return LogDensity(values, "exact" if logz["kind"] == "exact" else "estimate")

    # -- set-up -----------------------------------------------------------------------
    def prepare(self, x: torch.Tensor, generator: torch.Generator, progress: bool = False) -> None:
        """Fit q (Gaussian, or train the flow), set the quadrature box, fill the chains from q."""
        if bool(self.prepared):
            return
        u = self.normalize(x.to(self.shift.dtype))
        mean = u.mean(0)
        cov = torch.atleast_2d(torch.cov(u.T.double())) if u.shape[0] > 1 else torch.eye(self.dim)
        cov = cov + 1e-6 * torch.eye(self.dim, dtype=cov.dtype, device=cov.device)
        self.ref_mean.copy_(mean)
        self.ref_chol.copy_(torch.linalg.cholesky(cov).to(self.ref_chol.dtype))
        margin = u.std(0).clamp_min(1e-3) if u.shape[0] > 1 else torch.ones_like(mean)
        self.box_lo.copy_(u.min(0).values - margin)
        self.box_hi.copy_(u.max(0).values + margin)
        if self.config.reference == "flow":
            self._train_flow(u, progress)
        if self.chains.numel():
            g = _on(generator, self.device)
            if self.config.reinit_from == "data":
                idx = torch.randint(u.shape[0], (self.chains.shape[0],), generator=g, device=self.device)
                self.chains.copy_(u[idx])
            else:
                self.chains.copy_(self.sample_q(self.chains.shape[0], g))
            for k in range(self.hot_chains.shape[0]):
                self.hot_chains[k].copy_(self.sample_q(self.chains.shape[0], g))
        self.prepared.fill_(True)

    def _train_flow(self, u: torch.Tensor, progress: bool) -> None:
        from genmodels.data import Dataset
        from genmodels.train import TrainConfig, train

        if progress:
            name, steps = self.config.flow_family, self.config.flow_steps
            tqdm.write(f"ebm: training the {name} reference q on the data ({steps} steps)")
        data = Dataset(name="ebm-reference", dim=self.dim, train=u.detach().cpu())
        cfg = TrainConfig(steps=self.config.flow_steps, progress=progress, device=str(self.device))
        self.flow.requires_grad_(True)
        train(self.flow, data, cfg)
        self.flow.requires_grad_(False)
        self.flow.eval()

    # -- training ---------------------------------------------------------------------
    def step(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """One update. Under DDP (:mod:`genmodels.distributed`) every branch below is taken alike
        on every rank: the MCMC runs on the plain module with this rank's noise, the loss on its
        result goes through :meth:`Model.call` (gradients averaged), the step-size adaptation and
        the persistent chains' updates are global (:meth:`_ml_loss`), and the health check reads
        the logs averaged over the ranks, so a restore or a skipped update happens everywhere."""
        if not bool(self.prepared):
            raise RuntimeError("call prepare(data_sample, generator) first (the training loop does)")
        (opt,) = self.optimizers.values()
        if self._snapshot is None:
            self._take_snapshot(opt)
        for group in opt.param_groups:
            group["lr"] *= float(self.lr_factor)
        u = self.normalize(batch)
        opt.zero_grad(set_to_none=True)
        if self.config.method == "nce":
            out = self.call("_nce_loss", u, generator)
        else:
            out = self._ml_loss(u, generator)
        logs = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()}
        logs = self._global_logs(logs)
        if not self._healthy(logs):
            # every rank skips the backward together (a DDP forward without backward is fine)
            return self._recover(opt, logs)
        out["loss"].backward()
        opt.step()
        if not all(bool(torch.isfinite(p).all()) for p in self.parameters()):
            return self._recover(opt, logs)  # the weights are equal on every rank: a global decision
        self.updates += 1  # healthy updates: the snapshots' and the data noise's clock
        if int(self.updates) % SNAPSHOT_EVERY == 0:
            self._take_snapshot(opt)
        self._last_logs = logs
        return logs

    def _global_logs(self, logs: dict[str, float], across: bool | None = None) -> dict[str, float]:
        """Under DDP, the logged scalars averaged over the ranks (the means over the global batch:
        the shards are equal), so that the health check decides alike on every rank; a NaN on
        one rank makes the mean NaN everywhere. In one process, ``logs`` itself.

        ``across``: whether the step runs on all ranks together; by default whether this model is
        the one DDP wraps. A family holding an EBM as a submodule (coop, triangle: only the top
        model is wrapped) passes its own :attr:`~Model.data_parallel`."""
        if not (self.data_parallel if across is None else across):
            return logs
        values = ddp.mean_across(torch.tensor(list(logs.values()), dtype=torch.float64))
        return dict(zip(logs, values.tolist(), strict=True))

    def _ml_loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """MLE / CD: mean f(x̃) − mean f(x) (+ the optional energy penalty), with health logs.

        The chains run on the plain module (no parameter gradients, hence not through DDP); only
        :meth:`_ml_objective` on their result goes through :meth:`Model.call`. Short-run and CD
        chains share one step size, adapted by the acceptance averaged over the ranks."""
        u, neg, stats = self._ml_negatives(u, generator)
        return {**self.call("_ml_objective", u, neg), **stats}

    def _ml_negatives(
        self, u: torch.Tensor, generator: torch.Generator | None, across: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The non-differentiated half of :meth:`_ml_loss`: (the data ``u`` after the data noise,
        the finished chains x̃, their statistics for the logs). Runs the chains on the plain
        module and updates the shared state (step size, persistent buffer) globally when
        ``across`` (default: whether this model is the one DDP wraps). coop and triangle, whose
        submodule this EBM is, call it with their own :attr:`~Model.data_parallel` and put
        :meth:`_ml_objective` inside a loss of theirs that goes through their :meth:`Model.call`."""
        across = self.data_parallel if across is None else across
        c = self.config
        u = self._noised(u, generator)
        n = u.shape[0]
        if c.method == "cd" or c.chains == "short-run":
            start = u.detach() if c.method == "cd" else self.sample_q(n, generator)
            # one step size for all chains, adapted by their mean acceptance (over all ranks)
            eps = self.mcmc_step_size.to(u.dtype)
            neg, acc, grad = self.run_chains(start, c.mcmc_steps, generator, float(eps))
            mean_acc = ddp.mean_across(acc.mean()) if across else acc.mean()
            self.mcmc_step_size.copy_(self._adapted(eps, mean_acc))
        else:
            share = self._persistent_run(u, generator)
            for each in self._gathered(share, across):
                self._store_chains(each)
            self.mcmc_step_size.fill_(float(self.chain_step.median()))
            neg, acc, grad, eps = share.neg, share.accept, share.grad, share.eps
        stats = {"accept": acc.mean(), "chain_grad": grad.mean(), "mcmc_step": eps.median()}
        return u, neg, stats

    def _ml_objective(self, u: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        """The differentiated part of mle and cd on data ``u`` and finished chains ``neg``: run
        through :meth:`Model.call`, so DDP averages its gradient."""
        c = self.config
        f_data, f_neg = self.f(u), self.f(neg)
        loss = f_neg.mean() - f_data.mean()
        if c.energy_reg > 0:
            loss = loss + c.energy_reg * ((f_data**2).mean() + (f_neg**2).mean())
        if c.gap_reg > 0:
            loss = loss + c.gap_reg * (f_data.mean() - f_neg.mean()) ** 2
        return {"loss": loss, "energy_gap": (f_data.mean() - f_neg.mean()).detach()}

    def _persistent_run(self, u: torch.Tensor, generator: torch.Generator | None) -> ChainShare:
        """Advance one draw of persistent chains, one per row of ``u``, and return them with their
        adapted step sizes, leaving the buffer alone (:meth:`_store_chains` writes it).

        Draws the chains from the buffer, restarts a fraction ``reinit`` of them (fresh chains
        start at the median step size), runs them, tempered when ``temperatures`` > 1; every
        chain adapts its own step size to its own acceptance."""
        c = self.config
        n = u.shape[0]
        idx = torch.randint(self.chains.shape[0], (n,), generator=generator, device=self.device)
        start = self.chains[idx]
        fresh = torch.rand(n, generator=generator, device=self.device) < c.reinit
        restart = self._restarts(u, generator)
        start = torch.where(fresh[:, None], restart, start)
        eps = torch.where(fresh, self.chain_step.median(), self.chain_step[idx])
        if self.hot_chains.shape[0]:
            steps = torch.cat([self.hot_step[:, idx], eps[None]])
            neg, hot, acc_all, grad, adapted = self._tempered_chains(
                start, self.hot_chains[:, idx], steps, generator
            )
            acc = acc_all[-1]
        else:
            neg, acc, grad = self.run_chains(start, c.mcmc_steps, generator, eps)
            hot = neg.new_zeros((0, *neg.shape))
            adapted = self._adapted(eps, acc)[None]
        return ChainShare(idx=idx, neg=neg, hot=hot, steps=adapted, accept=acc, grad=grad, eps=eps)

    def _gathered(self, share: ChainShare, across: bool | None = None) -> list[ChainShare]:
        """Every rank's chains of this step in rank order (under DDP; else ``[share]``), so that
        every rank writes the same updates into the one shared buffer. ``across`` as in
        :meth:`_global_logs`."""
        if not (self.data_parallel if across is None else across):
            return [share]
        idx, neg, steps = (ddp.gather_across(t) for t in (share.idx, share.neg, share.steps))
        hot = ddp.gather_across(share.hot) if share.hot.numel() else [share.hot] * len(idx)
        return [
            ChainShare(idx=i, neg=x, hot=h, steps=e) for i, x, h, e in zip(idx, neg, hot, steps, strict=True)
        ]

    def _store_chains(self, share: ChainShare) -> None:
        """Write a draw of advanced chains (and their step sizes) back into the buffer, the cold
        chains only where all are finite, the hot replicas only where those are too. Draws are
        written in rank order, so a chain that two ranks drew keeps the later rank's result (as a
        chain drawn twice in one batch keeps its last copy's)."""
        if not bool(torch.isfinite(share.neg).all()):
            return
        self.chains[share.idx] = share.neg
        self.chain_step[share.idx] = share.steps[-1]
        if share.hot.shape[0] and bool(torch.isfinite(share.hot).all()):
            self.hot_chains[:, share.idx] = share.hot
            self.hot_step[:, share.idx] = share.steps[:-1]

    def plan(self, steps: int) -> None:
        self.planned_steps.fill_(int(steps))

    def data_noise_level(self) -> float:
        """The current σ of the annealed data noise: σ₀·0.01^(k/K) after k of the K =
        ``data_noise_fraction``·steps annealing updates, 0 after them or when off.

        ``f`` asks for it at every evaluation (the Fourier features' smoothing), i.e. at every MCMC
        step; reading the two counters would cost a device synchronisation each time on a GPU. The
        value is therefore cached, keyed by the counters' identity and in-place version (bumped by
        ``+=``, ``fill_``, ``copy_``, ``load_state_dict``; a move to another device makes new
        tensors), so it is recomputed exactly when a counter changed."""
        key = (id(self.updates), self.updates._version, id(self.planned_steps), self.planned_steps._version)
        cached = self.__dict__.get("_noise_level")
        if cached is not None and cached[0] == key:
            return cached[1]
        c = self.config
        span = c.data_noise_fraction * int(self.planned_steps)
        progress = int(self.updates) / span if span > 0 else 1.0
        level = 0.0 if c.data_noise <= 0 or progress >= 1.0 else c.data_noise * DATA_NOISE_END**progress
        self.__dict__["_noise_level"] = (key, level)
        return level

    def _noised(self, u: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        sigma = self.data_noise_level()
        if sigma == 0.0:
            return u
        noise = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
        return u + sigma * noise

    def _restarts(self, u: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Starting points for restarted persistent chains, one per row of the batch ``u``."""
        how = self.config.reinit_from
        if how == "data":
            return u.detach()
        if how == "uniform":  # over the box three times as wide as the data's (the quadrature's outer box)
            r = torch.rand(u.shape, generator=generator, dtype=u.dtype, device=self.device)
            centre, width = 0.5 * (self.box_lo + self.box_hi), self.box_hi - self.box_lo
            return centre + (r - 0.5) * 3.0 * width
        return self.sample_q(u.shape[0], generator)

    def _nce_loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """NCE: logistic loss of data (y=1) against as many draws of q (y=0), logit f + c."""
        with torch.no_grad():
            noise = self.sample_q(u.shape[0], generator)
        logit_data = self.f(u) + self.c
        logit_noise = self.f(noise) + self.c
        loss = (
            torch.nn.functional.softplus(-logit_data).mean()
            + torch.nn.functional.softplus(logit_noise).mean()
        )
        accuracy = 0.5 * ((logit_data > 0).float().mean() + (logit_noise < 0).float().mean())
        return {
            "loss": loss,
            "energy_gap": (logit_data.mean() - logit_noise.mean()).detach(),
            "log_z_nce": -self.c.detach(),
            "accuracy": accuracy,
        }

    def run_chains(
        self,
        start: torch.Tensor,
        n_steps: int,
        generator: torch.Generator | None,
        step_size: float | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n_steps`` steps of the configured kernel on p̃ = exp(f) q from ``start`` (n, d).

        ``step_size``: a float, or per-chain step sizes ``(n,)`` (mala and langevin); by
        default the stored one. Returns the final positions, each chain's mean acceptance
        rate (n,) and the norm of ∇ log p̃ at the final positions (n,).
        """
        c = self.config
        eps: float | torch.Tensor = float(self.mcmc_step_size) if step_size is None else step_size
        if torch.is_tensor(eps):
            eps = eps[:, None] if c.kernel != "hmc" else float(eps.median())
        kernel = _kernel(c.kernel, eps, c.leapfrog)
        with _Frozen(self):
            state = kernel.init(start.detach(), self.unnormalized)
            acc = torch.zeros(start.shape[0], device=self.device)
            for _ in range(n_steps):
                state, info = kernel.step(state, generator)
                acc = acc + info.acceptance_rate
        return state.position.detach(), acc / max(n_steps, 1), state.grad.norm(dim=-1)

    def _tempered_chains(
        self, cold: torch.Tensor, hot: torch.Tensor, steps: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``mcmc_steps // T`` parallel-tempering steps (MALA at every β with the step sizes
        ``steps`` (T, n), then neighbour swaps) of the replicas ``hot`` (T − 1, n, d) and ``cold``
        (n, d, at β = 1). Returns the cold positions, the hot positions, every chain's mean
        acceptance (T, n), the cold chains' gradient norms (n,) and the step sizes (T, n) adapted after
        every kernel step (:meth:`_adapted`)."""
        T = hot.shape[0] + 1
        n_steps = max(1, self.config.mcmc_steps // T)
        pt = ParallelTempering(MALA(step_size=steps.reshape(-1, 1)), geometric_ladder(T))

        def f_tilde(u: torch.Tensor) -> torch.Tensor:
            return self.unnormalized(u) - log_standard_normal(u)

        with _Frozen(self):
            state = pt.init(torch.cat([hot, cold[None]]).detach(), f_tilde)
            acc = torch.zeros(steps.shape, device=self.device, dtype=cold.dtype)
            for _ in range(n_steps):
                state, info = pt.step(state, generator)
                step_acc = info.chain_acceptance.to(acc.dtype)
                acc = acc + step_acc
                # Adapt after every kernel step, not once per visit: a persistent chain is
                # revisited only every buffer_size / batch updates, and a model that sharpens
                # faster than that leaves its chains with steps far too long (acceptance → 0).
                steps = self._adapted(steps, step_acc)
                pt.kernel = MALA(step_size=steps.reshape(-1, 1))
        positions = state.positions().detach()
        n = cold.shape[0]
        grad = state.inner.grad.reshape(T, n, -1)[-1].norm(dim=-1)
        return positions[-1], positions[:-1], acc / n_steps, grad, steps

    def _adapted(self, step_size: torch.Tensor, acceptance: torch.Tensor) -> torch.Tensor:
        """Robbins–Monro step toward the kernel's target acceptance, per chain:
        log Δt += κ·(acceptance − target), κ = ``STEP_ADAPT_RATE``; tracks the model as it
        changes."""
        target = TARGET_ACCEPT.get(self.config.kernel)
        if target is None:  # unadjusted Langevin keeps its step size
            return step_size
        return (step_size * torch.exp(STEP_ADAPT_RATE * (acceptance - target))).clamp(1e-8, 10.0)

    # -- health -----------------------------------------------------------------------
    def _healthy(self, logs: dict[str, float]) -> bool:
        if not all(math.isfinite(v) for v in logs.values()):
            return False
        return abs(logs.get("energy_gap", 0.0)) <= self.config.max_energy_gap

    def _take_snapshot(self, opt: torch.optim.Optimizer) -> None:
        self._snapshot = {
            "model": {k: v.detach().clone() for k, v in self.state_dict().items()},
            "opt": copy.deepcopy(opt.state_dict()),
        }

    def _recover(self, opt: torch.optim.Optimizer, logs: dict[str, float]) -> dict[str, float]:
        """Restore the last good state, halve the learning rate and the MCMC step size."""
        from genmodels.train import TrainingDiverged

        opt.zero_grad(set_to_none=True)
        bad = ", ".join(f"{k}={v:.3g}" for k, v in logs.items())
        recoveries = int(self.recoveries) + 1
        if recoveries > self.config.max_recoveries or self._snapshot is None:
            raise TrainingDiverged(
                f"ebm training diverged ({bad}) after {recoveries - 1} restarts from the last good "
                "state; try a lower --lr or a smaller --option step_size"
            )
        snap = self._snapshot
        self.load_state_dict(snap["model"])
        opt.load_state_dict(snap["opt"])
        self.recoveries.fill_(recoveries)
        self.lr_factor.mul_(0.5)
        self.mcmc_step_size.mul_(0.5)
        self.chain_step.mul_(0.5)
        self.hot_step.mul_(0.5)
        if ddp.process_rank() == 0:  # every rank recovers alike; one says so
            tqdm.write(
                f"ebm: training diverged ({bad}); restored the last good state, halved the learning "
                f"rate (×{float(self.lr_factor):.3g}) and the MCMC step size "
                f"(now {float(self.mcmc_step_size):.3g})",
                file=sys.stderr,
            )
        self._take_snapshot(opt)
        logs = dict(self._last_logs) if self._last_logs else {"loss": 0.0}
        logs["recovered"] = 1.0
        return logs

    # -- sampling ---------------------------------------------------------------------
    def _sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None,
        sampler: str = "auto",
        steps: int = 200,
        warmup: int = 100,
        init: str = "auto",
    ) -> torch.Tensor:
        c = self.config
        if init == "auto":
            init = "buffer" if self.chains.numel() else "resample"
        if sampler == "auto":
            sampler = "short-run" if c.method == "mle" and c.chains == "short-run" else "mala"
        if sampler == "grid":
            if self.dim > 2:
                raise ValueError("sampler=grid needs 1-D or 2-D data; use mala or hmc")
            return grid_sample(
                self.unnormalized,
                self.box_lo,
                self.box_hi,
                n,
                n=c.grid_size,
                generator=generator,
                dtype=self.shift.dtype,
                device=self.device,
            )
        if init == "buffer" and self.chains.numel():
            idx = torch.randint(self.chains.shape[0], (n,), generator=generator, device=self.device)
            start = self.chains[idx]
        elif init == "resample":
            start = self.resample_q(n, generator)
        elif init in ("buffer", "reference"):
            start = self.sample_q(n, generator)
        else:
            raise ValueError(f"unknown init {init!r}; choose one of: auto, buffer, reference, resample")
        if sampler == "short-run":
            return self.run_chains(start, c.mcmc_steps, generator)[0]
        if sampler not in ("mala", "hmc", "langevin"):
            raise ValueError(
                f"unknown sampler {sampler!r}; choose one of: auto, mala, hmc, langevin, short-run, grid"
            )
        return self.mcmc_from(start, generator, sampler, steps, warmup, float(self.mcmc_step_size))

    def mcmc_from(
        self,
        start: torch.Tensor,
        generator: torch.Generator,
        sampler: str,
        steps: int,
        warmup: int,
        step_size: float,
    ) -> torch.Tensor:
        """Chains of ``sampler`` (mala, hmc or langevin) on p̃ from ``start`` (u-space): ``warmup``
        steps adapting one shared step size from ``step_size`` by dual averaging to the kernel's
        optimal acceptance (0.574 for MALA, Roberts & Rosenthal 1998; 0.8 for HMC; Hoffman &
        Gelman 2014, Alg. 5), then ``steps`` steps at the adapted size; langevin has no test to
        adapt to and keeps ``step_size``. Returns the final positions, detached."""
        c = self.config
        with torch.enable_grad(), _Frozen(self):
            if sampler != "langevin" and warmup > 0:
                warm = run_warmup(
                    lambda e, m: _kernel(sampler, e, c.leapfrog, m),
                    start,
                    self.unnormalized,
                    warmup,
                    generator,
                    TARGET_ACCEPT[sampler],
                    initial_step_size=step_size,
                    adapt_mass=False,
                )
                state, step_size = warm.state, warm.step_size
            else:
                state = _kernel(sampler, step_size, c.leapfrog).init(start, self.unnormalized)
            kernel = _kernel(sampler, step_size, c.leapfrog)
            for _ in range(steps):
                state, _ = kernel.step(state, generator)
        return state.position.detach()


#: healthy steps between in-memory snapshots used to recover from divergence
SNAPSHOT_EVERY = 100
#: the data noise anneals geometrically from σ₀ to DATA_NOISE_END·σ₀, then stops (EBMConfig.data_noise)
DATA_NOISE_END = 0.01
#: κ of the Robbins–Monro step-size update log Δt += κ·(acceptance − target)
STEP_ADAPT_RATE = 0.1


def chains_per_rank(buffer_chains: int, batch: int, across: bool, family: str) -> int:
    """How many persistent chains this rank advances in a step of coop or triangle, whose EBM's
    negatives pool ``batch`` generator draws (this rank's slice of the global batch) with
    min(``buffer_chains``, global batch) persistent chains. Under DDP (``across``) the N ranks
    split that count evenly, so that each rank's pooled loss weighs its draws and its chains as
    one process with the global batch does (the ranks' average is then that process's estimator,
    with other draws); in one process, min(buffer_chains, batch). A ValueError when the count does
    not split evenly."""
    ranks = ddp.world_size() if across else 1
    total = min(buffer_chains, batch * ranks)
    if total % ranks:
        raise ValueError(
            f"{family}: buffer_chains={buffer_chains} persistent chains per step cannot be split evenly over "
            f"the {ranks} processes; make it a multiple of {ranks} (or at least the global batch size)"
        )
    return total // ranks


def _kernel(name: str, step_size: float, leapfrog: int, inverse_mass: torch.Tensor | None = None):
    if name == "mala":
        return MALA(step_size=step_size)
    if name == "langevin":
        return Langevin(step_size=step_size)
    return HMC(step_size=step_size, num_steps=leapfrog, inverse_mass_matrix=inverse_mass)


class _Frozen:
    """Parameters do not require grad inside (the samplers differentiate w.r.t. x only)."""

    def __init__(self, model: nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p in self.params:
            p.requires_grad_(True)


def _on(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` (the CPU one itself, or one seeded from it)."""
    if torch.device(device).type == "cpu":
        return generator
    seed = int(torch.randint(2**62, (), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


#: families that can be the flow reference (exact log-density and sampling)
FLOW_FAMILIES = ("realnvp", "maf", "nsf", "made")
#: random Fourier features of the MLP energy where ``fourier_features=-1`` (auto) turns them on
AUTO_FOURIER_FEATURES = 64


def fourier_features(c: EBMConfig, dim: int) -> int:
    """The number of random Fourier features of the energy MLP (``fourier_features``; auto:
    :data:`AUTO_FOURIER_FEATURES` for an MLP learned from annealed data noise in ≤ 2-D, else 0)."""
    if c.fourier_features >= 0:
        return c.fourier_features
    annealed = c.data_noise > 0 and (c.method == "cd" or (c.method == "mle" and c.chains == "persistent"))
    return AUTO_FOURIER_FEATURES if c.energy == "mlp" and annealed and dim <= 2 else 0


def _validate(c: EBMConfig) -> None:
    checks = [
        (c.method in ("mle", "cd", "nce"), f"unknown method {c.method!r}; choose one of: mle, cd, nce"),
        (
            c.energy in ("mlp", "conv", "quadratic"),
            f"unknown energy {c.energy!r}; choose one of: mlp, conv, quadratic",
        ),
        (
            c.fourier_features <= 0 or c.energy == "mlp",
            f"fourier_features feed the MLP; energy={c.energy} takes none (set fourier_features=0)",
        ),
        (
            c.reference in ("gaussian", "flow", "target"),
            f"unknown reference {c.reference!r}; choose one of: gaussian, flow, target",
        ),
        (
            c.flow_family in FLOW_FAMILIES,
            f"flow_family {c.flow_family!r} cannot be the reference; choose one of: "
            + ", ".join(FLOW_FAMILIES),
        ),
        (
            c.reference != "target" or bool(c.reference_target),
            "reference=target needs reference_target, the name of a built-in target",
        ),
        (
            c.chains in ("persistent", "short-run"),
            f"unknown chains {c.chains!r}; choose persistent or short-run",
        ),
        (
            c.kernel in ("mala", "langevin", "hmc"),
            f"unknown kernel {c.kernel!r}; choose one of: mala, langevin, hmc",
        ),
        (c.mcmc_steps >= 1, f"mcmc_steps must be >= 1, got {c.mcmc_steps}"),
        (c.step_size > 0, f"step_size must be positive, got {c.step_size}"),
        (c.buffer_size >= 1, f"buffer_size must be >= 1, got {c.buffer_size}"),
        (0.0 <= c.reinit <= 1.0, f"reinit must be in [0, 1], got {c.reinit}"),
        (0.0 <= c.reference_mix < 1.0, f"reference_mix must be in [0, 1), got {c.reference_mix}"),
        (c.grid_size >= 8, f"grid_size must be >= 8, got {c.grid_size}"),
        (c.energy_floor >= 0, f"energy_floor must be >= 0 (0 = none), got {c.energy_floor}"),
        (c.data_noise >= 0, f"data_noise must be >= 0 (0 = off), got {c.data_noise}"),
        (
            0.0 <= c.data_noise_fraction <= 1.0,
            f"data_noise_fraction must be in [0, 1], got {c.data_noise_fraction}",
        ),
        (c.temperatures >= 1, f"temperatures must be >= 1, got {c.temperatures}"),
        (c.hidden >= 1 and c.depth >= 1, "hidden and depth must be >= 1"),
        (c.fourier_features >= -1, "fourier_features must be >= 0, or -1 for auto"),
        (c.fourier_scale > 0 and math.isfinite(c.fourier_scale), "fourier_scale must be a positive number"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
