"""Mixed Barlow Twins (Bandara et al. 2023): Barlow Twins + a MixUp regulariser on the
cross-correlations of mixed images.

Launch (from the repository root):
  python -m sslx.main --config configs/mixed_barlow_twins.py --workdir runs/mixbt  # Fashion-MNIST
  python -m sslx.main --config configs/mixed_barlow_twins.py:cifar10 --workdir runs/mixbt_c10
  python -m sslx.main --config configs/mixed_barlow_twins.py:imagenet --workdir runs/mixbt_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: ResNet-18, batch 256, 2000 epochs (scripts-pretrain-resnet18/cifar10.sh): 92.58%
    linear, 90.52% kNN top-1 (github.com/wgcban/mix-bt README, section 3.1).
  imagenet: ResNet-50, 1000 epochs at batch 1024, lambda_reg 2.0: 74.06% linear top-1 (mix-bt
    README, section 3.4; 300 epochs with lambda_reg 1.0: 72.2%).
loss.reg_weight multiplies sslx.losses.mixed_barlow_twins_regularizer, which includes lambd / 2
(as mix-bt's ImageNet code): their ImageNet lambda_mixup is the weight as is, their CIFAR
mixup_loss_scale s is a weight of 2 s. MixUp ratio ~ Beta(mixup_alpha, mixup_alpha) = Beta(1, 1).
Deviations from mix-bt's CIFAR code (main.py): its projections are l2-normalised before the
Barlow Twins standardisation, which uses the unbiased std (sslx.losses.barlow_twins: the raw
projections, biased variance as the original Barlow Twins); AdamW's decoupled weight decay
instead of Adam's L2 term. ImageNet: one LARS lr for weights and biases (they use 0.2 / 0.0048).
"""

import ml_collections

from configs import _redundancy, common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("mixed_barlow_twins", dataset)
  # reg_warmup_steps: the weight rises linearly from 0 over these steps (0: constant).
  c.loss = ml_collections.ConfigDict({"lambd": 0.0051, "scale": 1.0, "reg_weight": 2.0,
                                      "mixup_alpha": 1.0, "reg_warmup_steps": 0})
  if dataset == "fashion_mnist":  # as configs/barlow_twins.py, plus mix-bt's CIFAR weight
    c.projector = _redundancy.projector((512, 512), 512)
    c.loss.lambd = 1 / 512
    c.loss.scale = 0.1
    c.loss.reg_weight = 8.0
    c.optim.name = "lars"
    c.optim.lr = 0.3
    c.optim.weight_decay = 1e-4
    c.optim.trust_coefficient = 0.02
    c.optim.warmup_steps = 30
  elif dataset == "cifar10":  # mix-bt scripts-pretrain-resnet18/cifar10.sh and main.py
    c.batch_size = 256
    c.total_steps = common.epochs_to_steps(2000, dataset, c.batch_size)
    c.projector = _redundancy.projector((512,), 1024)
    c.loss.lambd = 0.0078125
    c.loss.reg_weight = 8.0  # mixup_loss_scale 4.0
    # Adam, lr 0.01 x B/256 after 10 warm-up epochs, cosine to 1/1000 of it, wd 1e-6.
    c.optim.name = "adamw"
    c.optim.lr = 0.01
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
    c.optim.end_lr_fraction = 0.001
    # Their CifarPairTransform is SimCLR's CIFAR augmentation, the cifar10 preset.
  else:  # mix-bt scripts-pretrain-resnet50/imagenet.sh, main_imagenet.py (--epochs 1000 run)
    c.projector = _redundancy.projector((8192, 8192), 8192)
    c.loss.reg_weight = 2.0
    _redundancy.facebook_imagenet_lars(c, lr=0.2, weight_decay=1e-6, batch_size=1024,
                                       epochs=1000)
    c.loss.reg_warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
  if args.get("smoke"):
    _redundancy.shrink_for_smoke(c)
    c.loss.lambd = 1 / 16
    c.loss.reg_warmup_steps = min(c.loss.reg_warmup_steps, 3)
  c.lock()
  return c
