"""The energy-based model: learning gradient, log Z, NCE, each method's training, health."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from genmodels.distributions import GaussianMixture, get_target
from genmodels.evaluate import kl_to_truth
from genmodels.models import build_model
from genmodels.models.ebm import EBM, EBMConfig
from genmodels.samplers.ais import importance_ess, sir_temperature
from genmodels.train import TrainConfig, TrainingDiverged, train

LOG_2PI = math.log(2 * math.pi)


def _gaussian_log_z(
    W: torch.Tensor, b: torch.Tensor, mu_q: torch.Tensor, cov_q: torch.Tensor
) -> torch.Tensor:
    """log ∫ exp(−½uᵀWu + bᵀu) N(u; μ_q, Σ_q) du in closed form (differentiable in W, b)."""
    d = b.numel()
    prec_q = torch.linalg.inv(cov_q)
    P = W + prec_q
    h = b + prec_q @ mu_q
    const = -0.5 * mu_q @ prec_q @ mu_q - 0.5 * torch.logdet(cov_q) - 0.5 * d * LOG_2PI
    return const + 0.5 * d * LOG_2PI - 0.5 * torch.logdet(P) + 0.5 * h @ torch.linalg.solve(P, h)


def _implied_gaussian(model: EBM) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (u-space) of p ∝ exp(f) q for the quadratic energy."""
    W, b = model.f_net.W.detach().double(), model.f_net.b.detach().double()
    L = model.ref_chol.double()
    prec_q = torch.cholesky_inverse(L)
    P = W + prec_q
    cov = torch.linalg.inv(P)
    return cov @ (b + prec_q @ model.ref_mean.double()), cov


def _random_quadratic(dim: int, seed: int) -> EBM:
    model = EBM(dim, EBMConfig(energy="quadratic"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        A = torch.randn(dim, dim, generator=g) * 0.4
        model.f_net.raw.copy_(A @ A.T - 0.3 * torch.eye(dim))  # W + I stays positive definite
        model.f_net.b.copy_(torch.randn(dim, generator=g))
    return model


def test_learning_gradient_identity():
    """∂ log Z/∂θ = E_{p_θ}[∂f_θ/∂θ] (tutorial §3) for a Gaussian energy: autograd of the
    closed-form log Z against the Monte-Carlo mean of per-sample ∂f/∂θ over exact samples of
    p_θ, within 4.5 standard errors per component."""
    model = _random_quadratic(3, seed=0)
    params = dict(model.f_net.named_parameters())
    log_z = _gaussian_log_z(model.f_net.W, model.f_net.b, model.ref_mean, model.ref_chol @ model.ref_chol.T)
    exact = torch.autograd.grad(log_z, list(params.values()))

    mean, cov = _implied_gaussian(model)
    n = 40_000
    g = torch.Generator().manual_seed(1)
    u = (mean + torch.randn(n, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T).float()

    def f_single(p, x):
        return torch.func.functional_call(model.f_net, p, (x[None],)).squeeze()

    per_sample = torch.func.vmap(torch.func.grad(f_single), in_dims=(None, 0))(
        {k: v.detach() for k, v in params.items()}, u
    )
    for (name, _), e in zip(params.items(), exact, strict=True):
        g_i = per_sample[name].double()
        mc, se = g_i.mean(0), g_i.std(0) / math.sqrt(n)
        assert ((mc - e.double()).abs() <= 4.5 * se + 1e-6).all(), name


@pytest.mark.parametrize("dim", [1, 2])
def test_quadrature_log_z_matches_closed_form(dim):
    model = _random_quadratic(dim, seed=dim)
    model.box_lo.fill_(-6.0)
    model.box_hi.fill_(6.0)
    res = model.log_partition()
    truth = _gaussian_log_z(
        model.f_net.W.detach().double(),
        model.f_net.b.detach().double(),
        model.ref_mean.double(),
        torch.eye(dim, dtype=torch.float64),
    )
    assert res["kind"] == "exact" and res["method"] == "grid"
    assert abs(res["value"] - float(truth)) <= res["error"] + 1e-5
    # log_prob integrates to one and is labelled exact
    lp = model.log_prob(torch.zeros(4, dim))
    assert lp.kind == "exact"


def test_ais_log_z_in_three_dimensions_matches_closed_form():
    model = _random_quadratic(3, seed=5)
    res = model.log_partition("ais", n_chains=2000, betas=300)
    truth = float(
        _gaussian_log_z(
            model.f_net.W.detach().double(),
            model.f_net.b.detach().double(),
            torch.zeros(3, dtype=torch.float64),
            torch.eye(3, dtype=torch.float64),
        )
    )
    assert res["kind"] == "estimate"
    assert abs(res["value"] - truth) <= 4 * res["error"] + 0.01
    assert model.log_prob(torch.zeros(2, 3)).kind == "estimate"  # auto = AIS above 2-D


NCE_MEAN = torch.tensor([1.0, -0.5])
NCE_COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]])


