"""CoopNets: the generator is taught exactly the EBM's revision of its own proposals (same z),
the EBM's step follows the learning gradient, a short run lowers the KL to the truth of both
the generator and the EBM below the untrained model's, and checkpoints round-trip."""

from __future__ import annotations

import math

import pytest
import torch

from genmodels.distributions import get_target
from genmodels.evaluate import kl_to_truth
from genmodels.models import NotSupportedError, build_model
from genmodels.models.coop import Coop, CoopConfig
from genmodels.train import TrainConfig, load_run, train

#: small and fast (the contract is the same as the defaults')
SMALL = {"hidden": 32, "g_hidden": 32, "latent_dim": 4, "langevin_steps": 5}
#: the short run of the KL test
RUN = {"hidden": 64, "g_hidden": 64, "langevin_steps": 10, "step_size": 0.02}


def _prepared(options: dict, seed: int = 0) -> Coop:
    """A model whose reference q (and the generator's affine start) is fitted to 8gaussians."""
    model = build_model("coop", 2, options, seed=seed)
    x = get_target("8gaussians").sample(2000, generator=torch.Generator().manual_seed(seed))
    model.set_normalization(x.mean(0), x.std(0))
    model.prepare(x, torch.Generator().manual_seed(seed + 1))
    return model


def test_untrained_generator_and_ebm_both_start_at_the_reference() -> None:
    """The untrained EBM is q (zero output layer of f) and the untrained generator's mean g(z)
    draws from q: its samples have q's mean and covariance (within sampling error); its full
    model g(z) + σε adds σ²I to the covariance."""
    model = _prepared({**SMALL, "sigma": 0.5})
    gen = torch.Generator().manual_seed(0)
    u = model.normalize(model.sample(20_000, generator=gen, refine_steps=0, noise=False))
    cov = model.ebm.ref_chol @ model.ebm.ref_chol.T
    torch.testing.assert_close(u.mean(0), model.ebm.ref_mean, atol=0.03, rtol=0)  # se ≈ 0.007
    torch.testing.assert_close(torch.cov(u.T), cov, atol=0.05, rtol=0)
    noisy = model.normalize(model.sample(20_000, generator=gen, refine_steps=0))
    torch.testing.assert_close(torch.cov(noisy.T), cov + 0.25 * torch.eye(2), atol=0.06, rtol=0)
    x = get_target("8gaussians").sample(100, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.energy(x), -model.ebm.log_q(model.normalize(x)))


def test_generator_target_is_the_revision_of_its_own_proposal_with_the_same_z() -> None:
    """MCMC teaching: the generator's gradient is that of mean ‖x̃ − g(z)‖² where x̃ is the
    revision of x̂ = g(z) and z the very latent that made x̂ (revision replaced by a known map)."""
    model = _prepared(SMALL).double()
    model.configure_optimizers(0.0)  # lr 0: the gradients stay for inspection, nothing moves
    seen: dict[str, torch.Tensor] = {}

    def known_revision(x_hat, generator, steps=None):
        seen["x_hat"] = x_hat.clone()
        x_tilde = 1.5 * x_hat + torch.tensor([0.3, -0.2], dtype=x_hat.dtype)
        seen["x_tilde"] = x_tilde
        ones = torch.ones(x_hat.shape[0], dtype=x_hat.dtype)
        return x_tilde, ones, ones

    zs: list[torch.Tensor] = []
    model.generator_net.register_forward_pre_hook(lambda mod, args: zs.append(args[0].detach().clone()))
    model.revise = known_revision
    batch = get_target("8gaussians").sample(64, generator=torch.Generator().manual_seed(2)).double()
    logs = model.step(batch, torch.Generator().manual_seed(3))
    assert len(zs) == 2 and torch.equal(zs[0], zs[1]), "the regression must reuse the proposal's z"
    z = zs[0]
    torch.testing.assert_close(model.generator_net(z).detach(), seen["x_hat"])
    params = list(model.generator_net.parameters())
    expected = torch.autograd.grad(((seen["x_tilde"] - model.generator_net(z)) ** 2).sum(-1).mean(), params)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e)
    torch.testing.assert_close(
        torch.tensor(logs["g_loss"], dtype=torch.float64),
        ((seen["x_tilde"] - seen["x_hat"]) ** 2).sum(-1).mean(),
    )


