"""Input-pipeline throughput: host-side loading (tfds data_source + grain, 0/1/2 worker processes)
and on-device augmentation, beside one default SimCLR train step, to show what bounds training.

    .venv/bin/python benchmarks/input_pipeline.py             # ~2-3 minutes on 2 CPU cores
    .venv/bin/python benchmarks/input_pipeline.py --quick     # fewer batches, for a smoke check

Loader rows time ``sslx.data.pipeline.train_iterator`` (what the train loop uses: shuffle,
repeat, batch, threads, optional grain worker processes) on three sources:

* ``fashion_mnist``: the default run's data, 28x28x1 raw tensors in array_record, batch 256;
* ``imagenet_raw``: a synthetic array_record dataset of 224x224x3 uint8 tensors, written by
  ``sslx.data.sources.ImageArrayBuilder`` (the builder machinery behind fashion_mnist / mnist);
  the cost of reading and batching ImageNet-sized images without JPEG decoding;
* ``imagenet_jpeg``: in-memory 500x375 JPEGs (ImageNet's most common size) decoded with PIL
  and resized/centre-cropped to 224 by ``ResizedSource``, as sslx loads imagenet2012.

Each loader is warmed up (first batches, worker start-up) before ``--batches`` batches are timed.
Augmentation rows time ``sslx.data.augment.augment_views`` with two SimCLR views, jitted,
``block_until_ready``, compile and one warm-up call excluded: (a) the default run's settings
(configs/simclr.py, batch 256, 28x28x1), (b) SimCLR's full ImageNet views
(``DEFAULT_VIEW``: crop 224, flip, jitter 0.8, grayscale 0.2, blur 0.5; Chen et al. 2020,
appendix A) on 224x224x3 uint8. The train row runs ``sslx.train.loop.train_and_evaluate`` on
configs/simclr.py (eval off) for a few steps and reads its own
``train/images_per_s`` (windows after the first, so compilation is excluded): the loader and the
augmentation inside the step included, exactly as a real run. Images/s counts source images
(each gives two views). Writes ``results/input_pipeline.json`` and prints a table.
"""

import io
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # configs/ and experiments/ live in the checkout

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "", "tfds data dir for fashion_mnist (default: sslx's default)")
flags.DEFINE_string("out", os.path.join(HERE, "results", "input_pipeline.json"), "JSON output")
flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker_count values for the loader rows")
flags.DEFINE_integer("batches", 40, "timed batches per loader row")
flags.DEFINE_integer("imagenet_batch", 32, "batch size of the ImageNet-shaped rows")
flags.DEFINE_integer("train_steps", 12, "train steps of the default config (first third:"
                     " compilation and warm-up)")
flags.DEFINE_bool("quick", False, "a few batches and steps only (smoke check)")

IMAGENET_SHAPE = (224, 224, 3)
JPEG_HW = (375, 500)  # ImageNet's most common size (height, width)


