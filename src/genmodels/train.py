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

**Early stopping.** With ``validate_every`` > 0 the loop scores the model on held-out data
every ``validate_every`` steps (and at the last step), keeps a copy of the best state
(weights and buffers), and at the end, or when ``patience`` validations in a row brought no
improvement, puts the best state back and checkpoints it (:func:`validation_split`,
:func:`validation_score`). Small data sets are where this matters: a flow on the 1,437
training digits overfits within a few hundred steps, and a few held-out images then get a
huge negative log-likelihood. The held-out points come from the *training* data (a seeded
fraction ``val_fraction``, removed from what the model trains on), or for a target stream
from fresh exact samples; the data's test split is never looked at.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from tqdm.auto import tqdm

from genmodels import checkpoint as ckpt
from genmodels import distributed as ddp
from genmodels.data import Dataset, load_data
from genmodels.data.dataset import _mix, dequantize
from genmodels.distributions import Target
from genmodels.models import Model, build_model, get_family, make_config
from genmodels.models.base import logit_transform

Schedule = Literal["cosine", "constant"]
Precision = Literal["fp32", "bf16"]
Compile = Literal["none", "default", "reduce-overhead", "max-autotune"]
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
    precision: Precision = "fp32"
    """"bf16": mixed precision, the family's differentiated passes run under torch.autocast with
    bfloat16 (weights, optimiser state, checkpoints, sampling and evaluation stay float32); only
    for families where it is safe (diffusion, fm, gan, wgan-gp, vae, made)"""
    compile: Compile = "none"
    """torch.compile the family's network for its training passes: "default" fuses kernels;
    "reduce-overhead" also replays each step's kernel launches as a CUDA graph, which pays off on a
    GPU where small networks are bound by launches (the digits U-Net on an H200: 2.0x diffusion,
    2.8x fm at batch 512); "max-autotune" also tunes kernels. The first steps compile (10-30 s).
    Sampling, evaluation, validation and checkpoints use the eager network. For diffusion and fm"""
    checkpoint_every: int = 1000
    """steps between checkpoints (with an output directory); one is always written at the end"""
    eval_every: int = 0
    """steps between evaluations (0: only at the end)"""
    log_every: int = 100
    """steps between lines of metrics.jsonl (mean loss, lr, steps/s)"""
    validate_every: int = 0
    """steps between validations on held-out data (0: off); the run keeps the best model and ends with it"""
    patience: int = 0
    """validations in a row without improvement before stopping early (0: never stop early, but still
    keep the best model); needs validate-every"""
    val_fraction: float = 0.1
    """fraction of a finite training set held out for validation (drawn with the seed; the data's test
    split is never used); a target stream is validated on fresh exact samples instead"""
    progress: bool = True

    def validate(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "validate_every", "patience"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {value}")
        if self.patience and not self.validate_every:
            raise ValueError(
                f"patience {self.patience} counts validations, but validation is off: set validate-every"
            )
        if not (isinstance(self.val_fraction, (int, float)) and 0.0 < self.val_fraction < 1.0):
            raise ValueError(
                f"val-fraction is a fraction of the training data in (0, 1), got {self.val_fraction}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of: cosine, constant")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {self.precision!r}; choose one of: fp32, bf16")
        if self.compile not in get_args(Compile):
            modes = ", ".join(get_args(Compile))
            raise ValueError(f"unknown compile mode {self.compile!r}; choose one of: {modes}")

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
    """The trained model, the step reached, and what the run logged.

    With validation on (``validate_every``), ``model`` is the best one on the held-out data,
    from step ``best_step`` (score ``best_validation``: see :func:`validation_score`), and
    ``validation`` holds what the checkpoint records under ``"validation"`` (the history of
    scores, whether the run stopped early, …); without it they are None, False and {}.
    """

    model: Model
    step: int
    seconds: float
    steps_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def best_step(self) -> int | None:
        return self.validation.get("best_step")

    @property
    def best_validation(self) -> float | None:
        return self.validation.get("best_validation")

    @property
    def stopped_early(self) -> bool:
        return bool(self.validation.get("stopped_early", False))

    @property
    def validation_history(self) -> list[dict[str, Any]]:
        return list(self.validation.get("history", []))

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


def check_precision(model: Model, precision: str, device: torch.device) -> None:
    """A one-line ValueError unless ``model`` may train in ``precision`` on ``device``."""
    if precision == "fp32":
        return
    if not type(model).autocast_safe:
        from genmodels.models import FAMILIES, get_family

        safe = ", ".join(name for name in FAMILIES if get_family(name).autocast_safe)
        raise ValueError(
            f"precision {precision} is not available for the {model.family} family: "
            f"{type(model).autocast_unsafe_because}; it is for: {safe}"
        )
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision {precision}: this GPU has no bfloat16 support; use precision fp32")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"precision {precision} runs on cuda or cpu, not on {device.type}")


def compile_networks(model: Model, mode: str) -> None:
    """Compile ``model``'s :attr:`~genmodels.models.Model.compile_modules` with ``torch.compile``
    in ``mode`` for its passes through ``Model.call`` (:meth:`Model._compiled_passes`); a one-line
    ValueError for a family that lists none. Undone by :func:`uncompile_networks`."""
    if mode == "none":
        return
    names = type(model).compile_modules
    if not names:
        from genmodels.models import FAMILIES

        able = ", ".join(name for name in FAMILIES if get_family(name).compile_modules)
        raise ValueError(
            f"compile {mode} is not available for the {model.family} family: its training passes "
            f"have not been shown to compile (some differentiate gradients); it is for: {able}"
        )
    # nn.Module.compile's own recipe (torch >= 2.2), kept aside: Model.call sets it per pass
    model.__dict__["_compiled_forwards"] = {
        name: torch.compile(getattr(model, name)._call_impl, mode=mode) for name in names
    }


def uncompile_networks(model: Model) -> None:
    model.__dict__.pop("_compiled_forwards", None)


def standardize_from(model: Model, data: Dataset, seed: int, n: int = 10_000) -> None:
    """Set the model's per-dimension shift and scale to the data's mean and std; with the
    model's logit preprocessing on (``ModelConfig.logit``), to those of the transformed data
    s = logit(λ + (1 − 2λ) y), which must then lie in [0, 1]."""
    x = data.sample_reference(n, seed).double()
    lam = model.logit_lambda
    if lam:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"logit={lam:g} needs data in [0, 1] (e.g. dequantized images); "
                f"{data.name!r} has values in [{lo:.4g}, {hi:.4g}]"
            )
        x, _ = logit_transform(x, lam)
    mean = x.mean(0)
    std = x.std(0) if x.shape[0] > 1 else torch.ones_like(mean)
    floor = max(float(std.max()) * 1e-3, 1e-8)
    std = std.clamp_min(floor)
    model.set_normalization(mean.to(model.shift.dtype), std.to(model.scale.dtype))


