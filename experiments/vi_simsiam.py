"""VI-SimSiam (Nakamura, Okada & Taniguchi 2023, "Representation Uncertainty in Self-Supervised
Learning as Variational Inference"): SimSiam whose predictor also gives a power spherical kappa.
"""

import math

import jax
import jax.numpy as jnp

from experiments.simsiam import siamese_method
from sslx.losses import vi_simsiam
from sslx.method import Method

# kappa > 0 with a floor, so log C(kappa) and its gradient stay finite at init.
KAPPA_FLOOR = 1e-3


def posterior(prediction):
  """Predictor output [B, D + 1] -> (mean direction [B, D], concentration kappa [B])."""
  return prediction[:, :-1], jax.nn.softplus(prediction[:, -1]) + KAPPA_FLOOR


def log_sphere_area(dim: int) -> float:
  """log of the area of the unit sphere in R^dim: -log of the uniform density on it."""
  return math.log(2.0) + dim / 2 * math.log(math.pi) - math.lgamma(dim / 2)


def vi_objective(p1, p2, z1, z2):
  (mu1, kappa1), (mu2, kappa2) = posterior(p1), posterior(p2)
  # Symmetrised negative log-likelihood of each view's target direction (the paper's VI-SimSiam
  # objective, averaged over the two directions as SimSiam's loss), reported relative to the
  # uniform density on the sphere (a constant: same gradient): 0 at kappa -> 0 and negative
  # as the posterior explains the targets, whatever the dimension, instead of a dimension-
  # dependent offset (-8.9 at D = 32, -4898 at D = 2048) that hides the learning in the logs.
  nll = (vi_simsiam(mu1, z2, kappa1) + vi_simsiam(mu2, z1, kappa2)) / 2
  value = nll - log_sphere_area(z1.shape[-1])
  kappa = jnp.concatenate([kappa1, kappa2])
  return value, {"train/kappa_mean": jnp.mean(kappa), "train/kappa_min": jnp.min(kappa)}


def get_method(config) -> Method:
  # One more predictor output than the projection: its softplus is kappa.
  return siamese_method(config, vi_objective, extra_outputs=1)