def test_nce_recovers_mean_covariance_and_log_z():
    """NCE with a Gaussian energy on Gaussian data, against a reference q = N(0, 2²I) that is
    not the data: the implied mean and covariance are the data's, and the learned c is −log Z
    (both in closed form).

    Tolerances from 8 seeds (3000 steps of 512 fresh points): the spread of every estimate is
    sd ≈ 0.004; the covariance is biased up by ≈ 0.005 (inverting a noisy precision, Jensen),
    c − log Z(θ̂) by +0.009 and c − log Z_true by −0.031 (the covariance bias seen at u = 0,
    1.9 sd from the mean). Bounds: |bias| + 5 sd.
    """
    target = GaussianMixture(NCE_MEAN[None], covariances=NCE_COV)
    model = EBM(2, EBMConfig(method="nce", energy="quadratic"))
    model.set_normalization(torch.zeros(2), torch.ones(2) * 1.0001)  # data coordinates (not identity)
    model.prepare(target.sample(2000, generator=torch.Generator().manual_seed(0)), torch.Generator())
    model.ref_mean.zero_()
    model.ref_chol.copy_(2.0 * torch.eye(2))
    train(model, target, TrainConfig(steps=3000, batch_size=512, lr=1e-2, progress=False, seed=3))
    mean_u, cov_u = _implied_gaussian(model)
    s = model.scale.double()
    mean_x = model.shift.double() + s * mean_u
    cov_x = cov_u * s[:, None] * s[None, :]
    assert (mean_x - NCE_MEAN.double()).abs().max() < 0.02
    assert (cov_x - NCE_COV.double()).abs().max() < 0.03
    log_z_model = float(
        _gaussian_log_z(
            model.f_net.W.detach().double(),
            model.f_net.b.detach().double(),
            model.ref_mean.double(),
            model.ref_chol.double() @ model.ref_chol.double().T,
        )
    )
    assert abs(-float(model.c.detach()) - log_z_model) < 0.03
    # the true log Z in u: p(0) = exp(f(0)) q(0) / Z with f(0) = 0, so log Z = log q(0) − log p*(0)
    u0 = torch.zeros(1, 2)
    log_p_true = target.log_prob(model.denormalize(u0).double()) + torch.log(s).sum()
    log_z_true = float(model.log_q(u0).double() - log_p_true)
    assert abs(-float(model.c.detach()) - log_z_true) < 0.055
    assert abs(model.log_partition()["value"] - log_z_model) < 1e-3


# -- short training runs of each method on a 2-D target --------------------------------------

SMALL = {"hidden": 64, "depth": 2, "mcmc_steps": 10, "buffer_size": 2000}
RUNS = {
    "mle": dict(SMALL, method="mle"),
    "mle-short-run": dict(SMALL, method="mle", chains="short-run", mcmc_steps=20),
    "cd": dict(SMALL, method="cd"),
    "nce": {"hidden": 64, "depth": 2, "method": "nce"},
}


@pytest.fixture(scope="module")
def trained() -> dict[str, EBM]:
    out = {}
    for name, opts in RUNS.items():
        lr = EBM.train_defaults_for(opts)["lr"]  # mle, cd: 3e-3; nce: 1e-2
        cfg = TrainConfig(steps=600, lr=lr, progress=False, seed=0)
        out[name] = train("ebm", "8gaussians", cfg, options=opts).model
    return out


