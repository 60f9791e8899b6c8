"""Image loaders (PNG folders, image arrays, IDX) and the image metrics (bits/dim, the digit
classifier's feature space, Fréchet distance, PRDC, class histogram, sample grids)."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels import image_metrics as im
from genmodels.data import DataError, as_images, flatten_images, load_data, read_idx
from genmodels.data.dataset import dequantize
from genmodels.models.base import Model
from genmodels.types import LogDensity


# ---------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------
def _write_pngs(folder: Path, arrays: list[np.ndarray], mode: str | None = None) -> None:
    folder.mkdir(exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a, mode=mode).save(folder / f"img{i:03d}.png")


def test_png_folder_grayscale_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(6, 8), dtype=np.uint8) for _ in range(5)]
    _write_pngs(tmp_path / "pngs", arrays)
    ds = load_data(str(tmp_path / "pngs"))
    assert ds.image_shape == (6, 8) and ds.dim == 48 and ds.levels == 256
    np.testing.assert_array_equal(ds.train.numpy(), np.stack(arrays).reshape(5, -1).astype(np.float32))
    y = ds.sample_reference(5, seed=0)  # dequantized: y = (x + u) / 256
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(torch.floor(y * 256), ds.train)


def test_png_folder_rgb_and_mixed_modes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = [rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8) for _ in range(3)]
    _write_pngs(tmp_path / "rgb", rgb)
    ds = load_data(str(tmp_path / "rgb"))
    assert ds.image_shape == (4, 5, 3) and ds.dim == 60 and ds.levels == 256
    chw = as_images(ds.train, ds.image_shape)
    np.testing.assert_array_equal(chw.numpy(), np.stack(rgb).transpose(0, 3, 1, 2).astype(np.float32))
    assert torch.equal(flatten_images(chw), ds.train)
    # one grey image among colour ones: all RGB, the grey replicated over the channels
    grey = rng.integers(0, 256, size=(4, 5), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "rgb" / "zzz.png")
    ds = load_data(str(tmp_path / "rgb"))
    assert ds.image_shape == (4, 5, 3) and ds.train.shape == (4, 60)
    np.testing.assert_array_equal(ds.train[3].numpy().reshape(4, 5, 3), np.repeat(grey[..., None], 3, 2))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "no .png files"),
        (
            lambda p: _write_pngs(p, [np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8)]),
            r"size 5×4 \(w×h\) differs from 4×4",
        ),
        (lambda p: (p.mkdir(), (p / "bad.png").write_bytes(b"not a png")), "unreadable image"),
        (
            lambda p: (p.mkdir(), Image.fromarray(np.zeros((3, 3), np.uint16)).save(p / "a.png")),
            "16-bit",
        ),
    ],
)
def test_png_folder_errors(tmp_path: Path, make, message: str) -> None:
    folder = tmp_path / "pngs"
    make(folder)
    with pytest.raises(DataError, match=message) as info:
        load_data(str(folder))
    assert "pngs" in str(info.value) and "\n" not in str(info.value)


def test_a_single_png_asks_for_its_folder(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "f", [np.zeros((2, 2), np.uint8)])
    with pytest.raises(DataError, match="give the folder"):
        load_data(str(tmp_path / "f" / "img000.png"))


@pytest.mark.parametrize(
    ("shape", "dtype", "image_shape", "levels"),
    [
        ((7, 3, 4), np.uint8, (3, 4), 256),
        ((7, 3, 4, 3), np.uint8, (3, 4, 3), 256),
        ((7, 3, 4, 1), np.uint8, (3, 4), 256),
        ((7, 3, 4), np.float32, (3, 4), None),
        ((7, 12), np.uint8, None, None),  # vectors stay vectors
    ],
)
def test_npz_images_keep_their_shape_and_levels(tmp_path: Path, shape, dtype, image_shape, levels) -> None:
    x = np.random.default_rng(2).integers(0, 256, size=shape).astype(dtype)
    np.savez(tmp_path / "imgs.npz", x=x)
    ds = load_data(str(tmp_path / "imgs.npz"))
    assert ds.image_shape == image_shape and ds.levels == levels and ds.train.shape == (7, x[0].size)
    np.testing.assert_array_equal(ds.train.numpy(), x.reshape(7, -1).astype(np.float32))


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((4, 3, 8, 8), np.uint8), r"c = 1, 3 or 4 channels.*channels first"),
        (np.full((2, 3, 3), np.nan), "NaN"),
        (np.zeros((2, 2, 2, 3, 1)), "expected shape"),
    ],
)
def test_npz_image_errors(tmp_path: Path, x: np.ndarray, message: str) -> None:
    np.savez(tmp_path / "imgs.npz", x=x)
    with pytest.raises(DataError, match=message):
        load_data(str(tmp_path / "imgs.npz"))


def _idx_bytes(a: np.ndarray, type_byte: int = 0x08) -> bytes:
    return bytes([0, 0, type_byte, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(">u1").tobytes()


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "mystery.bin"])
def test_idx_images_round_trip(tmp_path: Path, name: str) -> None:
    x = np.random.default_rng(3).integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    raw = _idx_bytes(x)
    assert raw[:4] == b"\x00\x00\x08\x03"  # the magic 0x00000803 of MNIST's image files
    (tmp_path / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    ds = load_data(str(tmp_path / name))
    assert ds.image_shape == (5, 4) and ds.levels == 256 and ds.dim == 20
    np.testing.assert_array_equal(ds.train.numpy(), x.reshape(6, -1).astype(np.float32))


def test_idx_labels_and_bad_idx_files(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8) % 7
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    assert _idx_bytes(labels)[:4] == b"\x00\x00\x08\x01"
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte"), labels)
    with pytest.raises(DataError, match=r"labels.*not images"):
        load_data(str(tmp_path / "t10k-labels-idx1-ubyte"))
    x = np.zeros((3, 2, 2), np.uint8)
    (tmp_path / "short-idx3-ubyte").write_bytes(_idx_bytes(x)[:-1])
    with pytest.raises(DataError, match=r"has 11 bytes.*needs 12"):
        load_data(str(tmp_path / "short-idx3-ubyte"))
    (tmp_path / "junk-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="not an IDX file"):
        load_data(str(tmp_path / "junk-idx3-ubyte"))
    (tmp_path / "junk.gz").write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(DataError, match="unreadable gzip"):
        load_data(str(tmp_path / "junk.gz"))


# ---------------------------------------------------------------------------------------
# bits per dimension on models of known density
# ---------------------------------------------------------------------------------------
class _Uniform(Model):
    """The uniform density on the closed unit cube [0, 1]^d (log q = 0 there)."""

    family = "test-uniform"
    has_log_prob = True

    def _log_prob(self, u: torch.Tensor, **options) -> LogDensity:
        inside = ((u >= 0) & (u <= 1)).all(1)
        return LogDensity(torch.where(inside, 0.0, -math.inf).to(u.dtype), self.kind)

    def _sample(self, n: int, *, generator=None, **options) -> torch.Tensor:
        return torch.rand(n, self.dim, generator=generator)

    kind = "exact"


class _PixelCategorical(Model):
    """Independent per-pixel categoricals P_j over L levels, as the piecewise-constant
    density q(y) = Π_j L · P_j(⌊L y_j⌋) on [0, 1]^d."""

    family = "test-pixel-categorical"
    has_log_prob = True

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__(probs.shape[0])
        self.register_buffer("log_p", probs.log())
        self.levels = probs.shape[1]

    def _log_prob(self, u: torch.Tensor, **options) -> LogDensity:
        k = torch.floor(u * self.levels).long().clamp(0, self.levels - 1)  # y = 1.0 is level L − 1
        lp = self.log_p.gather(1, k.T).T.sum(1) + self.dim * math.log(self.levels)
        return LogDensity(lp, "exact")


def test_bits_per_dim_of_the_uniform_model_is_log2_levels() -> None:
    x = load_data("digits").test
    r = im.bits_per_dim(_Uniform(64), x, 17, draws=3)
    assert r.value == pytest.approx(math.log2(17), abs=1e-12) and r.stderr == 0.0
    assert r.value == pytest.approx(4.088, abs=1e-3)  # benchmarks.md §4's first rung
    assert r.kind == "exact" and r.discrete_kind == "upper_bound" and "3 draws" in r.protocol


def test_bits_per_dim_of_a_per_pixel_categorical_is_its_cross_entropy() -> None:
    """A piecewise-constant density is exact under dequantization: bits/dim is the discrete
    cross-entropy −(1/nd) Σ log2 P_j(x_ij), whatever u is."""
    ds = load_data("digits")
    counts = torch.stack([torch.bincount(ds.train[:, j].long(), minlength=17) for j in range(64)]).double()
    probs = (counts + 1) / (counts + 1).sum(1, keepdim=True)
    expected = -float(probs.log2().gather(1, ds.test.long().T).T.sum(1).mean()) / 64
    r = im.bits_per_dim(_PixelCategorical(probs), ds.test, 17, draws=2)
    assert r.value == pytest.approx(expected, rel=1e-6)
    assert r.value == pytest.approx(2.436, abs=1e-3)  # benchmarks.md §4: the per-pixel categorical rung


@pytest.mark.parametrize(
    ("kind", "flipped", "discrete"),
    [
        ("lower_bound", "upper_bound", "upper_bound"),
        ("upper_bound", "lower_bound", "estimate"),
        ("estimate", "estimate", "estimate"),
    ],
)
def test_bits_per_dim_flips_the_kind(kind: str, flipped: str, discrete: str) -> None:
    model = _Uniform(4)
    model.kind = kind
    r = im.bits_per_dim(model, torch.zeros(3, 4), 4, draws=1)
    assert (r.kind, r.discrete_kind) == (flipped, discrete) and r.value == pytest.approx(2.0)


def test_bits_per_dim_refuses_dequantized_input() -> None:
    with pytest.raises(ValueError, match="integer levels 0…16"):
        im.bits_per_dim(_Uniform(2), torch.tensor([[0.5, 3.0]]), 17)
    with pytest.raises(ValueError, match="levels must be"):
        im.bits_per_dim(_Uniform(2), torch.zeros(1, 2), 1)


# ---------------------------------------------------------------------------------------
# Fréchet distance and PRDC on known answers
# ---------------------------------------------------------------------------------------
def test_frechet_distance_closed_forms() -> None:
    from scipy.linalg import sqrtm

    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.0]), np.array([3.0, 2.0, 1.0])  # diagonal, one singular
    expected = float(((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum())
    got = im.frechet_distance_gaussians(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
    assert got == pytest.approx(expected, rel=1e-12)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = a @ a.T, b @ b.T
    ref = np.trace(c1) + np.trace(c2) - 2 * np.trace(sqrtm(c1 @ c2)).real
    assert im.frechet_distance_gaussians(np.zeros(5), c1, np.zeros(5), c2) == pytest.approx(ref, rel=1e-9)
    x = torch.from_numpy(rng.normal(size=(50, 3)))
    assert im.frechet_distance(x, x, features=None) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("k", "hand"),
    [(1, (1.0, 0.75, 1.5, 1.0)), (2, (1.0, 0.75, 1.25, 1.0))],  # (precision, recall, density, coverage)
)
def test_prdc_on_a_hand_computed_example(k: int, hand: tuple[float, ...]) -> None:
    """Real X = 0, 1, 3, 20 and fake Y = 0.5, 5, 2.5, 8 on a line.

    k = 1: real radii 1, 1, 2, 17; Y = 0.5 lies in the balls of 0 and 1, Y = 5 in those of 3
    (on its boundary: closed balls) and 20, Y = 2.5 in that of 3, Y = 8 in that of 20 →
    precision 4/4, density 6/4; every real ball holds a fake → coverage 1. Fake radii 2, 2,
    2.5, 3: the real 20 is in no fake ball → recall 3/4.
    k = 2: real radii 3, 2, 3, 19; the balls hold Y = 0.5 three times, 5 twice, 2.5 four
    times, 8 once → precision 1, density 10/8; fake radii 4.5, 2.5, 3, 5.5 → recall 3/4.
    """
    x = torch.tensor([[0.0], [1.0], [3.0], [20.0]])
    y = torch.tensor([[0.5], [5.0], [2.5], [8.0]])
    r = im.precision_recall_density_coverage(x, y, k=k, features=None)
    assert (r.precision, r.recall, r.density, r.coverage) == pytest.approx(hand, abs=1e-12)


def test_expected_coverage_and_density_match_simulation() -> None:
    """For one distribution E[coverage] = 1 − Π (N − i)/(N + M − i) and E[density] = 1,
    checked over 1000 draws of small sets (where an off-by-one moves coverage by 0.08);
    tolerance: 4 standard errors of the mean."""
    g = torch.Generator().manual_seed(0)
    n, m, k = 6, 3, 2
    prdc = im.precision_recall_density_coverage
    runs = [
        prdc(torch.randn(n, 2, generator=g), torch.randn(m, 2, generator=g), k=k, features=None)
        for _ in range(1000)
    ]
    for values, mean in [
        ([r.coverage for r in runs], im.expected_coverage(n, m, k)),
        ([r.density for r in runs], 1.0),
    ]:
        se = float(np.std(values, ddof=1)) / math.sqrt(len(values))
        assert abs(float(np.mean(values)) - mean) < 4 * se


def test_prdc_rejects_too_few_points() -> None:
    with pytest.raises(ValueError, match="k=5 needs more than k"):
        im.precision_recall_density_coverage(torch.zeros(5, 2), torch.zeros(9, 2), features=None)


def test_sample_grid_layout(tmp_path: Path) -> None:
    imgs = torch.linspace(0, 1, 10)[:, None].repeat(1, 64)  # image i is flat at i/9
    path = im.sample_grid(imgs, tmp_path / "g.png", nrow=5, scale=2, pad=1)
    a = np.asarray(Image.open(path))
    assert a.shape == (1 + 2 * 17, 1 + 5 * 17)
    assert a[0, 0] == 255 and a[1, 1] == 0 and a[1 + 17, 1 + 4 * 17] == 255  # pad, image 0, image 9
    assert a[1, 1 + 17] == round(255 / 9)


# ---------------------------------------------------------------------------------------
# the digit classifier and its feature space
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """Train the classifier once for this module, in a temporary cache."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("cache")
    mp.setenv("GENMODELS_CACHE", str(cache))
    im._LOADED.clear()
    net = im.digit_classifier()
    yield net
    im._LOADED.clear()
    mp.undo()


