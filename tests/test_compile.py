"""``TrainConfig.compile``: the family's network runs through ``torch.compile`` in its training
passes and nowhere else, trains as the eager network does, and leaves the model eager.

The compiled and eager runs share seed, data and steps, so their logged losses differ only by
the reordering of float32 sums in fused kernels (relative ~1e-7 per operation, ~1e-6 after 30
Adam steps as measured here); the tests accept 1e-4 relative. A run that silently stayed eager
is caught by dynamo's own count of the graphs it compiled.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from genmodels.train import TrainConfig, train

needs_cxx = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="torch.compile on the CPU (inductor) needs a C++ compiler",
)


def _run(family: str, mode: str):
    torch._dynamo.reset()
    counters.clear()
    config = TrainConfig(steps=30, batch_size=128, log_every=10, progress=False, compile=mode)
    result = train(family, "8gaussians", config)
    return result, counters["stats"]["unique_graphs"]


@needs_cxx
@pytest.mark.parametrize("family", ["fm", "diffusion"])
def test_compiled_training_matches_eager_and_leaves_the_model_eager(family) -> None:
    eager, graphs_eager = _run(family, "none")
    compiled, graphs = _run(family, "default")
    assert graphs_eager == 0
    assert graphs >= 1  # the network's training pass went through torch.compile
    a = [h["loss"] for h in eager.history]
    b = [h["loss"] for h in compiled.history]
    assert len(a) == len(b) == 3
    assert b == pytest.approx(a, rel=1e-4)
    model = compiled.model
    assert "_compiled_forwards" not in model.__dict__
    assert all(m._compiled_call_impl is None for m in model.modules())
    assert model.state_dict().keys() == eager.model.state_dict().keys()  # checkpoints unchanged
    model.sample(64, generator=torch.Generator().manual_seed(0))
    assert counters["stats"]["unique_graphs"] == graphs  # sampling ran eager: nothing new compiled


def test_compile_is_refused_by_a_family_without_compile_modules() -> None:
    config = TrainConfig(steps=2, batch_size=64, progress=False, compile="default")
    with pytest.raises(ValueError, match=r"not available for the gan family.*it is for: .*diffusion.*fm"):
        train("gan", "8gaussians", config)


def test_an_unknown_compile_mode_is_named() -> None:
    with pytest.raises(ValueError, match="unknown compile mode 'fast'; choose one of: none, default"):
        TrainConfig(compile="fast").validate()  # type: ignore[arg-type]


def test_the_compiled_forward_is_set_for_a_pass_and_kept_by_a_pass_inside_it() -> None:
    from genmodels.models import build_model

    model = build_model("fm", 2, {}, seed=0)

    def forward(*args, **kwargs):
        raise AssertionError("not called here")

    model.__dict__["_compiled_forwards"] = {"net": forward}  # what compile_networks leaves
    assert model.net._compiled_call_impl is None
    with model._compiled_passes():
        with model._compiled_passes():
            assert model.net._compiled_call_impl is forward
        assert model.net._compiled_call_impl is forward  # the outer pass is still compiled
    assert model.net._compiled_call_impl is None
