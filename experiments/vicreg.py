"""VICReg (Bardes et al. 2022): invariance (MSE between the two views' projections) plus a
variance hinge and a covariance penalty on each view, which keep the projections from collapsing.
"""

from experiments import _redundancy
from sslx import experiment
from sslx.losses import vicreg
from sslx.method import Method


def get_method(config) -> Method:
  weights = {name: config.loss[name] for name in ("sim_weight", "var_weight", "cov_weight")}
  for name, weight in weights.items():
    experiment.check_non_negative(f"loss.{name}", weight)

  def objective(context):
    z1, z2 = context.projections
    # The three unweighted terms, for the logs: the loss with one weight 1 and the others 0.
    terms = {name: vicreg(z1, z2, **{n: float(n == name) for n in weights}) for name in weights}
    value = sum(weights[name] * terms[name] for name in weights)
    return value, {f"train/{name.removesuffix('_weight')}_loss": terms[name] for name in weights}

  return _redundancy.redundancy_method(config, objective)
