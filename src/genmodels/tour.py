"""``genmodels tour``: every family, trained briefly on one data set, measured against it.

**2-D targets.** For each family of :data:`genmodels.models.FAMILIES` the tour trains a model
on a built-in 2-D target with the family's short CPU budget (``Model.tour_steps`` steps),
measures its KL to the truth (with its kind and standard error), its mode coverage and share
of high-quality samples, and draws the truth, the model's density and its samples. It writes
``results.md`` (the table), ``results.json`` and one PNG per family into the output folder.

**Images** (``--data digits``, or any image data set). Each family trains on the uniformly
dequantized images y = (x + u)/L with the budget of :data:`DIGITS_STEPS` (times
``steps_scale``) and is scored by :func:`genmodels.image_metrics.evaluate_images` on the
held-out split: bits/dim with its kind (families with a log-density; benchmarks.md §4's
protocol), the Fréchet distance in the digit classifier's feature space and in pixel space,
precision / recall / density / coverage, and the classes its samples hit. Every sample metric
has a floor — real training images against the real test images at the same sample size —
given as the table's first row. The tour writes ``results.md``, ``results.json``, one sample
grid per family (``FAMILY.png``) and a grid of real test digits (``real.png``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from genmodels.data import Dataset, load_data
from genmodels.distributions import TARGETS, get_target
from genmodels.evaluate import evaluate_model
from genmodels.models import NotSupportedError, get_family
from genmodels.plots import plot_model
from genmodels.train import TrainConfig, TrainingDiverged, train

#: target samples for each family's KL in the tour (standard error ≈ 0.005 nats on 8gaussians)
TOUR_EVAL_N = 5000
#: grid points per side of the density panels; every model log-density is evaluated on it
#: (for diffusion, one probability-flow ODE per point)
TOUR_RESOLUTION = 60


def run_tour(
    out: Path,
    data: str = "8gaussians",
    families: list[str] | None = None,
    seed: int = 0,
    steps_scale: float = 1.0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train, evaluate and draw each family; returns the table rows.

    ``data`` is a built-in 2-D target, or an image data set (``"digits"``, an image file or
    folder: see :func:`run_image_tour`)."""
    from genmodels.models import FAMILIES

    if data not in TARGETS:
        dataset = load_data(data)
        if dataset.image_shape is None:
            raise ValueError(
                f"the tour runs on a built-in 2-D target or on images (e.g. 'digits'); {data!r} is neither"
            )
        return run_image_tour(out, dataset, families, seed=seed, steps_scale=steps_scale, progress=progress)
    target = get_target(data)
    if target.dim != 2:
        raise ValueError(f"the tour draws 2-D targets; {data!r} has dimension {target.dim}")
    dataset = Dataset(name=data, dim=2, target=target, source=data)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name in families or list(FAMILIES):
        family = get_family(name)
        steps = max(1, round(family.tour_steps * steps_scale))
        config = TrainConfig(
            **{**family.train_defaults_for(), "steps": steps, "seed": seed, "progress": progress}
        )
        print(f"[tour] {name}: {steps} steps on {data}", flush=True)
        t0 = time.perf_counter()
        result = train(name, dataset, config, out=out / "runs" / name)
        seconds = time.perf_counter() - t0
        model = result.model
        metrics = evaluate_model(
            model, target, n=TOUR_EVAL_N, generator=torch.Generator().manual_seed(seed), summary=True
        )
        samples = model.sample(5000, generator=torch.Generator(device=model.device).manual_seed(seed + 7))
        picture = plot_model(
            target,
            model,
            samples,
            out / f"{name}.png",
            resolution=TOUR_RESOLUTION,
            title=f"{name} on {data}: KL {metrics['kl']:.3f} nats ({metrics['kl_kind']}), {steps} steps",
        )
        row = {
            "family": name,
            "steps": steps,
            "train_seconds": seconds,
            "picture": picture.name,
            **metrics,
        }
        rows.append(row)
    table = format_table(rows, data, target.entropy())
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(rows, indent=2, default=float))
    print()
    print(table)
    print(f"[tour] wrote {out / 'results.md'}, {out / 'results.json'} and one picture per family")
    return rows


