"""The contract every family keeps, checked for every entry of FAMILIES (issue 6).

Shapes, every trainable parameter reaching its optimiser with a gradient, reproducible
sampling with a generator, a log-density with its kind (or a clear NotSupportedError), and a
checkpoint round trip that reproduces samples and log-densities exactly. A family added to
the table is tested here without a line of test code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genmodels import get_target
from genmodels.models import FAMILIES, NotSupportedError
from genmodels.train import TrainConfig, load_run, train
from genmodels.types import KINDS

#: small networks where a family's defaults are large (speed only; the contract is the same)
SMALL: dict[str, dict] = {
    "ebm": {"hidden": 32, "buffer_size": 256},
    "diffusion": {"hidden": 64},
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def trained(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name) / "run"
    result = train(
        name,
        "8gaussians",
        TrainConfig(steps=3, batch_size=64, progress=False, seed=0),
        options=SMALL.get(name, {}),
        out=out,
    )
    return name, result.model, out


def test_every_trainable_parameter_gets_a_gradient(trained):
    """One more training step, watching each optimiser: every parameter that requires a
    gradient belongs to an optimiser and has a gradient when that optimiser steps."""
    name, _, out = trained
    model, _ = load_run(out)  # a copy: the other tests keep the checkpointed state
    model.configure_optimizers(1e-3)
    seen: set[int] = set()
    owned: set[int] = set()
    originals = {}
    for key, opt in model.optimizers.items():
        owned |= {id(p) for g in opt.param_groups for p in g["params"]}

        def watch(*args, _opt=opt, _step=opt.step, **kwargs):
            seen.update(id(p) for g in _opt.param_groups for p in g["params"] if p.grad is not None)
            return _step(*args, **kwargs)

        originals[key] = opt.step
        opt.step = watch
    try:
        batch = get_target("8gaussians").sample(64, generator=torch.Generator().manual_seed(5))
        model.step(batch.to(model.device), torch.Generator().manual_seed(6))
    finally:
        for key, opt in model.optimizers.items():
            opt.step = originals[key]
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, f"{name} has no trainable parameters"
    missing_opt = sorted(n for i, n in trainable.items() if i not in owned)
    assert not missing_opt, f"{name}: parameters in no optimiser: {missing_opt}"
    no_grad = sorted(n for i, n in trainable.items() if i not in seen)
    assert not no_grad, f"{name}: parameters without a gradient: {no_grad}"


def test_sampling_is_reproducible_and_shaped(trained):
    name, model, _ = trained
    a = model.sample(40, generator=torch.Generator().manual_seed(1))
    b = model.sample(40, generator=torch.Generator().manual_seed(1))
    c = model.sample(40, generator=torch.Generator().manual_seed(2))
    assert a.shape == (40, 2) and torch.isfinite(a).all(), name
    assert torch.equal(a, b), f"{name}: the same generator seed gave different samples"
    assert not torch.equal(a, c), f"{name}: different seeds gave the same samples"


def test_log_density_has_a_kind_or_a_clear_refusal(trained):
    name, model, _ = trained
    x = get_target("8gaussians").sample(30, generator=torch.Generator().manual_seed(3))
    if not model.has_log_prob:
        with pytest.raises(NotSupportedError, match="no log-density"):
            model.log_prob(x)
        return
    ld = model.log_prob(x)
    assert ld.kind in KINDS
    assert ld.values.shape == (30,) and torch.isfinite(ld.values).all(), name


def test_checkpoint_round_trip_reproduces_the_model(trained):
    name, model, out = trained
    restored, record = load_run(Path(out))
    assert record["family"] == name and type(restored) is type(model)
    g = torch.Generator().manual_seed(4)
    before = model.sample(20, generator=g)
    after = restored.sample(20, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(after, before)
    if model.has_log_prob:
        x = get_target("8gaussians").sample(20, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(restored.log_prob(x).values, model.log_prob(x).values)
