"""VI-SimSiam (Nakamura et al. 2023): SimSiam with a power spherical posterior whose concentration
kappa is an extra predictor output, trained by the target direction's negative log-likelihood.

Launch (from the repository root):
  python -m sslx.main --config configs/vi_simsiam.py --workdir runs/vi_simsiam      # Fashion-MNIST
  python -m sslx.main --config configs/vi_simsiam.py:cifar10 --workdir runs/vi_simsiam_c10
  python -m sslx.main --config configs/vi_simsiam.py:imagenet --workdir runs/vi_simsiam_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10 / imagenet: the paper reports VI-SimSiam on par with SimSiam (ImageNet-100, CIFAR-10,
    ImageNet); its training settings and numbers could not be looked up here (no public code
    or paper text in reach), so these variants are SimSiam's recipes unchanged (configs/simsiam.py:
    ResNet-18 800 epochs 91.8% kNN for SimSiam on CIFAR-10; ResNet-50 100 epochs 68.1% linear
    for SimSiam on ImageNet) and the reference numbers are SimSiam's.
Where kappa comes from (one more output of the predictor's last layer, softplus + 1e-3) is this
implementation's reading of "the predictor outputs mu and kappa"; not checked against the
authors' code. The SimSiam deviation (decayed predictor learning rate) applies too.
"""

import ml_collections

from configs import common
from configs.simsiam import add_simsiam_fields, shrink_simsiam_for_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("vi_simsiam", dataset)
  add_simsiam_fields(c, dataset)
  if args.get("smoke"):
    shrink_simsiam_for_smoke(c)
  c.lock()
  return c
