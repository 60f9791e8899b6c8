"""The tutorial's figures (tutorial §7): valid GIFs, and numbers from the real implementation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels import get_target
from genmodels.cli import main
from genmodels.figures import (
    density_by_counting,
    exact_score_log_density,
    langevin_chain,
    mode_covering_vs_chasing,
)
from genmodels.samplers import value_and_grad


def check_gif(path: Path, frames: int) -> None:
    """720 × 405, ``frames`` frames of 1000 ms then a 3000 ms last one, loops forever, none blank."""
    assert path.exists()
    with Image.open(path) as im:
        assert im.format == "GIF" and im.size == (720, 405)
        assert im.n_frames == frames
        assert im.info.get("loop") == 0
        durations = []
        for k in range(frames):
            im.seek(k)
            durations.append(im.info["duration"])
            pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
            assert pixels.std() > 0, f"frame {k} of {path.name} is blank"
            assert np.median(pixels) == 255.0, "the background must be white"
    assert durations == [1000] * (frames - 1) + [3000]


def test_overview_counts_obey_the_counting_identities(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    pts = torch.randn(200, 2, generator=g, dtype=torch.float64).numpy()
    pts[:, 1] = 0.8 * pts[:, 0] + 0.6 * pts[:, 1]
    lines: list[str] = []
    res = density_by_counting(tmp_path, points=pts, bins=5, cell=(2, 3), printer=lines.append)
    check_gif(res.paths[0], 4)
    assert res.paths[0].name == "overview.gif"
    r = res.numbers
    # the counts, by brute force on the drawn cell
    x0, y0, dx, dy = r["x"], r["y"], r["dx"], r["dy"]
    in_x = (pts[:, 0] >= x0) & (pts[:, 0] < x0 + dx)
    in_y = (pts[:, 1] >= y0) & (pts[:, 1] < y0 + dy)
    assert r["n"] == 200 and r["counts"].n_outside == 0
    assert r["n_xy"] == int((in_x & in_y).sum())
    assert r["n_x"] == int(in_x.sum()) and r["n_y"] == int(in_y.sum())
    counts = r["counts"]
    assert r["n_x"] == counts.n_xy[2].sum() and r["n_y"] == counts.n_xy[:, 3].sum()
    assert counts.n_xy.sum() == r["n"]
    # the densities (tutorial §1), as identities
    assert r["p_xy"] == pytest.approx(r["n_xy"] / r["n"] / (dx * dy), rel=1e-12)
    assert r["p_x"] == pytest.approx(r["n_x"] / r["n"] / dx, rel=1e-12)
    assert r["p_y"] == pytest.approx(r["n_y"] / r["n"] / dy, rel=1e-12)
    assert r["p_y_given_x"] == pytest.approx(r["p_xy"] / r["p_x"], rel=1e-12)
    assert r["p_y_given_x"] == pytest.approx(r["n_xy"] / r["n_x"] / dy, rel=1e-12)
    text = "\n".join(lines)
    assert f"n(x, y) = {r['n_xy']}" in text and f"n(x) = {r['n_x']}" in text and f"n(y) = {r['n_y']}" in text


def test_overview_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cell"):
        density_by_counting(tmp_path, cell=(7, 0), printer=None)
    with pytest.raises(ValueError, match="rho"):
        density_by_counting(tmp_path, rho=1.5, printer=None)


def test_forward_kl_covers_and_reverse_kl_chases(tmp_path: Path) -> None:
    res = mode_covering_vs_chasing(tmp_path, printer=None)
    assert [p.name for p in res.paths] == ["mode_covering.gif", "mode_chasing.gif"]
    for p in res.paths:
        check_gif(p, 4)
    r = res.numbers
    target = np.array(r["target_at_modes"])
    cover = np.array(r["forward_fit"]["at_modes"])
    chase = np.array(r["reverse_fit"]["at_modes"])
    # covering: a real bump at every mode, lower than the (narrow) target's peaks
    assert (cover > 0.25 * target).all() and (cover < target).all()
    # chasing: one spike at the tallest (centre) mode, taller than π's peak; nothing elsewhere
    assert chase[1] > target[1] and (chase[[0, 2]] < 0.01 * target[[0, 2]]).all()
    fwd, rev = r["forward_fit"], r["reverse_fit"]
    assert fwd["forward_kl"] < rev["forward_kl"]  # each fit wins on its own divergence
    assert rev["reverse_kl"] < fwd["reverse_kl"]
    # the spike's reverse KL is ≈ −log w_centre (its optimum for well separated modes)
    assert rev["reverse_kl"] == pytest.approx(-np.log(1.45 / 3.45), abs=0.02)


def test_mode_figures_one_at_a_time_and_bad_options(tmp_path: Path) -> None:
    res = mode_covering_vs_chasing(
        tmp_path, which=("chasing",), reverse_steps=150, reverse_snapshots=(0, 50, 150), printer=None
    )
    assert [p.name for p in res.paths] == ["mode_chasing.gif"]
    check_gif(res.paths[0], 3)
    with pytest.raises(ValueError, match="which"):
        mode_covering_vs_chasing(tmp_path, which=("both",), printer=None)
    with pytest.raises(ValueError, match="snapshots"):
        mode_covering_vs_chasing(tmp_path, forward_steps=10, printer=None)


def test_exact_score_wrapper_gives_the_targets_score() -> None:
    target = get_target("8gaussians")
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    value, grad = value_and_grad(exact_score_log_density(target), x)
    torch.testing.assert_close(value, target.log_prob(x).double())
    torch.testing.assert_close(grad, target.score(x))


def test_langevin_chain_moves_noise_to_the_target(tmp_path: Path) -> None:
    lines: list[str] = []
    res = langevin_chain(tmp_path, n_particles=300, frames=(0, 10, 40, 120), printer=lines.append)
    check_gif(res.paths[0], 4)
    kl, floor = res.numbers["kl_grid"], res.numbers["kl_floor"]
    assert res.numbers["times"] == pytest.approx([0.0, 0.2, 0.8, 2.4])
    assert kl[0] > 1.0  # noise is far from 8gaussians
    assert kl[0] > kl[1] > kl[-1]
    # at the end, within sampling error of exact samples (floor ≈ (C_eff − 1)/2n)
    assert kl[-1] < 1.5 * floor + 0.05
    assert len(lines) == 5
    with pytest.raises(ValueError, match="frames"):
        langevin_chain(tmp_path, frames=(5, 2), printer=None)


def test_cli_figures_writes_all_and_rejects_unknown(tmp_path: Path, capsys) -> None:
    # every figure, with the golf figure's four training runs cut to 2 % of their budget
    code = main(["figures", "--out", str(tmp_path / "all"), "--steps-scale", "0.1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    names = ["overview", "mode_covering", "mode_chasing", "langevin"]
    for name in [*names, "contrastive_divergence", "em_algorithm", "equilibrium"]:
        check_gif(tmp_path / "all" / f"{name}.gif", 4)
    for name in ["forward", "reverse_ODE", "reverse_SDE"]:
        check_gif(tmp_path / "all" / f"nonequilibrium_{name}.gif", 3)
    for name in ["golf", "relations"]:
        assert (tmp_path / "all" / f"{name}.png").stat().st_size > 0
    assert "n(x, y) =" in out and "D(π‖q)" in out and "KL(π‖particles)" in out

    code = main(["figures", "--out", str(tmp_path / "one"), "--only", "mode_chasing"])
    capsys.readouterr()
    assert code == 0 and [p.name for p in (tmp_path / "one").iterdir()] == ["mode_chasing.gif"]

    code = main(["figures", "--out", str(tmp_path / "bad"), "--only", "nope"])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "nope" in err and all(name in err for name in names)
    assert not (tmp_path / "bad").exists()
