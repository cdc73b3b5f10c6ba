"""Heads that sit on an encoder: projector / predictor MLPs (SimCLR, BYOL and kin), the DINO head
with its weight-normalised prototype layer, and SwAV's prototypes."""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sslx.losses import normalize_prototypes
# The losses' clamped normalisation (norm floored at 1e-6): a zero vector maps to zero with a
# finite gradient, the same convention the losses that consume these heads use.
from sslx.losses._common import l2_normalize

NORMS = ("batch", "layer", "none")
ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


def norm_layer(kind: str, features: int, rngs: nnx.Rngs, affine: bool = True) -> nnx.Module:
  """The normalisation of an MLP block: "batch" (BatchNorm) or "layer" (LayerNorm)."""
  if kind == "batch":  # PyTorch's momentum 0.1, as the reference SSL code bases use
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, use_scale=affine, use_bias=affine,
                         rngs=rngs)
  return nnx.LayerNorm(features, epsilon=1e-5, use_scale=affine, use_bias=affine, rngs=rngs)


def _axis_names(*names):
  # eager_sharding=False: metadata only; sslx.sharding turns the names into NamedShardings.
  return {"out_sharding": names, "eager_sharding": False}


class MLP(nnx.Module):
  """``num_hidden`` blocks of Linear -> norm -> activation, then a Linear (optionally normed).

  SimCLR's projector is ``MLP(d, (2048,), 128)``; SimCLR v2's is three layers with BatchNorm on
  the output (``MLP(d, (2048, 2048), 128, norm_last=True)``, Chen et al. 2020b Sec. 2 and
  google-research/simclr tf2 ProjectionHead); BYOL's predictor is ``MLP(256, (4096,), 256)``
  (Grill et al. 2020 Sec. 3.3, no output norm); DINO's head MLP is
  ``MLP(d, (2048, 2048), 256, norm="none", activation="gelu")``.

  Args:
    in_features: D_in.
    hidden: widths of the hidden layers; the depth is ``len(hidden) + 1`` Linear layers.
    out_features: D_out.
    batch_norm_last: older spelling of ``norm_last=True`` (kept for existing callers).
    norm: "batch" (running statistics, global-batch statistics under a sharded jit), "layer" or
      "none". A Linear followed by BatchNorm has no bias (BN's shift makes it redundant).
    norm_last: normalise the output too, without learnt scale and shift (SimCLR v2's last BN).
    activation: "relu" (SimCLR, BYOL) or "gelu" (exact GELU, as PyTorch's nn.GELU in DINO).
    kernel_init: initialiser of the Linear kernels (default: flax's lecun_normal).
  """

  def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, *,
               batch_norm_last: bool = False, norm: str = "batch", norm_last: bool = False,
               activation: str = "relu", kernel_init: Callable | None = None, rngs: nnx.Rngs):
    if norm not in NORMS:
      raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if min((in_features, out_features, *hidden)) <= 0:
      raise ValueError(f"feature sizes must be positive, got in_features={in_features}, "
                       f"hidden={tuple(hidden)}, out_features={out_features}")
    norm_last = norm_last or batch_norm_last
    if norm_last and norm == "none":
      raise ValueError("norm_last=True needs norm 'batch' or 'layer', got norm='none'")
    init = {} if kernel_init is None else {"kernel_init": kernel_init}
    # Logical axis names, as the ViT's (sslx.models.vit): under mesh.rules=fsdp every kernel is
    # split along its input ("embed"), under tensor along its output ("mlp"), so wide heads
    # (Barlow Twins' 8192, MoCo v3's 4096) and their moments and EMA copies shard with the
    # encoder. Without rules (the default) they are replicated as before.
    init.update(kernel_metadata=_axis_names("embed", "mlp"), bias_metadata=_axis_names("mlp"))
    self.activation = activation
    linears, norms = [], []
    features = in_features
    for width in hidden:
      linears.append(nnx.Linear(features, width, use_bias=norm != "batch", rngs=rngs, **init))
      norms.append(norm_layer(norm, width, rngs) if norm != "none" else None)
      features = width
    self.hidden_linears = nnx.List(linears)
    self.hidden_norms = nnx.List(norms)
    self.out = nnx.Linear(features, out_features, use_bias=not (norm_last and norm == "batch"),
                          rngs=rngs, **init)
    self.out_bn = norm_layer(norm, out_features, rngs, affine=False) if norm_last else None

  def __call__(self, x, *, train: bool):
    """x: [B, in_features] -> [B, out_features]. ``train`` selects batch vs running BN stats."""
    act = ACTIVATIONS[self.activation]
    for linear, norm in zip(self.hidden_linears, self.hidden_norms):
      x = linear(x)
      if isinstance(norm, nnx.BatchNorm):
        x = norm(x, use_running_average=not train)
      elif norm is not None:
        x = norm(x)
      x = act(x)
    x = self.out(x)
    if isinstance(self.out_bn, nnx.BatchNorm):
      x = self.out_bn(x, use_running_average=not train)
    elif self.out_bn is not None:
      x = self.out_bn(x)
    # Float32 out whatever the layers' compute dtype (sslx.models.set_compute_dtype): losses,
    # EMA targets and the next head read it.
    return x.astype(jnp.float32)


