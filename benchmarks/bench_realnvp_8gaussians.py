"""`genmodels train realnvp --data 8gaussians` with its default settings: wall time and the
KL to the truth it reaches (the foundation issue's bar: < 0.10 nats within 3 minutes on 2
CPU cores).

    python benchmarks/bench_realnvp_8gaussians.py [--seeds 0 1 2]

Each seed runs the real command in a subprocess (so its wall time includes start-up,
training, the final evaluation and the checkpoint), then `genmodels evaluate --json` on
50,000 fresh target samples.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            cmd = [
                sys.executable,
                "-m",
                "genmodels",
                "train",
                "realnvp",
                "--data",
                "8gaussians",
                "--out",
                str(run),
                "--seed",
                str(seed),
                "--no-progress",
            ]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t0
            ev = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "genmodels",
                    "evaluate",
                    str(run),
                    "--json",
                    "--n",
                    "50000",
                    "--seed",
                    "123",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(ev.stdout)
            rows.append(
                (
                    seed,
                    seconds,
                    result["kl"],
                    result["kl_stderr"],
                    result["kl_kind"],
                    result["step"],
                )
            )
            print(
                f"seed {seed}: {seconds:.1f} s, KL {result['kl']:.4f} ± {result['kl_stderr']:.4f} "
                f"({result['kl_kind']}), {result['step']} steps",
                flush=True,
            )
    print()
    print(
        f"date {date.today()}, {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| seed | wall time (s) | steps | KL to truth (nats) | kind |")
    print("|---|---|---|---|---|")
    for seed, s, kl, se, kind, steps in rows:
        print(f"| {seed} | {s:.1f} | {steps} | {kl:.4f} ± {se:.4f} | {kind} |")


if __name__ == "__main__":
    main()
