"""The optional logit preprocessing (``ModelConfig.logit``, RealNVP §4.1, MAF §4.3): its
densities stay exact densities of y (quadrature, autograd Jacobian), its maps invert each
other, its samples agree with its density, checkpoints keep it, and off it changes nothing."""

from __future__ import annotations

import math

import pytest
import torch

from genmodels.data import Dataset
from genmodels.models import build_model
from genmodels.models.base import logit_transform
from genmodels.models.realnvp import RealNVP, RealNVPConfig
from genmodels.train import TrainConfig, load_run, restore_model, standardize_from, train

LAM = 0.05
WIDE = LAM / (1 - 2 * LAM)  # the density of y lives on (−WIDE, 1 + WIDE) per coordinate


def _box(dim: int, n: int = 4000, seed: int = 0) -> Dataset:
    """Uniform data on the unit box [0, 1]^dim."""
    g = torch.Generator().manual_seed(seed)
    return Dataset(name="box", dim=dim, train=torch.rand(n, dim, generator=g, dtype=torch.float64))


def _randomized(family: str, dim: int, options: dict, seed: int = 0):
    """A float64 model with random (not identity) weights, standardized on the box data."""
    model = build_model(family, dim, options, seed=seed).double()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    standardize_from(model, _box(dim), seed=0)
    return model


def _realnvp(dim: int = 2, lam: float = LAM, seed: int = 0) -> RealNVP:
    return _randomized("realnvp", dim, {"layers": 4, "hidden": 16, "logit": lam}, seed)


def _midpoints(lo: float, hi: float, n: int) -> tuple[torch.Tensor, float]:
    h = (hi - lo) / n
    return lo + h * (torch.arange(n, dtype=torch.float64) + 0.5), h


def _mass_2d(model, lo: float, hi: float, n: int) -> float:
    """∫ p over [lo, hi]² by the midpoint rule (n² cells)."""
    xs, h = _midpoints(lo, hi, n)
    X, Y = torch.meshgrid(xs, xs, indexing="ij")
    with torch.no_grad():
        lp = model.log_prob(torch.stack([X.ravel(), Y.ravel()], 1)).values
    return float(lp.exp().sum() * h * h)


