"""The one training loop: progress, periodic evaluation, atomic checkpoints, exact resume,
and a guard against divergence.

Every family trains through :func:`train`. The loop owns the randomness (a data generator
and a model generator, both seeded from ``seed`` and saved in every checkpoint), the
learning-rate schedule (a pure function of the step), and the checkpoints. So a run that
is interrupted and resumed ends with the same weights as one that never stopped (on CPU,
bit for bit).

Under ``torchrun --nproc_per_node N`` the same loop trains with PyTorch's
DistributedDataParallel: each rank takes its slice of the same global batch, gradients are
averaged, rank 0 alone writes checkpoints and logs and evaluates (see
:mod:`genmodels.distributed` for what equals a single-process run, and why).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from genmodels import checkpoint as ckpt
from genmodels import distributed as ddp
from genmodels.data import Dataset, load_data
from genmodels.distributions import Target
from genmodels.models import Model, build_model, get_family, make_config

Schedule = Literal["cosine", "constant"]
Evaluator = Callable[[Model], dict[str, Any]]


@dataclass
class TrainConfig:
    """Options of the training loop (the same for every family)."""

    steps: int = 5000
    """optimisation steps in all (a family may set its own default)"""
    batch_size: int = 256
    """examples per step (the global batch: under torchrun each of N processes takes batch_size / N)"""
    lr: float = 1e-3
    """peak learning rate"""
    schedule: Schedule = "cosine"
    """learning rate: "cosine" decays lr → 0 over ``steps``; "constant" keeps it"""
    warmup: float = 0.0
    """fraction of the steps over which the learning rate first rises linearly from 0"""
    seed: int = 0
    """seeds the initial weights, the data stream and the model's own randomness"""
    device: str = "cpu"
    """torch device: cpu, cuda, cuda:1, mps"""
    checkpoint_every: int = 1000
    """steps between checkpoints (with an output directory); one is always written at the end"""
    eval_every: int = 0
    """steps between evaluations (0: only at the end)"""
    log_every: int = 100
    """steps between lines of metrics.jsonl (mean loss, lr, steps/s)"""
    progress: bool = True

    def validate(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"eval-every must be >= 0, got {self.eval_every}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of: cosine, constant")

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based)."""
        ramp = min(1.0, (step + 1) / (self.warmup * self.steps)) if self.warmup > 0 else 1.0
        if self.schedule == "constant":
            return self.lr * ramp
        return ramp * self.lr * 0.5 * (1.0 + math.cos(math.pi * step / self.steps))


#: Data points handed to ``Model.prepare`` before the first step of a fresh run.
PREPARE_SAMPLES = 20_000


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """The trained model, the step reached, and what the run logged."""

    model: Model
    step: int
    seconds: float
    steps_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float:
        return self.steps_run / max(self.seconds, 1e-9)


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for, but MPS is not available on this machine")
    return device


def standardize_from(model: Model, data: Dataset, seed: int, n: int = 10_000) -> None:
    """Set the model's per-dimension shift and scale to the data's mean and std."""
    x = data.sample_reference(n, seed).double()
    mean = x.mean(0)
    std = x.std(0) if x.shape[0] > 1 else torch.ones_like(mean)
    floor = max(float(std.max()) * 1e-3, 1e-8)
    std = std.clamp_min(floor)
    model.set_normalization(mean.to(model.shift.dtype), std.to(model.scale.dtype))


def train(
    model: Model | str,
    data: Dataset | Target | str | None,
    config: TrainConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    options: dict[str, Any] | None = None,
    evaluate: Evaluator | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` (an instance, or a family name with ``options``) on ``data``.

    With ``out``, checkpoints go to that directory every ``checkpoint_every`` steps and at
    the end; with ``resume=True`` the run continues from the checkpoint there (family,
    options, data and RNG states come from the checkpoint; ``config.steps`` may be raised,
    and the learning-rate schedule then runs to the new total from the step resumed).
    A model whose standardization was never set gets the data's mean and std first.
    ``evaluate(model)`` is called every ``eval_every`` steps and at the end. ``on_step`` is
    called after every step with (steps done, logged scalars).

    Raises :class:`TrainingDiverged` on a NaN or infinite loss or weights, leaving the last
    good checkpoint in ``out``. On KeyboardInterrupt the current state is checkpointed
    (when it is finite) before the interrupt propagates.

    Launched by ``torchrun`` with several processes (or inside a process group the caller
    initialised), the run is data-parallel (:mod:`genmodels.distributed`): ``evaluate`` and
    ``on_step`` see the same model on every rank; ``evaluate`` runs on rank 0 only and its
    metrics are broadcast; logged scalars are averaged over the ranks.
    """
    out_dir = Path(out) if out is not None else None
    record: dict[str, Any] | None = None
    tensors: dict[str, torch.Tensor] = {}
    if resume:
        if out_dir is None:
            raise ValueError("--resume needs the run directory (--out) of the run to continue")
        record, tensors = ckpt.load(out_dir)
        saved = TrainConfig(**_known(TrainConfig, record.get("train_config", {})))
        if config is not None:
            saved.steps = config.steps
            saved.progress = config.progress
        config = saved
        data = load_data(record["data"]["source"]) if isinstance(data, str) or data is None else data
        model = restore_model(record, tensors)
    config = config if config is not None else TrainConfig()
    config.validate()
    dataset = load_data(data)
    dctx = ddp.setup(config.device)
    try:
        return _train(model, dataset, config, dctx, out_dir, record, tensors, options, evaluate, on_step)
    finally:
        if isinstance(model, Model):
            ddp.unwrap(model)


