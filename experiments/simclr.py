"""SimCLR (Chen et al. 2020): two augmented views per image, a ResNet encoder and an MLP
projector, trained with NT-Xent so each view picks out its partner among the 2B-1 others.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sslx.data import augment, sources
from sslx.losses import nt_xent
from sslx.method import Method
from sslx import sharding
from sslx.models import MLP, Backbone


class SimCLRModel(nnx.Module):

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    p = config.projector
    self.projector = MLP(self.encoder.num_features, tuple(p.hidden), p.out_features, rngs=rngs)


def _split(model):
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, params.to_pure_dict(), batch_stats.to_pure_dict()


def get_method(config) -> Method:
  info = sources.get_dataset_info(config.data.name)
  mean = jnp.asarray(info.mean, jnp.float32)
  std = jnp.asarray(info.std, jnp.float32)
  view_configs = [config.augment, config.augment]
  # The encoder sees augmented views; their size (crop_size) may differ from the dataset's.
  view_hw = augment.make_pipeline(config.augment).out_hw(info.image_shape[:2])
  view_shape = (*view_hw, info.image_shape[-1])
  abstract = nnx.eval_shape(lambda: SimCLRModel(config, view_shape, rngs=nnx.Rngs(0)))
  graphdef, _, _ = _split(abstract)

  def init(rng, batch):
    del batch  # the model's shapes come from the config and the dataset
    _, params, batch_stats = _split(SimCLRModel(config, view_shape, rngs=nnx.Rngs(rng)))
    return {"params": params, "batch_stats": batch_stats}

  def apply(variables, images):
    model = nnx.merge(graphdef, variables["params"], variables["batch_stats"])
    if images.shape[1:3] != view_hw:  # evaluate at the training resolution (a ViT needs it)
      images = jax.image.resize(images, (images.shape[0], *view_shape), "bilinear")
    return model.encoder((images - mean) / std, train=False)

  def loss(params, variables, batch, rng):
    views = augment.augment_views(rng, batch["image"], view_configs)  # view i: fold_in(rng, i)
    encoder_rng = jax.random.fold_in(rng, len(view_configs))  # stochastic depth / drop-path
    # One forward pass over both views: BatchNorm sees the 2B images together, as in SimCLR.
    model = nnx.merge(graphdef, params, variables["batch_stats"], copy=True)
    z = model.projector(model.encoder((jnp.concatenate(views) - mean) / std, train=True,
                                      rng=encoder_rng),
                        train=True)
    z1, z2 = jnp.split(z, 2)
    value = nt_xent(z1, z2, temperature=config.loss.temperature)
    _, _, batch_stats = _split(model)
    unit = z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)
    metrics = {
        # Collapse detector: ~1/sqrt(dim) for well-spread unit embeddings, ~0 when collapsed.
        "train/embedding_std": jnp.mean(jnp.std(unit, axis=0)),
        "train/positive_cosine": jnp.mean(jnp.sum(unit[: len(z1)] * unit[len(z1):], axis=-1)),
    }
    return value, {"metrics": metrics, "state": {"batch_stats": batch_stats}}

  param_axes = sharding.logical_axes(nnx.state(abstract, nnx.Param))
  return Method(init=init, apply=apply, loss=loss, param_axes=param_axes)


