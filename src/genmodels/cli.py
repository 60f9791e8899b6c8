"""The ``genmodels`` command: datasets, train, sample, log-prob, evaluate, tour, figures."""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import json
import sys
import textwrap
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
import torch

from genmodels.checkpoint import CheckpointError
from genmodels.data import DataError
from genmodels.models import FAMILIES, NotSupportedError, get_family
from genmodels.models.base import Model
from genmodels.train import TrainConfig, TrainingDiverged


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# -- dataclass fields → command-line options -------------------------------------------------
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=False)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (and of its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def add_dataclass_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    skip: frozenset[str] = frozenset(),
    defaults: dict[str, Any] | None = None,
) -> list[str]:
    """Add ``--name`` for every field of dataclass ``cls``; returns the option names.

    ``defaults`` overrides the defaults shown in the help (a family's own training
    defaults). Options not given on the command line stay out of the namespace.
    """
    hints = _field_types(cls)
    docs = field_docs(cls)
    names = []
    for f in fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        default = (defaults or {}).get(f.name, default)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if get_origin(kind) is Literal:
            kwargs["choices"] = list(get_args(kind))
            kwargs["type"] = type(get_args(kind)[0])
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind in (int, float, str):
            kwargs["type"] = kind
        else:  # Optional[...] and friends: parse as the first concrete argument
            concrete = [a for a in get_args(kind) if a is not type(None)]
            kwargs["type"] = concrete[0] if concrete else str
        kwargs["help"] = f"{docs.get(f.name, '')} (default: {default})".strip().replace("%", "%%")
        parser.add_argument(flag, **kwargs)
        names.append(flag)
    return names


def _train_defaults_help(family: type[Model]) -> dict[str, Any]:
    """The family's training defaults as the help shows them, with those that depend on one of
    its options spelled out (e.g. ``0.01; 0.003 with --method mle``)."""
    shown: dict[str, Any] = dict(family.train_defaults)
    for option, by_value in family.train_defaults_by_option.items():
        flag = "--" + option.replace("_", "-")
        for value, overrides in by_value.items():
            for key, default in overrides.items():
                base = shown.get(key, getattr(TrainConfig, key))
                shown[key] = f"{base}; {default} with {flag} {value}"
    return shown


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2
        raise CLIError(f"{self.prog}: {message}")


def _family_from_argv(argv: list[str]) -> str | None:
    if len(argv) >= 2 and argv[0] == "train" and not argv[1].startswith("-"):
        return argv[1]
    return None


