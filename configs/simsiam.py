"""SimSiam (Chen & He 2021): shared encoder + projector, predictor, stop-gradient negative cosine.

Launch (from the repository root):
  python -m sslx.main --config configs/simsiam.py --workdir runs/simsiam           # Fashion-MNIST
  python -m sslx.main --config configs/simsiam.py:cifar10 --workdir runs/simsiam_c10
  python -m sslx.main --config configs/simsiam.py:imagenet --workdir runs/simsiam_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: ResNet-18 (CIFAR stem), 800 epochs, batch 512: 91.8% kNN top-1 (SimSiam App. D).
  imagenet: ResNet-50, 100 epochs at batch 512: 68.1% linear top-1 (SimSiam Table 4).
Deviation: SimSiam keeps the predictor's learning rate fixed (not cosine-decayed, Sec. 4.2 and
main_simsiam.py --fix-pred-lr); the optimizer here has one schedule for every parameter, so
the predictor's learning rate decays too (the paper's Table 1 reports 68.1 fixed vs 67.7 decayed).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("simsiam", dataset)
  add_simsiam_fields(c, dataset)
  if args.get("smoke"):
    shrink_simsiam_for_smoke(c)
  c.lock()
  return c


def add_simsiam_fields(c: ml_collections.ConfigDict, dataset: str) -> None:
  """SimSiam's heads, optimizer and run length for `dataset` (shared with VI-SimSiam)."""
  # facebookresearch/simsiam: 3-layer projector of 2048 (BN on every layer), predictor
  # 2048 -> 512 -> 2048; SGD momentum 0.9, lr 0.05 x B/256, wd 1e-4, cosine, no warm-up.
  c.projector = ml_collections.ConfigDict({"hidden": (2048, 2048), "out_features": 2048})
  c.predictor = ml_collections.ConfigDict({"hidden": (512,)})
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.warmup_steps = 0
  if dataset == "fashion_mnist":
    # Smaller heads for the 128-d features; LARS at a high rate with a short warm-up, as
    # configs/byol.py, to learn within the table's few hundred steps (not tuned further).
    c.projector.hidden = (512,)
    c.projector.out_features = 512
    c.predictor.hidden = (128,)
    c.optim.name = "lars"
    c.optim.lr = 1.0
    c.optim.weight_decay = 1e-5
    c.optim.warmup_steps = 30
  elif dataset == "cifar10":
    # SimSiam App. D: ResNet-18 (CIFAR variant), 2-layer projector (output 2048), SGD lr 0.03
    # x B/256, wd 5e-4, batch 512, 800 epochs; augmentation as ImageNet's without blur.
    c.projector.hidden = (2048,)
    c.batch_size = 512
    c.total_steps = common.epochs_to_steps(800, dataset, c.batch_size)
    c.optim.lr = 0.03
    c.optim.weight_decay = 5e-4
    c.augment.crop_scale = (0.2, 1.0)
  else:  # SimSiam Sec. 3 / App. A: batch 512, 100 epochs, crops of scale [0.2, 1]
    c.batch_size = 512
    c.total_steps = common.epochs_to_steps(100, dataset, c.batch_size)
    c.optim.lr = 0.05
    c.optim.weight_decay = 1e-4
    c.augment.crop_scale = (0.2, 1.0)


def shrink_simsiam_for_smoke(c: ml_collections.ConfigDict) -> None:
  common.shrink_for_smoke(c)
  c.projector.hidden = (32,)
  c.projector.out_features = 32
  c.predictor.hidden = (16,)
