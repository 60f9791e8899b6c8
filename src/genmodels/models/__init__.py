"""The families of generative models, one file each, and the one table that names them.

Adding a family is one new file in this package plus one line in :data:`FAMILIES`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch

from genmodels.models.base import Model, ModelConfig, NotSupportedError
from genmodels.models.coop import Coop
from genmodels.models.diffusion import Diffusion
from genmodels.models.ebm import EBM
from genmodels.models.fm import FlowMatching
from genmodels.models.gan import GAN, WGANGP
from genmodels.models.made import MADEModel
from genmodels.models.maf import MAF
from genmodels.models.nsf import NSF
from genmodels.models.realnvp import RealNVP
from genmodels.models.triangle import Triangle
from genmodels.models.vae import VAE

#: name → class; the CLI, the checkpoints and the tour read this table and nothing else.
FAMILIES: dict[str, type[Model]] = {
    RealNVP.family: RealNVP,
    EBM.family: EBM,
    Diffusion.family: Diffusion,
    VAE.family: VAE,
    FlowMatching.family: FlowMatching,
    MAF.family: MAF,
    NSF.family: NSF,
    MADEModel.family: MADEModel,
    GAN.family: GAN,
    WGANGP.family: WGANGP,
    Triangle.family: Triangle,
    Coop.family: Coop,
}


def get_family(name: str) -> type[Model]:
    """The class of family ``name``; a one-line ValueError lists the valid names."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; choose one of: {', '.join(FAMILIES)}") from None


def make_config(family: type[Model], options: dict[str, Any]) -> ModelConfig:
    """The family's config dataclass from ``options``; unknown names are a clear error."""
    valid = {f.name for f in fields(family.Config)}
    unknown = sorted(set(options) - valid)
    if unknown:
        listing = ", ".join(sorted(valid)) or "(none)"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {family.family}; valid: {listing}")
    return family.Config(**options)


def build_model(name: str, dim: int, options: dict[str, Any] | None = None, seed: int = 0) -> Model:
    """Construct family ``name`` for ``dim``-dimensional data with initial weights from ``seed``.

    The weights are drawn inside ``torch.random.fork_rng``, so the global RNG is untouched.
    """
    family = get_family(name)
    config = make_config(family, options or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return family(dim, config)


__all__ = [
    "FAMILIES",
    "Model",
    "ModelConfig",
    "NotSupportedError",
    "build_model",
    "get_family",
    "make_config",
]