def build_parser(family: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="genmodels", description=__doc__)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True

    sub.add_parser("datasets", help="list the built-in targets with dimension and entropy")

    p = sub.add_parser("train", help="train a family on a target or a file")
    p.add_argument("family", metavar="FAMILY", help=f"one of: {', '.join(FAMILIES)}")
    p.add_argument("--data", default="8gaussians", help="built-in target, 'digits', or a .npy/.npz/.csv file")
    p.add_argument("--out", default=None, help="run directory (checkpoints, log); default runs/FAMILY-DATA")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    train_defaults = _train_defaults_help(FAMILIES[family]) if family in FAMILIES else {}
    add_dataclass_options(p, TrainConfig, skip=frozenset({"progress"}), defaults=train_defaults)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)
    if family in FAMILIES:
        group = p.add_argument_group(f"{family} options")
        add_dataclass_options(group, FAMILIES[family].Config)  # type: ignore[arg-type]

    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("run", metavar="DIR")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", required=True, help="output .npy file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--sampler", default=None, help="the family's sampler (e.g. diffusion: ddim, ode, sde, pc)"
    )
    p.add_argument("--steps", type=int, default=None, help="sampler steps (families with a step count)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sampler option of the family (repeatable)",
    )

    p = sub.add_parser("log-prob", help="log-density of data under a trained run")
    p.add_argument("run", metavar="DIR")
    p.add_argument("--data", required=True, help="a .npy/.npz/.csv file (or a built-in target's samples)")
    p.add_argument("--out", required=True, help="output .npy file")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a log-density option of the family, e.g. diffusion's method=elbo (repeatable)",
    )

    p = sub.add_parser("evaluate", help="metrics of a trained run against the truth or held-out data")
    p.add_argument("run", metavar="DIR")
    p.add_argument("--data", default=None, help="target or file (default: the training data)")
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="samples for the Monte-Carlo metrics (default: 20000; images: as many as the held-out images)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--grid", default=None, metavar="PATH", help="images: the sample grid PNG (default: DIR/samples.png)"
    )
    p.add_argument(
        "--bpd-draws",
        type=int,
        default=10,
        help="images: dequantization draws per held-out image for bits/dim (default: 10, benchmarks.md §4)",
    )

    p = sub.add_parser("tour", help="train every family briefly, evaluate each against the truth")
    p.add_argument("--out", default="tour", help="output folder (table and pictures)")
    p.add_argument(
        "--data",
        default="8gaussians",
        help="a built-in 2-D target, or 'digits' (the image tour: bits/dim, FD, PRDC, sample grids)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", default=None, help="comma-separated subset of families")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every family's tour steps")

    p = sub.add_parser("figures", help="write the tutorial's figures and animations (GIFs)")
    p.add_argument("--out", default="figures", help="output folder (default: figures)")
    p.add_argument(
        "--only",
        default=None,
        metavar="NAME",
        help="write only this figure (default: all): overview, mode_covering, mode_chasing, langevin, "
        "contrastive_divergence, equilibrium, nonequilibrium, golf, relations",
    )
    p.add_argument(
        "--steps-scale",
        type=float,
        default=1.0,
        help="multiply the training budget of the golf figure (it trains four families briefly)",
    )
    return parser


# -- commands ------------------------------------------------------------------------------
def cmd_datasets(args: argparse.Namespace) -> None:
    from genmodels.distributions import TARGETS

    print(f"{'name':<14}{'dim':>4}{'entropy (nats)':>17}  notes")
    for name, make in TARGETS.items():
        target = make()
        print(
            f"{name:<14}{target.dim:>4}{target.entropy():>17.3f}  {type(target).__name__}",
            flush=True,
        )
    print(f"{'digits':<14}{64:>4}{'—':>17}  sklearn 8×8 digits, 17 levels, 1437/360 split")


def _target_evaluator(target: Any, seed: int) -> Any:
    """KL to the truth and mode metrics on a fixed set of fresh target samples."""
    from genmodels.evaluate import evaluate_model

    def evaluator(model: Any) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(seed)
        return evaluate_model(model, target, n=5000, generator=gen, summary=True)

    return evaluator


def cmd_train(args: argparse.Namespace, argv_family: str) -> None:
    from genmodels.checkpoint import load as load_checkpoint
    from genmodels.data import load_data
    from genmodels.train import train

    family = get_family(argv_family)
    options = {f.name: getattr(args, f.name) for f in fields(family.Config) if hasattr(args, f.name)}
    given = {
        f.name: getattr(args, f.name)
        for f in fields(TrainConfig)
        if hasattr(args, f.name) and f.name != "progress"
    }
    out = Path(args.out) if args.out else Path("runs") / f"{family.family}-{Path(args.data).stem}"
    if args.resume:
        if options or set(given) - {"steps"}:
            raise CLIError("--resume continues a run with its saved options; only --steps may be given")
        record, _ = load_checkpoint(out)
        if record["family"] != family.family:
            raise CLIError(f"{out} holds a {record['family']} run, not {family.family}")
        dataset = load_data(record["data"]["source"])
        config = TrainConfig(steps=given["steps"], progress=args.progress) if "steps" in given else None
        seed = int(record["train_config"].get("seed", 0))
    else:
        if (out / "checkpoint.json").exists():
            raise CLIError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        dataset = load_data(args.data)
        config = TrainConfig(**{**family.train_defaults_for(options), **given, "progress": args.progress})
        seed = config.seed
    evaluator = _target_evaluator(dataset.target, seed) if dataset.target is not None else None
    result = train(
        family.family,
        dataset,
        config,
        out=out,
        resume=args.resume,
        options=options,
        evaluate=evaluator,
    )
    from genmodels.distributed import process_rank

    if process_rank() != 0:  # under torchrun: rank 0 reports for all
        return
    print(
        f"trained {result.model.family} for {result.step} steps in {result.seconds:.1f} s; run saved in {out}"
    )
    if result.validation:
        v = result.validation
        how = "stopped early (patience ran out)" if v["stopped_early"] else "ran all its steps"
        best = "none finite" if v["best_validation"] is None else f"{v['best_validation']:.4f}"
        print(
            f"validation: best held-out {v['metric']} {best} at step {v['best_step']} "
            f"({len(v['history'])} validations on {v['n_points']} {v['source']}); the run {how} and holds "
            "the best model"
        )


