"""The ODE solvers with the exact score of 8gaussians, against benchmarks.md §3.

x is drawn exactly from p at σ = 80 (the mixture convolved with N(0, 80²)); each solver walks
EDM's levels (ρ = 7, σ_min = 0.002, then 0) with the exact denoiser; the error is the
endpoint RMSE against a 4,000-step Heun solve from the same noise.

    python benchmarks/bench_diffusion_solvers.py            # 2,000 points, about 30 s
"""

from __future__ import annotations

import argparse
import math

import torch

from genmodels.diffusion import MixtureDenoiser, sample, sigma_grid
from genmodels.distributions import get_target

#: benchmarks.md §3
PUBLISHED = {
    "euler": (0.319, 0.148, 0.0566, 0.0280),
    "heun": (0.263, 0.0405, 0.00504, 0.00117),
    "dpmpp2m": (0.447, 0.0623, 0.00746, 0.00181),
}
STEPS = (10, 20, 50, 100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    target = get_target("8gaussians")
    D = MixtureDenoiser(target)
    x = target.convolve(80.0).sample(args.n, generator=torch.Generator().manual_seed(args.seed)).double()
    ref = sample(D, x, sigma_grid(4000, 0.002, 80.0), "heun").x
    print("| steps | " + " | ".join(f"{s} (published)" for s in PUBLISHED) + " |")
    print("|---|" + "---:|" * len(PUBLISHED))
    errors = {s: [] for s in PUBLISHED}
    for i, steps in enumerate(STEPS):
        cells = []
        for s, published in PUBLISHED.items():
            out = sample(D, x, sigma_grid(steps, 0.002, 80.0), s).x
            err = float(((out - ref) ** 2).sum(-1).mean().sqrt())
            errors[s].append(err)
            cells.append(f"{err:.3g} ({published[i]:.3g})")
        print(f"| {steps} | " + " | ".join(cells) + " |")
    orders = {s: math.log(e[0] / e[-1]) / math.log(STEPS[-1] / STEPS[0]) for s, e in errors.items()}
    print("\nobserved orders (10 → 100 steps): " + ", ".join(f"{s} {o:.2f}" for s, o in orders.items()))


if __name__ == "__main__":
    main()
