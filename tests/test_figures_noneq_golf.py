"""Non-equilibrium GIFs (exact score), the golf analogy (real runs) and the relations star."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.distributions import GaussianMixture
from genmodels.figures.golf import golf_analogy
from genmodels.figures.nonequilibrium import (
    _distances,
    kde,
    nonequilibrium_sampling,
    probability_flow,
    two_mode_target,
)
from genmodels.figures.relations import relations_diagram


def check_gif(path: Path, frames: int) -> None:
    """720 × 405, ``frames`` frames of 1000 ms then a 3000 ms last one, loops forever, none blank."""
    with Image.open(path) as im:
        assert im.format == "GIF" and im.size == (720, 405)
        assert im.n_frames == frames and im.info.get("loop") == 0
        durations = []
        for k in range(frames):
            im.seek(k)
            durations.append(im.info["duration"])
            pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
            assert pixels.std() > 0 and np.median(pixels) == 255.0
    assert durations == [1000] * (frames - 1) + [3000]


def check_png(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (720, 405)
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
        assert pixels.std() > 0 and np.median(pixels) == 255.0


def mixture_density(xs: np.ndarray, half: float, var: float) -> np.ndarray:
    """½ N(−half, var) + ½ N(half, var), written out independently of the library."""
    g = lambda m: np.exp(-0.5 * (xs - m) ** 2 / var) / math.sqrt(2 * math.pi * var)  # noqa: E731
    return 0.5 * g(-half) + 0.5 * g(half)


@pytest.fixture(scope="module")
def noneq(tmp_path_factory):
    out = tmp_path_factory.mktemp("noneq")
    return nonequilibrium_sampling(out, n_particles=8000, printer=None)


def test_nonequilibrium_gifs_and_exact_curves(noneq) -> None:
    assert [p.name for p in noneq.paths] == [
        "nonequilibrium_forward.gif",
        "nonequilibrium_reverse_ODE.gif",
        "nonequilibrium_reverse_SDE.gif",
    ]
    for p in noneq.paths:
        check_gif(p, 3)
    r = noneq.numbers
    xs = r["xs"]
    # every drawn curve is the analytic p_0 ∗ N(0, δ² t) (defaults: ±1, σ0 = 0.3, δ = 1)
    for part in ("forward", "ode", "sde"):
        for s, curve in zip(r[part]["times"], r[part]["curves"], strict=True):
            np.testing.assert_allclose(curve, mixture_density(xs, 1.0, 0.09 + s), rtol=1e-10, atol=1e-14)
    t0, t1, t2 = r["times"]
    assert r["forward"]["times"] == [t0, t1, t2] and r["ode"]["times"] == [t2, t1, t0]
    # SDE reading: flattest, then sharpest (two reverse steps), then medium (one noise step)
    peaks = [c.max() for c in r["sde"]["curves"]]
    assert peaks[1] > peaks[2] > peaks[0]
    fwd_peaks = [c.max() for c in r["forward"]["curves"]]
    assert fwd_peaks[0] > fwd_peaks[1] > fwd_peaks[2]


def test_moved_particles_match_the_exact_marginals_within_sampling_error(noneq) -> None:
    r = noneq.numbers
    xs = torch.as_tensor(r["xs"])
    base, h, n = two_mode_target(), 0.06, 8000
    g = torch.Generator().manual_seed(11)
    for part in ("forward", "ode", "sde"):
        for k, s in enumerate(r[part]["times"]):
            # the null distribution of the statistic: 20 sets of n exact samples of p_s
            ref = torch.exp(base.convolve(math.sqrt(s + h**2)).log_prob(xs[:, None]))
            null = [
                _distances(ref, kde(base.convolve(math.sqrt(s)).sample(n, g).double(), xs, h), xs)[0]
                for _ in range(20)
            ]
            assert r[part]["kl"][k] < 1.5 * max(null), (part, k, r[part]["kl"][k], null)
    # one big Euler step of the ODE is visibly worse than the exact transport
    assert r["ode"]["euler_kl"] > 1.5 * r["ode"]["kl"][1]


def test_probability_flow_fails_with_a_flipped_score(monkeypatch) -> None:
    base = two_mode_target()
    g = torch.Generator().manual_seed(1)
    x = base.convolve(math.sqrt(0.55)).sample(6000, g).double()
    xs = torch.linspace(-4, 4, 801, dtype=torch.float64)
    ref = torch.exp(base.convolve(math.sqrt(0.3 + 0.06**2)).log_prob(xs[:, None]))

    def error(points):  # KL(p_t ∗ N(0, h²) ‖ KDE)
        return _distances(ref, kde(points, xs, 0.06), xs)[0]

    good = error(probability_flow(x, base, 1.0, 0.55, 0.3))
    exact = error(base.convolve(math.sqrt(0.3)).sample(6000, g).double())
    assert good < 3.0 * exact + 2e-3
    original = GaussianMixture.score
    monkeypatch.setattr(GaussianMixture, "score", lambda self, y: -original(self, y))
    bad = error(probability_flow(x, base, 1.0, 0.55, 0.3))
    assert bad > 10.0 * (3.0 * exact + 2e-3)


def test_kde_equals_the_direct_sum() -> None:
    x = torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xs = torch.linspace(-5, 5, 2001, dtype=torch.float64)
    direct = torch.exp(-0.5 * ((xs[:, None] - x) / 0.1) ** 2).sum(1) / (500 * 0.1 * math.sqrt(2 * math.pi))
    torch.testing.assert_close(kde(x, xs, 0.1), direct, rtol=0, atol=2e-4)


def test_nonequilibrium_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="which"):
        nonequilibrium_sampling(tmp_path, which=("backward",), printer=None)
    with pytest.raises(ValueError, match="dt"):
        nonequilibrium_sampling(tmp_path, t=0.1, dt=0.2, printer=None)


def test_golf_tiny_budget_one_row_per_family(tmp_path: Path) -> None:
    lines: list[str] = []
    res = golf_analogy(
        tmp_path, steps=30, ebm_steps=(5, 10), diffusion_steps=8, n_samples=500, printer=lines.append
    )
    check_png(res.paths[0])
    rows = res.numbers["rows"]
    assert [r["family"] for r in rows] == ["ebm", "diffusion", "vae", "gan"]
    assert [r["strokes"] for r in rows] == [15, 8, 1, 1]
    for r in rows:
        assert isinstance(r["holes"], int) and isinstance(r["strokes"], int) and r["n_holes"] == 8
        assert 0 <= r["holes"] <= 8 and r["train_steps"] == 30 and r["balls"] > 0
        assert math.isfinite(r["kl"]) and r["kl"] > 0
    assert "| gan |" in "\n".join(lines)
    with pytest.raises(ValueError, match="modes"):
        golf_analogy(tmp_path, target="checkerboard", printer=None)
    with pytest.raises(ValueError, match="unknown families"):
        golf_analogy(tmp_path, steps={"flow": 3}, printer=None)


def test_relations_diagram_cites_existing_code(tmp_path: Path) -> None:
    res = relations_diagram(tmp_path, printer=None)
    check_png(res.paths[0])
    lib = res.numbers["library"]
    for name in (
        "genmodels.ode.ode_log_likelihood",
        "genmodels.samplers.annealed.annealed_langevin",
        "genmodels.models.vae.VAE",
        "genmodels.models.made.MADEModel",
        "genmodels.diffusion.solvers.ddpm_elbo",
    ):
        assert name in lib
    assert len(res.numbers["relations"]) == 4