@pytest.mark.parametrize("name", list(RUNS))
def test_each_method_lowers_the_exact_kl(trained, name):
    """A short run halves the exact KL (quadrature log Z) of the untrained model, which is the
    reference Gaussian fitted to the data (f starts at zero)."""
    target = get_target("8gaussians")
    untrained = build_model("ebm", 2, RUNS[name])
    untrained.set_normalization(trained[name].shift, trained[name].scale)
    untrained.prepare(target.sample(20_000, generator=torch.Generator().manual_seed(0)), torch.Generator())
    g = torch.Generator().manual_seed(7)
    kl0 = kl_to_truth(untrained, target, 20_000, g)
    kl1 = kl_to_truth(trained[name], target, 20_000, g)
    assert kl1.kind == "exact" and kl0.kind == "exact"
    assert kl0.value > 0.5
    assert kl1.value + 3 * kl1.stderr < 0.5 * kl0.value, (kl0.value, kl1.value)


def test_ais_agrees_with_quadrature_on_a_trained_model(trained):
    model = trained["mle"]
    grid = model.log_partition("grid")
    est = model.log_partition("ais", n_chains=1000, betas=400)
    assert abs(est["value"] - grid["value"]) <= 4 * est["error"] + grid["error"] + 0.01, (est, grid)


def test_sampling_from_the_trained_energy(trained):
    model = trained["mle"]
    g = torch.Generator().manual_seed(0)
    for sampler in ("mala", "hmc", "grid"):
        x = model.sample(500, generator=g, sampler=sampler, steps=20, warmup=20)
        assert x.shape == (500, 2) and torch.isfinite(x).all()
        # most samples where the model puts mass: near the 8 modes of the data
        d = torch.cdist(x, get_target("8gaussians").mode_centers).min(1).values
        assert (d < 1.5).float().mean() > 0.8, sampler
    short = trained["mle-short-run"].sample(100, generator=g)  # auto → short-run
    assert short.shape == (100, 2)
    with pytest.raises(ValueError, match="unknown sampler"):
        model.sample(10, generator=g, sampler="gibbs")


# -- training health --------------------------------------------------------------------------


def _prepared(config: EBMConfig) -> EBM:
    model = EBM(2, config)
    x = get_target("8gaussians").sample(1000, generator=torch.Generator().manual_seed(0))
    model.prepare(x, torch.Generator())
    model.configure_optimizers(1e-3)
    return model


def test_a_nan_energy_restores_the_last_good_state_and_says_so(capsys):
    model = _prepared(EBMConfig(method="mle", hidden=16, depth=1, mcmc_steps=2, buffer_size=100))
    x = get_target("8gaussians").sample(64, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        model.step(x, g)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot = {k: v.clone() for k, v in model._snapshot["model"].items()}
    poison = model.f_net.register_forward_hook(lambda m, i, out: out * float("nan"))
    logs = model.step(x, g)
    poison.remove()
    assert logs["recovered"] == 1.0 and all(math.isfinite(v) for v in logs.values())
    assert "restored the last good state" in capsys.readouterr().err
    state = model.state_dict()
    for k, v in snapshot.items():
        if k not in ("lr_factor", "mcmc_step_size", "chain_step", "hot_step", "recoveries"):
            assert torch.equal(state[k], v), k
    assert any(not torch.equal(before[k], snapshot[k]) for k in snapshot)  # it went back in time
    assert float(model.lr_factor) == 0.5
    assert float(model.mcmc_step_size) == pytest.approx(float(snapshot["mcmc_step_size"]) / 2)
    assert torch.allclose(model.chain_step, snapshot["chain_step"] / 2)
    assert torch.allclose(model.hot_step, snapshot["hot_step"] / 2)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_repeated_divergence_stops_with_the_last_good_checkpoint(tmp_path: Path):
    opts = {
        "method": "mle",
        "hidden": 16,
        "depth": 1,
        "mcmc_steps": 2,
        "buffer_size": 100,
        "max_energy_gap": 1e-12,
    }
    cfg = TrainConfig(steps=50, progress=False, checkpoint_every=1000)
    with pytest.raises(TrainingDiverged, match="restarts"):
        train("ebm", "8gaussians", cfg, out=tmp_path / "run", options=opts)


def test_resume_is_bit_exact_with_persistent_chains(tmp_path: Path):
    opts = {"method": "mle", "hidden": 16, "depth": 1, "mcmc_steps": 3, "buffer_size": 200}
    cfg = TrainConfig(steps=30, checkpoint_every=10, progress=False)
    full = train("ebm", "8gaussians", cfg, out=tmp_path / "full", options=opts)

    class Stop(Exception):
        pass

    def crash(step, logs):
        if step == 17:
            raise Stop

    with pytest.raises(Stop):
        train("ebm", "8gaussians", cfg, out=tmp_path / "cut", options=opts, on_step=crash)
    resumed = train("ebm", None, cfg, out=tmp_path / "cut", resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    record = json.loads((tmp_path / "full" / "checkpoint.json").read_text())
    assert record["family"] == "ebm" and record["model_config"]["method"] == "mle"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"method": "pcd"}, "unknown method"),
        ({"kernel": "nuts"}, "unknown kernel"),
        ({"reinit": 1.5}, "reinit"),
        ({"step_size": 0.0}, "step_size"),
        ({"data_noise": -0.1}, "data_noise"),
        ({"data_noise_fraction": 1.5}, "data_noise_fraction"),
    ],
)
def test_bad_options_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        build_model("ebm", 2, bad)


