"""What every semi-supervised method shares: a Backbone with a linear classifier, the weak and
strong augmentations of the labelled and unlabelled images, the supervised cross-entropy, the
ramped weight of the unlabelled loss, and the EMA of the model that is evaluated (as USB does).

An experiment module (`experiments/fixmatch.py` ...) gives `semi_supervised_method` its
unlabelled objective; `experiments/supervised.py` gives none (the "labels only" and "fully
supervised" rows). The batch carries a labelled part (``image``, ``label``) and an unlabelled part
(``unlabelled_image``, ``unlabelled_index``: `sslx.data.pipeline.semi_supervised_iterator`).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sslx import experiment
from sslx.data import augment, sources
from sslx.method import Method
from sslx.models import Backbone
from sslx.train import ema


class Classifier(nnx.Module):
  """A Backbone and a linear classifier on its pooled features."""

  def __init__(self, config, image_shape, num_classes: int, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    self.head = nnx.Linear(self.encoder.num_features, num_classes, rngs=rngs)

  def __call__(self, images, *, train: bool, rng=None):
    """images [B, H, W, C] (normalised) -> (features [B, D], logits float32 [B, num_classes])."""
    features = self.encoder(images, train=train, rng=rng)
    return features, self.head(features).astype(jnp.float32)


class Unlabelled(NamedTuple):
  """What an unlabelled objective sees: the logits of the unlabelled images' weak and strong
  views (``strong`` None for a method without one), the EMA teacher's logits of another weak
  view of each (``teacher``, when the method asks for them), the batch, the method's own state
  (its entries of the variables) and the step."""

  weak: jax.Array
  strong: jax.Array | None
  teacher: jax.Array | None
  batch: dict
  state: dict
  step: jax.Array


# objective(u: Unlabelled) -> (loss, metrics, new state of the method's own entries)
Objective = Callable[[Unlabelled], tuple[jax.Array, dict, dict]]


def check_config(config) -> None:
  """ValueErrors naming the field, before any compute: the semi-supervised settings shared by
  every method of this family."""
  s = config.semi
  per_class = s.labels_per_class
  if isinstance(per_class, bool) or not isinstance(per_class, int) or not (
      per_class >= 1 or per_class == -1):
    raise ValueError(f"semi.labels_per_class must be an integer >= 1 (or -1: every label), got "
                     f"{per_class!r}")
  if isinstance(s.uratio, bool) or not isinstance(s.uratio, int) or s.uratio < 1:
    raise ValueError(f"semi.uratio must be an integer >= 1 (unlabelled images per labelled one), "
                     f"got {s.uratio!r}")
  if s.unlabelled not in sources.UNLABELLED_SETS:
    raise ValueError(f"semi.unlabelled must be one of {sources.UNLABELLED_SETS}, got "
                     f"{s.unlabelled!r}")
  if s.unlabelled == "others" and per_class == -1:
    raise ValueError("semi.unlabelled='others' with semi.labels_per_class=-1 leaves no "
                     "unlabelled image; use semi.unlabelled='all'")
  if not 0.0 <= s.ema_momentum < 1.0:
    raise ValueError(f"semi.ema_momentum must be in [0, 1), got {s.ema_momentum!r}")
  experiment.check_non_negative("semi.unsup_weight", s.unsup_weight)
  if not 0.0 <= s.unsup_warmup <= 1.0:
    raise ValueError(f"semi.unsup_warmup must be a fraction of total_steps in [0, 1], got "
                     f"{s.unsup_warmup!r}")
  image_hw = sources.get_dataset_info(config.data.name).image_shape[:2]
  view_hw = {}
  for field in ("weak", "strong"):
    try:
      view_hw[field] = tuple(augment.make_pipeline(s[field]).out_hw(image_hw))
    except ValueError as e:
      raise ValueError(f"semi.{field}={s[field]!r}: {e}") from None
  if view_hw["weak"] != view_hw["strong"]:  # they go through the model in one batch
    raise ValueError(f"semi.weak and semi.strong must give views of one size, got "
                     f"{view_hw['weak']} and {view_hw['strong']} from {s.weak!r} and "
                     f"{s.strong!r}")
  if config.data.crop_on_host:
    raise ValueError("data.crop_on_host is not supported by semi-supervised methods (their "
                     "weak and strong views are cropped on device); set it to False")


def check_threshold(name: str, value) -> None:
  """A confidence threshold must lie in (0, 1): 0 would keep every pseudo-label, 1 none."""
  if not 0.0 < value < 1.0:
    raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def num_unlabelled(config) -> int:
  """The number of unlabelled images of `config`'s run (the split `sslx.train.loop` draws): the
  rows of a per-example state such as FlexMatch's."""
  check_config(config)
  info = sources.get_dataset_info(config.data.name)
  labels = sources.split_labels(config.data.name, info.train_split,
                                **sources.source_kwargs(config.data))
  try:
    _, unlabelled = sources.semi_supervised_split(labels, config.semi.labels_per_class,
                                                  config.seed, config.semi.unlabelled)
  except ValueError as e:  # worded as sslx.train.loop.semi_supervised_split words it
    raise ValueError(f"semi.labels_per_class={config.semi.labels_per_class} on "
                     f"{config.data.name!r}: {e}") from None
  return len(unlabelled)


