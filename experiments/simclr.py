"""SimCLR (Chen et al. 2020): two augmented views per image, an encoder and an MLP projector,
trained with NT-Xent so each view picks out its partner among the 2B-1 others.
"""

import jax.numpy as jnp
from flax import nnx

from sslx import experiment
from sslx.losses import nt_xent
from sslx.method import Method
from sslx.models import MLP, Backbone


class SimCLRModel(nnx.Module):

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    p = config.projector
    self.projector = MLP(self.encoder.num_features, tuple(p.hidden), p.out_features, rngs=rngs)


def get_method(config) -> Method:
  images = experiment.images_for(config)
  net = experiment.Network(lambda rngs: SimCLRModel(config, images.view_shape, rngs=rngs))

  def init(rng, batch):
    del batch  # the model's shapes come from the config and the dataset
    return net.init(rng)

  def apply(variables, x):
    model = net.merge(variables["params"], variables["batch_stats"])
    return model.encoder(images.for_eval(x), train=False)

  def loss(params, variables, batch, rng):
    (v1, v2), encoder_rng = experiment.two_views(rng, batch["image"], config, images)
    # One forward pass over both views: BatchNorm sees the 2B images together, as in SimCLR.
    model = net.merge(params, variables["batch_stats"])
    z = model.projector(model.encoder(jnp.concatenate([v1, v2]), train=True, rng=encoder_rng),
                        train=True)
    z1, z2 = jnp.split(z, 2)
    value = nt_xent(z1, z2, temperature=config.loss.temperature)
    return value, {"metrics": experiment.embedding_metrics(z1, z2),
                   "state": {"batch_stats": net.batch_stats(model)}}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes)
