"""``relations.png``: the other families seen from diffusion (tutorial §5 "Relations", §7.11).

A star with the Diffusion Model at the centre and four spokes, each with the tutorial's node
and edge callouts, and under every edge the library code that realises the relation:

* Auto-Regressive Model — "Reversing time" / "In the time domain": diffusion is
  autoregression over time, from x_T back to x_0; the library's autoregressive family is
  :class:`genmodels.models.made.MADEModel`, the diffusion chain's reverse conditionals are
  :func:`genmodels.diffusion.solvers.sample` (ancestral).
* Energy-based Model — "Equilibrium sampling" / "Compress the forward and reverse processing
  in a single step": one energy, sampled at equilibrium by Langevin; annealing the noise
  levels of a diffusion gives annealed Langevin, :func:`genmodels.samplers.annealed.annealed_langevin`
  (:class:`genmodels.models.ebm.EBM`).
* Flow-based Model — "Strict-formed with invertibility" / "More free-formed without
  restrictions and invertibility": the probability-flow ODE turns a diffusion into a
  continuous flow, with its exact likelihood by :func:`genmodels.ode.ode_log_likelihood`
  (``Diffusion.log_prob(method="ode")``); the restricted flows are e.g.
  :class:`genmodels.models.realnvp.RealNVP`.
* Variational Auto-Encoder — "One-shot estimation" / "A refined version": the DDPM bound
  :func:`genmodels.diffusion.solvers.ddpm_elbo` is the ELBO of a hierarchical VAE with a fixed
  encoder (``Diffusion.log_prob(method="elbo")``); the one-shot VAE is
  :class:`genmodels.models.vae.VAE`.

The names are imported when the figure is drawn, so a rename breaks it (and its test).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from genmodels.figures.common import LILAC, TARGET_COLOR, TITLE_COLOR, FigureResult, new_frame, render

__all__ = ["RELATIONS", "relations_diagram"]

_LIGHT_BLUE = "#DCEAF7"

#: spoke → (node callout, edge callout, library code realising it, angle in degrees)
RELATIONS: dict[str, tuple[str, str, str, float]] = {
    "Auto-Regressive Model": (
        "Reversing time",
        "In the time domain",
        "genmodels.models.made.MADEModel\nvs diffusion.solvers.sample(ancestral)",
        155.0,
    ),
    "Energy-based Model": (
        "Equilibrium sampling",
        "Compress the forward and reverse\nprocessing in a single step",
        "genmodels.samplers.annealed\n.annealed_langevin, models.ebm.EBM",
        28.0,
    ),
    "Flow-based Model": (
        "Strict-formed with invertibility",
        "More free-formed without\nrestrictions and invertibility",
        "genmodels.ode.ode_log_likelihood\nDiffusion.log_prob(method='ode')",
        -28.0,
    ),
    "Variational Auto-Encoder": (
        "One-shot estimation",
        "A refined version",
        "diffusion.solvers.ddpm_elbo\nlog_prob(method='elbo'), vae.VAE",
        -155.0,
    ),
}


def _check_library_names() -> list[str]:
    """Import every name the callouts cite; returns their dotted names."""
    import inspect

    from genmodels.diffusion.solvers import ddpm_elbo, ode_log_prob, sample
    from genmodels.models.diffusion import Diffusion
    from genmodels.models.ebm import EBM
    from genmodels.models.made import MADEModel
    from genmodels.models.realnvp import RealNVP
    from genmodels.models.vae import VAE
    from genmodels.ode import ode_log_likelihood
    from genmodels.samplers.annealed import annealed_langevin

    methods = inspect.signature(Diffusion._log_prob).parameters["method"].annotation
    if "ode" not in str(methods) or "elbo" not in str(methods):
        raise RuntimeError(f"Diffusion._log_prob no longer offers method 'ode' and 'elbo': {methods}")
    objs = (ddpm_elbo, ode_log_prob, sample, Diffusion, EBM, MADEModel, RealNVP, VAE, ode_log_likelihood)
    return [f"{o.__module__}.{o.__qualname__}" for o in (*objs, annealed_langevin)]


def relations_diagram(out: str | Path, printer: Callable[[str], None] | None = print) -> FigureResult:
    """Write ``out/relations.png`` (720 × 405 px): the diffusion-centred star of tutorial §7.11.

    Returns a :class:`FigureResult` whose ``numbers["library"]`` lists the dotted names of the
    library code cited on the edges (all imported here) and ``numbers["relations"]`` the table.
    """
    names = _check_library_names()
    fig = new_frame("relations, seen from diffusion")
    cx, cy = 0.5, 0.45
    rx, ry = 0.4, 0.36
    fig.text(
        cx,
        cy,
        "Diffusion\nModel",
        ha="center",
        va="center",
        fontsize=9,
        color="white",
        zorder=4,
        bbox={"boxstyle": "circle,pad=0.4", "fc": TARGET_COLOR, "ec": "none"},
    )
    from matplotlib.lines import Line2D

    for node, (node_text, edge_text, code, angle) in RELATIONS.items():
        a = math.radians(angle)
        x, y = cx + rx * math.cos(a), cy + ry * math.sin(a)
        fig.add_artist(Line2D([cx, x], [cy, y], color=TARGET_COLOR, lw=2.0, zorder=1))
        fig.text(
            x,
            y,
            node.replace(" Model", "\nModel").replace("Variational ", "Variational\n"),
            ha="center",
            va="center",
            fontsize=6.5,
            color="white",
            zorder=4,
            bbox={"boxstyle": "circle,pad=0.2", "fc": TARGET_COLOR, "ec": "none"},
        )
        side = 1.0 if math.cos(a) > 0 else -1.0
        fig.text(
            x + side * 0.005,
            y + (0.12 if y > cy else -0.12),
            node_text,
            ha="center",
            va="center",
            fontsize=8,
            family="serif",
            color=TITLE_COLOR,
            zorder=3,
            bbox={"boxstyle": "round,pad=0.3", "fc": _LIGHT_BLUE, "ec": "none"},
        )
        mx, my = cx + 0.52 * rx * math.cos(a), cy + 0.52 * ry * math.sin(a)
        fig.text(
            mx,
            my,
            edge_text,
            ha="center",
            va="bottom",
            fontsize=7,
            family="serif",
            zorder=3,
            bbox={"boxstyle": "round,pad=0.25", "fc": LILAC, "ec": "none"},
        )
        fig.text(
            mx,
            my - 0.012,
            code,
            ha="center",
            va="top",
            fontsize=5.8,
            family="monospace",
            color="#555555",
            zorder=3,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.9},
        )
    path = Path(out) / "relations.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    render(fig).save(path)
    table = [{"model": k, "node": v[0], "edge": v[1], "code": v[2]} for k, v in RELATIONS.items()]
    if printer is not None:
        printer("relations (tutorial §5, §7.11), each realised in genmodels by:")
        for row in table:
            printer(f"  {row['model']}: {row['edge']!r} — {row['code'].replace(chr(10), ' ')}")
    return FigureResult([path], {"library": names, "relations": table})
