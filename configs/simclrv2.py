"""SimCLRv2's semi-supervised pipeline (Chen, Kornblith, Swersky, Norouzi and Hinton 2020, "Big
Self-Supervised Models are Strong Semi-Supervised Learners"): three stages, one command each,
each reading the previous stage's workdir and each resumable like any run.

Launch (from the repository root):
  python -m sslx.main --config configs/simclrv2.py:pretrain,mnist --workdir runs/v2_pretrain
  python -m sslx.main --config configs/simclrv2.py:finetune,mnist,labels=4 \
      --workdir runs/v2_finetune_4 --config.simclrv2.pretrained=runs/v2_pretrain
  python -m sslx.main --config configs/simclrv2.py:distill,mnist,labels=4 \
      --workdir runs/v2_distill_4 --config.simclrv2.teacher=runs/v2_finetune_4
Variants: one stage (pretrain | finetune | distill); one dataset (mnist, the default |
  fashion_mnist | cifar10); labels=N labels per class (finetune, distill); smoke.

1. pretrain: SimCLR (experiments/simclr.py) with SimCLRv2's 3-layer projection head (two hidden
   layers as wide as the encoder's output in the paper, BatchNorm on the output), on every
   training image; label-free, shared by every label count.
2. finetune (experiments/simclrv2_finetune.py): encoder + the head's first layer + a new linear
   classifier, on the labelled images only: LARS at lr 0.005 sqrt(B) (0.16 at B = 1024), no
   weight decay, no warmup, cosine decay, 60 epochs of the labelled images with 1% of the labels
   or fewer, 30 above (the paper's App. B); the classifier excluded from LARS's trust ratio, as
   in the released code. No EMA: the evaluated model is the trained one.
3. distill (experiments/simclrv2_distill.py): a student of the classifier family
   (experiments/_semisup.py, from scratch) learns the fine-tuned teacher's softmax on the
   unlabelled images (temperature 1, distillation alone). Deviation: the student trains with
   the semi-supervised family's optimizer, augmentation, EMA and budget (USB's SGD), so its row
   in the semi-supervised table differs from FixMatch's only in the unlabelled objective; the
   paper distils with its pre-training optimizer (LARS) for 400 epochs.

Expected: docs/results/semi-supervised.md (its two SimCLRv2 rows: stage 2's fine-tuned network
and stage 3's student). The paper, ImageNet (its abstract): a ResNet-50 student distilled from a
big fine-tuned ResNet-152 (3x+SK) teacher reaches 73.9% / 77.5% top-1 with 1% / 10% of the
labels.
"""

import math

import ml_collections

from configs import _semisup, common, simclr

STAGES = ("pretrain", "finetune", "distill")


def _projector(dataset: str, smoke: bool) -> ml_collections.ConfigDict:
  """SimCLRv2's head: Linear-BN-ReLU twice, as wide as the encoder's features (the presets'
  ResNets: 16 smoke, 64 on the CPU, 512 ResNet-18), then Linear-BN (no scale / shift)."""
  width, out = (16, 16) if smoke else (512, 128) if dataset == "cifar10" else (64, 64)
  return ml_collections.ConfigDict({"hidden": (width, width), "out_features": out,
                                    "norm": "batch", "norm_last": True})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg)
  stages = [k for k in args if k in STAGES]
  if len(stages) != 1:
    raise ValueError(f"config variant {arg!r}: name one stage of {list(STAGES)}, got {stages}")
  stage = stages[0]
  if stage == "pretrain" and "labels" in args:
    raise ValueError("config variant labels=N: the pretrain stage uses no labels (it is shared "
                     "by every label count); give labels=N to finetune and distill")
  rest = ",".join(k if v is True else f"{k}={v}" for k, v in args.items() if k != stage)
  smoke = bool(args.get("smoke"))
  # The classifier stages' preset (data, model, split, views; shrunk by smoke); the
  # pre-training uses its model, so that stage 2 can load the encoder.
  c, semi_args = _semisup.semisup_config(
      "simclrv2_distill" if stage == "distill" else "simclrv2_finetune", rest)
  c = _semisup.finish(c, semi_args)
  if stage == "pretrain":
    return _pretrain(c.data.name, c.model, smoke)
  with c.unlocked():
    c.projector = _projector(c.data.name, smoke)
    c.simclrv2 = ml_collections.ConfigDict()
    if stage == "finetune":
      c.simclrv2.pretrained = ""  # the workdir of stage 1
      c.semi.uratio = 1  # the unlabelled part of the batch is read but not used: the smallest
      c.semi.ema_momentum = 0.0
      c.optim.update(name="lars", lr=0.08, lr_scaling="sqrt", weight_decay=0.0, momentum=0.9,
                     nesterov=False, warmup_steps=0, end_lr_fraction=0.0,
                     trust_ratio_exclude=("head",))
      if not smoke:
        c.total_steps = _finetune_steps(c, num_classes=10)  # mnist, fashion_mnist, cifar10
    else:
      c.simclrv2.teacher = ""  # the workdir of stage 2
      # The teacher's backbone; model is the student's (the same: self-distillation).
      c.simclrv2.teacher_model = ml_collections.ConfigDict(c.model.to_dict())
      c.loss.temperature = 1.0
      c.loss.distill_weight = 1.0
  c.lock()
  return c


def _finetune_steps(c, num_classes: int) -> int:
  """60 epochs of the labelled images with 1% of the labels or fewer, else 30 (SimCLRv2)."""
  train_size = common.TRAIN_EXAMPLES[c.data.name]
  per_class = c.semi.labels_per_class
  labelled = train_size if per_class == -1 else per_class * num_classes
  epochs = 60 if labelled <= 0.01 * train_size else 30
  return max(math.ceil(epochs * labelled / c.batch_size), 1)


def _pretrain(dataset: str, model: ml_collections.ConfigDict, smoke: bool
              ) -> ml_collections.ConfigDict:
  """SimCLR's preset for the dataset's family, with the classifier stages' model and SimCLRv2's
  3-layer head."""
  family = "cifar10" if dataset == "cifar10" else "fashion_mnist"
  c = simclr.get_config(f"{family},smoke" if smoke else family)
  with c.unlocked():
    c.data.name = dataset
    c.model = ml_collections.ConfigDict(model.to_dict())
    c.projector = _projector(dataset, smoke)
    if dataset == "mnist":
      c.augment.flip_prob = 0.0  # a flipped digit is no digit
    if not smoke and dataset != "cifar10":
      c.total_steps = 600
  c.lock()
  return c
