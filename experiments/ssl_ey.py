"""SSL-EY (Chapman et al. 2024, "Unconstrained Stochastic CCA"): the Eckhart-Young CCA objective
on two views' projections, -2 tr(cross-covariance) + ||within-view covariance||_F^2.
"""

from experiments import _redundancy
from sslx.losses import cca_ey
from sslx.method import Method


def get_method(config) -> Method:

  def objective(context):  # SSL-EY has no loss hyperparameters
    z1, z2 = context.projections
    return cca_ey(z1, z2), {}

  return _redundancy.redundancy_method(config, objective)
