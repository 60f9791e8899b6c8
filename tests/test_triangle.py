"""Divergence triangle: the three sides against closed forms on a linear-Gaussian triangle (generator
x = W z + b + σ ε, a linear-Gaussian inference model, a Gaussian EBM with known Z, Gaussian data),
the EBM update against the gradient of the closed-form Δ, a short run on 8gaussians that lowers the
KL to the truth of both the EBM and the generator, and the contract bits."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from genmodels import get_target
from genmodels.evaluate import kl_to_truth
from genmodels.models import build_model
from genmodels.models.ebm import QuadraticEnergy
from genmodels.models.triangle import Triangle, TriangleConfig
from genmodels.models.vae import LOG_STD_BOUND
from genmodels.train import TrainConfig, load_run, train

D64 = torch.float64
SIGMA = 0.5
W_G = torch.tensor([[1.2, 0.3], [-0.4, 0.8]], dtype=D64)  # generator x = W_G z + B_G + σ ε
B_G = torch.tensor([0.9, -0.7], dtype=D64)
A_Q = torch.tensor([[0.6, -0.2], [0.1, 0.5]], dtype=D64)  # encoder mean A_Q x + A0
A0 = torch.tensor([0.05, -0.1], dtype=D64)
S_Q = torch.tensor([0.45, 0.6], dtype=D64)  # encoder std
M_D = torch.tensor([0.3, -0.2], dtype=D64)  # data N(M_D, S_D)
S_D = torch.tensor([[1.1, 0.3], [0.3, 0.7]], dtype=D64)
M_R = torch.tensor([0.1, 0.2], dtype=D64)  # EBM reference q = N(M_R, L_R L_Rᵀ)
L_R = torch.tensor([[1.3, 0.0], [0.2, 1.1]], dtype=D64)
W_E = torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=D64)  # f(u) = −½ uᵀ W_E u + B_Eᵀ u
B_E = torch.tensor([0.2, -0.3], dtype=D64)


def _raw(log_std: torch.Tensor) -> torch.Tensor:
    return LOG_STD_BOUND * torch.atanh(log_std / LOG_STD_BOUND)


def _linear_triangle() -> Triangle:
    config = TriangleConfig(latent_dim=2, depth=0, decoder_std=SIGMA, energy_reg=0.0, fourier_features=0)
    model = Triangle(2, config).double()
    model.ebm.f_net = QuadraticEnergy(2).double()
    with torch.no_grad():
        dec, enc = model.vae.decoder[0], model.vae.encoder[0]
        dec.weight.copy_(W_G)
        dec.bias.copy_(B_G)
        enc.weight.copy_(torch.cat([A_Q, torch.zeros(2, 2, dtype=D64)]))
        enc.bias.copy_(torch.cat([A0, _raw(torch.log(S_Q))]))
        model.ebm.ref_mean.copy_(M_R)
        model.ebm.ref_chol.copy_(L_R)
        model.ebm.f_net.raw.copy_(W_E)
        model.ebm.f_net.b.copy_(B_E)
    return model


def _joint_with_encoder(mean_x: torch.Tensor, cov_x: torch.Tensor) -> MultivariateNormal:
    """x ~ N(mean_x, cov_x), z | x ~ N(A_Q x + A0, diag S_Q²): the Gaussian over (x, z)."""
    cov = torch.cat(
        [
            torch.cat([cov_x, cov_x @ A_Q.T], 1),
            torch.cat([A_Q @ cov_x, A_Q @ cov_x @ A_Q.T + torch.diag(S_Q**2)], 1),
        ]
    )
    return MultivariateNormal(torch.cat([mean_x, A_Q @ mean_x + A0]), cov)


def _closed_form(w_e: torch.Tensor, b_e: torch.Tensor) -> dict[str, torch.Tensor]:
    """KL(Q‖P), KL(P‖Π), KL(Q‖Π), log Z and H(q_data) in closed form (differentiable in w_e, b_e)."""
    sigma_r_inv = torch.cholesky_inverse(L_R)
    precision = w_e + sigma_r_inv
    h = b_e + sigma_r_inv @ M_R
    cov_pi = torch.linalg.inv(precision)
    mean_pi = cov_pi @ h
    log_z = (
        -0.5 * M_R @ sigma_r_inv @ M_R
        - torch.log(torch.diagonal(L_R)).sum()
        - math.log(2 * math.pi)
        + 0.5 * h @ cov_pi @ h
        + 0.5 * torch.logdet(2 * math.pi * cov_pi)
    )
    Q = _joint_with_encoder(M_D, S_D)
    Pi = _joint_with_encoder(mean_pi, cov_pi)
    cov_p = torch.cat(
        [
            torch.cat([W_G @ W_G.T + SIGMA**2 * torch.eye(2, dtype=D64), W_G], 1),
            torch.cat([W_G.T, torch.eye(2, dtype=D64)], 1),
        ]
    )
    P = MultivariateNormal(torch.cat([B_G, torch.zeros(2, dtype=D64)]), cov_p)
    return {
        "kl_qp": kl_divergence(Q, P),
        "kl_p_pi": kl_divergence(P, Pi),
        "kl_q_pi": kl_divergence(Q, Pi),
        "log_z": log_z,
        "entropy_data": 0.5 * torch.logdet(2 * math.pi * math.e * S_D),
        "mean_pi": mean_pi,
    }


def _data(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return M_D + torch.randn(n, 2, generator=g, dtype=D64) @ torch.linalg.cholesky(S_D).T


def _close(values: torch.Tensor, expected: float, what: str, sigmas: float = 4.0) -> None:
    mean, stderr = float(values.mean()), float(values.std() / math.sqrt(values.numel()))
    assert abs(mean - expected) < sigmas * stderr + 1e-9, (
        f"{what}: {mean:.4f} ± {stderr:.4f} vs {expected:.4f}"
    )


def test_the_three_sides_match_their_closed_forms() -> None:
    """Each Monte-Carlo side equals its KL up to the constants its docstring names (H(q_data), log Z),
    within 4 standard errors; Δ estimated without either constant equals the closed-form Δ; and the
    EBM's quadrature log Z is the closed-form log Z."""
    model = _linear_triangle()
    exact = _closed_form(W_E, B_E)
    n = 20_000
    u = _data(n, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        out = model.objective(u, g)
    H, log_z = float(exact["entropy_data"]), float(exact["log_z"])
    _close(out["kl_qp"], float(exact["kl_qp"]) + H, "KL(Q‖P) + H(q_data)")
    _close(out["kl_p_pi"], float(exact["kl_p_pi"]) - log_z, "KL(P‖Π) − log Z")
    _close(out["kl_q_pi"], float(exact["kl_q_pi"]) + H - log_z, "KL(Q‖Π) + H(q_data) − log Z")
    delta = float(exact["kl_qp"] + exact["kl_p_pi"] - exact["kl_q_pi"])
    data_part = out["kl_qp"] - out["kl_q_pi"]  # same points: their difference has its own variance
    stderr = math.sqrt(float(data_part.var() + out["kl_p_pi"].var()) / n)
    assert abs(float(out["delta"]) - delta) < 4 * stderr, (float(out["delta"]), delta, stderr)
    logz = model.log_partition()
    assert logz["kind"] == "exact"
    assert abs(logz["value"] - log_z) < max(10 * logz["error"], 1e-6), (logz, log_z)


def test_the_ebm_update_ascends_the_closed_form_delta() -> None:
    """−∇_b of the EBM loss (Monte Carlo, generator draws as negatives; energy_reg = 0, the paper's
    objective) equals ∇_b Δ of the closed form, b the linear term of the quadratic energy, within 4
    standard errors per coordinate: the α-step ascends Δ, and log Z, which the loss omits, cancels."""
    model = _linear_triangle()
    n = 20_000
    u = _data(n, seed=3)
    _, x = model.generate(n, torch.Generator().manual_seed(4))
    x = x.detach()
    loss = model.ebm_loss(u, x)
    (grad_mc,) = torch.autograd.grad(-loss, model.ebm.f_net.b)
    b = B_E.clone().requires_grad_(True)
    exact = _closed_form(W_E, b)
    (grad_exact,) = torch.autograd.grad(exact["kl_qp"] + exact["kl_p_pi"] - exact["kl_q_pi"], b)
    # ∇_b f(u) = u, so the MC gradient is mean(u) − mean(x̃), with this standard error
    stderr = torch.sqrt((u.var(0) + x.var(0)) / n)
    assert torch.all((grad_mc - grad_exact).abs() < 4 * stderr), (grad_mc, grad_exact, stderr)


@pytest.mark.parametrize(
    "options",
    [{}, {"refine_steps": 300, "warmup": 0, "step_size": 0.2}],
    ids=["default: adapted MALA", "fixed step"],
)
def test_samples_follow_the_ebm(options) -> None:
    """``sample`` refines the generator's draws by MALA on π = N(mean_pi, ·), by default with its
    step size adapted from 0.001 in a warm-up: the sample mean is π's mean within 5 standard
    errors, while the generator's own draws (``refine_steps=0``) are far from it."""
    model = _linear_triangle()
    mean_pi = _closed_form(W_E, B_E)["mean_pi"]
    g = torch.Generator().manual_seed(5)
    raw = model.sample(4000, generator=g, refine_steps=0)
    refined = model.sample(4000, generator=g, **options)
    stderr = refined.std(0) / math.sqrt(4000)
    assert torch.all((refined.mean(0) - mean_pi).abs() < 5 * stderr), (refined.mean(0), mean_pi)
    assert torch.any((raw.mean(0) - mean_pi).abs() > 10 * stderr)


def test_refined_negatives_follow_the_ebm() -> None:
    """``negative_steps`` MALA steps (adapted step size) from the generator's draws, a quarter of them
    restarted from the reference q, end at π's mean within 5 standard errors; without the steps the
    negatives are the generator's draws, far from it."""
    model = _linear_triangle()
    mean_pi = _closed_form(W_E, B_E)["mean_pi"]
    g = torch.Generator().manual_seed(6)
    _, x = model.generate(4000, g)
    assert torch.equal(model.refine_negatives(x, g), x.detach())
    model.config.negative_steps, model.config.negative_restart = 30, 0.25
    with torch.no_grad():
        model.ebm.mcmc_step_size.fill_(0.3)
    neg = x
    for _ in range(10):  # 300 steps in all, the step size adapting between calls
        neg = model.refine_negatives(neg, g)
    stderr = neg.std(0) / math.sqrt(4000)
    assert torch.all((neg.mean(0) - mean_pi).abs() < 5 * stderr), (neg.mean(0), mean_pi)
    assert torch.any((x.mean(0) - mean_pi).abs() > 10 * stderr)


def test_energy_reg_decay_follows_the_lr() -> None:
    """With ``energy_reg_decay="lr"`` the EBM step's penalty is λ · lr_t / lr: at half the base lr the
    logged EBM loss is the plain loss plus λ/2 times the penalty."""
    model = build_model(
        "triangle",
        2,
        {
            "hidden": 8,
            "ebm_hidden": 8,
            "grid_size": 16,
            "energy_reg": 0.5,
            "energy_reg_decay": "lr",
            "fourier_features": 0,
        },
    )
    x = get_target("8gaussians").sample(256, generator=torch.Generator().manual_seed(0))
    model.prepare(x, torch.Generator().manual_seed(0))
    with torch.no_grad():  # a non-zero energy, so that the penalty is visible
        model.ebm.f_net[-1].bias.fill_(1.5)
    opts = model.configure_optimizers(1e-3)
    for opt in opts.values():
        for group in opt.param_groups:
            group["lr"] = 5e-4
    g = torch.Generator().manual_seed(1)
    u = model.normalize(x)
    _, x_gen = model.generate(256, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = float(model.ebm_loss(u, x_gen, 0.25))
    logs = model.step(x, g)
    assert abs(logs["ebm_loss"] - expected) < 1e-5, (
        logs["ebm_loss"],
        expected,
        float(model.ebm_loss(u, x_gen)),
    )


def _prepared(options: dict) -> tuple[Triangle, torch.Tensor]:
    small = {"hidden": 16, "ebm_hidden": 16, "grid_size": 16, "buffer_size": 300, **options}
    model = build_model("triangle", 2, small)
    x = get_target("8gaussians").sample(128, generator=torch.Generator().manual_seed(0))
    model.prepare(x, torch.Generator().manual_seed(0))
    with torch.no_grad():  # a non-zero energy, so that f differs between the point sets
        for p in model.ebm.f_net[-1].parameters():
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(3))
    return model, model.normalize(x)


def test_buffer_chains_pool_the_negatives() -> None:
    """buffer_chains = 0: the EBM's loss is exactly mean f(x̃) − mean f(u) (the generator's draws are the
    only negatives) and there is no buffer. buffer_chains = m > 0: the loss is the pooled
    (b·[mean f(x̃) − mean f(u)] + m·L_buffer) / (b + m) with L_buffer the EBM family's persistent-chain
    loss on u[:m] from the same random state, the buffer advances (at most m chains move, and some do),
    and the step size that refine_negatives uses is left alone."""
    model, u = _prepared({"buffer_chains": 0})
    _, x = model.generate(128, torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model.ebm.f(x).mean() - model.ebm.f(u).mean()
    assert model.ebm.chains.numel() == 0
    torch.testing.assert_close(model.ebm_loss(u, x, 0.0, torch.Generator().manual_seed(2)), plain)

    model, u = _prepared({"buffer_chains": 64})
    _, x = model.generate(128, torch.Generator().manual_seed(1))
    twin = copy.deepcopy(model)
    before = model.ebm.chains.clone()
    model.ebm.mcmc_step_size.fill_(0.123)
    loss = model.ebm_loss(u, x, 0.0, torch.Generator().manual_seed(2))
    buffer_loss = twin.ebm._ml_loss(u[:64], torch.Generator().manual_seed(2))["loss"]
    with torch.no_grad():
        plain = model.ebm.f(x).mean() - model.ebm.f(u).mean()
    torch.testing.assert_close(loss, (128 * plain + 64 * buffer_loss) / 192)
    assert abs(float(loss.detach() - plain)) > 1e-3  # the buffer's term is not a no-op here
    moved = (model.ebm.chains != before).any(-1).sum()
    assert 0 < int(moved) <= 64, int(moved)
    assert float(model.ebm.mcmc_step_size) == 0.123
    model.configure_optimizers(1e-3)
    logs = model.step(get_target("8gaussians").sample(128, generator=torch.Generator().manual_seed(4)))
    assert math.isfinite(logs["ebm_loss"])


def test_short_run_lowers_both_kls_on_8gaussians() -> None:
    """600 steps: the EBM's KL (quadrature log π, exact) and the generator's counting KL (its draws on
    a 50 × 50 grid) both fall well below the untrained model's (EBM: the fitted Gaussian, 1.41;
    generator: 4.6) and below fixed bars."""
    target = get_target("8gaussians")
    res = train("triangle", "8gaussians", TrainConfig(steps=600, progress=False, seed=0, schedule="constant"))
    untrained = train("triangle", "8gaussians", TrainConfig(steps=1, lr=1e-12, progress=False, seed=0)).model
    kls = {}
    for name, model in (("trained", res.model), ("untrained", untrained)):
        g = torch.Generator().manual_seed(0)
        ebm = kl_to_truth(model, target, n=5000, generator=g)
        assert ebm.kind == "exact"
        gen = kl_to_truth(model, target, n=20_000, generator=g, method="grid")
        kls[name] = (ebm.value, ebm.stderr, gen.value, gen.stderr)
    (e1, se1, g1, sg1), (e0, se0, g0, sg0) = kls["trained"], kls["untrained"]
    assert e1 < 0.8 and e1 + 4 * se1 < e0 - 4 * se0, kls
    assert g1 < 1.5 and g1 + 4 * sg1 < g0 - 4 * sg0, kls


def test_checkpoint_round_trip_and_logs(tmp_path) -> None:
    small = {"hidden": 32, "ebm_hidden": 32, "grid_size": 100}
    cfg = TrainConfig(steps=5, batch_size=64, progress=False, seed=0)
    res = train("triangle", "8gaussians", cfg, options=small, out=tmp_path)
    for key in ("delta", "kl_qp", "kl_p_pi", "kl_q_pi", "ebm_loss", "energy_gap"):
        assert key in res.history[-1] or any(key in h for h in res.history), key
    restored, record = load_run(tmp_path)
    assert record["family"] == "triangle"
    x = get_target("8gaussians").sample(50, generator=torch.Generator().manual_seed(1))
    for opts in ({}, {"model": "generator"}):
        torch.testing.assert_close(restored.log_prob(x, **opts).values, res.model.log_prob(x, **opts).values)
    a = restored.sample(30, generator=torch.Generator().manual_seed(2), refine_steps=3)
    b = res.model.sample(30, generator=torch.Generator().manual_seed(2), refine_steps=3)
    torch.testing.assert_close(a, b)
    assert res.model.log_prob(x).kind == "exact"
    assert res.model.log_prob(x, model="generator").kind == "lower_bound"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"decoder_std": -1.0}, "decoder_std"),
        ({"ebm_lr_mult": 0.0}, "ebm_lr_mult"),
        ({"activation": "nope"}, "activation"),
        ({"negative_steps": -1}, "negative_steps"),
        ({"negative_restart": 1.5}, "negative_restart"),
        ({"energy_reg_decay": "cosine"}, "energy_reg_decay"),
        ({"buffer_chains": -1}, "buffer_chains"),
        ({"buffer_steps": 0}, "buffer_steps"),
        ({"nope": 1}, "unknown option"),
    ],
)
def test_bad_options_are_clear_errors(options, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_model("triangle", 2, options)


def test_bad_call_options_are_clear_errors() -> None:
    model = build_model("triangle", 2, {"hidden": 8, "ebm_hidden": 8, "grid_size": 16})
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="model"):
        model.log_prob(x, model="gan")
    with pytest.raises(ValueError, match="kernel"):
        model.sample(3, generator=torch.Generator().manual_seed(0), refine_steps=1, kernel="hmc")


