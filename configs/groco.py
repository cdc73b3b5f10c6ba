"""GroCo (Shvetsova et al. 2023, "Learning by Sorting"): each anchor's positive sorted above its
10 hardest in-view negatives by a differentiable sorting network; SimCLR's views and network.

Launch (from the repository root):
  python -m sslx.main --config configs/groco.py --workdir runs/groco               # Fashion-MNIST
  python -m sslx.main --config configs/groco.py:cifar10 --workdir runs/groco_c10
  python -m sslx.main --config configs/groco.py:imagenet --workdir runs/groco_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: not run here and no published CIFAR-10 number; SimCLR's CIFAR recipe
    (configs/simclr.py) with GroCo's loss. fashion_mnist is SimCLR's preset too.
  imagenet: the authors' configs/2views_100ep.yaml (github.com/ninatu/learning_by_sorting):
    ResNet-50, 2 views of 224 with DINO's global-view transforms, a 3-layer projector of 2048,
    batch 1024, SGD momentum 0.9 (no LARS) at lr 0.75 x B/256 after one warm-up epoch, wd 1e-6,
    100 epochs: 60.5% kNN (k = 20) / 69.2% linear top-1 (its README; 800 epochs: 65.3 / 71.2).
Loss settings (`loss`): num_negatives (k, the authors' 10), steepness (1), relaxation ("cauchy"),
stop_gradient (positives and negatives constant; True as the authors).
"""

import ml_collections

from configs import common, simclr


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  # SimCLR's presets (views, network, optimizer) on Fashion-MNIST and CIFAR-10, its loss replaced.
  c = simclr.get_config(dataset)
  c.unlock()
  c.experiment = "groco"
  c.loss = ml_collections.ConfigDict({"num_negatives": 10, "steepness": 1.0,
                                      "relaxation": "cauchy", "stop_gradient": True})
  if dataset == "imagenet":  # the authors' configs/2views_100ep.yaml
    c.projector.hidden = (2048, 2048)
    c.projector.out_features = 2048
    c.batch_size = 1024
    c.total_steps = common.epochs_to_steps(100, dataset, c.batch_size)
    c.optim.name = "sgd"
    c.optim.lr = 0.75
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = common.epochs_to_steps(1, dataset, c.batch_size)
    common.byol_views(c)  # DINO's global-view transforms, which are BYOL's
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    c.projector.hidden = (32,)
    c.projector.out_features = 16
  c.lock()
  return c
