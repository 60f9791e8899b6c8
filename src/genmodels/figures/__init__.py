"""The tutorial's figures and animations, produced by the working implementation (tutorial §7).

Each figure is a function that writes GIFs (720 × 405 px, white, 1 s frames and a 3 s last
frame, looping forever) and returns a :class:`FigureResult` holding the paths written and
the numbers it printed:

* :func:`density_by_counting` → ``overview.gif`` (§1, §7.1): counts n(x, y), n(x), n(y) and
  p(x, y), p(x), p(y|x) from :mod:`genmodels.counting`.
* :func:`mode_covering_vs_chasing` → ``mode_covering.gif`` and ``mode_chasing.gif``
  (§2, §7.2–3): a forward-KL (MLE) fit and a reverse-KL fit of limited models to a 3-mode
  target, with the KLs of both fits by quadrature.
* :func:`langevin_chain` → ``langevin.gif`` (§4): particles from noise to a 2-D target
  under :class:`genmodels.samplers.Langevin` with the target's exact score.
* :func:`contrastive_divergence_vs_em` → ``contrastive_divergence.gif`` and
  ``em_algorithm.gif`` (§3, §7.4–5): the NLL of a 1-D location mixture, EM iterates with
  their majorizing surrogate, CD gradient steps (chains from the data) with a tangent,
  non-bounding surrogate.
* :func:`equilibrium_sampling` → ``equilibrium.gif`` (§4, §7.6): gradient half-steps squeeze
  and noise half-steps diffuse a particle cloud on the 3-mode target; π is the fixed point.
* :func:`nonequilibrium_sampling` → ``nonequilibrium_forward.gif``,
  ``nonequilibrium_reverse_ODE.gif`` and ``nonequilibrium_reverse_SDE.gif`` (§5, §7.7–9):
  particles of a 1-D two-mode mixture noised forward and carried back by the probability-flow
  ODE and the reverse SDE's "two reverse steps, one noise step", with the exact score; each
  frame's KDE is compared with the exact marginal.
* :func:`golf_analogy` → ``golf.png`` (§6, §7.10): EBM, diffusion, VAE and GAN trained briefly
  and measured: strokes (network calls per sample), holes (modes captured), KL.
* :func:`relations_diagram` → ``relations.png`` (§5, §7.11): the diffusion-centred star, each
  edge with the library code that realises it.

:func:`make_figures` writes them all (or one, by name); ``genmodels figures`` calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from genmodels.figures.cd_em import contrastive_divergence_vs_em
from genmodels.figures.common import FigureResult, write_gif
from genmodels.figures.counting import density_by_counting
from genmodels.figures.equilibrium import equilibrium_sampling
from genmodels.figures.golf import golf_analogy
from genmodels.figures.langevin import exact_score_log_density, langevin_chain
from genmodels.figures.modes import mode_covering_vs_chasing, three_mode_target
from genmodels.figures.nonequilibrium import nonequilibrium_sampling
from genmodels.figures.relations import relations_diagram

__all__ = [
    "FIGURES",
    "FigureResult",
    "contrastive_divergence_vs_em",
    "density_by_counting",
    "equilibrium_sampling",
    "exact_score_log_density",
    "golf_analogy",
    "langevin_chain",
    "make_figures",
    "mode_covering_vs_chasing",
    "nonequilibrium_sampling",
    "relations_diagram",
    "three_mode_target",
    "write_gif",
]

#: name → function(out, printer, steps_scale) writing that figure with its default settings;
#: ``steps_scale`` multiplies the training budget of the one figure that trains models (golf).
FIGURES: dict[str, Callable[..., FigureResult]] = {
    "overview": lambda out, printer=print, steps_scale=1.0: density_by_counting(out, printer=printer),
    "mode_covering": lambda out, printer=print, steps_scale=1.0: mode_covering_vs_chasing(
        out, which=("covering",), printer=printer
    ),
    "mode_chasing": lambda out, printer=print, steps_scale=1.0: mode_covering_vs_chasing(
        out, which=("chasing",), printer=printer
    ),
    "langevin": lambda out, printer=print, steps_scale=1.0: langevin_chain(out, printer=printer),
    "contrastive_divergence": lambda out, printer=print, steps_scale=1.0: contrastive_divergence_vs_em(
        out, printer=printer
    ),
    "equilibrium": lambda out, printer=print, steps_scale=1.0: equilibrium_sampling(out, printer=printer),
    "nonequilibrium": lambda out, printer=print, steps_scale=1.0: nonequilibrium_sampling(
        out, printer=printer
    ),
    "golf": lambda out, printer=print, steps_scale=1.0: golf_analogy(
        out, budget=GOLF_BUDGET * steps_scale, printer=printer
    ),
    "relations": lambda out, printer=print, steps_scale=1.0: relations_diagram(out, printer=printer),
}

#: the golf figure's training steps as a fraction of each family's tour steps
GOLF_BUDGET = 0.2


def make_figures(
    out: str | Path = "figures",
    only: str | None = None,
    printer: Callable[[str], None] | None = print,
    steps_scale: float = 1.0,
) -> list[Path]:
    """Write every figure of :data:`FIGURES` (or only the one named ``only``) into ``out``.

    The two mode GIFs come from one pair of fits, run once. ``steps_scale`` multiplies the
    golf figure's training budget. Returns the paths written. Raises ``ValueError`` naming
    the choices when ``only`` is unknown or ``steps_scale`` is not positive.
    """
    if only is not None and only not in FIGURES:
        raise ValueError(f"unknown figure {only!r}; choose one of {', '.join(FIGURES)}")
    if not steps_scale > 0:
        raise ValueError(f"steps_scale must be positive, got {steps_scale}")
    out = Path(out)
    if only is not None:
        return FIGURES[only](out, printer=printer, steps_scale=steps_scale).paths
    paths: list[Path] = []
    for name, make in FIGURES.items():
        if name == "mode_chasing":  # written with mode_covering, from the same pair of fits
            continue
        if name == "mode_covering":
            paths += mode_covering_vs_chasing(out, printer=printer).paths
        else:
            paths += make(out, printer=printer, steps_scale=steps_scale).paths
    return paths
