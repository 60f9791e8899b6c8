"""Every family on sklearn's 8×8 digits with a real budget (issue 9): bits/dim against the bar of
benchmarks.md §4, Fréchet distance, precision / recall / density / coverage, classes hit.

Each family trains on the uniformly dequantized digits (y = (x + u)/17) through
:func:`genmodels.train.train` with its own ``train_defaults`` (lr, batch size, warm-up) and the
budget asked for, then :func:`genmodels.image_metrics.evaluate_images` scores it on the 360
held-out images: bits/dim (benchmarks.md §4's protocol, 10 dequantization draws per image, with
its kind), and on as many samples as held-out images the Fréchet distance in the digit
classifier's features and in pixels, PRDC (k = 5) and the class histogram. The real-vs-real
floor (training images against the test images, same n) is printed first.

Budget: ``--steps N`` for every family; or ``--budget-seconds S`` per family: the training loop
has no time limit (``TrainConfig`` counts steps, and the cosine learning-rate schedule needs the
total in advance), so each family is first timed on a short calibration run of the same
configuration (``--calibration-steps``, its first 5 steps excluded) and then trained afresh for
S / (seconds per step) steps; with neither, each family's own default steps.

Bar (benchmarks.md §4): every flow, autoregressive model, VAE (IWAE bound) and diffusion model
must beat 2.44 bits/dim, the independent per-pixel categorical's 2.436. A number of kind exact or
upper bound below the bar beats it; an estimate below it "beats (estimate)"; a lower bound below
it decides nothing.

    python benchmarks/bench_digits.py --families realnvp nsf --budget-seconds 600
    python benchmarks/bench_digits.py --steps 20000 --threads 2

Rows are appended to ``--out`` (JSON lines) as they finish; sample grids go to ``--grid-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from bench_families import _value  # the same KEY=VALUE parsing

from genmodels.data import load_data
from genmodels.data.dataset import dequantize
from genmodels.image_metrics import sample_grid
from genmodels.models import FAMILIES
from genmodels.tour import format_image_table, real_floor, train_and_evaluate_image_family
from genmodels.train import TrainConfig, train

#: benchmarks.md §4: the bar, and the independent per-pixel categorical it comes from
BAR = 2.44
CATEGORICAL_BPD = 2.436
#: the families benchmarks.md §4 holds to the bar (flows, autoregressive, VAE, diffusion)
BAR_FAMILIES = ("realnvp", "maf", "nsf", "made", "vae", "diffusion", "fm")


def verdict(row: dict) -> str:
    """Whether the row's bits/dim beats :data:`BAR`, read with its kind."""
    if "failed" in row:
        return "failed"
    bpd, kind = row.get("bits_per_dim"), row.get("bits_per_dim_kind")
    if bpd is None:
        return "no density"
    below = bpd < BAR
    if kind in ("exact", "upper_bound"):
        return f"beats {BAR}" if below else f"does not beat {BAR}"
    if kind == "estimate":
        return f"beats {BAR} (estimate)" if below else f"does not beat {BAR} (estimate)"
    return f"undecided at {BAR} (lower bound)" if below else f"does not beat {BAR}"


def seconds_per_step(
    family: str, dataset, config: TrainConfig, calibration_steps: int, options: dict | None = None
) -> float:
    """Seconds per training step of ``family`` with ``config``, from a throw-away run of
    ``calibration_steps`` steps (the first 5 excluded: set-up and warm-up)."""
    skip = 5
    if calibration_steps <= skip:
        raise ValueError(f"--calibration-steps must be > {skip}, got {calibration_steps}")
    stamps: dict[int, float] = {}

    def on_step(step: int, _logs: dict) -> None:
        if step in (skip, calibration_steps):
            if config.device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps[step] = time.perf_counter()

    probe = TrainConfig(
        **{**vars(config), "steps": calibration_steps, "progress": False, "validate_every": 0, "patience": 0}
    )
    train(family, dataset, probe, on_step=on_step, options=options)
    return (stamps[calibration_steps] - stamps[skip]) / (calibration_steps - skip)