def _parse_pairs(pairs: list[str], types: dict[str, type], what: str, family: str) -> dict[str, Any]:
    """KEY=VALUE pairs → {key: typed value}; ``types`` names the valid keys and their types."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in types:
            listing = ", ".join(sorted(types)) or "(none)"
            raise CLIError(f"unknown {what} option {pair!r} for {family}; valid: {listing}")
        kind = types[key]
        out[key] = kind(value) if kind in (int, float, str) else value
    return out


def _sample_options(family: type, pairs: list[str]) -> dict[str, Any]:
    hints = _field_types(family.SampleConfig)
    types = {f.name: hints[f.name] for f in fields(family.SampleConfig)}
    return _parse_pairs(pairs, types, "sampler", family.family)


def cmd_sample(args: argparse.Namespace) -> None:
    from genmodels.train import load_run

    if args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    model, _ = load_run(args.run, args.device)
    pairs = list(args.option)
    for name in ("sampler", "steps"):
        if getattr(args, name) is not None:
            if name not in {f.name for f in fields(type(model).SampleConfig)}:
                raise CLIError(f"the {model.family} family has no --{name} option")
            pairs.append(f"{name}={getattr(args, name)}")
    options = _sample_options(type(model), pairs)
    gen = torch.Generator(device=model.device).manual_seed(args.seed)
    x = model.sample(args.n, generator=gen, **options).cpu().numpy()
    _save_npy(args.out, x)
    print(f"wrote {x.shape[0]} samples of dimension {x.shape[1]} to {args.out}")


def cmd_log_prob(args: argparse.Namespace) -> None:
    from genmodels.data import load_data
    from genmodels.evaluate import bits_per_dim
    from genmodels.train import load_run

    model, _ = load_run(args.run, args.device)
    if not model.has_log_prob:
        raise CLIError(f"the {model.family} family has no log-density; it can only be sampled")
    dataset = load_data(args.data)
    data = _points(dataset, n=10_000)
    if data.shape[1] != model.dim:
        raise CLIError(f"{args.data}: dimension {data.shape[1]}, but the model is for dimension {model.dim}")
    options = _log_prob_options(model, args.option)
    with torch.no_grad():
        ld = model.log_prob(data.to(model.device), **options)
    _save_npy(args.out, ld.values.cpu().numpy())
    mean = float(ld.values.mean())
    bpd, protocol = bits_per_dim(-mean, model.dim, dataset.levels)
    label = {"lower_bound": "lower bound", "upper_bound": "upper bound"}.get(ld.kind, ld.kind)
    print(
        f"wrote {ld.values.shape[0]} log-densities ({label}) to {args.out}; "
        f"mean {mean:.4f} nats, {bpd:.4f} bits/dim ({protocol})"
    )


def _log_prob_options(model: Any, pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs checked against the keyword arguments of the family's ``_log_prob``;
    a ``_log_prob`` that takes ``**options`` passes them to its sampler (flow matching's ODE
    solver), so the family's sampler options are valid too."""
    params = inspect.signature(model._log_prob).parameters.items()
    types: dict[str, type] = {
        k: type(p.default) if isinstance(p.default, (int, float)) else str
        for k, p in params
        if k != "u" and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    }
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for _, p in params):
        hints = _field_types(model.SampleConfig)
        types = {**{f.name: hints[f.name] for f in fields(model.SampleConfig)}, **types}
    return _parse_pairs(pairs, types, "log-density", model.family)


