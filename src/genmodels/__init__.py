"""genmodels: every family of generative models under one statistical view, measured
against the truth (after Y. N. Wu's tutorial "Generative Modeling Explained").

The Python way in::

    from genmodels import get_target, train, TrainConfig, kl_to_truth
    result = train("realnvp", "8gaussians", TrainConfig(steps=2000))
    kl = kl_to_truth(result.model, get_target("8gaussians"))
"""

from genmodels.distributions import TARGETS, Target, get_target
from genmodels.evaluate import evaluate_model, kl_to_truth, mode_metrics
from genmodels.models import FAMILIES, Model, build_model
from genmodels.train import TrainConfig, load_run, train
from genmodels.types import LogDensity

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "TARGETS",
    "LogDensity",
    "Model",
    "Target",
    "TrainConfig",
    "build_model",
    "evaluate_model",
    "get_target",
    "kl_to_truth",
    "load_run",
    "mode_metrics",
    "train",
]
