"""Config pieces shared by the redundancy-reduction methods' configs (barlow_twins, vicreg,
mixed_barlow_twins, w_mse, ssl_ey): their published recipes reuse a few settings verbatim."""

import ml_collections

from configs import common


def projector(hidden: tuple, out_features: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"hidden": tuple(hidden), "out_features": out_features})


def solo_learn_cifar_lars(c: ml_collections.ConfigDict) -> None:
  """solo-learn's CIFAR recipe for Barlow Twins / VICReg / SSL-EY (scripts/pretrain/cifar/
  {barlow,vicreg,ssley}.yaml): batch 256, 1000 epochs, LARS lr 0.3 x B/256, wd 1e-4, eta 0.02,
  biases and norms excluded, 10 warm-up epochs then cosine to 0. Not reproduced: LARS's
  clip_lr (the trust ratio capped so the local lr never exceeds the global one)."""
  c.batch_size = 256
  c.total_steps = common.epochs_to_steps(1000, "cifar10", c.batch_size)
  c.optim.name = "lars"
  c.optim.lr = 0.3
  c.optim.weight_decay = 1e-4
  c.optim.trust_coefficient = 0.02
  c.optim.warmup_steps = common.epochs_to_steps(10, "cifar10", c.batch_size)


def solo_learn_cifar_vicreg_views(c: ml_collections.ConfigDict) -> None:
  """solo-learn's VICReg / SSL-EY CIFAR views: crops of scale (0.2, 1), saturation 0.2,
  solarisation 0.1 on both views."""
  c.augment.update(crop_scale=(0.2, 1.0), saturation=0.2, solarize_prob=0.1)


def facebook_imagenet_lars(c: ml_collections.ConfigDict, *, lr: float, weight_decay: float,
                           batch_size: int, epochs: int) -> None:
  """The ImageNet recipe of facebookresearch/barlowtwins and /vicreg (also mix-bt's and SSL-EY's
  ImageNet code): LARS (eta 0.001, biases and norms excluded) at lr x B/256, 10 warm-up epochs,
  cosine to lr / 1000; the asymmetric BYOL views (blur 1.0 / 0.1, solarisation 0 / 0.2,
  saturation 0.2). Barlow Twins' separate bias lr (0.0048 vs 0.2 for weights) has no
  counterpart: our LARS gives biases and norms the weights' lr without the trust ratio."""
  c.batch_size = batch_size
  c.total_steps = common.epochs_to_steps(epochs, "imagenet", batch_size)
  c.optim.name = "lars"
  c.optim.lr = lr
  c.optim.weight_decay = weight_decay
  c.optim.warmup_steps = common.epochs_to_steps(10, "imagenet", batch_size)
  c.optim.end_lr_fraction = 0.001
  common.byol_views(c)


def shrink_for_smoke(c: ml_collections.ConfigDict, *, hidden: int = 32, out_features: int = 16
                     ) -> None:
  common.shrink_for_smoke(c)
  c.projector.hidden = (hidden,) * len(c.projector.hidden)
  c.projector.out_features = out_features
