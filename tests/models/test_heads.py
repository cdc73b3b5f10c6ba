"""Heads: projector / predictor MLPs against a NumPy float64 forward pass, the DINO head (shape,
weight normalisation, parameter count of the authors' module) and SwAV's prototypes."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sslx.models import MLP, DINOHead, Prototypes, count_params

_erf = np.vectorize(math.erf)


def _f64(v):
  return np.asarray(v[...], np.float64)


def _np_norm(x, kind, module, affine=True, eps=1e-5):
  """Batch norm (train mode: biased batch variance) or layer norm, then the affine part."""
  axis = 0 if kind == "batch" else -1
  y = (x - x.mean(axis, keepdims=True)) / np.sqrt(x.var(axis, keepdims=True) + eps)
  if affine:  # hidden norms have a learnt scale and shift, the optional output norm has none
    y = y * _f64(module.scale) + _f64(module.bias)
  else:
    assert module.scale is None and module.bias is None
  return y


def _np_linear(x, linear):
  y = x @ _f64(linear.kernel)
  return y if linear.bias is None else y + _f64(linear.bias)


def _np_mlp(x, mlp, norm, activation):
  act = ((lambda v: np.maximum(v, 0)) if activation == "relu"
         else (lambda v: 0.5 * v * (1 + _erf(v / math.sqrt(2)))))
  for linear, nm in zip(mlp.hidden_linears, mlp.hidden_norms):
    x = _np_linear(x, linear)
    if norm != "none":
      x = _np_norm(x, norm, nm)
    x = act(x)
  x = _np_linear(x, mlp.out)
  if mlp.out_bn is not None:
    x = _np_norm(x, norm, mlp.out_bn, affine=False)
  return x


@pytest.mark.parametrize("norm, activation, norm_last", [
    ("batch", "relu", True),   # SimCLR v2 projector, spelt with the older batch_norm_last=True
    ("layer", "gelu", False),
    ("none", "gelu", False),   # DINO head MLP
])
def test_mlp_matches_numpy(norm, activation, norm_last):
  rng = np.random.default_rng(0)
  if norm == "batch":  # the positional signature and keyword of the existing callers
    mlp = MLP(6, (12, 12), 8, batch_norm_last=True, rngs=nnx.Rngs(0))
  else:
    mlp = MLP(6, (12, 12), 8, norm=norm, norm_last=norm_last, activation=activation,
              rngs=nnx.Rngs(0))
  # Non-trivial affine parameters, so that a dropped scale or shift shows.
  for _, var in nnx.iter_graph(mlp):
    if isinstance(var, nnx.Param) and var.ndim == 1:
      var[...] = jnp.asarray(rng.uniform(0.5, 1.5, var.shape), jnp.float32)
  x = rng.normal(size=(10, 6)) * np.arange(1, 7)
  y = nnx.jit(lambda m, x: m(x, train=True))(mlp, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(y, _np_mlp(x, mlp, norm, activation), rtol=2e-4, atol=2e-5)
  assert y.shape == (10, 8)
  # A Linear feeding a BatchNorm has no bias (BN's shift makes it redundant); otherwise it has.
  assert all((lin.bias is None) == (norm == "batch") for lin in mlp.hidden_linears)
  assert (mlp.out.bias is None) == (norm_last and norm == "batch")
  # Parameters only (BN running statistics are state): 6*12 + 12*12 + 12*8, 2 per normed unit,
  # biases where there is no BatchNorm after the Linear.
  weights, normed = 6 * 12 + 12 * 12 + 12 * 8, 12 + 12
  biases = {"batch": 0, "layer": 12 + 12 + 8, "none": 12 + 12 + 8}[norm]
  assert count_params(mlp) == weights + (2 * normed if norm != "none" else 0) + biases


def test_dino_head_parameter_count_matches_the_authors_module():
  """facebookresearch/dino DINOHead(384, 65536): Linear(384, 2048), Linear(2048, 2048),
  Linear(2048, 256) with biases, then weight_norm(Linear(256, 65536, bias=False)) whose gain g
  [65536] is frozen (norm_last_layer=True): no trainable parameter."""
  mlp = (384 * 2048 + 2048) + (2048 * 2048 + 2048) + (2048 * 256 + 256)
  frozen = nnx.eval_shape(lambda: DINOHead(384, 65536, rngs=nnx.Rngs(0)))
  assert count_params(frozen) == mlp + 256 * 65536 == 22_286_592
  free = nnx.eval_shape(lambda: DINOHead(384, 65536, norm_last_layer=False, rngs=nnx.Rngs(0)))
  assert count_params(free) == mlp + 256 * 65536 + 65536


def test_dino_head_matches_numpy_and_is_weight_normalised():
  rng = np.random.default_rng(1)
  head = DINOHead(6, 20, hidden=12, bottleneck=8, norm_last_layer=False, rngs=nnx.Rngs(0))
  head.last_g[...] = jnp.asarray(rng.uniform(0.5, 2.0, 20), jnp.float32)
  x = rng.normal(size=(5, 6))
  apply = nnx.jit(lambda m, x: m(x))
  y = np.asarray(apply(head, jnp.asarray(x, jnp.float32)), np.float64)
  z = _np_mlp(x, head.mlp, "none", "gelu")
  z = z / np.linalg.norm(z, axis=-1, keepdims=True)
  v = _f64(head.last_v)
  w = v / np.linalg.norm(v, axis=0, keepdims=True) * _f64(head.last_g)  # weight_norm(dim=0)
  np.testing.assert_allclose(y, z @ w, rtol=1e-4, atol=1e-5)
  # Weight norm: rescaling a prototype's direction vector changes nothing.
  head.last_v[...] = head.last_v[...] * jnp.asarray(rng.uniform(0.1, 10.0, 20), jnp.float32)
  np.testing.assert_allclose(apply(head, jnp.asarray(x, jnp.float32)), y, rtol=1e-4, atol=1e-5)
  # Frozen gain: no last_g parameter, and the logits are cosines.
  frozen = DINOHead(6, 20, hidden=12, bottleneck=8, rngs=nnx.Rngs(0))
  assert frozen.last_g is None
  assert np.abs(np.asarray(apply(frozen, jnp.asarray(x, jnp.float32)))).max() <= 1 + 1e-6


def test_swav_prototypes():
  rng = np.random.default_rng(2)
  protos = Prototypes(8, 20, rngs=nnx.Rngs(0))
  assert count_params(protos) == 20 * 8  # bias-free Linear(128, 3000) in SwAV, here (8, 20)
  np.testing.assert_allclose(np.linalg.norm(protos.prototypes[...], axis=1), 1.0, rtol=1e-6)
  z = rng.normal(size=(4, 8))
  apply = nnx.jit(lambda m, z: m(z))
  p = _f64(protos.prototypes)
  expected = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ p.T
  np.testing.assert_allclose(apply(protos, jnp.asarray(z, jnp.float32)), expected,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(apply(protos, jnp.asarray(3 * z, jnp.float32)), expected,
                             rtol=1e-5, atol=1e-6)
  # After an update moves the rows off the sphere, renormalize() puts them back, same directions.
  protos.prototypes[...] = protos.prototypes[...] * jnp.arange(1.0, 21.0)[:, None]
  protos.renormalize()
  np.testing.assert_allclose(protos.prototypes[...], p, rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="norm"):
    MLP(4, (8,), 2, norm="group", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="activation"):
    MLP(4, (8,), 2, activation="tanh", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="norm_last"):
    MLP(4, (8,), 2, norm="none", norm_last=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="hidden"):
    MLP(4, (0,), 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_layers"):
    DINOHead(4, 8, num_layers=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_prototypes"):
    Prototypes(4, 0, rngs=nnx.Rngs(0))