def test_conv_triangle_has_three_conv_networks_starts_at_q_and_round_trips(tmp_path) -> None:
    """net=conv on 8×8 images (dim 64): the VAE's conv encoder and decoder, the EBM's conv f with
    f ≡ 0 at the start; a few steps on digits stay finite and a checkpoint restores them."""
    from genmodels.nets.conv import ConvDecoder, ConvEncoder

    small = {"net": "conv", "hidden": 64, "ebm_hidden": 64, "latent_dim": 8}
    model = build_model("triangle", 64, small)
    assert isinstance(model.vae.encoder, ConvEncoder) and isinstance(model.vae.decoder, ConvDecoder)
    assert isinstance(model.ebm.f_net, ConvEncoder) and model.ebm.config.energy == "conv"
    u = torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.ebm.f(u), torch.zeros(6))
    assert model.sample(4, generator=torch.Generator().manual_seed(1)).shape == (4, 64)
    cfg = TrainConfig(steps=3, batch_size=32, progress=False, seed=0)
    res = train("triangle", "digits", cfg, options=small, out=tmp_path)
    assert all(math.isfinite(v) for v in res.history[-1].values())
    restored, _ = load_run(tmp_path)
    torch.testing.assert_close(restored.ebm.f(u), res.model.ebm.f(u))
    a = restored.sample(5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, res.model.sample(5, generator=torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="net=conv needs square one-channel images"):
        build_model("triangle", 10, {"net": "conv"})
    with pytest.raises(ValueError, match="unknown net 'unet'"):
        build_model("triangle", 64, {"net": "unet"})


def test_the_energy_reads_fourier_features_in_2d_only_by_default() -> None:
    """Auto Fourier features: 64 for the MLP energy in 2-D (f_net = features → MLP), none in 64-D
    or for the conv energy; a checkpoint written before them restores without them."""
    from genmodels.models.ebm import AUTO_FOURIER_FEATURES
    from genmodels.train import restore_model

    two = build_model("triangle", 2, {"hidden": 8, "ebm_hidden": 8, "grid_size": 16})
    assert two.ebm.config.fourier_features == AUTO_FOURIER_FEATURES == 64
    assert two.ebm._fourier is not None and two.ebm._fourier.out_dim == 2 + 2 * 64
    assert build_model("triangle", 64, {"hidden": 8, "ebm_hidden": 8}).ebm._fourier is None
    with pytest.raises(ValueError, match="fourier_features feed the MLP energy; net=conv"):
        build_model("triangle", 64, {"net": "conv", "fourier_features": 8})
    old = build_model("triangle", 2, {"hidden": 8, "ebm_hidden": 8, "grid_size": 16, "fourier_features": 0})
    saved = {k: v for k, v in old.config.__dict__.items() if k != "fourier_features"}  # as written then
    record = {"family": "triangle", "model_config": saved, "data": {"dim": 2}}
    restored = restore_model(record, {f"model.{k}": v for k, v in old.state_dict().items()})
    assert restored.ebm._fourier is None
