"""MoCo v2 (Chen et al. 2020): InfoNCE of queries against EMA keys with a queue of negatives.

Launch (from the repository root):
  python -m sslx.main --config configs/moco_v2.py --workdir runs/moco_v2            # Fashion-MNIST
  python -m sslx.main --config configs/moco_v2.py:cifar10 --workdir runs/moco_v2_c10
  python -m sslx.main --config configs/moco_v2.py:imagenet --workdir runs/moco_v2_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: ResNet-18, 1000 epochs, batch 256: 92.9% linear top-1 (solo-learn's table, "MoCo
    V2+": symmetric loss, momentum 0.99 -> 0.999).
  imagenet: ResNet-50, 200 epochs at batch 256: 67.5% linear top-1 (MoCo v2 Table 1; 800
    epochs: 71.1%, Table 2).
Shuffle-BN: `shuffle_bn_groups` = G > 0 normalises the query encoder's BatchNorms per group of
B/G consecutive examples and the key encoder's per group of a random permutation of the batch,
MoCo's per-GPU BN with shuffling (Sec. 3.3) simulated with G groups on any number of devices;
0 uses the global batch (SyncBN). imagenet uses G = 8, the paper's 8 GPUs of 32 images.
The EMA scaling rule: at another batch_size the momentum becomes base ** (batch_size /
ema.reference_batch_size) while optim.lr_scaling scales the learning rate
(--config.ema.scaling_rule=False turns the momentum rule off).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("moco_v2", dataset)
  # MoCo v2's MLP head: Linear -> ReLU -> Linear, no BatchNorm (moco builder.py, --mlp).
  c.projector = ml_collections.ConfigDict({"hidden": (2048,), "out_features": 128,
                                           "norm": "none", "norm_last": False})
  c.loss = ml_collections.ConfigDict({"temperature": 0.2, "symmetric": False})
  c.queue_size = 65536
  c.shuffle_bn_groups = 0
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  if dataset == "fashion_mnist":
    c.projector.hidden = (512,)
    c.loss.symmetric = True  # twice the signal per step in the short table budget
    c.queue_size = 4096
    c.optim.lr = 0.3
    c.optim.weight_decay = 1e-4
    c.optim.warmup_steps = 30
    # 0.999 would leave the key encoder near its random start after 300 steps.
    c.ema = common.ema_config(base=0.99, reference_batch_size=256)
  elif dataset == "cifar10":  # solo-learn scripts/pretrain/cifar/mocov2plus.yaml
    c.batch_size = 256
    c.total_steps = common.epochs_to_steps(1000, dataset, c.batch_size)
    c.projector.out_features = 256
    c.loss.symmetric = True
    c.queue_size = 32768
    c.optim.lr = 0.3
    c.optim.weight_decay = 1e-4
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
    c.ema = common.ema_config(base=0.99, final=0.999, reference_batch_size=256)
    c.augment.blur_prob = 0.5  # solo-learn's symmetric_weak augmentations keep blur at 32 px
  else:  # MoCo v2 (Sec. 2 and facebookresearch/moco main_moco.py --mlp --aug-plus --cos)
    c.batch_size = 256
    c.total_steps = common.epochs_to_steps(200, dataset, c.batch_size)
    c.optim.lr = 0.03
    c.optim.weight_decay = 1e-4
    c.optim.warmup_steps = 0  # cosine schedule without warm-up
    c.ema = common.ema_config(base=0.999, reference_batch_size=256, schedule="constant")
    c.shuffle_bn_groups = 8
    c.augment.crop_scale = (0.2, 1.0)
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    c.projector.hidden = (32,)
    c.projector.out_features = 16
    c.queue_size = 64
  c.lock()
  return c
