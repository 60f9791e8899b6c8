"""The CUDA path of every family and sampler, with GPU timings (issue 9, item 4).

Trains each family briefly with ``device="cuda"``, then runs every sampler, every
log-density method and the evaluation on the GPU, and one full CLI round trip (train,
sample, log-prob, evaluate, then loading the CUDA checkpoint on the CPU). Each item is
caught on its own so that one failure does not hide the others; the script exits 1 if any
failed. It also times training steps per second on the GPU against the same model on the
CPU of the same machine, runs the NCCL paths of ``genmodels.distributed`` in a one-process
group (:func:`nccl_checks`), and with ``--precision-steps N`` trains every family that allows
mixed precision in float32 and in bf16 and compares their KL and time (:func:`precision_checks`).
Results are rewritten to ``--out`` after every item, so a run cut short keeps what it did.

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


#: where attempt() rewrites the items so far after each one (a run cut short keeps them)
PARTIAL: list[Path] = []


def attempt(record: list[dict], label: str, fn, *args, **kwargs) -> object:
    """fn(*args, **kwargs), timed; its failure is recorded with its traceback, not raised."""
    try:
        return _attempt(record, label, fn, *args, **kwargs)
    finally:
        for path in PARTIAL:
            path.write_text(json.dumps({"partial": True, "items": record}, indent=1))


def _attempt(record: list[dict], label: str, fn, *args, **kwargs) -> object:
    t0 = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        record.append({"item": label, "ok": True, "seconds": round(time.perf_counter() - t0, 3)})
        print(f"ok {record[-1]['seconds']:8.2f} s  {label}", flush=True)
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


def nccl_checks(items: list[dict], backend: str = "nccl", device: str = "cuda:0") -> None:
    """The NCCL paths of genmodels.distributed on this machine's GPU, in a one-process group.

    A second rank cannot share one GPU under NCCL, so this checks what one process can: DDP
    built on an NCCL group with the model's passes routed through ``Model.call`` (the GAN's
    several passes with find_unused_parameters), the logged-scalar all-reduce, the object
    gather and broadcast, and the sharded sampler's all-gather, all on the GPU.
    """
    import socket

    import torch.distributed as dist
    import torch.distributed.nn.functional  # before the group, as genmodels.distributed does

    from genmodels import distributed as ddp
    from genmodels.models import build_model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    attempt(
        items,
        "nccl: init a one-process group",
        dist.init_process_group,
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
    )
    if not dist.is_initialized():
        return
    dev = torch.device(device)
    # world_size 2 as seen by the helpers' collectives is not possible here; a Context marked
    # active with world size 1 runs the same code paths on the real NCCL group
    ctx = ddp.Context(rank=0, world_size=1, local_rank=0, device=dev)

    class Active(ddp.Context):
        @property
        def active(self) -> bool:
            return True

    actx = Active(rank=0, world_size=1, local_rank=0, device=dev)
    for family in ("gan", "wgan-gp", "diffusion", "realnvp"):

        def steps(family: str = family) -> None:
            model = build_model(family, 2, {}, seed=0).to(dev)
            model.configure_optimizers(1e-3)
            ddp.wrap(model, ctx)
            g = torch.Generator(device=dev).manual_seed(0)
            x = get_target("8gaussians").sample(256, generator=torch.Generator().manual_seed(0)).to(dev)
            for _ in range(20):
                logs = model.step(x, g)
            ddp.check_routed(model)
            logs = ddp.mean_logs(logs, actx)
            assert all(v == v for v in logs.values()), logs
            ddp.unwrap(model)

        attempt(items, f"nccl: {family} 20 DDP steps through Model.call", steps)
    attempt(items, "nccl: gather objects", lambda: ddp.gather_objects({"a": 1}, actx))
    attempt(items, "nccl: broadcast object", lambda: ddp.broadcast_object([1, 2], actx))

    def sharded() -> None:
        model = build_model("diffusion", 2, {}, seed=0).to(dev)
        s = ddp.ShardedSampler(model).sample(100, generator=torch.Generator().manual_seed(0), steps=10)
        assert s.shape == (100, 2) and s.device == dev

    attempt(items, "nccl: sharded sampling all-gather", sharded)
    dist.destroy_process_group()


def precision_checks(device: str, steps: int, items: list[dict], rows: list[dict]) -> None:
    """Mixed precision (bf16) against float32 for every family that allows it: the same run
    (seed, data, steps) in each precision, its KL to the truth on 8gaussians and its time; then
    the training throughput of the digits U-Net (diffusion, fm) in each precision."""
    from genmodels.models import FAMILIES, get_family

    target = get_target("8gaussians")
    for family in [f for f in FAMILIES if get_family(f).autocast_safe]:
        row: dict = {"family": family, "data": "8gaussians", "steps": steps}
        for precision in ("fp32", "bf16"):
            cfg = TrainConfig(
                **{**get_family(family).train_defaults_for({}), "steps": steps},
                device=device,
                precision=precision,
                progress=False,
                seed=0,
            )
            t0 = time.perf_counter()
            result = attempt(
                items, f"{precision}: train {family} {steps} steps", train, family, "8gaussians", cfg
            )
            if result is None:
                continue
            row[f"seconds_{precision}"] = round(time.perf_counter() - t0, 2)
            gen = torch.Generator().manual_seed(3)
            m = attempt(
                items,
                f"{precision}: evaluate {family}",
                evaluate_model,
                result.model,
                target,
                n=5000,
                generator=gen,
            )
            if m is not None:
                row[f"kl_{precision}"] = m.get("kl")
                row[f"energy_distance_{precision}"] = m.get("energy_distance")
        rows.append(row)
        print(row, flush=True)
    for family in ("diffusion", "fm"):
        row = {"family": family, "data": "digits", "net": "unet", "batch": 512}
        for precision in ("fp32", "bf16"):
            cfg = TrainConfig(steps=200, batch_size=512, device=device, precision=precision, progress=False)
            t0 = time.perf_counter()
            ok = attempt(
                items, f"{precision}: {family} unet digits b512 200 steps", train, family, "digits", cfg
            )
            if ok is not None:
                row[f"steps_per_s_{precision}"] = round(200 / (time.perf_counter() - t0), 1)
        rows.append(row)
        print(row, flush=True)


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
        "--precision-steps",
        type=int,
        default=0,
        help="also compare bf16 with fp32 training of every family that allows it, this many steps each",
    )
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
    PARTIAL.append(Path(args.out))
    family_checks(args.device, args.steps, args.target, items, args.only)
    timings = []
    if not args.only:
        cli_round_trip(args.device, items)
        if args.device.startswith("cuda"):
            nccl_checks(items)
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
    precision_rows: list[dict] = []
    if args.precision_steps:
        precision_checks(args.device, args.precision_steps, items, precision_rows)
    failed = [i for i in items if not i["ok"]]
    passed = len(items) - len(failed)
    summary = {
        **info,
        "items": items,
        "timings": timings,
        "precision": precision_rows,
        "failed": len(failed),
        "passed": passed,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"\n{len(items) - len(failed)} passed, {len(failed)} failed")
    for f in failed:
        print(" -", f["item"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
