"""PNG pictures of a run, drawn with matplotlib into files (no display needed):

* ``curves.png``: the loss and every other logged metric (train/*, monitor/*) against the step,
  from ``metrics.jsonl``;
* ``spectrum.png``: the sorted eigenvalues of the embedding covariance on a log scale, with the
  RankMe of the same embeddings (Garrido et al., ICML 2023) in the title: a collapsed encoder
  shows a few large eigenvalues and a cliff;
* ``embedding_map.png``: a 2-D t-SNE (van der Maaten & Hinton 2008, scikit-learn's) of test
  embeddings coloured by label; without scikit-learn (a test extra) the map falls back to the
  first two principal components and says so in its title and the log;
* attention maps (`plot_attention_maps`): a ViT's last-block [CLS] attention per head over the
  patch grid (DINO, iBOT; drawn by `experiments/dino.py` `save_attention_maps`).

Training writes them into the workdir when ``config.eval.plots`` is set, and so does
``python -m sslx.evaluate``; the embeddings come from `sslx.evaluate.monitor`.
"""

import math
import os

import jax
import numpy as np
from absl import logging
from etils import epath
from matplotlib.figure import Figure  # not pyplot: see save_figure

from sslx.evaluate import representation
from sslx.train.metrics import read_metrics

CURVES, SPECTRUM, EMBEDDING_MAP = "curves.png", "spectrum.png", "embedding_map.png"