class DINOHead(nnx.Module):
  """DINO's projection head (Caron et al. 2021, App. and facebookresearch/dino ``DINOHead``).

  ``x -> MLP (num_layers Linear layers, GELU, widths hidden -> bottleneck) -> l2-normalise ->
  weight-normalised Linear without bias to out_dim prototypes``. The last layer's weight is
  ``g * v / |v|`` per output unit (PyTorch ``weight_norm`` over the input dimension); DINO fills
  ``g`` with 1 and by default freezes it (``norm_last_layer=True``), so the logits are cosines
  between the bottleneck feature and each prototype: then ``g`` is no parameter at all here.

  Defaults: out_dim 65536, hidden 2048, bottleneck 256, 3 layers, no BN (DINO Sec. 3.1 and
  main_dino.py). The MLP kernels start from N(0, 0.02) with zero biases (dino's
  ``trunc_normal_(std=.02)``, whose absolute cut at +-2 never binds at that std).

  Args:
    in_features: encoder feature size (384 for ViT-S/16, 2048 for ResNet-50).
    out_features: K, the number of prototypes (65536 in the paper).
    hidden: MLP width. bottleneck: width before the last layer. num_layers: Linear layers in the
      MLP (>= 1; 1 means a single Linear to the bottleneck).
    norm: "none" (DINO's default, ``use_bn=False``) or "batch" (``use_bn=True``, ResNet runs).
    norm_last_layer: freeze the weight-norm gain at 1 (DINO's default; False trains ``g``).
  """

  def __init__(self, in_features: int, out_features: int = 65536, *, hidden: int = 2048,
               bottleneck: int = 256, num_layers: int = 3, norm: str = "none",
               norm_last_layer: bool = True, rngs: nnx.Rngs):
    if num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if out_features <= 0:
      raise ValueError(f"out_features must be positive, got {out_features}")
    self.mlp = MLP(in_features, (hidden,) * (num_layers - 1), bottleneck, norm=norm,
                   activation="gelu", kernel_init=nnx.initializers.normal(0.02), rngs=rngs)
    # Stored [bottleneck, K] (flax's Linear layout); each column is one prototype direction.
    self.last_v = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(),
                                                            (bottleneck, out_features)),
                            **_axis_names("embed", "mlp"))
    self.last_g = (None if norm_last_layer
                   else nnx.Param(jnp.ones((out_features,)), **_axis_names("mlp")))

  def __call__(self, x, *, train: bool = False):
    """x: [B, in_features] -> logits [B, out_features], float32.

    The MLP follows the model's compute dtype; the weight-normalised last layer stays float32:
    its cosines are divided by temperatures down to 0.04 before a 65536-way softmax, where
    bfloat16's 8-bit mantissa (cosine error ~0.004) would move logits by ~0.1."""
    z = l2_normalize(self.mlp(x, train=train))
    w = l2_normalize(self.last_v[...], axis=0)
    if self.last_g is not None:
      w = w * self.last_g[...]
    return z @ w


class Prototypes(nnx.Module):
  """SwAV's prototypes (Caron et al. 2020, facebookresearch/swav ``prototypes``): a bias-free
  Linear from l2-normalised features to K scores, with unit-norm prototype rows.

  SwAV renormalises the rows before every step, outside the gradient; call ``renormalize()`` on
  the module (or ``sslx.losses.normalize_prototypes`` on the ``prototypes`` parameter) in the
  train step before ``jax.grad``. Rows start unit-norm. Defaults of the paper: K = 3000, D = 128.

  Args:
    in_features: D, the projector output size.
    num_prototypes: K.
  """

  def __init__(self, in_features: int = 128, num_prototypes: int = 3000, *, rngs: nnx.Rngs):
    if in_features <= 0 or num_prototypes <= 0:
      raise ValueError(f"in_features and num_prototypes must be positive, got "
                       f"in_features={in_features}, num_prototypes={num_prototypes}")
    # [K, D] as PyTorch's nn.Linear weight, the layout normalize_prototypes expects.
    w = nnx.initializers.lecun_normal()(rngs.params(), (num_prototypes, in_features))
    self.prototypes = nnx.Param(normalize_prototypes(w))

  def renormalize(self):
    """Projects the prototype rows back onto the unit sphere (in place, no gradient)."""
    self.prototypes[...] = normalize_prototypes(jax.lax.stop_gradient(self.prototypes[...]))

  def __call__(self, z):
    """z: [B, D] -> scores [B, K] = normalize(z) @ prototypes.T."""
    return l2_normalize(z) @ self.prototypes[...].T
