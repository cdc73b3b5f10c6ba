"""Encoders and heads (Flax NNX), used by the methods behind a functional boundary."""

from sslx.models.heads import MLP
from sslx.models.resnet import STAGE_SIZES, ResNet, resnet

__all__ = ["MLP", "ResNet", "STAGE_SIZES", "resnet"]
