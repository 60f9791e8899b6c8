"""Every family on the 2-D targets with its defaults: KL to the truth with its kind, modes,
HQ %, train time (issue 6, benchmark 1).

Each (family, target) pair trains with the family's own defaults (``train_defaults`` and
``Config``, the same on every target) through :func:`genmodels.train`, then
:func:`genmodels.evaluate.evaluate_model` scores it: the KL from the model's log-density where
it has one (kind exact, or upper bound for a lower-bound density such as the VAE's), else the
counting estimate on a 50 × 50 grid (kind estimate, with the floor a perfect sampler scores,
``kl_null_bias``); modes / HQ / reverse KL on 2,500 samples as in PacGAN.

Bars (issue 6): nsf KL ≤ 0.025 on 8gaussians and ≤ 0.05 on moons; fm ≤ 0.05 on both; the
VAE's importance-weighted bound within 0.15 nats of the entropy (its KL upper bound ≤ 0.15);
gan / wgan-gp at least PacGAN4's row on ring8 and grid25 (benchmarks.md §2); each within
10 minutes of CPU training.

    python benchmarks/bench_families.py --families nsf fm --targets 8gaussians moons

Rows are appended to ``--out`` (JSON lines) as they finish.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone

import torch

from genmodels import get_target
from genmodels.evaluate import evaluate_model
from genmodels.models import FAMILIES
from genmodels.train import TrainConfig, TrainingDiverged, train

TARGETS = ["8gaussians", "checkerboard", "rings", "moons", "2spirals", "ring8", "grid25"]
TIME_BAR = 600.0
#: (family, target) → KL bar
KL_BARS = {
    ("nsf", "8gaussians"): 0.025,
    ("nsf", "moons"): 0.05,
    ("fm", "8gaussians"): 0.05,
    ("fm", "moons"): 0.05,
}
#: PacGAN4's row of benchmarks.md §2: modes at least, HQ at least, reverse KL at most
PACGAN4 = {"ring8": (7.8, 0.959, 0.07), "grid25": (24.8, 0.936, 0.04)}


def verdict(r: dict) -> str:
    fam, tgt = r["family"], r["target"]
    if "diverged" in r:
        return "diverged"
    in_time = r["train_seconds"] <= TIME_BAR
    if (fam, tgt) in KL_BARS:
        ok = r["kl"] <= KL_BARS[(fam, tgt)] and in_time
    elif fam == "vae":
        ok = r["kl"] <= 0.15 and in_time
    elif fam in ("gan", "wgan-gp") and tgt in PACGAN4:
        modes, hq, rkl = PACGAN4[tgt]
        ok = r["modes"] >= modes and r["hq_fraction"] >= hq and r["reverse_kl"] <= rkl and in_time
    else:
        return ""
    return "met" if ok else "NOT met"


def run(family: str, target_name: str, steps: int | None, seed: int, options: dict) -> dict:
    defaults = FAMILIES[family].train_defaults_for(options)
    cfg = TrainConfig(**{**defaults, "seed": seed, "progress": False})
    if steps is not None:
        cfg.steps = steps
    row: dict = {"family": family, "target": target_name, "steps": cfg.steps, "options": options}
    t0 = time.perf_counter()
    try:
        model = train(family, target_name, cfg, options=options).model
    except TrainingDiverged as err:
        return {**row, "diverged": str(err), "train_seconds": time.perf_counter() - t0, "kl": float("inf")}
    row["train_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = evaluate_model(
        model, get_target(target_name), n=20_000, generator=torch.Generator().manual_seed(seed)
    )
    row["eval_seconds"] = time.perf_counter() - t0
    return {**row, **metrics}


def table(rows: list[dict]) -> str:
    lines = [
        "| family | target | KL (nats) | kind | modes | HQ % | rev. KL | train s | bar |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        modes = f"{r['modes']}/{r['n_modes']}" if r.get("n_modes") else "—"
        hq = f"{100 * r['hq_fraction']:.1f}" if r.get("hq_fraction") is not None else "—"
        rkl = f"{r['reverse_kl']:.3f}" if r.get("reverse_kl") is not None else "—"
        kl = f"{r['kl']:.3f} ± {r.get('kl_stderr', 0):.3f}"
        if r.get("kl_null_bias") is not None:
            kl += f" (floor {r['kl_null_bias']:.3f})"
        lines.append(
            f"| {r['family']} | {r['target']} | {kl} | {r.get('kl_kind', '—')} | {modes} | {hq} | {rkl} "
            f"| {r['train_seconds']:.0f} | {verdict(r)} |"
        )
    return "\n".join(lines)


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=sorted(FAMILIES), choices=sorted(FAMILIES))
    p.add_argument("--targets", nargs="+", default=TARGETS)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: each family's)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a family option")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for 2-D models)")
    p.add_argument("--out", default="bench_families.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    options = {k: _value(v) for k, _, v in (o.partition("=") for o in args.option)}
    print(f"# bench_families — {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"machine: {platform.platform()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    rows = []
    for family in args.families:
        for target in args.targets:
            row = run(family, target, args.steps, args.seed, options)
            rows.append(row)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(
                f"[{family} on {target}] KL {row['kl']:.3f} ({row.get('kl_kind', '—')}), modes "
                f"{row.get('modes', '—')}/{row.get('n_modes', '—')}, "
                f"HQ {row.get('hq_fraction', float('nan')):.3f}, "
                f"train {row['train_seconds']:.0f}s {verdict(row)}",
                flush=True,
            )
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