def unsup_ramp(config, step) -> jax.Array:
  """The unlabelled loss's weight: semi.unsup_weight, ramped linearly from 0 over the first
  semi.unsup_warmup of the run (USB's Mean Teacher and Pseudo-Label: 0.4)."""
  warmup = config.semi.unsup_warmup * config.total_steps
  if warmup <= 0:
    return jnp.asarray(config.semi.unsup_weight, jnp.float32)
  return config.semi.unsup_weight * jnp.clip(step / warmup, 0.0, 1.0)


def mixup(rng, inputs: jax.Array, alpha, *, own_majority: bool) -> tuple[jax.Array, jax.Array,
                                                                        jax.Array]:
  """Mixes every row with a random row of the (global) batch: (lam x + (1 - lam) x[perm], perm,
  lam), one lam ~ Beta(alpha, alpha) for the batch. ``own_majority`` (MixMatch): lam is
  replaced by max(lam, 1 - lam), so that each mixed row stays closest to its own."""
  ratio_key, perm_key = jax.random.split(rng)
  lam = jax.random.beta(ratio_key, alpha, alpha)
  if own_majority:
    lam = jnp.maximum(lam, 1.0 - lam)
  perm = jax.random.permutation(perm_key, inputs.shape[0])
  return lam * inputs + (1.0 - lam) * inputs[perm], perm, lam


def classifier(config, model: type[nnx.Module] = Classifier
               ) -> tuple[experiment.Network, experiment.Images]:
  """The Network of `config`'s classifier (``model(config, image_shape, num_classes, rngs=)``,
  whose call gives (features, logits); its dataset's classes) and the spec of its views."""
  spec = experiment.images_for(config, view_config=config.semi.weak)
  network = experiment.Network(
      lambda rngs: model(config, spec.view_shape, spec.num_classes, rngs=rngs),
      config.model.dtype)
  return network, spec