@pytest.mark.parametrize("flow_family", ["realnvp", "maf"])
def test_flow_reference_is_a_normalized_defensive_mixture(tmp_path: Path, flow_family: str):
    """reference=flow trains a flow of the library on the data first; q = (1 − w) flow + w
    Gaussian is a normalized density (its quadrature log Z is 0) and survives a checkpoint
    round trip."""
    from genmodels.quadrature import grid_log_partition
    from genmodels.train import load_run

    opts = {"reference": "flow", "flow_family": flow_family, "flow_steps": 60, "hidden": 16, "depth": 1}
    cfg = TrainConfig(steps=20, progress=False)
    model = train("ebm", "8gaussians", cfg, out=tmp_path / "run", options=opts).model
    lo, hi = model.box_lo - 2, model.box_hi + 2
    with torch.no_grad():
        res = grid_log_partition(model.log_q, lo, hi, n=300)
    assert abs(res.value) <= res.error + 2e-3, res
    x = model.sample_q(4000, torch.Generator().manual_seed(0))
    assert torch.isfinite(model.log_q(x)).all()
    restored, _ = load_run(tmp_path / "run")
    u = torch.randn(16, 2)
    assert torch.allclose(restored.log_q(u), model.log_q(u))
    assert torch.allclose(restored.log_prob(u).values, model.log_prob(u).values, atol=1e-5)


def test_a_target_as_reference_is_normalized_in_u_and_nce_learns_nothing_to_correct(tmp_path: Path):
    """reference=target: q is the target's density carried into u with its Jacobian (a
    normalized density there: quadrature log Z 0, whatever the standardization), so with the
    data's own target as q and no Gaussian share NCE's optimum is f + c = 0; the model
    survives a checkpoint round trip (the target is rebuilt from its name)."""
    from genmodels.quadrature import grid_log_partition
    from genmodels.train import load_run

    opts = {"reference": "target", "reference_target": "8gaussians", "reference_mix": 0.0, "hidden": 16}
    cfg = TrainConfig(steps=300, batch_size=512, progress=False, seed=0)
    model = train("ebm", "8gaussians", cfg, out=tmp_path / "run", options=opts).model
    assert not torch.allclose(model.scale, torch.ones(2))  # the Jacobian term matters
    with torch.no_grad():
        res = grid_log_partition(model.log_q, model.box_lo - 2, model.box_hi + 2, n=400)
    assert abs(res.value) <= res.error + 5e-3, res
    u = model.sample_q(2000, torch.Generator().manual_seed(0))
    target = get_target("8gaussians")
    d = torch.cdist(model.denormalize(u), target.mode_centers).min(1).values
    assert (d < 3 * target.mode_std).float().mean() > 0.97  # q's draws are the target's (99 % HQ)
    with torch.no_grad():
        logit = model.f(u) + model.c
    assert float(logit.abs().mean()) < 0.1, float(logit.abs().mean())
    restored, _ = load_run(tmp_path / "run")
    assert torch.allclose(restored.log_q(u), model.log_q(u))
    with pytest.raises(ValueError, match="dimension"):
        EBM(3, EBMConfig(reference="target", reference_target="8gaussians"))
    with pytest.raises(ValueError, match="reference_target"):
        EBM(2, EBMConfig(reference="target"))
    with pytest.raises(ValueError, match="flow_family"):
        EBM(2, EBMConfig(reference="flow", flow_family="vae"))