def _matrix(x, name: str, *, min_rows: int) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] < min_rows or x.shape[1] < 1:
    raise ValueError(f"{name} must be a [n, d] array with n >= {min_rows} and d >= 1, "
                     f"got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
    raise ValueError(f"{name} must hold finite real numbers, got dtype {x.dtype} "
                     f"(shape {x.shape}) with non-finite or non-numeric values")
  return x.astype(np.float64)


def save_figure(fig, path: str) -> str:
  """Writes `fig` to `path` (local or remote, e.g. gs://..., through etils.epath) in the format
  its suffix names (PNG without one), creating the directory. Returns `path` as a string."""
  # Figures are matplotlib.figure.Figure objects, not pyplot ones: they render with Agg and
  # leave the process's backend (a notebook's inline one) and pyplot's figure list untouched.
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  with target.open("wb") as f:  # a file object: matplotlib cannot open remote paths itself
    fig.savefig(f, format=target.suffix[1:] or "png", dpi=100)
  return os.fspath(path)


def plot_curves(records, path: str) -> str:
  """One panel per logged scalar against the step; `records` as `read_metrics` returns them
  (dicts with "step" and any scalars). Returns `path`."""
  if not isinstance(records, (list, tuple)) or not records:
    raise ValueError(f"records must be a non-empty list of metric records (metrics.jsonl), got "
                     f"{type(records).__name__} of length {len(records) if records else 0}")
  if not all(isinstance(r, dict) and "step" in r for r in records):
    raise ValueError("records: every record must be a dict with a 'step' key (metrics.jsonl)")
  names = list(dict.fromkeys(k for r in records for k in r if k != "step"))
  # The loss first: it is the curve everybody looks at.
  names.sort(key=lambda k: (k != "train/loss", not k.startswith("train/"), k))
  if not names:
    raise ValueError("records hold no metric besides 'step'")
  cols = min(4, len(names))
  rows = math.ceil(len(names) / cols)
  fig = Figure(figsize=(3.6 * cols, 2.6 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax, name in zip(axes.flat, names):
    points = [(r["step"], r[name]) for r in records if name in r]
    steps, values = zip(*points)
    ax.plot(steps, values, marker="." if len(points) < 30 else None)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  fig.tight_layout()
  return save_figure(fig, path)


def covariance_eigenvalues(z) -> np.ndarray:
  """Eigenvalues of the (centred, 1/(n-1)) covariance of ``z`` [n, d], descending, float64."""
  z = _matrix(z, "z", min_rows=2)
  singular_values = np.linalg.svd(z - z.mean(axis=0), compute_uv=False)
  return np.sort(singular_values ** 2 / (len(z) - 1))[::-1]


def plot_spectrum(z, path: str, *, title: str = "embedding spectrum") -> str:
  """The covariance eigenvalues of ``z`` [n, d] by rank, log scale, RankMe of ``z`` in the
  title. Returns `path`."""
  eigenvalues = covariance_eigenvalues(z)
  rank_me = float(representation.rankme(np.asarray(z, np.float32)))
  # Zero eigenvalues (collapsed directions) have no place on a log axis: floored for display.
  floor = max(eigenvalues[0], 1e-30) * 1e-12
  fig = Figure(figsize=(5, 3.6))
  ax = fig.subplots()
  ax.semilogy(np.arange(1, len(eigenvalues) + 1), np.maximum(eigenvalues, floor), marker=".")
  ax.set_xlabel("rank")
  ax.set_ylabel("covariance eigenvalue")
  ax.set_title(f"{title}: RankMe {rank_me:.1f} of {min(np.shape(z))}", fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  return save_figure(fig, path)


def embed_2d(features, *, seed: int = 0) -> tuple[np.ndarray, str]:
  """([n, 2] coordinates, "t-SNE" or "PCA"): t-SNE when scikit-learn is installed, else the
  first two principal components."""
  x = _matrix(features, "features", min_rows=3)
  try:
    from sklearn.manifold import TSNE
  except ImportError:
    logging.info("scikit-learn is not installed: embedding_map.png shows PCA, not t-SNE")
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    if coords.shape[1] < 2:  # one feature dimension: the second axis is flat
      coords = np.concatenate([coords, np.zeros_like(coords)], axis=1)
    return coords, "PCA"
  from threadpoolctl import threadpool_limits  # a scikit-learn dependency

  # Perplexity must stay below the number of points; 30 is scikit-learn's default.
  perplexity = min(30.0, (len(x) - 1) / 3)
  # One thread: Barnes-Hut t-SNE of a few hundred points gains nothing from OpenMP, and next to
  # JAX's busy threads its OpenMP threads made it 5x slower (32 s instead of 6 s for 512 points).
  with threadpool_limits(limits=1):
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed
                  ).fit_transform(x)
  return coords, "t-SNE"


def plot_embedding_map(features, labels, path: str, *, seed: int = 0) -> str:
  """A 2-D map (`embed_2d`) of ``features`` [n, d] coloured by integer ``labels`` [n].
  Returns `path`."""
  features = _matrix(features, "features", min_rows=3)
  labels = np.asarray(labels)
  if labels.shape != (len(features),) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers of shape ({len(features)},) (one per feature "
                     f"row), got {labels.dtype} {labels.shape}")
  coords, how = embed_2d(features, seed=seed)
  fig = Figure(figsize=(5, 4.4))
  ax = fig.subplots()
  scatter = ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap="tab10", s=6)
  ax.legend(*scatter.legend_elements(), fontsize=7, loc="best", markerscale=0.8, title="label")
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(f"{how} of {len(features)} test embeddings", fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)


def write_run_plots(workdir: str, monitor, variables) -> list[str]:
  """The three pictures of a run into `workdir`; `monitor` (`sslx.evaluate.monitor.Monitor`)
  embeds its monitor set with `variables`. Every process must call it (the embeddings run on
  the whole mesh); process 0 writes. Returns the paths written (none on other processes)."""
  view0 = monitor.embeddings(variables)[:, 0]
  clean = monitor.clean_embeddings(variables)
  if jax.process_index() != 0:
    return []
  written = []
  records = read_metrics(workdir)
  if records:
    written.append(plot_curves(records, str(epath.Path(workdir) / CURVES)))
  if not (np.isfinite(view0).all() and np.isfinite(clean).all()):
    logging.warning("the encoder's features are not finite: no spectrum or embedding map")
    return written
  written.append(plot_spectrum(view0, str(epath.Path(workdir) / SPECTRUM),
                               title="monitor view 0"))
  written.append(plot_embedding_map(clean, monitor.monitor_set.labels,
                                    str(epath.Path(workdir) / EMBEDDING_MAP)))
  logging.info("plots written: %s", written)
  return written


def plot_attention_maps(images, attention, grid_size, path: str, *, title: str = "") -> str:
  """The [CLS] attention of a ViT's last block over the patch grid, per head (DINO Fig. 1).

  `images`: float [B, H, W, C] in [0, 1]; `attention`: [B, heads, h * w], the attention from
  the [CLS] token to each patch in row-major grid order (`VisionTransformer.cls_attention`);
  `grid_size`: (h, w). One row per image: the image, then one map per head, each scaled to its
  own maximum and drawn over the image's extent. Returns `path`.
  """
  images = np.asarray(images, np.float64)
  attention = np.asarray(attention, np.float64)
  grid_h, grid_w = grid_size
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [B, H, W, 1 or 3] floats in [0, 1], got shape "
                     f"{images.shape}")
  if attention.ndim != 3 or attention.shape[0] != images.shape[0] or (
      attention.shape[2] != grid_h * grid_w):
    raise ValueError(f"attention must be [B={images.shape[0]}, heads, {grid_h * grid_w}] (one "
                     f"weight per patch of the {grid_h} x {grid_w} grid), got shape "
                     f"{attention.shape}")
  if not np.isfinite(attention).all():
    raise ValueError("attention must hold finite weights")
  num_images, num_heads = attention.shape[:2]
  maps = attention.reshape(num_images, num_heads, grid_h, grid_w)
  maps = maps / np.maximum(maps.max(axis=(2, 3), keepdims=True), 1e-12)
  fig = Figure(figsize=(1.2 * (num_heads + 1) + 0.4, 1.2 * num_images + 0.6))
  axes = fig.subplots(num_images, num_heads + 1, squeeze=False)
  for i in range(num_images):
    image = np.clip(images[i], 0.0, 1.0)
    extent = (0, image.shape[1], image.shape[0], 0)
    axes[i, 0].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0,
                      vmax=1, interpolation="nearest")
    for h in range(num_heads):
      axes[i, h + 1].imshow(maps[i, h], cmap="inferno", vmin=0, vmax=1, extent=extent,
                            interpolation="nearest")
      if i == 0:
        axes[i, h + 1].set_title(f"head {h}", fontsize=8)
    for ax in axes[i]:
      ax.set_xticks([])
      ax.set_yticks([])
  fig.suptitle(title or "last block [CLS] attention", fontsize=9)
  fig.tight_layout()
  return save_figure(fig, path)
