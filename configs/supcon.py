"""SupCon (Khosla et al. 2020): SUPERVISED contrastive learning. IT TRAINS ON THE LABELS
(batch["label"]): every view of every same-class example is a positive. It is the supervised
reference row of the methods table, not a self-supervised method.

Launch (from the repository root):
  python -m sslx.main --config configs/supcon.py --workdir runs/supcon              # Fashion-MNIST
  python -m sslx.main --config configs/supcon.py:cifar10 --workdir runs/supcon_c10
  python -m sslx.main --config configs/supcon.py:imagenet --workdir runs/supcon_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected (linear top-1, labels used in pre-training):
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: ResNet-50 (CIFAR stem), 1000 epochs at batch 1024: 96.0% (SupCon Table 2; settings of
    the authors' PyTorch code, HobbitLong/SupContrast README and main_supcon.py: SGD momentum 0.9,
    lr 0.5 at batch 1024, wd 1e-4, 10 warm-up epochs, cosine to lr x 1e-3, T 0.1, crops of scale
    0.2-1, projector 2048 -> 128).
  imagenet: ResNet-50, batch 6144: 78.7% (SupCon Table 2, with AutoAugment); settings of the
    authors' TensorFlow launch script (google-research supcon/scripts/supcon_imagenet_resnet50.sh:
    LARS lr 0.4 x B/256, wd 1e-3, 350 epochs, 12 warm-up epochs, T 0.1, a single linear
    projection 2048 -> 128).
Deviations: no AutoAugment here (SimCLR's augmentation instead); SimCLR's projector has
BatchNorm in its hidden layer where the authors' CIFAR head has none; the TF code also
l2-normalises the encoder output before the projection and scales the loss by T (a constant
factor on the gradient).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("supcon", dataset)
  # "batch" (the paper's) | "layer" | "none"; BatchNorm-free for optim.grad_cache_chunks > 1.
  c.projector = ml_collections.ConfigDict({"hidden": (2048,), "out_features": 128,
                                           "norm": "batch"})
  c.loss = ml_collections.ConfigDict({"temperature": 0.1})
  if dataset == "fashion_mnist":
    c.projector.hidden = (256,)
    c.projector.out_features = 64
    c.optim.name = "lars"
    c.optim.lr = 1.0
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = 50
  elif dataset == "cifar10":
    c.batch_size = 1024
    c.total_steps = common.epochs_to_steps(1000, dataset, c.batch_size)
    c.model.resnet.depth = 50
    c.augment.crop_scale = (0.2, 1.0)
    c.optim.name = "sgd"
    c.optim.lr = 0.5 * 256 / 1024  # 0.5 at batch 1024
    c.optim.weight_decay = 1e-4
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
    c.optim.end_lr_fraction = 1e-3
  else:
    c.batch_size = 6144
    c.total_steps = common.epochs_to_steps(350, dataset, c.batch_size)
    c.projector.hidden = ()
    c.optim.name = "lars"
    c.optim.lr = 0.4
    c.optim.weight_decay = 1e-3
    c.optim.warmup_steps = common.epochs_to_steps(12, dataset, c.batch_size)
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    c.projector.hidden = (32,)
    c.projector.out_features = 16
  c.lock()
  return c
