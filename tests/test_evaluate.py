"""Metrics against the truth: KL (log-prob and grid paths), NLL, mode metrics, two-sample tests."""

from __future__ import annotations

import doctest
import json
import math
from typing import Any

import numpy as np
import pytest
import torch

import genmodels.evaluate as evaluate
from genmodels.counting import Grid2D
from genmodels.distributions import GaussianMixture, get_target
from genmodels.distributions.base import Target
from genmodels.evaluate import (
    KLResult,
    energy_distance,
    evaluate_model,
    heldout_nll,
    kl_to_truth,
    mmd,
    mode_metrics,
    target_cell_masses,
    target_mode_metrics,
)
from genmodels.models.base import Model, NotSupportedError
from genmodels.types import Kind, LogDensity

HQ_EXACT = 1.0 - math.exp(-4.5)  # P(χ²₂ ≤ 9), the HQ share of exact samples


def test_doctests() -> None:
    result = doctest.testmod(evaluate)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------------------
# small fake models and targets
# ---------------------------------------------------------------------------------------
class TargetModel(Model):
    """Samples a target exactly; log q = log p + shift, reported with ``kind``."""

    family = "fake-exact"
    has_log_prob = True

    def __init__(self, target: Target, kind: Kind = "exact", shift: float = 0.0) -> None:
        super().__init__(target.dim)
        self.target, self.kind, self.offset = target, kind, shift

    def sample(self, n: int, *, generator: torch.Generator | None = None, **_: Any) -> torch.Tensor:
        return self.target.sample(n, generator=generator)

    def log_prob(self, x: torch.Tensor) -> LogDensity:
        return LogDensity(self.target.log_prob(x).double() + self.offset, self.kind)


class SampleOnly(Model):
    """Only samples (like a GAN): exact samples of ``target``, optionally shifted."""

    family = "fake-sampler"
    has_log_prob = False

    def __init__(self, target: Target, shift: float = 0.0) -> None:
        super().__init__(target.dim)
        self.target, self.offset = target, shift

    def sample(self, n: int, *, generator: torch.Generator | None = None, **_: Any) -> torch.Tensor:
        return self.target.sample(n, generator=generator) + self.offset


def collapsed(target: GaussianMixture, k: int = 0) -> SampleOnly:
    """A sampler stuck on mode k of a mixture: N(μ_k, σ² I)."""
    return SampleOnly(GaussianMixture(target.means[k : k + 1], target.mode_std))


class IsoGaussian(Target):
    """N(mean, std² I) in d dimensions: a target with a closed-form KL to any other."""

    def __init__(self, mean: list[float], std: float) -> None:
        self.mean, self.std, self.dim = torch.tensor(mean, dtype=torch.float64), std, len(mean)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.mean + self.std * z).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double() - self.mean) / self.std
        return -0.5 * (z**2).sum(-1) - self.dim * math.log(self.std * math.sqrt(2 * math.pi))


def kl_gauss(p: IsoGaussian, q: IsoGaussian) -> float:
    """KL(N(μ_p, s_p² I) ‖ N(μ_q, s_q² I)) in closed form."""
    d, r = p.dim, (p.std / q.std) ** 2
    return 0.5 * (d * r + float(((p.mean - q.mean) ** 2).sum()) / q.std**2 - d - d * math.log(r))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------
# KL by log-prob
# ---------------------------------------------------------------------------------------
def test_kl_of_the_target_itself_is_zero() -> None:
    t = get_target("8gaussians")
    r = kl_to_truth(TargetModel(t), t, n=2000, generator=gen(0))
    assert isinstance(r, KLResult)
    assert (r.value, r.stderr, r.kind, r.method, r.n) == (0.0, 0.0, "exact", "log_prob", 2000)
    assert r.details["nll"] == pytest.approx(t.entropy(), abs=4 * r.details["nll_stderr"])


