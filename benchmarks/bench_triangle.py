"""The divergence triangle against its parts trained alone (issue 8): KL to the truth and mode
metrics of the triangle's generator and EBM, of CoopNets' generator and EBM, and of the VAE,
the GAN and the EBM each trained alone with the same networks and the same wall-clock budget.

Per target, in one run (one seed, one machine):

1. ``triangle`` trains first with its defaults (``train_defaults`` × ``--steps-scale``); its
   training seconds set the **budget** B (or ``--budget`` seconds, fixed, when given).
2. ``coop``, ``vae``, ``gan`` and ``ebm`` then each train for about B seconds: a calibration
   run of ``--calibration-steps`` steps times the family's step on this machine, and the run
   takes ``B / (seconds per step)`` steps (at least ``--min-steps``) with the family's own
   learning rate, batch size and schedule over those steps. Machine load changes the step
   time, so the table reports each run's actual train seconds next to the budget. The budget
   includes the triangle's set-up (its EBM's reference fit), the alone runs' step count does
   not count theirs; ``--budget`` fixes B for every model, the triangle included.
3. **Same networks**: the alone runs take the triangle's sizes through their options — the
   VAE the triangle's generator and inference networks (``hidden``, ``depth``, ``activation``,
   ``latent_dim``), the GAN's generator the triangle's generator (``g_hidden``, ``g_depth``,
   ``g_activation``, ``latent_dim``; its discriminator keeps the GAN defaults), the EBM and
   CoopNets' EBM the triangle's energy network (``hidden``/``depth`` = ``ebm_hidden``/
   ``ebm_depth``) and CoopNets' generator the triangle's generator. Everything else is each
   family's default (the VAE learns its decoder σ; the triangle fixes it).

Scores (``genmodels.evaluate``), per model:

- an **EBM** (triangle's, CoopNets', the EBM alone): KL(truth ‖ π_α) from its log-density,
  log Z by grid quadrature — kind ``exact``; modes / HQ % on 2,500 exact draws of π_α from the
  grid (``ebm``'s sampler="grid"; the triangle's and CoopNets' EBM are the EBM family's);
- a **generator** (triangle's, CoopNets', the VAE's decoder, the GAN's): the counting KL of
  20,000 draws on a 50 × 50 grid (kind ``estimate``, with its floor, the score of a perfect
  sampler, ``kl_null_bias``); modes / HQ % on the first 2,500 draws. The VAE's generator
  draws x = g(z) + σ ε; so do the triangle's and CoopNets' (``refine_steps=0``: the generator
  alone, without the MALA refinement or the Langevin revision on their EBM); the VAE's row also carries its
  importance-weighted KL upper bound (``kl_bound``).

Bars (issue 8): the triangle's EBM at least as close to the truth as the EBM alone, and the
triangle's generator at least as close as the VAE's and the GAN's generators alone, each with
the same budget ("at least as close": KL ≤ the other's KL + 2 combined standard errors).

    python benchmarks/bench_triangle.py                                    # 8gaussians rings grid25
    python benchmarks/bench_triangle.py --targets 8gaussians --steps-scale 0.01   # smoke, ~1.5 min

A full run trains 5 models for about B each per target, plus calibration and scoring: with
B ≈ 100 s (3000 triangle steps on one shared core) about 10 minutes per target.

Rows are appended to ``--out`` (JSON lines) as they finish, so a long run can be stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from datetime import datetime, timezone

import torch

from genmodels import get_target
from genmodels.evaluate import kl_to_truth, target_mode_metrics
from genmodels.models import FAMILIES
from genmodels.train import TrainConfig, TrainingDiverged, train

TARGETS = ["8gaussians", "rings", "grid25"]
ALONE = ["coop", "vae", "gan", "ebm"]
N_KL, N_MODES = 20_000, 2500


def same_networks(tri: dict, dim: int) -> dict[str, dict]:
    """The alone runs' options that give them the triangle's networks (module docstring); ``dim``:
    the data's dimension, the triangle's latent dimension when its ``latent_dim`` is 0."""
    latent = tri["latent_dim"] or dim
    gen = {"hidden": tri["hidden"], "depth": tri["depth"], "activation": tri["activation"]}
    g_net = {"g_hidden": tri["hidden"], "g_depth": tri["depth"], "g_activation": tri["activation"]}
    ebm_net = {"hidden": tri["ebm_hidden"], "depth": tri["ebm_depth"], "activation": tri["activation"]}
    return {
        "triangle": {},
        "vae": {**gen, "latent_dim": latent},
        "gan": {**g_net, "latent_dim": latent},
        "ebm": ebm_net,
        "coop": {**g_net, **ebm_net, "latent_dim": latent},
    }


def _config(family: str, steps: int, seed: int) -> TrainConfig:
    return TrainConfig(**{**FAMILIES[family].train_defaults, "steps": steps, "seed": seed, "progress": False})


def calibrate(family: str, target: str, options: dict, steps: int, seed: int) -> float:
    """Seconds per training step of ``family`` here: the slope between a 1-step run (which pays for
    the set-up, e.g. the EBM's reference fit) and a ``steps``-step run."""
    times = []
    for n in (1, steps):
        t0 = time.perf_counter()
        train(family, target, _config(family, n, seed), options=options)
        times.append(time.perf_counter() - t0)
    return max(times[1] - times[0], 1e-6) / (steps - 1)


def _modes(samples: torch.Tensor, target) -> dict:
    if target.mode_centers is None or target.mode_std is None:
        return {}
    mm = target_mode_metrics(samples[:N_MODES], target)
    return {"modes": mm.modes, "n_modes": mm.n_modes, "hq_fraction": mm.hq_fraction}


def score_ebm(model, target, seed: int) -> dict:
    """KL(truth ‖ π_α), quadrature log Z (exact), and the modes of exact (grid) draws of π_α.

    The triangle's and CoopNets' EBMs live in their model's standardized coordinates u (the inner
    ``model.ebm`` is not standardized itself), so they are scored through the model: its
    ``log_prob`` is the EBM's, in data space, and grid draws of ``model.ebm`` are mapped back by
    x = shift + scale · u. (Until session 7 this scored ``model.ebm`` on data-space points as if
    they were u: KLs of 5 to 10⁵ nats that were this script's error, not the models'.)"""
    g = torch.Generator().manual_seed(seed)
    kl = kl_to_truth(model, target, N_KL, g)
    if model.family in ("triangle", "coop"):
        u = model.ebm.sample(N_MODES, generator=g, sampler="grid").detach()
        draws = (model.shift + model.scale * u).cpu().float()
    else:
        draws = model.sample(N_MODES, generator=g, sampler="grid").detach().cpu().float()
    return {"kl": kl.value, "kl_stderr": kl.stderr, "kl_kind": kl.kind, **_modes(draws, target)}


def score_generator(model, target, seed: int) -> dict:
    """Counting KL of 20,000 generator draws on a 50 × 50 grid (with its floor) and their modes."""
    g = torch.Generator().manual_seed(seed)
    # the generator alone: coop's and the triangle's sample() refine its draws on their EBM
    options = {"refine_steps": 0} if model.family in ("coop", "triangle") else {}
    samples = model.sample(N_KL, generator=g, **options).detach().cpu().float()
    kl = kl_to_truth(model, target, N_KL, g, method="grid", samples=samples)
    row = {
        "kl": kl.value,
        "kl_stderr": kl.stderr,
        "kl_kind": kl.kind,
        "kl_null_bias": kl.details["null_bias"],
        **_modes(samples, target),
    }
    if model.family == "vae":
        bound = kl_to_truth(model, target, N_KL, g)
        row["kl_bound"], row["kl_bound_kind"] = bound.value, bound.kind
    return row


#: which parts of each family are scored
PARTS = {"triangle": ("ebm", "generator"), "coop": ("ebm", "generator"), "vae": ("generator",)}
PARTS.update(gan=("generator",), ebm=("ebm",))


def run_target(target_name: str, args) -> list[dict]:
    target = get_target(target_name)
    tri_defaults = FAMILIES["triangle"].Config()
    tri = {k: getattr(tri_defaults, k) for k in tri_defaults.__dataclass_fields__}
    options = same_networks(tri, target.dim)
    rows, budget = [], args.budget
    for family in ["triangle", *ALONE]:
        opts = options[family]
        if family == "triangle":
            steps = max(args.min_steps, round(FAMILIES[family].train_defaults["steps"] * args.steps_scale))
            if budget is not None:
                per_step = calibrate(family, target_name, opts, args.calibration_steps, args.seed)
                steps = max(args.min_steps, math.floor(budget / per_step))
        else:
            per_step = calibrate(family, target_name, opts, args.calibration_steps, args.seed)
            steps = max(args.min_steps, math.floor(budget / per_step))
        t0 = time.perf_counter()
        try:
            model = train(family, target_name, _config(family, steps, args.seed), options=opts).model
        except TrainingDiverged as err:
            rows.append({"family": family, "part": "—", "target": target_name, "diverged": str(err)})
            continue
        train_s = time.perf_counter() - t0
        if budget is None:
            budget = train_s
        for part in PARTS[family]:
            score = score_ebm if part == "ebm" else score_generator
            row = {
                "family": family,
                "part": part,
                "target": target_name,
                "steps": steps,
                "options": opts,
                "train_seconds": train_s,
                "budget_seconds": budget,
                **score(model, target, args.seed + 100),
            }
            rows.append(row)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(
                f"[{family} {part} on {target_name}] KL {row['kl']:.3f} ± {row['kl_stderr']:.3f} "
                f"({row['kl_kind']}), modes {row.get('modes', '—')}/{row.get('n_modes', '—')}, "
                f"{steps} steps in {train_s:.0f}s (budget {budget:.0f}s)",
                flush=True,
            )
    return rows


def _find(rows: list[dict], target: str, family: str, part: str) -> dict | None:
    for r in rows:
        if (r["target"], r["family"], r["part"]) == (target, family, part) and "kl" in r:
            return r
    return None


def verdict(row: dict, rows: list[dict]) -> str:
    """The issue's bar on the triangle's rows: at least as close to the truth as the part alone."""
    if row["family"] != "triangle" or "kl" not in row:
        return ""
    rivals = ["ebm"] if row["part"] == "ebm" else ["vae", "gan"]
    parts = []
    for fam in rivals:
        other = _find(rows, row["target"], fam, row["part"])
        if other is None:
            continue
        margin = 2 * math.hypot(row["kl_stderr"], other["kl_stderr"])
        ok = row["kl"] <= other["kl"] + margin
        parts.append(f"{'met' if ok else 'NOT met'} vs {fam}")
    return ", ".join(parts)


def table(rows: list[dict]) -> str:
    lines = [
        "| target | family | part | KL (nats) | kind | modes | HQ % | steps | train s (budget) | bar |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "kl" not in r:
            lines.append(f"| {r['target']} | {r['family']} | — | diverged | | | | | | |")
            continue
        kl = f"{r['kl']:.3f} ± {r['kl_stderr']:.3f}"
        if r.get("kl_null_bias") is not None:
            kl += f" (floor {r['kl_null_bias']:.3f})"
        if r.get("kl_bound") is not None:
            kl += f"; bound {r['kl_bound']:.3f}"
        modes = f"{r['modes']}/{r['n_modes']}" if r.get("n_modes") else "—"
        hq = f"{100 * r['hq_fraction']:.1f}" if r.get("hq_fraction") is not None else "—"
        lines.append(
            f"| {r['target']} | {r['family']} | {r['part']} | {kl} | {r['kl_kind']} | {modes} | {hq} "
            f"| {r['steps']} | {r['train_seconds']:.0f} ({r['budget_seconds']:.0f}) | {verdict(r, rows)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=TARGETS)
    p.add_argument("--steps-scale", type=float, default=1.0, help="× the triangle's default steps")
    p.add_argument(
        "--budget", type=float, default=None, help="fixed seconds per model (default: the triangle's)"
    )
    p.add_argument("--calibration-steps", type=int, default=30, help="steps timed to set each budget")
    p.add_argument("--min-steps", type=int, default=10, help="fewest training steps of any run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for 2-D models)")
    p.add_argument("--out", default="bench_triangle.jsonl")
    args = p.parse_args()
    if not args.steps_scale > 0:
        raise ValueError(f"--steps-scale must be positive, got {args.steps_scale}")
    if args.calibration_steps < 2:
        raise ValueError(f"--calibration-steps must be >= 2, got {args.calibration_steps}")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    print(f"# bench_triangle — {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"machine: {platform.platform()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    defaults = FAMILIES["triangle"].train_defaults
    print(f"triangle defaults: {defaults}, steps × {args.steps_scale}\n", flush=True)
    rows = []
    for target in args.targets:
        rows.extend(run_target(target, args))
    print()
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
