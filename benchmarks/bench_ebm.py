"""Energy-based models (issue 4): every learning method on the 2-D targets, against the truth.

For each method and target: train ``ebm`` with the family's defaults (the same for every
target: nothing here is tuned per target), then measure

- the KL to the truth with the exact log-density of the model (log Z by grid quadrature; the
  grid error is reported) on 20,000 fresh target samples, with its standard error;
- modes captured and the share of high-quality samples (within 3σ of a mode, VEEGAN/PacGAN)
  on 2,500 samples drawn from the learned energy by its sampler (MALA from the persistent
  chains, or the short-run sampler for short-run models);
- training time (seconds on this machine, torch with one thread), including the flow's
  pre-training for the flow reference.

Bars (issue 4): KL ≤ 0.10 nats on 8gaussians and rings for mle (persistent chains) and
nce-flow; 8/8 and 25/25 modes with HQ ≥ 95 % on ring8 and grid25 for the same two methods;
each within 10 minutes of training.

    python benchmarks/bench_ebm.py                                  # everything (~1 h on 2 cores)
    python benchmarks/bench_ebm.py --methods mle nce-flow --targets 8gaussians rings
    python benchmarks/bench_ebm.py --steps 500 --targets 8gaussians --methods nce   # smoke run

Rows are appended to ``--out`` (JSON lines) as they finish, so a long run can be stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone

import torch

from genmodels.distributions import get_target
from genmodels.evaluate import evaluate_model, target_mode_metrics
from genmodels.models.ebm import EBM
from genmodels.train import TrainConfig, TrainingDiverged, train

METHODS: dict[str, dict[str, str]] = {
    "mle": {"method": "mle"},
    "mle-untempered": {"method": "mle", "temperatures": 1},
    "mle-short-run": {"method": "mle", "chains": "short-run"},
    "mle-flow": {"method": "mle", "reference": "flow"},
    "mle-floor": {"method": "mle", "energy_floor": 20.0},
    "mle-plain": {"method": "mle", "data_noise": 0.0, "reinit_from": "reference"},
    "mle-no-fourier": {"method": "mle", "fourier_features": 0},
    "cd": {"method": "cd"},
    "nce": {"method": "nce"},
    "nce-flow": {"method": "nce", "reference": "flow"},
    "nce-maf": {"method": "nce", "reference": "flow", "flow_family": "maf"},
}
TARGETS = ["8gaussians", "rings", "checkerboard", "ring8", "grid25"]
KL_BAR, HQ_BAR, TIME_BAR = 0.10, 0.95, 600.0
BAR_METHODS = ("mle", "nce-flow")


def run(method: str, target_name: str, steps: int | None, seed: int) -> dict:
    target = get_target(target_name)
    cfg = TrainConfig(**{**EBM.train_defaults_for(METHODS[method]), "seed": seed, "progress": False})
    if steps is not None:
        cfg.steps = steps
    t0 = time.perf_counter()
    try:
        result = train("ebm", target_name, cfg, options=METHODS[method])
    except TrainingDiverged as err:
        print(f"[{method} on {target_name}] {err}", flush=True)
        return {
            "method": method,
            "target": target_name,
            "steps": cfg.steps,
            "diverged": str(err),
            "train_seconds": time.perf_counter() - t0,
            "kl": float("inf"),
            "kl_stderr": 0.0,
            "log_z_grid_error": float("nan"),
            "recoveries": -1,
            "eval_seconds": 0.0,
        }
    train_s = time.perf_counter() - t0
    model = result.model
    t0 = time.perf_counter()
    metrics = evaluate_model(model, target, n=20_000, generator=torch.Generator().manual_seed(seed + 100))
    eval_s = time.perf_counter() - t0
    logz = model.log_partition()
    last = result.history[-1] if result.history else {}
    extra = {}
    if target.mode_centers is not None and target.mode_std is not None:
        # The same metrics on exact draws of the learned density (grid sampler): what the
        # model is, apart from how well its MCMC sampler mixes.
        g = torch.Generator().manual_seed(seed + 200)
        mm = target_mode_metrics(model.sample(2500, generator=g, sampler="grid"), target)
        extra = {"modes_grid": mm.modes, "hq_fraction_grid": mm.hq_fraction}
    return {
        "method": method,
        "target": target_name,
        "steps": cfg.steps,
        "train_seconds": train_s,
        "eval_seconds": eval_s,
        "log_z": logz["value"],
        "log_z_grid_error": logz["error"],
        "recoveries": int(model.recoveries),
        "final_energy_gap": last.get("energy_gap"),
        **{
            k: metrics[k]
            for k in ("kl", "kl_stderr", "kl_kind", "modes", "n_modes", "hq_fraction")
            if k in metrics
        },
        **extra,
    }


def verdict(row: dict) -> str:
    if row["method"] not in BAR_METHODS:
        return ""
    if "diverged" in row:
        return "NOT met (diverged)"
    ok = row["train_seconds"] <= TIME_BAR
    if row["target"] in ("8gaussians", "rings"):
        ok &= row["kl"] <= KL_BAR
    elif row["target"] in ("ring8", "grid25"):
        ok &= row["modes"] == row["n_modes"] and row["hq_fraction"] >= HQ_BAR
    else:
        return ""
    return "met" if ok else "NOT met"


def table(rows: list[dict]) -> str:
    lines = [
        "| method | target | KL (nats, exact) | log Z grid error | modes | HQ % | HQ % exact draws "
        "| train s | recoveries | bar |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        modes = f"{r['modes']}/{r['n_modes']}" if r.get("n_modes") else "—"
        hq = f"{100 * r['hq_fraction']:.1f}" if r.get("hq_fraction") is not None else "—"
        hq_grid = f"{100 * r['hq_fraction_grid']:.1f}" if r.get("hq_fraction_grid") is not None else "—"
        lines.append(
            f"| {r['method']} | {r['target']} | {r['kl']:.3f} ± {r['kl_stderr']:.3f} "
            f"| {r['log_z_grid_error']:.1e} | {modes} | {hq} | {hq_grid} | {r['train_seconds']:.0f} "
            f"| {r['recoveries']} | {verdict(r)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--targets", nargs="+", default=TARGETS)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the family's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these sizes)")
    p.add_argument("--out", default="bench_ebm.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# bench_ebm — {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"machine: {platform.platform()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"defaults: {EBM.train_defaults}, by option: {EBM.train_defaults_by_option}\n", flush=True)
    rows = []
    for target in args.targets:
        for method in args.methods:
            row = run(method, target, args.steps, args.seed)
            rows.append(row)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(
                f"[{method} on {target}] KL {row['kl']:.3f} ± {row['kl_stderr']:.3f}, modes "
                f"{row.get('modes', '—')}/{row.get('n_modes', '—')}, "
                f"HQ {row.get('hq_fraction', float('nan')):.3f}, "
                f"train {row['train_seconds']:.0f}s, eval {row['eval_seconds']:.0f}s {verdict(row)}",
                flush=True,
            )
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
