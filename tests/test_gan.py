"""GAN and WGAN-GP: packing, the gradient penalty, the direction of each player's step, a short
run that beats the untrained generator on the counting KL and on modes, and exact resume."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from genmodels.distributions import get_target
from genmodels.evaluate import evaluate_model, kl_to_truth
from genmodels.models import NotSupportedError, build_model
from genmodels.models.gan import GAN, WGANGP, GANConfig, WGANGPConfig
from genmodels.train import TrainConfig, TrainingDiverged, load_run, train

SMALL = {"latent_dim": 4, "g_hidden": 32, "g_depth": 2, "d_hidden": 32, "d_depth": 2, "pack": 1}


def _linear_critic(weight: list[float], bias: float = 0.0) -> nn.Linear:
    lin = nn.Linear(len(weight), 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([weight], dtype=torch.float64))
        lin.bias.fill_(bias)
    return lin


# -- packing ----------------------------------------------------------------------------
def test_packing_concatenates_pack_samples_and_drops_the_remainder() -> None:
    model = GAN(2, GANConfig(**{**SMALL, "pack": 3}))
    assert model.discriminator[0].in_features == 3 * 2
    u = torch.arange(22.0).reshape(11, 2)
    packed = model.pack_samples(u)
    assert packed.shape == (3, 6)  # 11 = 3·3 + 2 leftover points
    torch.testing.assert_close(packed[1], torch.cat([u[3], u[4], u[5]]))
    assert model.critic(u).shape == (3,)
    with pytest.raises(ValueError, match="pack=3"):
        model.pack_samples(u[:2])


@pytest.mark.parametrize("cls", [GAN, WGANGP])
def test_discriminator_sees_real_with_real_and_fake_with_fake(cls: type[GAN]) -> None:
    """Every packed input of a training step is all real or all generated points, and a batch
    not divisible by pack still trains."""
    model = build_model(cls.family, 2, {**SMALL, "pack": 4}, seed=0)
    seen: list[torch.Tensor] = []
    model.discriminator.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    model.configure_optimizers(1e-3)
    batch = 100.0 + torch.rand(10, 2, generator=torch.Generator().manual_seed(0))  # far from G's outputs
    logs = model.step(batch, torch.Generator().manual_seed(1))
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert seen and all(x.shape[1] == 8 for x in seen)
    kinds = set()
    for x in seen:
        is_real = x > 50.0
        rows_pure = is_real.all(1) | (~is_real).all(1)
        assert bool(rows_pure.all()), "a packed input mixes real and generated points"
        kinds.update(is_real.all(1).tolist())
    assert kinds == {True, False}
    # The interpolates of WGAN-GP (between a real and a fake pack) are the only other inputs.
    assert {x.shape[0] for x in seen} == {2}  # ⌊10 / 4⌋ packed inputs per call


# -- the WGAN-GP gradient penalty ---------------------------------------------------------
@pytest.mark.parametrize("pack", [1, 2])
def test_gradient_penalty_is_zero_exactly_for_a_unit_norm_linear_critic(pack: int) -> None:
    model = WGANGP(2, WGANGPConfig(**{**SMALL, "pack": pack})).double()
    g = torch.Generator().manual_seed(0)
    real = torch.randn(64, 2, generator=g, dtype=torch.float64)
    fake = torch.randn(64, 2, generator=g, dtype=torch.float64) + 3.0
    w = torch.randn(2 * pack, generator=g, dtype=torch.float64)
    model.discriminator = _linear_critic((w / w.norm()).tolist(), bias=0.7)
    gp = model.gradient_penalty(real, fake, torch.Generator().manual_seed(1))
    assert abs(float(gp.detach())) < 1e-12
    model.discriminator = _linear_critic((2.5 * w / w.norm()).tolist())  # ‖∇D‖ = 2.5 everywhere
    gp = model.gradient_penalty(real, fake, torch.Generator().manual_seed(1))
    torch.testing.assert_close(gp, torch.tensor(1.5**2, dtype=torch.float64))


def test_gradient_penalty_is_taken_on_random_interpolates() -> None:
    """With D(x) = ½‖x‖², ∇D(x̂) = x̂: the penalty is mean (‖x̂‖ − 1)² at x̂ = ε·real + (1 − ε)·fake
    with ε ~ U[0, 1] drawn from the generator, and it is differentiable in D's weights."""

    class HalfSquare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * self.a * (x**2).sum(-1, keepdim=True)

    model = WGANGP(2, WGANGPConfig(**SMALL)).double()
    model.discriminator = HalfSquare()
    g = torch.Generator().manual_seed(3)
    real = torch.randn(500, 2, generator=g, dtype=torch.float64)
    fake = torch.randn(500, 2, generator=g, dtype=torch.float64) * 0.1 + 2.0
    gp = model.gradient_penalty(real, fake, torch.Generator().manual_seed(4))
    eps = torch.rand(500, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x_hat = eps * real + (1 - eps) * fake
    torch.testing.assert_close(gp, ((x_hat.norm(dim=1) - 1) ** 2).mean())
    # Not at the endpoints: the penalty on real or fake points alone differs.
    value = float(gp.detach())
    assert abs(value - float(((real.norm(dim=1) - 1) ** 2).mean())) > 0.1
    assert abs(value - float(((fake.norm(dim=1) - 1) ** 2).mean())) > 0.1
    gp.backward()
    assert model.discriminator.a.grad is not None and float(model.discriminator.a.grad) > 0


# -- the direction of each player's update --------------------------------------------
@pytest.mark.parametrize("cls", [GAN, WGANGP])
def test_generator_step_climbs_a_fixed_discriminator(cls: type[GAN]) -> None:
    """With D frozen at D(u) = u₁ − 3, the generator's update raises D on its samples (the
    non-saturating loss maximises log σ(D(G(z))); WGAN's maximises D(G(z)))."""
    model = build_model(cls.family, 2, SMALL, seed=0).double()
    model.discriminator = _linear_critic([1.0, 0.0], bias=-3.0)
    opts = model.configure_optimizers(1e-2)
    for group in opts["discriminator"].param_groups:
        group["lr"] = 0.0
    z_gen = torch.Generator().manual_seed(0)
    before = model.sample(2000, generator=torch.Generator().manual_seed(9))
    for _ in range(5):
        model.step(torch.randn(64, 2, generator=z_gen, dtype=torch.float64), z_gen)
    after = model.sample(2000, generator=torch.Generator().manual_seed(9))
    assert float(after[:, 0].mean() - before[:, 0].mean()) > 0.05
    # D never moved
    torch.testing.assert_close(model.discriminator.weight, torch.tensor([[1.0, 0.0]], dtype=torch.float64))


def test_non_saturating_loss_keeps_its_gradient_where_d_rejects_the_samples() -> None:
    """At logits l = D(G(z)) = −10, ∂/∂u of −log σ(l) is −σ(−l)·w/n ≈ −w/n (it would be
    ≈ −4.5e-5·w/n for the saturating log(1 − σ(l)) of the minimax game)."""
    model = GAN(2, GANConfig(**SMALL)).double()
    model.discriminator = _linear_critic([0.6, 0.8], bias=-10.0)
    fake = torch.zeros(8, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(model.generator_loss(fake), fake)
    expected = -torch.sigmoid(torch.tensor(10.0, dtype=torch.float64)) * torch.tensor([0.6, 0.8]) / 8
    torch.testing.assert_close(grad, expected.expand(8, 2).to(torch.float64))


@pytest.mark.parametrize("family", ["gan", "wgan-gp"])
def test_discriminator_step_separates_real_from_fake(family: str) -> None:
    """Each discriminator update raises mean D(real) − mean D(fake) on a fixed batch. For
    WGAN-GP the penalty is switched off here: at initialisation its pull towards ‖∇D‖ = 1
    (10× the Wasserstein term) can first amplify a negative gap of a random critic."""
    options = {**SMALL, "d_steps": 1} | ({"gp_weight": 0.0} if family == "wgan-gp" else {})
    model = build_model(family, 2, options, seed=0)
    opts = model.configure_optimizers(1e-3)
    for group in opts["generator"].param_groups:
        group["lr"] = 0.0
    batch = torch.randn(256, 2, generator=torch.Generator().manual_seed(0)) + 2.0
    fake = model.generate(256, torch.Generator().manual_seed(5)).detach()

    def gap() -> float:
        with torch.no_grad():
            return float(model.critic(batch).mean() - model.critic(fake).mean())

    gen = torch.Generator().manual_seed(1)
    gaps = [gap()]
    for _ in range(5):
        model.step(batch, gen)
        gaps.append(gap())
    assert all(b > a for a, b in itertools.pairwise(gaps)), gaps
    assert gaps[-1] > gaps[0] + 0.1, gaps


# -- training on a 2-D target ------------------------------------------------------------
def test_short_training_lowers_counting_kl_and_covers_more_modes() -> None:
    """PacGAN (pack 4), 800 steps on 8gaussians: the counting KL falls well below an untrained
    generator's and all 8 modes are covered; the untrained generator (a blob at the centre)
    covers at most 2. A generator trained with the loss sign flipped stays far off."""
    target = get_target("8gaussians")
    options = {"pack": 4, "g_hidden": 128, "d_hidden": 128}
    config = TrainConfig(steps=800, batch_size=256, lr=1e-3, progress=False, seed=0)
    model = train("gan", "8gaussians", config, options=options).model
    ev = evaluate_model(model, target, n=10_000, generator=torch.Generator().manual_seed(7))
    untrained = build_model("gan", 2, options)
    untrained.set_normalization(model.shift, model.scale)
    ev0 = evaluate_model(untrained, target, n=10_000, generator=torch.Generator().manual_seed(7))
    assert ev["kl_method"] == "grid" and ev0["kl_method"] == "grid"
    assert ev0["kl"] > 2.5 and ev0["modes"] <= 2, ev0
    assert ev["kl"] < 1.5, ev
    assert ev["modes"] == 8 and ev["hq_fraction"] > 0.5, ev

    class WrongSign(GAN):  # the generator minimises log σ(D(G(z))): it runs away from the data
        def generator_loss(self, fake):  # type: ignore[override]
            return -super().generator_loss(fake)

    torch.manual_seed(0)
    broken = train(WrongSign(2, GANConfig(**options)), "8gaussians", config).model
    evb = evaluate_model(broken, target, n=10_000, generator=torch.Generator().manual_seed(7))
    assert evb["kl"] > 2.5, evb


# -- sampling, density, checkpoints --------------------------------------------------------
def test_sampling_is_reproducible_with_a_generator() -> None:
    model = build_model("wgan-gp", 2, SMALL)
    a = model.sample(100, generator=torch.Generator().manual_seed(0))
    b = model.sample(100, generator=torch.Generator().manual_seed(0))
    c = model.sample(100, generator=torch.Generator().manual_seed(1))
    assert a.shape == (100, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(TypeError, match="no options"):
        model.sample(3, steps=4)


def test_log_prob_is_not_supported_and_kl_falls_back_to_counting() -> None:
    model = build_model("gan", 2, SMALL)
    assert not model.has_log_prob
    with pytest.raises(NotSupportedError, match="no log-density"):
        model.log_prob(torch.zeros(3, 2))
    kl = kl_to_truth(model, get_target("8gaussians"), n=2000, n_boot=5)
    assert kl.method == "grid" and kl.kind == "estimate"


class _Stop(Exception):
    pass


@pytest.mark.parametrize("family", ["gan", "wgan-gp"])
def test_save_load_and_resume_are_exact(tmp_path: Path, family: str) -> None:
    options = {**SMALL, "pack": 2}
    config = TrainConfig(steps=30, batch_size=32, lr=1e-3, checkpoint_every=10, log_every=5, progress=False)
    full = train(family, "8gaussians", config, out=tmp_path / "full", options=options)
    record = json.loads((tmp_path / "full" / "checkpoint.json").read_text())
    assert set(record["optimizers"]) == {"discriminator", "generator"}

    loaded, _ = load_run(tmp_path / "full")
    assert type(loaded) is type(full.model) and loaded.config == full.model.config
    x = full.model.sample(50, generator=torch.Generator().manual_seed(2))
    assert torch.equal(x, loaded.sample(50, generator=torch.Generator().manual_seed(2)))

    def crash(step: int, logs: dict) -> None:
        if step == 17:
            raise _Stop

    with pytest.raises(_Stop):
        train(family, "8gaussians", config, out=tmp_path / "cut", options=options, on_step=crash)
    resumed = train(family, None, config, out=tmp_path / "cut", resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nonfinite_loss_raises_training_diverged() -> None:
    model = build_model("gan", 2, SMALL)
    with torch.no_grad():
        model.generator_net[0].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="gan discriminator loss is nan"):
        train(model, "8gaussians", TrainConfig(steps=5, batch_size=32, progress=False))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pack": 0}, "pack must be >= 1"),
        ({"d_steps": 0}, "d_steps must be >= 1"),
        ({"d_activation": "sigmoid"}, "unknown d_activation 'sigmoid'; choose one of: relu, leaky_relu"),
        ({"beta2": 1.0}, r"beta2 must be in \[0, 1\)"),
    ],
)
def test_bad_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model("gan", 2, options)


def test_bad_gp_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="gp_weight"):
        build_model("wgan-gp", 2, {"gp_weight": -1.0})
