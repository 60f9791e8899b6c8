"""What every figure of the tutorial shares: size, palette, fonts, frames and GIF writing.

The tutorial's animations (tutorial.md §0 and §7) are 720 × 405 px on a white
background; every frame lasts 1 s except the last, which lasts 3 s, and the GIF loops
forever. The palette below was measured from their pixels (tutorial.md §0).

A figure function draws each frame with matplotlib on a fresh 7.2 × 4.05 in figure at
100 dpi (so exactly 720 × 405 px, never cropped), turns it into a Pillow image with
:func:`render`, and writes the list with :func:`write_gif`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WIDTH, HEIGHT, DPI = 720, 405, 100
FRAME_MS, LAST_FRAME_MS = 1000, 3000

# The tutorial's palette (tutorial.md §0).
TARGET_COLOR = "#5C8ECE"  # target / data curve and grid lines
MODEL_COLOR = "#DF566E"  # model curve and data points
TITLE_COLOR = "#B06158"  # the title, top-left, serif
LABEL_COLOR = "#39669A"  # curve labels
GREY = "#95999B"
ARROW_GREY = "#C1C1C1"
LILAC = "#D1A3D0"  # highlighted bins

#: The baseline (zero density) of 1-D curves sits at y ≈ 281 px from the top (tutorial §7),
#: and the curves span the middle ≈ 60% of the width.
BASELINE_PX = 281
CURVE_BOX = (0.2, 1.0 - BASELINE_PX / HEIGHT, 0.6, 0.5)  # left, bottom, width, height (figure fractions)


@dataclass
class FigureResult:
    """What a figure function returns: the files it wrote and the numbers it printed."""

    paths: list[Path]
    numbers: dict[str, Any] = field(default_factory=dict)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def new_frame(title: str | None = None):
    """A white 720 × 405 px figure, with ``title`` top-left in the tutorial's serif style."""
    plt = pyplot()
    fig = plt.figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, facecolor="white")
    if title:
        fig.text(0.03, 0.95, title, ha="left", va="top", family="serif", fontsize=17, color=TITLE_COLOR)
    return fig


def curve_axes(fig):
    """Axes for 1-D densities: the middle 60% of the width, baseline at y ≈ 281 px, no frame."""
    ax = fig.add_axes(CURVE_BOX)
    ax.set_axis_off()
    return ax


def render(fig):
    """The figure as an RGB Pillow image of exactly WIDTH × HEIGHT; the figure is closed."""
    from PIL import Image

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    pyplot().close(fig)
    image = Image.fromarray(rgba[..., :3].copy(), mode="RGB")
    if image.size != (WIDTH, HEIGHT):  # a backend with another pixel ratio
        image = image.resize((WIDTH, HEIGHT))
    return image


def write_gif(
    frames: Sequence[Any],
    path: str | Path,
    frame_ms: int = FRAME_MS,
    last_frame_ms: int = LAST_FRAME_MS,
) -> Path:
    """Write Pillow images as a GIF that loops forever (``loop=0``).

    Every frame lasts ``frame_ms`` except the last, which lasts ``last_frame_ms``
    (1000 and 3000 ms in the tutorial). Returns the path.
    """
    if not frames:
        raise ValueError("write_gif needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [int(frame_ms)] * (len(frames) - 1) + [int(last_frame_ms)]
    frames[0].save(
        path,
        save_all=True,
        append_images=list(frames[1:]),
        duration=durations,
        loop=0,
        disposal=1,
        optimize=False,
    )
    return path