def test_lr_warmup_and_uniform_restarts():
    """The loop's warm-up (the EBM's default: a quarter of the steps) raises the learning rate
    linearly before the cosine decay; reinit_from="uniform" restarts chains over the box three
    times the data's."""
    cfg = TrainConfig(steps=100, lr=1e-2, warmup=0.2)
    cosine = TrainConfig(steps=100, lr=1e-2)
    for step in (0, 9, 19):
        assert cfg.lr_at(step) == pytest.approx(cosine.lr_at(step) * (step + 1) / 20)
    assert cfg.lr_at(50) == cosine.lr_at(50)
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(warmup=1.0).validate()
    assert EBM.train_defaults["warmup"] == 0.25

    model = _prepared(EBMConfig(method="mle", hidden=16, depth=1, buffer_size=100, reinit_from="uniform"))
    x = get_target("8gaussians").sample(64, generator=torch.Generator().manual_seed(1))
    starts = model._restarts(model.normalize(x), torch.Generator().manual_seed(2))
    centre, width = 0.5 * (model.box_lo + model.box_hi), model.box_hi - model.box_lo
    assert ((starts - centre).abs() <= 1.5 * width).all()
    assert ((starts - centre).abs() > 0.5 * width).any()  # beyond the data's box


def test_tempered_persistent_chains_move_and_are_checkpointed(tmp_path: Path):
    """temperatures=T keeps T − 1 hotter replicas per persistent chain (parallel tempering over
    exp(β f̃) N(0, I)); they move, stay finite, and survive a checkpoint round trip."""
    from genmodels.train import load_run

    opts = {"method": "mle", "temperatures": 3, "hidden": 16, "depth": 1, "mcmc_steps": 3, "buffer_size": 64}
    model = build_model("ebm", 2, opts)
    target = get_target("rings")
    model.set_normalization(torch.zeros(2), torch.full((2,), 1.5))
    model.prepare(target.sample(500, generator=torch.Generator().manual_seed(0)), torch.Generator())
    before = model.hot_chains.clone()
    assert before.shape == (2, 64, 2)
    run = train(model, target, TrainConfig(steps=20, batch_size=64, progress=False), out=tmp_path / "run")
    hot = run.model.hot_chains
    assert torch.isfinite(hot).all() and not torch.equal(hot, before)
    restored, _ = load_run(tmp_path / "run")
    assert torch.equal(restored.hot_chains, hot)
    with pytest.raises(ValueError, match="temperatures"):
        build_model("ebm", 2, {"temperatures": 0})


def test_importance_resampled_starts_follow_the_model():
    """resample_q: draws of q reweighted by exp(f) ∝ p/q follow p = exp(f) q / Z. For a
    quadratic energy p is Gaussian: the SIR mean and covariance match it within 4 standard
    errors (plus the O(1/oversample) bias of SIR, small here); weights exp(−f) would not."""
    model = _random_quadratic(2, seed=3)
    with torch.no_grad():
        model.f_net.raw.mul_(0.3)
        model.f_net.b.copy_(torch.tensor([0.6, -0.4]))
    mean, cov = _implied_gaussian(model)
    n = 20_000
    x = model.resample_q(n, torch.Generator().manual_seed(4)).double()
    se = torch.sqrt(torch.diagonal(cov) / n)
    # duplicates from resampling inflate the variance of the mean; 16× oversampling keeps it < 2×
    assert ((x.mean(0) - mean).abs() < 4 * 1.5 * se + 0.01).all(), (x.mean(0), mean)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.05)
    q_mean = model.ref_mean.double()
    assert ((mean - q_mean).abs() > 10 * se).any()  # the test can tell p from q
    s = model.sample(500, generator=torch.Generator().manual_seed(5), steps=5, warmup=5)
    assert s.shape == (500, 2) and torch.isfinite(s).all()
    with pytest.raises(ValueError, match="init"):
        model.sample(5, init="prior")


