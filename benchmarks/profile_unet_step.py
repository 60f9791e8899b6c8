"""Where a training step of the digits U-Net spends its time, float32 against bf16 (issue 9).

Session 9 measured that bf16 speeds flow matching's U-Net step up 1.6x at batch 4096 on an H200
but slows diffusion's down. This script trains each family on digits for ``--warmup`` +
``--active`` steps with ``genmodels.train`` (so the step is exactly the training loop's), once
per precision. After ``--warmup`` steps it times ``--timed`` steps with the profiler idle (the
wall milliseconds per step), then profiles ``--active`` steps with ``torch.profiler``. It prints,
per run: wall and device (kernel) milliseconds per step, kernels launched per step, the
``--top`` host operators by the device time of the kernels they launched and, on CUDA, the
``--top`` kernels; the tables also go to ``--out`` (JSON). On the CPU the "device" columns are
the CPU's. Run it alone on the machine: time-sliced GPU work of another process inflates the
kernel times it reads.

    python benchmarks/profile_unet_step.py --device cuda --batch-size 4096
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from genmodels.train import TrainConfig, train


def profile_run(family: str, precision: str, args: argparse.Namespace) -> dict:
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    config = TrainConfig(
        steps=args.warmup + args.timed + 1 + args.active,
        batch_size=args.batch_size,
        device=args.device,
        precision=precision,
        progress=False,
        seed=0,
    )
    stamps: dict[str, float] = {}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    with profile(
        activities=activities,
        schedule=schedule(wait=args.warmup + args.timed, warmup=1, active=args.active, repeat=1),
    ) as prof:

        def on_step(step: int, _logs: dict) -> None:
            if step == args.warmup:
                sync()
                stamps["start"] = time.perf_counter()
            if step == args.warmup + args.timed:
                sync()
                stamps["end"] = time.perf_counter()
            prof.step()

        train(family, "digits", config, on_step=on_step)
    events = prof.key_averages()
    device_attr = "self_device_time_total" if cuda else "self_cpu_time_total"

    def self_time(e) -> float:
        return float(getattr(e, device_attr, 0.0) or getattr(e, "self_cuda_time_total", 0.0))

    # annotated ranges (ProfilerStep#, Optimizer.step#) appear on the device side as spans that
    # hold the kernels inside them; counting them would count those kernels twice
    real = [e for e in events if not getattr(e, "is_user_annotation", False)]
    on_device = [e for e in real if e.device_type == torch.autograd.DeviceType.CUDA]
    host = [e for e in real if e.device_type != torch.autograd.DeviceType.CUDA]
    # on CUDA: kernels are their own entries; the host operators carry the time of the kernels
    # they launched, so the top list ranks host operators (each once) by that time
    device_us = sum(self_time(e) for e in (on_device if cuda else host))
    top = sorted(host, key=self_time, reverse=True)[: args.top]
    row = {
        "family": family,
        "precision": precision,
        "batch": args.batch_size,
        "wall_ms_per_step": 1e3 * (stamps["end"] - stamps["start"]) / args.timed,
        "device_ms_per_step": device_us / 1e3 / args.active,
        "kernels_per_step": sum(e.count for e in on_device) / args.active if cuda else None,
        "top_kernels": [
            {
                "kernel": e.key,
                "ms_per_step": self_time(e) / 1e3 / args.active,
                "calls_per_step": e.count / args.active,
            }
            for e in sorted(on_device, key=self_time, reverse=True)[: args.top]
        ],
        "top": [
            {
                "op": e.key,
                "self_ms_per_step": self_time(e) / 1e3 / args.active,
                "calls_per_step": e.count / args.active,
            }
            for e in top
        ],
    }
    print(
        f"\n== {family} {precision} batch {args.batch_size}: {row['wall_ms_per_step']:.2f} wall ms/step, "
        f"{row['device_ms_per_step']:.2f} device ms/step, {row['kernels_per_step']} kernels/step",
        flush=True,
    )
    for t in row["top"]:
        print(f"  {t['self_ms_per_step']:8.3f} ms  x{t['calls_per_step']:6.1f}  {t['op'][:90]}")
    if row["top_kernels"]:
        print("  kernels:")
    for t in row["top_kernels"]:
        print(f"  {t['ms_per_step']:8.3f} ms  x{t['calls_per_step']:6.1f}  {t['kernel'][:100]}")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["diffusion", "fm"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--timed", type=int, default=30)
    p.add_argument("--active", type=int, default=10)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="profile_unet_step.json")
    args = p.parse_args()
    if min(args.warmup, args.timed, args.active) < 1:
        p.error("--warmup, --timed and --active must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [profile_run(f, precision, args) for f in args.families for precision in ("fp32", "bf16")]
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
