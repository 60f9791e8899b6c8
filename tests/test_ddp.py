"""Data-parallel training (genmodels.distributed) under a real 2-process torchrun on CPU (gloo).

One torchrun launch (a module fixture) runs a worker script that trains, crashes and
resumes, evaluates and finally fails on one rank; the tests compare what it left with
single-process runs here. The launch has a hard timeout and runs in its own session, so a
hung rank cannot hang the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from genmodels import distributed as ddp
from genmodels import get_target
from genmodels.data import load_data
from genmodels.evaluate import evaluate_model
from genmodels.models import build_model
from genmodels.models.base import Model
from genmodels.models.coop import SIGMA_EMA, Coop, CoopConfig
from genmodels.models.ebm import EBM, STEP_ADAPT_RATE, EBMConfig, chains_per_rank
from genmodels.models.triangle import Triangle
from genmodels.train import PREPARE_SAMPLES, TrainConfig, load_run, standardize_from, train

NVP = {"layers": 2, "hidden": 16}
FM = {"hidden": 16, "depth": 2, "emb_dim": 8}
#: tiny players; pack 2 and 2 discriminator updates per step (several DDP passes per step)
GAN = {"g_hidden": 16, "d_hidden": 16, "g_depth": 1, "d_depth": 1, "latent_dim": 2, "pack": 2, "d_steps": 2}
EVAL = {"n": 300, "mode_n": 300, "energy_n": 300}
#: tiny energy models, one run per way of learning; a buffer of 64 persistent chains of which each
#: rank draws 16 per step (so the ranks often draw the same chain), tempered with 2 replicas; steps
#: long enough that acceptance is well below 1 and differs between the ranks
EBM_MCMC = {"hidden": 16, "depth": 2, "fourier_features": 8, "buffer_size": 64, "mcmc_steps": 4}
EBM_MCMC.update(temperatures=2, step_size=0.5)
EBM_NCE = {"method": "nce", "hidden": 16, "depth": 2}
EBM_RUNS = {
    "mle": {"method": "mle", **EBM_MCMC},
    "short-run": {"method": "mle", "chains": "short-run", **EBM_MCMC},
    "cd": {"method": "cd", **EBM_MCMC},
    "mle-hmc": {"method": "mle", **EBM_MCMC, "kernel": "hmc", "temperatures": 1},
    "nce": EBM_NCE,
    "nce-flow": {**EBM_NCE, "reference": "flow", "flow_steps": 4},
}
#: tiny CoopNets: each rank advances 4 of the 8 persistent chains a step (buffer_chains below the
#: global batch, so the split over the ranks matters); a step size large enough that the revision's
#: acceptance is below its 0.9 target (it adapts, differently on each rank), z inference and σ learned
COOP = {"hidden": 16, "depth": 2, "g_hidden": 16, "g_depth": 1, "latent_dim": 2, "langevin_steps": 4}
COOP.update(step_size=1.0, buffer_chains=8, buffer_size=32, infer_z=True, z_steps=2)
#: a tiny divergence triangle with every MCMC option on: refined negatives (some restarted from q)
#: whose step size adapts, and 8 persistent chains pooled in (4 per rank)
TRIANGLE = {"hidden": 16, "depth": 1, "ebm_hidden": 16, "ebm_depth": 2, "latent_dim": 2}
TRIANGLE.update(negative_steps=2, negative_restart=0.25, buffer_chains=8, buffer_size=32, buffer_steps=4)

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    import genmodels.checkpoint as ckpt
    from genmodels import distributed as ddp, get_target
    from genmodels.evaluate import evaluate_model
    from genmodels.models.base import NotSupportedError
    from genmodels.train import TrainConfig, train

    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    NVP, FM, EVAL = json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
    GAN, EBM = json.loads(sys.argv[5]), json.loads(sys.argv[6])
    COOP, TRIANGLE = json.loads(sys.argv[7]), json.loads(sys.argv[8])
    saves = []
    real_save = ckpt.save
    def counting_save(directory, record, tensors):
        saves.append(int(record["step"]))
        return real_save(directory, record, tensors)
    ckpt.save = counting_save

    def cfg(steps=12):
        return TrainConfig(
            steps=steps, batch_size=32, lr=1e-2, checkpoint_every=5, log_every=3, progress=False
        )
    target = get_target("8gaussians")
    def evaluator(model):
        return evaluate_model(model, target, generator=torch.Generator().manual_seed(5), **EVAL)

    class Stop(Exception):
        pass
    def crash(step, logs):
        if step == 7:
            raise Stop
    result = {"rank": rank}
    try:
        train("realnvp", "8gaussians", cfg(), out=f"{out}/cut", options=NVP, on_step=crash)
    except Stop:
        pass
    cut = train("realnvp", None, cfg(), out=f"{out}/cut", resume=True)
    full = train("realnvp", "8gaussians", cfg(), out=f"{out}/full", options=NVP, evaluate=evaluator)
    torch.save(cut.model.state_dict(), f"{out}/cut{rank}.pt")
    torch.save(full.model.state_dict(), f"{out}/full{rank}.pt")
    result["metrics"] = full.metrics
    result["saves"] = list(saves)

    fm = train("fm", "8gaussians", cfg(3), options=FM)
    torch.save(fm.model.state_dict(), f"{out}/fm{rank}.pt")
    result["fm_losses"] = [h["loss"] for h in fm.history]
    g = torch.Generator().manual_seed(9)  # dopri5 in every rank's share: different step counts
    result["fm_eval"] = evaluate_model(ddp.ShardedSampler(fm.model), target, generator=g, **EVAL)

    for family in ("gan", "wgan-gp"):  # two optimisers, each pass reaches one player
        run = train(family, "8gaussians", cfg(3), options=GAN)
        torch.save(run.model.state_dict(), f"{out}/{family}{rank}.pt")
        result[family] = {"step": run.step, "history": run.history}

    from genmodels.models.base import Model
    real_call = Model.call
    def recording_call(self, method, *args, **kwargs):  # what goes through the DDP wrapper
        if self.data_parallel:
            routed.append(method)
        return real_call(self, method, *args, **kwargs)
    Model.call = recording_call
    for name, options in EBM.items():  # MCMC on the plain module, global decisions, shared chains
        routed = []
        run = train("ebm", "8gaussians", cfg(3), options=options)
        torch.save(run.model.state_dict(), f"{out}/ebm-{name}{rank}.pt")
        result[f"ebm-{name}"] = {"step": run.step, "history": run.history, "routed": routed}
    for family, options in (("coop", COOP), ("triangle", TRIANGLE)):  # two passes, MCMC on the side
        routed = []
        run = train(family, "8gaussians", cfg(3), options=options)
        torch.save(run.model.state_dict(), f"{out}/{family}{rank}.pt")
        result[family] = {"step": run.step, "history": run.history, "routed": routed}

    # coop: rank 1 alone sees a diverging step (an infinite energy gap at the second update); the
    # health check reads the logs averaged over the ranks, so both ranks restore and skip the rest
    from genmodels.models.coop import Coop
    real_objective, fired = Coop._ebm_objective, []
    def flaky_objective(self, u, x_tilde, persistent):
        out = real_objective(self, u, x_tilde, persistent)
        if rank == 1 and int(self.ebm.updates) == 1 and not fired:
            fired.append(True)
            out["f_data"] = torch.tensor(float("inf"))
        return out
    Coop._ebm_objective = flaky_objective
    routed = []
    run = train("coop", "8gaussians", cfg(3), options=COOP)
    Coop._ebm_objective = real_objective
    torch.save(run.model.state_dict(), f"{out}/coop-recovered{rank}.pt")
    result["coop-recovered"] = {"step": run.step, "history": run.history, "routed": routed}
    Model.call = real_call

    # persistent chains through a crash: checkpoint at 2, crash at 3, resume from rank 0's checkpoint
    def crash_at_3(step, logs):
        if step == 3:
            raise Stop
    ebm_cfg = TrainConfig(steps=3, batch_size=32, lr=1e-2, checkpoint_every=2, log_every=3, progress=False)
    try:
        train("ebm", "8gaussians", ebm_cfg, out=f"{out}/ebm-cut", options=EBM["mle"], on_step=crash_at_3)
    except Stop:
        pass
    run = train("ebm", None, ebm_cfg, out=f"{out}/ebm-cut", resume=True)
    torch.save(run.model.state_dict(), f"{out}/ebm-resumed{rank}.pt")

    # rank 1 alone sees a diverging step (an infinite energy gap at the second update): the
    # health check reads the logs averaged over the ranks, so both ranks restore and go on
    from genmodels.models.ebm import EBM as EnergyModel
    real_nce, fired = EnergyModel._nce_loss, []
    def flaky_nce(self, u, generator):
        out = real_nce(self, u, generator)
        if rank == 1 and int(self.updates) == 1 and not fired:
            fired.append(True)
            out["energy_gap"] = torch.tensor(float("inf"))
        return out
    EnergyModel._nce_loss = flaky_nce
    run = train("ebm", "8gaussians", cfg(3), options=EBM["nce"])
    EnergyModel._nce_loss = real_nce
    torch.save(run.model.state_dict(), f"{out}/ebm-recovered{rank}.pt")
    result["ebm-recovered"] = {"step": run.step, "history": run.history}

    class Bypass(Model):  # its step differentiates a loss without Model.call: DDP would not see it
        family = "bypass"
        def __init__(self):
            super().__init__(2)
            self.w = torch.nn.Parameter(torch.zeros(2))
        def step(self, batch, generator=None):
            (opt,) = self.optimizers.values()
            opt.zero_grad()
            loss = ((self.normalize(batch) - self.w) ** 2).mean()
            loss.backward()
            opt.step()
            return {"loss": float(loss)}
    try:
        train(Bypass(), "8gaussians", cfg(2))
    except NotSupportedError as err:
        result["unsupported"] = str(err)
    with open(f"{out}/result{rank}.json", "w") as f:
        json.dump(result, f)
    if rank == 1:  # one rank fails alone: rank 0 waits in a collective; torchrun must end it
        raise RuntimeError("rank 1 fails on purpose")
    train("realnvp", "8gaussians", cfg(), options=NVP)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("ddp")
    script = out / "worker.py"
    script.write_text(WORKER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
        str(out),
        json.dumps(NVP),
        json.dumps(FM),
        json.dumps(EVAL),
        json.dumps(GAN),
        json.dumps(EBM_RUNS),
        json.dumps(COOP),
        json.dumps(TRIANGLE),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        log, _ = proc.communicate(timeout=170)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in 170 s:\n{log[-3000:]}")
    results = []
    for r in (0, 1):
        path = out / f"result{r}.json"
        assert path.exists(), f"rank {r} wrote no result:\n{log[-4000:]}"
        results.append(json.loads(path.read_text()))
    return {"out": out, "rc": proc.returncode, "log": log, "results": results, "s": time.perf_counter() - t0}


def _cfg(steps: int = 12) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=32, lr=1e-2, checkpoint_every=5, log_every=3, progress=False)


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
    assert worst <= tol, worst
    return worst


def test_ranks_hold_the_same_weights(launch: dict[str, Any]) -> None:
    out = launch["out"]
    ebm = [f"ebm-{name}" for name in (*EBM_RUNS, "recovered", "resumed")]
    for name in ("full", "cut", "fm", "gan", "wgan-gp", *ebm, "coop", "coop-recovered", "triangle"):
        a, b = _load(out / f"{name}0.pt"), _load(out / f"{name}1.pt")
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_matches_one_process_with_the_same_global_batch(launch: dict[str, Any]) -> None:
    """realnvp has no noise in its loss: 2 ranks x 16 == one process x 32, up to float rounding
    (the gradient is averaged in another order; after 12 Adam steps ~1e-7 apart)."""
    single = train("realnvp", "8gaussians", _cfg(), options=NVP)
    _close(_load(launch["out"] / "full0.pt"), single.model.state_dict(), tol=1e-5)
    # a different run (seed) is far away, so the tolerance above can fail
    other = train("realnvp", "8gaussians", TrainConfig(**{**_cfg().__dict__, "seed": 1}), options=NVP)
    with pytest.raises(AssertionError):
        _close(_load(launch["out"] / "full0.pt"), other.model.state_dict(), tol=1e-5)


def test_noisy_family_equals_its_two_ranks_simulated_in_one_process(launch: dict[str, Any]) -> None:
    """fm draws noise in its loss from a per-rank generator (rank_seed), so DDP does not repeat
    the single-process draws; it equals one process that averages the two ranks' slice losses,
    each with that rank's generator (what DDP's gradient averaging computes)."""
    cfg = _cfg(3)
    data = load_data("8gaussians")
    model = build_model("fm", data.dim, FM, seed=cfg.seed)
    standardize_from(model, data, cfg.seed)
    (opt,) = model.configure_optimizers(cfg.lr).values()
    data_gen = torch.Generator().manual_seed(cfg.seed)
    gens = [torch.Generator().manual_seed(ddp.rank_seed(cfg.seed + 1, r)) for r in (0, 1)]
    assert ddp.rank_seed(cfg.seed + 1, 0) == cfg.seed + 1  # rank 0 keeps the single-process seed
    losses = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        batch = data.batch(step, cfg.batch_size, cfg.seed, data_gen)
        h = cfg.batch_size // 2
        opt.zero_grad()
        parts = [model.loss(model.normalize(batch[r * h : (r + 1) * h]), gens[r])["loss"] for r in (0, 1)]
        loss = (parts[0] + parts[1]) / 2
        loss.backward()
        opt.step()
        model.steps_done += 1
        losses.append(float(loss.detach()))
    _close(_load(launch["out"] / "fm0.pt"), model.state_dict(), tol=1e-6)
    # the logged loss is the mean over the ranks (log_every=3: one entry, steps 1..3)
    assert launch["results"][0]["fm_losses"] == pytest.approx([sum(losses) / 3], rel=1e-6)


@pytest.mark.parametrize("family", ["gan", "wgan-gp"])
def test_gan_families_equal_their_two_ranks_simulated_in_one_process(
    launch: dict[str, Any], family: str
) -> None:
    """gan and wgan-gp train under DDP: every pass of the step (d_steps discriminator updates
    on fake samples drawn under no_grad, one generator update through the frozen
    discriminator; wgan-gp's gradient penalty differentiates D's input with create_graph) goes
    through Model.call, and find_unused_parameters lets each pass reach one player only. It
    equals one process averaging the two ranks' slice losses, each rank with its own noise."""
    result = launch["results"][0][family]
    assert result["step"] == 3 and launch["results"][1][family]["step"] == 3
    cfg = _cfg(3)
    data = load_data("8gaussians")
    model = build_model(family, data.dim, GAN, seed=cfg.seed)
    standardize_from(model, data, cfg.seed)
    opts = model.configure_optimizers(cfg.lr)
    opt_d, opt_g = opts["discriminator"], opts["generator"]
    data_gen = torch.Generator().manual_seed(cfg.seed)
    gens = [torch.Generator().manual_seed(ddp.rank_seed(cfg.seed + 1, r)) for r in (0, 1)]
    d_losses, g_losses = [], []
    for step in range(cfg.steps):
        for opt in opts.values():
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step)
        batch = data.batch(step, cfg.batch_size, cfg.seed, data_gen)
        h = cfg.batch_size // 2
        reals = [model.normalize(batch[r * h : (r + 1) * h]) for r in (0, 1)]
        for _ in range(GAN["d_steps"]):
            opt_d.zero_grad()
            parts = []
            for r in (0, 1):
                with torch.no_grad():
                    fake = model.generate(h, gens[r])
                parts.append(model.discriminator_loss(reals[r], fake, gens[r])["loss"])
            loss = (parts[0] + parts[1]) / 2
            loss.backward()
            opt_d.step()
            d_losses.append(float(loss.detach()))
        opt_g.zero_grad()
        model.discriminator.requires_grad_(False)
        g_loss = (model.generator_objective(h, gens[0]) + model.generator_objective(h, gens[1])) / 2
        g_loss.backward()
        model.discriminator.requires_grad_(True)
        opt_g.step()
        g_losses.append(float(g_loss.detach()))
    _close(_load(launch["out"] / f"{family}0.pt"), model.state_dict(), tol=1e-6)
    (logged,) = result["history"]  # log_every=3: one entry, the means over steps 1..3 and the ranks
    assert logged["loss"] == pytest.approx(sum(d_losses) / len(d_losses), rel=1e-6)
    assert logged["g_loss"] == pytest.approx(sum(g_losses) / len(g_losses), rel=1e-6)


