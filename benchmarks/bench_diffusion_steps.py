"""Diffusion (issue 5, benchmark item 2): steps against quality with the learned network, and
the same network driven by diffusers' schedulers.

One diffusion model is trained with ``process="ddpm"`` (N = 1000 levels, linear β from 1e-4
to 0.02: the DDPM schedule, diffusers' default) and the family's default prediction (v).
Then, for each of our samplers and each number of steps, ``--n`` samples are drawn with a
fixed generator and measured:

- the counting KL to the truth (``kl_to_truth(..., method="grid")``, 50 × 50 cells, with its
  bootstrap stderr; ``null_bias`` is what a perfect sampler scores at this n);
- modes captured and the share of high-quality samples (within 3σ of a mode) where the
  target declares its modes;
- NFE (network evaluations, counted by a hook on the network: heun and pc use 2N − 1, the
  adaptive ode sampler ignores ``steps`` and is run once) and the wall-clock seconds of
  the sampling loop alone, from the first noise draw to data-space samples (one thread by
  default; after an untimed warm-up; the fastest of ``--repeats`` identical draws).

Our samplers walk their default noise levels (``spacing="auto"``); ``--spacings``
adds the others (``uniform``: uniform in t, i.e. DDPM's own levels; ``logsnr``): a row
"euler-uniform" is euler on uniform levels.

ddim with η = 0 is euler and ddim with η = 1 is ancestral, so the defaults run euler and
ancestral and not ddim. In the same run the same EMA network drives diffusers'
DDIMScheduler (η = 0 and η = 1) and DPMSolverMultistepScheduler (DPM-Solver++, order 2),
configured as the training process (num_train_timesteps=1000, linear β 1e-4..0.02, the
model's prediction type, no clipping), in a plain diffusers loop::

    scheduler.set_timesteps(N); x = randn(n, d) * scheduler.init_noise_sigma
    for k in scheduler.timesteps:
        x = scheduler.step(F(x, t=(k + 1)/1000), k, x).prev_sample

(diffusers' timestep k has ᾱ = cumprod(1 − β)[k], our level i = k + 1 at t = i/N; checked
numerically at start-up). diffusers gets every timestep spacing ("leading", "trailing",
"linspace"; DPM-Solver also Karras σs) and its best configuration at each step count is
marked.

Bar (issue 5): at 10 and 20 steps our best sampler is at least as close to the truth as
diffusers' best, and the sampling loop is not slower.

    python benchmarks/bench_diffusion_steps.py                      # 8gaussians, everything
    python benchmarks/bench_diffusion_steps.py --target ring8
    python benchmarks/bench_diffusion_steps.py --run runs/bench_diffusion_steps/8gaussians-20000
    python benchmarks/bench_diffusion_steps.py --steps-list 10 20 --samplers euler dpmpp2m
    python benchmarks/bench_diffusion_steps.py --quick              # smoke run (~1 min)

The trained run is saved under ``--save`` (default runs/bench_diffusion_steps/TARGET-STEPS)
and reused with ``--run``. Rows are appended to ``--out`` (JSON lines) as they finish.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from genmodels.diffusion.solvers import SAMPLERS, sample
from genmodels.distributions import get_target
from genmodels.evaluate import kl_to_truth, target_mode_metrics
from genmodels.models.diffusion import Diffusion, convert
from genmodels.train import TrainConfig, load_run, train

OUR_SAMPLERS = ["euler", "heun", "ancestral", "sde", "pc", "dpmpp2m", "ode"]
STEPS = [5, 10, 20, 50, 100, 1000]
BAR_STEPS = (10, 20)
SPACINGS = ("leading", "trailing", "linspace")
DIFFUSERS_CONFIGS = [
    *(f"ddim-{s}" for s in SPACINGS),
    *(f"ddim-eta1-{s}" for s in SPACINGS),
    *(f"dpmpp2m-{s}" for s in SPACINGS),
    "dpmpp2m-karras",
]
PREDICTION_TYPES = {"v": "v_prediction", "eps": "epsilon", "x0": "sample", "score": "epsilon"}


# -- the model ------------------------------------------------------------------------------
def get_model(args: argparse.Namespace) -> tuple[Diffusion, dict]:
    if args.run:
        model, record = load_run(args.run)
        info = {"run": str(args.run), "train_steps": int(record["step"]), "train_seconds": None}
    else:
        cfg = TrainConfig(**{**Diffusion.train_defaults, "seed": args.seed, "progress": False})
        cfg.steps = args.train_steps or cfg.steps
        save = Path(args.save or f"runs/bench_diffusion_steps/{args.target}-{cfg.steps}")
        t0 = time.perf_counter()
        result = train("diffusion", args.target, cfg, out=save, options={"process": "ddpm"})
        info = {"run": str(save), "train_steps": cfg.steps, "train_seconds": time.perf_counter() - t0}
        model = result.model
    if not isinstance(model, Diffusion) or model.config.process != "ddpm":
        raise SystemExit("the benchmark needs a diffusion model with process=ddpm")
    c = model.config
    if c.beta_schedule != "linear" or c.n_timesteps != 1000:
        raise SystemExit("the diffusers schedulers are set up for N = 1000 linear β: retrain with those")
    model.eval()
    return model, info


def sampling_net(model: Diffusion) -> torch.nn.Module:
    """The network ``model.sample`` uses (the EMA one unless EMA is off)."""
    return model.ema_net if model.config.ema > 0 else model.net


class CountCalls:
    """Counts forward calls of a module (the NFE) through a forward hook."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = net.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1