@pytest.mark.parametrize("temperatures, mcmc_steps, expected", [(4, 20, 5), (3, 7, 2), (4, 2, 1), (1, 6, 6)])
def test_tempering_shares_the_chain_budget(monkeypatch, temperatures, mcmc_steps, expected):
    """mcmc_steps is the budget per chain: under tempering each of the T replicas takes
    max(1, mcmc_steps // T) kernel steps per training step, so the default tempered chains
    cost what plain ones do; without tempering every chain takes mcmc_steps steps."""
    from genmodels.samplers import langevin

    calls = []
    real_step = langevin.MALA.step

    def counting_step(self, state, generator):
        calls.append(state.position.shape[0])
        return real_step(self, state, generator)

    monkeypatch.setattr(langevin.MALA, "step", counting_step)
    opts = {"method": "mle", "temperatures": temperatures, "mcmc_steps": mcmc_steps}
    model = build_model("ebm", 2, {**opts, "hidden": 8, "depth": 1, "buffer_size": 32})
    model.set_normalization(torch.zeros(2), torch.ones(2))
    data = get_target("8gaussians").sample(200, generator=torch.Generator().manual_seed(0))
    model.prepare(data, torch.Generator())
    model.configure_optimizers(1e-3)
    batch = 16
    x = get_target("8gaussians").sample(batch, generator=torch.Generator().manual_seed(1))
    model.step(x, torch.Generator().manual_seed(2))
    assert len(calls) == expected
    assert all(n == temperatures * batch for n in calls)  # every replica of every chain moves


def test_hot_replicas_adapt_their_own_step_sizes():
    # A Gaussian energy of width 0.05: the replica at β = 0.01 samples exp(β f̃) N(0, I), of
    # width ≈ 0.45, so its adapted MALA step must end far larger than the cold chains' (step
    # sizes scale with the variance; one shared step size freezes the hot replicas).
    model = _prepared(
        EBMConfig(method="mle", energy="quadratic", mcmc_steps=8, buffer_size=64, temperatures=4)
    )
    with torch.no_grad():
        model.f_net.raw.copy_(400.0 * torch.eye(2))
    x = torch.zeros(64, 2) + model.shift
    g = torch.Generator().manual_seed(2)
    for _ in range(150):
        model.step(x, g)
    assert model.hot_step.shape == (3, 64)
    assert float(model.hot_step[0].median()) > 10 * float(model.chain_step.median())


def test_checkpoints_from_before_per_replica_steps_still_load():
    model = _prepared(EBMConfig(method="mle", hidden=16, depth=1, mcmc_steps=2, buffer_size=32))
    state = {k: v for k, v in model.state_dict().items() if k != "hot_step"}
    fresh = EBM(2, EBMConfig(method="mle", hidden=16, depth=1, mcmc_steps=2, buffer_size=32))
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.hot_step, model.chain_step.expand(3, 32))


def test_the_energy_floor_bounds_f_below_and_leaves_it_alone_above():
    model = EBM(2, EBMConfig(method="mle", energy="quadratic", energy_floor=20.0, buffer_size=8))
    with torch.no_grad():
        model.f_net.raw.copy_(100.0 * torch.eye(2))
    u = torch.tensor([[0.0, 0.0], [0.1, 0.0], [2.0, 2.0], [5.0, 0.0]])
    g = model.f_net(u).squeeze(-1)  # 0, −0.5, −400, −1250
    f = model.f(u)
    assert torch.allclose(f[:2], g[:2], atol=1e-6)  # far above the floor: f = g
    assert torch.allclose(f[2:], torch.full((2,), -20.0))  # far below: the floor
    assert bool((f >= -20.0).all())
    with pytest.raises(ValueError, match="energy_floor"):
        EBM(2, EBMConfig(energy_floor=-1.0))


