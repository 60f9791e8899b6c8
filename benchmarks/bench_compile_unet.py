"""Would ``torch.compile`` make the digits U-Net step faster? (issue 9, an experiment)

``profile_unet_step.py`` found the U-Net training step host-bound on an H200: 3.5 ms of kernels
in a 15 ms step at batch 512. This script trains a family on digits through ``genmodels.train``
once per ``TrainConfig.compile`` mode in ``--modes`` ("none": eager; "default": fused kernels;
"reduce-overhead": also CUDA graphs, which replay a step's launches at once). Only the network
is compiled; the rest of the step (noise, loss, Adam, EMA) stays eager. It reports the first
step's seconds (the compilation), wall milliseconds per step after ``--warmup`` steps, and the
mean loss of the timed steps (the same seed, so the modes should agree up to floating-point
reassociation).

    python benchmarks/bench_compile_unet.py --device cuda --families diffusion fm
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from genmodels.data import load_data
from genmodels.models import build_model
from genmodels.train import TrainConfig, image_defaults, train


def run(family: str, mode: str, args: argparse.Namespace) -> dict:
    dataset = load_data("digits")
    options = image_defaults(family, dataset.image_shape, {})
    model = build_model(family, dataset.dim, options, seed=0)
    cuda = args.device.startswith("cuda")
    config = TrainConfig(
        steps=args.warmup + args.timed,
        batch_size=args.batch_size,
        device=args.device,
        progress=False,
        seed=0,
        compile=mode,
    )
    stamps: dict[str, float] = {}
    losses: list[float] = []

    def on_step(step: int, logs: dict) -> None:
        if step in (1, args.warmup):
            if cuda:
                torch.cuda.synchronize()
            stamps[f"after {step}"] = time.perf_counter()
        if step > args.warmup:
            losses.append(logs["loss"])

    t0 = time.perf_counter()
    train(model, dataset, config, on_step=on_step)
    if cuda:
        torch.cuda.synchronize()
    end = time.perf_counter()
    row = {
        "family": family,
        "mode": mode,
        "batch": args.batch_size,
        "first_step_s": stamps["after 1"] - t0,
        "wall_ms_per_step": 1e3 * (end - stamps[f"after {args.warmup}"]) / args.timed,
        "mean_loss": sum(losses) / len(losses),
    }
    print(
        f"{family} {mode:>15} b{args.batch_size}: first step {row['first_step_s']:.1f} s, "
        f"{row['wall_ms_per_step']:.2f} ms/step, mean loss {row['mean_loss']:.4f}",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["diffusion", "fm"])
    p.add_argument("--modes", nargs="+", default=["none", "default", "reduce-overhead"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--timed", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench_compile_unet.json")
    args = p.parse_args()
    if args.warmup < 1 or args.timed < 1:
        p.error("--warmup and --timed must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for family in args.families:
        for mode in args.modes:
            rows.append(run(family, mode, args))
            with open(args.out, "w") as fh:  # after each run, so a cut-off run keeps what finished
                json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
