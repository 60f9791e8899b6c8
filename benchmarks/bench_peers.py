"""Our families against the libraries users pick today, in one run (issue 6, peer comparison).

Pairs: our ``nsf`` against zuko's ``NSF`` and normflows' spline flow; our ``fm`` against
torchcfm's conditional flow matching; our ``vae`` against pythae's ``VAE``. Each model trains
for the same wall-clock budget on the same data and is scored against the truth the same way.

Bar (issue 6, on 8gaussians and moons): against every peer, our KL to the truth is no worse
(ours ≤ peer + 2σ, σ the two KLs' stderrs combined, unpaired: a statistical tie counts as no
worse) and our training throughput (samples per second) no lower.

    python benchmarks/bench_peers.py                                  # both targets, 120 s each
    python benchmarks/bench_peers.py --targets 8gaussians --budget 10 # smoke run (~3 min)
    python benchmarks/bench_peers.py --families nsf --peers zuko
    python benchmarks/bench_peers.py --clock cpu                      # on a busy machine

Peers are an optional extra (``pip install zuko normflows torchcfm pot pythae``; written against
zuko 1.6.0, normflows 1.7.3, torchcfm 1.0.7, pythae 0.1.2): a peer that does not import is named
and skipped, and the rest runs.

**Fairness rules.**

- *One loop for all.* Every model, ours and the peers', trains through
  :func:`genmodels.train.train`: each peer is wrapped as a :class:`~genmodels.models.base.Model`
  whose ``loss`` is the peer's own training objective, computed by the peer's own code (zuko's
  ``flow().log_prob``, normflows' ``forward_kld``, torchcfm's
  ``sample_location_and_conditional_flow`` and the MSE of its README loop, pythae's
  ``VAE.forward(...).loss``). So the data stream, the optimiser, the schedule, the stopping rule
  and the loop's overhead are the same, and only the models' code differs. (pythae's own
  trainer and normflows' examples iterate over a fixed dataset in epochs; neither has a
  wall-clock stop.)
- *Same data.* Fresh draws from the target, the same stream for every model (the loop's data
  generator is seeded from ``--seed``, so step k sees the same batch), ``--batch-size``
  (default 512). Every model sees the data standardized the same way, u = (x − mean)/std with
  the mean and std of the same reference sample (the loop's ``standardize_from``); zuko
  recommends standardizing and normflows' spline bounds assume it. Densities are mapped back
  to data space with the exact Jacobian −Σ log std for both sides.
- *Same optimiser.* Adam (torch defaults) at each family's learning rate (``train_defaults``:
  nsf 1e-3, fm 2e-3, vae 1e-3) for both sides, with the cosine decay run in time:
  lr(t) = lr · ½(1 + cos(π t / budget)), t the seconds since the first step (on the budget's clock).
- *Same wall-clock budget.* ``--budget`` seconds of training each, one thread (``--threads``):
  the loop has no time limit of its own, so the script passes a ``TrainConfig`` whose
  ``lr_at`` reads the clock and an ``on_step`` hook that raises once the budget is spent; the
  model is built here and handed to ``train`` as an instance, so the trained weights are kept
  when the exception unwinds the loop (a step-count budget from a calibration run was the
  alternative: it misses the budget whenever the machine's load changes between calibration
  and run). Throughput = steps × batch / training seconds, from the first step to the last
  (data draws and optimiser steps included, set-up excluded).
- *On a shared machine* rows that run one after the other get different shares of the CPU,
  which moves both the wall-clock throughput and the steps a wall-clock budget buys (in the
  smoke run on a 2-core machine at load 10, rows got 25–31 % of a core). ``--clock cpu``
  counts the budget, the schedule and the bar's throughput in the process's CPU seconds
  instead; the table gives both throughputs either way.
- *Same network size.* The peers are configured to our default sizes where their API allows,
  and the table reports every parameter count:

  - nsf: 6 spline layers, 8 bins, conditioners 64 wide with 2 hidden layers (ReLU). Ours:
    coupling layers, bound B = 4, learned LU mixing. zuko ``NSF(2, bins=8, transforms=6,
    hidden_features=(64, 64))``: in 2-D its autoregressive layer is a coupling layer plus an
    unconditional spline of the first coordinate, coordinates reversed between layers, bound 5
    (fixed by ``NSF``). normflows: the NSF of its README, ``AutoregressiveRationalQuadraticSpline``
    + ``LULinearPermute`` per layer, ``num_blocks=1`` (its smallest residual MADE: 3 hidden
    linear maps), 64 hidden units, 8 bins, ``tail_bound=4`` (ours).
  - fm: independent coupling, σ = 0, straight paths for both. Ours: ``TimeMLP`` 128 wide, 3
    hidden layers, a sinusoidal time embedding (16) concatenated to x (SiLU), and without the
    Fourier features of x that our default adds (``fourier=0``, :data:`SAME_NETWORK`).
    torchcfm: ``ConditionalFlowMatcher(sigma=0)`` with ``models.MLP(2, w=128,
    time_varying=True)``, 3 hidden layers 128 wide, t concatenated to x (SELU).
  - vae: latent 2, encoder and decoder MLPs 128 wide with 3 hidden layers (SiLU) on both sides
    (pythae's encoder and decoder are our ``MLP`` inside its ``BaseEncoder``/``BaseDecoder``).
    Ours learns the decoder's variance and warms the KL weight up over 1,000 steps; pythae's
    ``VAE`` with ``reconstruction_loss="mse"`` minimises ½|u − μ(z)|² + KL, which is
    −log N(u; μ(z), I) up to a constant: its decoder is a Gaussian of **fixed unit variance
    in the coordinates it is fed** (here the standardized ones). That is the density its
    training defines, and the one scored (no variance is refitted).

**Scoring** (the same code and the same target samples for both sides): the KL to the
truth is :func:`genmodels.evaluate.kl_to_truth`, E_p[log p − log q] ± stderr on fresh samples
of the target, with the target's exact log p, called on our model and on the wrapped peer alike.

- flows: log q exact (each library's ``log_prob``);
- flow matching: the exact log-likelihood through the probability-flow ODE with the exact
  trace, by our :mod:`genmodels.ode` for both (the peer's wrapper subclasses our
  ``FlowMatching`` and replaces only its velocity by torchcfm's network): dopri5,
  rtol = atol = 1e-5 on both sides;
- VAE: the IWAE bound with k = 100 (our ``VAE._log_prob``, the same function for both: the
  peer's wrapper subclasses our ``VAE`` and replaces only ``encode``/``decode`` by pythae's
  networks), so both KLs are upper bounds (kind upper_bound).

The ODE likelihood is the slow part of the scoring (an adaptive solve with d backward passes
per evaluation), so flow matching is scored on ``--n-ode`` samples (default 5,000) and the
others on ``--n`` (default 20,000).

Rows are appended to ``--out`` (JSON lines) as they finish; the markdown table follows.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn

from genmodels import get_target
from genmodels.evaluate import kl_to_truth
from genmodels.models import FAMILIES, build_model
from genmodels.models.base import Model
from genmodels.models.fm import FlowMatching, FlowMatchingConfig
from genmodels.models.vae import VAE, VAEConfig
from genmodels.nets.mlp import MLP
from genmodels.train import TrainConfig, TrainingDiverged, train
from genmodels.types import LogDensity

TARGETS = ["8gaussians", "moons"]
#: our options that give the peers' network (everything else is our default): torchcfm's MLP
#: sees x itself, so ours is compared without the Fourier features of its default input
SAME_NETWORK: dict[str, dict[str, Any]] = {"fm": {"fourier": 0}}
#: our family → the peers it is measured against
PEERS: dict[str, list[str]] = {"nsf": ["zuko", "normflows"], "fm": ["torchcfm"], "vae": ["pythae"]}
#: peer → the modules it needs (torchcfm imports POT)
PEER_MODULES: dict[str, list[str]] = {
    "zuko": ["zuko"],
    "normflows": ["normflows"],
    "torchcfm": ["torchcfm", "ot"],
    "pythae": ["pythae"],
}
PEER_PIP = {"zuko": "zuko", "normflows": "normflows", "torchcfm": "torchcfm pot", "pythae": "pythae"}


# -- a time budget through the one training loop --------------------------------------------
CLOCKS = ("wall", "cpu")


class BudgetSpent(Exception):
    """Raised from ``on_step`` when the time budget is spent (the loop has no time limit)."""


@dataclass
class BudgetConfig(TrainConfig):
    """``TrainConfig`` whose cosine decay runs in time over ``budget`` seconds of ``clock``
    (wall: ``time.perf_counter``; cpu: ``time.process_time``, the process's CPU seconds):
    lr(t) = lr · ½(1 + cos(π min(t / budget, 1))), t from the first call of ``lr_at``."""

    budget: float = 60.0
    """seconds of training"""
    clock: str = "wall"
    """the clock that the budget and the schedule read: wall or cpu"""

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"unknown clock {self.clock!r}; choose one of: {', '.join(CLOCKS)}")
        self.t0: tuple[float, float] | None = None  # (wall, cpu) at the first step

    def seconds(self) -> tuple[float, float]:
        """(wall, cpu) seconds since the first step."""
        if self.t0 is None:
            return 0.0, 0.0
        return time.perf_counter() - self.t0[0], time.process_time() - self.t0[1]

    def spent(self) -> float:
        return self.seconds()[CLOCKS.index(self.clock)]

    def lr_at(self, step: int) -> float:
        if self.t0 is None:
            self.t0 = (time.perf_counter(), time.process_time())
        frac = min(self.spent() / self.budget, 1.0)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def train_for(model: Model, target: str, lr: float, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``model`` for ``args.budget`` seconds of ``args.clock`` through :func:`genmodels.train.train`."""
    cfg = BudgetConfig(
        steps=10**9,
        lr=lr,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=False,
        log_every=10**9,
        checkpoint_every=10**9,
        budget=args.budget,
        clock=args.clock,
    )
    done = {"steps": 0, "seconds": (0.0, 0.0)}

    def on_step(step: int, logs: dict[str, float]) -> None:
        if cfg.spent() >= cfg.budget:
            done.update(steps=step, seconds=cfg.seconds())
            raise BudgetSpent

    torch.manual_seed(args.seed)  # the peers draw their noise from the global generator
    try:
        train(model, target, cfg, on_step=on_step)
    except BudgetSpent:
        pass
    except TrainingDiverged as err:
        done.update(seconds=cfg.seconds(), diverged=str(err))
    model.eval()
    wall, cpu = done["seconds"]
    out = {
        "steps": done["steps"],
        "train_seconds": wall,
        "cpu_seconds": cpu,
        "samples_per_s": done["steps"] * args.batch_size / max(wall, 1e-9),
        "samples_per_cpu_s": done["steps"] * args.batch_size / max(cpu, 1e-9),
    }
    if "diverged" in done:
        out["diverged"] = done["diverged"]
    return out


# -- the peers, each wrapped as a Model whose loss is the peer's own -------------------------
class ZukoNSF(Model):
    """zuko's ``NSF``; loss −mean log q (zuko's ``flow().log_prob``)."""

    family = "zuko-nsf"
    has_log_prob = True

    def __init__(self, dim: int, c: Any) -> None:
        super().__init__(dim)
        import zuko

        self.flow = zuko.flows.NSF(
            dim, bins=c.bins, transforms=c.layers, hidden_features=(c.hidden,) * c.depth
        )

    def loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        return {"loss": -self.flow().log_prob(u).mean()}

    def _log_prob(self, u: torch.Tensor, **options: Any) -> LogDensity:
        with torch.no_grad():
            return LogDensity(self.flow().log_prob(u), "exact")


class NormflowsNSF(Model):
    """normflows' README NSF (AR rational-quadratic spline + LU permutation per layer);
    loss normflows' ``forward_kld``."""

    family = "normflows-nsf"
    has_log_prob = True

    def __init__(self, dim: int, c: Any) -> None:
        super().__init__(dim)
        import normflows as nf

        flows: list[nn.Module] = []
        for _ in range(c.layers):
            flows.append(
                nf.flows.AutoregressiveRationalQuadraticSpline(
                    dim, 1, c.hidden, num_bins=c.bins, tail_bound=c.bound
                )
            )
            flows.append(nf.flows.LULinearPermute(dim))
        self.flow = nf.NormalizingFlow(q0=nf.distributions.DiagGaussian(dim, trainable=False), flows=flows)

    def loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        return {"loss": self.flow.forward_kld(u)}

    def _log_prob(self, u: torch.Tensor, **options: Any) -> LogDensity:
        with torch.no_grad():
            return LogDensity(self.flow.log_prob(u), "exact")


class TorchCFM(FlowMatching):
    """torchcfm's conditional flow matching, scored by our ``FlowMatching._log_prob`` (the
    probability-flow ODE of :mod:`genmodels.ode`) with torchcfm's network as the velocity."""

    family = "torchcfm"

    def __init__(self, dim: int, c: FlowMatchingConfig) -> None:
        Model.__init__(self, dim, c)  # not FlowMatching.__init__: the network is torchcfm's
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
        from torchcfm.models import MLP as CFMMLP

        self.net = CFMMLP(dim, w=c.hidden, time_varying=True)
        self.matcher = ConditionalFlowMatcher(sigma=c.sigma)

    def velocity(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        return self.net(torch.cat([x, t], dim=-1))

    def loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        # torchcfm's README loop: x0 ~ N(0, I), (t, x_t, u_t) from the matcher, MSE to u_t
        t, xt, ut = self.matcher.sample_location_and_conditional_flow(torch.randn_like(u), u)
        return {"loss": ((self.velocity(xt, t) - ut) ** 2).mean()}

    def step(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        return Model.step(self, batch, generator)


class _PythaeEncoder(nn.Module):
    def __init__(self, dim: int, latent: int, c: VAEConfig) -> None:
        super().__init__()
        self.net = MLP(dim, 2 * latent, hidden=c.hidden, depth=c.depth, activation=c.activation)

    def forward(self, x: torch.Tensor):
        from pythae.models.base.base_utils import ModelOutput

        m, log_var = self.net(x).chunk(2, dim=-1)
        return ModelOutput(embedding=m, log_covariance=log_var)


class _PythaeDecoder(nn.Module):
    def __init__(self, dim: int, latent: int, c: VAEConfig) -> None:
        super().__init__()
        self.net = MLP(latent, dim, hidden=c.hidden, depth=c.depth, activation=c.activation)

    def forward(self, z: torch.Tensor):
        from pythae.models.base.base_utils import ModelOutput

        return ModelOutput(reconstruction=self.net(z))


class PythaeVAE(VAE):
    """pythae's ``VAE`` (MSE reconstruction loss), scored by our ``VAE._log_prob`` (IWAE) with
    pythae's encoder and its decoder p(u|z) = N(u; μ(z), I), the density its loss defines."""

    family = "pythae-vae"

    def __init__(self, dim: int, c: VAEConfig) -> None:
        Model.__init__(self, dim, c)  # not VAE.__init__: the networks are pythae's
        from pythae.models import VAE as PVAE
        from pythae.models import VAEConfig as PVAEConfig
        from pythae.models.nn import BaseDecoder, BaseEncoder

        self.latent_dim = c.latent_dim or dim
        enc = type("Encoder", (_PythaeEncoder, BaseEncoder), {})(dim, self.latent_dim, c)
        dec = type("Decoder", (_PythaeDecoder, BaseDecoder), {})(dim, self.latent_dim, c)
        cfg = PVAEConfig(input_dim=(dim,), latent_dim=self.latent_dim, reconstruction_loss="mse")
        self.pythae = PVAE(cfg, encoder=enc, decoder=dec)

    def encode(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pythae.encoder(u)
        return out.embedding, 0.5 * out.log_covariance  # pythae's encoder gives log σ²

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.pythae.decoder(z.reshape(-1, z.shape[-1]))["reconstruction"]
        mu = mu.reshape(*z.shape[:-1], self.dim)
        return mu, torch.zeros_like(mu)  # unit variance: the MSE loss is −log N(u; μ, I) + const

    def loss(self, u: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        return {"loss": self.pythae({"data": u}).loss}

    def step(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        return Model.step(self, batch, generator)


PEER_CLASSES: dict[str, type[Model]] = {
    "zuko": ZukoNSF,
    "normflows": NormflowsNSF,
    "torchcfm": TorchCFM,
    "pythae": PythaeVAE,
}


def missing_modules(peer: str) -> list[str]:
    out = []
    for name in PEER_MODULES[peer]:
        try:
            importlib.import_module(name)
        except ImportError:
            out.append(name)
    return out


def version(peer: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    try:
        return pkg_version(peer)
    except PackageNotFoundError:
        return "?"


# -- one row --------------------------------------------------------------------------------
def run(family: str, side: str, target: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build, train for the budget and score one model: ours (``side="ours"``) or a peer."""
    fam = FAMILIES[family]
    if side == "ours":
        model = build_model(family, get_target(target).dim, SAME_NETWORK.get(family, {}), seed=args.seed)
        lib = "genmodels"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            model = PEER_CLASSES[side](get_target(target).dim, fam.Config())
        lib = f"{side} {version(side)}"
    row: dict[str, Any] = {
        "family": family,
        "side": side,
        "library": lib,
        "target": target,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "budget": args.budget,
        "clock": args.clock,
        "batch_size": args.batch_size,
        "lr": fam.train_defaults.get("lr", TrainConfig.lr),
    }
    row.update(train_for(model, target, row["lr"], args))
    if "diverged" in row:
        return {**row, "kl": math.inf, "kl_stderr": math.inf, "kl_kind": "—"}
    t0 = time.perf_counter()
    n = args.n_ode if family == "fm" else args.n
    kl = kl_to_truth(model, get_target(target), n=n, generator=torch.Generator().manual_seed(args.seed))
    row.update(
        kl=kl.value,
        kl_stderr=kl.stderr,
        kl_kind=kl.kind,
        kl_n=kl.n,
        nll=kl.details["nll"],
        eval_seconds=time.perf_counter() - t0,
    )
    return row


def compare(ours: dict, peer: dict) -> tuple[str, str]:
    """(text, verdict) of our row against a peer's row on the same target; the throughput is
    counted on the clock of the budget."""
    sigma = math.hypot(ours["kl_stderr"], peer["kl_stderr"])
    kl_ok = ours["kl"] <= peer["kl"] + 2 * sigma
    rate = "samples_per_s" if ours.get("clock", "wall") == "wall" else "samples_per_cpu_s"
    speed = ours[rate] / max(peer[rate], 1e-9)
    text = f"ΔKL {ours['kl'] - peer['kl']:+.3f} (2σ {2 * sigma:.3f}), speed ×{speed:.2f}"
    return text, ("met" if kl_ok and speed >= 1.0 else "NOT met")


def table(rows: list[dict]) -> str:
    lines = [
        "| family | target | library | params | steps | samples/s | samples/CPU-s | KL (nats) | kind "
        "| ours vs this | bar |",
        "|---|---|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    ours = {(r["family"], r["target"]): r for r in rows if r["side"] == "ours"}
    for r in rows:
        text, bar = "", ""
        mine = ours.get((r["family"], r["target"]))
        if r["side"] != "ours" and mine is not None:
            text, bar = compare(mine, r)
        kl = f"{r['kl']:.3f} ± {r['kl_stderr']:.3f}" if "diverged" not in r else "diverged"
        lines.append(
            f"| {r['family']} | {r['target']} | {r['library']} | {r['params']:,} | {r['steps']:,} "
            f"| {r['samples_per_s']:,.0f} | {r['samples_per_cpu_s']:,.0f} | {kl} | {r['kl_kind']} "
            f"| {text} | {bar} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--peers", nargs="+", default=list(PEER_CLASSES), choices=list(PEER_CLASSES))
    p.add_argument("--targets", nargs="+", default=TARGETS)
    p.add_argument("--budget", type=float, default=120.0, help="seconds of training per model")
    p.add_argument(
        "--clock",
        default="wall",
        choices=CLOCKS,
        help="what the budget counts: wall-clock seconds (the issue's bar) or the process's CPU seconds",
    )
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--n", type=int, default=20_000, help="target samples for the KL (flows, VAE)")
    p.add_argument(
        "--n-ode",
        type=int,
        default=5000,
        help="target samples for the KL of flow matching (an ODE solve each)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for 2-D models)")
    p.add_argument("--out", default="bench_peers.jsonl")
    args = p.parse_args()
    if not args.budget > 0:
        p.error(f"--budget must be positive, got {args.budget}")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    print(f"# bench_peers — {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(
        f"machine: {platform.platform()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"budget {args.budget:g} {args.clock}-clock s per model, batch {args.batch_size}\n"
    )
    available = {}
    for peer in args.peers:
        gone = missing_modules(peer)
        available[peer] = not gone
        if gone:
            print(
                f"peer {peer} skipped: cannot import {', '.join(gone)} (pip install {PEER_PIP[peer]})",
                flush=True,
            )
    rows = []
    for target in args.targets:
        for family in args.families:
            sides = ["ours"] + [q for q in PEERS[family] if available.get(q)]
            for side in sides:
                row = run(family, side, target, args)
                rows.append(row)
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(
                    f"[{family} on {target}, {row['library']}] KL {row['kl']:.3f} ± {row['kl_stderr']:.3f} "
                    f"({row['kl_kind']}), {row['steps']} steps, {row['samples_per_s']:,.0f} samples/s, "
                    f"{row['params']:,} params",
                    flush=True,
                )
    print()
    print(table(rows))
    print(f"\nwhole run: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