def test_data_noise_anneals_geometrically_over_its_share_of_the_run():
    model = _prepared(EBMConfig(method="mle", hidden=16, depth=1, mcmc_steps=2, buffer_size=64))
    model.plan(400)  # default: σ₀ = 0.3 → 0.003 over the first half, 200 updates, then 0
    expected = ((0, 0.3), (50, 0.3 * 0.01**0.25), (100, 0.03), (199, 0.3 * 0.01**0.995), (200, 0), (300, 0))
    for updates, sigma in expected:
        model.updates.fill_(updates)
        assert model.data_noise_level() == pytest.approx(sigma)
    # the level is cached between changes of the counters, and follows every way they change
    model.updates.fill_(100)
    assert model.data_noise_level() == pytest.approx(0.03)
    model.updates += 100
    assert model.data_noise_level() == 0.0
    model.plan(800)
    assert model.data_noise_level() == pytest.approx(0.03)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["updates"].fill_(0)
    model.load_state_dict(state)
    assert model.data_noise_level() == pytest.approx(0.3)
    # the positive phase sees the data convolved with N(0, σ²I): its spread is σ
    model.updates.fill_(0)
    u = torch.zeros(20_000, 2)
    noised = model._noised(u, torch.Generator().manual_seed(0))
    assert float(noised.std()) == pytest.approx(0.3, abs=4 * 0.3 / math.sqrt(2 * noised.numel()))
    off = _prepared(EBMConfig(method="mle", hidden=16, depth=1, buffer_size=8, data_noise=0.0))
    assert off.data_noise_level() == 0.0 and torch.equal(off._noised(u, None), u)


def test_the_training_loop_plans_the_noise_schedule_and_counts_updates(tmp_path: Path):
    opts = {"method": "mle", "hidden": 16, "depth": 1, "mcmc_steps": 2, "buffer_size": 64}
    result = train("ebm", "8gaussians", TrainConfig(steps=20, progress=False), options=opts)
    assert int(result.model.updates) == 20 and int(result.model.planned_steps) == 20
    assert result.model.data_noise_level() == 0.0  # annealed by the middle of the run


def test_checkpoints_from_before_the_noise_schedule_still_load():
    config = EBMConfig(method="mle", hidden=16, depth=1, mcmc_steps=2, buffer_size=32)
    state = {k: v for k, v in _prepared(config).state_dict().items() if k != "updates"}
    fresh = EBM(2, config)
    fresh.load_state_dict(state, strict=True)
    assert int(fresh.updates) == 0  # (their configs load with data_noise 0: test_train.py)


def test_tempered_chains_adapt_their_steps_at_every_kernel_step():
    # Steps 100× too long for a Gaussian energy of width 0.05: the cold chains reject nearly
    # every move, and each of the mcmc_steps // T kernel steps shrinks the step by
    # exp(κ·(acceptance − 0.574)); adapting once per visit would shrink it by that once.
    from genmodels.models.ebm import STEP_ADAPT_RATE

    model = _prepared(
        EBMConfig(method="mle", energy="quadratic", mcmc_steps=40, buffer_size=64, step_size=0.25)
    )
    with torch.no_grad():
        model.f_net.raw.copy_(400.0 * torch.eye(2))
    before = model.chain_step.clone()
    model.step(torch.zeros(64, 2) + model.shift, torch.Generator().manual_seed(2))
    kernel_steps = 40 // 4
    once = math.exp(STEP_ADAPT_RATE * (0.1 - 0.574))
    ratio = model.chain_step / before
    moved = ratio < 1  # the chains this update visited
    assert moved.sum() > 32
    assert float(ratio[moved].max()) < once ** (kernel_steps / 2)


# -- energy=conv: a convolutional f for square one-channel images ------------------------------


