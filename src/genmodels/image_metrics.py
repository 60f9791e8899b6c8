"""Image metrics with stated protocols: bits/dim, a digit classifier's feature space, PRDC, grids.

**Spaces.** A model trained on integer images with L levels sees them uniformly dequantized,
y = (x + u) / L ∈ [0, 1)^d, u ~ U[0, 1)^d (``Dataset.batch``, benchmarks.md §4), and samples
in that space. So here:

- :func:`bits_per_dim` takes the *integer* data x (``Dataset.train``/``test``) and dequantizes
  it itself, ``draws`` times;
- the sample metrics (:func:`frechet_distance`, :func:`precision_recall_density_coverage`,
  :func:`class_histogram`, :func:`sample_grid`) take images in the model's space y; real images
  are put there with :func:`~genmodels.data.dataset.dequantize` (one seeded draw) so that a
  perfect model and the real data are the same distribution, and every metric's floor is that
  of real against real (reported by :func:`evaluate_images`).

**Feature space.** For 8×8 digits, the penultimate layer (64 ReLU units) of a small CNN
(:class:`DigitClassifier`) that the package trains once, deterministically, on the digits
*training* split only (seed 0, one thread, fixed epochs, dequantized inputs) and caches in
``$GENMODELS_CACHE`` (default ``~/.cache/genmodels``) as safetensors, keyed by
:data:`CLASSIFIER_VERSION`; its held-out accuracy is stored with it. For other images the
features are the pixels themselves (``features="pixels"``), which is said in the results.

**Metrics.**

- Fréchet distance (Heusel et al. 2017, "FID" with Inception replaced by the digit CNN):
  ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{1/2} between Gaussians fitted to the features;
  tr (Σ₁Σ₂)^{1/2} = Σ_i √λ_i(Σ₁^{1/2} Σ₂ Σ₁^{1/2}) (AB and BA have the same non-zero
  eigenvalues, and this matrix is symmetric PSD), so no complex square root arises.
  Finite samples bias it upwards: compare with the real-vs-real value at the same n.
- Precision and recall (Kynkäänniemi et al. 2019, "Improved precision and recall"), density
  and coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics"), with the k-NN
  balls B(x, NND_k(x)) (closed balls, radius = distance to the k-th nearest *other* point of
  the same set):
  precision = (1/M) Σ_j 1[Y_j ∈ ∪_i B(X_i, NND_k(X_i))], recall = (1/N) Σ_i 1[X_i ∈ ∪_j B(Y_j,
  NND_k(Y_j))], density = (1/kM) Σ_j Σ_i 1[Y_j ∈ B(X_i, NND_k(X_i))], coverage = (1/N) Σ_i
  1[∃ j: Y_j ∈ B(X_i, NND_k(X_i))], for N real X and M fake Y. When Y and X come from one
  distribution, E[density] = 1 and E[coverage] = 1 − Π_{i=1..k} (N − i)/(N + M − i)
  (:func:`expected_coverage`: no fake is in X_i's ball iff the k nearest of the N + M − 1
  other points are all real).
- The class histogram of samples under the classifier: classes covered (of 10), its entropy
  and KL(histogram ‖ uniform) = log 10 − H in nats, and the mean top-class probability.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genmodels.data.dataset import DIGITS_LEVELS, Dataset, dequantize, load_digits
from genmodels.evaluate import FLIPPED_KIND, _model_log_prob
from genmodels.evaluate import bits_per_dim as _bits_per_dim_of_nll
from genmodels.types import Kind

__all__ = [
    "CLASSIFIER_VERSION",
    "PRDC",
    "BitsPerDim",
    "ClassHistogram",
    "DigitClassifier",
    "bits_per_dim",
    "cache_dir",
    "class_histogram",
    "digit_classifier",
    "evaluate_images",
    "expected_coverage",
    "frechet_distance",
    "frechet_distance_gaussians",
    "image_features",
    "precision_recall_density_coverage",
    "sample_grid",
    "train_digit_classifier",
]

#: Bump when the classifier's architecture or training recipe changes (names the cache file).
CLASSIFIER_VERSION = "digits-cnn-v1"
#: The recipe of :func:`train_digit_classifier` (part of the version).
CLASSIFIER_EPOCHS = 20
CLASSIFIER_SEED = 0
_BATCH = 64
_LR = 2e-3

#: A bound on log q flips on −log q; for the *discrete* model's bits/dim, E_u[−log q(y)] ≥
#: −log E_u q(y) (Jensen) adds an upward bias, so an exact or lower-bounded log q gives an
#: upper bound and an upper-bounded one gives no direction.
_DISCRETE_KIND: dict[str, Kind] = {
    "exact": "upper_bound",
    "lower_bound": "upper_bound",
    "upper_bound": "estimate",
    "estimate": "estimate",
}


# ---------------------------------------------------------------------------------------
# bits per dimension
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BitsPerDim:
    """Bits/dim of integer data under a continuous model through uniform dequantization.

    ``value`` = (−E log q(y) + d log L) / (d ln 2), y = (x + u)/L, averaged over ``draws``
    draws of u per image (benchmarks.md §4); ``stderr`` over images (each image's NLL is
    first averaged over its draws). ``kind`` is that of this number as an estimate of the
    dequantized cross-entropy (the benchmarks' ladder): the kind of log q, flipped.
    ``discrete_kind`` is its direction as a statement about the discrete model
    P(x) = ∫ q((x + u)/L) L^{−d} du: "upper_bound" for an exact or lower-bounded log q (Jensen).
    """

    value: float
    stderr: float
    kind: Kind
    discrete_kind: Kind
    nll: float
    n: int
    draws: int
    protocol: str


def _flat(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim < 2:
        raise ValueError(f"expected images (n, d), (n, h, w) or (n, h, w, c), got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1)


def bits_per_dim(
    model: Any,
    x: torch.Tensor | np.ndarray,
    levels: int,
    *,
    draws: int = 10,
    generator: torch.Generator | None = None,
    chunk: int = 4096,
) -> BitsPerDim:
    """Bits/dim of the integer images ``x`` (values 0…levels−1; (n, d) or (n, h, w[, c]))
    under ``model.log_prob`` of the dequantized y = (x + u)/levels (see :class:`BitsPerDim`).

    The model must have been trained on data dequantized the same way (``Dataset.batch``);
    ``generator`` (default: seeded with 0) draws the u's.
    """
    if not getattr(model, "has_log_prob", True):
        raise ValueError(f"{type(model).__name__} has no log-density; bits/dim needs one")
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    xf = _flat(x).double()
    if xf.shape[0] == 0:
        raise ValueError("no images given")
    lo, hi = float(xf.min()), float(xf.max())
    if not torch.equal(xf, xf.round()) or lo < 0 or hi > levels - 1:
        raise ValueError(
            f"x must hold the integer levels 0…{levels - 1} (a Dataset's train/test, not dequantized "
            f"values); got values in [{lo:g}, {hi:g}]"
        )
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n, d = xf.shape
    total = torch.zeros(n, dtype=torch.float64)
    kind: Kind | None = None
    for _ in range(draws):
        y = dequantize(xf, levels, g)
        log_q, k = _model_log_prob(model, y, chunk)
        if kind is not None and k != kind:
            raise ValueError(f"log_prob changed kind between draws: {kind} then {k}")
        kind = k
        total -= log_q
    per_image = total / draws
    nll = float(per_image.mean())
    se = float(per_image.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    if not math.isfinite(nll):
        se = math.inf if nll == math.inf else math.nan
    value, protocol = _bits_per_dim_of_nll(nll, d, levels)
    assert kind is not None
    return BitsPerDim(
        value=value,
        stderr=se / (d * math.log(2)),
        kind=FLIPPED_KIND[kind],
        discrete_kind=_DISCRETE_KIND[kind],
        nll=nll,
        n=n,
        draws=draws,
        protocol=protocol.replace("one draw", f"{draws} draws per image"),
    )


# ---------------------------------------------------------------------------------------
# the digit classifier
# ---------------------------------------------------------------------------------------
class DigitClassifier(nn.Module):
    """A small CNN for 8×8 digits in the model space y ∈ [0, 1) (y = (x + u)/17).

    conv 3×3 (1→16) · ReLU · conv 3×3 (16→32) · ReLU · max-pool 2 · linear 512→64 · ReLU
    (the features) · linear 64→10. ``info`` holds its version, held-out accuracy and
    training time.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)
        self.info: dict[str, Any] = {}

    def features(self, y: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (n, 64) of images y (n, 64) or (n, 8, 8)."""
        h = (y.reshape(-1, 1, 8, 8).float() - 0.5) * 2.0
        h = torch.relu(self.conv1(h))
        h = torch.max_pool2d(torch.relu(self.conv2(h)), 2)
        return torch.relu(self.fc1(h.flatten(1)))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(y))


def cache_dir() -> Path:
    """``$GENMODELS_CACHE`` or ``~/.cache/genmodels``."""
    env = os.environ.get("GENMODELS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genmodels"


def _digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train labels, test x, test labels) on benchmarks.md §4's split."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    raw = _load()
    xtr, xte, ytr, yte = train_test_split(
        raw.data.astype(np.float32), raw.target.astype(np.int64), test_size=0.2, random_state=0
    )
    ds = load_digits()  # the split must be the Dataset's own
    assert ds.train is not None and np.array_equal(ds.train.numpy(), xtr)
    return torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte)


def train_digit_classifier(epochs: int = CLASSIFIER_EPOCHS, seed: int = CLASSIFIER_SEED) -> DigitClassifier:
    """Train :class:`DigitClassifier` on the digits training split only, deterministically.

    Adam (lr 2e-3), batch 64, ``epochs`` epochs; each epoch a fresh permutation and a fresh
    dequantization y = (x + u)/17 from one generator seeded with ``seed``; weights initialised
    under ``seed`` (the global RNG is left as it was); one intra-op thread. ``info`` gets the
    accuracy on the held-out test split (360 images, dequantized with seed 1) and the time.
    """
    xtr, ytr, xte, yte = _digits_split()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = DigitClassifier()
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=_LR)
        n = xtr.shape[0]
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            y_all = dequantize(xtr, DIGITS_LEVELS, g)
            for s in range(0, n, _BATCH):
                idx = perm[s : s + _BATCH]
                loss = nn.functional.cross_entropy(net(y_all[idx]), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        seconds = time.perf_counter() - start
        net.eval()
        with torch.no_grad():
            yte_q = dequantize(xte, DIGITS_LEVELS, torch.Generator().manual_seed(1))
            acc = float((net(yte_q).argmax(1) == yte).double().mean())
    finally:
        torch.set_num_threads(threads)
    net.info = {
        "version": CLASSIFIER_VERSION,
        "test_accuracy": acc,
        "n_test": int(xte.shape[0]),
        "train_seconds": seconds,
        "epochs": epochs,
        "seed": seed,
    }
    for p in net.parameters():
        p.requires_grad_(False)
    return net


_LOADED: dict[Path, DigitClassifier] = {}


def _classifier_path(directory: Path) -> Path:
    return directory / f"{CLASSIFIER_VERSION}.safetensors"


def _save_atomically(net: DigitClassifier, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        save_file(state, tmp, metadata={k: str(v) for k, v in net.info.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_classifier_file(path: str | Path) -> DigitClassifier:
    """A :class:`DigitClassifier` from a safetensors file (no pickle); ValueError if the file
    is of another version or unreadable."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path}: unreadable classifier file ({err})") from None
    if meta.get("version") != CLASSIFIER_VERSION:
        found = meta.get("version")
        raise ValueError(f"{path}: classifier version {found!r}, expected {CLASSIFIER_VERSION!r}")
    net = DigitClassifier()
    net.load_state_dict(state)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net.info = {
        "version": meta["version"],
        "test_accuracy": float(meta["test_accuracy"]),
        "n_test": int(meta["n_test"]),
        "train_seconds": float(meta["train_seconds"]),
        "epochs": int(meta["epochs"]),
        "seed": int(meta["seed"]),
    }
    return net


