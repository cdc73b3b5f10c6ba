"""SwAV (Caron et al. 2020): swapped prediction of Sinkhorn codes over prototypes, multi-crop.

Launch (from the repository root):
  python -m sslx.main --config configs/swav.py --workdir runs/swav                 # Fashion-MNIST
  python -m sslx.main --config configs/swav.py:cifar10 --workdir runs/swav_c10
  python -m sslx.main --config configs/swav.py:imagenet --workdir runs/swav_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: ResNet-18, 2 crops of 32 px, 1000 epochs, batch 256: 89.2% linear top-1 (solo-learn's
    table, scripts/pretrain/cifar/swav.yaml).
  imagenet: ResNet-50, 2x224 + 6x96 crops, 800 epochs at batch 4096, LARS lr 4.8: 75.3% linear
    top-1 (SwAV Table 1; facebookresearch/swav scripts/swav_800ep_pretrain.sh). The batch-256
    recipe (swav_200ep_bs256_pretrain.sh: lr 0.6, queue 3840 from epoch 15, prototypes frozen
    for 5005 iterations, 200 epochs) reaches 72.7%.
Notes: the prototypes are l2-normalised in the forward pass (see experiments/swav.py) rather
than rewritten after each step; multicrop.local.number=0 gives the 2-crop variant. The multi-crop
views are `multicrop` (sslx.data.views.multi_crop groups), not `augment`.
"""

import ml_collections

from configs import _multicrop, common
from sslx.data import views


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("swav", dataset)
  c.projector = ml_collections.ConfigDict({"hidden": (2048,), "out_features": 128})
  c.loss = ml_collections.ConfigDict({
      "num_prototypes": 3000, "temperature": 0.1, "epsilon": 0.05, "sinkhorn_iterations": 3,
      # SwAV's freeze_prototypes_niters, its queue_length and the step epoch_queue_starts.
      "freeze_prototypes_steps": 0, "queue_length": 0, "queue_start_step": 0})
  c.optim.name = "lars"
  if dataset == "fashion_mnist":
    c.multicrop = _multicrop.fashion_mnist(global_scale=(0.25, 1.0), local_scale=(0.08, 0.25))
    c.projector.hidden = (512,)
    c.loss.num_prototypes = 100
    # Batch 256 runs need the queue (SwAV Sec. 4.2 / App.): 8 batches, from step 40.
    c.loss.queue_length = 2048
    c.loss.queue_start_step = 40
    c.loss.freeze_prototypes_steps = 20
    c.optim.lr = 1.0
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = 30
  elif dataset == "cifar10":
    # solo-learn scripts/pretrain/cifar/swav.yaml: 2 crops of 32 px with its symmetric.yaml
    # augmentation (jitter 0.8, 0.8, 0.8, 0.2 p 0.8, grayscale 0.2, blur 0.5, scale 0.08-1),
    # queue 3840 from epoch 50, prototypes frozen for 2 epochs, LARS lr 0.6, eta 0.02 (its
    # clip_lr, capping the trust ratio, is not reproduced).
    c.batch_size = 256
    c.total_steps = common.epochs_to_steps(1000, dataset, c.batch_size)
    symmetric = ("flip(p=0.5)|color_jitter(0.8, 0.8, 0.8, 0.2, p=0.8)|grayscale(p=0.2)"
                 "|blur(p=0.5)")
    c.multicrop = _multicrop.multicrop(
        {"number": 2, "size": 32, "scale": (0.08, 1.0), "pipeline": symmetric},
        {"number": 0, "size": 16, "scale": (0.05, 0.14), "pipeline": symmetric})
    c.loss.queue_length = 3840
    c.loss.queue_start_step = common.epochs_to_steps(50, dataset, c.batch_size)
    c.loss.freeze_prototypes_steps = common.epochs_to_steps(2, dataset, c.batch_size)
    c.optim.lr = 0.6
    c.optim.trust_coefficient = 0.02
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
  else:  # facebookresearch/swav scripts/swav_800ep_pretrain.sh
    c.multicrop = ml_collections.ConfigDict(views.SWAV_MULTICROP)
    c.total_steps = common.epochs_to_steps(800, dataset, c.batch_size)
    # base_lr 4.8 at batch 4096 = 0.3 per 256; final_lr 0.0048; 10 warm-up epochs (the authors
    # start the warm-up at 0.3, here at 0); freeze_prototypes_niters 313 = one epoch; no queue
    # at batch 4096 (queue_length 0 in that script).
    c.optim.lr = 0.3
    c.optim.end_lr_fraction = 0.001
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
    c.loss.freeze_prototypes_steps = common.epochs_to_steps(1, dataset, c.batch_size)
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    _multicrop.shrink_for_smoke(c)
    c.projector.hidden = (32,)
    c.projector.out_features = 16
    c.loss.num_prototypes = 20
    c.loss.queue_length = 2 * c.batch_size
    c.loss.queue_start_step = 0
    c.loss.freeze_prototypes_steps = 2
  c.lock()
  return c