class JpegSource:
  """``n`` distinct in-memory JPEGs of size JPEG_HW, decoded with PIL on every read (picklable,
  so grain's worker processes decode in parallel)."""

  def __init__(self, n: int, seed: int = 0):
    import PIL.Image

    rng = np.random.default_rng(seed)
    self.jpegs = []
    for _ in range(n):
      # Smooth random content (8x upsampled noise) compresses like a photo, unlike white noise.
      small = rng.integers(0, 256, (JPEG_HW[0] // 8 + 1, JPEG_HW[1] // 8 + 1, 3), dtype=np.uint8)
      image = PIL.Image.fromarray(small).resize(JPEG_HW[::-1], PIL.Image.BILINEAR)
      buf = io.BytesIO()
      image.save(buf, format="JPEG", quality=90)
      self.jpegs.append(buf.getvalue())

  def __len__(self):
    return len(self.jpegs)

  def __getitem__(self, index):
    import PIL.Image

    image = np.asarray(PIL.Image.open(io.BytesIO(self.jpegs[int(index)])).convert("RGB"))
    return {"image": image, "label": int(index) % 1000}


def _synthetic_raw_source(data_dir: str, n: int):
  """A 224x224x3 raw-tensor array_record dataset of ``n`` random images, written once."""
  from sslx.data import sources

  class SyntheticImagenetRaw(sources.ImageArrayBuilder, skip_registration=True):
    VERSION = sources.tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "random uint8 images"}
    IMAGE_SHAPE = IMAGENET_SHAPE
    CLASS_NAMES = tuple(str(i) for i in range(1000))
    DESCRIPTION = "Random 224x224x3 uint8 images (benchmark only)."

    def _split_arrays(self):
      rng = np.random.default_rng(0)
      images = rng.integers(0, 256, (n, *IMAGENET_SHAPE), dtype=np.uint8)
      return {"train": (images, rng.integers(0, 1000, (n,)))}

  builder = SyntheticImagenetRaw(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return builder.as_data_source("train")


def time_loader(source, batch_size: int, worker_count: int, batches: int) -> dict:
  """Images/s of sslx's train iterator over ``source`` after warm-up."""
  from sslx.data import pipeline

  it = pipeline.train_iterator(source, global_batch_size=batch_size, seed=0, process_index=0,
                               process_count=1, worker_count=worker_count)
  # Warm-up: start the threads / workers, then drain every prefetch buffer they filled while we
  # waited (each reader, the main one or one per worker, buffers `prefetch_buffer_size` batches),
  # so the timed batches are produced at the steady rate.
  warmup_batches = 2 + (pipeline.DEFAULT_READ_OPTIONS.prefetch_buffer_size + 1) * max(1,
                                                                                       worker_count)
  start = time.perf_counter()
  for _ in range(warmup_batches):
    next(it)
  warmup = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  seconds = time.perf_counter() - start
  assert batch["image"].shape[0] == batch_size
  it.close()
  return {"images_per_s": batches * batch_size / seconds, "timed_batches": batches,
          "batch_size": batch_size, "warmup_batches": warmup_batches, "warmup_s": warmup,
          "image_shape": list(batch["image"].shape[1:])}


def time_augment(view_config: dict, images: np.ndarray, repeats: int) -> dict:
  """Images/s of two jitted SimCLR views of ``images`` (uint8 [B, H, W, C])."""
  import jax

  from sslx.data import augment

  fn = jax.jit(lambda key, x: augment.augment_views(key, x, [view_config, view_config]))
  x = jax.device_put(images)
  start = time.perf_counter()
  jax.block_until_ready(fn(jax.random.PRNGKey(0), x))
  compile_s = time.perf_counter() - start
  jax.block_until_ready(fn(jax.random.PRNGKey(1), x))  # warm-up
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(jax.random.PRNGKey(2 + i), x))
    times.append(time.perf_counter() - start)
  seconds = float(np.median(times))
  return {"images_per_s": len(images) / seconds, "ms_per_batch": 1e3 * seconds,
          "batch_size": len(images), "image_shape": list(images.shape[1:]), "views": 2,
          "repeats": repeats, "compile_s": compile_s}


def time_train(data_dir: str, steps: int) -> dict:
  """The default config's train throughput, read from the loop's own metrics."""
  from configs import simclr as simclr_config
  from sslx.train import loop
  from sslx.train.metrics import read_metrics

  config = simclr_config.get_config()
  log_every = max(1, steps // 3)
  config.total_steps = steps
  config.optim.warmup_steps = steps // 2  # learning-rate warm-up: no effect on speed
  config.log_every = log_every
  config.checkpoint_every = steps
  config.progress_bar = False
  config.eval.enabled = False
  config.data.data_dir = data_dir
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    loop.train_and_evaluate(config, workdir)
    total = time.perf_counter() - start
    records = read_metrics(workdir)
  rates = [r["train/images_per_s"] for r in records if "train/images_per_s" in r]
  # Windows after the first (which holds compilation); their steps are equally long.
  images_per_s = float(np.mean(rates))
  return {"images_per_s": images_per_s, "ms_per_step": 1e3 * config.batch_size / images_per_s,
          "batch_size": config.batch_size, "timed_steps": steps - log_every,
          "total_s_with_compile": total, "config": "configs/simclr.py"}


def main(argv):
  del argv
  # Imported here, not at the top: grain's spawned workers import this file as __mp_main__.
  import jax

  from configs import simclr as simclr_config
  from sslx.data import augment, sources

  t_start = time.perf_counter()
  quick = FLAGS.quick
  batches = 4 if quick else FLAGS.batches
  workers = [int(w) for w in FLAGS.workers]
  data_dir = sources.resolve_data_dir(FLAGS.data_dir or None)
  load_avg = os.getloadavg()
  results = {
    "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
    "cpu_count": os.cpu_count(), "jax": jax.__version__, "python": platform.python_version(),
    "load_average_at_start": [round(x, 2) for x in load_avg],
    # Read the ratios when the load average says other jobs shared the cores.
    "note": f"CPU only ({os.cpu_count()} cores, load average {load_avg[0]:.2f} at start)",
    "loader": [], "augment": [], "train": None,
  }

  fmnist = sources.load_source("fashion_mnist", "train", data_dir=data_dir)
  ib = FLAGS.imagenet_batch
  with tempfile.TemporaryDirectory() as tmp:
    raw = _synthetic_raw_source(tmp, 4 * ib)
    jpeg = sources.ResizedSource(JpegSource(2 * ib), *IMAGENET_SHAPE[:2])
    for name, source, batch_size, n in (("fashion_mnist", fmnist, 256, batches),
                                        ("imagenet_raw", raw, ib, max(4, batches // 2)),
                                        ("imagenet_jpeg", jpeg, ib, max(4, batches // 4))):
      for w in workers:
        row = {"dataset": name, "worker_count": w, **time_loader(source, batch_size, w, n)}
        print(f"loader {name:14s} workers={w}: {row['images_per_s']:9.0f} images/s", flush=True)
        results["loader"].append(row)

  results["seconds"] = {"loader": time.perf_counter() - t_start}
  cfg = simclr_config.get_config().augment.to_dict()
  rng = np.random.default_rng(0)
  for name, view, shape, batch_size, repeats in (
      ("fashion_mnist (default config)", cfg, (28, 28, 1), 256, 2 if quick else 10),
      ("imagenet (SimCLR full views)", dict(augment.DEFAULT_VIEW, crop_size=224), IMAGENET_SHAPE,
       8 if quick else 16, 2 if quick else 3)):
    images = rng.integers(0, 256, (batch_size, *shape), dtype=np.uint8)
    row = {"name": name, **time_augment(view, images, repeats)}
    print(f"augment {name:32s}: {row['images_per_s']:9.0f} images/s", flush=True)
    results["augment"].append(row)

  results["seconds"]["augment"] = time.perf_counter() - t_start - results["seconds"]["loader"]
  results["train"] = time_train(data_dir, 6 if quick else FLAGS.train_steps)
  results["seconds"]["train"] = results["train"]["total_s_with_compile"]
  print(f"train step (default config): {results['train']['images_per_s']:.0f} images/s",
        flush=True)

  train_rate = results["train"]["images_per_s"]
  fm_loader = {r["worker_count"]: r["images_per_s"] for r in results["loader"]
               if r["dataset"] == "fashion_mnist"}
  results["summary"] = {
    "loader_over_train_step": {str(w): v / train_rate for w, v in fm_loader.items()},
    "augment_share_of_step": train_rate / results["augment"][0]["images_per_s"],
    "input_bound": max(fm_loader.values()) < train_rate,
  }
  results["total_seconds"] = time.perf_counter() - t_start
  os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(results, f, indent=2)
  print(format_table(results))
  print(f"wrote {FLAGS.out} ({results['total_seconds']:.0f} s)")


def format_table(results: dict) -> str:
  lines = [f"{'stage':48s} {'batch':>6s} {'images/s':>10s} {'ms/batch':>9s}"]
  for r in results["loader"]:
    label = f"load {r['dataset']} {tuple(r['image_shape'])} workers={r['worker_count']}"
    ms = 1e3 * r["batch_size"] / r["images_per_s"]
    lines.append(f"{label:48s} {r['batch_size']:6d} {r['images_per_s']:10.0f} {ms:9.1f}")
  for r in results["augment"]:
    label = f"augment {r['name']} x2 views"
    lines.append(f"{label:48s} {r['batch_size']:6d} {r['images_per_s']:10.0f}"
                 f" {r['ms_per_batch']:9.1f}")
  t = results["train"]
  lines.append(f"{'train step, simclr_fashion_mnist (loop, end to end)':48s} {t['batch_size']:6d}"
               f" {t['images_per_s']:10.0f} {t['ms_per_step']:9.1f}")
  s = results["summary"]
  lines.append(f"augmentation = {100 * s['augment_share_of_step']:.1f}% of the default step;"
               f" loader / step throughput: "
               + ", ".join(f"{v:.0f}x (workers={w})" for w, v in
                           s["loader_over_train_step"].items())
               + f"; input-bound: {s['input_bound']}")
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
