"""The EMA scaling rule ("How to Scale Your EMA", Busbridge et al. 2023) on BYOL: does a run at
batch kappa*B with the rule follow the batch-B run per epoch more closely than without it?

    .venv/bin/python benchmarks/ema_scaling_rule.py                  # the default setting
    .venv/bin/python benchmarks/ema_scaling_rule.py --kappa 8 --epochs 4 --images 1024

Three BYOL runs on the same Fashion-MNIST images, in the same order (big batch k holds small
batches kappa*k .. kappa*k+kappa-1): batch B with momentum rho; batch kappa*B with the rule
(rho ** kappa); batch kappa*B without it (rho). All use plain SGD with the linear learning-rate
rule. Prints and saves (benchmarks/results/ema_scaling_rule.json), at every epoch boundary:
  * the distance between each big-batch run's EMA teacher and the batch-B run's teacher, beside
    how far the batch-B teacher has moved: what the rule is about (the teacher's trajectory);
  * the mean training loss of each epoch.

The setting is the one the rule's derivation assumes (its SDE regime): no BatchNorm (a small ViT
and LayerNorm heads, so an example's gradient does not depend on its batch), deterministic views
(view 1 the image, view 2 its mirror image, so both runs see the same pairs), and a learning rate
small enough for the linear learning-rate rule to hold. With BatchNorm, random augmentations and
LARS (the benchmarks of issue 5's notes), the optimizer's own B-vs-kappa*B differences were larger
than the teacher's and hid the rule's effect.
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import byol as byol_config  # noqa: E402
from sslx.train import loop, optim  # noqa: E402
from sslx.train.state import TrainState  # noqa: E402
from sslx.train.step import make_train_step  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def byol_config_for(batch_size: int, *, reference_batch_size: int, momentum: float,
                    scaling_rule: bool, lr: float, total_steps: int):
  """BYOL's smoke config in the rule's regime (see the module docstring)."""
  c = byol_config.get_config("smoke")
  with c.unlocked():
    c.model.name = "vit"
    c.model.vit.update(variant="", patch_size=7, width=32, depth=1, num_heads=2)
    c.projector.norm = "layer"
    c.predictor.norm = "layer"
    c.augment.update(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
                     jitter_prob=0.0)
    c.augment_view1 = {"flip_prob": 0.0}
    c.augment_view2 = {"flip_prob": 1.0}
    c.batch_size = batch_size
    c.total_steps = total_steps
    c.ema.update(base=momentum, schedule="constant", reference_batch_size=reference_batch_size,
                 scaling_rule=scaling_rule)
    c.optim.update(name="sgd", lr=lr, lr_scaling="linear", warmup_steps=0, weight_decay=0.0,
                   momentum=0.0)
  return c


def train_epochs(config, images, epochs: int):
  """Trains `config` for `epochs` passes over `images` (in order, no shuffling).

  Returns (mean training loss of each epoch [epochs], the teacher's parameters flattened at
  every epoch boundary [epochs + 1, P]). The initial state depends on the seed only, so runs at
  different batch sizes start from the same parameters.
  """
  method = loop.get_method(config)
  tx, schedule = optim.make_optimizer(config.optim, config.batch_size, config.total_steps)
  variables = dict(method.init(jax.random.PRNGKey(config.seed), None))
  params = variables.pop("params")
  state = TrainState(jnp.zeros((), jnp.int32), params, variables, tx.init(params),
                     jax.random.PRNGKey(config.seed + 1), jnp.zeros((), jnp.int32))
  step = make_train_step(method, tx, schedule, state_sharding=None, batch_sharding=None,
                         metric_sharding=None)

  def teacher(state):
    leaves = jax.tree.leaves(jax.device_get(state.model_state["teacher"]["params"]))
    return np.concatenate([np.ravel(x) for x in leaves])

  b = config.batch_size
  steps_per_epoch = len(images) // b
  labels = jnp.zeros((b,), jnp.int32)
  losses, teachers = [], [teacher(state)]
  for _ in range(epochs):
    for i in range(steps_per_epoch):
      state, metrics = step(state, {"image": images[i * b:(i + 1) * b], "label": labels})
      losses.append(metrics["train/loss"])
    teachers.append(teacher(state))
  losses = np.asarray(jax.device_get(losses)).reshape(epochs, steps_per_epoch)
  return losses.mean(axis=1), np.stack(teachers)


def compare(images, *, batch_size: int, kappa: int, epochs: int, lr: float,
            momentum: float) -> dict:
  """The three runs of the module docstring; every curve is indexed by epoch."""
  images = jnp.asarray(images)
  if len(images) % (batch_size * kappa):
    raise ValueError(f"images: {len(images)} is not a multiple of batch_size * kappa = "
                     f"{batch_size * kappa}")
  runs = {}
  for name, batch, rule in (("B", batch_size, True), ("kappa_B_rule", kappa * batch_size, True),
                            ("kappa_B_no_rule", kappa * batch_size, False)):
    config = byol_config_for(batch, reference_batch_size=batch_size, momentum=momentum,
                             scaling_rule=rule, lr=lr,
                             total_steps=epochs * len(images) // batch)
    runs[name] = train_epochs(config, images, epochs)
  loss_b, teacher_b = runs["B"]
  out = {"teacher_moved_B": np.linalg.norm(teacher_b - teacher_b[0], axis=1).tolist(),
         "loss_B": loss_b.tolist()}
  for name in ("kappa_B_rule", "kappa_B_no_rule"):
    loss, teacher = runs[name]
    out[f"teacher_distance_{name}"] = np.linalg.norm(teacher - teacher_b, axis=1).tolist()
    out[f"loss_{name}"] = loss.tolist()
  return out


def fashion_mnist_images(n: int, seed: int = 0, data_dir: str | None = None) -> np.ndarray:
  from sslx.data import pipeline, sources
  info = sources.get_dataset_info("fashion_mnist")
  source = sources.load_source("fashion_mnist", info.train_split, data_dir=data_dir)
  index = np.random.default_rng(seed).choice(len(source), n, replace=False)
  return np.stack([np.asarray(e["image"]) for e in pipeline.read_examples(source, index)])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=512)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--kappa", type=int, default=4)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--lr", type=float, default=0.01, help="SGD lr per 256 examples")
  parser.add_argument("--momentum", type=float, default=0.95, help="EMA momentum at --batch")
  args = parser.parse_args()
  t0 = time.time()
  result = compare(fashion_mnist_images(args.images), batch_size=args.batch, kappa=args.kappa,
                   epochs=args.epochs, lr=args.lr, momentum=args.momentum)
  result.update(settings=vars(args), seconds=round(time.time() - t0, 1), jax=jax.__version__,
                machine=f"{platform.machine()}, {os.cpu_count()} CPUs")
  for key, value in result.items():
    if isinstance(value, list):
      print(f"{key:34s}", " ".join(f"{v:8.4f}" for v in value))
  os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
  path = os.path.join(HERE, "results", "ema_scaling_rule.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print(f"written to {path} ({result['seconds']} s)")


if __name__ == "__main__":
  main()
