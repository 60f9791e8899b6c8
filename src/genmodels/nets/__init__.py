"""Neural-network building blocks shared by the families."""

from genmodels.nets.mlp import MLP

__all__ = ["MLP"]
