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

:func:`make_figures` writes them all (or one, by name); ``genmodels figures`` calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from genmodels.figures.common import FigureResult, write_gif
from genmodels.figures.counting import density_by_counting
from genmodels.figures.langevin import exact_score_log_density, langevin_chain
from genmodels.figures.modes import mode_covering_vs_chasing, three_mode_target

__all__ = [
    "FIGURES",
    "FigureResult",
    "density_by_counting",
    "exact_score_log_density",
    "langevin_chain",
    "make_figures",
    "mode_covering_vs_chasing",
    "three_mode_target",
    "write_gif",
]

#: name → function(out, printer) writing that figure with its default settings.
FIGURES: dict[str, Callable[..., FigureResult]] = {
    "overview": lambda out, printer=print: density_by_counting(out, printer=printer),
    "mode_covering": lambda out, printer=print: mode_covering_vs_chasing(
        out, which=("covering",), printer=printer
    ),
    "mode_chasing": lambda out, printer=print: mode_covering_vs_chasing(
        out, which=("chasing",), printer=printer
    ),
    "langevin": lambda out, printer=print: langevin_chain(out, printer=printer),
}


def make_figures(
    out: str | Path = "figures", only: str | None = None, printer: Callable[[str], None] | None = print
) -> list[Path]:
    """Write every figure of :data:`FIGURES` (or only the one named ``only``) into ``out``.

    The two mode GIFs come from one pair of fits, run once. Returns the paths written.
    Raises ``ValueError`` naming the choices when ``only`` is unknown.
    """
    if only is not None and only not in FIGURES:
        raise ValueError(f"unknown figure {only!r}; choose one of {', '.join(FIGURES)}")
    out = Path(out)
    if only is not None:
        return FIGURES[only](out, printer=printer).paths
    paths = density_by_counting(out, printer=printer).paths
    paths += mode_covering_vs_chasing(out, printer=printer).paths
    paths += langevin_chain(out, printer=printer).paths
    return paths