#: Fresh exact samples that make the validation set of a target stream.
VALIDATION_TARGET_SAMPLES = 2000


def validation_mode(model: Model) -> Literal["nll", "loss"] | None:
    """How :func:`validation_score` scores ``model``: ``"nll"`` for a family with a density,
    ``"loss"`` for one without a density but with ``loss()``, None for a family that only has
    ``step()`` (nothing to score held-out data with: gan, wgan-gp)."""
    if model.has_log_prob:
        return "nll"
    if type(model).loss is not Model.loss:
        return "loss"
    return None


def validation_split(dataset: Dataset, seed: int, val_fraction: float) -> tuple[Dataset, torch.Tensor]:
    """(the data the loop trains on, the held-out validation points in the model's data space).

    A finite training set gives up round(``val_fraction``·n) of its rows, chosen by a
    permutation seeded from ``seed``; the returned Dataset trains on the others (its ``test``
    split is passed on untouched, for evaluation: validation never looks at it). Integer data
    (``levels``) are dequantized as :meth:`Dataset.batch` dequantizes training batches, once,
    with noise from a generator seeded from ``seed``: every validation of a run scores the same
    points. A target stream is returned as it is, with :data:`VALIDATION_TARGET_SAMPLES` fresh
    exact samples from a generator of their own (never the training stream's).
    """
    if dataset.target is not None:
        gen = torch.Generator().manual_seed(_mix(seed, -3))
        return dataset, dataset.target.sample(VALIDATION_TARGET_SAMPLES, generator=gen)
    if dataset.train is None:
        raise ValueError(f"dataset {dataset.name!r} has no training data to hold out a validation split from")
    n = int(dataset.train.shape[0])
    n_val = round(val_fraction * n)
    if n_val < 1 or n_val >= n:
        raise ValueError(
            f"val-fraction {val_fraction} of the {n} training examples holds out {n_val}; "
            "it must leave at least one example for validation and one for training"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, -2)))
    held, kept = perm[:n_val].sort().values, perm[n_val:].sort().values
    points = dataset.train[held]
    if dataset.levels is not None:
        points = dequantize(points, dataset.levels, torch.Generator().manual_seed(_mix(seed, -3)))
    return replace(dataset, train=dataset.train[kept]), points