def _train(
    model: Model | str,
    dataset: Dataset,
    config: TrainConfig,
    dctx: ddp.Context,
    out_dir: Path | None,
    record: dict[str, Any] | None,
    tensors: dict[str, torch.Tensor],
    options: dict[str, Any] | None,
    evaluate: Evaluator | None,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> TrainResult:
    device = dctx.device if dctx.device is not None else resolve_device(config.device)
    ddp.check_batch(config.batch_size, dctx)
    main = dctx.is_main

    if isinstance(model, str):
        options = dict(options or {})
        if dataset.levels is not None and "levels" in get_family(model).option_names():
            # integer data: families with discrete conditionals (made) model its levels
            options.setdefault("levels", dataset.levels)
        model = build_model(model, dataset.dim, options, seed=config.seed)
    if model.dim != dataset.dim:
        raise ValueError(f"the model is for dimension {model.dim} but the data has dimension {dataset.dim}")
    if record is None and _unnormalized(model):
        standardize_from(model, dataset, config.seed)
    model.to(device)
    if record is None:
        reference = dataset.sample_reference(PREPARE_SAMPLES, config.seed).to(device, model.shift.dtype)
        model.prepare(reference, torch.Generator().manual_seed(config.seed + 2), progress=config.progress)
    optimizers = model.configure_optimizers(config.lr)
    if dctx.active:
        ddp.wrap(model, dctx)

    # one data stream on every rank (each rank slices the same global batch); the model's
    # noise is independent across ranks (rank 0 keeps the single-process seed)
    data_gen = torch.Generator().manual_seed(config.seed)
    model_gen = torch.Generator(device=device).manual_seed(ddp.rank_seed(config.seed + 1, dctx.rank))
    start = 0
    if record is not None:
        for name, opt in optimizers.items():
            ckpt.optimizer_from_tensors(name, opt, tensors, record["optimizers"][name])
        data_gen.set_state(ckpt.decode_rng(record["rng"]["data"]))
        start = int(record["step"])
        saved_ranks = record.get("distributed", {}).get("model_rng", [])
        if len(saved_ranks) == dctx.world_size:
            model_gen.set_state(ckpt.decode_rng(saved_ranks[dctx.rank]))
        elif dctx.rank == 0:
            model_gen.set_state(ckpt.decode_rng(record["rng"]["model"]))
        else:  # another world size than the saved run: fresh, reproducible streams
            model_gen.manual_seed(ddp.rank_seed(config.seed + 1, dctx.rank, start))
        if start >= config.steps:
            raise ValueError(f"the run in {out_dir} already has {start} steps; ask for more with --steps")
        if main:
            _truncate_log(out_dir, start)

    def save(step: int, metrics: dict[str, Any] | None = None, collective: bool = True) -> None:
        """Checkpoint (rank 0 writes; under DDP every rank must call it, unless not ``collective``)."""
        if out_dir is None:
            return
        if not _finite_weights(model):
            raise TrainingDiverged(
                f"the weights became NaN or infinite by step {step}; {_kept(out_dir)} Try a lower --lr."
            )
        model_rngs = ckpt.encode_rng(model_gen.get_state())
        rank_rngs = ddp.gather_objects(model_rngs, dctx) if collective else []
        if not main:
            return
        state: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
        opt_records = {}
        for name, opt in optimizers.items():
            t, r = ckpt.optimizer_to_tensors(name, opt)
            state.update(t)
            opt_records[name] = r
        ckpt.save(
            out_dir,
            {
                "family": model.family,
                "model_config": asdict(model.config),
                "train_config": asdict(config),
                "data": dataset.describe(),
                "step": step,
                "rng": {
                    "data": ckpt.encode_rng(data_gen.get_state()),
                    "model": ckpt.encode_rng(model_gen.get_state()),
                },
                "optimizers": opt_records,
                "metrics": metrics or {},
                "distributed": {"world_size": dctx.world_size, "model_rng": rank_rngs if dctx.active else []},
            },
            state,
        )

    history: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    running: dict[str, float] = {}
    count = 0
    t_start = time.perf_counter()
    t_window = t_start
    bar = tqdm(
        total=config.steps,
        initial=start,
        disable=not (config.progress and main),
        desc=model.family,
        unit="step",
        dynamic_ncols=True,
    )
    step = start
    model.train()
    try:
        while step < config.steps:
            lr = config.lr_at(step)
            for opt in optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = lr
            batch = dataset.batch(step, config.batch_size, config.seed, data_gen).to(device)
            logs = model.step(ddp.shard(batch, dctx), model_gen)
            if dctx.active:
                if step == start:
                    ddp.check_routed(model)
                logs = ddp.mean_logs(logs, dctx)
            step += 1
            loss = logs.get("loss", 0.0)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss} at step {step}; {_kept(out_dir)} Try a lower --lr."
                )
            for k, v in logs.items():
                running[k] = running.get(k, 0.0) + v
            count += 1
            if on_step is not None:
                on_step(step, logs)
            if step % config.log_every == 0 or step == config.steps:
                now = time.perf_counter()
                entry = {"step": step, "lr": lr, **{k: v / count for k, v in running.items()}}
                entry["steps_per_second"] = count / max(now - t_window, 1e-9)
                history.append(entry)
                if main:
                    _append_log(out_dir, entry)
                shown = {k: f"{entry[k]:.4f}" for k in ("loss", "nll") if k in entry}
                bar.set_postfix(shown, refresh=False)
                running, count, t_window = {}, 0, now
            bar.update(1)
            if (
                evaluate is not None
                and config.eval_every
                and step % config.eval_every == 0
                and step < config.steps
            ):
                metrics = _run_eval(model, evaluate, step, bar, dctx)
            if step % config.checkpoint_every == 0 and step < config.steps:
                save(step, metrics)
    except KeyboardInterrupt:
        bar.close()
        if out_dir is not None and step > start and main and _finite_weights(model):
            save(step, metrics, collective=False)  # the other ranks may be inside a collective
            print(f"\ninterrupted at step {step}; checkpoint saved in {out_dir} (continue with --resume)")
        raise
    finally:
        bar.close()
    if evaluate is not None:
        metrics = _run_eval(model, evaluate, step, None, dctx)
    save(step, metrics)
    ddp.unwrap(model)
    model.eval()
    return TrainResult(
        model=model,
        step=step,
        seconds=time.perf_counter() - t_start,
        steps_run=step - start,
        history=history,
        metrics=metrics,
    )


