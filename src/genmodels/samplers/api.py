"""One call from a log-density to draws: ``sample(log_density, init, kernel="hmc", ...)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from genmodels.samplers.base import LogDensityFn, init_state, run_warmup
from genmodels.samplers.hmc import HMC
from genmodels.samplers.langevin import MALA, Langevin

KernelName = Literal["hmc", "chees", "mala", "langevin"]
KERNELS: tuple[str, ...] = ("hmc", "chees", "mala", "langevin")
TARGET_ACCEPT = {"hmc": 0.8, "mala": 0.574}


@dataclass(frozen=True)
class SampleResult:
    """Draws ``(n_steps, n_chains, d)`` with per-step ``acceptance`` and ``divergent``
    ``(n_steps, n_chains)``, and the tuned ``step_size`` and ``inverse_mass`` (or None)."""

    draws: torch.Tensor
    acceptance: torch.Tensor
    divergent: torch.Tensor
    step_size: float
    inverse_mass: torch.Tensor | None

    def summary(self) -> str:
        """Per-dimension mean, sd, MCSE, quantiles, bulk/tail ESS and R̂, with acceptance and
        divergences (Vehtari et al. 2021)."""
        from genmodels.samplers.diagnostics import summary

        info = {"acceptance_rate": self.acceptance, "is_divergent": self.divergent}
        return summary(self.draws.transpose(0, 1), info=info)


def sample(
    log_density: LogDensityFn,
    init: torch.Tensor,
    kernel: KernelName = "hmc",
    n_steps: int = 1000,
    n_chains: int | None = None,
    *,
    n_warmup: int | None = None,
    step_size: float | None = None,
    num_leapfrog: int = 10,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> SampleResult:
    """Sample ``log_density`` (``(n, d) → (n,)``) with many chains in parallel.

    ``init`` is ``(n_chains, d)``, or ``(d,)`` copied to ``n_chains`` chains. For "hmc" and
    "mala" the step size (and, for HMC, a diagonal inverse mass matrix) is adapted during
    ``n_warmup`` steps (default ``n_steps``; Stan's windows and dual averaging), unless
    ``step_size`` is given with ``n_warmup=0``. "chees" is HMC with jittered trajectory
    lengths whose mean is adapted by the ChEES criterion (Hoffman, Radul & Sountsov 2021),
    built for many chains. Unadjusted "langevin" needs ``step_size``.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of: {', '.join(KERNELS)}")
    if init.ndim == 1:
        init = init.unsqueeze(0).expand(n_chains or 1, -1)
    elif n_chains is not None and init.shape[0] != n_chains:
        raise ValueError(f"init has {init.shape[0]} chains but n_chains={n_chains}")
    if init.ndim != 2:
        raise ValueError(f"init must be (n_chains, d) or (d,), got shape {tuple(init.shape)}")
    if generator is None:
        raise TypeError("pass a torch.Generator: genmodels never uses the global RNG")
    n_warmup = n_steps if n_warmup is None else n_warmup
    inverse_mass = None

    def make(eps: float, inv_mass: torch.Tensor | None):
        if kernel == "hmc":
            return HMC(step_size=eps, num_steps=num_leapfrog, inverse_mass_matrix=inv_mass)
        if kernel == "mala":
            return MALA(step_size=eps)
        return Langevin(step_size=eps)

    if kernel == "chees":
        from genmodels.samplers.chees import run_chees_warmup

        if n_warmup < 1:
            raise ValueError("chees needs warm-up steps to set its trajectory length")
        k, state = run_chees_warmup(
            init, log_density, n_warmup, generator, initial_step_size=step_size or 0.1
        )
        return _run(k, state, n_steps, generator, progress, kernel, k.step_size, k.inverse_mass_matrix)
    if kernel == "langevin" or n_warmup == 0:
        if step_size is None:
            raise ValueError(f"{kernel} without warm-up needs step_size")
        state = init_state(init, log_density)
        eps = step_size
    else:
        warm = run_warmup(
            make,
            init,
            log_density,
            n_warmup,
            generator,
            TARGET_ACCEPT[kernel],
            initial_step_size=step_size or 0.1,
            adapt_mass=(kernel == "hmc"),
        )
        state, eps, inverse_mass = warm.state, warm.step_size, warm.inverse_mass
    return _run(make(eps, inverse_mass), state, n_steps, generator, progress, kernel, eps, inverse_mass)


def _run(k, state, n_steps, generator, progress, name, eps, inverse_mass) -> SampleResult:
    """``n_steps`` transitions of kernel ``k``, keeping every position and diagnostic."""
    draws, acc, div = [], [], []
    for _ in tqdm(range(n_steps), disable=not progress, desc=name, unit="step"):
        state, info = k.step(state, generator)
        draws.append(state.position)
        acc.append(info.acceptance_rate)
        div.append(info.is_divergent)
    return SampleResult(torch.stack(draws), torch.stack(acc), torch.stack(div), float(eps), inverse_mass)
