"""The cost of genmodels' training loop against a bare PyTorch loop.

Same model (RealNVP), same data stream (fresh 8gaussians batches from one generator), same
batch size and optimizer (Adam); the only difference is the loop: genmodels' ``train`` with
its progress bar, logging, learning-rate schedule, NaN guard and periodic checkpoints to a
temporary directory, against a hand-written ``zero_grad / loss / backward / step`` loop.
Each measurement alternates the two loops several times and reports the median steps/s.

    python benchmarks/bench_loop_overhead.py [--steps 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from datetime import date

import torch

from genmodels.distributions import get_target
from genmodels.models import build_model
from genmodels.train import TrainConfig, train


def bare_loop(steps: int, batch_size: int, lr: float, seed: int) -> float:
    target = get_target("8gaussians")
    model = build_model("realnvp", 2, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        x = target.sample(batch_size, generator=g)
        opt.zero_grad(set_to_none=True)
        loss = -model.log_prob(x).values.mean()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def genmodels_loop(steps: int, batch_size: int, lr: float, seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=True)
        t0 = time.perf_counter()
        train("realnvp", "8gaussians", config, out=tmp)
        return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    bare, ours = [], []
    for r in range(args.repeats):
        bare.append(bare_loop(args.steps, args.batch_size, 1e-3, r))
        ours.append(genmodels_loop(args.steps, args.batch_size, 1e-3, r))
        print(f"repeat {r}: bare {bare[-1]:.1f} steps/s, genmodels {ours[-1]:.1f} steps/s", flush=True)
    b, o = statistics.median(bare), statistics.median(ours)
    print()
    print(
        f"date {date.today()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| loop | steps/s (median) |")
    print("|---|---|")
    print(f"| bare PyTorch | {b:.1f} |")
    print(f"| genmodels.train | {o:.1f} |")
    print(f"| ratio genmodels / bare | {o / b:.3f} |")


if __name__ == "__main__":
    main()
