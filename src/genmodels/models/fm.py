"""Flow matching: a continuous normalizing flow trained by regression (Lipman et al. 2023).

A time-dependent velocity field v_θ(x, t), t ∈ [0, 1], moves noise x_0 ~ N(0, I) at t = 0 to
data at t = 1 by the ODE dx/dt = v_θ(x, t) (a flow, tutorial §5 "Relations", in continuous
time: the strokes of the golf table are the solver's steps). It is trained without simulating
the ODE, by conditional flow matching (Lipman et al. 2023, Thm. 2; Tong et al. 2024, §3):
for a coupling π(x_0, x_1) of noise and data, a time t ~ U[0, 1] and the straight path

    x_t = (1 − t) x_0 + t x_1 + σ ε,    ε ~ N(0, I),          (Tong et al. 2024, I-CFM)
    u_t = x_1 − x_0,                                           (the conditional velocity)
    L(θ) = E_{t, (x_0, x_1) ~ π, ε} |v_θ(x_t, t) − u_t|² / d,

whose minimiser is the marginal velocity v*(x, t) = E[u_t | x_t = x]; its flow carries N(0, I)
at t = 0 to the law of x_1 (convolved with N(0, σ²I) when σ > 0) at t = 1. ``sigma`` = 0 (the
default) is the rectified-flow / "OT-path" case of Lipman et al. with σ_min = 0.

**Coupling** (``coupling``): "independent", π = N(0, I) ⊗ data; or "ot", the minibatch optimal
transport coupling (Tong et al. 2024, OT-CFM; Pooladian et al. 2023): within each batch the
noise points are re-assigned to the data points by the permutation that minimises
Σ_i |x_0^{σ(i)} − x_1^i|², solved exactly (scipy.optimize.linear_sum_assignment). Straighter
paths, so the ODE needs fewer steps for the same accuracy.

**Rectified flow** (``reflow`` rounds, Liu, Gong & Liu 2023, "Flow straight and fast", §2.2):
after ``reflow_every`` steps, the current model's ODE maps ``reflow_pairs`` fresh noise draws
z to x = ODE(z); training then goes on on these deterministic pairs (x_0, x_1) = (z, ODE(z))
instead of the data, which straightens the flow (the "Reflow" procedure). Round r starts at
step r · reflow_every, r = 1 … reflow; the pairs live in a buffer, so checkpoints keep them.

**Sampling and likelihood** run the shared ODE code of :mod:`genmodels.ode`: samples are
x_1 = solve_ode(v_θ, x_0, 0 → 1), x_0 ~ N(0, I), with a fixed-step Euler/Heun/midpoint/RK4
or the adaptive dopri5 (``sampler``, ``steps``: the sampler is the ODE solver); the
log-density is the instantaneous change of variables from t = 1 back to t = 0 (Chen et al. 2018),

    log p_1(x) = log N(x(0); 0, I) − ∫_0^1 ∇·v_θ(x(t), t) dt,

with the exact trace (kind "exact", up to the solver tolerance) in ≤ 16 dimensions and
Hutchinson's estimate (kind "estimate") above (:func:`genmodels.ode.ode_log_likelihood`).

**Network** (``net``): a time-conditioned MLP, or for square one-channel images (dim = side²,
side even, e.g. 8×8 digits) the small U-Net of the diffusion family
(:class:`genmodels.nets.unet.UNet`, 8·max(1, hidden/64) base channels, t through its sinusoidal
embedding). The U-Net normalises per sample (GroupNorm), so v_θ(x_i, t) depends on x_i alone:
the divergence of row i is the trace of its own Jacobian, and Hutchinson's estimate for 64-D
images stays per image: one probe ε per point for the whole path, E[εᵀ J ε] = tr J at every t, and
the path does not depend on ε, so the log-density estimate is unbiased (kind "estimate").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from genmodels.models.base import Model, ModelConfig, SampleConfig
from genmodels.nets.mlp import _ACTIVATIONS, Activation
from genmodels.nets.unet import time_network
from genmodels.ode import ode_log_likelihood, solve_ode
from genmodels.types import LogDensity

Solver = Literal["dopri5", "euler", "heun", "midpoint", "rk4"]
#: sampler option → genmodels.ode (torchdiffeq) method
SOLVERS: dict[str, str] = {
    "dopri5": "dopri5",
    "euler": "euler",
    "heun": "heun2",
    "midpoint": "midpoint",
    "rk4": "rk4",
}
#: t enters the network's sinusoidal embedding as TIME_SCALE · t (as DDPM's step index)
TIME_SCALE = 1000.0


@dataclass
class FlowMatchingConfig(ModelConfig):
    """Options of the flow-matching family."""

    coupling: Literal["independent", "ot"] = "independent"
    """pairing of noise and data in a batch: independent, or exact minibatch optimal transport"""
    sigma: float = 0.0
    """width σ of the Gaussian probability path around the straight line (I-CFM); 0: none"""
    net: Literal["mlp", "unet"] = "mlp"
    """velocity network: a time-conditioned MLP, or a small U-Net for square one-channel images
    (dim = side², side even)"""
    hidden: int = 128
    """width of the velocity MLP (U-Net: 8·max(1, hidden / 64) base channels)"""
    depth: int = 3
    """hidden layers of the velocity MLP (MLP only)"""
    emb_dim: int = 16
    """width of the sinusoidal time embedding (t is one number: 16 features resolve it; the
    embedding is the input layer's main cost with conditioning=input)"""
    activation: Activation = "silu"
    """nonlinearity of the velocity MLP (MLP only; the U-Net uses SiLU)"""
    conditioning: Literal["add", "film", "input"] = "input"
    """how t enters the MLP: added to every layer (add), also scaling every unit (film), or
    concatenated to the input only (input: a third of the work, torchcfm's network); the U-Net
    adds it to every residual block"""
    fourier: int = 6
    """MLP: octaves K of a positional encoding [x, sin(2^k π x), cos(2^k π x)], k < K, of the
    standardized input (the diffusion family's option); 0: x itself. With K = 6 and 24,000
    steps (≈ 45 s) the exact KL fell on all seven 2-D targets against K = 0 and 12,000 steps,
    e.g. checkerboard 0.37 → 0.12, rings 0.81 → 0.30, grid25 1.9 → 0.08 (docs/benchmarks.md)"""
    reflow: int = 0
    """rounds of rectified flow (Liu et al. 2023); 0: plain flow matching"""
    reflow_every: int = 12_000
    """training steps before each reflow round (round r starts at step r · reflow_every); the
    default splits the default 24,000 steps into two equal halves for reflow = 1: set it to
    steps / (reflow + 1) for equal rounds"""
    reflow_pairs: int = 10_000
    """noise → sample pairs drawn by the model's ODE at each round"""


@dataclass
class FlowMatchingSampleConfig(SampleConfig):
    """Options of ``sample`` (and of the ODE in ``log_prob``) for the flow-matching family."""

    sampler: Solver = "dopri5"
    """the ODE solver: adaptive dopri5, or fixed-step euler, heun, midpoint, rk4"""
    steps: int = 100
    """steps of a fixed-step solver (ignored by dopri5)"""
    rtol: float = 1e-5
    """relative tolerance of dopri5"""
    atol: float = 1e-5
    """absolute tolerance of dopri5"""


def ot_coupling(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The permutation σ (a (b,) index tensor) minimising Σ_i |x0[σ(i)] − x1[i]|² over all
    permutations of the b points (exact, by the Hungarian-type solver of
    scipy.optimize.linear_sum_assignment on the b × b squared-distance matrix)."""
    cost = torch.cdist(x1.detach().double(), x0.detach().double()).pow(2).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)  # rows = 0..b−1 in order
    return torch.as_tensor(np.asarray(cols)[np.argsort(rows)], device=x0.device)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    if generator is None or generator.device == like.device:
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


def _rand(n: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    dev = like.device if generator is None else generator.device
    return torch.rand(n, generator=generator, dtype=like.dtype, device=dev).to(like.device)


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) per row, (n, d) → (n,)."""
    return -0.5 * (x**2).sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)


class FlowMatching(Model):
    """Conditional flow matching with an MLP or U-Net velocity field; see the module docstring."""

    family: ClassVar[str] = "fm"
    autocast_safe: ClassVar[bool] = True  # a regression/classification loss: bf16-safe
    compile_modules: ClassVar[tuple[str, ...]] = ("net",)  # a regression through one network
    Config: ClassVar[type[ModelConfig]] = FlowMatchingConfig
    SampleConfig: ClassVar[type[SampleConfig]] = FlowMatchingSampleConfig
    has_log_prob: ClassVar[bool] = True
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 24_000, "lr": 2e-3, "batch_size": 256}
    tour_steps: ClassVar[int] = 6000
    image_options: ClassVar[dict[str, Any]] = {"net": "unet"}
    #: checkpoints from before ``conditioning`` existed used the additive network
    options_before: ClassVar[dict[str, Any]] = {"conditioning": "add", "fourier": 0}
    config: FlowMatchingConfig

    def __init__(self, dim: int, config: FlowMatchingConfig | None = None) -> None:
        super().__init__(dim, config)
        c = self.config
        _validate(c)
        self.net = time_network(
            dim,
            c.net,
            hidden=c.hidden,
            depth=c.depth,
            emb_dim=c.emb_dim,
            activation=c.activation,
            conditioning=c.conditioning,
            fourier=c.fourier,
        )
        # training state of the reflow rounds (buffers, so that a checkpoint resumes them)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("reflow_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("pairs", torch.zeros(c.reflow_pairs if c.reflow else 0, 2, dim))

    # -- the field and the path --------------------------------------------------------
    def velocity(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """v_θ(x, t) in normalized coordinates; ``x`` (n, d), ``t`` a number or (n,)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return self.net(x, TIME_SCALE * t)

    def conditional_path(
        self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, u_t) = ((1 − t) x_0 + t x_1 + σ ε, x_1 − x_0) for ``t`` (n,) and pairs (n, d)."""
        tt = t[:, None]
        xt = (1 - tt) * x0 + tt * x1
        if self.config.sigma > 0:
            xt = xt + self.config.sigma * _randn(tuple(x0.shape), generator, x0)
        return xt, x1 - x0

    def couple(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training pairs of a noise batch and a data batch under the ``coupling`` option."""
        if self.config.coupling == "ot":
            x0 = x0[ot_coupling(x0, x1)]
        return x0, x1

    # -- training ----------------------------------------------------------------------
    def loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The conditional flow-matching loss E|v_θ(x_t, t) − u_t|² / d on a batch (module docstring);
        during reflow rounds the pairs come from the model's own ODE and ``u`` is not used."""
        if self.reflow_done > 0:
            dev = "cpu" if generator is None else generator.device
            idx = torch.randint(self.pairs.shape[0], (u.shape[0],), generator=generator, device=dev)
            pair = self.pairs[idx.to(self.pairs.device)]
            x0, x1 = pair[:, 0], pair[:, 1]
        else:
            x0, x1 = self.couple(_randn(tuple(u.shape), generator, u), u)
        t = _rand(u.shape[0], generator, u)
        xt, target = self.conditional_path(x0, x1, t, generator)
        err = (self.velocity(xt, t) - target) ** 2
        return {"loss": err.mean()}

    def step(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """One step of the base loop; first regenerates the pairs when a reflow round begins."""
        c = self.config
        done = int(self.reflow_done)
        if done < c.reflow and int(self.steps_done) >= (done + 1) * c.reflow_every:
            self.regenerate_pairs(generator)
        logs = super().step(batch, generator)
        self.steps_done += 1
        return logs

    @torch.no_grad()
    def regenerate_pairs(self, generator: torch.Generator | None = None, **options: Any) -> None:
        """Start a reflow round: pairs (z, ODE(z)), z ~ N(0, I), from the current model's ODE
        (``options`` as for ``sample``); later steps train on them (Liu et al. 2023)."""
        if self.pairs.shape[0] == 0:
            raise ValueError("reflow is 0: this model has no pair buffer; build it with reflow >= 1")
        was_training = self.training
        self.eval()
        z = _randn(tuple(self.pairs[:, 0].shape), generator, self.pairs)
        self.pairs[:, 0] = z
        self.pairs[:, 1] = self._transport(z, FlowMatchingSampleConfig(**options))
        self.reflow_done += 1
        self.train(was_training)

    # -- sampling and likelihood -------------------------------------------------------
    def _ode_kwargs(self, opts: FlowMatchingSampleConfig) -> dict[str, Any]:
        if opts.sampler not in SOLVERS:
            raise ValueError(f"unknown sampler {opts.sampler!r}; choose one of: {', '.join(SOLVERS)}")
        method = SOLVERS[opts.sampler]
        if method == "dopri5":
            return {"method": method, "rtol": opts.rtol, "atol": opts.atol}
        if opts.steps < 1:
            raise ValueError(f"steps must be >= 1, got {opts.steps}")
        return {"method": method, "steps": opts.steps}

    def _transport(self, x0: torch.Tensor, opts: FlowMatchingSampleConfig) -> torch.Tensor:
        return solve_ode(self.velocity, x0, 0.0, 1.0, **self._ode_kwargs(opts)).x

    def _sample(self, n: int, *, generator: torch.Generator | None, **options: Any) -> torch.Tensor:
        """x_1 = ODE(x_0), x_0 ~ N(0, I), integrated from t = 0 to 1 with ``sampler``."""
        opts = FlowMatchingSampleConfig(**options)
        return self._transport(_randn((n, self.dim), generator, self.shift), opts)

    def _log_prob(
        self,
        u: torch.Tensor,
        divergence: Literal["auto", "exact", "hutchinson"] = "auto",
        seed: int = 0,
        **options: Any,
    ) -> LogDensity:
        """log p_1(u) by the instantaneous change of variables from t = 1 to 0 (module docstring):
        kind "exact" (exact trace, d ≤ 16) or "estimate" (Hutchinson, probes seeded by ``seed``);
        ``options`` pick the ODE solver (``sampler``) as for ``sample``."""
        kwargs = self._ode_kwargs(FlowMatchingSampleConfig(**options))
        return ode_log_likelihood(
            self.velocity,
            u,
            1.0,
            0.0,
            standard_normal_log_prob,
            divergence=divergence,
            generator=torch.Generator(device=u.device).manual_seed(seed),
            **kwargs,
        )


def _validate(c: FlowMatchingConfig) -> None:
    checks = [
        (c.net in ("mlp", "unet"), f"unknown net {c.net!r}; choose one of: mlp, unet"),
        (
            c.coupling in ("independent", "ot"),
            f"unknown coupling {c.coupling!r}; choose one of: independent, ot",
        ),
        (c.sigma >= 0 and math.isfinite(c.sigma), f"sigma must be >= 0, got {c.sigma}"),
        (c.hidden >= 1, f"hidden must be >= 1, got {c.hidden}"),
        (c.depth >= 1, f"depth must be >= 1, got {c.depth}"),
        (c.emb_dim >= 2 and c.emb_dim % 2 == 0, f"emb_dim must be a positive even number, got {c.emb_dim}"),
        (
            c.activation in _ACTIVATIONS,
            f"unknown activation {c.activation!r}; choose one of: {', '.join(_ACTIVATIONS)}",
        ),
        (c.reflow >= 0, f"reflow must be >= 0, got {c.reflow}"),
        (c.reflow_every >= 1, f"reflow_every must be >= 1, got {c.reflow_every}"),
        (c.reflow_pairs >= 1, f"reflow_pairs must be >= 1, got {c.reflow_pairs}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
