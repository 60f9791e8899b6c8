"""Early stopping on held-out data in the training loop (TrainConfig.validate_every / patience).

A small RealNVP on 300 of the digits with a high constant learning rate overfits within a
few dozen steps (its held-out NLL climbs by hundreds of nats), so the best validation step is
early and a restore that does not happen is seen at once.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from genmodels.cli import main
from genmodels.data import Dataset, load_data
from genmodels.models.realnvp import RealNVP
from genmodels.train import (
    VALIDATION_TARGET_SAMPLES,
    TrainConfig,
    load_run,
    train,
    validation_score,
    validation_split,
)

OPTIONS = {"hidden": 64, "layers": 4}
EVERY = 20


@pytest.fixture(scope="module")
def small() -> Dataset:
    digits = load_data("digits")
    return dataclasses.replace(digits, train=digits.train[:300])


def config(**kw) -> TrainConfig:
    base = dict(
        steps=240,
        lr=5e-3,
        schedule="constant",
        batch_size=64,
        validate_every=EVERY,
        val_fraction=0.25,
        progress=False,
        seed=0,
    )
    return TrainConfig(**{**base, **kw})


def held_out_nll(model, points: torch.Tensor) -> float:
    with torch.no_grad():
        return float(-model.log_prob(points).values.double().mean())


def test_the_run_ends_with_the_best_model_and_checkpoints_it(small: Dataset, tmp_path: Path) -> None:
    res = train("realnvp", small, config(), out=tmp_path, options=OPTIONS)
    scores = [h["validation"] for h in res.validation_history]
    assert [h["step"] for h in res.validation_history] == list(range(EVERY, 241, EVERY))
    assert res.step == 240 and not res.stopped_early
    # it overfits: the best is early and well below the last score (so a missing restore shows)
    assert res.best_step < 120 and scores[-1] > res.best_validation + 20
    assert res.best_validation == min(scores)
    _, points = validation_split(small, 0, 0.25)
    # the returned model is the best one: its held-out NLL is the best score recorded
    assert held_out_nll(res.model, points) == pytest.approx(res.best_validation, abs=1e-6)
    # the final checkpoint holds the same weights and the validation record
    loaded, record = load_run(tmp_path)
    x = points[:50]
    assert torch.equal(loaded.log_prob(x).values, res.model.log_prob(x).values)
    v = record["validation"]
    assert (v["best_step"], v["stopped_early"], v["metric"]) == (res.best_step, False, "nll")
    assert v["best_validation"] == pytest.approx(res.best_validation, abs=0)
    assert [h["validation"] for h in v["history"]] == scores
    assert not any(k.startswith("best.") for k in json.loads((tmp_path / "checkpoint.json").read_text()))


def test_patience_stops_the_run_early(small: Dataset, tmp_path: Path) -> None:
    res = train("realnvp", small, config(steps=400, patience=3), out=tmp_path, options=OPTIONS)
    assert res.stopped_early and res.step < 400
    # it stops at the third validation in a row without improvement
    assert res.step == res.best_step + 3 * EVERY
    assert len(res.validation_history) == res.step // EVERY
    assert all(h["validation"] >= res.best_validation for h in res.validation_history[-3:])
    _, points = validation_split(small, 0, 0.25)
    assert held_out_nll(res.model, points) == pytest.approx(res.best_validation, abs=1e-6)
    _, record = load_run(tmp_path)
    assert record["step"] == res.step and record["validation"]["stopped_early"] is True
    # an early-stopped run is finished: resuming it needs more steps than it was given
    with pytest.raises(ValueError, match=r"stopped early.*--steps"):
        train("realnvp", None, config(steps=400), out=tmp_path, resume=True)


def test_an_interrupted_run_resumes_to_the_same_best_model(small: Dataset, tmp_path: Path) -> None:
    whole = train("realnvp", small, config(steps=160), options=OPTIONS)

    def interrupt(step: int, logs: dict) -> None:
        if step == 110:  # after the best step: the checkpoint of the interrupt holds best.*
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("realnvp", small, config(steps=160), out=tmp_path, options=OPTIONS, on_step=interrupt)
    resumed = train("realnvp", small, config(steps=160), out=tmp_path, resume=True)
    assert resumed.validation_history == whole.validation_history
    assert (resumed.best_step, resumed.best_validation) == (whole.best_step, whole.best_validation)
    assert whole.best_step < 110
    for (name, a), (_, b) in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_validation_uses_a_seeded_training_split_never_the_test_split(small: Dataset) -> None:
    kept, points = validation_split(small, 0, 0.25)
    assert points.shape == (75, 64) and kept.train.shape == (225, 64)
    assert kept.test is small.test  # left untouched for evaluation
    # the held-out rows are training rows not trained on, dequantized as training batches are
    rows = torch.floor(points * small.levels)
    assert ((points * small.levels - rows) > 0).any() and (points < 1).all()
    train_rows = {tuple(r.tolist()) for r in small.train}
    kept_rows = {tuple(r.tolist()) for r in kept.train}
    held_rows = {tuple(r.tolist()) for r in rows}
    assert held_rows <= train_rows and not held_rows & kept_rows
    assert torch.equal(validation_split(small, 0, 0.25)[1], points)
    assert not torch.equal(validation_split(small, 1, 0.25)[1], points)
    # a poisoned test split changes nothing
    poisoned = dataclasses.replace(small, test=torch.full_like(small.test, float("nan")))
    a = train("realnvp", small, config(steps=60), options=OPTIONS)
    b = train("realnvp", poisoned, config(steps=60), options=OPTIONS)
    assert a.validation_history == b.validation_history


def test_a_target_stream_validates_on_fresh_samples() -> None:
    res = train(
        "realnvp",
        "8gaussians",
        TrainConfig(steps=100, batch_size=128, validate_every=50, progress=False, seed=0),
        options={"hidden": 16, "layers": 2},
    )
    assert [h["step"] for h in res.validation_history] == [50, 100]
    assert res.validation["source"] == "target samples"
    assert res.validation["n_points"] == VALIDATION_TARGET_SAMPLES
    data = load_data("8gaussians")
    same, points = validation_split(data, 0, 0.1)
    assert same is data and points.shape == (VALIDATION_TARGET_SAMPLES, 2)
    assert held_out_nll(res.model, points) == pytest.approx(res.best_validation, abs=1e-6)


class _LossOnly(RealNVP):
    """RealNVP whose density is hidden: validation falls back to its training loss."""

    family = "realnvp"
    has_log_prob = False


def test_a_family_without_a_density_is_scored_by_its_loss(small: Dataset) -> None:
    model = RealNVP(64, RealNVP.Config(hidden=16, layers=2))
    model.set_normalization(torch.full((64,), 0.3), torch.full((64,), 0.2))
    _, points = validation_split(small, 0, 0.25)
    nll = validation_score(model, points, 64)
    model.__class__ = _LossOnly
    # loss = mean −log p_u(u); the data-space NLL adds Σ log scale
    log_scale = 64 * torch.log(torch.tensor(0.2)).item()
    assert validation_score(model, points, 64) == pytest.approx(nll - log_scale)


def test_a_family_with_only_step_is_not_validated(capsys) -> None:
    res = train(
        "gan",
        "8gaussians",
        TrainConfig(steps=4, batch_size=32, validate_every=2, progress=False),
    )
    assert res.validation == {} and res.best_step is None
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if "no validation" in line]
    assert len(lines) == 1 and "gan" in lines[0]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"validate_every": -1}, "validate-every must be >= 0"),
        ({"patience": -2}, "patience must be >= 0"),
        ({"patience": 3}, "patience 3 counts validations, but validation is off"),
        ({"validate_every": 5, "val_fraction": 0.0}, r"val-fraction .* in \(0, 1\)"),
        ({"validate_every": 5, "val_fraction": 1.0}, r"val-fraction .* in \(0, 1\)"),
        ({"validate_every": 5, "val_fraction": float("nan")}, r"val-fraction .* in \(0, 1\)"),
    ],
)
def test_bad_values_are_one_line_errors(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        TrainConfig(**kw).validate()
    assert "\n" not in str(err.value)


def test_a_split_that_leaves_nothing_is_an_error(small: Dataset) -> None:
    tiny = dataclasses.replace(small, train=small.train[:5])
    with pytest.raises(ValueError, match=r"val-fraction 0\.05 of the 5 training examples holds out 0"):
        train("realnvp", tiny, config(steps=5, val_fraction=0.05), options=OPTIONS)


def test_command_line(tmp_path: Path, capsys) -> None:
    common = ["train", "realnvp", "--data", "8gaussians", "--no-progress", "--hidden", "16", "--layers", "2"]
    for flags, expected in [
        (["--validate-every", "-1"], "validate-every must be >= 0"),
        (["--patience", "2"], "patience 2 counts validations"),
        (["--validate-every", "10", "--val-fraction", "1.5"], "val-fraction is a fraction"),
        (["--validate-every", "ten"], "invalid int value: 'ten'"),
    ]:
        assert main([*common, "--out", str(tmp_path / "bad"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err
    out = tmp_path / "run"
    argv = [*common, "--out", str(out), "--steps", "60", "--batch-size", "64"]
    assert main([*argv, "--validate-every", "20", "--patience", "5"]) == 0
    printed = capsys.readouterr().out
    assert "validation: best held-out nll" in printed and "3 validations on 2000 target samples" in printed
    record = json.loads((out / "checkpoint.json").read_text())
    assert record["train_config"]["validate_every"] == 20 and len(record["validation"]["history"]) == 3


DDP_WORKER = """
import dataclasses, json, sys, torch
torch.set_num_threads(1)
import torch.distributed as dist
from genmodels.data import load_data
from genmodels.train import TrainConfig, train
out, cfg, opts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
digits = load_data("digits")
small = dataclasses.replace(digits, train=digits.train[:300])
res = train("realnvp", small, TrainConfig(**cfg), out=out + "/run", options=opts)
rank = dist.get_rank()
weights = {k: v.tolist() for k, v in res.model.state_dict().items() if k.endswith("weight")}
json.dump({"validation": res.validation, "step": res.step, "weights": weights},
          open(f"{out}/rank{rank}.json", "w"))
"""


def test_under_two_process_ddp_every_rank_stops_at_once(small: Dataset, tmp_path: Path) -> None:
    """Validation on rank 0, its score broadcast: both ranks take the same branch (no hang), stop
    at the same step with the same best weights, as one process does (realnvp: same global batch)."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    cfg = dataclasses.asdict(config(steps=400, patience=3))
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr"]
    cmd += ["127.0.0.1", "--master_port", str(port), str(tmp_path / "worker.py"), str(tmp_path)]
    cmd += [json.dumps(cfg), json.dumps(OPTIONS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        log, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"torchrun did not finish in 120 s:\n{proc.communicate()[0][-3000:]}")
    assert proc.returncode == 0, log[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["validation"] == r1["validation"] and r0["step"] == r1["step"]
    assert r0["weights"] == r1["weights"]
    one = train("realnvp", small, config(steps=400, patience=3), options=OPTIONS)
    assert r0["validation"]["stopped_early"] and r0["step"] == one.step
    assert r0["validation"]["best_step"] == one.best_step
    assert r0["validation"]["best_validation"] == pytest.approx(one.best_validation, rel=1e-3)
    _, record = load_run(tmp_path / "run")
    assert record["validation"]["best_step"] == one.best_step
