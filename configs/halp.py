"""HaLP (Shah et al. 2023) on images: MoCo v2 plus hallucinated latent positives.

Launch (from the repository root):
  python -m sslx.main --config configs/halp.py --workdir runs/halp                 # Fashion-MNIST
  python -m sslx.main --config configs/halp.py:cifar10 --workdir runs/halp_c10
  python -m sslx.main --config configs/halp.py:imagenet --workdir runs/halp_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10 / imagenet: not run here, and HaLP has no published image numbers (its results are
    skeleton action recognition, e.g. NTU-60 cross-subject linear evaluation); these are MoCo
    v2's presets (configs/moco_v2.py, one view the query as MoCo v2's code) with the HaLP
    settings of the authors' scripts/ntu60_xsub_single_modality.sh. `smoke` turns the HaLP
    term on from the first step.
HaLP settings (`halp`, the authors' NTU-60 script, with its temperature 0.07): 20 prototypes from
the newest 256 queued keys, refreshed every 10 steps; 100 positives per key; lambda_pos 0.8 (the
code's default); targets among the 20 prototypes after the closest one; weight (mu) 2; the HaLP term
from 200 / 451 of the run (the script resumes a MoCo checkpoint at epoch 200 and trains to 451).
kmeans_iterations: Lloyd steps of the in-step spherical k-means (see experiments/halp.py).
"""

import ml_collections

from configs import common, moco_v2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = moco_v2.get_config(dataset)
  c.unlock()
  c.experiment = "halp"
  c.loss.symmetric = False  # one query per image, as the authors' MoCo
  # The authors' --contrast-t: InfoNCE's and the HaLP term's temperature (MoCo v2 has 0.2).
  c.loss.temperature = 0.07
  c.halp = ml_collections.ConfigDict({
      "num_prototypes": 20, "prototype_examples": 256, "refresh_every": 10,
      "kmeans_iterations": 10, "num_positives": 100, "lambda_pos": 0.8, "num_candidates": 20,
      "skip_closest": 1, "weight": 2.0, "start_fraction": 200 / 451})
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    c.projector.hidden = (32,)
    c.projector.out_features = 16
    c.queue_size = 64
    c.halp.update(num_prototypes=6, prototype_examples=32, num_positives=8, num_candidates=3,
                  start_fraction=0.0)  # the HaLP term from the first step
  c.lock()
  return c
