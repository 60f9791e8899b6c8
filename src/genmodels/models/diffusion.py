"""Diffusion / score-based models (tutorial §5): denoising score matching, every forward process.

The forward process x_t = α(t) x₀ + σ(t) ε is one of :mod:`genmodels.diffusion.processes`
(``vp``, ``subvp``, ``ve`` or the discrete ``ddpm``). A network F_θ(c_in x_t, t) learns to undo
it; its output is read, by ``prediction``, as

    ε:      ε̂ = F                                  (Ho et al. 2020)
    x₀:     x̂₀ = F
    v:      v̂ = F,  v = (α ε − σ x₀)/√(α² + σ²)     (Salimans & Ho 2022, where α² + σ² = 1;
                                                    the normalisation keeps it unit-scale for
                                                    VE, and equals −F of EDM's preconditioning)
    score:  ŝ = F ≈ ∇ log p_t(x_t)                  (Song & Ermon 2019)

with exact conversions between them (:func:`convert`, all through x_t = α x₀ + σ ε and
∇ log p_t = −ε/σ). c_in = 1/√(α² + σ²) scales the input to unit variance for standardized
data; t enters through a sinusoidal embedding of 1000·t.

**Loss** (denoising score matching; the Vincent identity of tutorial §5, [C] sign): with
t from the training distribution of noise levels (``noise_levels``: by default log σ̃ ~
N(−1.2, 1.2²) as in Karras et al. 2022, for the likelihood weighting log σ̃ uniform) and
ε ~ N(0, I),

    L = E_t E_ε [ w(t) |ε̂ − ε|² ] / d,

where ``weighting`` picks w: ``prediction`` (the plain MSE of what the network outputs:
1 for ε and score (λ = σ²), σ̃² for x₀, 1 + σ̃² for v), ``eps`` (w = 1, DDPM's L_simple),
``likelihood`` (w = g²/σ² = 2 dlog σ̃/dt, Song et al. 2021b, which makes L the likelihood
bound's weighting; by importance sampling: t is drawn with log σ̃ uniform and every draw
weighs the same, up to a constant factor that Adam ignores) or ``min-snr``
(w = min(SNR, 5)/SNR, Hang et al. 2023), SNR = 1/σ̃².

**Sampling and likelihoods** run the shared code of :mod:`genmodels.diffusion.solvers` on
the denoiser D(x̄, σ̃) of the exponential moving average of the weights: every sampler
(euler = DDIM, heun, ddim with η, ancestral, sde, pc, dpmpp2m, ode, ncsn), the exact
log-likelihood through the probability-flow ODE (``log_prob``, method "ode"; exact trace up
to d = 16, else Hutchinson's estimate) and the DDPM variational bound (method "elbo", kind
"lower_bound").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from genmodels.diffusion.processes import (
    DDPM,
    LOG_NORMAL_MEAN,
    LOG_NORMAL_STD,
    Process,
    make_process,
)
from genmodels.diffusion.solvers import (
    ddpm_elbo,
    gaussian_prior_log_prob,
    ode_log_prob,
    sample,
    sigma_grid,
)
from genmodels.models.base import Model, ModelConfig, NotSupportedError, SampleConfig
from genmodels.nets.unet import time_network
from genmodels.types import LogDensity

Prediction = Literal["v", "eps", "x0", "score"]
PREDICTIONS: tuple[str, ...] = ("v", "eps", "x0", "score")
WEIGHTINGS: tuple[str, ...] = ("prediction", "eps", "likelihood", "min-snr")


@dataclass
class DiffusionConfig(ModelConfig):
    """Options of the diffusion family."""

    process: Literal["vp", "subvp", "ve", "ddpm"] = "vp"
    """forward process: VP / sub-VP / VE SDE (Song et al. 2021b) or the discrete DDPM chain"""
    prediction: Prediction = "v"
    """what the network outputs: v, eps (ε), x0 or score"""
    weighting: Literal["prediction", "eps", "likelihood", "min-snr"] = "prediction"
    """loss weight per noise level (module docstring)"""
    noise_levels: Literal["auto", "time", "log_uniform", "log_normal"] = "auto"
    """training distribution of the noise level: t uniform (time), log σ̃ uniform on
    [σ̃_min, σ̃_max] (log_uniform), or log σ̃ ~ N(log_sigma_mean, log_sigma_std²) truncated
    there (log_normal, Karras et al. 2022); auto: log_uniform for the likelihood weighting
    (its importance distribution, the only one it accepts), else log_normal. The density
    multiplies the weighting: it decides which noise levels the network learns best (uniform
    t spends ~3 % of the draws below σ̃ = 0.1 on VP, where sharp modes are resolved;
    log_normal ~18 %: docs/benchmarks.md)"""
    log_sigma_mean: float = LOG_NORMAL_MEAN
    """mean of log σ̃ for noise_levels=log_normal (σ̃ of the standardized data)"""
    log_sigma_std: float = LOG_NORMAL_STD
    """standard deviation of log σ̃ for noise_levels=log_normal"""
    beta_schedule: Literal["linear", "cosine"] = "linear"
    """β schedule of the ddpm process"""
    n_timesteps: int = 1000
    """levels N of the ddpm process"""
    beta_min: float = 0.1
    """β(0) of vp and subvp"""
    beta_max: float = 20.0
    """β(1) of vp and subvp"""
    sigma_min: float = 0.002
    """smallest noise level σ̃ (vp, subvp, ve); samples are denoised from it"""
    sigma_max: float = 0.0
    """largest σ of ve; 0: the largest distance between two training points (Song & Ermon 2020)"""
    net: Literal["mlp", "unet"] = "mlp"
    """network: a time-conditioned MLP, or a small U-Net for square one-channel images"""
    hidden: int = 256
    """MLP width (U-Net: 8·max(1, hidden / 64) base channels)"""
    depth: int = 3
    """hidden layers of the MLP"""
    emb_dim: int = 64
    """width of the sinusoidal time embedding"""
    conditioning: Literal["add", "film", "input"] = "input"
    """MLP: how the noise level enters: concatenated to the input only (input: a third of the
    work of add per step), added to every layer (add), or also scaling every unit (film)"""
    fourier: int = 6
    """MLP: octaves K of a positional encoding [x, sin(2^k π x), cos(2^k π x)] of the input
    (0: x itself). With input conditioning and K = 6 the MLP draws sharp edges: checkerboard
    KL 0.038 against 0.116 for add without it, rings 0.03 against 0.25 (docs/benchmarks.md)"""
    ema: float = 0.999
    """decay of the exponential moving average of the weights used to sample (0: off)"""


@dataclass
class DiffusionSampleConfig(SampleConfig):
    """Options of ``sample`` for the diffusion family."""

    sampler: Literal["euler", "heun", "ddim", "ancestral", "sde", "pc", "dpmpp2m", "ode", "ncsn"] = "dpmpp2m"
    """euler (= DDIM η=0), heun, ddim, ancestral, sde, pc, dpmpp2m, ode (adaptive), ncsn"""
    steps: int = 50
    """noise levels walked, the number of network calls for most samplers (heun and pc: 2N − 1;
    ncsn: levels of annealed Langevin)"""
    spacing: Literal["auto", "edm", "uniform", "trailing", "logsnr"] = "auto"
    """levels: edm (ρ = 7), uniform in t, trailing (uniform in t, last call at t = 1/N), logsnr
    (geometric); auto: trailing for sde and pc, else logsnr (docs/benchmarks.md, "Steps
    against quality")"""
    eta: float = 0.0
    """DDIM's η in [0, 1]"""
    snr: float = 0.16
    """signal-to-noise ratio of the pc corrector's Langevin step"""
    corrector_steps: int = 1
    """Langevin corrector steps per level (pc)"""
    steps_per_level: int = 20
    """Langevin steps per level (ncsn)"""
    langevin_step: float = 0.2
    """ncsn step α_i = langevin_step · σ̃_i²"""
    rtol: float = 1e-5
    """relative tolerance of the adaptive ODE solver (ode)"""
    atol: float = 1e-5
    """absolute tolerance of the adaptive ODE solver (ode)"""


def convert(
    out: torch.Tensor,
    source: Prediction,
    target: Prediction,
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """Exact change of parametrisation of a prediction at x_t = α x₀ + σ ε.

    ``out`` is the ``source`` quantity (ε, x₀, v or the score ∇ log p_t = −ε/σ) at ``x``
    (n, d); ``alpha`` and ``sigma`` broadcast against it, e.g. (n, 1). With
    n = √(α² + σ²): v = (α ε − σ x₀)/n, x₀ = (α x − σ n v)/n², ε = (σ x + α n v)/n².
    """
    norm = torch.sqrt(alpha**2 + sigma**2)
    if source == "eps":
        eps = out
    elif source == "x0":
        eps = (x - alpha * out) / sigma
    elif source == "v":
        eps = (sigma * x + alpha * norm * out) / norm**2
    elif source == "score":
        eps = -sigma * out
    else:
        raise ValueError(f"unknown prediction {source!r}; choose one of: {', '.join(PREDICTIONS)}")
    if target == "eps":
        return eps
    if target == "score":
        return -eps / sigma
    x0 = out if source == "x0" else (x - sigma * eps) / alpha
    if target == "x0":
        return x0
    if target == "v":
        return (alpha * eps - sigma * x0) / norm
    raise ValueError(f"unknown prediction {target!r}; choose one of: {', '.join(PREDICTIONS)}")


class Diffusion(Model):
    """Diffusion model on the common contract; see the module docstring."""

    family: ClassVar[str] = "diffusion"
    autocast_safe: ClassVar[bool] = True  # a regression/classification loss: bf16-safe
    compile_modules: ClassVar[tuple[str, ...]] = ("net",)  # a regression through one network
    Config: ClassVar[type[ModelConfig]] = DiffusionConfig
    SampleConfig: ClassVar[type[SampleConfig]] = DiffusionSampleConfig
    has_log_prob: ClassVar[bool] = True
    #: 40,000 steps of the input-conditioned MLP cost about what 20,000 of the additive one did
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 40000, "lr": 1e-3, "batch_size": 512, "warmup": 0.02}
    tour_steps: ClassVar[int] = 8000
    #: checkpoints written before the input-conditioned Fourier MLP became the default
    options_before: ClassVar[dict[str, Any]] = {"conditioning": "add", "fourier": 0}
    image_options: ClassVar[dict[str, Any]] = {"net": "unet"}
    config: DiffusionConfig

    def __init__(self, dim: int, config: DiffusionConfig | None = None) -> None:
        super().__init__(dim, config)
        c = self.config
        _validate(c)
        self.net = time_network(
            dim,
            c.net,
            hidden=c.hidden,
            depth=c.depth,
            emb_dim=c.emb_dim,
            conditioning=c.conditioning,
            fourier=c.fourier,
        )
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        #: VE's σ_max (set from the data by ``prepare`` when the option is 0)
        self.register_buffer("ve_sigma_max", torch.tensor(float(c.sigma_max or 50.0), dtype=torch.float64))
        self.register_buffer("prepared", torch.tensor(False))
        self.register_buffer("ema_updates", torch.tensor(0, dtype=torch.int64))
        self._process: tuple[float, Process] | None = None

    # -- the process ------------------------------------------------------------------
    @property
    def process(self) -> Process:
        key = float(self.ve_sigma_max)
        if self._process is None or self._process[0] != key:
            c = self.config
            proc = make_process(
                c.process,
                sigma_min=c.sigma_min,
                sigma_max=key,
                beta_min=c.beta_min,
                beta_max=c.beta_max,
                n_steps=c.n_timesteps,
                schedule=c.beta_schedule,
            )
            self._process = (key, proc)
        return self._process[1]

    def prepare(self, x: torch.Tensor, generator: torch.Generator, progress: bool = False) -> None:
        """VE with sigma_max = 0: σ_max = the largest distance between two of (up to 2,000)
        standardized training points (Song & Ermon 2020, technique 1)."""
        if bool(self.prepared):
            return
        if self.config.process == "ve" and not self.config.sigma_max:
            u = self.normalize(x.to(self.shift.dtype))
            idx = torch.randperm(u.shape[0], generator=generator)[:2000].to(u.device)
            far = torch.cdist(u[idx].double(), u[idx].double()).max()
            self.ve_sigma_max.fill_(max(float(far), 10 * self.config.sigma_min))
        self.prepared.fill_(True)

    # -- the network ------------------------------------------------------------------
    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """α(t), σ(t) as (n, 1) for t (n,), or (1, 1) for a 0-dim t, in the dtype of ``like``."""
        alpha = self.process.alpha(t)
        sigma = alpha * self.process.sigma_tilde(t)
        return alpha.to(like.dtype).reshape(-1, 1), sigma.to(like.dtype).reshape(-1, 1)

    def _forward(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """F(c_in x_t, 1000 t) for x_t (n, d) and t (n,) or 0-dim, float64."""
        alpha, sigma = self._coefficients(t, x)
        c_in = torch.rsqrt(alpha**2 + sigma**2)
        return net(c_in * x, (1000.0 * t).to(x.dtype).expand(x.shape[0]))

    def denoiser(self, use_ema: bool = True):
        """D(x̄, σ̃) in standardized coordinates (n, d), σ̃ a 0-dim or (n,) tensor: the x₀
        prediction of the (EMA) network at t = t(σ̃), x_t = α x̄."""
        net = self.ema_net if use_ema and self.config.ema > 0 else self.net

        def D(x_bar: torch.Tensor, sigma_tilde: torch.Tensor) -> torch.Tensor:
            s = torch.as_tensor(sigma_tilde, dtype=torch.float64, device=x_bar.device)
            t = self.process.t_of_sigma_tilde(s)  # one t for all rows when σ̃ is 0-dim
            alpha, sigma = self._coefficients(t, x_bar)
            x = alpha * x_bar
            out = self._forward(net, x, t)
            return convert(out, self.config.prediction, "x0", x, alpha, sigma)

        return D

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """∇ₓ log p_t(x) of the model's noised marginal at time t, in data space (n, d)."""
        u = self.normalize(x.to(self.scale.dtype))
        tt = torch.as_tensor(t, dtype=torch.float64, device=u.device).expand(u.shape[0])
        alpha, sigma = self._coefficients(tt, u)
        with torch.no_grad():
            out = self._forward(self.ema_net if self.config.ema > 0 else self.net, u, tt)
            s_u = convert(out, self.config.prediction, "score", u, alpha, sigma)
        return s_u / self.scale

    # -- training ---------------------------------------------------------------------
    def _weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) / (the native MSE weight of the prediction), per sample (n,) float64."""
        c = self.config
        st2 = self.process.sigma_tilde(t) ** 2
        native = {"eps": torch.ones_like(st2), "score": torch.ones_like(st2), "x0": st2, "v": 1 + st2}[
            c.prediction
        ]
        if c.weighting == "prediction":
            return torch.ones_like(st2)
        if c.weighting in ("eps", "likelihood"):  # likelihood: t was drawn ∝ g²/σ², equal weights
            w = torch.ones_like(st2)
        else:  # min-snr, γ = 5
            w = torch.clamp(1.0 / st2, max=5.0) * st2
        return w / native

    def loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        c = self.config
        t = self.process.sample_t(
            u.shape[0],
            generator,
            device=u.device,
            density=_DENSITY_OF[_noise_levels(c)],
            log_mean=c.log_sigma_mean,
            log_std=c.log_sigma_std,
        )
        eps = _randn(u.shape, generator, u)
        alpha, sigma = self._coefficients(t, u)
        x = alpha * u + sigma * eps
        out = self._forward(self.net, x, t)
        if c.prediction == "score":  # Song & Ermon's λ(σ) = σ²: |σ ŝ + ε|²
            err = (sigma * out + eps) ** 2
        else:
            target = convert(eps, "eps", c.prediction, x, alpha, sigma)
            err = (out - target) ** 2
        per_sample = err.mean(-1) * self._weight(t).to(err.dtype)
        return {"loss": per_sample.mean()}

    def step(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        logs = super().step(batch, generator)
        if not math.isfinite(logs["loss"]):
            from genmodels.train import TrainingDiverged

            raise TrainingDiverged(f"diffusion loss is {logs['loss']}; try a lower --lr")
        if self.config.ema > 0:
            # warm-up of the decay, min(ema, (1 + k)/(10 + k)) after k updates: early on the
            # average forgets the random initialisation instead of carrying it for ~1/(1 − ema) steps
            k = int(self.ema_updates)
            decay = min(self.config.ema, (1 + k) / (10 + k))
            self.ema_updates.add_(1)
            ema, live = list(self.ema_net.parameters()), list(self.net.parameters())
            if len(ema) != len(live):
                raise RuntimeError(f"the EMA network has {len(ema)} parameters, the network {len(live)}")
            with torch.no_grad():  # one fused update (a few launches on a GPU, not one per tensor)
                torch._foreach_lerp_(ema, live, 1.0 - decay)
        return logs

    # -- sampling and likelihood ------------------------------------------------------
    def _sample(self, n: int, *, generator: torch.Generator | None, **options: Any) -> torch.Tensor:
        opts = DiffusionSampleConfig(**options)
        spacing = opts.spacing if opts.spacing != "auto" else _auto_spacing(opts.sampler)
        proc = self.process
        steps = max(opts.steps, 2) if opts.sampler == "ode" else opts.steps  # ode: only the ends matter
        sigmas = sigma_grid(steps, proc.sigma_tilde_min, proc.sigma_tilde_max, spacing, proc)
        like = torch.empty(0, dtype=self.shift.dtype, device=self.device)
        x = _randn((n, self.dim), generator, like) * math.sqrt(1.0 + proc.sigma_tilde_max**2)
        return sample(
            self.denoiser(),
            x,
            sigmas,
            opts.sampler,
            generator,
            eta=opts.eta,
            snr=opts.snr,
            corrector_steps=opts.corrector_steps,
            steps_per_level=opts.steps_per_level,
            langevin_step=opts.langevin_step,
            rtol=opts.rtol,
            atol=opts.atol,
        ).x

    def _log_prob(
        self,
        u: torch.Tensor,
        method: Literal["ode", "elbo"] = "ode",
        divergence: Literal["auto", "exact", "hutchinson"] = "auto",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        seed: int = 0,
    ) -> LogDensity:
        """log p(u): the probability-flow ODE's density at σ̃_min (kind exact, or estimate
        with Hutchinson's trace), or the DDPM bound (method "elbo", kind lower_bound)."""
        proc = self.process
        gen = torch.Generator().manual_seed(seed)
        if method == "elbo":
            if not isinstance(proc, DDPM):
                raise NotSupportedError(
                    f"the variational bound is for the discrete chain (process=ddpm); this model's "
                    f"process is {proc.name}: use method='ode'"
                )
            with torch.no_grad():
                return ddpm_elbo(self.denoiser(), proc, u, gen)
        if method != "ode":
            raise ValueError(f"unknown method {method!r}; choose one of: ode, elbo")
        return ode_log_prob(
            self.denoiser(),
            u,
            proc.sigma_tilde_min,
            proc.sigma_tilde_max,
            gaussian_prior_log_prob(proc.sigma_tilde_max),
            divergence=divergence,
            generator=gen,
            rtol=rtol,
            atol=atol,
        )


#: noise_levels option → Process.sample_t density
_DENSITY_OF = {"time": "time", "log_uniform": "log_sigma", "log_normal": "log_normal"}


def _noise_levels(c: DiffusionConfig) -> str:
    if c.noise_levels != "auto":
        return c.noise_levels
    return "log_uniform" if c.weighting == "likelihood" else "log_normal"


def _auto_spacing(sampler: str) -> str:
    """The levels ``spacing="auto"`` walks: trailing for the Euler–Maruyama samplers (sde, pc),
    whose last step is then one full denoising jump from t = 1/N; levels uniform in log-SNR
    (DPM-Solver's choice, Lu et al. 2022) for the others. The best of edm / uniform / trailing /
    logsnr for each sampler at 10 and 20 steps on the learned 8gaussians model
    (docs/benchmarks.md, "Steps against quality")."""
    return "trailing" if sampler in ("sde", "pc") else "logsnr"


def _randn(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, like: torch.Tensor):
    """N(0, I) of ``shape`` in the dtype and on the device of ``like``, from ``generator``
    wherever it lives (a CPU generator can drive a CUDA model)."""
    if generator is None or generator.device == like.device:
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


def _validate(c: DiffusionConfig) -> None:
    checks = [
        (
            c.process in ("vp", "subvp", "ve", "ddpm"),
            f"unknown process {c.process!r}; choose one of: vp, subvp, ve, ddpm",
        ),
        (
            c.prediction in PREDICTIONS,
            f"unknown prediction {c.prediction!r}; choose one of: {', '.join(PREDICTIONS)}",
        ),
        (
            c.weighting in WEIGHTINGS,
            f"unknown weighting {c.weighting!r}; choose one of: {', '.join(WEIGHTINGS)}",
        ),
        (c.net in ("mlp", "unet"), f"unknown net {c.net!r}; choose one of: mlp, unet"),
        (
            c.noise_levels in _DENSITY_OF or c.noise_levels == "auto",
            f"unknown noise_levels {c.noise_levels!r}; choose one of: auto, {', '.join(_DENSITY_OF)}",
        ),
        (
            c.weighting != "likelihood" or _noise_levels(c) == "log_uniform",
            "weighting=likelihood draws its noise levels log-uniformly (its importance "
            f"distribution); leave noise_levels at auto, not {c.noise_levels!r}",
        ),
        (c.log_sigma_std > 0, f"log_sigma_std must be positive, got {c.log_sigma_std}"),
        (0.0 <= c.ema < 1.0, f"ema must be in [0, 1), got {c.ema}"),
        (c.sigma_min > 0, f"sigma_min must be positive, got {c.sigma_min}"),
        (c.sigma_max >= 0, f"sigma_max must be >= 0 (0: from the data), got {c.sigma_max}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
