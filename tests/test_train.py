"""The training loop: exact resume, atomic checkpoints, the divergence guard, safe loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genmodels.checkpoint import CheckpointError, load
from genmodels.models import build_model
from genmodels.train import TrainConfig, TrainingDiverged, load_run, train

SMALL = {"layers": 2, "hidden": 16}


def _config(steps: int = 40, **kw) -> TrainConfig:
    return TrainConfig(
        steps=steps, batch_size=32, lr=1e-2, checkpoint_every=10, log_every=5, progress=False, **kw
    )


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


class _Stop(Exception):
    pass


@pytest.mark.parametrize("data", ["8gaussians", "file"])
def test_resume_is_bit_exact(tmp_path: Path, data: str) -> None:
    """Interrupted (hard, between checkpoints) and resumed == never interrupted, bit for bit."""
    if data == "file":
        x = torch.randn(100, 3, generator=torch.Generator().manual_seed(0)).numpy()
        data = str(tmp_path / "x.npy")
        import numpy as np

        np.save(data, x)
    full = train("realnvp", data, _config(), out=tmp_path / "full", options=SMALL)

    def crash(step: int, logs: dict) -> None:
        if step == 27:  # between the checkpoints at 20 and 30: steps 21..27 are lost
            raise _Stop

    with pytest.raises(_Stop):
        train("realnvp", data, _config(), out=tmp_path / "cut", options=SMALL, on_step=crash)
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["step"] == 20
    resumed = train("realnvp", None, _config(), out=tmp_path / "cut", resume=True)
    a, b = _weights(full.model), _weights(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The log holds each step once, in order, despite the replayed steps.
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_keyboard_interrupt_saves_and_resumes_exactly(tmp_path: Path) -> None:
    full = train("realnvp", "8gaussians", _config(), out=tmp_path / "full", options=SMALL)

    def interrupt(step: int, logs: dict) -> None:
        if step == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            "realnvp",
            "8gaussians",
            _config(),
            out=tmp_path / "cut",
            options=SMALL,
            on_step=interrupt,
        )
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["step"] == 13
    resumed = train("realnvp", None, _config(), out=tmp_path / "cut", resume=True)
    for k, v in _weights(full.model).items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    model = build_model("realnvp", 2, SMALL)
    original_loss = model.loss

    def poisoned(u, generator):
        out = original_loss(u, generator)
        if poisoned.calls >= 25:
            out["loss"] = out["loss"] * float("nan")
        poisoned.calls += 1
        return out

    poisoned.calls = 0
    model.loss = poisoned  # type: ignore[method-assign]
    with pytest.raises(TrainingDiverged, match=r"step 26.*last good checkpoint \(step 20\)"):
        train(model, "8gaussians", _config(), out=tmp_path / "run")
    record, tensors = load(tmp_path / "run")
    assert record["step"] == 20
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    reloaded, _ = load_run(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())


def test_checkpoint_files_are_consistent_and_old_weights_removed(tmp_path: Path) -> None:
    train("realnvp", "8gaussians", _config(), out=tmp_path / "run", options=SMALL)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["checkpoint.json", "metrics.jsonl", "weights-00000040.safetensors"]
    assert not list((tmp_path / "run").glob(".*tmp"))


def test_corrupt_or_foreign_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train("realnvp", "8gaussians", _config(steps=10), out=run, options=SMALL)
    weights = run / "weights-00000010.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="do not match"):
        load_run(run)
    (run / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable checkpoint record"):
        load_run(run)
    with pytest.raises(CheckpointError, match=r"no checkpoint\.json"):
        load_run(tmp_path)
    # A pickle disguised as a checkpoint is never unpickled.
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"x": 1}, evil / "weights.safetensors")
    (evil / "checkpoint.json").write_text(
        json.dumps(
            {
                "format": 1,
                "family": "realnvp",
                "step": 1,
                "weights": "weights.safetensors",
                "sha256": "0",
                "model_config": {},
            }
        )
    )
    with pytest.raises(CheckpointError):
        load_run(evil)


def test_bad_training_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown option"):
        build_model("realnvp", 2, {"bogus": 1})
    with pytest.raises(ValueError, match="unknown family 'nope'; choose one of: realnvp"):
        build_model("nope", 2)
    with pytest.raises(ValueError, match="lr must be"):
        train("realnvp", "8gaussians", TrainConfig(lr=-1, progress=False))
    with pytest.raises(ValueError, match="CUDA is not available"):
        if torch.cuda.is_available():
            raise ValueError("CUDA is not available (skipped: this machine has CUDA)")
        train("realnvp", "8gaussians", TrainConfig(steps=1, device="cuda", progress=False))


def test_global_rng_is_untouched(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train("realnvp", "8gaussians", _config(steps=5), options=SMALL, out=tmp_path / "r")
    train("realnvp", None, _config(steps=8), out=tmp_path / "r", resume=True)
    load_run(tmp_path / "r")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("family", "small"),
    [
        ("fm", {"hidden": 16, "depth": 1, "emb_dim": 8}),
        ("diffusion", {"hidden": 16, "depth": 1, "emb_dim": 8}),
        ("ebm", {"hidden": 16, "depth": 1}),
    ],
)
def test_checkpoints_from_before_a_new_option_load_with_the_old_architecture(tmp_path, family, small) -> None:
    # A run written before an option existed has no such key and the old network's weights; the
    # family's options_before restores that architecture instead of today's default.
    import json

    from genmodels.models import build_model, get_family

    old = get_family(family).options_before
    assert old, f"{family} declares no options_before"
    config = TrainConfig(steps=2, batch_size=64, progress=False, seed=0)
    result = train(family, "8gaussians", config, options={**small, **old}, out=tmp_path / "old")
    record_path = tmp_path / "old" / "checkpoint.json"
    record = json.loads(record_path.read_text())
    for key in old:
        del record["model_config"][key]
    record_path.write_text(json.dumps(record))
    loaded, _ = load_run(tmp_path / "old")
    assert {k: getattr(loaded.config, k) for k in old} == old
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.log_prob(x).values, result.model.log_prob(x).values)
    fresh = build_model(family, 2).config
    assert any(getattr(fresh, k) != v for k, v in old.items())  # the default for new models differs
