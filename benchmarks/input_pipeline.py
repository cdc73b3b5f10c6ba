"""Input-pipeline throughput: host-side JPEG decoding with crops from the full image (per core,
decoding libraries side by side), host-side loading (tfds data_source + grain, 0/1/2 worker
processes) and on-device augmentation, beside one default SimCLR train step.

    .venv/bin/python benchmarks/input_pipeline.py               # ~4-5 minutes on 2 CPU cores
    .venv/bin/python benchmarks/input_pipeline.py --quick       # fewer repeats, a smoke check
    .venv/bin/python benchmarks/input_pipeline.py --sections=jpeg   # only the JPEG rows

JPEG rows (``--sections=jpeg``): ``--jpegs`` ImageNet-like photographs made locally from
scikit-learn's two sample photos (``make_imagenet_like_jpegs``: random crops, rescales, flips,
colour gains and JPEG qualities; sizes drawn like ImageNet's, mostly 500 px on the long side and
about 375 on the short). For every decoding library installed (``sslx.data.decode.DECODERS``:
Pillow, simplejpeg, OpenCV) and resizer (``RESIZERS``: PIL's antialiased bilinear, OpenCV's
bilinear) it times ``HostCrops.crop`` (header, crop boxes sampled on the original size, reduced
decode, resize) in one thread for two SimCLR views of 224 px (scale 0.08-1) and for DINO's
2 x 224 (scale 0.4-1) + 10 x 96 (0.05-0.4) multi-crop, and reports source images/s per core:
per second of this process's CPU time (what a core delivers, robust to other processes sharing
the machine) and per wall-clock second. The combinations run round-robin, ``--rounds`` times
over all the images, and each reports its median round, so a change in machine load hits them
alike. Beside them: today's device-crop path (decode the whole JPEG, resize the shorter side
to 256, centre-crop 224: ``ResizedSource``) and the fastest two-view setting with reduced
decoding switched off. Then the whole grain pipeline (``train_iterator(host_crops=...)``) with
0 and one worker per core. Host cores per accelerator = ``--accelerator_images_per_s`` (and
``--accelerator_multicrop_images_per_s``) / the per-core rate; the defaults are assumptions
until ``benchmarks/throughput.py`` measures them on the accelerator.

Loader rows time ``sslx.data.pipeline.train_iterator`` (what the train loop uses: shuffle,
repeat, batch, threads, optional grain worker processes) on three sources:

* ``fashion_mnist``: the default run's data, 28x28x1 raw tensors in array_record, batch 256;
* ``imagenet_raw``: a synthetic array_record dataset of 224x224x3 uint8 tensors, written by
  ``sslx.data.sources.ImageArrayBuilder`` (the builder machinery behind fashion_mnist / mnist);
  the cost of reading and batching ImageNet-sized images without JPEG decoding;
* ``imagenet_jpeg``: the ImageNet-like JPEGs above, decoded with PIL and resized/centre-cropped
  to 224 by ``ResizedSource``, as sslx loads imagenet2012 without ``data.crop_on_host``.

Each loader is warmed up (first batches, worker start-up) before ``--batches`` batches are timed.
Augmentation rows time ``sslx.data.augment.augment_views`` with two SimCLR views, jitted,
``block_until_ready``, compile and one warm-up call excluded: (a) the default run's settings
(configs/simclr.py, batch 256, 28x28x1), (b) SimCLR's full ImageNet views
(``DEFAULT_VIEW``: crop 224, flip, jitter 0.8, grayscale 0.2, blur 0.5; Chen et al. 2020,
appendix A) on 224x224x3 uint8. The train row runs ``sslx.train.loop.train`` on
configs/simclr.py (eval off) for a few steps and reads its own
``train/images_per_s`` (windows after the first, so compilation is excluded): the loader and the
augmentation inside the step included, exactly as a real run. Images/s counts source images
(each gives two views). Writes ``results/input_pipeline.json`` (and ``.md``) and prints a table.
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
flags.DEFINE_list("sections", ["jpeg", "loader", "augment", "train"], "what to measure")
flags.DEFINE_integer("jpegs", 300, "ImageNet-like JPEGs to make for the JPEG rows")
flags.DEFINE_integer("rounds", 3, "round-robin passes over the JPEGs per decoding setting")
flags.DEFINE_float("accelerator_images_per_s", 3000.0,
                   "source images/s one accelerator consumes in two-view training (default: an"
                   " assumed ~3000 for SimCLR ResNet-50 in bf16 on one H100, not yet measured)")
flags.DEFINE_float("accelerator_multicrop_images_per_s", 1500.0,
                   "source images/s one accelerator consumes in DINO multi-crop training"
                   " (default: an assumed ~1500 for ViT-S/16 2x224 + 10x96 on one H100, not yet"
                   " measured)")
flags.DEFINE_float("target_per_core", 400.0, "two-view source images/s per core to reach")

IMAGENET_SHAPE = (224, 224, 3)
# Two SimCLR views (Chen et al. 2020) and DINO's multi-crop (Caron et al. 2021, main_dino.py).
TWO_VIEW = {"views": [(224, (0.08, 1.0))] * 2}
DINO = {"global": [(224, (0.4, 1.0))] * 2, "local": [(96, (0.05, 0.4))] * 10}


def _imagenet_like_size(rng: np.random.Generator) -> tuple[int, int]:
  """(height, width) drawn like ImageNet's training images: 500 px on the long side for most
  (the Flickr downloads), about 375 on the short side, a spread of smaller ones and a tail of
  larger ones; a quarter portrait."""
  kind = rng.random()
  if kind < 0.6:  # the Flickr sizes: 500 x 375 (most), 500 x 333, 500 x 400, 500 x 500 ...
    long, short = 500, int(rng.choice([375, 375, 375, 333, 400, 500, 334, 357]))
  elif kind < 0.9:  # smaller and odd sizes
    short = int(rng.integers(200, 420))
    long = int(short * rng.uniform(1.0, 1.6))
  else:  # the large tail (a few per cent of ImageNet is over 1000 px)
    short = int(rng.integers(500, 1200))
    long = int(short * rng.uniform(1.2, 1.5))
  return (long, short) if rng.random() < 0.25 else (short, long)


def make_imagenet_like_jpegs(n: int, seed: int = 0) -> list[bytes]:
  """``n`` JPEGs with ImageNet-like sizes and natural-image content: random crops (area 20-100%,
  aspect 3/4-4/3) of scikit-learn's two sample photographs (427 x 640), rescaled (bicubic) to a
  size from ``_imagenet_like_size``, flipped half the time, with random per-channel gains and
  gamma, saved at JPEG quality 75-95 (4:2:0 chroma, Pillow's default, as most photos)."""
  import PIL.Image
  from sklearn.datasets import load_sample_images

  photos = load_sample_images().images
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    photo = photos[i % len(photos)]
    height, width = photo.shape[:2]
    area = height * width * rng.uniform(0.2, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    h = min(height, int(np.sqrt(area / aspect)))
    w = min(width, int(np.sqrt(area * aspect)))
    top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    crop = photo[top:top + h, left:left + w].astype(np.float32) / 255
    crop = crop ** rng.uniform(0.8, 1.25) * rng.uniform(0.85, 1.15, size=3)
    if rng.random() < 0.5:
      crop = crop[:, ::-1]
    image = PIL.Image.fromarray(np.clip(crop * 255 + 0.5, 0, 255).astype(np.uint8))
    out_h, out_w = _imagenet_like_size(rng)
    image = image.resize((out_w, out_h), PIL.Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
    out.append(buf.getvalue())
  return out


class JpegSource:
  """Encoded JPEGs as a random-access source (picklable, so grain's worker processes decode in
  parallel): ``{"image": bytes, "label"}``, or with ``decoded`` the image decoded by PIL as tfds
  does for ``load_source`` (what ``ResizedSource`` wraps)."""

  def __init__(self, jpegs: list[bytes], decoded: bool = False):
    self.jpegs, self.decoded = jpegs, decoded

  def __len__(self):
    return len(self.jpegs)

  def __getitem__(self, index):
    import PIL.Image

    data = self.jpegs[int(index)]
    if self.decoded:
      data = np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"))
    return {"image": data, "label": int(index) % 1000}


def _host_crops(recipe: dict, decoder: str, resizer: str):
  from sslx.data import decode

  groups = {name: [decode.CropSpec(size, scale) for size, scale in views]
            for name, views in recipe.items()}
  return decode.HostCrops(groups, decoder=decoder, resizer=resizer, stacked=len(groups) == 1)


def _available(names) -> list[str]:
  """The decoding libraries / resizers whose package is installed."""
  import importlib.util

  package = {"pil": "PIL", "simplejpeg": "simplejpeg", "opencv": "cv2"}
  return [n for n in names if importlib.util.find_spec(package[n]) is not None]


def time_jpeg_settings(jpegs: list[bytes], rounds: int) -> list[dict]:
  """Source images/s per core of each decoding setting, round-robin (see the module doc)."""
  from sslx.data import decode, sources

  settings = {}
  for decoder in _available(decode.DECODERS):
    for resizer in _available(decode.RESIZERS):
      for recipe_name, recipe in (("two_view_224", TWO_VIEW), ("dino_2x224_10x96", DINO)):
        crops = _host_crops(recipe, decoder, resizer)
        settings[(recipe_name, decoder, resizer, True)] = (
          lambda data, rng, crops=crops: crops.crop(data, rng))
  import PIL.Image

  def centre_crop(data, rng):  # today's path without crop_on_host: ResizedSource
    del rng
    image = np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"))
    return sources.resize_and_center_crop(image, 224, 224, crop_fraction=0.875)

  settings[("centre_crop_224_of_256 (ResizedSource)", "pil", "pil", False)] = centre_crop
  cpu = {key: [] for key in settings}
  wall = {key: [] for key in settings}

  def run(fn):
    start_cpu, start = time.process_time(), time.perf_counter()
    for i, data in enumerate(jpegs):
      fn(data, np.random.default_rng(i))
    return time.process_time() - start_cpu, time.perf_counter() - start

  for _ in range(rounds):
    for key, fn in settings.items():
      c, w = run(fn)
      cpu[key].append(len(jpegs) / c)
      wall[key].append(len(jpegs) / w)
  rows = []
  for key in settings:
    recipe, decoder, resizer, reduce = key
    rows.append({"recipe": recipe, "decoder": decoder, "resizer": resizer,
                 "reduced_decode": reduce,
                 "images_per_cpu_s": float(np.median(cpu[key])),
                 "images_per_wall_s": float(np.median(wall[key])),
                 "rounds_images_per_cpu_s": cpu[key], "images_per_round": len(jpegs)})
  return rows


def time_reduce_off(jpegs: list[bytes], decoder: str, resizer: str, rounds: int) -> list[dict]:
  """Two views with and without reduced decoding, interleaved, for one setting."""
  from sslx.data import decode

  crops = _host_crops(TWO_VIEW, decoder, resizer)
  sizes = [spec.size for spec in crops.specs]

  def views(data, rng, reduce):
    hw = decode.image_size(data)
    boxes = [decode.sample_crop_box(rng, *hw, s.scale, s.ratio) for s in crops.specs]
    return decode.decode_boxes(data, boxes, sizes, decoder=decoder, resizer=resizer,
                               reduce=reduce, image_hw=hw)

  rates = {True: [], False: []}
  for _ in range(rounds):
    for reduce in (True, False):
      start = time.process_time()
      for i, data in enumerate(jpegs):
        views(data, np.random.default_rng(i), reduce)
      rates[reduce].append(len(jpegs) / (time.process_time() - start))
  return [{"recipe": "two_view_224", "decoder": decoder, "resizer": resizer,
           "reduced_decode": reduce, "images_per_cpu_s": float(np.median(rates[reduce])),
           "rounds_images_per_cpu_s": rates[reduce]} for reduce in (True, False)]


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
    loop.train(config, workdir)
    total = time.perf_counter() - start
    records = read_metrics(workdir)
  rates = [r["train/images_per_s"] for r in records if "train/images_per_s" in r]
  # Windows after the first (which holds compilation); their steps are equally long.
  images_per_s = float(np.mean(rates))
  return {"images_per_s": images_per_s, "ms_per_step": 1e3 * config.batch_size / images_per_s,
          "batch_size": config.batch_size, "timed_steps": steps - log_every,
          "total_s_with_compile": total, "config": "configs/simclr.py"}


def time_jpeg_pipeline(jpegs: list[bytes], host_crops, batch_size: int, worker_count: int,
                       batches: int) -> dict:
  """The whole grain pipeline with crops on the host: ``train_iterator(host_crops=...)``."""
  from sslx.data import pipeline

  it = pipeline.train_iterator(JpegSource(jpegs), global_batch_size=batch_size, seed=0,
                               process_index=0, process_count=1, worker_count=worker_count,
                               host_crops=host_crops)
  warmup_batches = 2 + (pipeline.DEFAULT_READ_OPTIONS.prefetch_buffer_size + 1) * max(
      1, worker_count)
  for _ in range(warmup_batches):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - start
  it.close()
  return {"worker_count": worker_count, "batch_size": batch_size, "timed_batches": batches,
          "images_per_s": batches * batch_size / seconds}


def jpeg_section(results: dict, quick: bool) -> None:
  """The JPEG rows: per-core decode + crop rates, the pipeline, the cores per accelerator."""
  n = 40 if quick else FLAGS.jpegs
  rounds = 1 if quick else FLAGS.rounds
  start = time.perf_counter()
  jpegs = make_imagenet_like_jpegs(n)
  sizes = []
  from sslx.data import decode

  for data in jpegs:
    sizes.append(decode.image_size(data))
  sizes = np.asarray(sizes)
  short, long = sizes.min(axis=1), sizes.max(axis=1)
  jpeg = {
    "images": n, "make_s": time.perf_counter() - start,
    "short_side": {"median": float(np.median(short)), "p10": float(np.percentile(short, 10)),
                   "p90": float(np.percentile(short, 90))},
    "long_side_median": float(np.median(long)),
    "mean_pixels": float(np.mean(sizes[:, 0] * sizes[:, 1])),
    "mean_kbytes": float(np.mean([len(d) for d in jpegs]) / 1e3),
  }
  print(f"{n} ImageNet-like JPEGs: short side median {jpeg['short_side']['median']:.0f} px,"
        f" {jpeg['mean_kbytes']:.0f} kB on average", flush=True)
  jpeg["per_core"] = time_jpeg_settings(jpegs, rounds)
  for row in jpeg["per_core"]:
    print(f"per core {row['recipe']:40s} {row['decoder']:10s} resize={row['resizer']:6s}:"
          f" {row['images_per_cpu_s']:6.0f} images/CPU-s ({row['images_per_wall_s']:.0f}/wall-s)",
          flush=True)
  best = {}
  for recipe in ("two_view_224", "dino_2x224_10x96"):
    rows = [r for r in jpeg["per_core"] if r["recipe"] == recipe]
    best[recipe] = max(rows, key=lambda r: r["images_per_cpu_s"])
  top = best["two_view_224"]
  jpeg["reduced_decode_effect"] = time_reduce_off(jpegs, top["decoder"], top["resizer"], rounds)
  # The pipeline end to end, two views, with the fastest setting.
  workers = sorted({0, os.cpu_count() or 1})
  jpeg["pipeline"] = [
    {"recipe": "two_view_224", "decoder": top["decoder"], "resizer": top["resizer"],
     **time_jpeg_pipeline(jpegs, _host_crops(TWO_VIEW, top["decoder"], top["resizer"]),
                          FLAGS.imagenet_batch, w, 4 if quick else max(8, FLAGS.batches // 2))}
    for w in workers]
  for row in jpeg["pipeline"]:
    print(f"pipeline two views, workers={row['worker_count']}: {row['images_per_s']:.0f} images/s",
          flush=True)
  accel = {"two_view_224": FLAGS.accelerator_images_per_s,
           "dino_2x224_10x96": FLAGS.accelerator_multicrop_images_per_s}
  jpeg["summary"] = {
    "best_per_core": {recipe: {k: row[k] for k in ("decoder", "resizer", "images_per_cpu_s")}
                      for recipe, row in best.items()},
    "accelerator_images_per_s_assumed": accel,
    "host_cores_per_accelerator": {recipe: accel[recipe] / row["images_per_cpu_s"]
                                   for recipe, row in best.items()},
    "target_two_view_per_core": FLAGS.target_per_core,
    "target_met": top["images_per_cpu_s"] >= FLAGS.target_per_core,
  }
  results["jpeg"] = jpeg


def main(argv):
  del argv
  # Imported here, not at the top: grain's spawned workers import this file as __mp_main__.
  import jax
  import PIL

  from configs import simclr as simclr_config
  from sslx.data import augment, sources

  t_start = time.perf_counter()
  quick = FLAGS.quick
  sections = set(FLAGS.sections)
  unknown = sections - {"jpeg", "loader", "augment", "train"}
  if unknown:
    raise ValueError(f"--sections: unknown {sorted(unknown)}; known: jpeg, loader, augment, train")
  batches = 4 if quick else FLAGS.batches
  workers = [int(w) for w in FLAGS.workers]
  data_dir = sources.resolve_data_dir(FLAGS.data_dir or None)
  load_avg = os.getloadavg()
  versions = {"jax": jax.__version__, "python": platform.python_version(),
              "pillow": PIL.__version__}
  for name, module in (("simplejpeg", "simplejpeg"), ("opencv", "cv2")):
    try:
      versions[name] = __import__(module).__version__
    except ImportError:
      versions[name] = None
  results = {
    "command": " ".join([os.path.relpath(sys.executable, os.getcwd()), *sys.argv]),
    "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
    "platform": platform.platform(), "processor": platform.processor(),
    "cpu_count": os.cpu_count(), **versions,
    "load_average_at_start": [round(x, 2) for x in load_avg],
    # Read the ratios when the load average says other jobs shared the cores.
    "note": f"CPU only ({os.cpu_count()} cores, load average {load_avg[0]:.2f} at start)",
    "jpeg": None, "loader": [], "augment": [], "train": None, "seconds": {},
  }

  if "jpeg" in sections:
    jpeg_section(results, quick)
    results["seconds"]["jpeg"] = time.perf_counter() - t_start

  if "loader" in sections:
    start = time.perf_counter()
    fmnist = sources.load_source("fashion_mnist", "train", data_dir=data_dir)
    ib = FLAGS.imagenet_batch
    with tempfile.TemporaryDirectory() as tmp:
      raw = _synthetic_raw_source(tmp, 4 * ib)
      jpeg = sources.ResizedSource(JpegSource(make_imagenet_like_jpegs(2 * ib), decoded=True),
                                   *IMAGENET_SHAPE[:2], crop_fraction=0.875)
      for name, source, batch_size, n in (("fashion_mnist", fmnist, 256, batches),
                                          ("imagenet_raw", raw, ib, max(4, batches // 2)),
                                          ("imagenet_jpeg", jpeg, ib, max(4, batches // 4))):
        for w in workers:
          row = {"dataset": name, "worker_count": w, **time_loader(source, batch_size, w, n)}
          print(f"loader {name:14s} workers={w}: {row['images_per_s']:9.0f} images/s", flush=True)
          results["loader"].append(row)
    results["seconds"]["loader"] = time.perf_counter() - start

  if "augment" in sections:
    start = time.perf_counter()
    cfg = simclr_config.get_config().augment.to_dict()
    rng = np.random.default_rng(0)
    for name, view, shape, batch_size, repeats in (
        ("fashion_mnist (default config)", cfg, (28, 28, 1), 256, 2 if quick else 10),
        ("imagenet (SimCLR full views)", dict(augment.DEFAULT_VIEW, crop_size=224),
         IMAGENET_SHAPE, 8 if quick else 16, 2 if quick else 3)):
      images = rng.integers(0, 256, (batch_size, *shape), dtype=np.uint8)
      row = {"name": name, **time_augment(view, images, repeats)}
      print(f"augment {name:32s}: {row['images_per_s']:9.0f} images/s", flush=True)
      results["augment"].append(row)
    results["seconds"]["augment"] = time.perf_counter() - start

  if "train" in sections:
    results["train"] = time_train(data_dir, 6 if quick else FLAGS.train_steps)
    results["seconds"]["train"] = results["train"]["total_s_with_compile"]
    print(f"train step (default config): {results['train']['images_per_s']:.0f} images/s",
          flush=True)

  if results["train"] and results["augment"] and results["loader"]:
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
  table = format_table(results)
  with open(os.path.splitext(FLAGS.out)[0] + ".md", "w") as f:
    f.write(f"`{results['command']}`\n\n{results['note']}, {results['platform']}, Python"
            f" {results['python']}, jax {results['jax']}, Pillow {results['pillow']}, simplejpeg"
            f" {results['simplejpeg']}, OpenCV {results['opencv']}\n\n```\n{table}\n```\n")
  print(table)
  print(f"wrote {FLAGS.out} ({results['total_seconds']:.0f} s)")


def format_table(results: dict) -> str:
  lines = []
  jpeg = results.get("jpeg")
  if jpeg:
    lines.append(f"{jpeg['images']} ImageNet-like JPEGs (short side median"
                 f" {jpeg['short_side']['median']:.0f} px, {jpeg['mean_kbytes']:.0f} kB);"
                 " source images/s per core (per CPU-second of this process; per wall-second)")
    lines.append(f"{'recipe':40s} {'decoder':10s} {'resize':7s} {'/CPU-s':>7s} {'/wall-s':>8s}")
    for r in jpeg["per_core"]:
      lines.append(f"{r['recipe']:40s} {r['decoder']:10s} {r['resizer']:7s}"
                   f" {r['images_per_cpu_s']:7.0f} {r['images_per_wall_s']:8.0f}")
    for r in jpeg["reduced_decode_effect"]:
      lines.append(f"two views, {r['decoder']} + {r['resizer']} resize, reduced decode"
                   f" {'on ' if r['reduced_decode'] else 'off'}: {r['images_per_cpu_s']:.0f}"
                   " images/CPU-s")
    for r in jpeg["pipeline"]:
      lines.append(f"pipeline (grain, batch {r['batch_size']}), two views, {r['decoder']} +"
                   f" {r['resizer']}, workers={r['worker_count']}: {r['images_per_s']:.0f}"
                   " images/s")
    s = jpeg["summary"]
    for recipe, cores in s["host_cores_per_accelerator"].items():
      lines.append(f"{recipe}: {cores:.1f} host cores per accelerator at an assumed"
                   f" {s['accelerator_images_per_s_assumed'][recipe]:.0f} images/s")
    best = s["best_per_core"]["two_view_224"]
    lines.append(f"target {s['target_two_view_per_core']:.0f} two-view images/s per core:"
                 f" {'met' if s['target_met'] else 'NOT met'} ({best['images_per_cpu_s']:.0f},"
                 f" {best['decoder']} + {best['resizer']} resize)")
  if results["loader"] or results["augment"] or results["train"]:
    lines.append(f"{'stage':48s} {'batch':>6s} {'images/s':>10s} {'ms/batch':>9s}")
  for r in results["loader"]:
    label = f"load {r['dataset']} {tuple(r['image_shape'])} workers={r['worker_count']}"
    ms = 1e3 * r["batch_size"] / r["images_per_s"]
    lines.append(f"{label:48s} {r['batch_size']:6d} {r['images_per_s']:10.0f} {ms:9.1f}")
  for r in results["augment"]:
    label = f"augment {r['name']} x2 views"
    lines.append(f"{label:48s} {r['batch_size']:6d} {r['images_per_s']:10.0f}"
                 f" {r['ms_per_batch']:9.1f}")
  t = results["train"]
  if t:
    lines.append(f"{'train step, simclr_fashion_mnist (loop, end to end)':48s}"
                 f" {t['batch_size']:6d} {t['images_per_s']:10.0f} {t['ms_per_step']:9.1f}")
  s = results.get("summary")
  if s:
    lines.append(f"augmentation = {100 * s['augment_share_of_step']:.1f}% of the default step;"
                 f" loader / step throughput: "
                 + ", ".join(f"{v:.0f}x (workers={w})" for w, v in
                             s["loader_over_train_step"].items())
                 + f"; input-bound: {s['input_bound']}")
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
