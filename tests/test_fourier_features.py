"""Random Fourier features (nets/mlp.py) and the EBM's energy on them: the features' values and
frequencies, the smoothing identity E sin(b·(u + σε)) = e^{−σ²‖b‖²/2} sin(b·u), and that the
EBM smooths them at the data-noise level and restores them from its state."""

from __future__ import annotations

import math

import pytest
import torch

from genmodels.distributions import get_target
from genmodels.models.ebm import EBM, EBMConfig, fourier_features
from genmodels.nets.mlp import RandomFourierFeatures


def test_features_are_x_then_sin_and_cos_of_isotropic_gaussian_projections():
    torch.manual_seed(0)
    rff = RandomFourierFeatures(2, features=4000, scale=3.0)
    assert rff.B.shape == (4000, 2) and rff.out_dim == 2 + 2 * 4000
    x = torch.randn(5, 2)
    out = rff(x)
    torch.testing.assert_close(out[:, :2], x)
    torch.testing.assert_close(out[:, 2:4002], torch.sin(x @ rff.B.T))
    torch.testing.assert_close(out[:, 4002:], torch.cos(x @ rff.B.T))
    # entries N(0, 3²): the sample std of 8000 entries is within 4 standard errors of 3
    n = rff.B.numel()
    assert abs(float(rff.B.std()) - 3.0) < 4 * 3.0 / math.sqrt(2 * n)
    assert abs(float(rff.B.mean())) < 4 * 3.0 / math.sqrt(n)
    # no preferred direction: the angles of the frequency vectors are uniform (mean resultant
    # length of the doubled angles ~ 1/sqrt(n) for an isotropic law, 1 for axis-aligned ones)
    angle = torch.atan2(rff.B[:, 1], rff.B[:, 0])
    resultant = torch.stack([torch.cos(4 * angle).mean(), torch.sin(4 * angle).mean()]).norm()
    assert float(resultant) < 4 / math.sqrt(rff.B.shape[0])
    with pytest.raises(ValueError, match="features >= 1"):
        RandomFourierFeatures(2, 0, 1.0)
    with pytest.raises(ValueError, match="scale > 0"):
        RandomFourierFeatures(2, 3, 0.0)


def test_smoothing_is_the_gaussian_average_of_the_features():
    torch.manual_seed(1)
    rff = RandomFourierFeatures(2, features=8, scale=4.0)
    x = torch.randn(3, 2, dtype=torch.float64)
    rff.B = rff.B.double()
    sigma, n = 0.2, 200_000
    eps = torch.randn(n, 1, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mc = rff((x + sigma * eps).reshape(-1, 2)).reshape(n, 3, -1)
    mean, stderr = mc.mean(0), mc.std(0) / math.sqrt(n)
    rff.smoothing = sigma
    smoothed = rff(x)
    assert ((smoothed[:, 2:] - mean[:, 2:]).abs() < 5 * stderr[:, 2:] + 1e-12).all()
    # and the damping is real: some features of these frequencies lose more than half
    damp = torch.exp(-0.5 * sigma**2 * (rff.B**2).sum(-1))
    assert float(damp.min()) < 0.5
    rff.smoothing = 0.0
    torch.testing.assert_close(rff(x)[:, 2:10], torch.sin(x @ rff.B.T))


def _ebm(**options) -> EBM:
    torch.manual_seed(0)
    config = EBMConfig(method="mle", hidden=16, depth=1, mcmc_steps=2, buffer_size=64, **options)
    model = EBM(2, config)
    x = get_target("8gaussians").sample(1000, generator=torch.Generator().manual_seed(0))
    model.prepare(x, torch.Generator())
    return model


def test_the_ebm_smooths_its_features_at_the_data_noise_level_and_restores_them():
    model = _ebm(fourier_features=8, fourier_scale=16.0)
    u = torch.randn(50, 2)
    assert torch.equal(model.f(u), torch.zeros(50))  # zero output layer: f starts at 0
    model.plan(100)
    features = model.f_net[0]
    model.f(u)
    assert features.smoothing == pytest.approx(0.3)  # σ₀ at update 0
    model.updates.fill_(60)  # past the annealing half of the run
    model.f(u)
    assert features.smoothing == 0.0
    sharp = _ebm(fourier_features=8, fourier_scale=16.0, fourier_smoothing=False)
    sharp.plan(100)
    sharp.f(u)
    assert sharp.f_net[0].smoothing == 0.0
    # the frequencies are part of the state: a fresh model with other random B gets them back
    torch.manual_seed(123)
    fresh = EBM(2, model.config)
    assert not torch.equal(fresh.f_net[0].B, features.B)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(fresh.f_net[0].B, features.B)
    with pytest.raises(ValueError, match="fourier_features"):
        EBM(2, EBMConfig(fourier_features=-2))
    with pytest.raises(ValueError, match="fourier_scale"):
        EBM(2, EBMConfig(fourier_features=4, fourier_scale=float("nan")))


@pytest.mark.parametrize(
    "options, dim, expected",
    [
        ({"method": "mle"}, 2, 64),  # persistent chains, annealed data noise: on
        ({"method": "cd"}, 1, 64),
        ({"method": "mle", "chains": "short-run"}, 2, 0),  # chains that never explore: off
        ({"method": "mle", "data_noise": 0.0}, 2, 0),  # nothing brings the frequencies in: off
        ({"method": "nce"}, 2, 0),
        ({"method": "mle"}, 3, 0),  # not measured beyond 2-D
        ({"method": "mle", "energy": "quadratic"}, 2, 0),
        ({"method": "nce", "fourier_features": 8}, 2, 8),  # explicit counts are kept
        ({"method": "mle", "fourier_features": 0}, 2, 0),
    ],
)
def test_auto_fourier_features_only_where_the_data_noise_anneals_in_low_dimension(options, dim, expected):
    assert fourier_features(EBMConfig(**options), dim) == expected
    model = EBM(dim, EBMConfig(**{"buffer_size": 8, **options}))
    features = [m for m in model.modules() if isinstance(m, RandomFourierFeatures)]
    assert [f.B.shape for f in features] == ([(expected, dim)] if expected else [])


def test_mle_and_cd_train_at_a_lower_default_learning_rate():
    assert EBM.train_defaults_for()["lr"] == EBM.train_defaults["lr"] == 1e-2  # nce, the default method
    assert EBM.train_defaults_for({"method": "mle"})["lr"] == 3e-3
    assert EBM.train_defaults_for({"method": "cd"})["lr"] == 3e-3
    assert EBM.train_defaults_for({"method": "nce"})["lr"] == 1e-2


def test_a_short_run_restores_with_the_same_smoothing(tmp_path):
    """The noise schedule's horizon is checkpointed: a run shorter than the family's default
    steps, loaded again, has annealed its features to full sharpness as in training (with the
    default horizon after loading, its f would still be smoothed)."""
    from genmodels.train import TrainConfig, load_run, train

    opts = {"method": "mle", "hidden": 16, "depth": 1, "mcmc_steps": 2, "buffer_size": 64}
    model = train(
        "ebm", "8gaussians", TrainConfig(steps=40, progress=False), out=tmp_path, options=opts
    ).model
    assert model._fourier is not None and model.data_noise_level() == 0.0
    restored, _ = load_run(tmp_path)
    assert int(restored.planned_steps) == 40 and restored.data_noise_level() == 0.0
    u = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(restored.f(u), model.f(u))
