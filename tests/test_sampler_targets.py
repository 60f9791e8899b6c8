"""Samplers on the skewed Banana: second moments within tolerances set by the ESS, and
the same check fails when the gradient sign is broken."""

from __future__ import annotations

import torch

from genmodels.distributions import Banana
from genmodels.samplers import sample
from genmodels.samplers.diagnostics import ess


def _second_moment_z(result, target: Banana) -> torch.Tensor:
    """(Ê[x²] − E[x²]) / sqrt(Var[x²] / ESS) per dimension."""
    draws = result.draws.transpose(0, 1)  # (chains, draws, d)
    sq = draws**2
    n_eff = torch.as_tensor(ess(sq), dtype=torch.float64)
    est = sq.reshape(-1, target.dim).mean(0)
    return (est - target.second_moment) / (target.variance_of_square / n_eff).sqrt()


def test_hmc_and_mala_recover_banana_moments() -> None:
    target = Banana()
    init = torch.zeros(64, 2, dtype=torch.float64)
    for kernel in ("hmc", "mala"):
        result = sample(
            target.log_prob,
            init,
            kernel,
            n_steps=600,
            n_warmup=600,
            generator=torch.Generator().manual_seed(0),
            progress=False,
        )
        z = _second_moment_z(result, target)
        assert bool((z.abs() < 4).all()), (kernel, z)


def test_a_wrong_gradient_sign_is_caught() -> None:
    target = Banana()

    class Flipped(Banana):  # log π right, gradient wrong: HMC then rejects or drifts away
        def log_prob(self, x):  # type: ignore[override]
            lp = super().log_prob(x.detach())
            return lp + 2 * (super().log_prob(x) - lp).neg() + 0 * x.sum(-1)

    broken = Flipped()
    result = sample(
        broken.log_prob,
        torch.zeros(64, 2, dtype=torch.float64),
        "hmc",
        n_steps=300,
        n_warmup=300,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    z = _second_moment_z(result, target)
    assert bool((z.abs() > 4).any()) or not bool(torch.isfinite(z).all()), z
