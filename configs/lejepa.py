"""LeJEPA (Balestriero & LeCun 2025): multi-crop views predict the global views' mean
projection, SIGReg (random 1-D projections, Epps-Pulley test) keeps projections N(0, I).

Launch (from the repository root):
  python -m sslx.main --config configs/lejepa.py --workdir runs/lejepa             # Fashion-MNIST
  python -m sslx.main --config configs/lejepa.py:cifar10 --workdir runs/lejepa_c10
  python -m sslx.main --config configs/lejepa.py:imagenet --workdir runs/lejepa_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: not run here and no published CIFAR-10 number to compare with; the optimiser is
    the authors' MINIMAL.md one (AdamW lr 2e-3 per 256, wd 0.05, one warm-up epoch, cosine to
    half the peak) with its lambda 0.02; the crops (2 of 32 px + 4 local of 16 px) and the
    2048-2048-128 projector are ours (MINIMAL.md: 4 same-size views, a 16-d projection).
  imagenet: the paper's headline is 79% linear top-1 with ViT-H/14 (arXiv:2511.08544); this
    preset is ViT-L/14 for 100 epochs (the paper's ViT-L row pre-trains 100 epochs on IN-1K)
    with DINO's 2x224 + 8 local crops (98 px: 14-px patches) and lambda 0.05. The batch (1024),
    the 10 warm-up epochs and the projector are ours, with MINIMAL.md's AdamW scaled linearly:
    not the paper's table, so measure before quoting a number.
Loss settings (`loss`): lambd (the one trade-off), num_slices (SIGReg's random directions per
step; 256 as MINIMAL.md), t_max and num_knots (the Epps-Pulley integral on [-3, 3], 17 knots on
each half, the authors' defaults). The views are `multicrop`, not `augment`.
TPU: the ViT-L/14 preset fits a v5p-32 (16 chips, 64 images per chip): XLA's peak 15.0 of 95
  GiB per chip (benchmarks/compile_check.py, compiled with drop-path 0;
  docs/results/compile-check.md).
"""

import ml_collections

from configs import _multicrop, _redundancy, common
from sslx.data import views


def minimal_md_adamw(c: ml_collections.ConfigDict, dataset: str) -> None:
  """MINIMAL.md's optimiser: AdamW lr 2e-3 at batch 256 (scaled linearly here), wd 0.05,
  warm-up over one epoch, cosine decay to half the peak (its eta_min 1e-3)."""
  c.optim.name = "adamw"
  c.optim.lr = 2e-3
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = common.epochs_to_steps(1, dataset, c.batch_size)
  c.optim.end_lr_fraction = 0.5


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("lejepa", dataset)
  c.loss = ml_collections.ConfigDict({"lambd": 0.05, "num_slices": 256, "t_max": 3.0,
                                      "num_knots": 17})
  if dataset == "fashion_mnist":
    c.multicrop = _multicrop.fashion_mnist(global_scale=(0.3, 1.0), local_scale=(0.1, 0.3))
    c.projector = _redundancy.projector((512, 512), 64)
    minimal_md_adamw(c, dataset)
    c.optim.warmup_steps = 30
  elif dataset == "cifar10":
    c.batch_size = 256
    c.total_steps = common.epochs_to_steps(800, dataset, c.batch_size)
    colour = "flip(p=0.5)|color_jitter(0.4, 0.4, 0.2, 0.1, p=0.8)|grayscale(p=0.2)"
    c.multicrop = _multicrop.multicrop(
        {"number": 2, "size": 32, "scale": (0.3, 1.0), "pipeline": colour + "|solarize(p=0.2)"},
        {"number": 4, "size": 16, "scale": (0.05, 0.3), "pipeline": colour})
    c.projector = _redundancy.projector((2048, 2048), 128)
    c.loss.lambd = 0.02
    minimal_md_adamw(c, dataset)
  else:
    c.multicrop = ml_collections.ConfigDict(views.DINO_MULTICROP)
    c.multicrop.local.size = 98  # 7 x 7 patches of 14 px (DINO's 96 is for 16-px patches)
    c.model.name = "vit"
    c.model.vit.variant = "L/14"
    c.model.remat = "block"
    c.model.vit.scan = True
    c.model.vit.drop_path_rate = 0.1
    c.batch_size = 1024
    c.total_steps = common.epochs_to_steps(100, dataset, c.batch_size)
    c.projector = _redundancy.projector((2048, 2048), 128)
    minimal_md_adamw(c, dataset)
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
  if args.get("smoke"):
    _redundancy.shrink_for_smoke(c)
    _multicrop.shrink_for_smoke(c)
    c.loss.num_slices = 16
  c.lock()
  return c
