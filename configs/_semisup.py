"""Config pieces shared by the semi-supervised methods' configs (supervised, pseudo_label,
mean_teacher, fixmatch, flexmatch, freematch, softmatch, mixmatch): datasets, the labelled /
unlabelled split, weak and strong augmentation, USB's classic optimizer and EMA, and the variants.

Variants (`configs/fixmatch.py:mnist,labels=4`): one dataset of SEMI_DATASETS (default mnist),
`labels=N` labels per class (-1: every label), `smoke` (seconds; the tests).
"""

import math

import ml_collections

from configs import common

SEMI_DATASETS = ("mnist", "fashion_mnist", "cifar10")

# FixMatch's weak view: flip and a translation by up to 12.5% (pad-and-crop with reflection).
# MNIST digits are not flipped (a flipped 2 is no digit), as FixMatch skips flips on SVHN.
WEAK = "flip(p=0.5)|translate(0.125)"
WEAK_NO_FLIP = "translate(0.125)"
# The strong view: the weak one, RandAugment (USB: 3 ops of FixMatch's list, random magnitudes)
# and Cutout of up to half the side.
STRONG_OPS = "|randaugment(num_ops=3)|cutout(0.5)"


def semisup_config(experiment: str, arg: str | None) -> tuple[ml_collections.ConfigDict, dict]:
  """The config of a semi-supervised method before its own loss settings: (config, variant
  arguments). The caller sets `loss`, then calls `finish`."""
  args = common.parse_arg(arg)
  datasets = [k for k in args if k in SEMI_DATASETS]
  unknown = sorted(set(args) - set(SEMI_DATASETS) - {"smoke", "labels"})
  if unknown or len(datasets) > 1:
    raise ValueError(f"config variant {arg!r}: unknown {unknown} or more than one dataset "
                     f"{datasets}; known: one of {list(SEMI_DATASETS)}, 'labels=N', 'smoke'")
  dataset = datasets[0] if datasets else "mnist"
  c = common.method_config(experiment, "cifar10" if dataset == "cifar10" else "fashion_mnist")
  c.data.name = dataset
  c.semi = ml_collections.ConfigDict()
  s = c.semi
  s.labels_per_class = 4  # -1: every training label (the fully supervised row)
  s.uratio = 7  # unlabelled images per labelled one in a step (USB's uratio)
  s.unlabelled = "all"  # all: every training image, as USB | others: the unlabelled ones only
  weak = WEAK_NO_FLIP if dataset == "mnist" else WEAK
  s.weak = weak
  s.strong = weak + STRONG_OPS
  s.ema_momentum = 0.999  # the evaluated model is an EMA of the trained one (USB)
  s.unsup_weight = 1.0  # lambda_u
  s.unsup_warmup = 0.0  # linear ramp of lambda_u over this fraction of total_steps
  c.loss = ml_collections.ConfigDict()
  # USB's classic optimizer: SGD lr 0.03, Nesterov momentum 0.9, weight decay 5e-4 (not on
  # biases or norms), lr * cos(7 pi k / 16 K). Deviation: optax's cosine reaches the same final
  # lr, cos(7 pi / 16) = 0.195 of the peak, along 0.5 (1 + cos(pi k / K)) rescaled.
  c.optim.name = "sgd"
  c.optim.lr = 0.03
  c.optim.lr_scaling = "none"
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 5e-4
  c.optim.warmup_steps = 0
  c.optim.end_lr_fraction = math.cos(7 * math.pi / 16)
  # The classifier's own top-1 (Method.predict) is the headline; kNN on the EMA encoder's
  # features is cheap, the probe and the baselines are not needed (labels only is the baseline).
  c.eval.linear_probe = False
  c.eval.baselines = ()
  c.eval.every = 0
  c.eval.plots = False
  if dataset == "cifar10":
    # USB's classic CV setting. Deviation: USB's WRN-28-2 is not in sslx yet; the ResNet-18 with
    # the CIFAR stem (11M parameters against 1.5M) stands in.
    c.batch_size = 64
    c.total_steps = 2 ** 20
    c.checkpoint_every = 5000
  else:  # what trains in minutes on a 2-core CPU
    # An EMA of momentum 0.999 still holds 0.999^1000 = 37% of the initial weights after 1000
    # steps; 0.99 averages over the last ~100.
    s.ema_momentum = 0.99
    c.batch_size = 32
    c.total_steps = 1000
    c.log_every = 50
    c.checkpoint_every = 500
    c.model.resnet.stage_sizes = (1, 1, 1)
    c.model.resnet.width = 16
    c.model.resnet.stem_stride = 2
  labels = args.get("labels")
  if labels is not None and labels is not True:
    s.labels_per_class = int(labels)
  return c, args


def finish(c: ml_collections.ConfigDict, args: dict) -> ml_collections.ConfigDict:
  """The smoke variant and the lock."""
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    c.batch_size = 16
    c.semi.uratio = 2
    c.eval.linear_probe = False
  c.lock()
  return c
