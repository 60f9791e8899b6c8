"""The cost of one flow-matching training step, ours against torchcfm's, interleaved (issue 6).

On a shared machine, runs that follow one another get different shares of the CPU; this
script alternates the two models in rounds of ``--steps`` steps (``--rounds`` rounds) in one
process, one thread, batch 512, and reports CPU milliseconds per step. Both steps are the full
``Model.step`` of the training loop (torchcfm's loss is wrapped as in ``bench_peers.py``).

    python benchmarks/bench_fm_step.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import bench_peers

from genmodels.models import build_model
from genmodels.models.fm import FlowMatchingConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    models = {"genmodels fm": build_model("fm", 2), "torchcfm": bench_peers.TorchCFM(2, FlowMatchingConfig())}
    for m in models.values():
        m.configure_optimizers(1e-3)
        for _ in range(20):
            m.step(x, g)
    spent = dict.fromkeys(models, 0.0)
    for _ in range(args.rounds):
        for name, m in models.items():
            t0 = time.process_time()
            for _ in range(args.steps):
                m.step(x, g)
            spent[name] += time.process_time() - t0
    for name, m in models.items():
        params = sum(q.numel() for q in m.parameters())
        print(
            f"{name}: {1e3 * spent[name] / (args.rounds * args.steps):.3f} ms per step, {params:,} parameters"
        )


if __name__ == "__main__":
    main()