@pytest.fixture(scope="module")
def digit_sets(classifier):
    ds = load_data("digits")
    real = dequantize(ds.test, 17, torch.Generator().manual_seed(0))
    other = dequantize(ds.train[:360], 17, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    shuffled = torch.stack([row[torch.randperm(64, generator=g)] for row in other])
    return real, other, shuffled


def test_classifier_is_accurate_cached_and_deterministic(classifier) -> None:
    assert classifier.info["source"] == "trained" and classifier.info["test_accuracy"] >= 0.95
    path = Path(classifier.info["path"])
    assert path.exists() and path.name == f"{im.CLASSIFIER_VERSION}.safetensors"
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left nothing behind
    loaded = im.load_classifier_file(path)
    assert loaded.info["test_accuracy"] == classifier.info["test_accuracy"]
    for (name, a), (_, b) in zip(classifier.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert im.digit_classifier() is classifier
    one, two = im.train_digit_classifier(epochs=1), im.train_digit_classifier(epochs=1)
    assert all(
        torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.state_dict().values(), strict=True)
    )
    path.with_name("other.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="unreadable classifier file"):
        im.load_classifier_file(path.with_name("other.safetensors"))


def test_real_digits_sit_at_the_floor_and_shuffled_ones_far_from_it(digit_sets) -> None:
    real, other, shuffled = digit_sets
    fd_real, fd_shuffled = im.frechet_distance(real, other), im.frechet_distance(real, shuffled)
    assert fd_shuffled > 10 * fd_real
    r = im.precision_recall_density_coverage(real, other)
    assert r.precision > 0.9 and r.recall > 0.9
    # coverage: binomial-like, sd ≈ √(0.03 · 0.97 / 360) ≈ 0.009; density: mean 1
    assert abs(r.coverage - im.expected_coverage(360, 360, 5)) < 0.05
    assert abs(r.density - 1.0) < 0.2
    s = im.precision_recall_density_coverage(real, shuffled)
    assert s.density < 0.3 and s.coverage < 0.3 and s.recall < 0.5
    p = im.precision_recall_density_coverage(real, shuffled, features="pixels")
    assert p.precision < 0.02 and p.coverage < 0.02
    hist_real, hist_shuffled = im.class_histogram(real), im.class_histogram(shuffled)
    assert hist_real.covered == 10 and hist_real.kl_uniform < 0.05
    assert hist_shuffled.kl_uniform > 0.2


def test_metrics_refuse_raw_levels(digit_sets) -> None:
    with pytest.raises(ValueError, match="raw integer levels"):
        im.frechet_distance(load_data("digits").test, digit_sets[0])


def test_evaluate_images_on_samples_and_on_a_model(digit_sets, tmp_path: Path) -> None:
    ds = load_data("digits")
    real, other, _ = digit_sets
    out = im.evaluate_images(other, ds, grid_path=tmp_path / "grid.png")
    assert out["feature_space"] == "digits" and out["classifier_accuracy"] >= 0.95
    assert out["n_samples"] == 360 and out["real_fd"] > 0 and Path(out["grid_path"]).exists()
    for key in ("fd", "precision", "recall", "density", "coverage", "pixel_fd", "class_kl_uniform"):
        assert math.isfinite(out[key]) and math.isfinite(out["real_" + key])
    out = im.evaluate_images(_Uniform(64), ds.test, levels=17, n_samples=200)
    assert out["bits_per_dim"] == pytest.approx(math.log2(17)) and out["bits_per_dim_kind"] == "exact"
    assert out["n_samples"] == 200 and out["fd"] > 10 * im.frechet_distance(real, other)
