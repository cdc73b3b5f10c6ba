"""Mean Teacher (Tarvainen & Valpola 2017): student-teacher softmax consistency, the teacher an
EMA of the student (the evaluated EMA model itself).

Launch (from the repository root):
  python -m sslx.main --config configs/mean_teacher.py:mnist,labels=4 --workdir runs/mt
Variants: mnist (default) | fashion_mnist | cifar10; labels=N per class; smoke.
Expected: docs/results/semi-supervised.md. USB's classic setting: consistency weight 50
ramped over the first 40% of the run.
"""

import ml_collections

from configs import _semisup


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, args = _semisup.semisup_config("mean_teacher", arg)
  c.semi.unsup_weight = 50.0
  c.semi.unsup_warmup = 0.4
  return _semisup.finish(c, args)