# -- diffusers ------------------------------------------------------------------------------
def make_scheduler(config: str, prediction: str):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    common = {
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "prediction_type": PREDICTION_TYPES[prediction],
    }
    if config.startswith("ddim"):
        spacing = config.rsplit("-", 1)[1]
        return DDIMScheduler(clip_sample=False, timestep_spacing=spacing, **common), (
            1.0 if "eta1" in config else 0.0
        )
    spacing = config.rsplit("-", 1)[1]
    if spacing == "karras":
        return DPMSolverMultistepScheduler(use_karras_sigmas=True, **common), None
    return DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, timestep_spacing=spacing, **common
    ), None


def check_timestep_mapping(model: Diffusion) -> dict:
    """ᾱ of diffusers' timestep k against ours at level k + 1 (t = (k + 1)/1000)."""
    sched, _ = make_scheduler("ddim-trailing", model.config.prediction)
    k = torch.arange(1000)
    ours = model.process.alpha((k + 1).double() / 1000) ** 2
    theirs = sched.alphas_cumprod.double()
    return {
        "alphas_cumprod_max_abs_diff": float((ours - theirs).abs().max()),
        "alphas_cumprod_max_rel_diff": float(((ours - theirs) / ours).abs().max()),
        "betas_max_abs_diff": float((model.process.betas - sched.betas.double()).abs().max()),
    }


def check_same_grid(model: Diffusion, n: int = 2000, steps: int = 10) -> dict:
    """Our euler and dpmpp2m walked on diffusers' own levels (σ̃ at its timesteps k + 1, then 0)
    against DDIM and DPM-Solver++ with the same noise: the largest difference of the samples
    (float32 round-off when both loops compute the same thing, so that any gap in the tables
    comes from the choice of levels, not from the solvers)."""
    out = {}
    for config, sampler in (("ddim-trailing", "euler"), ("dpmpp2m-linspace", "dpmpp2m")):
        sched, _ = make_scheduler(config, model.config.prediction)
        sched.set_timesteps(steps)
        k = sched.timesteps.double()
        sigmas = torch.cat([model.process.sigma_tilde((k + 1) / 1000), torch.zeros(1, dtype=torch.float64)])
        g = torch.Generator().manual_seed(0)
        z = torch.randn(n, model.dim, generator=g, dtype=model.shift.dtype)
        with torch.no_grad():
            x = sample(model.denoiser(), z * math.sqrt(1.0 + float(sigmas[0]) ** 2), sigmas, sampler, g).x
        theirs = diffusers_sampler(model, config)(n, steps, torch.Generator().manual_seed(0))
        out[f"{sampler}_vs_{config}"] = float((model.denormalize(x) - theirs).abs().max())
    return out


def diffusers_sampler(model: Diffusion, config: str) -> Callable[[int, int, torch.Generator], torch.Tensor]:
    """A diffusers-style sampling loop around the model's network; returns data-space samples."""
    net, prediction = sampling_net(model), model.config.prediction
    proc = model.process

    def run(n: int, steps: int, g: torch.Generator) -> torch.Tensor:
        sched, eta = make_scheduler(config, prediction)
        sched.set_timesteps(steps)
        with torch.no_grad():
            x = torch.randn(n, model.dim, generator=g, dtype=model.shift.dtype) * sched.init_noise_sigma
            for k in sched.timesteps:
                t = torch.full((n,), (float(k) + 1.0) / 1000.0, dtype=torch.float64)
                out = model._forward(net, x, t)
                if prediction == "score":  # diffusers has no score prediction: hand it ε
                    alpha = proc.alpha(t).to(x.dtype)[:, None]
                    sigma = alpha * proc.sigma_tilde(t).to(x.dtype)[:, None]
                    out = convert(out, "score", "eps", x, alpha, sigma)
                if eta is None:
                    x = sched.step(out, k, x).prev_sample
                else:
                    x = sched.step(out, k, x, eta=eta, generator=g).prev_sample
        return model.denormalize(x)

    return run