def format_table(rows: list[dict[str, Any]], data: str, entropy: float) -> str:
    """The tour's markdown table."""
    lines = [
        f"# genmodels tour on `{data}` (entropy {entropy:.3f} nats)",
        "",
        "KL(p‖q) = E_p[log p − log q] on fresh samples of the truth p, ± one standard error;",
        "its kind says whether it is exact (up to Monte-Carlo error), a bound, or an estimate.",
        "Modes and HQ follow VEEGAN/PacGAN (a sample is high quality within 3σ of a mode centre).",
        "",
        "| family | KL to truth (nats) | kind | modes | HQ % | train time (s) | steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        modes = f"{r['modes']}/{r['n_modes']}" if r.get("n_modes") else "—"
        hq = f"{100 * r['hq_fraction']:.1f}" if r.get("hq_fraction") is not None else "—"
        lines.append(
            f"| {r['family']} | {r['kl']:.3f} ± {r['kl_stderr']:.3f} | {r['kl_kind']} | {modes} | {hq} "
            f"| {r['train_seconds']:.1f} | {r['steps']} |"
        )
    lines += ["", *[f"![{r['family']}]({r['picture']})" for r in rows], ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# the image tour
# ---------------------------------------------------------------------------------------
#: Training steps of each family in the image tour (the digits budget; ``steps_scale``
#: multiplies it), for a whole tour of about 15 minutes of one CPU core (measured: 890–970 s of CPU,
#: docs/benchmarks.md), training and held-out bits/dim about half each: roughly 20–60 s of
#: training per family at its default batch size (per-step costs on the 64-D digits differ
#: 50× between families: made ≈ 1 ms, the U-Nets of fm and diffusion ≈ 70 ms, the conv WGAN-GP
#: critic ≈ 230 ms on one thread). The flows overfit the 1,437 training images fast (realnvp's
#: held-out bits/dim without logit or validation: 2.42 after 300 steps, 6.6 ± 3.2 after 1,200),
#: hence short budgets and validation (:data:`DIGITS_VALIDATED`).
DIGITS_STEPS: dict[str, int] = {
    "realnvp": 300,
    "ebm": 3000,
    "diffusion": 600,
    "vae": 1500,
    "fm": 600,
    "maf": 400,
    "nsf": 500,
    "made": 1000,
    "gan": 1000,
    "wgan-gp": 200,
    "triangle": 800,
    "coop": 300,
}
#: families whose held-out log-density is cheap (no ODE, no AIS): the image tour validates them
#: on a held-out tenth of the training images every DIGITS_VALIDATE_EVERY steps and keeps the
#: best model (small image sets overfit: docs/benchmarks.md, digits)
DIGITS_VALIDATED = ("realnvp", "maf", "nsf", "made", "vae")
DIGITS_VALIDATE_EVERY = 50
#: batch sizes of the image tour where a family's default (set for 2-D data) makes a U-Net step
#: too slow on a CPU: diffusion's 512 took 0.4–0.6 s per step on digits
DIGITS_BATCH: dict[str, int] = {"diffusion": 128}
#: Steps of a family missing from :data:`DIGITS_STEPS`.
DIGITS_DEFAULT_STEPS = 300
#: Families the image tour does not train, with the reason shown in its table. Empty: every
#: family trains on the 64-D digits (checked with 20 steps each, and at its full budget).
DIGITS_SKIP: dict[str, str] = {}
#: Draws of the dequantization noise per test image for bits/dim (benchmarks.md §4: 10); the
#: families whose log-density integrates an ODE per image get fewer in the tour, to keep it short
#: (the draws only average the dequantization noise; the standard error is over images).
DIGITS_BPD_DRAWS = 10
DIGITS_BPD_DRAWS_ODE: dict[str, int] = {"diffusion": 2, "fm": 2}
#: Errors a family may raise on data it was not designed for: the tour records them in its
#: table instead of stopping.
FAMILY_ERRORS = (TrainingDiverged, NotSupportedError, ValueError, RuntimeError)


def digits_steps(name: str, steps_scale: float = 1.0) -> int:
    """The image tour's training steps of family ``name`` times ``steps_scale`` (at least 1)."""
    if not (steps_scale > 0 and math.isfinite(steps_scale)):
        raise ValueError(f"--steps-scale must be a positive number, got {steps_scale}")
    return max(1, round(DIGITS_STEPS.get(name, DIGITS_DEFAULT_STEPS) * steps_scale))


def real_floor(dataset: Dataset, seed: int = 0) -> dict[str, Any]:
    """The sample metrics of real against real: the training images (dequantized with
    ``seed + 1``, as many as the test images) scored like a model's samples — the same
    numbers as the ``real_*`` keys of :func:`~genmodels.image_metrics.evaluate_images`."""
    from genmodels.data.dataset import dequantize
    from genmodels.image_metrics import evaluate_images

    if dataset.train is None or dataset.test is None or dataset.levels is None:
        raise ValueError(f"data set {dataset.name!r} needs integer images with a train/test split")
    n = dataset.test.shape[0]
    ref = dequantize(
        dataset.train.reshape(dataset.train.shape[0], -1),
        dataset.levels,
        torch.Generator().manual_seed(seed + 1),
    )[:n]
    return evaluate_images(ref, dataset, seed=seed)


def train_and_evaluate_image_family(
    name: str,
    dataset: Dataset,
    config: TrainConfig,
    *,
    run_dir: Path | None = None,
    grid_path: Path | None = None,
    bpd_draws: int | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train family ``name`` on the image data set with ``config`` and score it with
    :func:`~genmodels.image_metrics.evaluate_images` (seed ``config.seed``; ``bpd_draws``
    default: :data:`DIGITS_BPD_DRAWS`, fewer for the ODE families). A failure of the family
    (divergence, an unsupported operation) gives a row with ``failed`` set to its one-line
    reason instead of raising."""
    from genmodels.image_metrics import evaluate_images

    draws = bpd_draws if bpd_draws is not None else DIGITS_BPD_DRAWS_ODE.get(name, DIGITS_BPD_DRAWS)
    row: dict[str, Any] = {"family": name, "steps": config.steps, "batch_size": config.batch_size}
    t0 = time.perf_counter()
    try:
        result = train(name, dataset, config, out=run_dir, options=options)
    except FAMILY_ERRORS as err:
        row.update(train_seconds=time.perf_counter() - t0, failed=f"training: {_one_line(err)}")
        return row
    row["train_seconds"] = time.perf_counter() - t0
    row["steps_run"] = result.steps_run
    if result.validation:
        row.update(best_step=result.best_step, stopped_early=bool(result.validation.get("stopped_early")))
    t0 = time.perf_counter()
    try:
        metrics = evaluate_images(
            result.model, dataset, bpd_draws=draws, grid_path=grid_path, seed=config.seed
        )
    except FAMILY_ERRORS as err:
        row.update(eval_seconds=time.perf_counter() - t0, failed=f"evaluation: {_one_line(err)}")
        return row
    row["eval_seconds"] = time.perf_counter() - t0
    if grid_path is not None:
        row["picture"] = Path(metrics["grid_path"]).name
    return {**row, **metrics}


def _steps(row: dict[str, Any]) -> str:
    """The steps column: the steps run, and with validation the best step kept."""
    run = row.get("steps_run", row["steps"])
    if row.get("best_step") is None:
        return str(run)
    return f"{run} (best {row['best_step']}{', stopped early' if row.get('stopped_early') else ''})"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


def run_image_tour(
    out: Path,
    dataset: Dataset | str,
    families: list[str] | None = None,
    seed: int = 0,
    steps_scale: float = 1.0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The image tour (module docstring): returns the family rows; writes ``results.md``,
    ``results.json`` (``{"data", "real", "rows"}``), ``real.png`` and ``FAMILY.png``."""
    from genmodels.data.dataset import dequantize
    from genmodels.image_metrics import sample_grid
    from genmodels.models import FAMILIES

    dataset = load_data(dataset)
    if dataset.image_shape is None or dataset.levels is None or dataset.test is None:
        raise ValueError(
            f"the image tour needs integer images with a train/test split (e.g. 'digits'); "
            f"{dataset.name!r} is not one"
        )
    names = families or list(FAMILIES)
    for name in names:
        get_family(name)
    steps = {name: digits_steps(name, steps_scale) for name in names}
    out.mkdir(parents=True, exist_ok=True)
    real = dequantize(
        dataset.test[:100].reshape(-1, dataset.dim), dataset.levels, torch.Generator().manual_seed(seed)
    )
    sample_grid(real, out / "real.png", image_shape=dataset.image_shape)
    floor = real_floor(dataset, seed)
    rows: list[dict[str, Any]] = []
    for name in names:
        if name in DIGITS_SKIP:
            print(f"[tour] {name}: skipped ({DIGITS_SKIP[name]})", flush=True)
            rows.append({"family": name, "skipped": DIGITS_SKIP[name]})
            continue
        family = get_family(name)
        config = TrainConfig(
            **{**family.train_defaults_for(), "steps": steps[name], "seed": seed, "progress": progress}
        )
        config.batch_size = DIGITS_BATCH.get(name, config.batch_size)
        if name in DIGITS_VALIDATED:  # cheap held-out densities: keep the best model seen
            config.validate_every = min(DIGITS_VALIDATE_EVERY, config.steps)
        print(f"[tour] {name}: {steps[name]} steps on {dataset.name}", flush=True)
        row = train_and_evaluate_image_family(
            name, dataset, config, run_dir=out / "runs" / name, grid_path=out / f"{name}.png"
        )
        if "failed" in row:
            print(f"[tour] {name}: failed ({row['failed']})", flush=True)
        rows.append(row)
    table = format_image_table(rows, floor, dataset.name, picture_dir=".")
    (out / "results.md").write_text(table)
    record = {
        "data": dataset.describe(),
        "seed": seed,
        "steps_scale": steps_scale,
        "real": floor,
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(record, indent=2, default=float))
    print()
    print(table)
    print(
        f"[tour] wrote {out / 'results.md'}, {out / 'results.json'}, real.png and one sample grid per family"
    )
    return rows


def _f(value: Any, fmt: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def format_image_table(
    rows: list[dict[str, Any]],
    floor: dict[str, Any],
    data: str,
    picture_dir: str | None = ".",
    title: str = "genmodels tour",
) -> str:
    """The image tour's markdown table: a floor row (real against real), one row per family,
    then the grids (``picture_dir``/real.png and each row's picture; none when None)."""
    draws: dict[str, list[str]] = {}  # "uniform dequantization, …, N draws per image" by draws
    base = None
    for r in rows:
        if r.get("dequantization"):
            base, _, count = r["dequantization"].rpartition(", ")
            draws.setdefault(count, []).append(r["family"])
    protocol = None
    if base is not None:
        per = [f"{count} ({', '.join(names)})" for count, names in draws.items()]
        protocol = f"{base}; {per[0].split(' (')[0] if len(per) == 1 else '; '.join(per)}"
    feats = floor.get("feature_space", "digits")
    feats = "digit classifier's" if feats == "digits" else feats
    acc = floor.get("classifier_accuracy")
    lines = [
        f"# {title} on `{data}` ({floor.get('n_real')} held-out images)",
        "",
        "bits/dim of the held-out images, ± one standard error over images; its kind says whether it is",
        "exact (up to Monte-Carlo error), an upper bound (e.g. from an ELBO) or an estimate. The bar of",
        "benchmarks.md §4 is 2.44 bits/dim (independent per-pixel categorical)."
        + (f" Protocol: {protocol}." if protocol else ""),
        f"FD: Fréchet distance in the {feats} feature space"
        + (f" (classifier test accuracy {acc:.3f})" if acc is not None else "")
        + " and in pixel space; precision, recall, coverage on the same features (k = "
        + f"{floor.get('k')}); classes: digit classes the samples hit, of 10.",
        "The first row is the floor: real training images scored against the test images at the same n.",
        "",
        "| family | bits/dim | kind | FD | FD pixels | precision | recall | coverage | classes "
        "| train s | steps |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| *real data (floor)* | — | — | {_f(floor.get('fd'), '.2f')} | {_f(floor.get('pixel_fd'), '.2f')} "
        f"| {_f(floor.get('precision'), '.3f')} | {_f(floor.get('recall'), '.3f')} "
        f"| {_f(floor.get('coverage'), '.3f')} | {_f(floor.get('classes_covered'), 'd')} | — | — |",
    ]
    for r in rows:
        if "skipped" in r or "failed" in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed — {r['failed']}"
            train_s = _f(r.get("train_seconds"), ".1f")
            lines.append(f"| {r['family']} | {why} | | | | | | | | {train_s} | {_f(r.get('steps'), 'd')} |")
            continue
        if r.get("bits_per_dim") is not None:
            bpd, kind = f"{r['bits_per_dim']:.3f} ± {r['bits_per_dim_stderr']:.3f}", r["bits_per_dim_kind"]
        else:
            bpd, kind = "no density", "—"
        lines.append(
            f"| {r['family']} | {bpd} | {kind} | {_f(r.get('fd'), '.2f')} | {_f(r.get('pixel_fd'), '.2f')} "
            f"| {_f(r.get('precision'), '.3f')} | {_f(r.get('recall'), '.3f')} "
            f"| {_f(r.get('coverage'), '.3f')} | {_f(r.get('classes_covered'), 'd')} "
            f"| {r['train_seconds']:.1f} | {_steps(r)} |"
        )
    if picture_dir is not None:
        pictures = [("real data", "real.png")] + [
            (r["family"], r["picture"]) for r in rows if r.get("picture")
        ]
        lines += ["", *[f"![{label}]({picture_dir}/{pic})" for label, pic in pictures]]
    lines.append("")
    return "\n".join(lines)