def _points(dataset: Any, n: int) -> torch.Tensor:
    if dataset.target is not None:
        return dataset.target.sample(n, generator=torch.Generator().manual_seed(0))
    x = dataset.test if dataset.test is not None else dataset.train
    if dataset.levels is not None:
        from genmodels.data.dataset import dequantize

        x = dequantize(x, dataset.levels, torch.Generator().manual_seed(0))
    return x


def cmd_evaluate(args: argparse.Namespace) -> None:
    from genmodels.data import load_data
    from genmodels.evaluate import bits_per_dim, energy_distance, evaluate_model, heldout_nll
    from genmodels.train import load_run

    model, record = load_run(args.run, args.device)
    source = args.data or record["data"]["source"]
    dataset = load_data(source)
    if dataset.dim != model.dim:
        raise CLIError(f"{source}: dimension {dataset.dim}, but the model is for dimension {model.dim}")
    if dataset.image_shape is not None:
        result = {"family": model.family, "step": record["step"], "data": source}
        result.update(_evaluate_image_run(model, dataset, args))
        if args.json:
            print(json.dumps(result, indent=2, default=float))
        else:
            print(format_image_metrics(result))
        return
    n = args.n if args.n is not None else 20_000
    gen = torch.Generator().manual_seed(args.seed)
    if dataset.target is not None:
        result = evaluate_model(model, dataset.target, n=n, generator=gen, summary=True)
    else:
        data = _points(dataset, n)
        result = {"data": source, "n": int(data.shape[0])}
        if model.has_log_prob:
            mean, se, kind = heldout_nll(model, data)
            result.update({"nll": mean, "nll_stderr": se, "nll_kind": kind})
            if dataset.levels is not None:  # benchmarks.md §4: bits/dim of the integer data
                bpd, protocol = bits_per_dim(mean, dataset.dim, dataset.levels)
                result["bits_per_dim"] = bpd
                result["dequantization"] = protocol
        samples = model.sample(
            min(n, 5000), generator=torch.Generator(device=model.device).manual_seed(args.seed)
        )
        result["energy_distance"] = float(energy_distance(samples.cpu(), data[:5000]))
    result = {"family": model.family, "step": record["step"], **result}
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        for k, v in result.items():
            print(f"{k:<22}{v:.4g}" if isinstance(v, float) else f"{k:<22}{v}")


