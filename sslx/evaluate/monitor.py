"""Label-free representation metrics of a run's encoder on a fixed monitor set, logged during
training every `eval.every` steps and computed on any checkpoint by `python -m sslx.evaluate`.

The monitor set is the first `eval.monitor_examples` images of the dataset's test split. Each
image is augmented `eval.monitor_views` times with the run's own augmentation (view 0 of
`sslx.experiment.view_configs`: `config.augment`, with `augment_view1` overrides where a config
has them). View j of example i is drawn with the key
``fold_in(fold_in(PRNGKey(config.seed), i), j)``, so every evaluation of a run sees the same
views, whatever the batch size, device count or process count. The views go through
`method.apply` (the frozen encoder features that kNN and the linear probe use, before any
projector), and `sslx.evaluate.representation.representation_metrics` scores the ``[n, q, d]``
embeddings:

* RankMe (Garrido et al., ICML 2023) on view 0;
* LiDAR (Thilak et al., ICLR 2024) with the q views of each image as the examples of its class;
* alpha-ReQ (Agrawal et al., NeurIPS 2022) on view 0, ranks 6-100;
* alignment (views 0 and 1) and uniformity (view 0) of Wang & Isola (ICML 2020);
* embedding std (Chen & He, CVPR 2021) on view 0.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sslx import sharding
from sslx.data import augment, pipeline, sources
from sslx.evaluate import features as features_lib
from sslx.evaluate import representation
from sslx.experiment import view_configs

METRICS = ("rankme", "lidar", "alpha_req", "alignment", "uniformity", "embedding_std")


def describe(config) -> dict[str, str]:
  """The protocol behind each monitor metric, for results.json and the documentation."""
  views = (f"first {config.eval.monitor_examples} test-split images x "
           f"{config.eval.monitor_views} views of the run's augmentation (seed {config.seed}), "
           "frozen encoder features (method.apply)")
  return {
      "rankme": f"RankMe (Garrido et al. 2023), effective rank of view 0; {views}",
      "lidar": f"LiDAR (Thilak et al. 2024), effective rank of the LDA matrix with each image's "
               f"views as one class, delta 1e-4; {views}",
      "alpha_req": f"alpha-ReQ (Agrawal et al. 2022), eigenspectrum decay over ranks 6-100 "
                   f"(at most min(n - 1, d)) of view 0; {views}",
      "alignment": f"alignment (Wang & Isola 2020), alpha 2, views 0 and 1; {views}",
      "uniformity": f"uniformity (Wang & Isola 2020), t 2, view 0; {views}",
      "embedding_std": f"mean per-dimension std of l2-normalised view 0 (SimSiam); {views}",
  }


class MonitorSet(NamedTuple):
  """The first images of the test split: uint8 [n, H, W, C] and int64 labels [n]."""

  images: np.ndarray
  labels: np.ndarray


def load_monitor_set(config, info, source_kwargs) -> MonitorSet:
  """The first `config.eval.monitor_examples` images of `info`'s test split (all of them if the
  split is smaller), read on every process."""
  n = config.eval.monitor_examples
  if isinstance(n, bool) or not isinstance(n, int) or n < 2:
    raise ValueError(f"eval.monitor_examples must be an int >= 2 (the metrics need two images), "
                     f"got {n!r}")
  test_source = sources.load_source(config.data.name, info.test_split, **source_kwargs)
  examples = pipeline.read_examples(test_source, range(min(n, len(test_source))))
  return MonitorSet(images=np.stack([np.asarray(e["image"], np.uint8) for e in examples]),
                    labels=np.asarray([e["label"] for e in examples], np.int64))


class Monitor:
  """Embeds the monitor set with any variables of one method, on a mesh.

  ``monitor.metrics(variables)`` gives the six metrics of the module docstring as floats, the
  same on every process; ``monitor.embeddings(variables)`` the ``[n, q, d]`` embeddings they
  are computed from; ``monitor.clean_embeddings(variables)`` the ``[n, d]`` features of the
  un-augmented images (for the embedding map).
  """

  def __init__(self, config, apply_fn: Callable, mesh, monitor_set: MonitorSet):
    views = config.eval.monitor_views
    if isinstance(views, bool) or not isinstance(views, int) or views < 2:
      raise ValueError(f"eval.monitor_views must be an int >= 2 (LiDAR and alignment compare "
                       f"views of one image), got {views!r}")
    images = np.asarray(monitor_set.images)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) < 2:
      raise ValueError(f"monitor_set.images must be uint8 [n >= 2, H, W, C], got "
                       f"{images.dtype} {images.shape}")
    self.config, self.apply_fn, self.mesh = config, apply_fn, mesh
    self.monitor_set = MonitorSet(images, np.asarray(monitor_set.labels))
    self.num_views = views
    # The images go through the mesh in chunks of at most eval.batch_size, padded to a multiple
    # of the batch shards (and processes) so the batch splits evenly: one compilation.
    shards = math.prod(mesh.shape[a] for a in sharding.batch_axes(mesh))
    unit = math.lcm(shards, jax.process_count())
    padded = -(-len(images) // unit) * unit
    self.chunk = min(padded, max(unit, config.eval.batch_size // unit * unit))
    self._embed = self._make_embed(config, apply_fn, mesh, views)

  @staticmethod
  def _make_embed(config, apply_fn, mesh, views):
    view_pipeline = augment.make_pipeline(view_configs(config)[0])
    base_key = jax.random.PRNGKey(config.seed)

    def views_of(index, image):
      key = jax.random.fold_in(base_key, index)
      keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(views))
      # vmapped rather than unrolled: one copy of the augmentation graph to compile, not q.
      return jax.vmap(lambda k: view_pipeline(k, image))(keys)

    # Batch sharded like the train step; the output is replicated so every process reads it.
    @jax.jit
    def embed(variables, images, indices):
      batch_views = jax.vmap(views_of)(indices, images)  # [b, q, h, w, c] floats in [0, 1]
      b = batch_views.shape[0]
      flat = batch_views.reshape(b * views, *batch_views.shape[2:])
      flat = jax.lax.with_sharding_constraint(flat, sharding.batch_sharding(mesh))
      z = apply_fn(variables, flat).astype(jnp.float32).reshape(b, views, -1)
      return jax.lax.with_sharding_constraint(z, sharding.replicated(mesh))

    return embed

  def _global(self, array: np.ndarray) -> jax.Array:
    # Every process holds the whole monitor set, so each fills its own shards from it.
    return jax.make_array_from_callback(array.shape, sharding.batch_sharding(self.mesh),
                                        lambda index: array[index])

  def embeddings(self, variables) -> np.ndarray:
    """float32 [n, q, d]: the encoder features of the q augmented views of each image."""
    images = self.monitor_set.images
    n, out = len(images), []
    for start in range(0, n, self.chunk):
      rows = np.arange(start, start + self.chunk)
      chunk_images = np.zeros((self.chunk, *images.shape[1:]), np.uint8)
      valid = rows < n
      chunk_images[valid] = images[rows[valid]]
      z = self._embed(variables, self._global(chunk_images),
                      self._global(rows.astype(np.int32)))
      out.append(np.asarray(jax.device_get(z))[valid])
    return np.concatenate(out)

  def metrics(self, variables) -> dict[str, float]:
    """{"rankme", "lidar", "alpha_req", "alignment", "uniformity", "embedding_std"} as floats;
    all NaN when the encoder's features are not finite (the run goes on; the loss check stops
    it if the parameters themselves went bad)."""
    z = self.embeddings(variables)
    if not np.isfinite(z).all():
      return {name: float("nan") for name in METRICS}
    return metrics_of(z)

  def clean_embeddings(self, variables) -> np.ndarray:
    """float32 [n, d]: the features of the un-augmented monitor images (no views)."""
    examples = [{"image": image, "label": label} for image, label in zip(*self.monitor_set)]
    features, _ = features_lib.extract_features(self.apply_fn, variables, examples,
                                                mesh=self.mesh, batch_size=self.chunk)
    return features


def metrics_of(z_views) -> dict[str, float]:
  """`representation_metrics` of ``[n, q, d]`` embeddings, with the alpha-ReQ range clipped to
  what the shape allows (a feature dimension below 7 fits ranks 1 to min(n - 1, d))."""
  z_views = np.asarray(z_views)
  if z_views.ndim != 3:
    raise ValueError(f"z_views must be [n, q, d], got shape {z_views.shape}")
  available = min(z_views.shape[0] - 1, z_views.shape[2])
  first, last = representation.DEFAULT_ALPHA_FIT_RANGE
  fit_range = (first, last) if available >= first + 1 else (1, max(available, 2))
  return representation.representation_metrics(z_views, alpha_fit_range=fit_range)


def build(config, method, mesh, info, source_kwargs) -> Monitor:
  """The run's Monitor: its monitor set read from the test split, embedded by `method.apply`."""
  return Monitor(config, method.apply, mesh, load_monitor_set(config, info, source_kwargs))
