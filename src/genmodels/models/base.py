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
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from genmodels.types import LogDensity


class NotSupportedError(RuntimeError):
    """Raised when a family is asked for something it does not have (e.g. a density)."""


@dataclass
class ModelConfig:
    """Options shared by every family (families subclass this dataclass)."""


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
    #: Training steps this family gets in ``genmodels tour`` (a short CPU budget).
    tour_steps: ClassVar[int] = 2000
    #: Options added after checkpoints of this family were written, with the value those
    #: checkpoints were built with (where it is not the option's current default).
    options_before: ClassVar[dict[str, Any]] = {}

    def __init__(self, dim: int, config: ModelConfig | None = None) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.config = config if config is not None else self.Config()
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    # -- standardization --------------------------------------------------------------
    def set_normalization(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """Use u = (x − shift) / scale inside the model (shapes ``(dim,)``, scale > 0)."""
        if shift.shape != (self.dim,) or scale.shape != (self.dim,):
            raise ValueError(f"shift and scale must have shape ({self.dim},)")
        if not bool((scale > 0).all()):
            raise ValueError("scale must be positive")
        self.shift.copy_(shift)
        self.scale.copy_(scale)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    def denormalize(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.scale + self.shift

    def prepare(self, x: torch.Tensor, generator: torch.Generator, progress: bool = False) -> None:
        """Data-dependent set-up, called once by the training loop before the first step of a
        fresh run (never on resume: what it sets must live in buffers, so checkpoints keep it).

        ``x`` is a data-space sample of the training data ``(m, dim)`` on the model's device;
        ``generator`` a CPU generator seeded from the run's seed. The default does nothing;
        e.g. the energy-based model fits its reference distribution here.
        """

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

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``getattr(self, method)(*args, **kwargs)`` for a computation whose result is
        differentiated (e.g. ``"loss"``): through the DistributedDataParallel wrapper that
        :mod:`genmodels.distributed` attaches under ``torchrun`` (so that the gradients are
        averaged across ranks), else directly. A family whose ``step`` computes its losses
        without going through ``call`` cannot train under DDP."""
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
        inner = self._log_prob(self.normalize(x.to(self.scale.dtype)), **options)
        return LogDensity(inner.values - torch.log(self.scale).sum(), inner.kind)

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
