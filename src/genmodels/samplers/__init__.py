"""MCMC kernels over any torch log-density, BlackJAX-style: ``init`` + pure ``step``.

    >>> import torch
    >>> from genmodels.samplers import MALA, sample_chain
    >>> kernel = MALA(step_size=0.5)
    >>> state = kernel.init(torch.zeros(8, 2), lambda x: -0.5 * (x**2).sum(-1))
    >>> draws, summary = sample_chain(kernel, state, 100, torch.Generator().manual_seed(0))
    >>> draws.shape
    torch.Size([100, 8, 2])

Kernels: ``Langevin`` (unadjusted, tutorial §4), ``MALA`` (Roberts & Tweedie 1996),
``HMC`` (Neal 2011), ``ChEESHMC`` (Hoffman, Radul & Sountsov 2021). Adaptation:
``DualAveraging`` (Hoffman & Gelman 2014) and
``run_warmup`` (Stan's windowed step-size and diagonal mass-matrix adaptation).
Tempering (tutorial §4): ``ParallelTempering`` over the family π_β ∝ exp(β f) q.
Noise levels: ``annealed_langevin`` (NCSN, Song & Ermon 2019).
log Z: ``ais`` (annealed importance sampling, forward lower and reverse upper bounds).
Speed: wrap a log-density in ``CompiledLogDensity`` and HMC / ChEES get its value and
gradient from one ``torch.compile``d graph (≈ 4× faster per gradient on CPU for small
targets; eager fallback if compiling fails).
Diagnostics (Vehtari et al. 2021) take draws shaped (chains, draws[, dim]); the output of
``sample_chain`` is (draws, chains, dim), so pass ``draws.transpose(0, 1)``.
"""

from genmodels.samplers.ais import LogZEstimate, ais, sigmoid_schedule
from genmodels.samplers.annealed import annealed_langevin, geometric_sigmas
from genmodels.samplers.api import SampleResult, sample
from genmodels.samplers.base import (
    ChainSummary,
    DualAveraging,
    DualAveragingState,
    Info,
    Kernel,
    LogDensityFn,
    State,
    WarmupResult,
    metropolis_accept,
    run_warmup,
    sample_chain,
    value_and_grad,
    warmup_windows,
)
from genmodels.samplers.chees import ChEESHMC, run_chees_warmup
from genmodels.samplers.diagnostics import (
    ess,
    ess_bulk,
    ess_tail,
    mcse_mean,
    rank_normalized_rhat,
    split_rhat,
    summarize,
    summary,
)
from genmodels.samplers.hmc import HMC, CompiledLogDensity, kinetic_energy, leapfrog
from genmodels.samplers.langevin import MALA, Langevin, langevin_proposal
from genmodels.samplers.tempering import (
    ParallelTempering,
    TemperingInfo,
    TemperingState,
    geometric_ladder,
    tempered_f,
)

__all__ = [
    "HMC",
    "MALA",
    "ChEESHMC",
    "ChainSummary",
    "CompiledLogDensity",
    "DualAveraging",
    "DualAveragingState",
    "Info",
    "Kernel",
    "Langevin",
    "LogDensityFn",
    "LogZEstimate",
    "ParallelTempering",
    "SampleResult",
    "State",
    "TemperingInfo",
    "TemperingState",
    "WarmupResult",
    "ais",
    "annealed_langevin",
    "ess",
    "ess_bulk",
    "ess_tail",
    "geometric_ladder",
    "geometric_sigmas",
    "kinetic_energy",
    "langevin_proposal",
    "leapfrog",
    "mcse_mean",
    "metropolis_accept",
    "rank_normalized_rhat",
    "run_chees_warmup",
    "run_warmup",
    "sample",
    "sample_chain",
    "sigmoid_schedule",
    "split_rhat",
    "summarize",
    "summary",
    "tempered_f",
    "value_and_grad",
    "warmup_windows",
]
