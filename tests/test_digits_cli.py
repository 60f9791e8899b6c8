"""The digits as a first-class data set of the command line: `genmodels evaluate` on an image run
(image metrics beside their real-vs-real floor, a sample grid) and `genmodels tour --data digits`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genmodels.tour as tour
from genmodels import image_metrics as im
from genmodels.cli import main
from genmodels.data import load_data
from genmodels.train import TrainingDiverged, load_run

SMALL_FLOW = ["--layers", "2", "--hidden", "16", "--batch-size", "64", "--no-progress"]
IMAGE_KEYS = (
    "fd",
    "pixel_fd",
    "precision",
    "recall",
    "density",
    "coverage",
    "classes_covered",
    "class_kl_uniform",
)


@pytest.fixture(scope="module", autouse=True)
def _classifier_cache(tmp_path_factory):
    """The digit classifier trained once (about 3 s) into a temporary cache for this module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GENMODELS_CACHE", str(tmp_path_factory.mktemp("cache")))
    im._LOADED.clear()
    im.digit_classifier()
    yield
    im._LOADED.clear()
    mp.undo()


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "realnvp"
    assert (
        main(["train", "realnvp", "--data", "digits", "--steps", "30", "--out", str(run_dir), *SMALL_FLOW])
        == 0
    )
    return run_dir


