"""iSogCLR (Qiu et al. 2023): SimCLR's views and projector, the robust global contrastive loss
with a learned temperature per training image.

Launch (from the repository root):
  python -m sslx.main --config configs/isogclr.py --workdir runs/isogclr           # Fashion-MNIST
  python -m sslx.main --config configs/isogclr.py:long_tailed --workdir runs/isogclr_lt
  python -m sslx.main --config configs/isogclr.py:cifar10 --workdir runs/isogclr_c10
  python -m sslx.main --config configs/isogclr.py:imagenet --workdir runs/isogclr_in
Variants: `smoke` (seconds; used by the tests), `long_tailed` (data.imbalance_ratio=100: the
first class keeps all its training images, the last 1%; Fashion-MNIST-LT has 14,886 of the
60,000), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md); the long-tailed
    comparison with SimCLR is its own table (benchmarks/imbalanced_table.py,
    docs/results/imbalanced.md).
  cifar10 / imagenet: not run here. The paper's image results are on CIFAR-10, CIFAR-100,
    ImageNet-100 and long-tailed versions of such data, not ImageNet-1k; sslx has not
    reproduced them. These presets keep SimCLR's recipes (configs/simclr.py) with the loss
    settings below.
Loss settings (`loss`), LibAUC's GCLoss_v1 defaults for the unimodal (image-image) loss:
tau_init 0.1 (every temperature's start), tau_min 0.05 and tau_max 0.7 (the clip), rho 0.3 (the
KL-ball radius; the paper tunes it in [0.1, 0.5]), gamma 0.9 (the moving average's weight of
the new estimate), eta 0.01 and beta 0.9 (the temperatures' step size and momentum weight).
Deviations: LibAUC tests whether a whole batch is unseen before its first moving-average
update; sslx tests each image.
"""

import ml_collections

from configs import common, simclr

# data.imbalance_ratio of the long_tailed variant (CIFAR-10-LT's most common ratio).
LONG_TAILED_RATIO = 100.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg, extra=("long_tailed",))
  c = simclr.get_config(",".join(k for k in args if k != "long_tailed") or None)
  with c.unlocked():
    c.experiment = "isogclr"
    c.loss = ml_collections.ConfigDict({
        "tau_init": 0.1, "tau_min": 0.05, "tau_max": 0.7, "rho": 0.3, "gamma": 0.9,
        "eta": 0.01, "beta": 0.9})
    if args.get("long_tailed"):
      c.data.imbalance_ratio = LONG_TAILED_RATIO
  del dataset  # the dataset preset is simclr's
  c.lock()
  return c