def validation_score(model: Model, points: torch.Tensor, batch_size: int, seed: int = 0) -> float:
    """The mean held-out loss of ``model`` on data-space ``points`` (lower is better).

    For a family with a density (:func:`validation_mode` "nll"): the mean of −log p(x) over
    the points, from ``model.log_prob`` with its default options whatever its kind (exact for
    the flows, a bound or an estimate for others: the same estimator at every validation, so
    the scores of one run compare). Otherwise ("loss"): the family's training loss on the
    normalized points, with its noise drawn from a generator seeded with ``seed`` (the same
    noise at every validation). Computed in chunks of ``batch_size``, in eval mode and without
    gradients; the model's mode is restored.
    """
    mode = validation_mode(model)
    if mode is None:
        raise ValueError(f"the {model.family} family has neither a log-density nor a loss() to validate with")
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            gen = torch.Generator(device=model.device).manual_seed(seed)
            for chunk in points.split(max(int(batch_size), 1)):
                x = chunk.to(model.device, model.shift.dtype)
                if mode == "nll":
                    total += float(-model.log_prob(x).values.double().sum())
                else:
                    total += float(model.loss(model.normalize(x), gen)["loss"]) * x.shape[0]
    finally:
        model.train(was_training)
    return total / points.shape[0]


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

    With ``config.validate_every`` > 0 the model is scored on held-out data
    (:func:`validation_split`, :func:`validation_score`) every ``validate_every`` steps and at
    the last step; the best state (weights and buffers) is kept, restored at the end or when
    ``patience`` validations in a row brought no improvement, and checkpointed; the result and
    the checkpoint record (``"validation"``) hold ``best_step``, ``best_validation``,
    ``stopped_early`` and the history of scores. Checkpoints written during the run hold the
    best state too (tensors ``best.*``), so a resumed run ends as an uninterrupted one would.
    Resuming a *finished* run with more ``steps`` continues from its best weights (what its
    final checkpoint holds) with the optimiser and RNG states of its last step; a run that
    stopped early continues only when ``steps`` is raised above its original total, and then
    with its patience reset.

    Raises :class:`TrainingDiverged` on a NaN or infinite loss or weights, leaving the last
    good checkpoint in ``out``. On KeyboardInterrupt the current state is checkpointed
    (when it is finite) before the interrupt propagates.

    Launched by ``torchrun`` with several processes (or inside a process group the caller
    initialised), the run is data-parallel (:mod:`genmodels.distributed`): ``evaluate`` and
    ``on_step`` see the same model on every rank; ``evaluate`` and the validation run on rank 0
    only and their results are broadcast (so every rank takes the same early-stopping
    decision); logged scalars are averaged over the ranks.
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
            model.__dict__.pop("_autocast", None)
            uncompile_networks(model)


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
        defaults = image_defaults(model, dataset.image_shape, options)
        if defaults and main and config.progress:
            chosen = ", ".join(f"{k}={v}" for k, v in defaults.items())
            tqdm.write(f"{model}: images, so {chosen} (set the option to override)")
        model = build_model(model, dataset.dim, {**defaults, **options}, seed=config.seed)
    if model.dim != dataset.dim:
        raise ValueError(f"the model is for dimension {model.dim} but the data has dimension {dataset.dim}")
    check_precision(model, config.precision, device)
    compile_networks(model, config.compile)
    described = dataset.describe()  # the whole data set, as given (resume reloads it from its source)
    mode = validation_mode(model) if config.validate_every else None
    val_points: torch.Tensor | None = None
    if config.validate_every and mode is None:
        if main:
            tqdm.write(
                f"{model.family}: no validation (validate-every ignored): the family has neither a "
                "log-density nor a loss() to score held-out data with, only step()"
            )
    elif mode is not None:
        dataset, val_points = validation_split(dataset, config.seed, config.val_fraction)
    if record is None and _unnormalized(model):
        standardize_from(model, dataset, config.seed)
    model.to(device)
    if record is None:
        reference = dataset.sample_reference(PREPARE_SAMPLES, config.seed).to(device, model.shift.dtype)
        model.prepare(reference, torch.Generator().manual_seed(config.seed + 2), progress=config.progress)
    model.plan(config.steps)
    optimizers = model.configure_optimizers(config.lr)
    if dctx.active:
        ddp.wrap(model, dctx)
    if config.precision == "bf16":
        model.__dict__["_autocast"] = torch.bfloat16  # Model.call runs under autocast

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

    # validation state: what the checkpoints record under "validation", and the best weights
    val: dict[str, Any] = {}
    best_state: dict[str, torch.Tensor] | None = None
    if val_points is not None:
        val = {
            "metric": mode,
            "n_points": int(val_points.shape[0]),
            "source": "target samples" if dataset.target is not None else "training split",
            "validate_every": config.validate_every,
            "patience": config.patience,
            "best_step": None,
            "best_validation": None,
            "since_best": 0,
            "stopped_early": False,
            "history": [],
        }
        saved_val = record.get("validation") if record is not None else None
        if record is not None and saved_val:
            val.update({k: saved_val[k] for k in ("best_step", "best_validation", "since_best", "history")})
            val["history"] = [h for h in val["history"] if h["step"] <= start]
            if saved_val.get("stopped_early"):
                total = int(record.get("train_config", {}).get("steps", start))
                if config.steps <= total:
                    raise ValueError(
                        f"the run in {out_dir} stopped early at step {start} (best at step "
                        f"{saved_val.get('best_step')}); to train on from its best weights ask for more "
                        f"than its {total} steps with --steps"
                    )
                val["since_best"] = 0  # more steps asked for: patience starts afresh
            best_tensors = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
            if best_tensors:
                best_state = {k: v.to(device) for k, v in best_tensors.items()}
            elif val["best_step"] is not None:  # a final checkpoint: its weights are the best
                best_state = _copy_state(model)

    def validate(step: int) -> bool:
        """Score the model, keep it if it is the best so far; True when patience ran out."""
        nonlocal best_state
        assert val_points is not None
        score = _run_validation(model, val_points, config.batch_size, config.seed, dctx)
        val["history"].append({"step": step, "validation": score})
        if math.isfinite(score) and (val["best_validation"] is None or score < val["best_validation"]):
            val["best_step"], val["best_validation"], val["since_best"] = step, score, 0
            best_state = _copy_state(model)
        else:
            val["since_best"] += 1
        shown["val"] = f"{score:.4f}"
        bar.set_postfix(shown, refresh=False)
        return bool(config.patience) and val["since_best"] >= config.patience

    def save(
        step: int, metrics: dict[str, Any] | None = None, collective: bool = True, final: bool = False
    ) -> None:
        """Checkpoint (rank 0 writes; under DDP every rank must call it, unless not ``collective``).
        With validation, the best state goes along as ``best.*`` tensors, except in the ``final``
        checkpoint, whose weights are the best state already."""
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
        if best_state is not None and not final:
            state.update({f"best.{k}": v for k, v in best_state.items()})
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
                "data": described,
                "step": step,
                "rng": {
                    "data": ckpt.encode_rng(data_gen.get_state()),
                    "model": ckpt.encode_rng(model_gen.get_state()),
                },
                "optimizers": opt_records,
                "metrics": metrics or {},
                "distributed": {"world_size": dctx.world_size, "model_rng": rank_rngs if dctx.active else []},
                **({"validation": val} if val else {}),
            },
            state,
        )

    history: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    running: dict[str, float] = {}
    shown: dict[str, str] = {}
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
                shown.update({k: f"{entry[k]:.4f}" for k in ("loss", "nll") if k in entry})
                bar.set_postfix(shown, refresh=False)
                running, count, t_window = {}, 0, now
            bar.update(1)
            if val and (step % config.validate_every == 0 or step == config.steps) and validate(step):
                val["stopped_early"] = True
                if main and config.progress:
                    bar.write(
                        f"stopped early at step {step}: no improvement in {config.patience} validations; "
                        f"best {val['metric']} {val['best_validation']:.4f} at step {val['best_step']}"
                    )
                break
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
    if best_state is not None:
        model.load_state_dict(best_state)  # the best model on the held-out data
    if evaluate is not None:
        metrics = _run_eval(model, evaluate, step, None, dctx)
    save(step, metrics, final=True)
    ddp.unwrap(model)
    model.__dict__.pop("_autocast", None)
    uncompile_networks(model)
    model.eval()
    return TrainResult(
        model=model,
        step=step,
        seconds=time.perf_counter() - t_start,
        steps_run=step - start,
        history=history,
        metrics=metrics,
        validation=dict(val),
    )


