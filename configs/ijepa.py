"""I-JEPA (Assran et al. 2023): a ViT context encoder, an EMA target encoder and a narrow
predictor regress the target encoder's features of 4 target blocks from one context block.

Launch (from the repository root):
  python -m sslx.main --config configs/ijepa.py --workdir runs/ijepa                # Fashion-MNIST
  python -m sslx.main --config configs/ijepa.py:imagenet --workdir runs/ijepa_in    # ViT-H/14
Variants: `smoke` (seconds; used by the tests), combinable with a dataset. cifar10 has no preset:
the paper publishes no CIFAR recipe to follow.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  imagenet: ViT-H/14 at 224, 300 epochs at batch 2048: 79.3% linear top-1 on average-pooled
    patch tokens (Assran et al. 2023, Table 1), ~72 h on 16 A100s in the paper.
Deviations from facebookresearch/ijepa configs/in1k_vith14_ep300.yaml, from what the library's
optimizer and EMA offer:
  - weight decay is constant at 0.04 (the reference raises it 0.04 -> 0.4 by a cosine schedule);
  - the warm-up starts from 0, not from start_lr 2e-4, and the cosine ends at 1e-6 exactly at the
    last step (the reference stretches its schedules by ipe_scale 1.25, so they stop short);
  - the EMA momentum rises 0.996 -> 1.0 along a cosine, not linearly (also over 1.25x the run);
  - model.dtype: float32 on fashion_mnist, bfloat16 compute in the cifar10 / imagenet presets
    (the reference trains in bfloat16 autocast); parameters and losses float32.
TPU: fits a v5p-64 (32 chips, 64 images per chip), with remat per block and scanned blocks:
  XLA's peak 17.8 of 95 GiB per chip (benchmarks/compile_check.py, results/compile_check.md).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  if dataset == "cifar10":
    raise ValueError("configs/ijepa.py: no cifar10 preset (the I-JEPA paper gives no CIFAR "
                     "recipe); use fashion_mnist or imagenet")
  c = common.method_config("ijepa", dataset)
  c.model.name = "vit"
  c.model.vit.class_token = False  # the reference ViT has none; features are patch tokens
  # Multi-block masking (Sec. 3; the yaml's mask: section): 4 targets of scale 0.15-0.2 and
  # aspect 0.75-1.5, one context block of scale 0.85-1.0 with every target removed.
  c.ijepa = ml_collections.ConfigDict()
  c.ijepa.num_targets = 4
  c.ijepa.target_scale = (0.15, 0.2)
  c.ijepa.target_aspect = (0.75, 1.5)
  c.ijepa.context_scale = (0.85, 1.0)
  c.ijepa.context_aspect = (1.0, 1.0)
  c.ijepa.num_context = 0  # 0: sslx.data.masks' default, a quarter of the patches
  c.ijepa.eval_encoder = "target"  # the paper evaluates the EMA target encoder (App. A.1)
  c.predictor = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.b1, c.optim.b2 = 0.9, 0.999  # torch.optim.AdamW's defaults, as the reference
  c.optim.lr_scaling = "linear"
  if dataset == "fashion_mnist":
    # common's ViT: 4-pixel patches (7 x 7 grid), width 128, 4 blocks, 4 heads. On 7 x 7 the
    # masks are 4 targets of 6 patches (2x3 to 4x3 blocks, cut to their first 6) and a 6 x 6
    # context block minus the targets, cut to 12 patches. Predictor at half the encoder width,
    # as ViT-H's 384 is under a third of 1280.
    c.predictor.width = 64
    c.predictor.depth = 2
    c.predictor.num_heads = 4
    c.optim.lr = 1.5e-3
    c.optim.weight_decay = 0.04
    c.optim.warmup_steps = 40
    # The paper's 0.996 tuned at batch 2048 would be 0.9995 at 256 under the scaling rule: the
    # target encoder would hardly move in the table's 200 steps.
    # No setting tried beats the random ViT on kNN (the table's row is below it). One seed each,
    # target encoder, kNN on the first 10000 / 2000 images, random ViT 61.1: this preset 57.6;
    # EMA 0.996 with lr 5e-4 57.0, with a 128 x 4 predictor 57.1, with 2 targets and a 16-patch
    # context 57.0; 600 steps 56.6. 2-pixel patches (the paper's 14 x 14 grid) collapse: the
    # loss is 0.01 by step 80 and the target features' std 0.006.
    c.ema = common.ema_config(base=0.99, reference_batch_size=256)
    c.augment.update(crop_scale=(0.3, 1.0), flip_prob=0.0, jitter_prob=0.0)
  else:  # configs/in1k_vith14_ep300.yaml
    c.model.vit.variant = "H/14"
    c.batch_size = 2048
    # Activations recomputed per block in the backward pass and the identical blocks scanned
    # (compiled once): the settings benchmarks/compile_check.py checks this preset's slice with.
    c.model.remat = "block"
    c.model.vit.scan = True
    c.total_steps = common.epochs_to_steps(300, dataset, c.batch_size)
    c.predictor.width = 384  # pred_emb_dim
    c.predictor.depth = 12  # pred_depth
    c.predictor.num_heads = 16  # the encoder's heads (src/helper.py)
    c.optim.lr = 1e-3 * 256 / 2048  # per 256 images: 1e-3 at the paper's batch 2048
    c.optim.end_lr_fraction = 1e-6 / 1e-3  # final_lr
    c.optim.weight_decay = 0.04
    c.optim.warmup_steps = common.epochs_to_steps(40, dataset, c.batch_size)
    c.ema = common.ema_config(base=0.996, reference_batch_size=2048)
    # Random resized crop only (scale 0.3-1.0): no flip, colour jitter or blur.
    c.augment.update(crop_size=224, crop_scale=(0.3, 1.0), flip_prob=0.0, brightness=0.0,
                     contrast=0.0, saturation=0.0, hue=0.0, jitter_prob=0.0, grayscale_prob=0.0,
                     blur_prob=0.0, solarize_prob=0.0)
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    c.predictor.width = 8
    c.predictor.depth = 1
    c.predictor.num_heads = 2
  c.lock()
  return c
