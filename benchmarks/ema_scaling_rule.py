"""Work in progress (issue 5): does BYOL at batch kappa*B with the EMA scaling rule follow the
batch-B loss curve per epoch more closely than without it? Prints the three curves.

    .venv/bin/python benchmarks/ema_scaling_rule.py [images B kappa lr_per_256 base_momentum]
    MOM=0 .venv/bin/python benchmarks/ema_scaling_rule.py 2048 32 4 0.5 0.9

Design: the BYOL smoke model on Fashion-MNIST; both runs see the same image stream (big batch k
is small batches kappa*k .. kappa*k+kappa-1); SGD (momentum $MOM, default 0.9) with the linear
learning-rate rule; the curve is the BYOL loss on a fixed batch of 256 with fixed views at every
epoch boundary, which removes sampling noise. Not yet a result: at this scale the rule was not
closer (see issue 5's notes), because optimizer / BatchNorm differences between B and kappa*B
dominate the teacher-lag effect.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import byol as byol_config  # noqa: E402
from sslx.data import sources  # noqa: E402
from sslx.train import loop, optim  # noqa: E402
from sslx.train.state import TrainState  # noqa: E402
from sslx.train.step import make_train_step  # noqa: E402

args = [float(a) for a in sys.argv[1:]] + [None] * 5
N_IMG, B, KAPPA = int(args[0] or 2048), int(args[1] or 32), int(args[2] or 4)
LR, BASE = args[3] or 0.4, args[4] or 0.97
MOMENTUM = float(os.environ.get("MOM", "0.9"))


def run(images, batch, rule):
  c = byol_config.get_config("smoke")
  with c.unlocked():
    c.batch_size = batch
    c.total_steps = N_IMG // batch
    c.ema.base = BASE
    c.ema.reference_batch_size = B
    c.ema.scaling_rule = rule
    c.optim.update(name="sgd", lr=LR, lr_scaling="linear", warmup_steps=0, weight_decay=0.0,
                   momentum=MOMENTUM)
  method = loop.get_method(c)
  tx, schedule = optim.make_optimizer(c.optim, c.batch_size, c.total_steps)
  variables = dict(method.init(jax.random.PRNGKey(0), None))
  params = variables.pop("params")
  state = TrainState(jnp.zeros((), jnp.int32), params, variables, tx.init(params),
                     jax.random.PRNGKey(1), jnp.zeros((), jnp.int32))
  step = make_train_step(method, tx, schedule, state_sharding=None, batch_sharding=None,
                         metric_sharding=None)
  fixed = {"image": jnp.asarray(images[:256]), "label": jnp.zeros((256,), jnp.int32)}
  fixed_loss = jax.jit(lambda s: method.loss(s.params, {**s.variables, "step": s.step}, fixed,
                                             jax.random.PRNGKey(7))[0])
  every = B * KAPPA // batch
  curve = []
  for k in range(c.total_steps):
    if k % every == 0:
      curve.append(float(fixed_loss(state)))
    chunk = {"image": jnp.asarray(images[k * batch:(k + 1) * batch]),
             "label": jnp.zeros((batch,), jnp.int32)}
    state, _ = step(state, chunk)
  curve.append(float(fixed_loss(state)))
  return np.array(curve)


def main():
  info = sources.get_dataset_info("fashion_mnist")
  source = sources.load_source("fashion_mnist", info.train_split)
  index = np.random.default_rng(0).choice(len(source), N_IMG, replace=False)
  images = np.stack([np.asarray(source[int(i)]["image"]) for i in index])
  t0 = time.time()
  small = run(images, B, True)
  with_rule = run(images, B * KAPPA, True)
  without = run(images, B * KAPPA, False)
  np.set_printoptions(precision=3, linewidth=200)
  print("batch B        ", small)
  print("kappa B, rule  ", with_rule)
  print("kappa B, no rule", without)
  d_rule, d_none = np.abs(with_rule - small).mean(), np.abs(without - small).mean()
  print(f"mean |diff| to batch B: rule {d_rule:.4f}, no rule {d_none:.4f} "
        f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
  main()