def test_conv_energy_starts_at_zero_learns_and_survives_a_checkpoint(tmp_path: Path):
    """energy=conv on 8×8 images (dim 64): f is a ConvEncoder whose output layer starts at zero,
    so f ≡ 0 (the untrained model is q) until the first step; a few NCE steps on digits move it
    and a checkpoint restores it exactly."""
    from genmodels.nets.conv import ConvEncoder
    from genmodels.train import load_run

    model = EBM(64, EBMConfig(energy="conv", hidden=64))
    assert isinstance(model.f_net, ConvEncoder) and model.f_net.convs[0].out_channels == 8
    u = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.f(u), torch.zeros(5))
    assert model.score(u).shape == (5, 64)
    run = train(
        "ebm",
        "digits",
        TrainConfig(steps=3, batch_size=32, progress=False),
        out=tmp_path / "run",
        options={"energy": "conv", "hidden": 64},
    )
    assert run.model.config.energy == "conv"
    f = run.model.f(u)
    assert f.shape == (5,) and torch.isfinite(f).all() and f.abs().max() > 0
    restored, _ = load_run(tmp_path / "run")
    torch.testing.assert_close(restored.f(u), f)
    x = run.model.shift + run.model.scale * u
    torch.testing.assert_close(restored.energy(x), run.model.energy(x))


@pytest.mark.parametrize("dim", [10, 36])
def test_conv_energy_needs_square_images_with_a_side_divisible_by_4(dim):
    with pytest.raises(ValueError, match="energy=conv needs square one-channel images") as err:
        EBM(dim, EBMConfig(energy="conv"))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown energy 'cnn'; choose one of: mlp, conv, quadratic"):
        EBM(64, EBMConfig(energy="cnn"))
    with pytest.raises(ValueError, match="energy=conv takes none"):
        EBM(64, EBMConfig(energy="conv", fourier_features=8))


def test_state_dict_is_plain_tensors(tmp_path) -> None:
    """torch.save of the state dict loads with weights_only=True: no method of the model leaks
    into its metadata (EBM once defined ``_version``, nn.Module's own metadata attribute)."""
    model = build_model("ebm", 2, {}, seed=0)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = torch.load(tmp_path / "w.pt", weights_only=True)
    assert loaded.keys() == model.state_dict().keys()


def test_sir_temperature() -> None:
    """β = 1 where the plain weights have the effective sample size asked for; otherwise the
    largest β whose tempered weights still have it (bisection to 2⁻⁴⁰)."""
    g = torch.Generator().manual_seed(0)
    flat = 0.1 * torch.randn(1000, generator=g, dtype=torch.float64)
    assert importance_ess(flat) > 900 and sir_temperature(flat, 50) == 1.0
    steep = 40.0 * torch.randn(1000, generator=g, dtype=torch.float64)
    assert importance_ess(steep) < 2
    beta = sir_temperature(steep, 50)
    assert 0 < beta < 1
    assert importance_ess(beta * steep) >= 50 > importance_ess((beta + 1e-6) * steep)
    assert sir_temperature(steep, 1000) < 1e-9  # only (nearly) equal weights have ESS = all of them


def test_resampled_starts_stay_diverse_in_high_dimension() -> None:
    """In 64-D the plain SIR weights of a steep f degenerate (every start a copy of one draw of q);
    tempered, n starts hold at least n/4 distinct points. Where the weights are healthy (2-D, a
    gentle f) the draws are plain SIR's, draw for draw."""
    n = 100
    model = build_model("ebm", 64, {"energy": "mlp", "hidden": 8, "depth": 1})
    model.__dict__["f"] = lambda u: 25.0 * u.sum(1) / 8  # a steep log-weight: sd 25 under q
    starts = model.resample_q(n, torch.Generator().manual_seed(0))
    assert torch.unique(starts, dim=0).shape[0] >= n // 4
    plain_pool = model.sample_q(n * 16, torch.Generator().manual_seed(0))
    assert importance_ess(model.f(plain_pool)) < 5  # plain SIR would repeat a handful of points

    gentle = build_model("ebm", 2, {"hidden": 8, "depth": 1})
    gentle.__dict__["f"] = lambda u: 0.5 * u[:, 0]
    got = gentle.resample_q(n, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    pool = gentle.sample_q(n * 16, g)
    idx = torch.multinomial(torch.softmax(gentle.f(pool).double(), 0), n, replacement=True, generator=g)
    assert torch.equal(got, pool[idx])
