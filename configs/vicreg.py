"""VICReg (Bardes et al. 2022): invariance + variance hinge + covariance penalty on projections.

Launch (from the repository root):
  python -m sslx.main --config configs/vicreg.py --workdir runs/vicreg             # Fashion-MNIST
  python -m sslx.main --config configs/vicreg.py:cifar10 --workdir runs/vicreg_c10
  python -m sslx.main --config configs/vicreg.py:imagenet --workdir runs/vicreg_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: ResNet-18, 1000 epochs, batch 256: 92.07% linear top-1 (solo-learn's table,
    scripts/pretrain/cifar/vicreg.yaml).
  imagenet: ResNet-50, 1000 epochs at batch 2048, LARS lr 0.2 x B/256: 73.2% linear top-1
    (VICReg Table 1; facebookresearch/vicreg main_vicreg.py).
"""

import ml_collections

from configs import _redundancy, common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("vicreg", dataset)
  # lambda, mu, nu of the paper (invariance, variance, covariance), the same on every dataset.
  c.loss = ml_collections.ConfigDict({"sim_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0})
  if dataset == "fashion_mnist":
    c.projector = _redundancy.projector((512, 512), 512)
    c.optim.name = "lars"
    c.optim.lr = 0.3
    c.optim.weight_decay = 1e-4
    c.optim.trust_coefficient = 0.02
    c.optim.warmup_steps = 30
  elif dataset == "cifar10":  # solo-learn scripts/pretrain/cifar/vicreg.yaml
    c.projector = _redundancy.projector((2048, 2048), 2048)
    _redundancy.solo_learn_cifar_lars(c)
    _redundancy.solo_learn_cifar_vicreg_views(c)
  else:  # VICReg Sec. 4.1 / App. C and main_vicreg.py: 3 layers of 8192, wd 1e-6
    c.projector = _redundancy.projector((8192, 8192), 8192)
    _redundancy.facebook_imagenet_lars(c, lr=0.2, weight_decay=1e-6, batch_size=2048,
                                       epochs=1000)
  if args.get("smoke"):
    _redundancy.shrink_for_smoke(c)
  c.lock()
  return c