def ema_model(network: experiment.Network, variables: dict) -> Classifier:
  """The evaluated model: the EMA of the parameters with the current batch statistics."""
  return network.merge(variables["ema"]["params"], variables["ema"]["batch_stats"])


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean cross-entropy of logits [B, C] against integer labels [B] or soft targets [B, C]."""
  log_probs = jax.nn.log_softmax(logits)
  if targets.ndim == 1:
    return jnp.mean(-jnp.take_along_axis(log_probs, targets[:, None], axis=-1))
  return jnp.mean(-jnp.sum(targets * log_probs, axis=-1))


def ema_classifier_method(config, network: experiment.Network, spec: experiment.Images,
                          loss: Callable, *, init_state: Callable[[], dict] | None = None,
                          warm_start: Callable | None = None) -> Method:
  """The Method of a Classifier trained by ``loss(params, variables, batch, rng)`` (the
  `Method.loss` contract; its state carries ``batch_stats`` and ``ema`` through), whose
  variables hold the model (``params``, ``batch_stats``), its EMA (``ema``), which
  `Method.apply` (features) and ``predict`` (logits) evaluate, and ``init_state()``'s entries
  (a method's own state). The EMA follows the parameters with momentum semi.ema_momentum and
  copies the batch statistics (USB's EMA). ``warm_start``: `Method.warm_start`."""

  def init(rng, batch):
    del batch
    variables = network.init(rng)
    variables["ema"] = jax.tree.map(jnp.copy, variables)
    if init_state is not None:
      variables.update(init_state())
    return variables

  def apply(variables, images):
    return ema_model(network, variables)(spec.for_eval(images), train=False)[0]

  def predict(variables, images):
    return ema_model(network, variables)(spec.for_eval(images), train=False)[1]

  def after_update(params, state, step):
    del step
    m = config.semi.ema_momentum
    averaged = {"params": ema.ema_update(state["ema"]["params"], params, m),
                "batch_stats": state["batch_stats"]}
    return {**state, "ema": averaged}, {}

  return Method(init=init, apply=apply, loss=loss, after_update=after_update, predict=predict,
                param_axes=network.param_axes, warm_start=warm_start)


def semi_supervised_method(config, objective: Objective | None = None, *,
                           init_state: Callable[[], dict] | None = None, strong: bool = True,
                           teacher: bool = False,
                           network: tuple[experiment.Network, experiment.Images] | None = None,
                           warm_start: Callable | None = None) -> Method:
  """The Method of a classifier trained on the labelled cross-entropy plus
  ``unsup_ramp * objective(...)`` on the unlabelled images (`ema_classifier_method`).

  One forward pass through the model takes the labelled weak views, the unlabelled weak views
  and (``strong``) the unlabelled strong views together, so BatchNorm's statistics are of all of
  them (USB's ``use_cat``). ``teacher``: the objective also gets the EMA model's logits of
  another weak view of each unlabelled image (Mean Teacher), BatchNorm in training mode as in
  USB. ``init_state() -> dict``: the
  objective's own entries of the variables (FlexMatch's per-example state), which it returns
  updated. ``network``: (Network, spec) of another classifier than `classifier(config)`'s
  (SimCLRv2's fine-tuned one); ``warm_start``: `Method.warm_start`.
  """
  check_config(config)
  network, spec = classifier(config) if network is None else network
  weak_views, strong_views = config.semi.weak, config.semi.strong

  def loss(params, variables, batch, rng):
    keys = jax.random.split(rng, 4)
    parts = [augment.augment_batch(keys[0], batch["image"], weak_views)]
    if objective is not None:
      parts.append(augment.augment_batch(keys[1], batch["unlabelled_image"], weak_views))
      if strong:
        parts.append(augment.augment_batch(keys[2], batch["unlabelled_image"], strong_views))
    model = network.merge(params, variables["batch_stats"])
    _, logits = model(spec.normalize(jnp.concatenate(parts)), train=True, rng=keys[3])
    sizes = [p.shape[0] for p in parts]
    logits = jnp.split(logits, [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)])
    labelled = logits[0]
    sup_loss = cross_entropy(labelled, batch["label"])
    metrics = {"train/sup_loss": sup_loss,
               "train/labelled_top1": jnp.mean(jnp.argmax(labelled, -1) == batch["label"])}
    state = {"batch_stats": experiment.Network.batch_stats(model), "ema": variables["ema"]}
    total = sup_loss
    if objective is not None:
      own = {k: v for k, v in variables.items() if k not in ("params", "batch_stats", "ema",
                                                             "step")}
      teacher_logits = None
      if teacher:  # its own weak view of the unlabelled images
        views = augment.augment_batch(jax.random.fold_in(rng, 4), batch["unlabelled_image"],
                                      weak_views)
        teacher_logits = jax.lax.stop_gradient(
            ema_model(network, variables)(spec.normalize(views), train=True)[1])
      u = Unlabelled(weak=logits[1], strong=logits[2] if strong else None,
                     teacher=teacher_logits, batch=batch, state=own, step=variables["step"])
      unsup_loss, unsup_metrics, own = objective(u)
      weight = unsup_ramp(config, variables["step"])
      total = sup_loss + weight * unsup_loss
      metrics.update({"train/unsup_loss": unsup_loss, "train/unsup_weight": weight,
                      **{f"train/{k}": v for k, v in unsup_metrics.items()}})
      state.update(own)
    return total, {"metrics": metrics, "state": state}

  return ema_classifier_method(config, network, spec, loss, init_state=init_state,
                               warm_start=warm_start)
