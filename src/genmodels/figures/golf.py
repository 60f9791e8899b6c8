"""``golf.png``: the tutorial's golf analogy (§6, §7.10) with measured numbers.

The tutorial maps a generative model onto golf: **balls** ↔ expressivity, **strokes** ↔ the
steps of the sampling process, **holes** ↔ the modes of the data (the hole is x_0). Its
figure draws the chain EBM — Diffusion — VAE — GAN with hand-set numbers (EBM 1000 balls ×
10 strokes, Diffusion 1000 × 1000, VAE 1 × 1, GAN 10 × 1). Here the four families are
trained briefly on one many-mode target with :func:`genmodels.train.train` and measured:

* strokes — the network evaluations one sample costs with the sampler used: the EBM's
  MALA warm-up plus kernel steps (one gradient of f each; ``EBMSampleConfig``), the
  diffusion sampler's steps (DPM-Solver++(2M), one denoiser call per step;
  ``DiffusionSampleConfig``), 1 for the VAE's decoder and the GAN's generator;
* holes — modes captured out of the target's modes, and the share of high-quality samples
  (VEEGAN/PacGAN, :func:`genmodels.evaluate.target_mode_metrics`, 2500 samples);
* KL — the counting estimate D_KL(P‖Q̂) on a 50 × 50 grid (:func:`genmodels.evaluate.kl_to_truth`
  with ``method="grid"``), the same estimator for all four (the GAN has no density), with its
  floor for a perfect sampler (``null_bias``);
* balls — the number of trainable parameters (expressivity).

The edge callouts are the tutorial's words (§6 table).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from genmodels.distributions import Target, get_target
from genmodels.evaluate import kl_to_truth, target_mode_metrics
from genmodels.figures.common import GREY, LILAC, TARGET_COLOR, TITLE_COLOR, FigureResult, new_frame, render
from genmodels.models import get_family
from genmodels.train import TrainConfig, train

__all__ = ["GOLF_FAMILIES", "format_golf_table", "golf_analogy"]

#: the chain of the tutorial's figure, in order, with its node names
GOLF_FAMILIES: dict[str, str] = {
    "ebm": "Energy-based\nModel",
    "diffusion": "Diffusion\nModel",
    "vae": "Variational\nAuto-Encoder",
    "gan": "Generative\nAdversarial\nNetwork",
}
#: the tutorial's edge labels (§6)
EDGES = (
    ("ebm", "diffusion", "Playing carefully with great patience"),
    ("diffusion", "vae", "Trying to shoot in one stroke"),
    ("vae", "gan", "With a little discriminative guidance"),
)
#: node centres in figure fractions (§7.10: EBM top-left, Diffusion top-right, VAE
#: lower-middle, GAN lower-right)
_NODES = {"ebm": (0.12, 0.5), "diffusion": (0.6, 0.62), "vae": (0.38, 0.2), "gan": (0.86, 0.2)}
#: node radius in pixels
_RADIUS_PX = 46
_LIGHT_BLUE = "#DCEAF7"


def _sample_options(family: str, ebm_steps: tuple[int, int], diffusion_steps: int) -> tuple[dict, int]:
    """The sampler options used and the strokes (network evaluations per sample) they cost."""
    if family == "ebm":
        warmup, steps = ebm_steps
        return {"sampler": "mala", "warmup": warmup, "steps": steps}, warmup + steps
    if family == "diffusion":
        return {"sampler": "dpmpp2m", "steps": diffusion_steps}, diffusion_steps
    return {}, 1


def golf_analogy(
    out: str | Path,
    target: str | Target = "8gaussians",
    budget: float = 0.2,
    steps: int | dict[str, int] | None = None,
    ebm_steps: tuple[int, int] = (100, 200),
    diffusion_steps: int = 50,
    n_samples: int = 5000,
    seed: int = 0,
    printer: Callable[[str], None] | None = print,
) -> FigureResult:
    """Train EBM, diffusion, VAE and GAN briefly, measure strokes / holes / KL, draw ``golf.png``.

    Args:
        out: output folder.
        target: a 2-D target with modes (``mode_centers`` and ``mode_std``), name or instance.
        budget: training steps as a fraction of each family's ``tour_steps`` (the tour's CPU
            budget); ignored for the families that ``steps`` names.
        steps: training steps for all four (an int) or per family (a dict).
        ebm_steps: (MALA warm-up, MALA steps) of the EBM's sampler.
        diffusion_steps: DPM-Solver++(2M) steps of the diffusion sampler.
        n_samples: model samples for the counting KL (the first 2500 give the mode metrics).
        seed: training and sampling seed.
        printer: where the table goes (``None``: nowhere).

    Returns a :class:`FigureResult` with the PNG (720 × 405 px) and ``numbers["rows"]``: one
    dict per family with ``family``, ``train_steps``, ``train_seconds``, ``strokes``,
    ``balls`` (parameters), ``holes`` and ``n_holes`` (modes captured / modes),
    ``hq_fraction``, ``kl``, ``kl_stderr``, ``kl_null_bias``; ``numbers["table"]`` the table text.
    """
    tgt = get_target(target) if isinstance(target, str) else target
    if tgt.dim != 2 or tgt.mode_centers is None or tgt.mode_std is None:
        raise ValueError(
            f"golf_analogy needs a 2-D target with modes (e.g. 8gaussians, ring8, grid25); got {tgt.name}"
        )
    if budget <= 0:
        raise ValueError(f"budget must be a positive fraction of the tour's steps, got {budget}")
    if isinstance(steps, dict):
        unknown = sorted(set(steps) - set(GOLF_FAMILIES))
        if unknown:
            raise ValueError(
                f"steps names unknown families {unknown}; choose from {', '.join(GOLF_FAMILIES)}"
            )
    if min(ebm_steps) < 0 or diffusion_steps < 1 or n_samples < 100:
        raise ValueError("ebm_steps must be >= 0, diffusion_steps >= 1 and n_samples >= 100")
    rows: list[dict[str, Any]] = []
    for k, name in enumerate(GOLF_FAMILIES):
        family = get_family(name)
        if isinstance(steps, int):
            n_steps = steps
        elif isinstance(steps, dict) and name in steps:
            n_steps = int(steps[name])
        else:
            n_steps = max(1, round(family.tour_steps * budget))
        config = TrainConfig(**{**family.train_defaults, "steps": n_steps, "seed": seed, "progress": False})
        t0 = time.perf_counter()
        model = train(name, tgt, config).model
        seconds = time.perf_counter() - t0
        options, strokes = _sample_options(name, ebm_steps, diffusion_steps)
        gen = torch.Generator().manual_seed(seed + 100 + k)
        with torch.enable_grad() if name == "ebm" else torch.no_grad():
            samples = model.sample(n_samples, generator=gen, **options).detach().cpu().float()
        mm = target_mode_metrics(samples[:2500], tgt)
        kl = kl_to_truth(
            model, tgt, n_samples, torch.Generator().manual_seed(seed), method="grid", samples=samples
        )
        rows.append(
            {
                "family": name,
                "train_steps": n_steps,
                "train_seconds": seconds,
                "strokes": int(strokes),
                "balls": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
                "holes": int(mm.modes),
                "n_holes": int(mm.n_modes),
                "hq_fraction": float(mm.hq_fraction),
                "kl": float(kl.value),
                "kl_stderr": float(kl.stderr),
                "kl_null_bias": float(kl.details["null_bias"]),
            }
        )
    table = format_golf_table(rows, tgt.name)
    if printer is not None:
        printer(table)
    path = Path(out) / "golf.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    _draw(rows, tgt.name).save(path)
    return FigureResult([path], {"rows": rows, "table": table})


def format_golf_table(rows: list[dict[str, Any]], target: str) -> str:
    """The golf table as markdown."""
    floor = rows[0]["kl_null_bias"] if rows else float("nan")
    lines = [
        f"golf analogy on {target}: strokes = network evaluations per sample, holes = modes captured,",
        f"KL = counting KL on a 50×50 grid (a perfect sampler scores {floor:.3f}), balls = parameters",
        "",
        "| family | train steps | strokes | holes | HQ % | KL (nats) | balls |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['train_steps']} | {r['strokes']} | {r['holes']}/{r['n_holes']} "
            f"| {100 * r['hq_fraction']:.1f} | {r['kl']:.3f} ± {r['kl_stderr']:.3f} | {r['balls']} |"
        )
    return "\n".join(lines)


def _draw(rows: list[dict[str, Any]], target: str):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Ellipse

    fig = new_frame("the golf analogy")
    fig.text(
        0.03, 0.03, f"measured on {target} (genmodels.figures.golf)", fontsize=9, family="serif", color=GREY
    )
    by = {r["family"]: r for r in rows}
    for a, b, text in EDGES:
        (xa, ya), (xb, yb) = _NODES[a], _NODES[b]
        fig.add_artist(Line2D([xa, xb], [ya, yb], color=TARGET_COLOR, lw=2.0, zorder=1))
        fig.text(
            0.5 * (xa + xb),
            0.5 * (ya + yb) + 0.005,
            text,
            ha="center",
            va="center",
            fontsize=8,
            family="serif",
            zorder=3,
            bbox={"boxstyle": "round,pad=0.3", "fc": LILAC, "ec": "none", "alpha": 0.9},
        )
    for name, (x, y) in _NODES.items():
        w, h = 2 * _RADIUS_PX / 720, 2 * _RADIUS_PX / 405
        fig.add_artist(Ellipse((x, y), w, h, transform=fig.transFigure, fc=TARGET_COLOR, ec="none", zorder=4))
        fig.text(x, y, GOLF_FAMILIES[name], ha="center", va="center", fontsize=7.5, color="white", zorder=5)
        r = by.get(name)
        if r is None:
            continue
        info = (
            f"balls: {r['balls']:,} parameters\n"
            f"strokes: {r['strokes']} per sample\n"
            f"holes: {r['holes']}/{r['n_holes']} modes, HQ {100 * r['hq_fraction']:.0f}%\n"
            f"KL {r['kl']:.2f} nats"
        )
        dx, dy = {"ebm": (0.0, 0.26), "diffusion": (0.0, 0.25), "vae": (-0.24, 0.0), "gan": (0.0, 0.26)}[name]
        fig.text(
            x + dx,
            y + dy,
            info,
            ha="center",
            va="center",
            fontsize=7.5,
            family="serif",
            color=TITLE_COLOR,
            zorder=3,
            bbox={"boxstyle": "round,pad=0.35", "fc": _LIGHT_BLUE, "ec": "none"},
        )
    return render(fig)
