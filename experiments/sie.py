"""SIE (Garrido, Najman and LeCun 2023, "Self-Supervised Learning of Split Invariant-Equivariant
Representations"): the backbone's representation is split into an invariant part (its first
``D - equivariant_dims`` dimensions) and an equivariant part (the rest), each with its own
expander. With x, y the two views' expander outputs (invariant then equivariant, concatenated)::

    L = sim * MSE(x_inv, y_inv)                              invariant part agrees across views
      + equi_factor * sim * MSE(pred(x_eq, a), y_eq)         equivariant part predicts view 2
      + var * VICReg_var(x, y) + cov * VICReg_cov(x, y)      on the whole embeddings
      + var * hinge(std(pred)) / 2                           the predictions do not collapse

where ``pred(z, a) = W(a) z`` is a linear map whose weights a hypernetwork computes from the
transformation ``a`` between the views (the authors' ParametrizedNet with a linear HyperNet and
no biases). As the reference (facebookresearch/SIE src/models.py, class SIE) there is no
stop-gradient: the MSE trains both views' branches. Every term is `sslx.losses.vicreg` with
weights picking it out (see `sie_loss`).

The transformation comes from the augmentation ops, which report what they drew: each view is
the config's usual pipeline followed by a rotation, and ``a`` is
`sslx.evaluate.equivariance.relative_parameters` of the two views (sin / cos of the relative
angle, log brightness and contrast ratios). `Method.apply` returns the whole representation
(invariant then equivariant part, as the paper's "full representation"); `split` cuts it.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sslx import experiment
from sslx.evaluate import equivariance
from sslx.losses import vicreg
from sslx.method import Method
from sslx.models import MLP, Backbone
from sslx.models.util import abstract_module

HYPERNETWORKS = ("linear", "mlp")
ACTION_DIM = len(equivariance.PARAMETER_NAMES)


class HyperPredictor(nnx.Module):
  """``pred(z, a) = W(a) z`` with ``W(a)`` [dim, dim] computed from the action ``a`` by a
  hypernetwork: one bias-free Linear (the paper's "linear" hypernetwork) or three Linear layers
  with ReLU, widths ``action_dim`` ("mlp", the reference's other option)."""

  def __init__(self, dim: int, action_dim: int, kind: str, *, rngs: nnx.Rngs):
    self.dim = dim
    if kind == "linear":
      self.hypernet = nnx.Linear(action_dim, dim * dim, use_bias=False, rngs=rngs)
    else:
      self.hypernet = MLP(action_dim, (action_dim, action_dim), dim * dim, norm="none",
                          rngs=rngs)
    self.kind = kind

  def weights(self, action):
    """action [B, action_dim] -> W [B, dim (out), dim (in)]."""
    flat = self.hypernet(action) if self.kind == "linear" else self.hypernet(action, train=True)
    return jnp.reshape(flat, (action.shape[0], self.dim, self.dim))

  def __call__(self, z, action):
    return jnp.einsum("boi,bi->bo", self.weights(action), z)


def part_sizes(total: int, equivariant: int, widths) -> tuple[list[int], list[int]]:
  """The expander widths of the invariant and equivariant parts: ``widths`` split in the
  proportion of the representation's split (the reference's ``round(dims * ratio)``)."""
  ratio = equivariant / total
  equi = [max(1, round(w * ratio)) for w in widths]
  return [w - e for w, e in zip(widths, equi)], equi


class SIEModel(nnx.Module):
  """Backbone, one expander per part of the representation, and the hypernetwork predictor."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    total, equi_dims = self.encoder.num_features, config.sie.equivariant_dims
    p = config.projector
    inv_widths, equi_widths = part_sizes(total, equi_dims, (*p.hidden, p.out_features))
    self.num_invariant = total - equi_dims
    self.projector_inv = MLP(self.num_invariant, inv_widths[:-1], inv_widths[-1], rngs=rngs)
    self.projector_equi = MLP(equi_dims, equi_widths[:-1], equi_widths[-1], rngs=rngs)
    self.predictor = HyperPredictor(equi_widths[-1], ACTION_DIM, config.sie.hypernetwork,
                                    rngs=rngs)

  def embed(self, x, *, train: bool, rng=None):
    """Views -> (representation [B, D], invariant embedding, equivariant embedding)."""
    h = self.encoder(x, train=train, rng=rng)
    return (h, self.projector_inv(h[:, :self.num_invariant], train=train),
            self.projector_equi(h[:, self.num_invariant:], train=train))


def check_config(config, num_features: int) -> None:
  """ValueErrors naming the field for a config SIE cannot train."""
  if config.data.name == "3diebench":
    raise ValueError("config.data.name '3diebench': sslx has no 3DIEBench loader (its views and "
                     "their rotation quaternions come from the dataset's latents); the preset "
                     "documents the paper's settings. Train on fashion_mnist.")
  dims = config.sie.equivariant_dims
  if not (isinstance(dims, int) and 0 < dims < num_features):
    raise ValueError(f"config.sie.equivariant_dims must be an integer in (0, {num_features}) "
                     f"(the backbone's {num_features}-d representation is split in two), "
                     f"got {dims!r}")
  if config.sie.hypernetwork not in HYPERNETWORKS:
    raise ValueError(f"config.sie.hypernetwork must be one of {HYPERNETWORKS}, got "
                     f"{config.sie.hypernetwork!r}")
  experiment.check_non_negative("config.sie.rotation_degrees", config.sie.rotation_degrees)
  for name in ("sim_weight", "var_weight", "cov_weight", "equi_factor"):
    experiment.check_non_negative(f"config.loss.{name}", config.loss[name])


def sie_loss(x_inv, y_inv, x_eq, y_eq, prediction, weights) -> tuple[jax.Array, dict]:
  """SIE's loss from the two views' embeddings and the prediction of ``y_eq`` from ``x_eq``;
  ``weights``: sim_weight, var_weight, cov_weight, equi_factor. Returns (loss, unweighted
  terms)."""
  x, y = jnp.concatenate([x_inv, x_eq], axis=1), jnp.concatenate([y_inv, y_eq], axis=1)
  only = lambda term: {n: float(n == term) for n in ("sim_weight", "var_weight", "cov_weight")}
  terms = {
      "inv_loss": vicreg(x_inv, y_inv, **only("sim_weight")),
      "equi_loss": vicreg(prediction, y_eq, **only("sim_weight")),
      "var_loss": vicreg(x, y, **only("var_weight")),
      "cov_loss": vicreg(x, y, **only("cov_weight")),
      # vicreg's variance term averages its two views: of (p, p) it is the hinge of p, which
      # the reference halves (pred_std_loss).
      "pred_var_loss": vicreg(prediction, prediction, **only("var_weight")) / 2,
  }
  w = weights
  value = (w["sim_weight"] * (terms["inv_loss"] + w["equi_factor"] * terms["equi_loss"])
           + w["var_weight"] * (terms["var_loss"] + terms["pred_var_loss"])
           + w["cov_weight"] * terms["cov_loss"])
  return value, terms


def view_pipeline(config):
  """The training views: the config's augmentation followed by a rotation; its params give the
  transformation between views."""
  return equivariance.transformation_pipeline(config.augment,
                                              degrees=config.sie.rotation_degrees)


def network(config):
  if config.data.name == "3diebench":  # before images_for, which would not know the dataset
    check_config(config, 0)
  images = experiment.images_for(config)
  backbone = abstract_module(lambda rngs: Backbone(config.model, images.view_shape, rngs=rngs))
  check_config(config, backbone.num_features)
  return images, experiment.Network(lambda rngs: SIEModel(config, images.view_shape, rngs=rngs),
                                    dtype=config.model.dtype)


def split(config, representation):
  """``Method.apply``'s output [B, D] -> (invariant part, equivariant part)."""
  cut = representation.shape[-1] - config.sie.equivariant_dims
  return representation[..., :cut], representation[..., cut:]


def get_method(config) -> Method:
  images, net = network(config)
  pipeline = view_pipeline(config)
  weights = {k: config.loss[k] for k in ("sim_weight", "var_weight", "cov_weight", "equi_factor")}

  def init(rng, batch):
    del batch  # the model's shapes come from the config and the dataset
    return net.init(rng)

  apply = experiment.encoder_apply(net, images)

  def loss(params, variables, batch, rng):
    view_rng, encoder_rng = jax.random.split(rng)
    (v1, p1), (v2, p2) = (equivariance.view_with_parameters(jax.random.fold_in(view_rng, i),
                                                            batch["image"], pipeline)
                          for i in range(2))
    action = equivariance.relative_parameters(p1, p2)
    model = net.merge(params, variables["batch_stats"])
    # One forward pass per view, so BatchNorm normalises each view with its own statistics.
    _, x_inv, x_eq = model.embed(images.normalize(v1), train=True,
                                 rng=jax.random.fold_in(encoder_rng, 0))
    _, y_inv, y_eq = model.embed(images.normalize(v2), train=True,
                                 rng=jax.random.fold_in(encoder_rng, 1))
    prediction = model.predictor(x_eq, action)
    value, terms = sie_loss(x_inv, y_inv, x_eq, y_eq, prediction, weights)
    x, y = (jnp.concatenate(parts, axis=1) for parts in ((x_inv, x_eq), (y_inv, y_eq)))
    metrics = {**experiment.embedding_metrics(x, y),
               **{f"train/{name}": term for name, term in terms.items()}}
    return value, {"metrics": metrics, "state": {"batch_stats": net.batch_stats(model)}}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes)

