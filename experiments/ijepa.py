"""I-JEPA (Assran et al. 2023, "Self-Supervised Learning from Images with a Joint-Embedding
Predictive Architecture"): a context encoder sees one large block of patches with the target
blocks removed; a narrow predictor, told where each target block is, predicts the features an
EMA target encoder gives those patches from the whole image. The loss is a regression in
feature space (smooth L1 to the layer-normalised target features, `sslx.losses.ijepa`): no
pixels, no negatives, no hand-made view invariances beyond one random resized crop.

As facebookresearch/ijepa src/train.py: one view per image (random resized crop only), multi-block
masks per image (`sslx.data.masks.multiblock_masks_batch`), the target encoder on every patch
without gradient, its features layer-normed and gathered at each target block, and the predictor
run once per target block on the repeated context. The representation for kNN / linear probing
(`Method.apply`) is the target encoder on all patches, average-pooled patch tokens: "We use the
target-encoder for evaluation and average pool its output" (Assran et al. 2023, Appendix A.1).
`config.ijepa.eval_encoder = "context"` reads the context encoder instead.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sslx import experiment
from sslx.data import augment
from sslx.data.masks import gather_patches, multiblock_masks_batch
from sslx.losses import ijepa
from sslx.method import Method
from sslx.models import Backbone
from sslx.models.vit import IJEPAPredictor


EVAL_ENCODERS = ("target", "context")


class IJEPAModel(nnx.Module):
  """The context encoder (`Backbone`, so kNN / probes see the usual encoder) and the predictor.
  The target encoder is an EMA copy of `encoder`'s parameters, kept in the variables' state."""

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    vit = self.encoder.net
    p = config.predictor
    self.predictor = IJEPAPredictor(encoder_width=vit.width, grid_size=vit.grid_size,
                                    width=p.width, depth=p.depth, num_heads=p.num_heads,
                                    remat=config.model.remat,
                                    attention=config.model.vit.attention, rngs=rngs)


def _check_config(config) -> None:
  if config.model.name != "vit":
    raise ValueError(f"config.model.name must be 'vit' for I-JEPA (the context encoder runs on "
                     f"the context patches only), got {config.model.name!r}")
  if config.model.vit.class_token:
    # The reference's encoder has no [CLS] token; ours would be trained by nothing (the loss
    # reads patch tokens only) yet attend to every patch.
    raise ValueError("config.model.vit.class_token must be False for I-JEPA (the loss and the "
                     "pooled feature use patch tokens only), got True")
  experiment.check_positive("config.ijepa.num_targets", config.ijepa.num_targets)
  if config.ijepa.eval_encoder not in EVAL_ENCODERS:
    raise ValueError(f"config.ijepa.eval_encoder must be one of {EVAL_ENCODERS}, got "
                     f"{config.ijepa.eval_encoder!r}")


def _mask_kwargs(config) -> dict:
  m = config.ijepa
  return dict(num_targets=m.num_targets, target_scale=tuple(m.target_scale),
              target_aspect=tuple(m.target_aspect), context_scale=tuple(m.context_scale),
              context_aspect=tuple(m.context_aspect), num_context=m.num_context or None)


def _network(config):
  _check_config(config)
  images = experiment.images_for(config)
  return images, experiment.Network(lambda rngs: IJEPAModel(config, images.view_shape, rngs=rngs),
                                    dtype=config.model.dtype)



def predict_blocks(predictor, context, context_indices, target_indices):
  """The predictor once per target block, as the reference repeats the context per block.

  context [B, Kc, D], context_indices [B, Kc], target_indices [B, M, Kt] -> predictions
  [B, M, Kt, D]. The M blocks go along the batch (block-major, the reference's
  `repeat_interleave_batch`), so every block is predicted from the context alone, never from
  another block's mask tokens.
  """
  batch, num_blocks, kt = target_indices.shape
  rep = lambda x: jnp.concatenate([x] * num_blocks, axis=0)  # noqa: E731
  blocks = jnp.reshape(jnp.transpose(target_indices, (1, 0, 2)), (num_blocks * batch, kt))
  pred = predictor(rep(context), rep(context_indices), blocks)  # [M * B, Kt, D]
  return jnp.transpose(jnp.reshape(pred, (num_blocks, batch, kt, -1)), (1, 0, 2, 3))


def get_method(config) -> Method:
  images, net = _network(config)
  mask_kwargs = _mask_kwargs(config)
  # No BatchNorm anywhere: the variables are the parameters and the target encoder, so every
  # state entry the trainer keeps really is updated.
  no_batch_stats = {}

  def init(rng, batch):
    del batch  # shapes come from the config and the dataset
    params = net.init(rng)["params"]
    # The target encoder starts as a copy of the context encoder (src/train.py deep-copies it).
    return {"params": params, "teacher": {"params": jax.tree.map(jnp.copy, params["encoder"])}}

  def apply(variables, x):
    params = variables["params"]
    if config.ijepa.eval_encoder == "target":
      params = {**params, "encoder": variables["teacher"]["params"]}
    model = net.merge(params, no_batch_stats)
    return model.encoder.net(images.for_eval(x), train=False)["pooled"]  # mean patch token

  def loss(params, variables, batch, rng):
    view_rng, mask_rng, encoder_rng = jax.random.split(rng, 3)
    (view,) = augment.augment_views(view_rng, batch["image"], [config.augment.to_dict()])
    view = images.normalize(view)
    model = net.merge(params, no_batch_stats)
    vit = model.encoder.net
    masks = multiblock_masks_batch(mask_rng, view.shape[0], vit.grid_size, **mask_kwargs)
    # Targets: the EMA encoder on every patch, no gradient (the reference's torch.no_grad).
    teacher = net.merge({**params, "encoder": variables["teacher"]["params"]}, no_batch_stats)
    target_tokens = jax.lax.stop_gradient(teacher.encoder.net(view, train=False)["patches"])
    targets = gather_patches(target_tokens, masks.target_indices)  # [B, M, Kt, D]
    context = vit(view, patch_indices=masks.context_indices, train=True, rng=encoder_rng)
    pred = predict_blocks(model.predictor, context["patches"], masks.context_indices,
                          masks.target_indices)
    # Smooth L1 to the layer-normed targets, averaged over examples, blocks, patches, features.
    value = ijepa(pred, targets, normalize_targets=True)
    std = lambda tokens: experiment.embedding_std(jnp.mean(tokens, axis=1))  # noqa: E731
    metrics = {"train/embedding_std": std(context["patches"]),
               "train/target_embedding_std": std(target_tokens)}
    return value, {"metrics": metrics, "state": {"teacher": variables["teacher"]}}

  return Method(init=init, apply=apply, loss=loss, param_axes=net.param_axes,
                after_update=experiment.ema_teacher_update(config, lambda p: p["encoder"]))
