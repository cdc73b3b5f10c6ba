"""Self-supervised and semi-supervised losses: pure functions of jax arrays.

This package imports only jax and numpy, so it can be used without the rest of sslx (no flax,
optax, data pipeline or checkpointing). Every loss takes ``axis_name=None`` for global arrays (one
device, or ``jax.jit`` over a mesh) or the mapped axis inside ``jax.shard_map``, and gives the same
value and gradient in all three settings.

Families: contrastive (``contrastive``, ``large_batch``), regression and distillation
(``regression``, ``distillation``), redundancy reduction and whitening (``redundancy``),
clustering (``clustering``), masked and predictive (``masked``), ranking (``ranking``) and
semi-supervised consistency (``semi_supervised``).
"""

from sslx.losses.contrastive import (
    nt_xent,
    info_nce,
    update_queue,
    negative_von_mises_fisher_weight,
    dcl,
    supcon,
    nearest_neighbor,
    nnclr,
    update_support_set,
    isogclr,
    memory_bank_nce,
)
from sslx.losses.large_batch import (
    nt_xent_blockwise,
)
from sslx.losses.regression import (
    negative_cosine,
    vi_simsiam,
    myow_mining,
    myow,
)
from sslx.losses.distillation import (
    dino,
    dino_center_update,
    ibot_patch,
    ibot_patch_center_update,
    msn,
    koleo,
    knowledge_distillation,
)
from sslx.losses.redundancy import (
    barlow_twins,
    mixed_barlow_twins_regularizer,
    vicreg,
    w_mse,
    cca_ey,
    pls_ey,
    sigreg,
    lejepa,
)
from sslx.losses.clustering import (
    sinkhorn_knopp,
    normalize_prototypes,
    swav,
    swav_update_queue,
)
from sslx.losses.masked import (
    patchify,
    mae,
    ijepa,
    data2vec_targets,
    data2vec,
)
from sslx.losses.ranking import (
    groco,
    halp_positives,
    halp,
)
from sslx.losses.semi_supervised import (
    fixmatch,
    flexmatch_init,
    flexmatch_thresholds,
    flexmatch,
    flexmatch_update,
    freematch_init,
    freematch,
    mean_teacher,
    soft_pseudo_label_mixup,
    softmatch_init,
    softmatch,
)

__all__ = [
    "barlow_twins",
    "cca_ey",
    "data2vec",
    "data2vec_targets",
    "dcl",
    "dino",
    "dino_center_update",
    "fixmatch",
    "flexmatch",
    "flexmatch_init",
    "flexmatch_thresholds",
    "flexmatch_update",
    "freematch",
    "freematch_init",
    "groco",
    "halp",
    "halp_positives",
    "ibot_patch",
    "ibot_patch_center_update",
    "ijepa",
    "info_nce",
    "isogclr",
    "knowledge_distillation",
    "koleo",
    "lejepa",
    "mae",
    "mean_teacher",
    "memory_bank_nce",
    "mixed_barlow_twins_regularizer",
    "msn",
    "myow",
    "myow_mining",
    "nearest_neighbor",
    "negative_cosine",
    "negative_von_mises_fisher_weight",
    "nnclr",
    "normalize_prototypes",
    "nt_xent",
    "nt_xent_blockwise",
    "patchify",
    "pls_ey",
    "sigreg",
    "sinkhorn_knopp",
    "soft_pseudo_label_mixup",
    "softmatch",
    "softmatch_init",
    "supcon",
    "swav",
    "swav_update_queue",
    "update_queue",
    "update_support_set",
    "vi_simsiam",
    "vicreg",
    "w_mse",
]