def image_defaults(
    family: str, image_shape: tuple[int, ...] | None, options: dict[str, Any]
) -> dict[str, Any]:
    """The family's ``image_options`` the user did not set, when the data are square one-channel
    images with a side divisible by 4 (what its convolutional networks take); else nothing."""
    if image_shape is None:
        return {}
    shape = tuple(image_shape)
    if len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] % 4:
        return {}
    return {k: v for k, v in get_family(family).image_options.items() if k not in options}


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


def _run_validation(
    model: Model, points: torch.Tensor, batch_size: int, seed: int, dctx: ddp.Context
) -> float:
    """:func:`validation_score` under DDP as ``_run_eval`` does it: on rank 0 alone (the plain
    module), the score broadcast, so that every rank takes the same early-stopping branch. A
    failure on rank 0 is broadcast too and raised on every rank (none is left waiting)."""
    if not dctx.active:
        return validation_score(model, points, batch_size, seed)
    outcome: tuple[float, str | None] = (math.nan, None)
    if dctx.is_main:
        try:
            outcome = (validation_score(model, points, batch_size, seed), None)
        except Exception as err:  # re-raised below, on every rank
            outcome = (math.nan, f"{type(err).__name__}: {err}")
    score, error = ddp.broadcast_object(outcome, dctx)
    if error is not None:
        raise RuntimeError(f"validation failed on rank 0: {error}")
    return float(score)


def _copy_state(model: Model) -> dict[str, torch.Tensor]:
    """A detached copy of the model's weights and buffers."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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
