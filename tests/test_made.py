"""MADE: the masks are autoregressive (exact zeros in the Jacobian, nonzero elsewhere), the
density model normalizes (quadrature in 2-D; an exact sum over all configurations for the
categorical one), sampling is reproducible, and a short run lowers the exact KL."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genmodels.distributions import get_target
from genmodels.evaluate import kl_to_truth
from genmodels.models import build_model
from genmodels.nets.made import MADE
from genmodels.train import TrainConfig, load_run, train

torch.set_num_threads(1)


def _randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize(("dim", "out", "depth"), [(2, 1, 1), (4, 3, 2), (5, 2, 3)])
def test_made_jacobian_is_strictly_lower_triangular(dim: int, out: int, depth: int) -> None:
    """∂ output_group_i / ∂ x_j is exactly 0 for j ≥ i and nonzero for j < i."""
    net = MADE(dim, out, hidden=16, depth=depth, activation="tanh").double()
    _randomize(net, seed=dim)
    x = torch.randn(dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x)  # (d, out, d)
    for i in range(dim):
        for j in range(dim):
            block = J[i, :, j]
            if j >= i:
                assert bool((block == 0).all()), (i, j)
            else:
                assert float(block.abs().min()) > 0, (i, j)


def test_made_masks_reach_every_earlier_input() -> None:
    """The connectivity (product of the masks) is exactly the strict lower triangle."""
    net = MADE(6, 2, hidden=8, depth=2)
    masks = [m.mask for m in net.net if hasattr(m, "mask")]
    conn = masks[0].T
    for m in masks[1:]:
        conn = conn @ m.T
    conn = (conn > 0).reshape(6, 6, 2)[..., 0]  # (input j, output group i)
    assert torch.equal(conn.T, torch.tril(torch.ones(6, 6, dtype=torch.bool), -1))


def test_continuous_log_prob_integrates_to_one() -> None:
    model = build_model("made", 2, {"components": 4, "hidden": 16})
    _randomize(model.made, seed=2, std=0.5)
    model.set_normalization(torch.tensor([0.3, -0.2]), torch.tensor([1.5, 0.7]))
    xs = torch.linspace(-30, 30, 1201)
    X, Y = torch.meshgrid(xs, xs, indexing="ij")
    with torch.no_grad():
        q = model.log_prob(torch.stack([X.ravel(), Y.ravel()], 1)).values.double().exp()
    assert abs(float(q.sum() * (xs[1] - xs[0]) ** 2) - 1) < 3e-3


def test_categorical_mass_sums_to_one_and_density_is_consistent() -> None:
    d, levels = 3, 4
    model = build_model("made", d, {"levels": levels, "hidden": 8}).double()
    _randomize(model.made, seed=3, std=1.0)
    k = torch.tensor(list(itertools.product(range(levels), repeat=d)), dtype=torch.float64)
    y = (k + 0.37) / levels  # a point inside each cell
    with torch.no_grad():
        mass = model.log_prob(y, output="mass")
        dens = model.log_prob(y)
    assert mass.kind == dens.kind == "exact"
    torch.testing.assert_close(mass.values.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    assert float(mass.values.std()) > 0.1  # not uniform
    # density of the dequantized data = mass / (bin width)^d
    torch.testing.assert_close(dens.values, mass.values + d * math.log(levels))
    torch.testing.assert_close(model.log_mass(k.long()), mass.values)
    # outside [0, 1)^d there is no mass
    assert bool(torch.isneginf(model.log_prob(torch.full((1, d), 1.2, dtype=torch.float64)).values).all())


def test_categorical_samples_follow_the_mass() -> None:
    d, levels = 2, 3
    model = build_model("made", d, {"levels": levels, "hidden": 8}).double()
    _randomize(model.made, seed=4, std=1.0)
    n = 20_000
    y = model.sample(n, generator=torch.Generator().manual_seed(0))
    assert bool(((y >= 0) & (y < 1)).all())
    k = torch.floor(y * levels).long()
    counts = torch.bincount(k[:, 0] * levels + k[:, 1], minlength=levels**d).double()
    cells = torch.tensor(list(itertools.product(range(levels), repeat=d)))
    p = model.log_mass(cells).exp().detach()
    se = torch.sqrt(p * (1 - p) / n)
    assert bool(((counts / n - p).abs() < 4 * se + 1e-4).all())


def test_sampling_with_a_generator_is_reproducible() -> None:
    for opts in ({"components": 3, "hidden": 16}, {"levels": 5, "hidden": 16}):
        model = build_model("made", 3, opts)
        _randomize(model.made)
        a = model.sample(40, generator=torch.Generator().manual_seed(7))
        b = model.sample(40, generator=torch.Generator().manual_seed(7))
        c = model.sample(40, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_short_training_lowers_kl_and_round_trips(tmp_path) -> None:
    target = get_target("8gaussians")
    options = {"components": 8, "hidden": 64}
    config = TrainConfig(steps=800, batch_size=256, lr=3e-3, progress=False, seed=0)
    result = train("made", "8gaussians", config, options=options, out=tmp_path / "run")
    kl = kl_to_truth(result.model, target, n=10_000, generator=torch.Generator().manual_seed(11))
    assert kl.kind == "exact"
    assert kl.value < 0.5, kl
    untrained = build_model("made", 2, options)
    kl0 = kl_to_truth(untrained, target, n=10_000, generator=torch.Generator().manual_seed(11))
    assert kl0.value > 1.0, kl0
    reloaded, _ = load_run(tmp_path / "run")
    x = target.sample(100, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.log_prob(x).values, result.model.log_prob(x).values)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"components": 0}, "components"), ({"levels": 1}, "levels"), ({"activation": "swish"}, "activation")],
)
def test_bad_options_are_one_line_errors(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model("made", 2, options)


def test_levels_expects_dequantized_data() -> None:
    model = build_model("made", 2, {"levels": 4})
    with pytest.raises(ValueError, match="dequantized"):
        model.prepare(torch.tensor([[0.5, 2.0]]), torch.Generator())