def test_kl_matches_closed_form_and_direction() -> None:
    """KL(p‖q) of two 3-D Gaussians within 3 standard errors of the closed form."""
    p, q = IsoGaussian([0.0, 0.0, 0.0], 1.0), IsoGaussian([0.3, -0.2, 0.1], 1.3)
    r = kl_to_truth(TargetModel(q), p, n=20_000, generator=gen(1))
    assert r.kind == "exact" and 0 < r.stderr < 0.01
    assert abs(r.value - kl_gauss(p, q)) < 3 * r.stderr
    assert abs(r.value - kl_gauss(q, p)) > 10 * r.stderr  # not the reverse KL


@pytest.mark.parametrize(
    ("kind", "shift", "kl_kind", "nll_kind"),
    [
        ("lower_bound", -0.3, "upper_bound", "upper_bound"),  # an ELBO
        ("upper_bound", 0.2, "lower_bound", "lower_bound"),
        ("estimate", 0.0, "estimate", "estimate"),
    ],
)
def test_kind_flips_for_bounds(kind: Kind, shift: float, kl_kind: str, nll_kind: str) -> None:
    t = get_target("8gaussians")
    model = TargetModel(t, kind=kind, shift=shift)
    r = kl_to_truth(model, t, n=1000, generator=gen(2))
    assert r.kind == kl_kind
    assert r.value == pytest.approx(-shift, abs=1e-9)
    nll = heldout_nll(model, t.sample(500, gen(3)))
    assert nll.kind == nll_kind


class HalfPlane(TargetModel):
    """log q = −inf on x₀ > 1 (the model puts no mass there)."""

    def log_prob(self, x: torch.Tensor) -> LogDensity:
        lq = self.target.log_prob(x).double()
        return LogDensity(torch.where(x[:, 0] > 1, -math.inf, lq), "exact")


def test_zero_model_density_gives_inf_not_nan() -> None:
    t = get_target("8gaussians")
    r = kl_to_truth(HalfPlane(t), t, n=1000, generator=gen(4))
    assert r.value == math.inf and r.stderr == math.inf
    assert r.details["n_log_q_neg_inf"] > 0
    assert heldout_nll(HalfPlane(t), t.sample(1000, gen(5))).mean == math.inf


class LeakyTarget(IsoGaussian):
    """A sampler that (like rounding at a support edge) returns a point where log p = −inf."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x = super().sample(n, generator)
        x[0] = 99.0
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        lp = super().log_prob(x)
        return torch.where(x[:, 0] == 99.0, -math.inf, lp)


def test_points_with_zero_target_density_are_dropped() -> None:
    t = LeakyTarget([0.0, 0.0], 1.0)
    r = kl_to_truth(TargetModel(t), t, n=500, generator=gen(6))  # log p = log q = −inf there
    assert r.value == 0.0 and r.n == 499 and r.details["n_dropped"] == 1


def test_heldout_nll_of_exact_model_is_the_entropy() -> None:
    p = IsoGaussian([0.5, -1.0], 0.7)
    res = heldout_nll(TargetModel(p), p.sample(20_000, gen(7)))
    entropy = p.dim * (0.5 * math.log(2 * math.pi * math.e) + math.log(p.std))
    mean, stderr, kind = res  # a plain tuple too
    assert kind == "exact" and abs(mean - entropy) < 3 * stderr


# ---------------------------------------------------------------------------------------
# KL by counting on a grid
# ---------------------------------------------------------------------------------------
def test_grid_kl_of_exact_samples_is_at_its_null_floor() -> None:
    """Exact samples score the estimator's exact null expectation within 3 bootstrap SEs."""
    t = get_target("8gaussians")
    r = kl_to_truth(SampleOnly(t), t, n=20_000, generator=gen(8))
    assert (r.kind, r.method, r.n) == ("estimate", "grid", 20_000)
    floor = r.details["null_bias"]
    assert 0 < floor < 0.1 and 0 < r.stderr < 0.01
    assert abs(r.value - floor) < 3 * r.stderr
    # a model collapsed on one mode, or shifted by 0.3, is far above the floor
    for wrong in (collapsed(t), SampleOnly(t, shift=0.3)):
        w = kl_to_truth(wrong, t, n=20_000, generator=gen(9))
        assert w.value - w.details["null_bias"] > 0.2
        assert w.value - w.details["null_bias"] > 30 * w.stderr