def restore_model(record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Model:
    """Rebuild a model from a checkpoint record and its tensors (no code is executed)."""
    try:
        family = get_family(str(record["family"]))
        saved = dict(record["model_config"])
        config = make_config(family, {**family.options_before, **saved})
        dim = int(record["data"]["dim"])
    except (KeyError, TypeError, ValueError) as err:
        raise ckpt.CheckpointError(f"checkpoint record is inconsistent: {err}") from None
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten below
        model = family(dim, config)
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ckpt.CheckpointError(f"weights do not fit the {family.family} model: {first}") from None
    model.eval()
    return model


def load_run(directory: str | Path, device: str = "cpu") -> tuple[Model, dict[str, Any]]:
    """The trained model of a run directory and its checkpoint record."""
    record, tensors = ckpt.load(directory)
    model = restore_model(record, tensors)
    return model.to(resolve_device(device)), record


def _run_eval(
    model: Model, evaluate: Evaluator, step: int, bar: Any, dctx: ddp.Context | None = None
) -> dict[str, Any]:
    """``evaluate(model)`` under no_grad; under DDP on rank 0 alone, its metrics broadcast."""
    dctx = dctx if dctx is not None else ddp.Context()
    metrics: dict[str, Any] = {}
    if dctx.is_main:
        model.eval()
        with torch.no_grad():
            metrics = {"step": step, **evaluate(model)}
        model.train()
    metrics = ddp.broadcast_object(metrics, dctx)
    if not dctx.is_main:
        return metrics
    line = "  ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
    (bar.write if bar is not None else print)(f"eval  {line}")
    return metrics


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _unnormalized(model: Model) -> bool:
    """True while the model still has the identity standardization it was built with."""
    return bool((model.shift == 0).all() and (model.scale == 1).all())


def _finite_weights(model: Model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _kept(out_dir: Path | None) -> str:
    if out_dir is None:
        return "nothing was saved (no output directory)."
    try:
        step = json.loads((out_dir / ckpt.RECORD).read_text())["step"]
    except (OSError, ValueError, KeyError):
        return f"no checkpoint had been written to {out_dir} yet."
    return f"the last good checkpoint (step {step}) is kept in {out_dir}."


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


LOG = "metrics.jsonl"


def _append_log(out_dir: Path | None, entry: dict[str, Any]) -> None:
    if out_dir is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOG, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def _truncate_log(out_dir: Path | None, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from."""
    if out_dir is None or not (out_dir / LOG).exists():
        return
    kept = [
        line
        for line in (out_dir / LOG).read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    ckpt.atomic_write_bytes(out_dir / LOG, ("\n".join(kept) + "\n" if kept else "").encode())
