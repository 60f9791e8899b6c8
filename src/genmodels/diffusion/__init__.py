"""Diffusion and score-based models: forward processes, samplers and likelihoods (tutorial §5).

The model family (training, the network, the CLI) is :mod:`genmodels.models.diffusion`; this
package holds what works with any denoiser, learned or exact.
"""

from genmodels.diffusion.processes import DDPM, PROCESSES, VE, VP, Process, make_process
from genmodels.diffusion.solvers import (
    SAMPLERS,
    SPACINGS,
    MixtureDenoiser,
    SampleResult,
    ddpm_elbo,
    gaussian_prior_log_prob,
    ode_log_prob,
    sample,
    sigma_grid,
)

__all__ = [
    "DDPM",
    "PROCESSES",
    "SAMPLERS",
    "SPACINGS",
    "VE",
    "VP",
    "MixtureDenoiser",
    "Process",
    "SampleResult",
    "ddpm_elbo",
    "gaussian_prior_log_prob",
    "make_process",
    "ode_log_prob",
    "sample",
    "sigma_grid",
]