def test_grid_kl_measures_the_same_kl_as_log_prob() -> None:
    """A mixture widened by 10 %: the grid excess over its floor ≈ the log-prob KL (≈ 0.017)."""
    t = get_target("8gaussians")
    wide = GaussianMixture(t.means, 1.1 * t.mode_std)
    exact = kl_to_truth(TargetModel(wide), t, n=20_000, generator=gen(10))
    grid = kl_to_truth(SampleOnly(wide), t, n=100_000, generator=gen(11), n_boot=50)
    excess = grid.value - grid.details["null_bias"]
    assert 0.01 < exact.value < 0.025
    # coarse cells can only lose KL (data processing); allow 30 % of it plus sampling noise
    assert abs(excess - exact.value) < 0.3 * exact.value + 3 * (grid.stderr + exact.stderr)


def test_grid_kl_counts_samples_off_the_box() -> None:
    """Every sample off the box: Q̂ is α/(n + α(C+1)) on every cell where P lives, so the
    estimate sits exactly at its ceiling log((n + α(C+1))/α) − H(P_grid)."""
    t = get_target("grid25")
    n, bins = 2000, 50
    r = kl_to_truth(SampleOnly(t, shift=10.0), t, n=n, generator=gen(12), bins=bins, n_boot=10)
    assert r.details["outside_fraction"] == 1.0
    P = target_cell_masses(t, Grid2D.regular(*t.box, bins))
    P = P[P > 0] / P.sum()
    ceiling = math.log((n + 0.5 * (bins * bins + 1)) / 0.5) + float((P * np.log(P)).sum())
    assert r.value == pytest.approx(ceiling, rel=1e-6)


def test_no_density_in_more_than_two_dimensions_raises() -> None:
    t = IsoGaussian([0.0, 0.0, 0.0], 1.0)
    with pytest.raises(NotSupportedError, match="only in 2-D"):
        kl_to_truth(SampleOnly(t), t, n=100)
    with pytest.raises(NotSupportedError):
        heldout_nll(SampleOnly(t), t.sample(10, gen(0)))


def test_randomness_only_through_the_generator() -> None:
    t = get_target("8gaussians")
    state = torch.get_rng_state()
    a = kl_to_truth(SampleOnly(t), t, n=2000, generator=gen(13), n_boot=20)
    b = kl_to_truth(SampleOnly(t), t, n=2000, generator=gen(13), n_boot=20)
    assert torch.equal(state, torch.get_rng_state())
    assert (a.value, a.stderr) == (b.value, b.stderr)


# ---------------------------------------------------------------------------------------
# mode metrics
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "k"), [("ring8", 8), ("grid25", 25)])
def test_exact_samples_capture_every_mode(name: str, k: int) -> None:
    t = get_target(name)
    n = 2500
    m = target_mode_metrics(t.sample(n, gen(14)), t)
    assert (m.modes, m.n_modes) == (k, k)
    assert abs(m.hq_fraction - HQ_EXACT) < 3 * math.sqrt(HQ_EXACT * (1 - HQ_EXACT) / n)
    # multinomial spread over K equal modes: E[KL] ≈ (K−1)/(2 n_hq), sd ≈ √(2(K−1))/(2 n_hq)
    n_hq = m.hq_fraction * n
    assert 0 <= m.reverse_kl < ((k - 1) + 4 * math.sqrt(2 * (k - 1))) / (2 * n_hq)


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_collapsed_model_captures_one_mode(name: str) -> None:
    t = get_target(name)
    m = target_mode_metrics(collapsed(t, k=3).sample(2500, generator=gen(15)), t)
    assert (m.modes, m.n_modes) == (1, t.mode_centers.shape[0])
    assert m.reverse_kl == pytest.approx(math.log(m.n_modes), abs=1e-12)
    assert m.hq_counts[3] == round(m.hq_fraction * 2500)