def test_generator_learns_the_revision_map() -> None:
    """With the EBM frozen and a revision that translates every proposal halfway from the batch
    mean toward a point c, x̃ = x̂ + ½(c − mean x̂), repeated teaching carries the generator to
    mean c with its spread intact: each g(z) follows its own revision (regressing on shuffled
    z would collapse the spread toward the mean of the targets)."""
    model = _prepared(SMALL)
    model.configure_optimizers(3e-3)
    for group in model.optimizers["ebm"].param_groups:
        group["lr"] = 0.0
    c = torch.tensor([0.5, -0.5])
    model.revise = lambda x_hat, generator, steps=None: (
        x_hat + 0.5 * (c - x_hat.mean(0)),
        torch.ones(x_hat.shape[0]),
        torch.ones(x_hat.shape[0]),
    )
    g = torch.Generator().manual_seed(0)
    before = model.normalize(
        model.sample(4000, generator=torch.Generator().manual_seed(9), refine_steps=0, noise=False)
    )
    batch = get_target("8gaussians").sample(128, generator=g)
    for _ in range(150):
        model.step(batch, g)
    after = model.normalize(
        model.sample(4000, generator=torch.Generator().manual_seed(9), refine_steps=0, noise=False)
    )
    ratio = float(after.std(0).mean() / before.std(0).mean())
    torch.testing.assert_close(after.mean(0), c, atol=0.1, rtol=0)  # se of the mean ≈ 0.016
    # Adam's per-weight steps distort g a little (0.81 measured); shuffled z gave 0.04
    assert 0.6 < ratio < 1.4, ratio


def test_learned_sigma_is_the_rms_residual_of_the_teaching() -> None:
    """learn_sigma: σ² tracks mean ‖x̃ − g(z)‖² / d, the complete-data MLE of the generator's
    noise. A revision that adds N(0, s²I) to each proposal (nothing the generator can learn)
    drives σ from its start to s (moving average over ~1/SIGMA_EMA steps of 128 draws: the
    estimate's relative error is ≈ 1 %); with learn_sigma off it stays put."""
    s = 0.3
    for learn, expected in ((True, s), (False, 0.1)):
        model = _prepared({**SMALL, "learn_sigma": learn, "buffer_chains": 0})
        model.configure_optimizers(0.0)
        g = torch.Generator().manual_seed(0)
        model.revise = lambda x_hat, generator, steps=None: (
            x_hat + s * torch.randn(x_hat.shape, generator=generator),
            torch.ones(x_hat.shape[0]),
            torch.ones(x_hat.shape[0]),
        )
        batch = get_target("8gaussians").sample(128, generator=g)
        for _ in range(300):
            logs = model.step(batch, g)
        assert abs(logs["sigma"] - expected) < 0.02, (learn, logs["sigma"])


def test_persistent_chains_join_the_negatives_without_touching_the_revision() -> None:
    """buffer_chains: each step advances at most that many chains of the EBM's replay buffer,
    and the revision keeps its own step size (adapted toward target_accept by its own
    acceptance, not the buffer's); buffer_chains=0 has no buffer (the paper)."""
    assert _prepared({**SMALL, "buffer_chains": 0}).ebm.chains.numel() == 0
    model = _prepared({**SMALL, "buffer_chains": 16, "buffer_size": 100, "kernel": "mala"})
    model.configure_optimizers(1e-3)
    before = model.ebm.chains.clone()
    seen = {}
    original = model.revise

    def recording(x_hat, generator, steps=None):
        seen["eps"] = model.ebm.mcmc_step_size.clone()
        out = original(x_hat, generator, steps)
        seen["acc"] = out[1].mean()
        return out

    model.revise = recording
    batch = get_target("8gaussians").sample(64, generator=torch.Generator().manual_seed(4))
    model.step(batch, torch.Generator().manual_seed(5))
    moved = int((model.ebm.chains != before).any(-1).sum())
    assert 0 < moved <= 16, moved
    adapted = seen["eps"] * torch.exp(0.1 * (seen["acc"] - model.config.target_accept))
    adapted = adapted.clamp(max=model.config.step_size)  # step_size is the largest Δt
    torch.testing.assert_close(model.ebm.mcmc_step_size, adapted.to(model.ebm.mcmc_step_size.dtype))


