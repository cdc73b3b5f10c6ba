"""NNCLR (Dwibedi et al., ICCV 2021, "With a Little Help from My Friends"): contrastive learning
whose positive for a view is its nearest neighbour in a support set (a FIFO queue of past
projections) instead of the other view of the same image.

The support set (`variables["support"]`, [support_size, D]) starts EMPTY: all-zero rows, which
have cosine 0 with everything. While it is empty (the first step: its newest row, row 0, is still
zero) the step looks neighbours up in the support set with this batch's first-view projections
written in, so each view's neighbour is its own projection and the first step is SimCLR's
objective; after it, the B newest projections per step push the oldest out (FIFO). (A zero row
wins a lookup only if every filled row has a negative cosine with the query: the loss of that
example then has a constant positive logit 0 and stays finite.) The authors' code is not public;
solo-learn starts from random unit vectors, which give random positives until the queue has
turned over once (support_size / B steps: 256 on CIFAR-10), too long for short runs.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import _contrastive
from sslx import experiment
from sslx.losses import info_nce, nearest_neighbor, nnclr, update_support_set
from sslx.losses._common import l2_normalize
from sslx.method import Method
from sslx.models import MLP, Backbone

FORMS = ("paper", "swapped")


class NNCLRModel(nnx.Module):
  """Encoder + projector (BatchNorm on every layer, the output included: `projector.norm_last`)
  + predictor, applied to the second view's projection (NNCLR Sec. 4.1)."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    p, q = config.projector, config.predictor
    self.projector = MLP(self.encoder.num_features, tuple(p.hidden), p.out_features,
                         norm_last=p.norm_last, norm=p.get("norm", "batch"), rngs=rngs)
    self.predictor = MLP(p.out_features, tuple(q.hidden), p.out_features, rngs=rngs)


def support_for_lookup(support, z1):
  """`support`, or while it is still empty (row 0, the newest, all zero) `z1` written into it, so
  that the first step's neighbours are the views' own projections."""
  empty = jnp.all(support[0] == 0)
  return jnp.where(empty, update_support_set(support, z1), support), empty


def get_method(config) -> Method:
  loss_config = config.loss
  experiment.check_positive("loss.temperature", loss_config.temperature)
  if loss_config.form not in FORMS:
    raise ValueError(f"loss.form must be one of {FORMS}, got {loss_config.form!r}")
  if config.support_size < config.batch_size:
    raise ValueError(f"support_size must be >= batch_size ({config.batch_size}): each step "
                     f"enqueues the whole batch, got {config.support_size}")
  temperature = loss_config.temperature

  def init_state():
    return {"support": jnp.zeros((config.support_size, config.projector.out_features),
                                 jnp.float32)}

  def objective(model, z1, z2, batch, variables):
    del batch
    support, empty = support_for_lookup(variables["support"], jax.lax.stop_gradient(z1))
    p1, p2 = jnp.split(model.predictor(jnp.concatenate([z1, z2]), train=True), 2)
    neighbors = nearest_neighbor(z1, support)
    if loss_config.form == "paper":
      # Eq. (2) plus its column-normalised symmetric term (NNCLR Sec. 3.2): NN(z1) against p2.
      # p1 is computed anyway so the predictor's BatchNorm sees both views, as it does in the
      # swapped form.
      value = nnclr(z1, p2, support, temperature=temperature)
    else:  # solo-learn / lightly: eq. (2) averaged over the two directions
      value = 0.5 * (info_nce(neighbors, p2, temperature=temperature)
                     + info_nce(nearest_neighbor(z2, support), p1, temperature=temperature))
    metrics = {
        # 1 on the empty first step (each view is its own neighbour), then how close the
        # friends are; near 1 later means the support set is dominated by near-duplicates.
        "train/neighbor_cosine": jnp.mean(
            jnp.sum(l2_normalize(z1) * l2_normalize(neighbors), axis=-1)),
        "train/support_empty": empty.astype(jnp.float32),
    }
    # FIFO: the first view's projections of this step push out the oldest (NNCLR, solo-learn).
    return value, metrics, {"support": update_support_set(variables["support"], z1)}

  return _contrastive.two_view_method(config, NNCLRModel, objective, init_state)