def _evaluate_image_run(model: Any, dataset: Any, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`genmodels.image_metrics.evaluate_images` on the run's held-out images, with the
    sample grid written to ``--grid`` (default RUN/samples.png)."""
    from genmodels.image_metrics import evaluate_images

    if args.n is not None and args.n < 6:
        raise CLIError(f"--n must be >= 6 on images (the k-NN metrics use k = 5), got {args.n}")
    if args.bpd_draws < 1:
        raise CLIError(f"--bpd-draws must be >= 1, got {args.bpd_draws}")
    if dataset.train is None:
        raise CLIError(f"{dataset.name}: no images to evaluate against")
    grid = Path(args.grid) if args.grid else Path(args.run) / "samples.png"
    if grid.suffix.lower() != ".png":
        raise CLIError(f"--grid must be a .png file, got {str(grid)!r}")
    return evaluate_images(
        model, dataset, n_samples=args.n, bpd_draws=args.bpd_draws, grid_path=grid, seed=args.seed
    )


def format_image_metrics(result: dict[str, Any]) -> str:
    """The text report of ``genmodels evaluate`` on an image run: each metric of the samples
    beside its floor (real training images against the held-out images, same n)."""

    def num(key: str, fmt: str = ".4g") -> str:
        value = result.get(key)
        return "—" if value is None else format(value, fmt)

    lines = [
        f"{result['family']} after {result['step']} steps on {result['data']}: "
        f"{result['n_samples']} samples against {result['n_real']} held-out images",
    ]
    if result.get("bits_per_dim") is not None:
        lines += [
            f"bits/dim            {result['bits_per_dim']:.4f} ± {result['bits_per_dim_stderr']:.4f} "
            f"({result['bits_per_dim_kind']}; "
            f"for the discrete model: {result['bits_per_dim_discrete_kind']})",
            f"  dequantization    {result['dequantization']}",
        ]
    else:
        lines.append("bits/dim            — (the family has no log-density)")
    if result.get("nonfinite_fraction"):
        lines.append(f"non-finite samples  {result['nonfinite_fraction']:.3f} (dropped)")
    space = result.get("feature_space")
    if space == "digits":
        space = f"digit-classifier features, accuracy {result['classifier_accuracy']:.3f}"
    lines += ["", f"{'metric':<34}{'model':>10}{'real floor':>12}"]
    rows = [
        ("Fréchet distance (" + ("features" if result.get("pixel_fd") is not None else "pixels") + ")", "fd")
    ]
    if result.get("pixel_fd") is not None:
        rows.append(("Fréchet distance (pixels)", "pixel_fd"))
    rows += [(name, name) for name in ("precision", "recall", "density", "coverage")]
    if result.get("pixel_fd") is not None:
        rows += [
            (f"{name} (pixels)", f"pixel_{name}") for name in ("precision", "recall", "density", "coverage")
        ]
    if result.get("classes_covered") is not None:
        rows += [
            ("classes hit (of 10)", "classes_covered"),
            ("class KL to uniform (nats)", "class_kl_uniform"),
            ("class confidence", "class_confidence"),
        ]
    for label, key in rows:
        lines.append(f"{label:<34}{num(key):>10}{num('real_' + key):>12}")
    lines += [
        "",
        f"features: {space}; k = {result['k']}; coverage if equal in law: "
        f"{result['coverage_expected_if_equal']:.3f}",
    ]
    if result.get("class_counts") is not None:
        lines.append(f"class counts: {result['class_counts']}")
    lines.append(f"sample grid: {result['grid_path']}")
    return "\n".join(lines)


def cmd_tour(args: argparse.Namespace) -> None:
    from genmodels.tour import run_tour

    families = args.families.split(",") if args.families else list(FAMILIES)
    for name in families:
        get_family(name)
    if not (args.steps_scale > 0):
        raise CLIError(f"--steps-scale must be positive, got {args.steps_scale}")
    run_tour(
        Path(args.out),
        data=args.data,
        families=families,
        seed=args.seed,
        steps_scale=args.steps_scale,
    )


def cmd_figures(args: argparse.Namespace) -> None:
    from genmodels.figures import FIGURES, make_figures

    if args.only is not None and args.only not in FIGURES:
        raise CLIError(f"unknown figure {args.only!r} for --only; choose one of {', '.join(FIGURES)}")
    if not args.steps_scale > 0:
        raise CLIError(f"--steps-scale must be positive, got {args.steps_scale}")
    for path in make_figures(Path(args.out), only=args.only, steps_scale=args.steps_scale):
        print(f"wrote {path}")


def _save_npy(path: str, array: np.ndarray) -> None:
    import io

    from genmodels.checkpoint import atomic_write_bytes

    if not path.endswith(".npy"):
        raise CLIError(f"--out must be a .npy file, got {path!r}")
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(Path(path), buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        family = _family_from_argv(argv)
        if family is not None:
            get_family(family)
        parser = build_parser(family)
        args = parser.parse_args(argv)
        if args.command == "datasets":
            cmd_datasets(args)
        elif args.command == "train":
            cmd_train(args, args.family)
        elif args.command == "sample":
            cmd_sample(args)
        elif args.command == "log-prob":
            cmd_log_prob(args)
        elif args.command == "evaluate":
            cmd_evaluate(args)
        elif args.command == "tour":
            cmd_tour(args)
        elif args.command == "figures":
            cmd_figures(args)
    except (
        CLIError,
        DataError,
        CheckpointError,
        NotSupportedError,
        TrainingDiverged,
        ValueError,
    ) as err:
        print(f"genmodels: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
