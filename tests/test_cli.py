"""The `genmodels` command end to end on small budgets, and its one-line errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genmodels.cli import main
from genmodels.models import Model

TINY = ["--steps", "60", "--batch-size", "64", "--layers", "2", "--hidden", "16", "--no-progress"]


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_sample_log_prob_evaluate_on_a_target(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    code, out, err = run(["train", "realnvp", "--data", "8gaussians", "--out", str(run_dir), *TINY], capsys)
    assert code == 0, err
    assert "trained realnvp for 60 steps" in out and (run_dir / "checkpoint.json").exists()

    code, out, _ = run(["sample", str(run_dir), "--n", "123", "--out", str(tmp_path / "s.npy")], capsys)
    assert code == 0 and np.load(tmp_path / "s.npy").shape == (123, 2)

    np.save(tmp_path / "pts.npy", np.zeros((7, 2), dtype=np.float32))
    code, out, _ = run(
        [
            "log-prob",
            str(run_dir),
            "--data",
            str(tmp_path / "pts.npy"),
            "--out",
            str(tmp_path / "lp.npy"),
        ],
        capsys,
    )
    assert code == 0 and "(exact)" in out
    assert np.load(tmp_path / "lp.npy").shape == (7,)

    code, out, _ = run(["evaluate", str(run_dir), "--json", "--n", "2000"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["family"] == "realnvp" and result["kl_kind"] == "exact" and result["n_modes"] == 8

    # Resume with more steps continues the same run.
    code, out, err = run(
        ["train", "realnvp", "--out", str(run_dir), "--resume", "--steps", "80", "--no-progress"],
        capsys,
    )
    assert code == 0, err
    assert json.loads((run_dir / "checkpoint.json").read_text())["step"] == 80


def test_the_same_commands_work_on_a_user_npy_file(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 3)) * [1.0, 10.0, 0.1] + [5.0, -3.0, 0.0]
    np.save(tmp_path / "mine.npy", data)
    run_dir = tmp_path / "run"
    code, _, err = run(
        ["train", "realnvp", "--data", str(tmp_path / "mine.npy"), "--out", str(run_dir), *TINY],
        capsys,
    )
    assert code == 0, err
    code, _, _ = run(["sample", str(run_dir), "--n", "50", "--out", str(tmp_path / "s.npy")], capsys)
    assert code == 0 and np.load(tmp_path / "s.npy").shape == (50, 3)
    code, out, _ = run(["evaluate", str(run_dir), "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["nll_kind"] == "exact" and np.isfinite(result["nll"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "nosuch"], "unknown family 'nosuch'; choose one of: realnvp"),
        (
            ["train", "realnvp", "--data", "nosuch", "--no-progress"],
            "unknown dataset 'nosuch'.*8gaussians",
        ),
        (["train", "realnvp", "--bogus", "3"], "unrecognized arguments: --bogus"),
        (["train", "realnvp", "--schedule", "wavy"], "invalid choice: 'wavy'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["sample", "/nonexistent/run", "--out", "x.npy"], "no such run directory"),
    ],
)
def test_errors_are_one_line_with_choices(args: list[str], message: str, capsys) -> None:
    code, _out, err = run(args, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert pytest.importorskip("re").search(message, lines[0]), lines[0]


def test_bad_user_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "bad.npy", np.array([[1.0, np.nan]]))
    code, _, err = run(
        ["train", "realnvp", "--data", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "r")],
        capsys,
    )
    assert code == 2 and "NaN" in err and "Traceback" not in err


def test_existing_run_is_not_overwritten(tmp_path: Path, capsys) -> None:
    args = ["train", "realnvp", "--out", str(tmp_path / "r"), *TINY]
    assert run(args, capsys)[0] == 0
    code, _, err = run(args, capsys)
    assert code == 2 and "already holds a run" in err


def test_datasets_lists_targets_with_entropy(capsys) -> None:
    code, out, _ = run(["datasets"], capsys)
    assert code == 0
    assert "8gaussians" in out and "2.83" in out and "checkerboard" in out and "3.466" in out


def test_console_script_is_installed(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "genmodels", "train", "nosuch"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "choose one of: realnvp" in proc.stderr


class _Jitter(Model):
    """A sample-only test family: data points drawn from a fixed buffer, plus noise.

    It has a parameter (so the loop has something to optimise) but no density, which is
    what a GAN will look like to the CLI."""

    family = "jitter"
    tour_steps = 20

    def __init__(self, dim: int, config=None) -> None:
        super().__init__(dim, config)
        self.spread = torch.nn.Parameter(torch.tensor(1.0))
        self.register_buffer("memory", torch.zeros(256, dim))

    def loss(self, u, generator):
        self.memory.copy_(u[: self.memory.shape[0]].detach().repeat(256 // u.shape[0] + 1, 1)[:256])
        return {"loss": (self.spread - 0.05) ** 2}

    def _sample(self, n, *, generator, **options):
        idx = torch.randint(self.memory.shape[0], (n,), generator=generator)
        noise = torch.randn(n, self.dim, generator=generator)
        return self.memory[idx] + self.spread.detach().abs() * noise


def test_a_new_family_is_one_class_and_one_table_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """A sample-only family joins every command by one entry in FAMILIES; `log-prob` says
    clearly that it has no density, and `evaluate` falls back to the grid estimate."""
    from genmodels import models

    monkeypatch.setitem(models.FAMILIES, "jitter", _Jitter)
    run_dir = tmp_path / "run"
    code, _, err = run(["train", "jitter", "--out", str(run_dir), "--steps", "30", "--no-progress"], capsys)
    assert code == 0, err
    code, _, _ = run(["sample", str(run_dir), "--n", "10", "--out", str(tmp_path / "s.npy")], capsys)
    assert code == 0 and np.load(tmp_path / "s.npy").shape == (10, 2)
    code, _, err = run(
        ["log-prob", str(run_dir), "--data", "8gaussians", "--out", str(tmp_path / "lp.npy")], capsys
    )
    assert code == 2 and "jitter family has no log-density; it can only be sampled" in err
    code, out, _ = run(["evaluate", str(run_dir), "--json", "--n", "4000"], capsys)
    result = json.loads(out)
    assert code == 0 and result["kl_method"] == "grid" and result["kl_kind"] == "estimate"


def test_digits_report_bits_per_dim_with_the_dequantization(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    code, _, err = run(["train", "realnvp", "--data", "digits", "--out", str(run_dir), *TINY], capsys)
    assert code == 0, err
    code, out, _ = run(["evaluate", str(run_dir), "--json", "--bpd-draws", "2"], capsys)
    result = json.loads(out)
    assert code == 0 and result["n_real"] == 360 and "u ~ U[0, 1)" in result["dequantization"]
    assert result["bits_per_dim_kind"] == "exact" and math.isfinite(result["bits_per_dim"])


EBM_TINY = ["--steps", "60", "--batch-size", "64", "--hidden", "16", "--mcmc-steps", "2", "--no-progress"]


def test_ebm_with_each_method_through_every_command(tmp_path: Path, capsys) -> None:
    """`genmodels train ebm --method mle|cd|nce` trains; sample (with a sampler option),
    log-prob (exact: quadrature log Z in 2-D) and evaluate work on the run."""
    for method in ("mle", "cd", "nce"):
        run_dir = tmp_path / method
        args = ["train", "ebm", "--data", "8gaussians", "--out", str(run_dir), "--method", method]
        code, out, err = run([*args, *EBM_TINY], capsys)
        assert code == 0, err
        assert "trained ebm for 60 steps" in out
        # the default learning rate follows the method (mle and cd: 3e-3, nce: 1e-2)
        lr = json.loads((run_dir / "checkpoint.json").read_text())["train_config"]["lr"]
        assert lr == (1e-2 if method == "nce" else 3e-3), (method, lr)
    given = tmp_path / "given-lr"
    code, _, err = run(
        ["train", "ebm", "--method", "mle", "--lr", "0.02", "--out", str(given), *EBM_TINY], capsys
    )
    assert code == 0, err
    assert json.loads((given / "checkpoint.json").read_text())["train_config"]["lr"] == 0.02
    run_dir = tmp_path / "cd"
    code, _, err = run(
        ["sample", str(run_dir), "--n", "50", "--out", str(tmp_path / "s.npy"), "--option", "sampler=grid"],
        capsys,
    )
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    code, out, _ = run(
        ["sample", str(run_dir), "--n", "20", "--out", str(tmp_path / "m.npy"), "--option", "steps=5"], capsys
    )
    assert code == 0 and np.load(tmp_path / "m.npy").shape == (20, 2)
    code, out, err = run(
        ["log-prob", str(run_dir), "--data", "8gaussians", "--out", str(tmp_path / "lp.npy")], capsys
    )
    assert code == 0, err
    assert "(exact)" in out
    code, out, _ = run(["evaluate", str(run_dir), "--json", "--n", "2000"], capsys)
    result = json.loads(out)
    assert result["kl_kind"] == "exact" and result["family"] == "ebm"
    code, _, err = run(["train", "ebm", "--data", "8gaussians", "--method", "pcd", *EBM_TINY], capsys)
    assert code == 2 and "method" in err


DIFFUSION_TINY = ["--steps", "40", "--hidden", "32", "--depth", "1", "--no-progress"]


def test_diffusion_with_each_process_through_every_command(tmp_path: Path, capsys) -> None:
    """`genmodels train diffusion --process vp|subvp|ve|ddpm` trains; `sample --sampler X
    --steps N` works for every sampler; log-prob prints exact / lower bound; evaluate works."""
    for process in ("vp", "subvp", "ve", "ddpm"):
        args = ["train", "diffusion", "--data", "8gaussians", "--out", str(tmp_path / process)]
        code, out, err = run([*args, "--process", process, "--n-timesteps", "100", *DIFFUSION_TINY], capsys)
        assert code == 0, err
        assert "trained diffusion for 40 steps" in out
    run_dir = tmp_path / "ddpm"
    for sampler in ("ddim", "ode", "sde", "pc", "dpmpp2m", "ancestral", "heun", "euler", "ncsn"):
        out_file = tmp_path / f"{sampler}.npy"
        sample = ["sample", str(run_dir), "--n", "30", "--out", str(out_file)]
        code, _, err = run([*sample, "--sampler", sampler, "--steps", "4"], capsys)
        assert code == 0, (sampler, err)
        assert np.load(out_file).shape == (30, 2)
    lp = ["log-prob", str(run_dir), "--data", "8gaussians", "--out", str(tmp_path / "lp.npy")]
    code, out, err = run(lp, capsys)
    assert code == 0, err
    assert "(exact)" in out and "bits/dim (continuous data" in out
    code, out, err = run([*lp, "--option", "method=elbo"], capsys)
    assert code == 0, err
    assert "(lower bound)" in out
    code, _, err = run([*lp, "--option", "trace=exact"], capsys)
    assert code == 2 and "unknown log-density option" in err
    lp_vp = ["log-prob", str(tmp_path / "vp"), "--data", "8gaussians", "--out", str(tmp_path / "v.npy")]
    code, out, err = run([*lp_vp, "--option", "method=elbo"], capsys)
    assert code != 0 and "ddpm" in err
    code, out, _ = run(["evaluate", str(run_dir), "--json", "--n", "500"], capsys)
    result = json.loads(out)
    assert result["kl_kind"] == "exact" and result["family"] == "diffusion"
    bad = ["sample", str(run_dir), "--n", "5", "--out", str(tmp_path / "x.npy"), "--sampler", "rk45"]
    code, _, err = run(bad, capsys)
    assert code == 2 and "sampler" in err


def test_tour_writes_the_table_and_a_picture_per_family(tmp_path: Path, capsys) -> None:
    """`genmodels tour` (the README's main job) on a density family and a sample-only one:
    one table row each with the KL's kind, and a non-blank picture per family."""
    from PIL import Image

    out = tmp_path / "tour"
    code, stdout, err = run(
        ["tour", "--out", str(out), "--families", "realnvp,gan", "--steps-scale", "0.02"], capsys
    )
    assert code == 0, err
    table = (out / "results.md").read_text()
    rows = json.loads((out / "results.json").read_text())
    assert [r["family"] for r in rows] == ["realnvp", "gan"]
    assert rows[0]["kl_kind"] == "exact" and rows[1]["kl_kind"] == "estimate"
    assert "realnvp" in table and "gan" in table and "realnvp" in stdout
    for name in ("realnvp", "gan"):
        img = np.asarray(Image.open(out / f"{name}.png").convert("L"), dtype=float)
        assert img.shape[0] > 100 and img.shape[1] > 200 and img.std() > 10, name


def test_flow_matching_takes_its_ode_solver_as_sampler_everywhere(tmp_path: Path, capsys) -> None:
    """fm's sampler is its ODE solver: `sample --sampler heun --steps N` and `log-prob --option
    sampler=heun` both reach it; its other sampler options are valid log-density options."""
    run_dir = tmp_path / "run"
    code, _, err = run(
        ["train", "fm", "--out", str(run_dir), "--steps", "20", "--hidden", "16", "--no-progress"], capsys
    )
    assert code == 0, err
    code, _, err = run(
        [
            "sample",
            str(run_dir),
            "--n",
            "50",
            "--out",
            str(tmp_path / "s.npy"),
            "--sampler",
            "heun",
            "--steps",
            "4",
        ],
        capsys,
    )
    assert code == 0, err
    args = ["log-prob", str(run_dir), "--data", str(tmp_path / "s.npy"), "--out", str(tmp_path / "lp.npy")]
    code, out, err = run([*args, "--option", "sampler=heun", "--option", "steps=8"], capsys)
    assert code == 0 and "(exact)" in out, err
    assert np.isfinite(np.load(tmp_path / "lp.npy")).all()
    code, _, err = run([*args, "--option", "sampler=rk45"], capsys)
    assert code == 2 and "unknown sampler 'rk45'" in err