def our_sampler(
    model: Diffusion, sampler: str, spacing: str = "auto"
) -> Callable[[int, int, torch.Generator], torch.Tensor]:
    def run(n: int, steps: int, g: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            return model.sample(n, generator=g, sampler=sampler, steps=steps, spacing=spacing)

    return run


# -- measuring ------------------------------------------------------------------------------
def measure(
    engine: str,
    name: str,
    draw: Callable[[int, int, torch.Generator], torch.Tensor],
    steps: int,
    model: Diffusion,
    target,
    args: argparse.Namespace,
) -> dict:
    counter = CountCalls(sampling_net(model))  # a forward hook: ~1 µs a call, on both engines
    t0 = time.perf_counter()
    try:
        x = draw(args.n, steps, torch.Generator().manual_seed(args.seed + 1000))
    finally:
        counter.handle.remove()
    times = [time.perf_counter() - t0]
    for _ in range(args.repeats - 1):  # the same draw again; the fastest is kept
        t0 = time.perf_counter()
        draw(args.n, steps, torch.Generator().manual_seed(args.seed + 1000))
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    return {
        "engine": engine,
        "config": name,
        "target": args.target,
        "steps": steps,
        "n": args.n,
        "nfe": counter.calls,
        "seconds": seconds,
        **quality(x, model, target, args),
    }


def quality(x: torch.Tensor, model: Diffusion, target, args: argparse.Namespace) -> dict:
    x = x.detach().double()
    finite = bool(torch.isfinite(x).all())
    kl = kl_to_truth(
        model, target, args.n, torch.Generator().manual_seed(args.seed + 2000), method="grid", samples=x
    )
    row = {
        "kl": kl.value,
        "kl_stderr": kl.stderr,
        "kl_null_bias": kl.details.get("null_bias"),
        "finite": finite,
    }
    if target.mode_centers is not None and target.mode_std is not None:
        mm = target_mode_metrics(x, target)
        row.update(
            modes=mm.modes, n_modes=mm.n_modes, hq_fraction=mm.hq_fraction, mode_reverse_kl=mm.reverse_kl
        )
    return row


# -- reporting ------------------------------------------------------------------------------
def _label(r: dict) -> str:
    return f"{r['engine']} {r['config']}"


def best(rows: list[dict], engine: str, steps: int) -> dict | None:
    cands = [r for r in rows if r["engine"] == engine and r["steps"] == steps and math.isfinite(r["kl"])]
    return min(cands, key=lambda r: r["kl"]) if cands else None


def tables(rows: list[dict], steps_list: list[int]) -> str:
    labels = list(dict.fromkeys(_label(r) for r in rows if r["engine"] != "reference"))
    cell = {(_label(r), r["steps"]): r for r in rows}
    marks = {}
    for s in steps_list:
        for engine, mark in (("ours", " †"), ("diffusers", " ★")):
            b = best(rows, engine, s)
            if b is not None:
                marks[(_label(b), s)] = mark
    adaptive = {_label(r) for r in rows if r["config"] == "ode"}
    header = "| sampler / config | " + " | ".join(str(s) for s in steps_list) + " |"
    rule = "|---|" + "---:|" * len(steps_list)

    def grid(title: str, fmt: Callable[[dict], str]) -> list[str]:
        out = [f"**{title}**", "", header, rule]
        for lab in labels:
            cells = []
            for s in steps_list:
                r = cell.get((lab, s)) or (cell.get((lab, 0)) if lab in adaptive else None)
                if r is None:
                    cells.append("—")
                elif lab in adaptive and s != steps_list[0]:
                    cells.append("″")
                else:
                    cells.append(fmt(r) + marks.get((lab, s), ""))
            out.append(f"| {lab} | " + " | ".join(cells) + " |")
        return [*out, ""]

    lines = grid(
        "KL to the truth (nats, counting estimate ± bootstrap se; † our best, ★ diffusers' best; "
        "ode is adaptive: one run)",
        lambda r: f"{r['kl']:.3f} ± {r['kl_stderr']:.3f}",
    )
    if any("n_modes" in r for r in rows):
        lines += grid("modes / HQ %", lambda r: f"{r['modes']}/{r['n_modes']} · {100 * r['hq_fraction']:.1f}")
    lines += grid("NFE · seconds of the sampling loop", lambda r: f"{r['nfe']} · {r['seconds']:.2f}")
    ref = [r for r in rows if r["engine"] == "reference"]
    if ref:
        r = ref[0]
        lines.append(
            f"Floor: {r['n']} exact target samples score KL {r['kl']:.3f} ± {r['kl_stderr']:.3f} "
            f"(null bias {r['kl_null_bias']:.3f})."
        )
    return "\n".join(lines)


def verdicts(rows: list[dict], steps_list: list[int]) -> tuple[str, list[dict]]:
    lines, out = [], []
    for s in BAR_STEPS:
        if s not in steps_list:
            continue
        ours, theirs = best(rows, "ours", s), best(rows, "diffusers", s)
        if ours is None or theirs is None:
            continue
        se = math.hypot(ours["kl_stderr"], theirs["kl_stderr"])
        strict = ours["kl"] <= theirs["kl"]
        within = ours["kl"] <= theirs["kl"] + se
        ratio = ours["seconds"] / theirs["seconds"]
        v = {
            "verdict_steps": s,
            "ours_best": ours["config"],
            "ours_kl": ours["kl"],
            "ours_nfe": ours["nfe"],
            "diffusers_best": theirs["config"],
            "diffusers_kl": theirs["kl"],
            "diffusers_nfe": theirs["nfe"],
            "combined_se": se,
            "kl_strict": strict,
            "kl_within_se": within,
            "seconds_ratio": ratio,
        }
        pairs = []
        for mine, prefix in (("euler", "ddim-"), ("ancestral", "ddim-eta1-"), ("dpmpp2m", "dpmpp2m-")):
            mine_rows = [
                r
                for r in rows
                if r["engine"] == "ours"
                and r["steps"] == s
                and (r["config"] == mine or r["config"].startswith(mine + "-"))
            ]
            if not mine_rows:
                continue
            a = min(mine_rows, key=lambda r: r["kl"])
            cands = [
                r
                for r in rows
                if r["engine"] == "diffusers"
                and r["steps"] == s
                and r["config"].startswith(prefix)
                and not (prefix == "ddim-" and "eta1" in r["config"])
            ]
            if not cands:
                continue
            b = min(cands, key=lambda r: r["kl"])
            pairs.append(
                f"{a['config']} {a['kl']:.3f} vs {b['config']} {b['kl']:.3f}, "
                f"time ×{a['seconds'] / b['seconds']:.2f}"
            )
            v[f"pair_{mine}"] = {
                "ours": a["config"],
                "diffusers": b["config"],
                "ours_kl": a["kl"],
                "diffusers_kl": b["kl"],
                "seconds_ratio": a["seconds"] / b["seconds"],
            }
        out.append(v)
        lines.append(
            f"- {s} steps: ours {ours['config']} KL {ours['kl']:.3f} ± {ours['kl_stderr']:.3f} "
            f"(NFE {ours['nfe']}) vs diffusers {theirs['config']} {theirs['kl']:.3f} ± "
            f"{theirs['kl_stderr']:.3f} (NFE {theirs['nfe']}): "
            f"strict {'met' if strict else 'NOT met'}, within the combined se {se:.3f} "
            f"{'met' if within else 'NOT met'}; seconds ours/diffusers {ratio:.2f} "
            f"({'not slower' if ratio <= 1.0 else 'SLOWER'}). Same algorithm, each side's best spacing: "
            + "; ".join(pairs)
        )
    return "\n".join(lines), out


# -- main -----------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="8gaussians", help="2-D target (8gaussians, ring8, grid25, ...)")
    p.add_argument("--train-steps", type=int, default=None, help="default: the family's (20000)")
    p.add_argument("--run", default=None, help="reuse the trained run in this directory")
    p.add_argument(
        "--save", default=None, help="where to save the run (default runs/bench_diffusion_steps/…)"
    )
    p.add_argument("--steps-list", type=int, nargs="+", default=None, help=f"default {STEPS}")
    p.add_argument(
        "--samplers",
        nargs="+",
        default=None,
        choices=[s for s in SAMPLERS if s != "ncsn"],
        help=f"ours (default {' '.join(OUR_SAMPLERS)})",
    )
    p.add_argument(
        "--diffusers",
        nargs="*",
        default=None,
        choices=DIFFUSERS_CONFIGS,
        help="diffusers configurations (default all; none: skip diffusers)",
    )
    p.add_argument("--n", type=int, default=None, help="samples per configuration (default 20000)")
    p.add_argument(
        "--spacings",
        nargs="+",
        default=["auto"],
        choices=["auto", "edm", "uniform", "trailing", "logsnr"],
        help="noise levels of our samplers (default: the model's auto choice; uniform = DDPM's levels in t)",
    )
    p.add_argument("--repeats", type=int, default=1, help="timed draws per configuration (fastest kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true", help="smoke run: 500 training steps, n 2000, steps 5 10")
    p.add_argument("--out", default="bench_diffusion_steps.jsonl")
    args = p.parse_args()
    if args.quick:
        args.train_steps = args.train_steps or 500
        args.n = args.n or 2000
        args.steps_list = args.steps_list or [5, 10]
    args.n = args.n or 20_000
    steps_list = args.steps_list or STEPS
    samplers = args.samplers or OUR_SAMPLERS
    configs = DIFFUSERS_CONFIGS if args.diffusers is None else args.diffusers
    spacings = list(dict.fromkeys(args.spacings))
    torch.set_num_threads(args.threads)

    import diffusers

    print(f"# bench_diffusion_steps — {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(
        f"machine: {platform.platform()}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    target = get_target(args.target)
    model, info = get_model(args)
    mapping = check_timestep_mapping(model)
    print(
        f"model: {info}, prediction {model.config.prediction}, ema {model.config.ema}\n"
        f"timestep mapping (ᾱ_ours(level k+1) vs diffusers alphas_cumprod[k]): {mapping}\n"
        f"n {args.n}, steps {steps_list}\n",
        flush=True,
    )
    if mapping["alphas_cumprod_max_rel_diff"] > 1e-5:
        raise SystemExit("the training process and diffusers' schedule differ")
    same = check_same_grid(model)
    print(f"ours on diffusers' levels vs diffusers, 10 steps, max |Δx|: {same}\n", flush=True)
    with open(args.out, "a") as fh:
        fh.write(json.dumps({"engine": "check", "target": args.target, **mapping, **same}) + "\n")

    def emit(row: dict) -> None:
        rows.append(row)
        with open(args.out, "a") as fh:
            fh.write(json.dumps({**row, "run": info["run"], "threads": args.threads}) + "\n")
        modes = (
            f", modes {row['modes']}/{row['n_modes']} HQ {row['hq_fraction']:.3f}" if "modes" in row else ""
        )
        print(
            f"[{row['engine']} {row['config']} {row['steps']}] KL {row['kl']:.3f} ± {row['kl_stderr']:.3f}"
            f"{modes}, NFE {row['nfe']}, {row['seconds']:.2f}s",
            flush=True,
        )

    rows: list[dict] = []
    g_ref = torch.Generator().manual_seed(args.seed + 3000)
    emit(
        {
            "engine": "reference",
            "config": "target samples",
            "target": args.target,
            "steps": 0,
            "n": args.n,
            "nfe": 0,
            "seconds": 0.0,
            **quality(target.sample(args.n, generator=g_ref), model, target, args),
        }
    )
    # warm-up (first-call allocations), untimed: one short draw through each engine
    for draw in (our_sampler(model, "euler"), diffusers_sampler(model, "ddim-trailing")):
        draw(args.n, 5, torch.Generator().manual_seed(0))
    for sampler in samplers:
        for spacing in ["auto"] if sampler == "ode" else spacings:  # ode: only the ends matter
            name = sampler if spacing == "auto" else f"{sampler}-{spacing}"
            draw = our_sampler(model, sampler, spacing)
            for s in [0] if sampler == "ode" else steps_list:
                row = measure("ours", name, draw, max(s, 2), model, target, args)
                emit({**row, "steps": s})  # ode: steps 0, adaptive
    for config in configs:
        for s in steps_list:
            try:
                emit(measure("diffusers", config, diffusers_sampler(model, config), s, model, target, args))
            except (IndexError, RuntimeError, ValueError) as err:  # a scheduler that cannot run N steps
                why = f"{type(err).__name__}: {err}"
                print(f"[diffusers {config} {s}] failed inside diffusers: {why}", flush=True)

    print()
    print(tables(rows, steps_list))
    text, out = verdicts(rows, steps_list)
    if text:
        print("\nBar (at 10 and 20 steps our best ≤ diffusers' best in KL, and not slower):")
        print(text)
        with open(args.out, "a") as fh:
            for v in out:
                fh.write(json.dumps({"engine": "verdict", "target": args.target, **v}) + "\n")


if __name__ == "__main__":
    main()
