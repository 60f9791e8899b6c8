"""Mixed precision (``TrainConfig.precision = "bf16"``): what runs in bfloat16, how close its
gradients are to float32's, and which families refuse it.

bfloat16 keeps 8 significant bits: one rounding perturbs a value by at most u = 2⁻⁸ ≈ 0.0039
relative. The gradient of a loss through a few bf16 matrix products therefore differs from the
float32 gradient by O(u) in relative norm (measured 0.0002–0.008 over the families below); the
tests accept up to 8u (a few roundings compounding through the layers) and require more than
u/100, which float32 arithmetic (relative error ~1e-7) cannot reach: a run that silently
stayed in float32 fails.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from genmodels import get_target
from genmodels.models import FAMILIES, build_model, get_family
from genmodels.train import TrainConfig, load_run, train

U = 2.0**-8  # bfloat16's unit roundoff

X = get_target("8gaussians").sample(512, generator=torch.Generator().manual_seed(0))

#: (family, method of the differentiated pass, its arguments after the normalized batch u)
PASSES = [
    ("diffusion", "loss", lambda u: (u, torch.Generator().manual_seed(1))),
    ("fm", "loss", lambda u: (u, torch.Generator().manual_seed(1))),
    ("vae", "loss", lambda u: (u, torch.Generator().manual_seed(1))),
    ("made", "loss", lambda u: (u, torch.Generator().manual_seed(1))),
    ("gan", "generator_objective", lambda u: (256, torch.Generator().manual_seed(1))),
]


def _gradient(model, method: str, args: tuple) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    out = model.call(method, *args)
    (out["loss"] if isinstance(out, dict) else out).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize(("family", "method", "make_args"), PASSES, ids=[p[0] for p in PASSES])
def test_bf16_gradient_is_float32s_within_bfloat16_rounding(family, method, make_args) -> None:
    model = build_model(family, 2, {}, seed=0)
    u = model.normalize(X)
    exact = _gradient(model, method, make_args(u))
    model.__dict__["_autocast"] = torch.bfloat16  # what train() sets for precision="bf16"
    mixed = _gradient(model, method, make_args(u))
    rel = float((mixed - exact).norm() / exact.norm())
    assert U / 100 < rel < 8 * U, rel
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay float32


def test_the_pass_runs_in_bfloat16_and_only_inside_call() -> None:
    model = build_model("diffusion", 2, {}, seed=0)
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    seen: list[torch.dtype] = []
    linear.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    u = model.normalize(X)
    model.call("loss", u, torch.Generator().manual_seed(1))
    model.__dict__["_autocast"] = torch.bfloat16
    model.call("loss", u, torch.Generator().manual_seed(1))
    model.loss(u, torch.Generator().manual_seed(1))  # not through call (e.g. a sampler's pass)
    assert seen == [torch.float32, torch.bfloat16, torch.float32]


def test_bf16_training_end_to_end_and_resume(tmp_path) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig(steps=60, batch_size=128, precision="bf16", progress=False, checkpoint_every=30)
    result = train("fm", "8gaussians", cfg, out=out)
    assert "_autocast" not in result.model.__dict__  # the returned model is plain float32 again
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in result.model.parameters())
    record = json.loads((out / "checkpoint.json").read_text())
    assert record["train_config"]["precision"] == "bf16"
    resumed = train("fm", None, TrainConfig(steps=90, progress=False), out=out, resume=True)
    assert resumed.step == 90
    assert json.loads((out / "checkpoint.json").read_text())["train_config"]["precision"] == "bf16"
    model, _ = load_run(out)
    assert torch.isfinite(model.sample(16, generator=torch.Generator().manual_seed(0))).all()


def test_unsafe_families_refuse_bf16_naming_why_and_the_safe_ones() -> None:
    safe = [name for name in FAMILIES if get_family(name).autocast_safe]
    assert set(safe) == {"diffusion", "fm", "vae", "made", "gan", "wgan-gp"}
    cfg = TrainConfig(steps=2, precision="bf16", progress=False)
    for family, why in (("ebm", "MCMC samples"), ("maf", "log-determinant")):
        with pytest.raises(ValueError, match=f"not available for the {family} family: .*{why}") as err:
            train(family, "8gaussians", cfg)
        assert ", ".join(safe) in str(err.value)
    with pytest.raises(ValueError, match="unknown precision 'fp16'; choose one of: fp32, bf16"):
        TrainConfig(precision="fp16").validate()


def test_cli_precision_option(tmp_path) -> None:
    cmd = [sys.executable, "-m", "genmodels", "train", "ebm", "--data", "8gaussians", "--steps", "2"]
    r = subprocess.run(
        [*cmd, "--precision", "bf16", "--out", str(tmp_path / "r")], capture_output=True, text=True
    )
    assert r.returncode != 0 and "precision bf16 is not available for the ebm family" in r.stderr
    r = subprocess.run([*cmd, "--precision", "fp8"], capture_output=True, text=True)
    assert r.returncode != 0 and "invalid choice: 'fp8'" in r.stderr