def _support_grid(n: int, T: float = 7.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes y and log-weights of ∫ over the whole support (−λ', 1 + λ') by the substitution
    y = −λ' + (1 + 2λ')Φ(τ), midpoint rule in τ ∈ [−T, T]. The density of y piles up within
    e^{−|s|} of the support's edges (the far tails of s), which a uniform grid in y cannot
    resolve; this probit substitution (not the model's logit) stretches them."""
    tau, h = _midpoints(-T, T, n)
    y = -WIDE + (1 + 2 * WIDE) * torch.special.ndtr(tau)
    log_w = math.log((1 + 2 * WIDE) * h) - 0.5 * tau**2 - 0.5 * math.log(2 * math.pi)
    return y, log_w


def _support_mass(model, n: int) -> float:
    y, log_w = _support_grid(n)
    if model.dim == 1:
        pts, lw = y[:, None], log_w
    else:
        Y1, Y2 = torch.meshgrid(y, y, indexing="ij")
        W1, W2 = torch.meshgrid(log_w, log_w, indexing="ij")
        pts, lw = torch.stack([Y1.ravel(), Y2.ravel()], 1), (W1 + W2).ravel()
    with torch.no_grad():
        return float((model.log_prob(pts).values + lw).exp().sum())


def test_log_prob_integrates_to_one_2d() -> None:
    """∫ p(y) dy = 1 over the support (−λ', 1 + λ')²; the error allowed is a few times the
    change when the grid is halved (the rule's own error estimate) plus the mass of s beyond
    the grid (|s| > 27, below 1e-4 for this flow: the mass is 0.99998 at T = 7, 0.9999 at 6)."""
    model = _realnvp()
    coarse, fine = _support_mass(model, 200), _support_mass(model, 400)
    err = abs(fine - coarse)
    assert err < 1e-3
    assert abs(fine - 1) < 4 * err + 1e-4, (fine, coarse)


def test_log_prob_integrates_to_one_1d() -> None:
    model = _randomized("maf", 1, {"logit": LAM, "hidden": 16}, seed=1)
    coarse, fine = _support_mass(model, 2000), _support_mass(model, 4000)
    err = abs(fine - coarse)
    assert err < 1e-3
    assert abs(fine - 1) < 4 * err + 1e-4, (fine, coarse)


def test_samples_agree_with_the_density_on_the_unit_box() -> None:
    """The fraction of samples in [0, 1]² equals the density's mass there (which is < 1: the
    model also puts mass in the margin of width λ/(1 − 2λ)), within 4 binomial std errors."""
    model = _realnvp(seed=2)
    inside = _mass_2d(model, 0.0, 1.0, 400)
    n = 40_000
    with torch.no_grad():
        x = model.sample(n, generator=torch.Generator().manual_seed(0))
    assert bool(((x > -WIDE) & (x < 1 + WIDE)).all())
    assert bool(torch.isfinite(model.log_prob(x).values).all())
    frac = float(((x >= 0) & (x <= 1)).all(1).double().mean())
    se = math.sqrt(inside * (1 - inside) / n)
    assert 0.5 < inside < 0.999
    assert abs(frac - inside) < 4 * se + 1e-3, (frac, inside)


def test_jacobian_matches_autograd() -> None:
    """log_det_normalize = log|det ∂u/∂x| of normalize (autograd), and log_prob is
    _log_prob(normalize(x)) plus exactly that term."""
    model = _realnvp(dim=3, lam=0.1, seed=3)
    x = torch.rand(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x[0] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)  # the edges of [0, 1] too
    logdet = model.log_det_normalize(x)
    for i in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(lambda v: model.normalize(v[None])[0], x[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(J).logabsdet, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        expected = model._log_prob(model.normalize(x)).values + logdet
        torch.testing.assert_close(model.log_prob(x).values, expected, rtol=1e-12, atol=1e-12)


def test_transform_formula() -> None:
    y = torch.tensor([[0.0, 0.3, 1.0]], dtype=torch.float64)
    s, ld = logit_transform(y, LAM)
    p = LAM + (1 - 2 * LAM) * y
    torch.testing.assert_close(s, torch.logit(p))
    torch.testing.assert_close(ld, (math.log(1 - 2 * LAM) - torch.log(p) - torch.log1p(-p)).sum(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip(dtype: torch.dtype) -> None:
    model = _realnvp().to(dtype)
    x = torch.rand(200, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    x[:2] = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(model.denormalize(model.normalize(x)), x, rtol=0, atol=tol)
    u = torch.randn(200, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(dtype)
    torch.testing.assert_close(model.normalize(model.denormalize(u)), u, rtol=1e-4, atol=tol * 100)


def test_far_tail_samples_stay_inside_the_support() -> None:
    """u far in the tails (where σ(s) rounds to 0 or 1 in float32) still maps strictly inside
    the support, so log_prob of every sample is finite."""
    model = _realnvp().float()
    u = torch.tensor([[-1e4, 1e4], [60.0, -60.0]])
    x = model.denormalize(u)
    assert bool(((x > -WIDE) & (x < 1 + WIDE)).all())
    assert bool(torch.isfinite(model.log_prob(x).values).all())


def test_standardize_on_the_transformed_data() -> None:
    model = build_model("realnvp", 2, {"logit": LAM})
    data = _box(2)
    standardize_from(model, data, seed=0)
    s = torch.logit(LAM + (1 - 2 * LAM) * data.sample_reference(10_000, 0))
    torch.testing.assert_close(model.shift, s.mean(0).float())
    torch.testing.assert_close(model.scale, s.std(0).float())
    bad = Dataset(name="wide", dim=2, train=2 * data.train)
    with pytest.raises(ValueError, match=r"logit=0.05 needs data in \[0, 1\]"):
        standardize_from(build_model("realnvp", 2, {"logit": LAM}), bad, seed=0)


def test_values_outside_the_support_are_refused() -> None:
    model = _realnvp()
    with pytest.raises(ValueError, match=r"expects data in \[0, 1\]") as err:
        model.log_prob(torch.tensor([[0.5, 1.2]], dtype=torch.float64))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("lam", [0.5, -0.01, 1.0, True, float("nan"), "0.1"])
def test_bad_lambda_is_a_one_line_error(lam) -> None:
    with pytest.raises(ValueError, match=r"logit must be 0 \(off\) or a number λ in \(0, 0.5\)") as err:
        build_model("realnvp", 2, {"logit": lam})
    assert "\n" not in str(err.value)
    config = RealNVPConfig()
    config.logit = lam  # set after construction: the model checks it again
    with pytest.raises(ValueError, match="logit must be"):
        RealNVP(2, config)


@pytest.mark.parametrize(
    ("family", "options", "why"),
    [
        ("ebm", {}, "energy"),
        ("diffusion", {}, "score"),
        ("coop", {}, "energy"),
        ("made", {"levels": 17}, "levels"),
    ],
)
def test_families_that_would_be_inexact_refuse(family: str, options: dict, why: str) -> None:
    with pytest.raises(ValueError, match=f"logit is not available for the {family} family.*{why}") as err:
        build_model(family, 2, {**options, "logit": LAM})
    assert "\n" not in str(err.value)


def test_off_is_bit_identical_to_the_affine_standardization() -> None:
    model = _randomized("realnvp", 2, {"layers": 4, "hidden": 16}, seed=7)
    assert model.config.logit == 0.0 and model.logit_lambda == 0.0
    model.set_normalization(torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([1.5, 0.7]).double())
    x = 3 * torch.randn(50, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    u = (x - model.shift) / model.scale
    assert torch.equal(model.normalize(x), u)
    assert torch.equal(model.denormalize(u), u * model.scale + model.shift)
    with torch.no_grad():
        expected = model._log_prob(u).values - torch.log(model.scale).sum()
        assert torch.equal(model.log_prob(x).values, expected)


def test_checkpoint_keeps_logit_and_old_checkpoints_load_without(tmp_path) -> None:
    box = _box(2, n=600)
    data = Dataset(name="box", dim=2, train=box.train.float())
    config = TrainConfig(steps=6, batch_size=64, validate_every=3, progress=False, seed=0)
    options = {"logit": LAM, "layers": 2, "hidden": 8}
    res = train("realnvp", data, config, out=tmp_path / "run", options=options)
    model, _ = load_run(tmp_path / "run")
    assert model.config.logit == LAM
    x = data.train[:100]
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x).values, res.model.log_prob(x).values)
    # a record written before the option existed: no "logit" → off
    old = build_model("realnvp", 2, {"layers": 2, "hidden": 8}, seed=1)
    saved = {k: v for k, v in vars(old.config).items() if k != "logit"}
    record = {"family": "realnvp", "model_config": saved, "data": {"dim": 2}}
    tensors = {f"model.{k}": v for k, v in old.state_dict().items()}
    back = restore_model(record, tensors)
    assert back.config.logit == 0.0
    with torch.no_grad():
        assert torch.equal(back.log_prob(x.float()).values, old.log_prob(x.float()).values)
