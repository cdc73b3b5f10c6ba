"""MSN (Assran et al. 2022, "Masked Siamese Networks for Label-Efficient Learning"): a ViT sees
anchor views with patches dropped (one random crop and several small focal crops), an EMA
target encoder sees another random crop whole, and the anchors' soft assignments to learnt
prototypes are trained to match the target's sharpened, Sinkhorn-balanced one, with mean-entropy
maximisation (ME-MAX) keeping every prototype in use (`sslx.losses.msn`).

As facebookresearch/msn (``msn_train.py``, ``src/deit.py``, ``configs/pretrain/msn_vits16.yaml``):
the multi-crop groups are the random crops ("global", the first the target's, the second an anchor)
and the focal crops ("local", all anchors); the random anchor's forward pass keeps one random subset
of floor((1 - patch_drop) N) patches, the same for every image of the pass (the authors'
``randperm``), and the focal crops are seen whole (``deit.py`` sets ``patch_drop = 0`` after the
first crop resolution); the projection head is Linear-BN-GELU x 2 then Linear; the prototypes start
uniform in +-1/sqrt(D) and take no weight decay; the target's head runs in training mode (batch
statistics), as the authors' target encoder is never put in eval mode. The evaluated representation
is the target encoder's [CLS] token, as the authors evaluate.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import _multicrop
from sslx import experiment
from sslx.losses import msn
from sslx.method import Method
from sslx.models import MLP, Backbone


class MSNModel(nnx.Module):
  """ViT + projection head + prototypes: the online network; an EMA copy is the target."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    h = config.head
    self.projector = MLP(self.encoder.num_features, (h.hidden, h.hidden), h.out_features,
                         activation="gelu", rngs=rngs)
    bound = 1.0 / math.sqrt(h.out_features)
    self.prototypes = nnx.Param(jax.random.uniform(
        rngs.params(), (h.num_prototypes, h.out_features), jnp.float32, -bound, bound))

  def project(self, images, *, train: bool, rng=None, patch_drop: float = 0.0):
    """[B, D] projections; with `patch_drop` > 0 the ViT sees one random subset of the patches
    (drawn from `rng`), the same for every image."""
    if patch_drop <= 0:
      return self.projector(self.encoder(images, train=train, rng=rng), train=train)
    vit = self.encoder.net
    keep = math.floor((1.0 - patch_drop) * vit.num_patches)
    mask_rng, drop_path_rng = jax.random.split(rng)
    subset = jnp.sort(jax.random.permutation(mask_rng, vit.num_patches)[:keep])
    indices = jnp.broadcast_to(subset, (images.shape[0], keep))
    features = vit(images, patch_indices=indices, train=train, rng=drop_path_rng)["pooled"]
    return self.projector(features, train=train)


def embed_views(net, target_net, patch_drop: float, params, variables, views, rng):
  """(anchors [1 + V_focal, B, D], targets [B, D], batch_stats, teacher batch_stats) of the
  multi-crop `views`: the second random crop through the online network with `patch_drop`
  of its patches dropped, then the focal crops whole; the first random crop through the EMA
  target, without gradient."""
  random_crop = {_multicrop.GLOBAL: views[_multicrop.GLOBAL][1:]}
  anchors, batch_stats = net.encode(
      lambda m, x, r: m.project(x, train=True, rng=r, patch_drop=patch_drop), params,
      variables["batch_stats"], random_crop, jax.random.fold_in(rng, 0),
      groups=(_multicrop.GLOBAL,))
  if _multicrop.LOCAL in views:
    focal, batch_stats = net.encode(
        lambda m, x, r: m.project(x, train=True, rng=r), params, batch_stats,
        {_multicrop.LOCAL: views[_multicrop.LOCAL]}, jax.random.fold_in(rng, 1),
        groups=(_multicrop.LOCAL,))
    anchors = jnp.concatenate([anchors, focal])
  teacher = variables["teacher"]
  targets, teacher_stats = target_net.encode(
      lambda m, x, r: m.project(x, train=True), teacher["params"], teacher["batch_stats"],
      {_multicrop.GLOBAL: views[_multicrop.GLOBAL][:1]}, groups=(_multicrop.GLOBAL,))
  return anchors, jax.lax.stop_gradient(targets[0]), batch_stats, teacher_stats


def check_config(config) -> None:
  if config.model.name != "vit":
    raise ValueError(f"MSN drops patches of a ViT: model.name must be 'vit', got "
                     f"{config.model.name!r}")
  if not config.model.vit.class_token:
    raise ValueError("MSN reads the ViT's [CLS] token: model.vit.class_token must be True")
  c = config.loss
  for field in ("temperature", "sharpen"):
    experiment.check_positive(f"loss.{field}", c[field])
  experiment.check_non_negative("loss.me_max_weight", c.me_max_weight)
  if not 0 <= c.patch_drop < 1:
    raise ValueError(f"loss.patch_drop must be in [0, 1), got {c.patch_drop!r}")
  groups = _multicrop.crop_config(config)
  if groups[_multicrop.GLOBAL]["number"] != 2:
    raise ValueError(f"multicrop.global.number must be 2 for MSN (the target's crop and one "
                     f"anchor), got {groups[_multicrop.GLOBAL]['number']}")


def get_method(config) -> Method:
  check_config(config)
  c = config.loss
  images = _multicrop.images_for(config)

  def build(cfg):
    return _multicrop.MultiCropNetwork(lambda rngs, shape: MSNModel(cfg, shape, rngs=rngs), cfg,
                                       images)

  net = build(config)
  target_net = _multicrop.teacher_network(config, build, net)

  def init(rng, batch):
    del batch
    variables = net.init(rng)
    # The target starts as a copy of the online network (msn_train.py: deepcopy).
    return {**variables, "teacher": _multicrop.teacher_copy(variables)}

  def loss(params, variables, batch, rng):
    views, encoder_rng = _multicrop.crop_views(rng, batch["image"], config, images)
    anchors, targets, batch_stats, teacher_stats = embed_views(
        net, target_net, c.patch_drop, params, variables, views, encoder_rng)
    value, terms = msn(anchors, targets, params["prototypes"],
                       temperature=c.temperature, target_temperature=c.temperature * c.sharpen,
                       me_max_weight=c.me_max_weight)
    metrics = {**experiment.embedding_metrics(anchors[0], targets),
               "train/cross_entropy": terms["cross_entropy"], "train/me_max": terms["me_max"],
               "train/anchor_entropy": terms["entropy"]}
    state = {"batch_stats": batch_stats,
             "teacher": {"params": variables["teacher"]["params"],
                         "batch_stats": teacher_stats}}
    return value, {"metrics": metrics, "state": state}

  return Method(init=init, apply=experiment.encoder_apply(net, images, teacher=True), loss=loss,
                param_axes=net.param_axes, after_update=experiment.ema_teacher_update(config))
