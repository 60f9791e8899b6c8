"""Data sources: built-in targets, digits, user files, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genmodels.data import DataError, load_data


def test_builtin_target_streams_fresh_samples() -> None:
    ds = load_data("8gaussians")
    g = torch.Generator().manual_seed(0)
    a, b = ds.batch(0, 16, 0, g), ds.batch(1, 16, 0, g)
    assert a.shape == (16, 2) and not torch.equal(a, b)


def test_digits_split_and_dequantization() -> None:
    ds = load_data("digits")
    assert ds.train.shape == (1437, 64) and ds.test.shape == (360, 64)
    assert ds.levels == 17 and ds.image_shape == (8, 8)
    y = ds.batch(0, 64, 0, torch.Generator().manual_seed(0))
    assert float(y.min()) >= 0 and float(y.max()) < 1  # (x + u) / 17 with x ≤ 16, u < 1


def test_finite_data_epochs_visit_every_point_once(tmp_path: Path) -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    np.save(tmp_path / "x.npy", x)
    ds = load_data(str(tmp_path / "x.npy"))
    g = torch.Generator()
    seen = torch.cat([ds.batch(k, 5, 3, g) for k in range(2)])
    assert sorted(seen[:, 0].tolist()) == sorted(x[:, 0].tolist())
    assert torch.equal(ds.batch(4, 5, 3, g), ds.batch(4, 5, 3, g))  # a function of (seed, step)


@pytest.mark.parametrize("fmt", ["npy", "npz", "csv", "csv-header"])
def test_user_files_load(tmp_path: Path, fmt: str) -> None:
    x = np.random.default_rng(0).normal(size=(30, 3))
    path = tmp_path / f"data.{fmt.split('-')[0]}"
    if fmt == "npy":
        np.save(path, x)
    elif fmt == "npz":
        np.savez(path, x=x, labels=np.zeros(30))
    else:
        header = "a,b,c\n" if fmt == "csv-header" else ""
        path.write_text(header + "\n".join(",".join(f"{v:.17g}" for v in row) for row in x) + "\n")
    ds = load_data(str(path))
    assert ds.dim == 3 and ds.train.shape == (30, 3)
    np.testing.assert_allclose(ds.train.numpy(), x.astype(np.float32))


def test_images_are_flattened_with_their_shape(tmp_path: Path) -> None:
    np.save(tmp_path / "img.npy", np.zeros((5, 4, 6)))
    ds = load_data(str(tmp_path / "img.npy"))
    assert ds.dim == 24 and ds.image_shape == (4, 6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: np.save(p / "d.npy", np.zeros(5)),
            r"expected shape \(n, d\) or \(n, h, w\).*got shape \(5,\)",
        ),
        (lambda p: np.save(p / "d.npy", np.zeros((0, 2))), "the data is empty"),
        (
            lambda p: np.save(p / "d.npy", np.array([[1.0, np.nan], [np.inf, 0.0]])),
            "1 NaN and 1 inf values in 2 rows",
        ),
        (lambda p: (p / "d.npy").write_bytes(b"garbage"), "unreadable .npy file"),
        (lambda p: np.save(p / "d.npy", np.array([["a", "b"]])), "expected numbers"),
        (lambda p: (p / "d.csv").write_text("1,2\n3\n"), "different numbers of columns"),
        (lambda p: (p / "d.csv").write_text(""), "the file is empty"),
        (
            lambda p: (p / "d.csv").write_text("x,y\n1,2\n3,oops\n"),
            "non-numeric value on data row 2",
        ),
        (lambda p: np.savez(p / "d.npz", a=np.zeros((3, 2)), b=np.ones((3, 2))), "several arrays"),
        (lambda p: (p / "d.txt").write_text("1 2"), "unsupported file type"),
    ],
)
def test_bad_files_get_clear_errors(tmp_path: Path, make, message: str) -> None:
    make(tmp_path)
    (path,) = list(tmp_path.iterdir())
    with pytest.raises(DataError, match=message) as info:
        load_data(str(path))
    assert str(path) in str(info.value)


def test_pickled_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="unreadable"):
        load_data(str(tmp_path / "d.npy"))


def test_unknown_names_list_the_choices(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"8gaussians.*digits"):
        load_data("nonesuch")
    with pytest.raises(DataError, match="no such file"):
        load_data(str(tmp_path / "missing.npy"))


def test_no_data_is_a_clear_error_and_a_target_object_is_data():
    from genmodels.distributions import get_target

    with pytest.raises(DataError, match="no data given"):
        load_data(None)
    ds = load_data(get_target("moons"))
    assert ds.dim == 2 and ds.target is not None and load_data(ds) is ds


def test_dequantize_stays_below_one_in_float32():
    # (16 + u) / 17 rounds to 1.0 in float32 for u within 2^-24 of 1: about 9e-7 of the draws,
    # so ~9 of these 10^7 top-level pixels would reach 1.0 without the float64 computation.
    from genmodels.data.dataset import dequantize

    y = dequantize(torch.full((10_000_000,), 16), 17, torch.Generator().manual_seed(0))
    assert y.dtype == torch.float32
    assert float(y.max()) < 1.0 and float(y.min()) >= 16 / 17
