"""Encoders and heads (Flax NNX), used by the methods behind a functional boundary.

`Backbone` builds the encoder named by `config.model` (ResNet or ViT); `vit` also holds the MAE
decoder and the I-JEPA predictor; `heads` the projector / predictor MLPs, DINO head and SwAV
prototypes.
"""

from sslx.models.backbone import BACKBONES, Backbone, backbone_config
from sslx.models.heads import MLP, DINOHead, Prototypes
from sslx.models.resnet import STAGE_SIZES, STEMS, ResNet, drop_path, per_device_batch_norm, resnet
from sslx.models.util import abstract_module, count_flops, count_params
from sslx.models.vit import (
    VARIANTS,
    IJEPAPredictor,
    MAEDecoder,
    VisionTransformer,
    sincos_pos_embed_2d,
    vit,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "DINOHead",
    "IJEPAPredictor",
    "MAEDecoder",
    "MLP",
    "Prototypes",
    "ResNet",
    "STAGE_SIZES",
    "STEMS",
    "VARIANTS",
    "VisionTransformer",
    "abstract_module",
    "backbone_config",
    "count_flops",
    "count_params",
    "drop_path",
    "per_device_batch_norm",
    "resnet",
    "sincos_pos_embed_2d",
    "vit",
]
