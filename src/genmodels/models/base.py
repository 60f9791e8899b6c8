"""The contract every family of generative model follows.

A family is an ``nn.Module`` with a dataclass of its own options (``Config``). The one
training loop (``genmodels.train``) only ever calls the methods below, so a new family is
one new file plus one line in ``genmodels.models.FAMILIES``.

- ``loss(batch, generator)``: per-sample losses reduced to the scalars to minimise, as a
  dict whose ``"loss"`` entry is differentiated; single-optimiser families need nothing more.
- ``step(batch, generator)``: one optimisation step; families with several optimisers or
  an inner MCMC loop override it.
- ``sample(n, generator=..., **options)``: draws from the model.
- ``log_prob(x)``: a :class:`~genmodels.types.LogDensity` (values and their kind) where the
  family has one. A family that has none says so with ``has_log_prob = False`` and raises
  :class:`NotSupportedError`; it never fakes the method.

Every model works in standardized coordinates u = (x − shift) / scale, with ``shift`` and
``scale`` per-dimension buffers set from the training data (:meth:`Model.set_normalization`),
so that one set of defaults serves data of any location and scale. The public methods take
and return data-space values: families implement ``_sample`` and ``_log_prob`` in u-space
and the base class maps them, with the exact Jacobian term of the affine map:

    log p_x(x) = log p_u((x − shift) / scale) − Σ_j log scale_j.

Optionally (``ModelConfig.logit`` = λ > 0, for data in [0, 1] such as dequantized images) a
logit transform comes first (Dinh et al. 2017, RealNVP §4.1; Papamakarios et al. 2017, MAF
§4.3): s = logit(λ + (1 − 2λ) y), u = (s − shift) / scale, with shift and scale set from the
transformed data, and the density keeps that of y by its exact Jacobian term

    log p_y(y) = log p_u(u) − Σ_j log scale_j + Σ_j [log(1 − 2λ) − log p_j − log(1 − p_j)],

p = λ + (1 − 2λ) y. Since s ranges over ℝ, y = (σ(s) − λ)/(1 − 2λ) ranges over the open
interval (−λ/(1 − 2λ), 1 + λ/(1 − 2λ)) in each coordinate: the model's density (and its
samples) live there, slightly wider than [0, 1]; it is a proper density of y on that interval,
so the likelihood of data in [0, 1] is exact (only the mass the model puts outside [0, 1] is
wasted).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from genmodels.types import LogDensity


class NotSupportedError(RuntimeError):
    """Raised when a family is asked for something it does not have (e.g. a density)."""


def check_logit(lam: Any) -> None:
    """One-line ValueError unless ``lam`` is 0 (off) or a number in (0, 0.5)."""
    ok = isinstance(lam, (int, float)) and not isinstance(lam, bool) and (lam == 0 or 0 < lam < 0.5)
    if not ok:
        raise ValueError(f"logit must be 0 (off) or a number λ in (0, 0.5), got {lam!r}")


def logit_transform(y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, log|det ∂s/∂y|) of s = logit(p), p = λ + (1 − 2λ) y, per row: ((n, d), (n,)).

    Both p and 1 − p = λ + (1 − 2λ)(1 − y) are formed directly (no cancellation near y = 1), so
    s = log p − log(1 − p) and log|ds_j/dy_j| = log(1 − 2λ) − log p_j − log(1 − p_j) are
    accurate over the whole of [0, 1]. Values outside the transform's domain (p ∉ (0, 1)) are
    the caller's to refuse (:meth:`Model.check_logit_domain`).
    """
    p = lam + (1 - 2 * lam) * y
    q = lam + (1 - 2 * lam) * (1 - y)
    log_p, log_q = torch.log(p), torch.log(q)
    return log_p - log_q, (math.log(1 - 2 * lam) - log_p - log_q).sum(-1)


def inverse_logit_transform(s: torch.Tensor, lam: float) -> torch.Tensor:
    """y = (σ(s) − λ) / (1 − 2λ), the inverse of :func:`logit_transform`."""
    return (torch.sigmoid(s) - lam) / (1 - 2 * lam)


@dataclass
class ModelConfig:
    """Options shared by every family (families subclass this dataclass)."""

    logit: float = 0.0
    """λ of an optional logit preprocessing for data in [0, 1] (e.g. dequantized images),
    0 = off, else in (0, 0.5): the model sees s = logit(λ + (1 − 2λ) y), standardized, and its
    log_prob adds the exact log|ds/dy| = Σ_j [log(1 − 2λ) − log p_j − log(1 − p_j)],
    p = λ + (1 − 2λ) y, so densities stay those of y (Dinh et al. 2017, RealNVP §4.1;
    Papamakarios et al. 2017, MAF §4.3)"""

    def __post_init__(self) -> None:
        check_logit(self.logit)