def test_evaluate_json_is_evaluate_images_on_the_held_out_digits(flow_run: Path, capsys) -> None:
    code, out, err = run(["evaluate", str(flow_run), "--json", "--bpd-draws", "2"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["family"] == "realnvp" and result["step"] == 30 and result["data"] == "digits"
    assert result["n_real"] == result["n_samples"] == 360 and result["feature_space"] == "digits"
    assert result["bits_per_dim_kind"] == "exact" and result["bits_per_dim_discrete_kind"] == "upper_bound"
    assert "(x + u) / 17" in result["dequantization"] and "2 draws per image" in result["dequantization"]
    for key in IMAGE_KEYS:
        assert np.isfinite(result[key]) and np.isfinite(result["real_" + key]), key

    # the very numbers of the library functions, on the loaded model and the held-out split
    model, _ = load_run(flow_run)
    ds = load_data("digits")
    bpd = im.bits_per_dim(model, ds.test, 17, draws=2, generator=torch.Generator().manual_seed(0))
    assert result["bits_per_dim"] == pytest.approx(bpd.value, rel=1e-9)
    assert result["bits_per_dim_stderr"] == pytest.approx(bpd.stderr, rel=1e-9)
    floor = tour.real_floor(ds, seed=0)
    for key in IMAGE_KEYS:  # the floor beside each metric is real training images vs the test images
        assert result["real_" + key] == pytest.approx(floor[key], rel=1e-9), key
    assert result["real_classes_covered"] == 10 and result["real_fd"] < result["fd"]

    # the grid shows the model's samples (the first 100 drawn with --seed), 10 × 10 cells of 8×4 px
    grid = np.asarray(Image.open(flow_run / "samples.png"))
    assert result["grid_path"] == str(flow_run / "samples.png")
    assert grid.shape == (1 + 10 * 33, 1 + 10 * 33)
    with torch.no_grad():
        first = model.sample(360, generator=torch.Generator().manual_seed(0))[0].reshape(8, 8)
    expected = np.round(np.clip(first.numpy().astype(np.float64), 0, 1) * 255)
    assert np.abs(grid[1:33:4, 1:33:4] - expected).max() <= 1


def test_evaluate_prints_each_metric_beside_its_floor_and_takes_grid(
    flow_run: Path, tmp_path, capsys
) -> None:
    grid = tmp_path / "sub" / "g.png"
    code, out, err = run(["evaluate", str(flow_run), "--bpd-draws", "1", "--grid", str(grid)], capsys)
    assert code == 0, err
    assert "bits/dim" in out and "(exact; for the discrete model: upper_bound)" in out
    assert "uniform dequantization" in out and "real floor" in out
    line = next(s for s in out.splitlines() if s.startswith("classes hit (of 10)"))
    assert line.split()[-1] == "10"  # the real floor hits every class
    for label in ("Fréchet distance (features)", "Fréchet distance (pixels)", "precision", "coverage"):
        assert label in out
    assert grid.exists() and not (flow_run / "samples.png").with_name("g.png").exists()
    assert f"sample grid: {grid}" in out


def test_evaluate_sample_only_family_on_digits(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "gan"
    args = ["train", "gan", "--data", "digits", "--steps", "10", "--out", str(run_dir), "--no-progress"]
    assert run([*args, "--g-hidden", "16", "--d-hidden", "16"], capsys)[0] == 0
    code, out, err = run(["evaluate", str(run_dir), "--n", "100"], capsys)
    assert code == 0, err
    assert "no log-density" in out and "100 samples against 360 held-out images" in out
    assert (run_dir / "samples.png").exists()


def test_evaluate_on_a_2d_target_keeps_its_metrics(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "realnvp", "--data", "8gaussians", "--steps", "20", "--out", str(run_dir), *SMALL_FLOW]
    assert run(args, capsys)[0] == 0
    code, out, err = run(["evaluate", str(run_dir), "--json", "--n", "2000"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["kl_kind"] == "exact" and result["n_modes"] == 8 and "fd" not in result
    assert not (run_dir / "samples.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--grid", "samples.jpg"], "--grid must be a .png file"),
        (["--n", "3"], "--n must be >= 6"),
        (["--bpd-draws", "0"], "--bpd-draws must be >= 1"),
    ],
)
def test_evaluate_errors_are_one_line(flow_run: Path, capsys, extra, message) -> None:
    code, _, err = run(["evaluate", str(flow_run), *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_tour_on_digits_writes_table_json_and_grids(tmp_path: Path, capsys, monkeypatch) -> None:
    """realnvp (density) and gan (samples only) with 2% of their digits budget; the floor row is
    the real_* numbers of every family's evaluation; a skipped and a failing family get a row
    that says why."""
    real_train = tour.train

    def train_failing_wgan(name, *args, **kwargs):
        if name == "wgan-gp":
            raise TrainingDiverged("the loss became nan at step 3")
        return real_train(name, *args, **kwargs)

    monkeypatch.setattr(tour, "train", train_failing_wgan)
    monkeypatch.setitem(tour.DIGITS_SKIP, "coop", "its sampler needs a 2-D grid (for this test)")
    out = tmp_path / "tour"
    args = ["tour", "--data", "digits", "--out", str(out), "--families", "realnvp,gan,coop,wgan-gp"]
    code, stdout, err = run([*args, "--steps-scale", "0.02"], capsys)
    assert code == 0, err
    record = json.loads((out / "results.json").read_text())
    rows = {r["family"]: r for r in record["rows"]}
    assert list(rows) == ["realnvp", "gan", "coop", "wgan-gp"]
    assert rows["realnvp"]["steps"] == round(tour.DIGITS_STEPS["realnvp"] * 0.02)
    assert rows["realnvp"]["bits_per_dim_kind"] == "exact" and rows["gan"].get("bits_per_dim") is None
    for key in IMAGE_KEYS:
        assert record["real"][key] == pytest.approx(rows["realnvp"]["real_" + key], rel=1e-9), key
    assert record["data"]["name"] == "digits" and record["real"]["classes_covered"] == 10

    table = (out / "results.md").read_text()
    assert table.strip() in stdout
    lines = table.splitlines()
    floor_line = next(s for s in lines if s.startswith("| *real data"))
    assert f"| {record['real']['fd']:.2f} |" in floor_line
    realnvp_line = next(s for s in lines if s.startswith("| realnvp |"))
    assert f"{rows['realnvp']['bits_per_dim']:.3f} ± " in realnvp_line and "| exact |" in realnvp_line
    assert "| gan | no density |" in table
    assert "| coop | skipped: its sampler needs a 2-D grid (for this test) |" in table
    assert "| wgan-gp | failed — training: TrainingDiverged: the loss became nan at step 3 |" in table
    for name in ("real", "realnvp", "gan"):
        img = np.asarray(Image.open(out / f"{name}.png"), dtype=float)
        assert img.shape == (1 + 10 * 33, 1 + 10 * 33) and img.std() > 20, name
        assert f"]({'./' + name}.png)" in table
    assert not (out / "coop.png").exists() and not (out / "wgan-gp.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--families", "nosuch"], "unknown family 'nosuch'; choose one of:"),
        (["--steps-scale", "0"], "--steps-scale must be positive"),
    ],
)
def test_tour_on_digits_errors_are_one_line(tmp_path: Path, capsys, args, message) -> None:
    code, _, err = run(["tour", "--data", "digits", "--out", str(tmp_path / "t"), *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()


def test_tour_rejects_data_that_is_neither_2d_nor_images(tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32))
    code, _, err = run(["tour", "--data", str(tmp_path / "v.npy"), "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and "built-in 2-D target or on images" in err
    code, _, err = run(["tour", "--data", "nosuch", "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and "unknown dataset 'nosuch'" in err