def digit_classifier(directory: str | Path | None = None) -> DigitClassifier:
    """The cached classifier (:func:`cache_dir` unless ``directory``), trained and written
    atomically (temporary file + rename) on first use; a file of another version or a
    corrupt one is replaced. Kept in memory per path after the first call."""
    path = _classifier_path(Path(directory) if directory is not None else cache_dir()).resolve()
    if path in _LOADED:
        return _LOADED[path]
    net: DigitClassifier | None = None
    if path.exists():
        try:
            net = load_classifier_file(path)
            net.info["source"] = "cache"
        except ValueError:
            net = None
    if net is None:
        net = train_digit_classifier()
        _save_atomically(net, path)
        net.info["source"] = "trained"
    net.info["path"] = str(path)
    _LOADED[path] = net
    return net


# ---------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------
FeatureSpec = str | Callable[[torch.Tensor], torch.Tensor] | None


def _check_model_space(y: torch.Tensor, what: str) -> None:
    if y.numel() and bool(torch.equal(y, y.round())) and float(y.max()) >= 2:
        raise ValueError(
            f"{what} look like raw integer levels (max {float(y.max()):g}); the sample metrics take "
            "images in the model's space y = (x + u)/levels: dequantize them first"
        )


def image_features(images: torch.Tensor | np.ndarray, features: FeatureSpec = "digits") -> torch.Tensor:
    """Feature vectors (n, f) in float64: ``"digits"`` (the classifier's penultimate layer;
    8×8 images in model space), ``"pixels"`` (the flattened images), ``None`` (the input is
    already features), or a callable on the (n, d) float tensor."""
    y = _flat(images).float()
    if not torch.isfinite(y).all():
        raise ValueError("the images contain NaN or inf values")
    if features is None or features == "pixels":
        return y.double()
    if callable(features):
        return torch.as_tensor(features(y)).detach().double().reshape(y.shape[0], -1)
    if features == "digits":
        if y.shape[1] != 64:
            raise ValueError(f"features='digits' needs 8×8 images (64 values), got {y.shape[1]}; use pixels")
        _check_model_space(y, "the images")
        net = digit_classifier()
        with torch.no_grad():
            return torch.cat([net.features(y[s : s + 4096]) for s in range(0, y.shape[0], 4096)]).double()
    raise ValueError(f"unknown features {features!r}; choose 'digits', 'pixels', None or a callable")