def test_ebm_step_raises_f_on_data_relative_to_revised_samples() -> None:
    """The EBM's update follows E_data[∇f] − E_x̃[∇f]: on the same batch and the same x̃,
    mean f(data) − mean f(x̃) grows (the revised samples alone as negatives, as in the paper)."""
    model = _prepared({**SMALL, "buffer_chains": 0})
    model.configure_optimizers(1e-2)
    seen = {}
    original = model.revise

    def recording(x_hat, generator, steps=None):
        out = original(x_hat, generator, steps)
        seen["x_tilde"] = out[0]
        return out

    model.revise = recording
    batch = get_target("8gaussians").sample(256, generator=torch.Generator().manual_seed(4))
    u = model.normalize(batch)
    gaps = []
    for s in range(3):
        model.step(batch, torch.Generator().manual_seed(s))
        with torch.no_grad():
            gaps.append(float(model.f(u).mean() - model.f(seen["x_tilde"]).mean()))
    assert gaps[0] > 0 and gaps[2] > gaps[0]


def test_short_run_lowers_the_kl_of_both_generator_and_ebm() -> None:
    """500 steps on 8gaussians: the generator's samples (counting KL on the grid) and the EBM's
    density (quadrature, exact) both beat the untrained model, which is the Gaussian reference
    for both (KL ≈ 1.49 with σ = 0.1, and 1.42). The stderrs are ≈ 0.01, so margins of 0.2 and
    0.3 are ≫ noise; a generator taught with its own proposals (x̂ instead of x̃) does not
    improve (its σ shrinks to 0)."""
    target = get_target("8gaussians")
    cfg = TrainConfig(steps=500, lr=1e-2, batch_size=128, progress=False, seed=0)
    untrained = build_model("coop", 2, RUN, seed=0)
    train(untrained, "8gaussians", TrainConfig(steps=1, lr=1e-12, batch_size=128, progress=False, seed=0))
    model = train("coop", "8gaussians", cfg, options=RUN).model

    def kls(m: Coop) -> tuple[float, float]:
        g = torch.Generator().manual_seed(1)
        s = m.sample(10_000, generator=torch.Generator().manual_seed(2), refine_steps=0)
        gen = kl_to_truth(m, target, 10_000, g, method="grid", samples=s, n_boot=20)
        ebm = kl_to_truth(m, target, 10_000, g)
        assert ebm.kind == "exact" and gen.stderr < 0.05 and ebm.stderr < 0.05
        return gen.value, ebm.value

    gen0, ebm0 = kls(untrained)
    gen1, ebm1 = kls(model)
    assert gen1 < gen0 - 0.2, (gen0, gen1)  # measured 1.49 → 1.21
    assert ebm1 < ebm0 - 0.3, (ebm0, ebm1)