@dataclass
class SampleConfig:
    """Options of a family's sampler (families with a choice of sampler subclass this)."""


class Model(nn.Module):
    """Base class of all families. See the module docstring for the contract."""

    family: ClassVar[str] = "model"
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    SampleConfig: ClassVar[type[SampleConfig]] = SampleConfig
    has_log_prob: ClassVar[bool] = False
    #: Overrides of the training loop's defaults (steps, lr, batch_size) for this family.
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: Further overrides where an option of the family takes a value: {option: {value:
    #: {train key: default}}} (e.g. a learning rate per method); see :meth:`train_defaults_for`.
    train_defaults_by_option: ClassVar[dict[str, dict[Any, dict[str, Any]]]] = {}
    #: Training steps this family gets in ``genmodels tour`` (a short CPU budget).
    tour_steps: ClassVar[int] = 2000
    #: Options added after checkpoints of this family were written, with the value those
    #: checkpoints were built with (where it is not the option's current default).
    options_before: ClassVar[dict[str, Any]] = {}
    #: Options the training loop gives this family on square one-channel images (side a
    #: multiple of 4, e.g. the 8×8 digits) unless the user sets them: its convolutional network.
    image_options: ClassVar[dict[str, Any]] = {}
    #: Whether the family is exact with the logit preprocessing (``ModelConfig.logit``). None:
    #: decided by :meth:`logit_refusal`, which refuses a family with data-space methods outside
    #: the contract (``energy``, ``score``: they would miss the logit's Jacobian) or with
    #: discrete ``levels``; a family that handles the transform there sets True.
    logit_supported: ClassVar[bool | None] = None
    #: Whether a backward pass of the family's step may leave some parameters without a
    #: gradient (e.g. a GAN's discriminator update leaves the generator out): under torchrun,
    #: DDP is then built with ``find_unused_parameters=True`` (:func:`genmodels.distributed.wrap`).
    ddp_find_unused: ClassVar[bool] = False
    #: Whether the family may train in mixed precision (``TrainConfig.precision = "bf16"``):
    #: its passes through :meth:`call` then run under ``torch.autocast`` with bfloat16. Safe
    #: where the loss is a regression or classification of network outputs (denoising, a
    #: velocity, a discriminator's logits, a decoder's likelihood): bfloat16's 8-bit mantissa
    #: (unit roundoff u = 2⁻⁸) perturbs each term by at most 0.4 % relative, which the optimiser
    #: averages away; float32 master weights as in Micikevicius et al. 2018 ("Mixed Precision
    #: Training"), bfloat16 needing no loss scaling (Kalamkar et al. 2019, "A Study of BFLOAT16
    #: for Deep Learning Training").
    autocast_safe: ClassVar[bool] = False
    #: Why it is not, for the error message (set by families with a reason of their own).
    autocast_unsafe_because: ClassVar[str] = "its training has not been shown to be accurate in bfloat16"
    #: Whether DDP broadcasts rank 0's buffers at every forward (its default). A family whose
    #: step keeps its buffers identical on every rank by itself (global decisions, gathered
    #: updates: the energy-based model's chains) sets False: they are then synced once, when the
    #: wrapper is built, and a desynchronisation shows instead of being papered over.
    ddp_sync_buffers: ClassVar[bool] = True
    #: The submodules (attribute names) that ``TrainConfig.compile`` compiles with
    #: ``torch.compile``, for the passes through :meth:`call` only (sampling, evaluation,
    #: validation and checkpoints see the eager modules). A family lists a network here when its
    #: training pass is a plain forward and backward through it; passes that differentiate
    #: gradients (a gradient penalty, Langevin steps inside the loss) stay out.
    compile_modules: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def train_defaults_for(cls, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The training loop's defaults for this family with these ``options`` (the others at
        their defaults): ``train_defaults`` updated by ``train_defaults_by_option``."""
        options = dict(options or {})
        out = dict(cls.train_defaults)
        for name, by_value in cls.train_defaults_by_option.items():
            value = options.get(name, getattr(cls.Config, name, None))
            out.update(by_value.get(value, {}))
        return out

    def __init__(self, dim: int, config: ModelConfig | None = None) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.config = config if config is not None else self.Config()
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        lam = getattr(self.config, "logit", 0.0)
        check_logit(lam)
        if lam:
            refusal = self.logit_refusal()
            if refusal:
                raise ValueError(
                    f"logit is not available for the {self.family} family: {refusal}; use logit=0"
                )

    # -- standardization --------------------------------------------------------------
    @property
    def logit_lambda(self) -> float:
        """λ of the logit preprocessing, 0.0 when off (``ModelConfig.logit``)."""
        return float(getattr(self.config, "logit", 0.0) or 0.0)

    def logit_refusal(self) -> str:
        """Why this model cannot take the logit preprocessing exactly ('' when it can)."""
        if self.logit_supported is not None:
            return "" if self.logit_supported else "the family does not support it"
        if getattr(self.config, "levels", 0):
            return "with levels it models the integer cells of the data, not a density to transform"
        bypass = [name for name in ("energy", "score") if callable(getattr(type(self), name, None))]
        if bypass:
            listing = ", ".join(f"{name}()" for name in bypass)
            verb = "work" if len(bypass) > 1 else "works"
            return f"its {listing} {verb} in data space without the logit's Jacobian"
        return ""

    def check_logit_domain(self, x: torch.Tensor) -> None:
        """With logit on: a one-line ValueError unless every value of ``x`` lies in the transform's
        domain, the open interval (−λ/(1 − 2λ), 1 + λ/(1 − 2λ)) ⊃ [0, 1] (module docstring)."""
        lam = self.logit_lambda
        if not lam or x.numel() == 0:
            return
        p = lam + (1 - 2 * lam) * x
        q = lam + (1 - 2 * lam) * (1 - x)
        if not bool(((p > 0) & (q > 0)).all()):
            wide = lam / (1 - 2 * lam)
            raise ValueError(
                f"logit={lam:g} expects data in [0, 1] (its density lives on ({-wide:.4g}, {1 + wide:.4g})); "
                f"got values in [{float(x.min()):.4g}, {float(x.max()):.4g}]"
            )

    def set_normalization(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """Use u = (x − shift) / scale inside the model (shapes ``(dim,)``, scale > 0); with
        logit on, u = (s − shift) / scale for the logit-transformed s (module docstring)."""
        if shift.shape != (self.dim,) or scale.shape != (self.dim,):
            raise ValueError(f"shift and scale must have shape ({self.dim},)")
        if not bool((scale > 0).all()):
            raise ValueError("scale must be positive")
        self.shift.copy_(shift)
        self.scale.copy_(scale)

    def _to_model_space(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(u, the logit's log|det ∂s/∂x| per row, or None when logit is off): one pass."""
        lam = self.logit_lambda
        log_det = None
        if lam:
            self.check_logit_domain(x)
            x, log_det = logit_transform(x, lam)
        return (x - self.shift) / self.scale, log_det

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Data-space x → the model's coordinates u (with logit on, through s = logit(p))."""
        return self._to_model_space(x)[0]

    def denormalize(self, u: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`: u → data space.

        With logit on, s = u·scale + shift is first clamped to |s| ≤ log(1/(64 ε)) of its dtype
        (11.8 in float32, 31.9 in float64): beyond, σ(s) is within a few ulps of 0 or 1 and y would
        round onto (or past) the edge of the density's support, where log_prob is undefined. This
        moves only the model's mass beyond that |s|, far in the tails of any fitted model."""
        x = u * self.scale + self.shift
        lam = self.logit_lambda
        if not lam:
            return x
        bound = math.log(1 / (64 * torch.finfo(x.dtype).eps))
        return inverse_logit_transform(x.clamp(-bound, bound), lam)

    def log_det_normalize(self, x: torch.Tensor) -> torch.Tensor:
        """log|det ∂u/∂x| of :meth:`normalize` at data-space x, per row (n,):
        −Σ_j log scale_j, plus the logit's Σ_j [log(1 − 2λ) − log p_j − log(1 − p_j)] when on.
        A family computing a data-space quantity of its own (an energy, a score) adds it."""
        return self._log_det(self._to_model_space(x.to(self.scale.dtype))[1], x.shape[0])

    def _log_det(self, logit_log_det: torch.Tensor | None, n: int) -> torch.Tensor:
        out = -torch.log(self.scale).sum().expand(n)
        return out if logit_log_det is None else out + logit_log_det

    def prepare(self, x: torch.Tensor, generator: torch.Generator, progress: bool = False) -> None:
        """Data-dependent set-up, called once by the training loop before the first step of a
        fresh run (never on resume: what it sets must live in buffers, so checkpoints keep it).

        ``x`` is a data-space sample of the training data ``(m, dim)`` on the model's device;
        ``generator`` a CPU generator seeded from the run's seed. The default does nothing;
        e.g. the energy-based model fits its reference distribution here.
        """

    def plan(self, steps: int) -> None:
        """Told by the training loop how many steps the run has, before its first step (also on
        resume). The default does nothing; e.g. the energy-based model anneals its data noise
        over a fraction of the run."""

    # -- optimisation -----------------------------------------------------------------
    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        """Create (and keep) the optimisers; the default is one Adam over all parameters."""
        self._optimizers = {"main": torch.optim.Adam(self.parameters(), lr=lr)}
        return self._optimizers

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if not self._optimizers:
            raise RuntimeError("call configure_optimizers(lr) before training")
        return self._optimizers

    def loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Scalars to minimise on a normalized batch ``u``; ``"loss"`` is differentiated."""
        raise NotImplementedError(f"{self.family} does not define loss(); override step()")

    def step(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """One optimisation step on a data-space ``batch`` (shape ``(b, dim)``).

        The default normalizes the batch, differentiates ``loss(u)["loss"]`` and steps the
        single optimiser. Returns the logged scalars.
        """
        (opt,) = self.optimizers.values()
        opt.zero_grad(set_to_none=True)
        out = self.call("loss", self.normalize(batch), generator)
        out["loss"].backward()
        opt.step()
        return {k: float(v.detach()) for k, v in out.items()}

    @property
    def data_parallel(self) -> bool:
        """Whether the model is wrapped for DistributedDataParallel (its ``step`` then runs on every
        rank together, so it may, and for global decisions must, use collective operations)."""
        return "_ddp" in self.__dict__

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``getattr(self, method)(*args, **kwargs)`` for a computation whose result is
        differentiated (e.g. ``"loss"``): through the DistributedDataParallel wrapper that
        :mod:`genmodels.distributed` attaches under ``torchrun`` (so that the gradients are
        averaged across ranks), else directly. A family whose ``step`` computes its losses
        without going through ``call`` cannot train under DDP. With mixed precision on (the
        training loop sets it for ``TrainConfig.precision="bf16"``) the call runs under
        ``torch.autocast``; the backward of its result then follows the same dtypes."""
        dtype = self.__dict__.get("_autocast")
        with self._compiled_passes():
            if dtype is not None:  # mixed precision (TrainConfig.precision): the pass, not the weights
                with torch.autocast(self.device.type, dtype=dtype):
                    return self._call(method, *args, **kwargs)
            return self._call(method, *args, **kwargs)

    @contextlib.contextmanager
    def _compiled_passes(self) -> Iterator[None]:
        """Inside, the :attr:`compile_modules` run compiled when the training loop compiled them
        (``TrainConfig.compile``): ``nn.Module.compile`` keeps the compiled forward in the module's
        ``_compiled_call_impl``, which ``__call__`` takes when set; it is set for this pass only."""
        compiled = self.__dict__.get("_compiled_forwards")
        if not compiled:
            yield
            return
        modules = [getattr(self, name) for name in compiled]
        before = [module._compiled_call_impl for module in modules]  # a pass inside a pass keeps it
        for module, forward in zip(modules, compiled.values(), strict=True):
            module._compiled_call_impl = forward
        try:
            yield
        finally:
            for module, previous in zip(modules, before, strict=True):
                module._compiled_call_impl = previous

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        wrapper = self.__dict__.get("_ddp")
        if wrapper is None:
            return getattr(self, method)(*args, **kwargs)
        self.__dict__["_ddp_calls"] = self.__dict__.get("_ddp_calls", 0) + 1
        return wrapper(method, *args, **kwargs)

    # -- the generative side ----------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, **options: Any) -> torch.Tensor:
        """Draw ``n`` data-space samples, shape ``(n, dim)``."""
        return self.denormalize(self._sample(n, generator=generator, **options))

    def log_prob(self, x: torch.Tensor, **options: Any) -> LogDensity:
        """Per-sample data-space log-density ``(n,)`` with its kind; ``options`` are the
        family's (e.g. diffusion's ``method="elbo"``).

        Raises :class:`NotSupportedError` for families without a density.
        """
        if not self.has_log_prob:
            raise NotSupportedError(f"the {self.family} family has no log-density; it can only be sampled")
        u, logit_log_det = self._to_model_space(x.to(self.scale.dtype))
        inner = self._log_prob(u, **options)
        return LogDensity(inner.values + self._log_det(logit_log_det, x.shape[0]), inner.kind)

    def _sample(self, n: int, *, generator: torch.Generator | None, **options: Any) -> torch.Tensor:
        """Samples in normalized coordinates u (families implement this)."""
        raise NotImplementedError

    def _log_prob(self, u: torch.Tensor, **options: Any) -> LogDensity:
        """log p_u(u) in normalized coordinates (families with a density implement this)."""
        raise NotSupportedError(f"the {self.family} family has no log-density")

    @property
    def device(self) -> torch.device:
        return self.shift.device

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls.Config)]
