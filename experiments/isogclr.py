"""iSogCLR (Qiu et al. 2023): SimCLR's two views and projector with a learned temperature per
training image, the robust global contrastive loss `sslx.losses.isogclr`.

Per-example state, indexed by the batch's ``"index"`` (each image's position in the training
set: the whole train split, or the long-tailed subset of ``data.imbalance_ratio``), three
float32 tables of one entry per training image (12 bytes an image: 15 MB for ImageNet),
replicated on every device and saved with the train state, so a resumed or multi-process run
continues with the same temperatures:

- ``tau``: the temperatures, starting at ``loss.tau_init``;
- ``u``: the moving averages of each image's negative term (`isogclr`'s ``u``), 0 until seen;
- ``tau_momentum``: the momentum of each temperature's gradient.

The temperatures are not trained by the run's optimizer: as the authors' code (LibAUC's
``GCLoss_v1``), each step takes ``m_i <- (1 - beta) m_i + beta grad_i`` and
``tau_i <- clip(tau_i - eta m_i, tau_min, tau_max)`` for the batch's images, ``grad_i`` the mean
of the two views' estimates of the objective's derivative in ``tau_i``.
"""

import jax
import jax.numpy as jnp

from experiments._contrastive import two_view_method
from experiments.simclr import SimCLRModel
from sslx import experiment
from sslx.data import sources
from sslx.losses import isogclr
from sslx.method import Method

STATE = "isogclr"


def check_config(loss) -> None:
  """Bad `loss` values, named, before any compute."""
  experiment.check_positive("loss.tau_min", loss.tau_min)
  if not loss.tau_min <= loss.tau_init <= loss.tau_max:
    raise ValueError(f"loss.tau_init must lie in [loss.tau_min, loss.tau_max] = "
                     f"[{loss.tau_min}, {loss.tau_max}], got {loss.tau_init!r}")
  experiment.check_non_negative("loss.rho", loss.rho)
  experiment.check_non_negative("loss.eta", loss.eta)
  for name in ("gamma", "beta"):
    value = loss[name]
    if not 0 < value <= 1:
      raise ValueError(f"loss.{name} must be in (0, 1], got {value!r}")


def init_tables(num_examples: int, tau_init: float) -> dict:
  """The per-example state at the start: every temperature at tau_init, nothing seen yet."""
  return {"tau": jnp.full((num_examples,), tau_init, jnp.float32),
          "u": jnp.zeros((num_examples,), jnp.float32),
          "tau_momentum": jnp.zeros((num_examples,), jnp.float32)}


def loss_and_tables(z1, z2, index, tables: dict, loss_config) -> tuple[jax.Array, dict]:
  """(the loss, the tables with the batch's rows updated) for projections z1, z2 [B, D] of the
  training images at positions ``index`` [B]: `isogclr` on their temperatures and moving
  averages, then LibAUC's momentum step of their temperatures. Differentiable in z1, z2; the
  tables carry no gradient."""
  tau, u = tables["tau"][index], tables["u"][index]
  loss_fn = lambda z1, z2, tau: isogclr(z1, z2, tau, u, rho=loss_config.rho,  # noqa: E731
                                        gamma=loss_config.gamma)
  # The temperatures' gradient beside the value: the value's own gradient flows to z1, z2.
  (value, aux), tau_grad = jax.value_and_grad(loss_fn, argnums=2, has_aux=True)(z1, z2, tau)
  # jax.grad of the batch mean is 2/B times LibAUC's per-example estimate (isogclr's doc).
  tau_grad = jax.lax.stop_gradient(tau_grad) * (z1.shape[0] / 2)
  momentum = (1 - loss_config.beta) * tables["tau_momentum"][index] + loss_config.beta * tau_grad
  tau = jnp.clip(tau - loss_config.eta * momentum, loss_config.tau_min, loss_config.tau_max)
  return value, experiment.set_rows(tables, index,
                                    {"tau": tau, "u": aux["u"], "tau_momentum": momentum})


def get_method(config) -> Method:
  loss_config = config.loss
  check_config(loss_config)
  num_examples = sources.num_train_examples(config.data)

  def objective(model, z1, z2, batch, variables):
    del model
    index = experiment.batch_index(batch, "iSogCLR")
    value, tables = loss_and_tables(z1, z2, index, variables[STATE], loss_config)
    tau = tables["tau"][index]
    metrics = {"train/tau_mean": jnp.mean(tau), "train/tau_std": jnp.std(tau)}
    return value, metrics, {STATE: tables}

  return two_view_method(config, SimCLRModel, objective,
                         init_state=lambda: {STATE: init_tables(num_examples,
                                                                loss_config.tau_init)})
