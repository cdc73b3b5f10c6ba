"""Wall time of the offline evaluation (kNN, linear probe) at ImageNet scale: measured on scaled
random features on this machine, extrapolated to the imagenet presets' array sizes.

    .venv/bin/python benchmarks/eval_wall_time.py      # writes results/eval_wall_time.json

The imagenet presets fit kNN and the probe on a class-balanced 10% of the train split
(eval.train_fraction=0.1: about 128,117 images) and score them on the whole validation split
(50,000), with ResNet-50's 2048-d features and 1000 classes. Both protocols are matmuls over
those arrays:

* kNN: a [queries, bank] similarity matrix and its top-k, cost proportional to bank x queries x
  dim; timed on `--bank` x `--queries` rows (after a call that compiles), scaled by
  (128,117 / bank) x (50,000 / queries).
* linear probe: full-batch L-BFGS over the train array; each iteration is at least one pass
  (logits and gradient, proportional to rows x dim x classes). Timed: seconds per iteration of
  `fit_logistic_regression` on `--bank` rows (tol 0, so exactly `--probe_iters` iterations,
  after a run that compiles), scaled by 128,117 / bank; and the preconditioner (eigh of the
  dim x dim covariance, on at most 16,384 rows whatever the train size). `linear_probe` runs 5
  fits (4 weight decays on the holdout split, then the refit), each up to max_iters=500: at most
  2,500 iterations over the whole array (rows held out get zero weight, not skipped).

The features are random (class means plus Gaussian noise). The time of an iteration does not
depend on their values; the number of iterations does, so the probe is reported per 100
iterations and at the 2,500-iteration cap. Feature extraction is not timed here (no accelerator,
no ImageNet on this machine); docs/evaluation.md estimates it from the measured host decode rate.
"""

import json
import os
import platform
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sslx.evaluate import knn, linear  # noqa: E402

IMAGENET_SUBSAMPLE = 128_117  # 10% of 1,281,167 (per-class rounding moves it by a few)
IMAGENET_VAL = 50_000
PROBE_FITS, PROBE_MAX_ITERS = 5, 500

FLAGS = flags.FLAGS
flags.DEFINE_integer("bank", 12_800, "Train rows timed (kNN bank, probe fit).")
flags.DEFINE_integer("queries", 5_000, "Test rows timed (kNN queries).")
flags.DEFINE_integer("dim", 2048, "Feature dimension (ResNet-50: 2048).")
flags.DEFINE_integer("classes", 1000, "Classes (ImageNet: 1000).")
flags.DEFINE_integer("knn_k", 20, "k of the kNN (the presets' eval.knn_k).")
flags.DEFINE_integer("probe_iters", 3, "L-BFGS iterations timed.")
flags.DEFINE_string("output", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           "results", "eval_wall_time.json"), "JSON written.")


def _features(rng, n, means):
  labels = np.arange(n) % len(means)
  return (means[labels] + rng.standard_normal((n, means.shape[1]))).astype(np.float32), labels


def _timed(fn):
  fn()  # compiles
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main(argv):
  del argv
  load = os.getloadavg()[0]
  rng = np.random.default_rng(0)
  means = rng.standard_normal((FLAGS.classes, FLAGS.dim)).astype(np.float32)
  train_x, train_y = _features(rng, FLAGS.bank, means)
  test_x, test_y = _features(rng, FLAGS.queries, means)

  knn_s = _timed(lambda: knn.knn_accuracy(train_x, train_y, test_x, test_y,
                                          num_classes=FLAGS.classes, k=FLAGS.knn_k,
                                          temperature=0.07))
  standardised = (train_x - train_x.mean(0)) / train_x.std(0)
  precond_s = _timed(lambda: jax.block_until_ready(linear.make_preconditioner(standardised)))
  precond = linear.make_preconditioner(standardised)
  fit_s = _timed(lambda: jax.block_until_ready(linear.fit_logistic_regression(
      standardised, train_y, num_classes=FLAGS.classes, weight_decay=1e-4,
      preconditioner=precond, max_iters=FLAGS.probe_iters, tol=0.0)[0]))
  per_iter = fit_s / FLAGS.probe_iters

  knn_scale = (IMAGENET_SUBSAMPLE / FLAGS.bank) * (IMAGENET_VAL / FLAGS.queries)
  probe_scale = IMAGENET_SUBSAMPLE / FLAGS.bank
  per_iter_imagenet = per_iter * probe_scale
  result = {
      "command": "python benchmarks/eval_wall_time.py " + " ".join(
          f"--{k}={getattr(FLAGS, k)}" for k in ("bank", "queries", "dim", "classes", "knn_k",
                                                 "probe_iters")),
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "load_average_at_start": round(load, 2), "python": platform.python_version(),
                  "jax": jax.__version__, "device": jax.devices()[0].device_kind},
      "measured": {
          "shape": {"bank": FLAGS.bank, "queries": FLAGS.queries, "dim": FLAGS.dim,
                    "classes": FLAGS.classes},
          "knn_s": round(knn_s, 2),
          "probe_preconditioner_s": round(precond_s, 2),
          "probe_s_per_iteration": round(per_iter, 3),
      },
      "imagenet_preset_extrapolated": {
          "shape": {"bank": IMAGENET_SUBSAMPLE, "queries": IMAGENET_VAL, "dim": FLAGS.dim,
                    "classes": FLAGS.classes},
          "knn_s": round(knn_s * knn_scale),
          "knn_flops": 2 * IMAGENET_SUBSAMPLE * IMAGENET_VAL * FLAGS.dim,
          "probe_s_per_iteration": round(per_iter_imagenet, 1),
          "probe_s_per_100_iterations": round(100 * per_iter_imagenet + precond_s),
          "probe_s_at_iteration_cap": round(PROBE_FITS * PROBE_MAX_ITERS * per_iter_imagenet
                                            + precond_s),
          # logits forward + the two gradient matmuls, per pass over the train array
          "probe_flops_per_pass": 6 * IMAGENET_SUBSAMPLE * FLAGS.dim * FLAGS.classes,
          "note": "linear extrapolation in rows from this machine; the probe's iteration count "
                  "on real features is not measured (cap: 5 fits x 500)",
      },
  }
  os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
  with open(FLAGS.output, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
