"""Datasets for training and evaluation (see the package docstring)."""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genmodels.distributions import TARGETS, Target, get_target

#: The bundled image set: sklearn's 8×8 digits, 17 grey levels (0…16).
DIGITS = "digits"
DIGITS_LEVELS = 17


class DataError(ValueError):
    """Bad input data: the message names the file and the problem."""


@dataclass
class Dataset:
    """What a family trains on.

    Exactly one of ``target`` (an infinite stream of exact samples, whose density is the
    truth) and ``train`` (a finite tensor ``(n, d)``) is set. ``test`` is held-out data when
    the source has a split. ``levels`` marks integer data with that many levels, seen by the
    models uniformly dequantized as y = (x + u) / levels, u ~ U[0, 1)^d (benchmarks.md §4).
    ``image_shape`` is ``(h, w)`` or ``(h, w, c)`` for images stored flattened, channels last
    (``genmodels.data.images``).
    """

    name: str
    dim: int
    target: Target | None = None
    train: torch.Tensor | None = None
    test: torch.Tensor | None = None
    levels: int | None = None
    image_shape: tuple[int, ...] | None = None
    source: str = field(default="")

    def batch(self, step: int, batch_size: int, seed: int, generator: torch.Generator) -> torch.Tensor:
        """The training batch of step ``step`` (0-based), shape ``(batch_size, dim)``.

        Targets give fresh exact samples from ``generator``. Finite data is visited in
        epochs without replacement: epoch e uses the permutation drawn from a generator
        seeded by (seed, e), so the batch depends only on (seed, step). Integer data is
        dequantized with noise from ``generator``.
        """
        if self.target is not None:
            return self.target.sample(batch_size, generator=generator)
        assert self.train is not None
        n = self.train.shape[0]
        per_epoch = max(n // batch_size, 1)
        epoch, k = divmod(step, per_epoch)
        perm_gen = torch.Generator().manual_seed(_mix(seed, epoch))
        perm = torch.randperm(n, generator=perm_gen)
        idx = perm[k * batch_size : (k + 1) * batch_size] if n >= batch_size else perm
        x = self.train[idx]
        if self.levels is not None:
            x = dequantize(x, self.levels, generator)
        return x

    def sample_reference(self, n: int, seed: int) -> torch.Tensor:
        """Up to ``n`` points of training data (or exact target samples) for statistics."""
        if self.target is not None:
            return self.target.sample(n, generator=torch.Generator().manual_seed(_mix(seed, -1)))
        assert self.train is not None
        x = self.train[:n]
        if self.levels is not None:
            x = dequantize(x, self.levels, torch.Generator().manual_seed(_mix(seed, -1)))
        return x

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "dim": self.dim,
            "kind": "target" if self.target is not None else "file",
            "n_train": None if self.train is None else int(self.train.shape[0]),
            "n_test": None if self.test is None else int(self.test.shape[0]),
            "levels": self.levels,
            "image_shape": list(self.image_shape) if self.image_shape else None,
        }


def _mix(seed: int, k: int) -> int:
    """A deterministic 63-bit seed from (seed, k) (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + (k + 2) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


#: the largest float32 below 1
_BELOW_ONE = 1.0 - 2.0**-24


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform dequantization y = (x + u) / levels, u ~ U[0, 1) (benchmarks.md §4).

    Computed in float64 and kept strictly below 1 in float32: (levels − 1 + u) / levels in
    float32 rounds to exactly 1.0 for u within 2⁻²⁴ of 1, outside the stated support [0, 1).
    """
    u = torch.rand(x.shape, generator=generator, dtype=torch.float32)
    y = ((x.double() + u.double()) / levels).float()
    return y.clamp(max=_BELOW_ONE)