def test_checkpoint_round_trip_and_options(tmp_path) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig(steps=20, batch_size=64, progress=False, seed=0)
    result = train("coop", "8gaussians", cfg, options=SMALL, out=out)
    restored, record = load_run(out)
    assert record["family"] == "coop" and isinstance(restored, Coop)
    for steps in (0, -1, 3):
        a = result.model.sample(50, generator=torch.Generator().manual_seed(1), refine_steps=steps)
        b = restored.sample(50, generator=torch.Generator().manual_seed(1), refine_steps=steps)
        torch.testing.assert_close(a, b)
    x = get_target("8gaussians").sample(50, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(restored.log_prob(x).values, result.model.log_prob(x).values)
    assert restored.log_prob(x).kind == "exact"
    with pytest.raises(NotSupportedError, match="generator"):
        restored.log_prob(x, model="generator")
    with pytest.raises(ValueError, match="unknown model"):
        restored.log_prob(x, model="flow")
    with pytest.raises(ValueError, match="refine_steps"):
        restored.sample(5, refine_steps=-2)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"kernel": "hmc"}, "kernel"),
        ({"langevin_steps": 0}, "langevin_steps"),
        ({"step_size": -0.1}, "step_size"),
        ({"g_lr_ratio": 0.0}, "g_lr_ratio"),
        ({"buffer_chains": -1}, "buffer_chains"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"g_activation": "swish"}, "g_activation"),
        ({"sigma": 0.0}, "sigma"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_options_are_value_errors(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model("coop", 2, options)


def test_latent_inference_moves_z_toward_the_posterior_mode() -> None:
    """infer_z: Langevin on log p(z | x) = −½‖z‖² − ‖x − g(z)‖²/(2σ²) raises it on average."""
    model = _prepared({**SMALL, "infer_z": True, "z_steps": 30, "z_step_size": 0.002, "sigma": 0.2})
    g = torch.Generator().manual_seed(0)
    z0 = model.latent(500, g)
    x = model.normalize(get_target("8gaussians").sample(500, generator=g))

    def log_post(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z**2).sum(-1) - 0.5 * ((x - model.generator_net(z)) ** 2).sum(-1) / 0.2**2

    with torch.no_grad():
        z1 = model.infer_latent(z0, x, g)
        assert float(log_post(z1).mean()) > float(log_post(z0).mean()) + 5.0
    # a training step with inference runs and logs the regression loss
    model.configure_optimizers(1e-3)
    logs = model.step(model.denormalize(x[:64]), g)
    assert logs["g_loss"] > 0


def test_log_prob_beyond_2d_is_an_ais_estimate() -> None:
    model = build_model("coop", 3, {**SMALL, "hidden": 8}, seed=0)
    model.prepare(torch.randn(500, 3, generator=torch.Generator().manual_seed(0)), torch.Generator())
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    ld = model.log_prob(x)
    assert ld.kind == "estimate" and torch.isfinite(ld.values).all()
    # the untrained EBM is q: AIS recovers log Z = 0 (q is normalized) within its error
    z = model.log_partition()
    assert abs(z["value"]) < 5 * z["error"] + 0.02
    assert isinstance(CoopConfig().latent_dim, int)


def test_conv_coop_generator_starts_at_its_affine_skip_and_round_trips(tmp_path) -> None:
    """net=conv on 8×8 images (dim 64): the generator is the affine skip plus a conv decoder
    whose last layer starts at zero (so g(z) = A z + b exactly, drawing from q after prepare),
    the EBM's f is a conv trunk with f ≡ 0; a few steps on digits stay finite and a checkpoint
    restores both."""
    from genmodels.nets.conv import ConvDecoder, ConvEncoder

    small = {**SMALL, "net": "conv", "buffer_chains": 32, "buffer_size": 64}
    model = build_model("coop", 64, small)
    assert isinstance(model.generator_net.net, ConvDecoder) and isinstance(model.ebm.f_net, ConvEncoder)
    z = torch.randn(7, SMALL["latent_dim"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.generator_net(z), model.generator_net.skip(z))
    u = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.f(u), torch.zeros(5))
    cfg = TrainConfig(steps=3, batch_size=32, progress=False, seed=0)
    res = train("coop", "digits", cfg, options=small, out=tmp_path)
    assert all(math.isfinite(v) for v in res.history[-1].values())
    assert res.model.generator_net.net.convs[-1].weight.abs().max() > 0  # the residual learns
    restored, _ = load_run(tmp_path)
    torch.testing.assert_close(restored.f(u), res.model.f(u))
    for steps in (0, 2):
        a = restored.sample(5, generator=torch.Generator().manual_seed(2), refine_steps=steps)
        b = res.model.sample(5, generator=torch.Generator().manual_seed(2), refine_steps=steps)
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="net=conv needs square one-channel images"):
        build_model("coop", 36, {"net": "conv"})
    with pytest.raises(ValueError, match="unknown net 'unet'"):
        build_model("coop", 64, {"net": "unet"})
