"""Small shared types: the kind of a log-density and a tagged tensor of values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

Kind = Literal["exact", "lower_bound", "upper_bound", "estimate"]
KINDS: tuple[str, ...] = get_args(Kind)


@dataclass(frozen=True)
class LogDensity:
    """Per-sample log-density values together with what they are.

    ``values`` has shape ``(n,)``; ``kind`` says whether each value is the exact
    ``log p(x)``, a lower bound (e.g. an ELBO), an upper bound, or a stochastic
    estimate (e.g. AIS, Hutchinson's trace).
    """

    values: torch.Tensor
    kind: Kind

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
