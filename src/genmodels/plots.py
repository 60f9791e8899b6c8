"""Pictures of 2-D targets and models: exact densities, model densities, samples."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from genmodels.distributions import Target
    from genmodels.models import Model

TARGET_COLOR = "#5C8ECE"  # the tutorial's palette (tutorial.md §0)
MODEL_COLOR = "#DF566E"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def density_on_grid(
    log_prob, box: tuple[float, float], resolution: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """exp(log_prob) on a ``resolution``² grid over ``box``²: (xs, ys, density[y, x])."""
    xs = np.linspace(box[0], box[1], resolution)
    X, Y = np.meshgrid(xs, xs)
    pts = torch.from_numpy(np.stack([X.ravel(), Y.ravel()], 1).astype(np.float32))
    with torch.no_grad():
        values = torch.cat([log_prob(chunk) for chunk in pts.split(20_000)])
    dens = torch.exp(values.double()).numpy().reshape(resolution, resolution)
    return xs, xs, np.nan_to_num(dens, nan=0.0, posinf=0.0)


def plot_model(
    target: Target,
    model: Model,
    samples: torch.Tensor,
    path: Path,
    title: str = "",
    resolution: int = 160,
) -> Path:
    """Three panels: the target's exact density, the model's density on the same colour
    scale (or a histogram of its samples when it has none), and the model's samples over
    the target's density contours."""
    plt = _pyplot()
    box = target.box
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    xs, ys, p = density_on_grid(target.log_prob, box, resolution)
    axes[0].imshow(p, origin="lower", extent=(*box, *box), cmap="Blues")
    axes[0].set_title(f"truth: {target.name}")
    if model.has_log_prob:
        _, _, q = density_on_grid(lambda x: model.log_prob(x.to(model.device)).values.cpu(), box, resolution)
        # The truth's colour scale, so that equal colours mean equal densities.
        axes[1].imshow(q, origin="lower", extent=(*box, *box), cmap="Reds", vmin=0.0, vmax=float(p.max()))
        axes[1].set_title(f"{model.family}: density")
    else:
        s = samples.cpu().numpy()
        axes[1].hist2d(s[:, 0], s[:, 1], bins=resolution // 2, range=[box, box], cmap="Reds")
        axes[1].set_title(f"{model.family}: histogram of samples")
    s = samples.cpu().numpy()
    axes[2].contour(xs, ys, p, levels=6, colors=TARGET_COLOR, linewidths=0.8)
    axes[2].scatter(s[:, 0], s[:, 1], s=1.5, color=MODEL_COLOR, alpha=0.5, rasterized=True)
    axes[2].set_xlim(box)
    axes[2].set_ylim(box)
    axes[2].set_title(f"{model.family}: samples")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
