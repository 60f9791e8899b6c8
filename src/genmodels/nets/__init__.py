"""Neural-network building blocks shared by the families."""

from genmodels.nets.mlp import MLP
from genmodels.nets.time import SinusoidalEmbedding, TimeEmbedding, TimeMLP
from genmodels.nets.unet import UNet

__all__ = ["MLP", "SinusoidalEmbedding", "TimeEmbedding", "TimeMLP", "UNet"]