# ---------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------
def frechet_distance_gaussians(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 Σ_i √λ_i(Σ₁^{1/2} Σ₂ Σ₁^{1/2}) (the squared 2-Wasserstein
    distance between the Gaussians; negative rounding is clipped at 0)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    c1, c2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    w, v = np.linalg.eigh((c1 + c1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = root1 @ c2 @ root1
    lam = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)
    fd = float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * np.sum(np.sqrt(lam)))
    return max(fd, 0.0)


def frechet_distance(
    real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, features: FeatureSpec = "digits"
) -> float:
    """Fréchet distance between Gaussians fitted (mean, unbiased covariance) to the features
    of ``real`` and ``fake`` images (model space; see :func:`image_features`)."""
    a, b = image_features(real, features).numpy(), image_features(fake, features).numpy()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("the Fréchet distance needs at least 2 images on each side")
    return frechet_distance_gaussians(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


# ---------------------------------------------------------------------------------------
# precision, recall, density, coverage
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PRDC:
    """Precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020)."""

    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    n_real: int
    n_fake: int


def expected_coverage(n_real: int, n_fake: int, k: int) -> float:
    """E[coverage] when real and fake come from one continuous distribution:
    1 − Π_{i=1..k} (N − i)/(N + M − i) (Naeem et al. 2020)."""
    p = 1.0
    for i in range(1, k + 1):
        p *= (n_real - i) / (n_real + n_fake - i)
    return 1.0 - p


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _knn_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point of the set (itself is the 1st)."""
    parts = [_cdist(x[s : s + chunk], x).kthvalue(k + 1, dim=1).values for s in range(0, len(x), chunk)]
    return torch.cat(parts)


def precision_recall_density_coverage(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    k: int = 5,
    features: FeatureSpec = "digits",
    chunk: int = 1024,
) -> PRDC:
    """The four k-NN metrics of the module docstring on the features of the images."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    r, f = image_features(real, features), image_features(fake, features)
    n, m = r.shape[0], f.shape[0]
    if n <= k or m <= k:
        raise ValueError(f"k={k} needs more than k real and fake points, got {n} real and {m} fake")
    radii_r, radii_f = _knn_radii(r, k, chunk), _knn_radii(f, k, chunk)
    fake_hit = torch.zeros(m, dtype=torch.bool)  # fake j in some real ball
    fake_count = torch.zeros(m, dtype=torch.float64)  # number of real balls holding fake j
    real_recalled = torch.zeros(n, dtype=torch.bool)  # real i in some fake ball
    real_covered = torch.zeros(n, dtype=torch.bool)  # some fake in real i's ball
    for s in range(0, n, chunk):
        d = _cdist(r[s : s + chunk], f)  # (c, m)
        inside = d <= radii_r[s : s + chunk, None]
        fake_hit |= inside.any(0)
        fake_count += inside.sum(0)
        real_covered[s : s + chunk] = inside.any(1)
        real_recalled[s : s + chunk] = (d <= radii_f[None, :]).any(1)
    return PRDC(
        precision=float(fake_hit.double().mean()),
        recall=float(real_recalled.double().mean()),
        density=float(fake_count.mean()) / k,
        coverage=float(real_covered.double().mean()),
        k=k,
        n_real=n,
        n_fake=m,
    )


# ---------------------------------------------------------------------------------------
# class histogram
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassHistogram:
    """The classifier's predicted labels of n images: ``counts`` (10,), classes with at least
    one image, entropy H and KL(hist ‖ uniform) = log 10 − H (nats), mean top probability."""

    counts: tuple[int, ...]
    covered: int
    entropy: float
    kl_uniform: float
    confidence: float


def class_histogram(images: torch.Tensor | np.ndarray) -> ClassHistogram:
    """Classify 8×8 images in model space with :func:`digit_classifier` and summarise."""
    y = _flat(images).float()
    if y.shape[1] != 64:
        raise ValueError(f"the digit classifier needs 8×8 images (64 values), got {y.shape[1]}")
    _check_model_space(y, "the images")
    net = digit_classifier()
    with torch.no_grad():
        probs = torch.softmax(net(y).double(), dim=1)
    counts = torch.bincount(probs.argmax(1), minlength=10)
    freq = counts.double() / counts.sum()
    nz = freq[freq > 0]
    entropy = float(-(nz * nz.log()).sum())
    return ClassHistogram(
        counts=tuple(int(c) for c in counts),
        covered=int((counts > 0).sum()),
        entropy=entropy,
        kl_uniform=math.log(10) - entropy,
        confidence=float(probs.max(1).values.mean()),
    )


# ---------------------------------------------------------------------------------------
# sample grid
# ---------------------------------------------------------------------------------------
def sample_grid(
    images: torch.Tensor | np.ndarray,
    path: str | Path,
    nrow: int | None = None,
    *,
    image_shape: tuple[int, ...] | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    scale: int = 4,
    pad: int = 1,
) -> Path:
    """Write a PNG grid of images, ``nrow`` per row (default ⌈√n⌉), each enlarged ``scale``×
    (nearest neighbour), ``pad`` white pixels between them. Images are (n, h, w), (n, h, w, c)
    or flattened (n, d) with ``image_shape`` (a square grey image when it is a square
    number); values in ``value_range`` map to 0…255, outside it they are clipped."""
    from PIL import Image

    a = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float64)
    if a.ndim == 2:
        if image_shape is None:
            side = math.isqrt(a.shape[1])
            if side * side != a.shape[1]:
                raise ValueError(f"give image_shape for flattened images of dimension {a.shape[1]}")
            image_shape = (side, side)
        a = a.reshape(a.shape[0], *image_shape)
    if a.ndim == 4 and a.shape[3] == 1:
        a = a[..., 0]
    if a.ndim not in (3, 4) or a.shape[0] == 0:
        raise ValueError(f"expected images (n, h, w) or (n, h, w, c), got shape {a.shape}")
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    a = np.nan_to_num(a, nan=lo)
    pix = np.round(np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)
    if scale > 1:
        pix = pix.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w = pix.shape[:3]
    ncol = nrow if nrow is not None else math.ceil(math.sqrt(n))
    if ncol < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    rows = math.ceil(n / ncol)
    canvas = np.full((pad + rows * (h + pad), pad + ncol * (w + pad), *pix.shape[3:]), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = pix[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


# ---------------------------------------------------------------------------------------
# everything at once
# ---------------------------------------------------------------------------------------
def evaluate_images(
    model_or_samples: Any,
    real_test: Dataset | torch.Tensor | np.ndarray,
    *,
    levels: int | None = None,
    image_shape: tuple[int, ...] | None = None,
    real_reference: torch.Tensor | np.ndarray | None = None,
    n_samples: int | None = None,
    features: FeatureSpec | str = "auto",
    k: int = 5,
    bpd_draws: int = 10,
    grid_path: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """All image metrics in one flat dict.

    ``model_or_samples``: a model (sampled ``n_samples`` times, default as many as real test
    images; bits/dim too when it has a log-density) or samples in model space.
    ``real_test``: a :class:`Dataset` (its ``test`` split, ``train`` as the real reference,
    its ``levels`` and ``image_shape``), or integer images with ``levels`` (continuous data in
    model space when ``levels`` is None). Real images are dequantized once with ``seed``.
    With the digit features, FD and PRDC are also given in pixel space (keys ``pixel_*``):
    the classifier's features are blind to what the labels do not need (pixel-shuffled
    digits keep a feature-space precision near 0.45), the pixels are not.
    ``real_reference`` (other real images, same units as ``real_test``): the same metrics of
    real against real at the same sample size, keys ``real_*`` — the floor to read the
    model's numbers against. ``features="auto"`` is "digits" for 8×8 images, else "pixels".
    """
    if isinstance(real_test, Dataset):
        ds = real_test
        if ds.train is None:
            raise ValueError(f"dataset {ds.name!r} is a target stream, not images")
        levels = ds.levels if levels is None else levels
        image_shape = ds.image_shape if image_shape is None else image_shape
        if ds.test is not None:
            real_test, real_reference = ds.test, ds.train if real_reference is None else real_reference
        else:
            real_test = ds.train
    real_raw = _flat(real_test).float()
    d = real_raw.shape[1]
    if image_shape is None:
        side = math.isqrt(d)
        image_shape = (side, side) if side * side == d else None
    if features == "auto":
        features = "digits" if tuple(image_shape or ()) == (8, 8) else "pixels"

    def to_model_space(x: torch.Tensor | np.ndarray, s: int) -> torch.Tensor:
        t = _flat(x).float()
        return dequantize(t, levels, torch.Generator().manual_seed(s)) if levels is not None else t

    real = to_model_space(real_raw, seed)
    n = int(n_samples) if n_samples is not None else real.shape[0]
    out: dict[str, Any] = {"n_real": int(real.shape[0]), "levels": levels}
    out["image_shape"] = list(image_shape) if image_shape else None
    if isinstance(model_or_samples, nn.Module) and hasattr(model_or_samples, "sample"):
        model = model_or_samples
        if getattr(model, "has_log_prob", False) and levels is not None:
            bpd = bits_per_dim(
                model, real_raw, levels, draws=bpd_draws, generator=torch.Generator().manual_seed(seed)
            )
            out.update(
                bits_per_dim=bpd.value,
                bits_per_dim_stderr=bpd.stderr,
                bits_per_dim_kind=bpd.kind,
                bits_per_dim_discrete_kind=bpd.discrete_kind,
                dequantization=bpd.protocol,
            )
        dev = getattr(model, "device", torch.device("cpu"))
        with torch.no_grad():
            fake = model.sample(n, generator=torch.Generator(device=dev).manual_seed(seed))
        fake = fake.detach().cpu().float()
    else:
        fake = _flat(model_or_samples).float()
    fake = fake.reshape(fake.shape[0], -1)
    if fake.shape[1] != d:
        raise ValueError(f"samples have dimension {fake.shape[1]}, the real images {d}")
    finite = torch.isfinite(fake).all(1)
    out["n_samples"] = int(fake.shape[0])
    out["nonfinite_fraction"] = float((~finite).double().mean())
    fake = fake[finite]
    out["feature_space"] = features if isinstance(features, str) or features is None else "callable"
    if features == "digits":
        info = digit_classifier().info
        out["classifier_version"] = info["version"]
        out["classifier_accuracy"] = info["test_accuracy"]

    def metrics(prefix: str, a: torch.Tensor, b: torch.Tensor) -> None:
        spaces: list[tuple[str, FeatureSpec]] = [("", features)]  # type: ignore[list-item]
        if features == "digits":  # classifier features ignore what the labels do not need
            spaces.append(("pixel_", "pixels"))
        for space, feats in spaces:
            out[prefix + space + "fd"] = frechet_distance(a, b, feats)
            prdc = precision_recall_density_coverage(a, b, k=k, features=feats)
            out.update(
                {
                    prefix + space + "precision": prdc.precision,
                    prefix + space + "recall": prdc.recall,
                    prefix + space + "density": prdc.density,
                    prefix + space + "coverage": prdc.coverage,
                }
            )
        if features == "digits":
            hist = class_histogram(b)
            out.update(
                {
                    prefix + "classes_covered": hist.covered,
                    prefix + "class_entropy": hist.entropy,
                    prefix + "class_kl_uniform": hist.kl_uniform,
                    prefix + "class_confidence": hist.confidence,
                }
            )
            if not prefix:
                out["class_counts"] = list(hist.counts)

    metrics("", real, fake)
    out["k"] = k
    out["coverage_expected_if_equal"] = expected_coverage(real.shape[0], fake.shape[0], k)
    if real_reference is not None:
        ref = to_model_space(real_reference, seed + 1)[: fake.shape[0]]
        metrics("real_", real, ref)
        out["n_real_reference"] = int(ref.shape[0])
    if grid_path is not None:
        out["grid_path"] = str(sample_grid(fake[:100], grid_path, image_shape=image_shape))
    return out