def test_mode_metrics_by_hand() -> None:
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    std = 1.0
    x = torch.tensor(
        [[0.0, 0.0], [2.9, 0.0], [0.0, -3.0], [10.0, 1.0], [3.1, 0.0], [7.0, 7.0]]
    )  # HQ: 3 at mode 0 (3σ inclusive), 1 at mode 1; [3.1, 0] and [7, 7] are not HQ
    m = mode_metrics(x, centers, std)
    assert (m.modes, m.n_modes, m.hq_counts) == (2, 4, (3, 1, 0, 0))
    assert m.hq_fraction == pytest.approx(4 / 6)
    # h = (3/4, 1/4, 0, 0); KL(h ‖ uniform) = Σ h log(4h), empty modes add 0
    assert m.reverse_kl == pytest.approx(0.75 * math.log(3.0), rel=1e-12)
    assert math.isnan(mode_metrics(x[4:], centers, std).reverse_kl)  # no HQ sample at all


# ---------------------------------------------------------------------------------------
# two-sample distances
# ---------------------------------------------------------------------------------------
def test_energy_distance_and_mmd_by_hand() -> None:
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0], [3.0]])
    # 2·mean|x−y| − mean_{i≠j}|x−x'| − mean_{i≠j}|y−y'| = 2·2 − 1 − 1
    assert energy_distance(x, y) == pytest.approx(2.0)
    k1, k2, k3 = (math.exp(-(d**2) / 2) for d in (1.0, 2.0, 3.0))
    expected = k1 + k1 - 2 * (k2 + k3 + k1 + k2) / 4
    assert mmd(x, y, bandwidth=1.0) == pytest.approx(expected, rel=1e-12)
    assert mmd(x, y, bandwidth=[1.0, 2.0]) > mmd(x, y, bandwidth=1.0)


@pytest.mark.parametrize("stat", [energy_distance, mmd])
def test_two_sample_statistics_are_unbiased_and_detect_a_shift(stat: Any) -> None:
    """Over 100 pairs of independent same-law samples the mean is 0 within 3 SE (unbiased:
    a V-statistic's +O(1/n) bias is ≈ 5 SE here); a sample shifted by 1.5 (≈ 4 mode widths)
    lies far outside that null spread."""
    t = get_target("8gaussians")
    g = gen(16)
    reps = 100
    null = torch.tensor([stat(t.sample(200, g), t.sample(200, g)) for _ in range(reps)])
    mean, sd = float(null.mean()), float(null.std())
    assert abs(mean) < 3 * sd / math.sqrt(reps)
    shifted = stat(t.sample(200, g), t.sample(200, g) + torch.tensor([1.5, 0.0]))
    assert shifted > mean + 10 * sd


# ---------------------------------------------------------------------------------------
# everything at once
# ---------------------------------------------------------------------------------------
def test_evaluate_model_gathers_every_metric() -> None:
    ring = get_target("ring8")
    out = evaluate_model(SampleOnly(ring), ring, n=5000, generator=gen(17))
    json.dumps(out)  # plain types only
    assert out["kl_method"] == "grid" and out["kl_kind"] == "estimate"
    assert abs(out["kl"] - out["kl_null_bias"]) < 3 * out["kl_stderr"]
    assert (out["modes"], out["n_modes"]) == (8, 8) and out["hq_fraction"] > 0.97
    assert out["n_samples"] == 5000 and abs(out["energy_distance"]) < 0.01

    t = get_target("8gaussians")
    out = evaluate_model(TargetModel(t, "lower_bound", -0.1), t, n=3000, generator=gen(18))
    assert out["kl_method"] == "log_prob" and out["kl_kind"] == "upper_bound"
    assert out["kl"] == pytest.approx(0.1) and "nll" in out and out["modes"] == 8
    assert all(isinstance(v, str | int | float) for v in out.values())
    full = evaluate_model(TargetModel(t), t, n=3000, generator=gen(18), summary=False)
    assert sum(full["hq_counts"]) == round(full["hq_fraction"] * 2500)
    assert full["kl_details"]["nll"] == full["nll"]
