"""Diffusion models (issue 5): the learned model on the 2-D targets, against the truth.

For each target: train ``diffusion`` with the family's defaults (the same for every target;
nothing here is tuned per target), then measure

- the KL to the truth with the model's exact log-density (the probability-flow ODE with the
  exact trace, at σ̃_min = 0.002), KL = E_p[log p − log p_θ] = NLL − H on fresh target
  samples, with its standard error;
- modes captured and the share of high-quality samples (within 3σ of a mode, VEEGAN/PacGAN)
  on 2,500 samples from the default sampler;
- training time (seconds on this machine, torch with one thread).

Bars (issue 5): NLL − H ≤ 0.05 nats on 8gaussians and checkerboard; 8/8 and 25/25 modes with
HQ ≥ 95 % on ring8 and grid25; each within 10 minutes of CPU training.

    python benchmarks/bench_diffusion.py                                   # every target
    python benchmarks/bench_diffusion.py --targets ring8 --option process=ve
    python benchmarks/bench_diffusion.py --steps 500 --targets 8gaussians  # smoke run

Rows are appended to ``--out`` (JSON lines) as they finish.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone

import torch

from genmodels.distributions import get_target
from genmodels.evaluate import kl_to_truth, target_mode_metrics
from genmodels.models.diffusion import Diffusion
from genmodels.train import TrainConfig, train

TARGETS = ["8gaussians", "checkerboard", "rings", "ring8", "grid25"]
KL_BAR, HQ_BAR, TIME_BAR = 0.05, 0.95, 600.0


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def run(target_name: str, steps: int | None, seed: int, options: dict, n_kl: int) -> dict:
    target = get_target(target_name)
    cfg = TrainConfig(**{**Diffusion.train_defaults, "seed": seed, "progress": False})
    if steps is not None:
        cfg.steps = steps
    t0 = time.perf_counter()
    model = train("diffusion", target_name, cfg, options=options).model
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    kl = kl_to_truth(model, target, n=n_kl, generator=torch.Generator().manual_seed(seed + 100))
    kl_s = time.perf_counter() - t0
    row = {
        "target": target_name,
        "options": options,
        "steps": cfg.steps,
        "train_seconds": train_s,
        "kl": kl.value,
        "kl_stderr": kl.stderr,
        "kl_kind": kl.kind,
        "kl_seconds": kl_s,
        "entropy": target.entropy(),
    }
    if target.mode_centers is not None and target.mode_std is not None:
        t0 = time.perf_counter()
        x = model.sample(2500, generator=torch.Generator().manual_seed(seed + 200))
        mm = target_mode_metrics(x, target)
        row.update(
            modes=mm.modes, n_modes=mm.n_modes, hq_fraction=mm.hq_fraction, reverse_kl=mm.reverse_kl,
            sample_seconds=time.perf_counter() - t0,
        )  # fmt: skip
    return row


def verdict(row: dict) -> str:
    ok = row["train_seconds"] <= TIME_BAR
    if row["target"] in ("8gaussians", "checkerboard"):
        ok &= row["kl"] <= KL_BAR
    elif row["target"] in ("ring8", "grid25"):
        ok &= row["modes"] == row["n_modes"] and row["hq_fraction"] >= HQ_BAR
    else:
        return ""
    return "met" if ok else "NOT met"


def table(rows: list[dict]) -> str:
    lines = [
        "| target | options | NLL − H = KL (nats, exact) | modes | HQ % | rev. KL | train s | bar |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        modes = f"{r['modes']}/{r['n_modes']}" if r.get("n_modes") else "—"
        hq = f"{100 * r['hq_fraction']:.1f}" if r.get("hq_fraction") is not None else "—"
        rkl = f"{r['reverse_kl']:.3f}" if r.get("reverse_kl") is not None else "—"
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        lines.append(
            f"| {r['target']} | {opts} | {r['kl']:.3f} ± {r['kl_stderr']:.3f} | {modes} | {hq} | {rkl} "
            f"| {r['train_seconds']:.0f} | {verdict(r)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=TARGETS)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the family's)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a family option")
    p.add_argument("--n-kl", type=int, default=10_000, help="target samples for the KL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench_diffusion.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    options = {k: _value(v) for k, _, v in (o.partition("=") for o in args.option)}
    print(f"# bench_diffusion — {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"machine: {platform.platform()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"defaults: {Diffusion.train_defaults}, options: {options or 'family defaults'}\n", flush=True)
    rows = []
    for target in args.targets:
        row = run(target, args.steps, args.seed, options, args.n_kl)
        rows.append(row)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(
            f"[{target}] KL {row['kl']:.3f} ± {row['kl_stderr']:.3f} ({row['kl_kind']}), modes "
            f"{row.get('modes', '—')}/{row.get('n_modes', '—')}, "
            f"HQ {row.get('hq_fraction', float('nan')):.3f}, "
            f"train {row['train_seconds']:.0f}s, KL eval {row['kl_seconds']:.0f}s {verdict(row)}",
            flush=True,
        )
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
