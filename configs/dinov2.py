"""DINOv2 (Oquab et al. 2024): DINO's [CLS] and iBOT's masked-patch self-distillation, each with
its own head, Sinkhorn-Knopp teacher targets, KoLeo on the student's [CLS] features.

Launch (from the repository root):
  python -m sslx.main --config configs/dinov2.py --workdir runs/dinov2           # Fashion-MNIST
  python -m sslx.main --config configs/dinov2.py:imagenet --workdir runs/dinov2_in  # ViT-L/16
  python -m sslx.main --config configs/dinov2.py:imagenet,b14 --workdir runs/dinov2_b14
Variants: `smoke` (seconds; used by the tests), combinable with a dataset; on imagenet `s14` or
`b14` for a ViT-S/14 or B/14 with the LVD-142M recipe's heads and crops (below).
Expected (the evaluated encoder is the teacher's backbone, its [CLS] token):
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  imagenet: ViT-L/16 on ImageNet-1k for 100 DINOv2 "epochs" of 1250 steps at batch 2048, the
    authors' "fast setup" (facebookresearch/dinov2 configs/train/vitl16_short.yaml over
    ssl_default_config.yaml): 81.6% kNN and 82.9% linear top-1 (the repository's README).
  imagenet,s14 / imagenet,b14: ViT-S/14 / B/14 with 224-px global and 98-px local crops, 4
    registers, separate heads of 131072 prototypes and Sinkhorn-Knopp targets (vitl14.yaml's
    recipe, at its lr and schedule). The published ViT-S/14 and B/14 (81.1% and 84.5% linear
    on ImageNet-1k, Oquab et al. Table 4) are distilled from a ViT-g/14 trained on LVD-142M,
    which no ImageNet-1k run reproduces; these presets give the architecture and recipe, not
    that number.
Deviations from facebookresearch/dinov2 (ssl_meta_arch.py, train/train.py):
  - the patch head runs on all patch tokens of the global crops (DINOv2 gathers the masked
    ones first): the same loss, more memory;
  - drop-path rates rise linearly over the blocks (DINOv2: drop_path_uniform, every block the
    same rate); local crops use sine-cosine position embeddings computed at their grid;
  - gradients are clipped by their global norm (DINOv2 clips each parameter's);
  - the last layers of the heads are frozen by step count, the lr of the last layer otherwise
    follows the common schedule (DINOv2: the same);
  - model.dtype bfloat16 compute in the imagenet presets (DINOv2: float16 under FSDP mixed
    precision); parameters and losses float32.
TPU: the ViT-L/16 preset fits a v5p-64 (32 chips, 64 images per chip): XLA's peak 57.5 of 95
  GiB per chip (benchmarks/compile_check.py, scanned blocks with remat, compiled with drop-path
  0; docs/results/compile-check.md).
"""

import ml_collections

from configs import _multicrop, common, dino
from sslx.data import views

# The ViT sizes of the s14 / b14 variants.
PATCH14_VARIANTS = {"s14": "S/14", "b14": "B/14"}
# DINOv2 counts its "epochs" in fixed numbers of iterations (train.OFFICIAL_EPOCH_LENGTH), not
# passes over the data: at batch 2048, 100 of them are about 200 passes over ImageNet-1k.
ITERATIONS_PER_EPOCH = 1250


