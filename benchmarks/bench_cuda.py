"""The CUDA path of every family and sampler, with GPU timings (issue 9, item 4).

Trains each family briefly with ``device="cuda"``, then runs every sampler, every
log-density method and the evaluation on the GPU, and one full CLI round trip (train,
sample, log-prob, evaluate, then loading the CUDA checkpoint on the CPU). Each item is
caught on its own so that one failure does not hide the others; the script exits 1 if any
failed. It also times training steps per second on the GPU against the same model on the
CPU of the same machine.

    PYTHONPATH=src python benchmarks/bench_cuda.py --out bench_cuda.json

Nothing here runs in CI (CI has no GPU); the results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

from genmodels import get_target
from genmodels.data import load_data
from genmodels.data.dataset import dequantize
from genmodels.evaluate import evaluate_model
from genmodels.train import TrainConfig, load_run, train

#: (label, family, options, sample option sets, log-prob option sets)
CASES: list[tuple[str, str, dict, list[dict], list[dict]]] = [
    ("realnvp", "realnvp", {}, [{}], [{}]),
    (
        "ebm nce",
        "ebm",
        {"method": "nce"},
        [{"sampler": s} for s in ("mala", "hmc", "langevin", "grid")] + [{"init": "reference"}],
        [{}],
    ),
    ("ebm nce-flow", "ebm", {"method": "nce", "reference": "flow", "flow_steps": 100}, [{}], [{}]),
    ("ebm mle", "ebm", {"method": "mle"}, [{}, {"init": "resample"}], [{}]),
    ("ebm mle pt", "ebm", {"method": "mle", "temperatures": 3}, [{}], [{}]),
    ("ebm mle short-run", "ebm", {"method": "mle", "chains": "short-run"}, [{}], [{}]),
    ("ebm mle hmc", "ebm", {"method": "mle", "kernel": "hmc"}, [{}], [{}]),
    ("ebm cd", "ebm", {"method": "cd"}, [{}], [{}]),
    (
        "ebm nce-maf",
        "ebm",
        {"method": "nce", "reference": "flow", "flow_family": "maf", "flow_steps": 100},
        [{}],
        [{}],
    ),
    (
        "ebm nce-target",
        "ebm",
        {"method": "nce", "reference": "target", "reference_target": "8gaussians"},
        [{}],
        [{}],
    ),
    ("triangle", "triangle", {}, [{}], [{}]),
    ("coop", "coop", {}, [{}], [{}]),
    *[
        (
            f"diffusion {proc}",
            "diffusion",
            {"process": proc},
            [
                {"sampler": s, "steps": 10}
                for s in ("euler", "heun", "ddim", "ancestral", "sde", "pc", "dpmpp2m", "ode", "ncsn")
            ],
            [{}, {"divergence": "hutchinson"}] + ([{"method": "elbo"}] if proc == "ddpm" else []),
        )
        for proc in ("vp", "subvp", "ve", "ddpm")
    ],
    ("diffusion log_normal", "diffusion", {"noise_levels": "log_normal"}, [{}], [{}]),
    ("maf", "maf", {}, [{}], [{}]),
    ("nsf coupling", "nsf", {}, [{}], [{}]),
    ("nsf autoregressive", "nsf", {"transform": "autoregressive"}, [{}], [{}]),
    ("made", "made", {}, [{}], [{}]),
    ("vae", "vae", {}, [{}], [{}, {"method": "elbo"}]),
    (
        "fm",
        "fm",
        {"coupling": "ot"},
        [{}, {"sampler": "heun", "steps": 10}],
        [{}, {"divergence": "hutchinson"}],
    ),
    ("gan", "gan", {}, [{}], []),
    ("wgan-gp", "wgan-gp", {}, [{}], []),
    ("diffusion ddpm log_normal", "diffusion", {"process": "ddpm", "noise_levels": "log_normal"}, [{}], [{}]),
]
#: the same on the bundled 8×8 digits (64 dimensions: Hutchinson's trace; no 2-D truth to evaluate)
IMAGE_CASES: list[tuple[str, str, dict, list[dict], list[dict]]] = [
    (
        "diffusion unet digits",
        "diffusion",
        {"net": "unet", "prediction": "eps"},
        [{"steps": 10}, {"sampler": "sde", "steps": 10}],
        [{"seed": 1}],
    ),
    ("realnvp digits", "realnvp", {}, [{}], [{}]),
    ("made digits (categorical)", "made", {}, [{}], [{}]),
    ("ebm conv digits", "ebm", {"energy": "conv"}, [{"steps": 10, "warmup": 10}], [{}]),
    ("coop conv digits", "coop", {"net": "conv"}, [{}], [{}]),
    ("gan conv digits", "gan", {"net": "conv"}, [{}], []),
]


def attempt(record: list[dict], label: str, fn, *args, **kwargs) -> object:
    """fn(*args, **kwargs), timed; its failure is recorded with its traceback, not raised."""
    t0 = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        record.append({"item": label, "ok": True, "seconds": round(time.perf_counter() - t0, 3)})
        return value
    except Exception:
        record.append({"item": label, "ok": False, "error": traceback.format_exc(limit=6)})
        print(f"FAILED {label}\n{record[-1]['error']}", flush=True)
        return None


def family_checks(
    device: str, steps: int, target_name: str, items: list[dict], only: list[str] | None = None
) -> None:
    target = get_target(target_name)
    cases = [(target_name, *case) for case in CASES] + [("digits", *case) for case in IMAGE_CASES]
    if only:
        cases = [c for c in cases if any(o in c[1] for o in only)]
    for data, label, family, options, sample_sets, logp_sets in cases:
        cfg = TrainConfig(steps=steps, device=device, progress=False, seed=0)
        result = attempt(
            items, f"{label}: train {steps} steps on {data}", train, family, data, cfg, options=options
        )
        if result is None:
            continue
        model = result.model
        if data == "digits":
            digits = load_data("digits")  # the models see the dequantized y = (k + v)/17
            x = dequantize(digits.test[:64], digits.levels, torch.Generator().manual_seed(1)).to(device)
        else:
            x = target.sample(512, generator=torch.Generator().manual_seed(1)).to(device)
        for so in sample_sets:
            attempt(items, f"{label}: sample {so}", draw, model, so)
        for lo in logp_sets:
            attempt(items, f"{label}: log_prob {lo}", log_density, model, x, lo)
        if data == "digits":
            continue
        gen = torch.Generator().manual_seed(3)
        attempt(items, f"{label}: evaluate", evaluate_model, model, target, n=2000, generator=gen)


def draw(model, options: dict) -> None:
    g = torch.Generator(device=model.device).manual_seed(2)
    s = model.sample(256, generator=g, **options)
    assert s.device == model.device, s.device
    assert s.shape == (256, model.dim) and torch.isfinite(s).all(), "non-finite samples"


def log_density(model, x: torch.Tensor, options: dict) -> None:
    ld = model.log_prob(x, **options)
    assert torch.isfinite(ld.values).all(), "non-finite log-density"


def cli_round_trip(device: str, items: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = str(Path(tmp) / "run")
        cli = [sys.executable, "-m", "genmodels"]
        commands = [
            [
                "train",
                "diffusion",
                "--data",
                "8gaussians",
                "--steps",
                "200",
                "--device",
                device,
                "--out",
                run,
            ],
            [
                "sample",
                run,
                "--device",
                device,
                "--sampler",
                "sde",
                "--steps",
                "20",
                "--n",
                "100",
                "--out",
                str(Path(tmp) / "s.npy"),
            ],
            [
                "log-prob",
                run,
                "--device",
                device,
                "--data",
                str(Path(tmp) / "s.npy"),
                "--out",
                str(Path(tmp) / "lp.npy"),
            ],
            ["evaluate", run, "--device", device, "--n", "2000"],
        ]
        for c in commands:
            attempt(items, "cli: " + " ".join(a for a in c if not a.startswith("/")), run_cli, cli + c)
        attempt(items, "cli: load the CUDA checkpoint on the CPU", lambda: load_run(run, "cpu")[0].sample(10))


def run_cli(command: list[str]) -> None:
    r = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {r.stderr[-2000:]}")
    print(r.stdout[-800:], flush=True)


def throughput(device: str, family: str, options: dict, batch: int, steps: int) -> float:
    cfg = TrainConfig(steps=steps, device=device, progress=False, seed=0, batch_size=batch)
    t0 = time.perf_counter()
    train(family, "8gaussians", cfg, options=options)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=200, help="training steps of each smoke check")
    p.add_argument("--target", default="8gaussians")
    p.add_argument("--out", default="bench_cuda.json")
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="run only the cases whose label contains one of these (no CLI, no timings)",
    )
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available on this machine")
        return 2
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }
    print(info, flush=True)
    items: list[dict] = []
    family_checks(args.device, args.steps, args.target, items, args.only)
    timings = []
    if not args.only:
        cli_round_trip(args.device, items)
    for label, family, options, batch in (
        []
        if args.only
        else [
            ("realnvp", "realnvp", {}, 512),
            ("ebm nce", "ebm", {"method": "nce"}, 256),
            ("ebm mle", "ebm", {"method": "mle"}, 256),
            ("diffusion mlp", "diffusion", {}, 512),
            ("diffusion mlp", "diffusion", {}, 8192),
        ]
    ):
        row = {"model": label, "batch": batch}
        for dev in (args.device, "cpu"):
            row[f"steps_per_s_{dev}"] = attempt(
                items, f"throughput {label} b{batch} {dev}", throughput, dev, family, options, batch, 300
            )
        timings.append(row)
        print(row, flush=True)
    failed = [i for i in items if not i["ok"]]
    passed = len(items) - len(failed)
    summary = {**info, "items": items, "timings": timings, "failed": len(failed), "passed": passed}
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"\n{len(items) - len(failed)} passed, {len(failed)} failed")
    for f in failed:
        print(" -", f["item"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
