"""Variational auto-encoder (Kingma & Welling 2014; Rezende, Mohamed & Wierstra 2014).

A latent-variable model p_θ(x, z) = p(z) p_θ(x|z) with prior p(z) = N(0, I) and a Gaussian
decoder p_θ(x|z) = N(x; μ_θ(z), diag σ_θ²), learned together with a Gaussian encoder (the
inference model) q_φ(z|x) = N(z; m_φ(x), diag s_φ²(x)). It is the tutorial's one-stroke model
(§6, the golf table: "Variational Auto-Encoder | 1 ball | 1 stroke"): a sample is z ~ p(z) and
one pass of the decoder, with no iterative refinement, so whatever the decoder does not learn
to undo in one stroke stays in the samples.

**Training** maximises the evidence lower bound, with the reparameterisation z = m + s ⊙ ε,
ε ~ N(0, I), and the Gaussian KL in closed form (Kingma & Welling 2014, Eq. 10):

    ELBO(x) = E_q[log p_θ(x|z)] − KL(q_φ(z|x) ‖ p(z)) ≤ log p_θ(x),
    KL(N(m, s²) ‖ N(0, I)) = ½ Σ_j (m_j² + s_j² − 1 − log s_j²).

``beta`` weighs the KL term, E_q[log p_θ(x|z)] − β KL (β-VAE, Higgins et al. 2017); β = 1 is
the ELBO, the only value that trains the likelihood bound itself.

**Log-likelihood** (``log_prob``, both kind "lower_bound") from k draws z_i ~ q_φ(z|x) and the
importance weights w_i = p(z_i) p_θ(x|z_i) / q_φ(z_i|x):

    elbo:  (1/k) Σ_i log p_θ(x|z_i) − KL(q_φ(z|x) ‖ p(z))    (the KL exact, the rest a mean)
    iwae:  log (1/k) Σ_i w_i                                  (Burda, Grosse & Salakhutdinov 2016)

The expectation of the IWAE estimate is a bound L_k with ELBO = L_1 ≤ L_k ≤ L_{k+1} ≤ log p(x)
and L_k → log p(x) as k → ∞ (Burda et al. 2016, Theorem 1). Either value is a Monte-Carlo
estimate of its bound; its mean over many points is the bound up to Monte-Carlo error.

**The aggregated posterior** (:meth:`VAE.aggregate_posterior_gap`). The encoder's average
q(z) = E_data q_φ(z|x) need not equal the prior that samples are drawn from; where q(z) has
holes or mass outside the prior, one-stroke samples z ~ p(z) land where the decoder was
never trained. The average KL term splits as (Hoffman & Johnson 2016, "ELBO surgery")

    E_data KL(q_φ(z|x) ‖ p(z)) = I_q(x; z) + KL(q(z) ‖ p(z)),

the mutual information between data and code under q plus the gap between the aggregate and
the prior; the method estimates both.

The decoder's variance is learned, per data dimension (one parameter per coordinate, the
default ``decoder_variance="per_dimension"``) or per output (σ_θ(z) an output of the decoder,
``"per_output"``). All log-standard-deviations pass through a soft clamp b·tanh(r/b),
b = 7 (standardized units), which keeps σ ∈ (e^−7, e^7): the Gaussian likelihood of a
decoder whose variance may shrink without bound is unbounded (Mattei & Frellsen 2018).

**Networks** (``net``): MLPs, or for square one-channel images (dim = side², side divisible by
4, e.g. 8×8 digits) the convolutional trunks of :mod:`genmodels.nets.conv` (base width
hidden / 8): the encoder reads the image with stride-2 convolutions down to a (4c, side/4,
side/4) map and a linear layer to (m, raw log s); the decoder maps z linearly to that map and
upsamples it back to the side×side mean image, plus a second output plane, the raw log σ,
when ``decoder_variance="per_output"`` (with "per_dimension" the log σ's stay a parameter
vector). No batch normalisation, so the bounds of an image do not depend on its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from genmodels.models.base import Model, ModelConfig, SampleConfig
from genmodels.nets.conv import ConvDecoder, ConvEncoder, conv_base, image_side
from genmodels.nets.mlp import _ACTIVATIONS, MLP, Activation
from genmodels.types import LogDensity

#: soft bound b on every log-standard-deviation: log σ = b·tanh(raw / b)
LOG_STD_BOUND = 7.0
_LOG_2PI = math.log(2 * math.pi)


@dataclass
class VAEConfig(ModelConfig):
    """Options of the VAE family."""

    latent_dim: int = 0
    """dimension of z; 0: the data's dimension (2 on the 2-D targets: a 2-D code can carry all
    of a 2-D point, so the encoder need not discard information, and the decoder stays a
    smooth map of the plane onto the data; a smaller code could not, a larger one only adds
    dimensions the decoder learns to ignore)"""
    net: Literal["mlp", "conv"] = "mlp"
    """encoder and decoder: MLPs, or convolutional trunks for square one-channel images
    (dim = side², side divisible by 4; module docstring)"""
    hidden: int = 128
    """width of the encoder and decoder MLPs (conv: hidden / 8 base channels, at least 8)"""
    depth: int = 3
    """hidden layers of the encoder and of the decoder (0: linear maps; MLP only)"""
    activation: Activation = "silu"
    """nonlinearity of both networks"""
    beta: float = 1.0
    """weight of the KL term (β-VAE, Higgins et al. 2017); 1 trains the ELBO"""
    kl_warmup: int = 1000
    """steps over which the KL weight rises linearly from 0 to β (Bowman et al. 2016; Sønderby
    et al. 2016); 0: off. Without it the decoder's learned variance lets the model settle on
    the posterior-collapse optimum (q_φ(z|x) = p(z), p_θ(x|z) = one Gaussian fit), which a
    short run on 8gaussians reaches from most initialisations"""
    decoder_variance: Literal["per_output", "per_dimension"] = "per_dimension"
    """the decoder's variance: one learned parameter per data coordinate (per_dimension), or an
    output of the network, σ_θ(z) (per_output). On 8gaussians (1500–2000 short-run steps)
    per_dimension reached a KL bound of 0.5 nats where per_output stayed at 1.1–1.3: a
    per-output variance lets the decoder make each code's likelihood sharp, so the encoder
    spends 5–8 nats of KL on codes the prior then fills poorly (a large aggregate gap)"""


@dataclass
class VAESampleConfig(SampleConfig):
    """Options of ``sample`` for the VAE family."""

    mean: bool = False
    """return the decoder mean μ_θ(z) instead of a draw x ~ p_θ(x|z)"""


def _soft_clamp(raw: torch.Tensor) -> torch.Tensor:
    return LOG_STD_BOUND * torch.tanh(raw / LOG_STD_BOUND)


def _gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag e^{2 log_std}) summed over the last dimension."""
    return (-0.5 * ((x - mean) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * _LOG_2PI).sum(-1)


def _kl_to_standard_normal(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(m, diag s²) ‖ N(0, I)) = ½ Σ_j (m_j² + s_j² − 1 − 2 log s_j), over the last dimension."""
    return 0.5 * (mean**2 + torch.exp(2 * log_std) - 1 - 2 * log_std).sum(-1)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """N(0, I) in ``like``'s dtype and device, from ``generator`` wherever it lives."""
    if generator is None or generator.device == like.device:
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


def _seeded(seed: int, like: torch.Tensor) -> torch.Generator:
    return torch.Generator(device=like.device).manual_seed(seed)


class VAE(Model):
    """A Gaussian VAE with a learned decoder variance; see the module docstring."""

    family: ClassVar[str] = "vae"
    autocast_safe: ClassVar[bool] = True  # a regression/classification loss: bf16-safe
    Config: ClassVar[type[ModelConfig]] = VAEConfig
    SampleConfig: ClassVar[type[SampleConfig]] = VAESampleConfig
    has_log_prob: ClassVar[bool] = True
    #: 40,000 steps (≈ 2½ minutes on one core): at 10,000 the IWAE-bound KL on 8gaussians was
    #: 0.29 nats, at 40,000 0.14 (docs/benchmarks.md)
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 40_000, "lr": 1e-3, "batch_size": 256}
    tour_steps: ClassVar[int] = 2000
    #: held-out digits (IWAE bound, early stopping): mlp 2.69, conv 2.46, conv + logit 0.01 2.05 bits/dim
    image_options: ClassVar[dict[str, Any]] = {"net": "conv", "logit": 0.01}
    config: VAEConfig

    def __init__(self, dim: int, config: VAEConfig | None = None) -> None:
        super().__init__(dim, config)
        c = self.config
        _validate(c)
        self.latent_dim = c.latent_dim or dim
        per_output = c.decoder_variance == "per_output"
        # encoder: u ↦ (m, raw log s); decoder: z ↦ (μ, raw log σ) or μ alone
        self.encoder: nn.Module
        self.decoder: nn.Module
        if c.net == "conv":
            side = image_side(dim, "conv")
            kw_conv = {"base": conv_base(c.hidden), "activation": _ACTIVATIONS[c.activation]}
            self.encoder = ConvEncoder(side, 2 * self.latent_dim, **kw_conv)
            self.decoder = ConvDecoder(self.latent_dim, side, channels=2 if per_output else 1, **kw_conv)
        else:
            kw = {"hidden": c.hidden, "depth": c.depth, "activation": c.activation}
            self.encoder = MLP(dim, 2 * self.latent_dim, **kw)
            self.decoder = MLP(self.latent_dim, 2 * dim if per_output else dim, **kw)
        self.decoder_log_std = None if per_output else nn.Parameter(torch.zeros(dim))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))  # for the KL warm-up

    # -- the two Gaussians -------------------------------------------------------------
    def encode(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q_φ(z|u) as (mean, log std), each (n, latent_dim)."""
        m, raw = self.encoder(u).chunk(2, dim=-1)
        return m, _soft_clamp(raw)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p_θ(u|z) as (mean, log std), each (..., dim)."""
        out = self.decoder(z)
        if self.decoder_log_std is None:
            mu, raw = out.chunk(2, dim=-1)
        else:
            mu, raw = out, self.decoder_log_std.expand_as(out)
        return mu, _soft_clamp(raw)

    # -- training ----------------------------------------------------------------------
    def loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """−(E_q[log p_θ(u|z)] − β KL(q_φ(z|u) ‖ p(z))) with one reparameterised draw per point.
        Logged: ``elbo`` (β = 1, data space, nats), ``kl`` (the average KL term)."""
        m, log_s = self.encode(u)
        z = m + torch.exp(log_s) * _randn(tuple(m.shape), generator, m)
        mu, log_sigma = self.decode(z)
        rec = _gaussian_log_prob(u, mu, log_sigma)
        kl = _kl_to_standard_normal(m, log_s)
        loss = -(rec - self.kl_weight() * kl).mean()
        elbo = (rec - kl).mean().detach() - torch.log(self.scale).sum()
        return {"loss": loss, "elbo": elbo, "kl": kl.mean().detach()}

    def kl_weight(self) -> float:
        """β · min(1, (step + 1) / kl_warmup): the weight of the KL term at this step."""
        c = self.config
        ramp = min(1.0, (int(self.steps_done) + 1) / c.kl_warmup) if c.kl_warmup > 0 else 1.0
        return c.beta * ramp

    def step(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        logs = super().step(batch, generator)
        self.steps_done += 1
        return logs

    # -- sampling and likelihood -------------------------------------------------------
    def _sample(self, n: int, *, generator: torch.Generator | None, **options: Any) -> torch.Tensor:
        """z ~ N(0, I), u ~ p_θ(u|z) (or u = μ_θ(z) with ``mean=True``): one stroke."""
        opts = VAESampleConfig(**options)
        like = self.shift
        z = _randn((n, self.latent_dim), generator, like)
        mu, log_sigma = self.decode(z)
        if opts.mean:
            return mu
        return mu + torch.exp(log_sigma) * _randn(tuple(mu.shape), generator, like)

    def _log_weights(self, u: torch.Tensor, k: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """For k draws z_i ~ q_φ(z|u): log p_θ(u|z_i) and log w_i, each (k, n); and the KL (n,)."""
        m, log_s = self.encode(u)
        eps = _randn((k, *m.shape), generator, m)
        z = m + torch.exp(log_s) * eps  # (k, n, latent)
        mu, log_sigma = self.decode(z)
        rec = _gaussian_log_prob(u, mu, log_sigma)
        log_prior = -0.5 * (z**2).sum(-1) - 0.5 * self.latent_dim * _LOG_2PI
        log_q = (-0.5 * eps**2 - log_s - 0.5 * _LOG_2PI).sum(-1)
        return {"rec": rec, "log_w": rec + log_prior - log_q, "kl": _kl_to_standard_normal(m, log_s)}

    @torch.no_grad()
    def _log_prob(
        self,
        u: torch.Tensor,
        method: Literal["elbo", "iwae"] = "iwae",
        k: int = 100,
        seed: int = 0,
        chunk: int = 65_536,
    ) -> LogDensity:
        """A lower bound on log p_θ(u) per point (n,), from k draws of q_φ(z|u) (module docstring):
        ``method="iwae"`` the importance-weighted bound L_k (default, k = 100), ``"elbo"`` the
        ELBO with the exact KL and a k-draw mean of the reconstruction term. ``seed`` seeds the
        draws (the same seed gives the same values); ``chunk`` caps points × k per pass."""
        if method not in ("elbo", "iwae"):
            raise ValueError(f"unknown method {method!r}; choose one of: elbo, iwae")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        gen = _seeded(seed, u)
        per = max(1, chunk // k)
        values = []
        for start in range(0, u.shape[0], per):
            out = self._log_weights(u[start : start + per], k, gen)
            if method == "iwae":
                values.append(torch.logsumexp(out["log_w"], dim=0) - math.log(k))
            else:
                values.append(out["rec"].mean(0) - out["kl"])
        return LogDensity(torch.cat(values), "lower_bound")

    # -- diagnostics -------------------------------------------------------------------
    @torch.no_grad()
    def aggregate_posterior_gap(
        self, x: torch.Tensor, samples: int = 10, seed: int = 0, chunk: int = 1024
    ) -> dict[str, float]:
        """How far the aggregated posterior q(z) = (1/M) Σ_n q_φ(z|x_n) is from the prior p(z).

        ``x`` (M, dim) data-space points (the data, or a sample of it); returns

        - ``mean_kl``: (1/M) Σ_n KL(q_φ(z|x_n) ‖ p(z)), the ELBO's KL term, exact per point;
        - ``kl_aggregate``: KL(q ‖ p), estimated by the minibatch mixture estimator
          (1/(M S)) Σ_{n,s} [log (1/M) Σ_m q_φ(z_ns|x_m) − log p(z_ns)], z_ns ~ q_φ(z|x_n),
          ``samples`` = S draws per point (``stderr_kl_aggregate`` its Monte-Carlo error over
          the draws);
        - ``mutual_info``: mean_kl − kl_aggregate, the estimate of I_q(x; z) under the uniform
          distribution on the M points (Hoffman & Johnson 2016);
        - ``log_m``: log M, the largest value the mutual information of M points can take.

        What it estimates, and its bias: for the M given points the mixture density is exact,
        so kl_aggregate is an unbiased Monte-Carlo estimate of KL(q_M ‖ p) for the empirical
        aggregate q_M. As an estimate of the population KL(q ‖ p), with q = E q_M over draws of
        the M points, it is biased upwards, E KL(q_M ‖ p) ≥ KL(q ‖ p) by the convexity of KL:
        each code z_n keeps its own component q_φ(z|x_n) in the mixture, which is too peaked when
        the posteriors are narrow relative to the spacing of M codes. The bias shrinks as M grows
        (then mutual_info → I_q(x; z) from below); since mutual_info ≤ log M, kl_aggregate ≥
        mean_kl − log M, so a gap is resolved only when mean_kl − log M is well below it.
        """
        u = self.normalize(x.to(self.scale.dtype))
        gen = _seeded(seed, u)
        m, log_s = self.encode(u)
        M, L = m.shape
        mean_kl = _kl_to_standard_normal(m, log_s)
        z = m + torch.exp(log_s) * _randn((samples, M, L), gen, m)  # (S, M, L)
        z = z.reshape(-1, L)
        inv_s = torch.exp(-log_s)
        log_norm = -(log_s.sum(-1)) - 0.5 * L * _LOG_2PI  # (M,)
        log_mix = []
        for start in range(0, z.shape[0], chunk):
            zc = z[start : start + chunk, None, :]  # (c, 1, L)
            log_q = (-0.5 * ((zc - m) * inv_s) ** 2).sum(-1) + log_norm  # (c, M)
            log_mix.append(torch.logsumexp(log_q, dim=1) - math.log(M))
        log_p = -0.5 * (z**2).sum(-1) - 0.5 * L * _LOG_2PI
        d = (torch.cat(log_mix) - log_p).reshape(samples, M).mean(1).double()  # one value per draw set
        kl_agg = float(d.mean())
        stderr = float(d.std() / math.sqrt(samples)) if samples > 1 else math.nan
        return {
            "kl_aggregate": kl_agg,
            "stderr_kl_aggregate": stderr,
            "mean_kl": float(mean_kl.mean()),
            "mutual_info": float(mean_kl.mean()) - kl_agg,
            "log_m": math.log(M),
        }


def _validate(c: VAEConfig) -> None:
    checks = [
        (c.net in ("mlp", "conv"), f"unknown net {c.net!r}; choose one of: mlp, conv"),
        (c.latent_dim >= 0, f"latent_dim must be >= 0 (0: the data's dimension), got {c.latent_dim}"),
        (c.hidden >= 1, f"hidden must be >= 1, got {c.hidden}"),
        (c.depth >= 0, f"depth must be >= 0, got {c.depth}"),
        (
            c.activation in _ACTIVATIONS,
            f"unknown activation {c.activation!r}; choose one of: {', '.join(_ACTIVATIONS)}",
        ),
        (c.beta > 0 and math.isfinite(c.beta), f"beta must be a positive number, got {c.beta}"),
        (c.kl_warmup >= 0, f"kl_warmup must be >= 0 (0: off), got {c.kl_warmup}"),
        (
            c.decoder_variance in ("per_output", "per_dimension"),
            f"unknown decoder_variance {c.decoder_variance!r}; choose one of: per_output, per_dimension",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