def _head(out_features: int, hidden: int = 2048, bottleneck: int = 256
          ) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "out_features": out_features, "hidden": hidden, "bottleneck": bottleneck, "num_layers": 3,
      "norm": "none", "norm_last_layer": True})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg, extra=tuple(PATCH14_VARIANTS))
  if dataset == "cifar10":
    raise ValueError("configs/dinov2.py: no cifar10 preset (the DINOv2 paper gives no CIFAR "
                     "recipe); use fashion_mnist or imagenet")
  patch14 = [k for k in PATCH14_VARIANTS if args.get(k)]
  if patch14 and (dataset != "imagenet" or len(patch14) > 1):
    raise ValueError(f"configs/dinov2.py: {patch14} are variants of imagenet, one at a time; "
                     f"got {arg!r}")
  c = common.method_config("dinov2", dataset)
  c.model.name = "vit"
  # ssl_default_config.yaml: the [CLS] head; the patch tokens share it unless separate_head.
  c.head = _head(65536)
  c.loss = ml_collections.ConfigDict({
      "student_temp": 0.1,
      # One teacher temperature for both terms, warmed up from 0.04 to 0.07.
      "teacher_temp": 0.07, "warmup_teacher_temp": 0.04, "warmup_teacher_temp_steps": 0,
      "centering": "centering",  # centering (running centers) | sinkhorn_knopp
      "center_momentum": 0.9, "center_momentum2": 0.9,
      "lambda1": 1.0, "lambda2": 1.0,  # weights of the [CLS] (DINO) and patch (iBOT) terms
      "koleo_weight": 0.1,
      "freeze_last_layer_steps": 0})
  # Masks: half the images unmasked, the others U(0.1, 0.5) of their patches in blocks
  # (mask_sample_probability 0.5, mask_ratio_min_max [0.1, 0.5]).
  c.ibot = ml_collections.ConfigDict({
      "pred_ratio": (0.0, 0.3), "pred_ratio_var": (0.0, 0.2), "separate_head": False,
      "head": _head(65536)})
  c.model.vit.layer_scale_init = 1e-5
  c.optim.name = "adamw"
  c.optim.lr_scaling = "sqrt"  # DINOv2's sqrt_wrt_1024; lr below is per 256 images
  c.optim.grad_clip_norm = 3.0
  c.optim.weight_decay = 0.04
  c.optim.weight_decay_schedule = "cosine"
  c.optim.weight_decay_end = 0.4
  c.optim.layer_decay = 0.9
  c.optim.patch_embed_lr_multiplier = 0.2
  if dataset == "fashion_mnist":
    # iBOT's Fashion-MNIST preset (common's ViT: 4-pixel patches, 7 x 7 grid, width 128, 4
    # blocks; 2 local crops), with DINOv2's own parts: separate heads, Sinkhorn-Knopp targets,
    # KoLeo, LayerScale, layer-wise lr decay, the weight-decay cosine.
    c.multicrop = _multicrop.fashion_mnist(global_scale=(0.4, 1.0), local_scale=(0.1, 0.4),
                                           local_number=2)
    c.head = _head(512, hidden=256, bottleneck=64)
    c.ibot.separate_head = True
    c.ibot.head = _head(512, hidden=256, bottleneck=64)
    c.head.norm = c.ibot.head.norm = "batch"  # as DINO's and iBOT's Fashion-MNIST presets
    c.loss.centering = "sinkhorn_knopp"
    # A sharp teacher from the start: the 200-step table run has no room for a warm-up.
    c.loss.teacher_temp = 0.04
    c.loss.freeze_last_layer_steps = 20
    c.optim.lr = 1e-3
    c.optim.lr_scaling = "linear"
    c.optim.warmup_steps = 20
    c.ema = common.ema_config(base=0.99, reference_batch_size=256)
  else:  # ssl_default_config.yaml + vitl16_short.yaml (ImageNet-1k, 100 epochs)
    crops = views.DINO_MULTICROP
    c.multicrop = _multicrop.multicrop({**crops["global"], "scale": (0.32, 1.0)},
                                       {**crops["local"], "number": 8, "scale": (0.05, 0.32)})
    c.model.vit.variant = "L/16"
    c.model.vit.drop_path_rate = 0.3
    c.model.remat = "block"
    c.model.vit.scan = True
    c.batch_size = 2048  # 64 per GPU on 32 GPUs
    epochs, warmup_epochs = 100, 10
    c.optim.lr = 0.004 * (256 / 1024) ** 0.5  # base_lr 0.004 at 1024 images, sqrt scaling
    c.ema = common.ema_config(base=0.992, reference_batch_size=2048)
    if patch14:  # vitl14.yaml's recipe (ImageNet-22k there) on a ViT-S/14 or B/14
      c.model.vit.variant = PATCH14_VARIANTS[patch14[0]]
      c.model.vit.num_registers = 4
      c.model.vit.drop_path_rate = 0.4
      c.multicrop["local"]["size"] = 98
      c.head = _head(131072, bottleneck=384)
      c.ibot.separate_head = True
      c.ibot.head = _head(131072, bottleneck=384)
      c.loss.centering = "sinkhorn_knopp"
      c.batch_size = 3072  # 32 per GPU on 96 GPUs
      epochs, warmup_epochs = 500, 80
      c.optim.lr = 2e-4 * (256 / 1024) ** 0.5
      c.optim.weight_decay_end = 0.2
      c.optim.layer_decay = 1.0
      c.ema = common.ema_config(base=0.994, reference_batch_size=3072)
    c.total_steps = epochs * ITERATIONS_PER_EPOCH
    c.optim.warmup_steps = warmup_epochs * ITERATIONS_PER_EPOCH
    c.loss.warmup_teacher_temp_steps = 30 * ITERATIONS_PER_EPOCH
    c.loss.freeze_last_layer_steps = ITERATIONS_PER_EPOCH
    c.optim.end_lr_fraction = 1e-6 / (c.optim.lr * (c.batch_size / 256) ** 0.5)  # min_lr 1e-6
  if args.get("smoke"):
    dino.shrink_for_smoke(c)
    c.ibot.head = _head(64, hidden=32, bottleneck=16)
    c.ibot.head.norm = "batch"
  c.lock()
  return c