def load_data(spec: str | Target | Dataset) -> Dataset:
    """A :class:`Dataset` from a built-in target name, ``"digits"``, a file path, or a
    :class:`~genmodels.distributions.Target` object (its exact samples; a Dataset is
    returned as it is).

    Raises :class:`DataError` with a one-line message for anything else.
    """
    if isinstance(spec, Dataset):
        return spec
    if isinstance(spec, Target):
        return Dataset(name=spec.name, dim=spec.dim, target=spec, source=spec.name)
    if not isinstance(spec, str):
        raise DataError(f"no data given (got {spec!r}); name a built-in target, 'digits', or a file")
    if spec in TARGETS:
        target = get_target(spec)
        return Dataset(name=spec, dim=target.dim, target=target, source=spec)
    if spec == DIGITS:
        return load_digits()
    path = Path(spec)
    if path.suffix.lower() in {".npy", ".npz", ".csv"} or path.exists():
        return load_file(path)
    choices = ", ".join([*TARGETS, DIGITS])
    raise DataError(
        f"unknown dataset {spec!r}: give a file (.npy, .npz, .csv, IDX), a folder of .png images, "
        f"or one of: {choices}"
    )


def load_digits() -> Dataset:
    """sklearn's bundled 8×8 digits, split as benchmarks.md §4 (1437 train / 360 test)."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    x = _load().data.astype(np.float32)
    train, test = train_test_split(x, test_size=0.2, random_state=0)
    return Dataset(
        name=DIGITS,
        dim=64,
        train=torch.from_numpy(train),
        test=torch.from_numpy(test),
        levels=DIGITS_LEVELS,
        image_shape=(8, 8),
        source=DIGITS,
    )


def load_file(path: str | Path) -> Dataset:
    """Load ``(n, d)`` vectors or ``(n, h, w[, c])`` images from ``.npy``, ``.npz`` or ``.csv``,
    a folder of PNGs or an IDX file (``genmodels.data.images``; uint8 images get 256 levels)."""
    from genmodels.data.images import dataset_from_array, is_image_source, load_images

    path = Path(path)
    if is_image_source(path):
        return load_images(path)
    return dataset_from_array(read_array(path), name=path.stem, source=str(path))


def read_array(path: Path) -> np.ndarray:
    """Read and validate a numeric array of shape (n, d) or (n, h, w) from ``path``."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            array = _read_npz(path)
        elif suffix == ".csv":
            array = _read_csv(path)
        else:
            raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .npy, .npz or .csv")
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable {suffix} file ({err})") from None
    return validate_array(array, str(path))


def _read_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if not keys:
            raise DataError(f"{path}: the .npz archive holds no arrays")
        if len(keys) == 1:
            return archive[keys[0]]
        for key in ("x", "data", "train", "X"):
            if key in keys:
                return archive[key]
        raise DataError(
            f"{path}: the .npz archive holds several arrays ({', '.join(keys)}); "
            "name the data array 'x' or 'data'"
        )


def _read_csv(path: Path) -> np.ndarray:
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{path}: the file is empty")

    def numeric(row: list[str]) -> bool:
        try:
            [float(c) for c in row]
        except ValueError:
            return False
        return True

    if not numeric(rows[0]):  # a header line
        rows = rows[1:]
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise DataError(f"{path}: rows have different numbers of columns ({sorted(widths)})")
    for i, row in enumerate(rows):
        if not numeric(row):
            raise DataError(f"{path}: non-numeric value on data row {i + 1}: {row!r}")
    return np.array([[float(c) for c in r] for r in rows], dtype=np.float64).reshape(len(rows), -1)


def validate_array(array: np.ndarray, where: str) -> np.ndarray:
    """Check shape (n, d), (n, h, w) or (n, h, w, c), a numeric dtype, n ≥ 1 and only finite values."""
    if not isinstance(array, np.ndarray) or array.dtype == object:
        raise DataError(f"{where}: expected a numeric array, got {type(array).__name__}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{where}: expected numbers, got dtype {array.dtype}")
    if array.ndim not in (2, 3, 4):
        raise DataError(
            f"{where}: expected shape (n, d) or (n, h, w) or (n, h, w, c) images, "
            f"got shape {tuple(array.shape)}"
        )
    if array.shape[0] == 0 or array[0].size == 0:
        raise DataError(f"{where}: the data is empty (shape {tuple(array.shape)})")
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite.reshape(array.shape[0], -1).all(axis=1)).ravel()
        n_nan = int(np.isnan(array).sum())
        n_inf = int(np.isinf(array).sum())
        raise DataError(
            f"{where}: {n_nan} NaN and {n_inf} inf values in {bad.size} rows "
            f"(first at row {int(bad[0])}); remove or impute them"
        )
    return array