def test_checkpoints_by_rank_zero_and_exact_resume(launch: dict[str, Any], tmp_path: Path) -> None:
    out = launch["out"]
    r0, r1 = launch["results"]
    assert r1["saves"] == []  # rank 1 never writes
    # cut: 5, then the crash at 7, then 10 and 12 after the resume from 5; full: 5, 10, 12
    assert r0["saves"] == [5, 10, 12, 5, 10, 12]
    # the resumed run equals the uninterrupted one bit for bit (same world size)
    a, b = _load(out / "cut0.pt"), _load(out / "full0.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    record = json.loads((out / "cut" / "checkpoint.json").read_text())
    rngs = record["distributed"]["model_rng"]
    assert record["distributed"]["world_size"] == 2 and len(rngs) == 2
    assert rngs[0] != rngs[1]  # independent noise streams per rank
    steps = [json.loads(line)["step"] for line in (out / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 9, 12]  # one writer, replayed steps dropped
    # a DDP checkpoint resumes in one process too (rank 0's streams)
    shutil.copytree(out / "full", tmp_path / "full")
    more = train("realnvp", None, _cfg(14), out=tmp_path / "full", resume=True)
    assert more.step == 14


def test_evaluation_equals_one_process(launch: dict[str, Any]) -> None:
    """The loop's evaluation (rank 0, broadcast) is that of the trained weights in one process;
    a ShardedSampler evaluation (dopri5 shares on both ranks, gathered) equals the one-process
    evaluation of the same two shares."""
    r0, r1 = launch["results"]
    assert r0["metrics"] == r1["metrics"]
    target = get_target("8gaussians")
    model, _ = load_run(launch["out"] / "full")
    here = evaluate_model(model, target, generator=torch.Generator().manual_seed(5), **EVAL)
    assert {"step": 12, **here} == pytest.approx(r0["metrics"], rel=1e-6)

    fm = build_model("fm", 2, FM)
    fm.load_state_dict(_load(launch["out"] / "fm0.pt"))
    fm.eval()
    g = torch.Generator().manual_seed(9)
    single = evaluate_model(ddp.ShardedSampler(fm, world_size=2), target, generator=g, **EVAL)
    assert r0["fm_eval"] == r1["fm_eval"]
    assert single == pytest.approx(r0["fm_eval"], rel=1e-6)
    g = torch.Generator().manual_seed(9)  # other shards: another sample set, other numbers
    three = evaluate_model(ddp.ShardedSampler(fm, world_size=3), target, generator=g, **EVAL)
    assert three["energy_distance"] != pytest.approx(r0["fm_eval"]["energy_distance"], rel=1e-6)


def _ebm_two_ranks_in_one_process(options: dict[str, Any], steps: int = 3) -> tuple[EBM, list[float]]:
    """What ``train("ebm", ...)`` on 2 ranks computes, in one process: each rank's slice of the
    global batch with that rank's generator (data noise, chain draws, MCMC noise, NCE noise), the
    MCMC step size adapted by the acceptance averaged over both ranks (cd, short-run), both
    ranks' persistent chains written into the one buffer, rank 0's draw then rank 1's, and the
    gradient of the mean of the two slice losses. Returns the model and the mean loss per step."""
    cfg = _cfg(steps)
    data = load_data("8gaussians")
    model = build_model("ebm", data.dim, options, seed=cfg.seed)
    assert isinstance(model, EBM)
    standardize_from(model, data, cfg.seed)
    reference = data.sample_reference(PREPARE_SAMPLES, cfg.seed).to(model.shift.dtype)
    model.prepare(reference, torch.Generator().manual_seed(cfg.seed + 2))
    model.plan(cfg.steps)
    (opt,) = model.configure_optimizers(cfg.lr).values()
    data_gen = torch.Generator().manual_seed(cfg.seed)
    gens = [torch.Generator().manual_seed(ddp.rank_seed(cfg.seed + 1, r)) for r in (0, 1)]
    c, losses = model.config, []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        batch = data.batch(step, cfg.batch_size, cfg.seed, data_gen)
        h = cfg.batch_size // 2
        us = [model.normalize(batch[r * h : (r + 1) * h]) for r in (0, 1)]
        opt.zero_grad()
        if c.method == "nce":
            parts = [model._nce_loss(us[r], gens[r])["loss"] for r in (0, 1)]
        else:
            us = [model._noised(us[r], gens[r]) for r in (0, 1)]
            if c.method == "cd" or c.chains == "short-run":
                eps = model.mcmc_step_size.to(us[0].dtype)
                negs, accs = [], []
                for r in (0, 1):
                    start = us[r] if c.method == "cd" else model.sample_q(h, gens[r])
                    neg, acc, _ = model.run_chains(start, c.mcmc_steps, gens[r], float(eps))
                    negs.append(neg)
                    accs.append(acc.mean())
                model.mcmc_step_size.copy_(model._adapted(eps, (accs[0] + accs[1]) / 2))
            else:
                shares = [model._persistent_run(us[r], gens[r]) for r in (0, 1)]
                for share in shares:
                    model._store_chains(share)
                model.mcmc_step_size.fill_(float(model.chain_step.median()))
                negs = [share.neg for share in shares]
            parts = [model._ml_objective(us[r], negs[r])["loss"] for r in (0, 1)]
        loss = (parts[0] + parts[1]) / 2
        loss.backward()
        opt.step()
        model.updates += 1
        losses.append(float(loss.detach()))
    return model, losses


@pytest.mark.parametrize("name", ["mle", "cd", "nce"])
def test_ebm_equals_its_two_ranks_simulated_in_one_process(launch: dict[str, Any], name: str) -> None:
    """ebm under DDP: MCMC on the plain module with each rank's noise, the loss on the chains
    through Model.call; mle's persistent chains are one buffer that both ranks update (gathered,
    in rank order), cd adapts its step size by the acceptance of both ranks. Weights, chains and
    step sizes equal one process doing what the two ranks do."""
    result = launch["results"][0][f"ebm-{name}"]
    assert result["step"] == 3
    model, losses = _ebm_two_ranks_in_one_process(EBM_RUNS[name])
    state = _load(launch["out"] / f"ebm-{name}0.pt")
    _close(state, model.state_dict(), tol=1e-6)  # every tensor, the chain buffers included
    for key in ("mcmc_step_size", "chain_step", "hot_step"):  # relative: step sizes are small
        torch.testing.assert_close(state[key], model.state_dict()[key], rtol=1e-6, atol=0)
    if name != "nce":  # the step size did adapt (nce runs no chains)
        assert float(state["mcmc_step_size"]) != pytest.approx(EBM_RUNS[name]["step_size"], rel=1e-3)
    (logged,) = result["history"]  # log_every=3: one entry, the means over steps 1..3 and the ranks
    assert logged["loss"] == pytest.approx(sum(losses) / 3, rel=1e-5, abs=1e-7)


def test_ebm_routes_only_its_loss_through_ddp(launch: dict[str, Any]) -> None:
    """Each step sends exactly one computation through the DDP wrapper, the differentiated loss;
    the MCMC runs on the plain module (its samples are not differentiated with respect to the
    weights: through the wrapper it would be wasted work, and would let a step whose loss
    bypassed DDP pass ``check_routed``). reference=flow trains its flow first, itself under DDP."""
    for name in EBM_RUNS:
        for r in (0, 1):
            routed = launch["results"][r][f"ebm-{name}"]["routed"]
            loss = "_nce_loss" if EBM_RUNS[name]["method"] == "nce" else "_ml_objective"
            flow = ["loss"] * EBM_RUNS[name].get("flow_steps", 0) if "reference" in EBM_RUNS[name] else []
            assert routed == flow + [loss] * 3, (name, r)


def test_ebm_resumes_its_shared_chains_exactly(launch: dict[str, Any]) -> None:
    """Rank 0's checkpoint holds the one chain buffer that every rank shares, and every rank's
    generator: the run resumed after a crash equals the uninterrupted one bit for bit."""
    out = launch["out"]
    a, b = _load(out / "ebm-resumed0.pt"), _load(out / "ebm-mle0.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


#: the buffers that global decisions set (step-size adaptation, chain updates, recovery)
GLOBAL_EBM_STATE = ("mcmc_step_size", "chain_step", "hot_step", "chains", "lr_factor", "recoveries")
GLOBAL_EBM_STATE += ("updates",)


def test_ebm_global_state_equal_across_ranks(launch: dict[str, Any]) -> None:
    """The decisions every rank must take alike: the adapted MCMC step sizes (one for short-run
    and cd, one per chain and replica for persistent chains), the shared chains, and the
    recovery from a divergence that only rank 1 saw (both restored the last good state and
    halved the learning rate; one update was undone)."""
    out = launch["out"]
    for name in (*EBM_RUNS, "recovered"):
        a, b = _load(out / f"ebm-{name}0.pt"), _load(out / f"ebm-{name}1.pt")
        for key in GLOBAL_EBM_STATE:
            assert torch.equal(a[key], b[key]), (name, key)
    persistent = _load(out / "ebm-mle0.pt")
    assert persistent["chain_step"].unique().numel() > 1  # the chains' own step sizes adapted
    recovered = [_load(out / f"ebm-recovered{r}.pt") for r in (0, 1)]
    for state in recovered:
        assert int(state["recoveries"]) == 1 and float(state["lr_factor"]) == 0.5
        assert int(state["updates"]) == 1  # 3 steps: one healthy update, the second undone, one more
    for r in (0, 1):
        (logged,) = launch["results"][r]["ebm-recovered"]["history"]
        assert logged["recovered"] == pytest.approx(1 / 3)


def test_unsupported_family_and_a_failing_rank(launch: dict[str, Any]) -> None:
    r0, r1 = launch["results"]
    assert "bypass family cannot train under DistributedDataParallel" in r0["unsupported"]
    assert r1["unsupported"] == r0["unsupported"]
    # rank 1 failed alone at the end; torchrun ended rank 0 (waiting in a collective)
    assert launch["rc"] != 0 and "rank 1 fails on purpose" in launch["log"]


def test_launch_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ddp.TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    assert not ddp.setup("cpu").active
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set; launch with"):
        ddp.setup("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="RANK is 1 but WORLD_SIZE"):
        ddp.setup("cpu")
    with pytest.raises(ValueError, match="pass --device cuda"):
        ddp._rank_device("cuda:1", 0)
    with pytest.raises(ValueError, match=r"cpu \(gloo\) or cuda \(nccl\)"):
        ddp._rank_device("mps", 0)
    with pytest.raises(ValueError, match=r"batch-size 33 .* divisible by the 2 processes"):
        ddp.check_batch(33, ddp.Context(rank=0, world_size=2))
    assert ddp.shard_sizes(7, 3) == [3, 2, 2]
    # without a process group the global-decision helpers are the identity (one process unchanged)
    t = torch.tensor([0.25, 1.0])
    assert ddp.mean_across(t) is t and ddp.gather_across(t)[0] is t and ddp.process_rank() == 0
    assert ddp.rank_seed(4, 0) == 4 and len({ddp.rank_seed(4, r) for r in range(4)}) == 4
    # the shards of a ShardedSampler in one process are the single-process samples of each rank
    model = build_model("realnvp", 2, NVP)
    x = ddp.ShardedSampler(model, world_size=2).sample(5, generator=torch.Generator().manual_seed(0))
    seed = int(torch.randint(0, 2**62, (), generator=torch.Generator().manual_seed(0)))
    second = model.sample(2, generator=torch.Generator().manual_seed(ddp.rank_seed(seed, 1, 1)))
    assert x.shape == (5, 2) and torch.equal(x[3:], second)


EXIT_WORKER = textwrap.dedent(
    """
    import json, os, weakref
    import torch
    import torch.distributed as dist
    from genmodels import distributed as ddp
    from genmodels.models import build_model

    ddp._init_group("gloo", 60.0)
    model = build_model("realnvp", 2, {"layers": 2, "hidden": 8})
    ddp.wrap(model, ddp.Context(rank=0, world_size=1))  # the first DDP imports torch._dynamo
    model.call("loss", torch.randn(8, 2), None)["loss"].backward()  # one pass through the wrapper
    ddp.unwrap(model)
    world = weakref.ref(dist.group.WORLD)
    def threads():  # this process's threads, where the system lists them (Linux)
        return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
    before = threads()
    ddp._destroy()
    print(json.dumps({"freed": world() is None, "threads": [before, threads()]}))
    """
)


def test_the_group_is_freed_at_exit(tmp_path: Path) -> None:
    """The exit handler frees the process group, so its worker threads are joined before the
    interpreter is torn down (a worker still alive then can abort the process at exit). A fresh
    interpreter: the group must not be held by modules imported after it (the first DDP imports
    torch._dynamo, which imports torch.distributed.nn.functional with group.WORLD in its defaults)."""
    script = tmp_path / "exit_worker.py"
    script.write_text(EXIT_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "RANK": "0", "WORLD_SIZE": "1"}
    env.update(LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["freed"], report
    before, after = report["threads"]
    if before is not None:  # gloo's worker threads (and its loop) are gone
        assert after < before, report


def _prepared(family: str, options: dict[str, Any], cfg: TrainConfig) -> Model:
    """A fresh model of ``family`` set up as the training loop sets it up (standardization,
    ``prepare``, ``plan``), before its optimisers."""
    data = load_data("8gaussians")
    model = build_model(family, data.dim, options, seed=cfg.seed)
    standardize_from(model, data, cfg.seed)
    reference = data.sample_reference(PREPARE_SAMPLES, cfg.seed).to(model.shift.dtype)
    model.prepare(reference, torch.Generator().manual_seed(cfg.seed + 2))
    model.plan(cfg.steps)
    return model


def _shared_chains(ebm: EBM, us: list[torch.Tensor], gens: list[torch.Generator]) -> list[torch.Tensor]:
    """Both ranks' draws of persistent chains advanced from the same buffer, then written into it in
    rank order (the step size the caller's revision uses is left alone): returns their chains."""
    kept = ebm.mcmc_step_size.clone()
    shares = [ebm._persistent_run(u, g) for u, g in zip(us, gens, strict=True)]
    for share in shares:
        ebm._store_chains(share)
    ebm.mcmc_step_size.copy_(kept)
    return [share.neg for share in shares]


def _two_rank_setup(family: str, options: dict[str, Any], steps: int) -> tuple[Any, ...]:
    """The state a simulation of two ranks starts from: (config, model, its optimisers, the data
    generator, each rank's model generator, the per-rank batch h and persistent chains m)."""
    cfg = _cfg(steps)
    model = _prepared(family, options, cfg)
    opts = model.configure_optimizers(cfg.lr)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    gens = [torch.Generator().manual_seed(ddp.rank_seed(cfg.seed + 1, r)) for r in (0, 1)]
    return cfg, model, opts, data_gen, gens, cfg.batch_size // 2, model.config.buffer_chains // 2


def _coop_two_ranks_in_one_process(steps: int = 3) -> tuple[Coop, list[float]]:
    """What ``train("coop", ...)`` on 2 ranks computes, in one process: each rank proposes and
    revises with its own generator from its slice of the global batch; the revision's step size
    adapts to the acceptance averaged over both ranks; each rank advances half of the
    ``buffer_chains`` persistent chains, written into the one buffer in rank order; the EBM and the
    generator step on the means of the two ranks' losses; σ follows the mean regression loss."""
    cfg, model, opts, data_gen, gens, h, m = _two_rank_setup("coop", COOP, steps)
    assert isinstance(model, Coop)
    ebm, c = model.ebm, model.config
    losses = []
    for step in range(cfg.steps):
        for opt in opts.values():
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step)
        batch = load_data("8gaussians").batch(step, cfg.batch_size, cfg.seed, data_gen)
        us = [model.normalize(batch[r * h : (r + 1) * h]) for r in (0, 1)]
        zs = [model.latent(h, gens[r]) for r in (0, 1)]
        with torch.no_grad():
            x_hats = [model.generator_net(z) for z in zs]
        eps = ebm.mcmc_step_size.to(us[0].dtype)
        revised = [model.revise(x_hats[r], gens[r]) for r in (0, 1)]
        mean_acc = (revised[0][1].mean() + revised[1][1].mean()) / 2
        adapted = eps * torch.exp(STEP_ADAPT_RATE * (mean_acc - c.target_accept))
        ebm.mcmc_step_size.copy_(adapted.clamp(1e-8, c.step_size))
        negs = _shared_chains(ebm, [u[:m] for u in us], gens)
        parts = [model._ebm_objective(us[r], revised[r][0], (us[r][:m], negs[r]))["loss"] for r in (0, 1)]
        opts["ebm"].zero_grad()
        e_loss = (parts[0] + parts[1]) / 2
        e_loss.backward()
        opts["ebm"].step()
        z_fit = [model.infer_latent(zs[r], revised[r][0], gens[r]) for r in (0, 1)]
        opts["generator"].zero_grad()
        g_loss = sum(model._teaching_loss(revised[r][0], z_fit[r]) for r in (0, 1)) / 2
        g_loss.backward()
        for group in opts["generator"].param_groups:
            group["lr"] *= c.g_lr_ratio
        opts["generator"].step()
        var = (1 - SIGMA_EMA) * float(model.g_sigma) ** 2 + SIGMA_EMA * float(g_loss.detach()) / model.dim
        model.g_sigma.fill_(var**0.5)
        ebm.updates += 1
        losses.append(float(e_loss.detach()))
    return model, losses


def _triangle_two_ranks_in_one_process(steps: int = 3) -> tuple[Triangle, list[float]]:
    """What ``train("triangle", ...)`` on 2 ranks computes, in one process: each rank draws its pairs
    of P and refines its negatives with its own generator, the refining step size adapted to the
    acceptance averaged over both ranks; each rank advances half of the persistent chains (one
    buffer, written in rank order); both players step on the means of the two ranks' losses."""
    cfg, model, opts, data_gen, gens, h, m = _two_rank_setup("triangle", TRIANGLE, steps)
    assert isinstance(model, Triangle)
    ebm, c = model.ebm, model.config
    restart = round(c.negative_restart * h)
    losses = []
    for step in range(cfg.steps):
        for opt in opts.values():
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step)
        model._apply_lr_mults()
        batch = load_data("8gaussians").batch(step, cfg.batch_size, cfg.seed, data_gen)
        us = [model.normalize(batch[r * h : (r + 1) * h]) for r in (0, 1)]
        draws = [model._draw(h, gens[r]) for r in (0, 1)]
        with torch.no_grad():
            x_gens = [model._pair(*draw) for draw in draws]
        eps = ebm.mcmc_step_size.to(us[0].dtype)
        starts = [torch.cat([x_gens[r][restart:], ebm.sample_q(restart, gens[r])]) for r in (0, 1)]
        refined = [ebm.run_chains(starts[r], c.negative_steps, gens[r], float(eps)) for r in (0, 1)]
        ebm.mcmc_step_size.copy_(ebm._adapted(eps, (refined[0][1].mean() + refined[1][1].mean()) / 2))
        chains = _shared_chains(ebm, [u[:m] for u in us], gens)
        opts["ebm"].zero_grad()
        parts = [
            model._ebm_objective(us[r], refined[r][0], c.energy_reg, (us[r][:m], chains[r])) for r in (0, 1)
        ]
        ((parts[0] + parts[1]) / 2).backward()
        opts["ebm"].step()
        opts["generator"].zero_grad()
        opts["inference"].zero_grad()
        model.ebm.requires_grad_(False)
        terms = [model._generator_objective(us[r], *draws[r], gens[r]) for r in (0, 1)]
        model.ebm.requires_grad_(True)
        loss = sum(t["kl_qp"] + t["kl_p_pi"] for t in terms) / 2
        loss.backward()
        opts["generator"].step()
        opts["inference"].step()
        losses.append(float(loss.detach()))
    return model, losses


#: the buffers of coop and triangle that global decisions set (step sizes, shared chains, σ, recovery)
GLOBAL_JOINT_STATE = tuple(f"ebm.{key}" for key in (*GLOBAL_EBM_STATE, "hot_chains"))


@pytest.mark.parametrize("family", ["coop", "triangle"])
def test_joint_family_equals_its_two_ranks_simulated_in_one_process(
    launch: dict[str, Any], family: str
) -> None:
    """coop and triangle under DDP: the MCMC (revision or refined negatives, persistent chains, z
    inference) on the plain module with each rank's noise, each player's loss through Model.call,
    the step sizes adapted to the acceptance of both ranks, one persistent buffer that both ranks
    advance (half the chains each), coop's σ from the mean regression loss. Weights, buffers and
    step sizes equal one process doing what the two ranks do."""
    result = launch["results"][0][family]
    assert result["step"] == 3
    simulate = _coop_two_ranks_in_one_process if family == "coop" else _triangle_two_ranks_in_one_process
    model, losses = simulate()
    state, here = _load(launch["out"] / f"{family}0.pt"), model.state_dict()
    _close(state, here, tol=1e-6)
    for key in ("ebm.mcmc_step_size", "ebm.chain_step", "ebm.hot_step", "g_sigma"):  # relative: small values
        if key in state:
            torch.testing.assert_close(state[key], here[key], rtol=1e-6, atol=0)
    (logged,) = result["history"]  # log_every=3: one entry, the means over steps 1..3 and the ranks
    assert logged["loss"] == pytest.approx(sum(losses) / 3, rel=1e-5, abs=1e-7)


def test_joint_families_route_only_their_losses_through_ddp(launch: dict[str, Any]) -> None:
    """Each step of coop and triangle sends exactly its two differentiated losses through the DDP
    wrapper (the EBM's, then the generator's, or the generator's and inference model's); the
    revision, the persistent chains and the z inference run on the plain module. coop's step whose
    health check failed (on one rank's logs, decided on their mean) stops after the EBM's pass on
    both ranks."""
    passes = {
        "coop": ["_ebm_objective", "_teaching_loss"],
        "triangle": ["_ebm_objective", "_generator_objective"],
    }
    for r in (0, 1):
        for family, methods in passes.items():
            assert launch["results"][r][family]["routed"] == methods * 3, (family, r)
        recovered = launch["results"][r]["coop-recovered"]["routed"]
        assert recovered == passes["coop"] + ["_ebm_objective"] + passes["coop"], r


def test_joint_families_global_state_equal_across_ranks(launch: dict[str, Any]) -> None:
    """The decisions both ranks must take alike: the adapted step sizes, the shared chains, coop's σ
    and its recovery from a divergence that only rank 1 saw (both restored the EBM's last good state
    and halved the learning rate; the second update was undone)."""
    out = launch["out"]
    for name in ("coop", "triangle", "coop-recovered"):
        a, b = _load(out / f"{name}0.pt"), _load(out / f"{name}1.pt")
        for key in (*GLOBAL_JOINT_STATE, "g_sigma") if name != "triangle" else GLOBAL_JOINT_STATE:
            assert torch.equal(a[key], b[key]), (name, key)
    coop, triangle = _load(out / "coop0.pt"), _load(out / "triangle0.pt")
    assert float(coop["ebm.mcmc_step_size"]) < COOP["step_size"]  # the revision's step adapted
    assert float(coop["g_sigma"]) != pytest.approx(CoopConfig.sigma, rel=1e-3)  # σ learned
    assert float(triangle["ebm.mcmc_step_size"]) != pytest.approx(EBMConfig.step_size, rel=1e-3)
    for state in (coop, triangle):
        assert state["ebm.chain_step"].unique().numel() > 1  # the persistent chains' own step sizes
    for r in (0, 1):
        state = _load(out / f"coop-recovered{r}.pt")
        assert int(state["ebm.recoveries"]) == 1 and float(state["ebm.lr_factor"]) == 0.5
        assert int(state["ebm.updates"]) == 1
        (logged,) = launch["results"][r]["coop-recovered"]["history"]
        assert logged["recovered"] == pytest.approx(1 / 3)


def test_persistent_chains_split_evenly_over_the_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """coop's and triangle's buffer_chains per step is a global count: N ranks advance
    min(buffer_chains, global batch) / N each, so a count that does not split is refused; in one
    process (or outside a step under DDP) it is min(buffer_chains, batch) as before."""
    assert chains_per_rank(8, 16, False, "coop") == 8 and chains_per_rank(256, 16, False, "coop") == 16
    monkeypatch.setattr(ddp, "world_size", lambda: 2)
    assert chains_per_rank(8, 16, True, "coop") == 4  # of min(8, 32)
    assert chains_per_rank(256, 16, True, "coop") == 16  # of min(256, 32): the whole slice
    with pytest.raises(ValueError, match=r"triangle: buffer_chains=7 .* multiple of 2"):
        chains_per_rank(7, 16, True, "triangle")


def test_the_cli_under_torchrun(tmp_path: Path) -> None:
    """The README's command: ``torchrun --nproc_per_node 2 -m genmodels train ...`` on CPU trains,
    evaluates and reports once (rank 0), and leaves one checkpoint that loads in one process."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr"]
    cmd += ["127.0.0.1", "--master_port", str(_free_port()), "-m", "genmodels", "train", "fm"]
    cmd += ["--data", "8gaussians", "--steps", "20", "--batch-size", "64", "--device", "cpu"]
    cmd += ["--no-progress", "--out", str(out), "--hidden", "16", "--depth", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=170)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("trained fm for 20 steps") == 1, r.stdout
    assert r.stdout.count("eval  step=20") == 1, r.stdout
    model, record = load_run(out)
    assert record["distributed"]["world_size"] == 2 and record["step"] == 20
    assert torch.isfinite(model.sample(8, generator=torch.Generator().manual_seed(0))).all()