def sample_summary(m: dict) -> str:
    """The sample metrics of an evaluate_images result on one line."""
    return (
        f"FD {m['fd']:.2f} (pixels {m['pixel_fd']:.3f}), precision {m['precision']:.3f}, "
        f"recall {m['recall']:.3f}, density {m['density']:.3f}, coverage {m['coverage']:.3f}, "
        f"classes {m['classes_covered']}/10"
    )


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="training steps of every family")
    budget.add_argument(
        "--budget-seconds", type=float, default=None, help="training seconds per family (calibrated steps)"
    )
    p.add_argument("--calibration-steps", type=int, default=30, help="steps timed for --budget-seconds")
    p.add_argument("--batch-size", type=int, default=None, help="default: each family's own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--bpd-draws", type=int, default=10, help="dequantization draws per test image (§4: 10)")
    p.add_argument(
        "--validate-every",
        type=int,
        default=0,
        help="validate on a held-out tenth of the training images every N steps and keep the best "
        "model (families with a density or a loss; 0: off)",
    )
    p.add_argument("--patience", type=int, default=0, help="validations without improvement before stopping")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="FAMILY:KEY=VALUE",
        help="a family option, e.g. vae:latent_dim=16 (repeatable)",
    )
    p.add_argument("--grid-dir", default="docs/img/digits", help="sample grids FAMILY.png and real.png")
    p.add_argument("--out", default="bench_digits.jsonl", help="JSON lines, appended")
    args = p.parse_args()
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.budget_seconds is not None and not args.budget_seconds > 0:
        p.error(f"--budget-seconds must be positive, got {args.budget_seconds}")
    family_options: dict[str, dict] = {}
    for item in args.option:
        family, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not (sep and eq and key) or family not in FAMILIES:
            p.error(f"--option takes FAMILY:KEY=VALUE with a known family, got {item!r}")
        family_options.setdefault(family, {})[key] = _value(value)
    torch.set_num_threads(args.threads)
    dataset = load_data("digits")
    grid_dir = Path(args.grid_dir)
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    where = machine()
    print(f"# bench_digits — {date}")
    print(f"machine: {where}\n")

    assert dataset.test is not None and dataset.levels is not None
    real = dequantize(dataset.test[:100], dataset.levels, torch.Generator().manual_seed(args.seed))
    sample_grid(real, grid_dir / "real.png", image_shape=dataset.image_shape)
    floor = real_floor(dataset, args.seed)
    print(f"real floor: {sample_summary(floor)}", flush=True)
    rows = []
    for family in args.families:
        options = family_options.get(family, {})
        defaults = FAMILIES[family].train_defaults_for(options)
        config = TrainConfig(**{**defaults, "seed": args.seed, "device": args.device, "progress": False})
        if args.validate_every:
            config.validate_every, config.patience = args.validate_every, args.patience
        if args.batch_size is not None:
            config.batch_size = args.batch_size
        extra: dict = {}
        if args.steps is not None:
            config.steps = args.steps
        elif args.budget_seconds is not None:
            per_step = seconds_per_step(family, dataset, config, args.calibration_steps, options)
            config.steps = max(1, int(args.budget_seconds / per_step))
            extra = {"budget_seconds": args.budget_seconds, "calibrated_seconds_per_step": per_step}
        print(f"[{family}] {config.steps} steps, batch {config.batch_size}", flush=True)
        row = train_and_evaluate_image_family(
            family,
            dataset,
            config,
            grid_path=grid_dir / f"{family}.png",
            bpd_draws=args.bpd_draws,
            options=options,
        )
        row = {
            "benchmark": "digits",
            "date": date,
            "machine": where,
            **extra,
            "options": options,
            "validate_every": config.validate_every,
            "patience": config.patience,
            **row,
            "bar": BAR,
            "bar_required": family in BAR_FAMILIES,
            "bar_verdict": verdict(row),
        }
        rows.append(row)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
        if "failed" in row:
            print(f"[{family}] failed: {row['failed']}", flush=True)
            continue
        bpd = (
            f"{row['bits_per_dim']:.3f} ± {row['bits_per_dim_stderr']:.3f} ({row['bits_per_dim_kind']})"
            if row.get("bits_per_dim") is not None
            else "—"
        )
        print(
            f"[{family}] bits/dim {bpd} [{row['bar_verdict']}], {sample_summary(row)}, "
            f"train {row['train_seconds']:.0f}s, eval {row['eval_seconds']:.0f}s",
            flush=True,
        )
    print()
    print(format_image_table(rows, floor, "digits", picture_dir=None, title="bench_digits"))
    print(f"bar (benchmarks.md §4): {BAR} bits/dim (per-pixel categorical {CATEGORICAL_BPD})")
    for r in rows:
        required = "required" if r["bar_required"] else "not required"
        print(f"  {r['family']:<10} {r['bar_verdict']} ({required})")
    print(f"rows appended to {args.out}; grids in {grid_dir}")


if __name__ == "__main__":
    main()
