"""Ground-truth target distributions with exact samples, log-density, score and entropy.

``TARGETS`` maps each benchmark name to a zero-argument factory; :func:`get_target` builds
one by name. The 2-D suite follows FFJORD's ``lib/toy_data.py`` in continuum form plus
PacGAN's ring and grid (see ``/work/shared/benchmarks.md`` §1–§2 for the definitions and
entropy tables).
"""

from __future__ import annotations

from collections.abc import Callable

from genmodels.distributions.base import Target, entropy_monte_carlo
from genmodels.distributions.gaussian_mixture import GaussianMixture
from genmodels.distributions.mcmc_targets import (
    Banana,
    IllConditionedGaussian,
    MomentTarget,
    NealsFunnel,
    Rosenbrock,
    bias_squared,
    steps_to_threshold,
)
from genmodels.distributions.toy import (
    Checkerboard,
    ConcentricRings,
    CurveTarget,
    Moons,
    Pinwheel,
    SwissRoll,
    TwoSpirals,
    circles,
    eight_gaussians,
    grid25,
    grid_entropy,
    ring8,
    rings,
)

__all__ = [
    "TARGETS",
    "Banana",
    "Checkerboard",
    "ConcentricRings",
    "CurveTarget",
    "GaussianMixture",
    "IllConditionedGaussian",
    "MomentTarget",
    "Moons",
    "NealsFunnel",
    "Pinwheel",
    "Rosenbrock",
    "SwissRoll",
    "Target",
    "TwoSpirals",
    "bias_squared",
    "circles",
    "eight_gaussians",
    "entropy_monte_carlo",
    "get_target",
    "grid25",
    "grid_entropy",
    "ring8",
    "rings",
    "steps_to_threshold",
]

#: name → factory of every 2-D benchmark target (FFJORD toy suite, then PacGAN ring/grid).
TARGETS: dict[str, Callable[[], Target]] = {
    "8gaussians": eight_gaussians,
    "checkerboard": Checkerboard,
    "rings": rings,
    "moons": Moons,
    "circles": circles,
    "swissroll": SwissRoll,
    "2spirals": TwoSpirals,
    "pinwheel": Pinwheel,
    "ring8": ring8,
    "grid25": grid25,
}


def get_target(name: str) -> Target:
    """A fresh instance of the target called ``name`` (a key of :data:`TARGETS`).

    Raises ``ValueError`` listing the valid names when ``name`` is unknown.
    """
    try:
        factory = TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}") from None
    return factory()
