"""Encoders and heads (Flax NNX), used by the methods behind a functional boundary.

`Backbone` builds the encoder named by `config.model` (ResNet or ViT); `vit` also holds the MAE
decoder and the I-JEPA predictor; `heads` the projector / predictor MLPs, DINO head and SwAV
prototypes. Precision: `set_compute_dtype(model, "bfloat16")` makes every layer compute in
bfloat16 while parameters stay float32; encoders and heads return float32.
"""

from sslx.models.backbone import BACKBONES, Backbone, backbone_config
from sslx.models.heads import MLP, DINOHead, Prototypes
from sslx.models.resnet import STAGE_SIZES, STEMS, ResNet, drop_path, per_device_batch_norm, resnet
from sslx.models.util import (
    COMPUTE_DTYPES,
    REMAT_POLICIES,
    abstract_module,
    count_flops,
    count_params,
    set_compute_dtype,
)
from sslx.models.vit import (
    ATTENTION_IMPLEMENTATIONS,
    VARIANTS,
    IJEPAPredictor,
    MAEDecoder,
    VisionTransformer,
    sincos_pos_embed_2d,
    stack_block_params,
    unstack_block_params,
    vit,
)

__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "BACKBONES",
    "COMPUTE_DTYPES",
    "Backbone",
    "DINOHead",
    "IJEPAPredictor",
    "MAEDecoder",
    "MLP",
    "Prototypes",
    "REMAT_POLICIES",
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
    "set_compute_dtype",
    "sincos_pos_embed_2d",
    "stack_block_params",
    "unstack_block_params",
    "vit",
]
