"""MSN (Assran et al. 2022): masked anchor views match an EMA target's prototype assignment.

Launch (from the repository root):
  python -m sslx.main --config configs/msn.py --workdir runs/msn                   # Fashion-MNIST
  python -m sslx.main --config configs/msn.py:cifar10 --workdir runs/msn_c10
  python -m sslx.main --config configs/msn.py:imagenet --workdir runs/msn_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected (the evaluated encoder is the target's ViT, its [CLS] token):
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: not run here, and no published CIFAR-10 number; the ViT-S/4 of the other CIFAR
    presets with the released config's loss, schedule and crops scaled to 32 px.
  imagenet: the released configs/pretrain/msn_vits16.yaml: ViT-S/16, 1 + 1 random crops of 224
    (scale 0.3-1) and 10 focal crops of 96 (0.05-0.3), colour jitter of strength 0.5,
    grayscale 0.2, blur 0.5, 15% of the random anchor crop's patches dropped,
    1024 prototypes of 256 dimensions, temperature 0.1, sharpening 0.25, Sinkhorn, ME-MAX
    weight 1, AdamW lr 0.001 at batch 1024 (64 on each of 16 GPUs), 15 warm-up epochs, cosine
    to 1e-6, wd 0.04, gradients clipped at 3, EMA 0.996 -> 1, 800 epochs. The paper's results
    are low-shot (e.g. ImageNet with 1, 2 and 5 images per class, its Table 1); not run here.
Deviations: the weight decay is constant (MSN raises it 0.04 -> 0.4 by a cosine) and the
learning rate and EMA schedules span the run (MSN stretches them over 1.25x the epochs and stops
at 80%); gradients are clipped by their global norm including the prototypes' (MSN clips the
encoder's); the EMA momentum rises by a cosine (MSN: linearly); the views are `multicrop`, not
`augment`.
TPU: the ViT-S/16 preset fits a v5p-16 (8 chips, 128 images per chip): XLA's peak 3.2 of 95 GiB
  per chip (benchmarks/compile_check.py, compiled with drop-path 0;
  docs/results/compile-check.md).
"""

import ml_collections

from configs import _multicrop, common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("msn", dataset)
  c.model.name = "vit"
  c.head = ml_collections.ConfigDict({"hidden": 2048, "out_features": 256,
                                      "num_prototypes": 1024})
  c.loss = ml_collections.ConfigDict({
      "temperature": 0.1, "sharpen": 0.25, "me_max_weight": 1.0, "patch_drop": 0.15})
  c.optim.name = "adamw"
  c.optim.weight_decay = 0.04
  c.optim.weight_decay_exclude = ("prototypes",)
  c.optim.grad_clip_norm = 3.0
  if dataset == "fashion_mnist":
    c.multicrop = _multicrop.fashion_mnist(global_scale=(0.3, 1.0), local_scale=(0.05, 0.3))
    c.head.hidden = 512
    c.head.out_features = 128
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 30
    c.ema = common.ema_config(base=0.996, reference_batch_size=256)
  else:
    colour = "flip(p=0.5)|color_jitter(0.4, 0.4, 0.4, 0.1, p=0.8)|grayscale(p=0.2)"
    if dataset == "cifar10":
      c.batch_size = 256
      c.total_steps = common.epochs_to_steps(800, dataset, c.batch_size)
      sizes = (32, 16)
    else:
      c.model.vit.variant = "S/16"
      c.model.remat = "block"
      c.model.vit.scan = True
      c.batch_size = 1024
      c.total_steps = common.epochs_to_steps(800, dataset, c.batch_size)
      sizes = (224, 96)
      colour += "|blur(p=0.5)"  # MSN's make_transforms blurs both crop kinds (not at 32 px)
    c.multicrop = _multicrop.multicrop(
        {"number": 2, "size": sizes[0], "scale": (0.3, 1.0), "pipeline": colour},
        {"number": 10, "size": sizes[1], "scale": (0.05, 0.3), "pipeline": colour})
    c.optim.lr = 0.001 * 256 / 1024  # per 256 images: 0.001 at the released batch of 1024
    c.optim.warmup_steps = common.epochs_to_steps(15, dataset, c.batch_size)
    c.optim.end_lr_fraction = 1e-6 / 0.001
    c.ema = common.ema_config(base=0.996, reference_batch_size=1024)
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    _multicrop.shrink_for_smoke(c)
    c.head.hidden = 32
    c.head.out_features = 16
    c.head.num_prototypes = 64
  c.lock()
  return c
