"""Barlow Twins (Zbontar et al. 2021): cross-correlation of two views' projections -> identity.

Launch (from the repository root):
  python -m sslx.main --config configs/barlow_twins.py --workdir runs/barlow_twins  # Fashion-MNIST
  python -m sslx.main --config configs/barlow_twins.py:cifar10 --workdir runs/barlow_twins_c10
  python -m sslx.main --config configs/barlow_twins.py:imagenet --workdir runs/barlow_twins_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: ResNet-18, 1000 epochs, batch 256: 92.10% linear top-1 (solo-learn's table,
    scripts/pretrain/cifar/barlow.yaml).
  imagenet: ResNet-50, 1000 epochs at batch 2048: 73.2% linear top-1 (Barlow Twins Table 1).
Deviation: the authors train biases and BatchNorm parameters with lr 0.0048 (x B/256) and the
weights with 0.2; our LARS has one lr, which biases and norms get without the trust ratio. The
paper's weight decay is 1.5e-6 (facebookresearch/barlowtwins main.py defaults to 1e-6).
"""

import ml_collections

from configs import _redundancy, common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("barlow_twins", dataset)
  c.loss = ml_collections.ConfigDict({"lambd": 0.0051, "scale": 1.0})
  if dataset == "fashion_mnist":
    # The cross-correlation term grows with D^2: lambd ~ 1 / D balances it at a small D.
    c.projector = _redundancy.projector((512, 512), 512)
    c.loss.lambd = 1 / 512
    c.loss.scale = 0.1
    c.optim.name = "lars"
    c.optim.lr = 0.3
    c.optim.weight_decay = 1e-4
    c.optim.trust_coefficient = 0.02
    c.optim.warmup_steps = 30
  elif dataset == "cifar10":  # solo-learn scripts/pretrain/cifar/barlow.yaml
    c.projector = _redundancy.projector((2048, 2048), 2048)
    c.loss.scale = 0.1
    _redundancy.solo_learn_cifar_lars(c)
    # solo-learn's asymmetric.yaml: saturation 0.2, solarisation on the second view only.
    c.augment.saturation = 0.2
    c.augment_view1 = ml_collections.ConfigDict({"solarize_prob": 0.0})
    c.augment_view2 = ml_collections.ConfigDict({"solarize_prob": 0.2})
  else:  # Barlow Twins Sec. 4 and facebookresearch/barlowtwins main.py
    c.projector = _redundancy.projector((8192, 8192), 8192)
    _redundancy.facebook_imagenet_lars(c, lr=0.2, weight_decay=1.5e-6, batch_size=2048,
                                       epochs=1000)
  if args.get("smoke"):
    _redundancy.shrink_for_smoke(c)
    c.loss.lambd = 1 / 16
  c.lock()
  return c
