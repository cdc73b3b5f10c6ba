"""SimCLRv2's second stage (Chen et al. 2020b, "Big Self-Supervised Models are Strong
Semi-Supervised Learners", Sec. 2): the SimCLR encoder pre-trained with a 3-layer projection head
(stage 1, `configs/simclrv2.py:pretrain`) is fine-tuned "from the middle layer of the projection
head": encoder, the head's first layer (Linear, BatchNorm, ReLU) and a new linear classifier,
trained with cross-entropy on the labelled images only.

The run starts from `simclrv2.pretrained`, the pre-training run's workdir (`Method.warm_start`:
read once, at the first start; a resumed run restores its own checkpoint). That run must have
finished, and its dataset, model and the first layer of its head (width, norm) must be this
config's; the errors name the fields that differ.
"""

import json

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import _semisup
from sslx.method import Method
from sslx.models import Backbone
from sslx.models.heads import norm_layer
from sslx.train import loop, runs

# Model fields that change how a network computes but not its parameters: a stage may set them
# differently from the run it starts from.
COMPUTE_ONLY_FIELDS = ("dtype", "remat", "vit.attention")


class FineTunedClassifier(nnx.Module):
  """SimCLRv2's fine-tuned network: the encoder, the first layer of the projection head
  (config.projector: Linear to hidden[0] units, its norm, ReLU) and a linear classifier."""

  def __init__(self, config, image_shape, num_classes: int, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    p = config.projector
    width = p.hidden[0]
    # As the first layer of `sslx.models.MLP` (the pre-trained head), so its parameters load.
    self.projector_linear = nnx.Linear(self.encoder.num_features, width,
                                       use_bias=p.norm != "batch", rngs=rngs)
    self.projector_norm = norm_layer(p.norm, width, rngs) if p.norm != "none" else None
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, images, *, train: bool, rng=None):
    """images [B, H, W, C] (normalised) -> (encoder features [B, D], logits float32 [B, C])."""
    features = self.encoder(images, train=train, rng=rng)
    x = self.projector_linear(features)
    if isinstance(self.projector_norm, nnx.BatchNorm):
      x = self.projector_norm(x, use_running_average=not train)
    elif self.projector_norm is not None:
      x = self.projector_norm(x)
    return features, self.head(jax.nn.relu(x)).astype(jnp.float32)


def check_same_fields(name: str, workdir: str, saved: dict, current: dict, prefix: str) -> None:
  """ValueError naming every field of `prefix` (e.g. "model") where the run in `workdir` (given
  by config field `name`) differs from this config, compute-only fields aside. A field only one
  side has counts as differing: a stage is run with the sslx that ran the stage before it."""
  # Through JSON, as config.json holds them (a tuple reads back as a list).
  saved, current = (runs.flatten(json.loads(json.dumps(tree))) for tree in (saved, current))
  differ = sorted(k for k in set(saved) | set(current)
                  if k not in COMPUTE_ONLY_FIELDS and saved.get(k) != current.get(k))
  if differ:
    diffs = ", ".join(f"{prefix + '.' if prefix else ''}{k}: {saved.get(k)!r} there, "
                      f"{current.get(k)!r} here" for k in differ)
    raise ValueError(f"{name}={workdir!r} was trained with other settings ({diffs}); this "
                     f"run must take that run's: set them as it did")


def loaded_like(name: str, fresh, loaded):
  """`loaded` (another run's subtree) cast to the dtypes of `fresh` (this run's), after checking
  that it has its structure and shapes; the error names the paths that differ."""
  shapes = [{jax.tree_util.keystr(p): tuple(x.shape)
             for p, x in jax.tree_util.tree_flatten_with_path(t)[0]} for t in (fresh, loaded)]
  differ = sorted(k for k in shapes[0].keys() | shapes[1].keys()
                  if shapes[0].get(k) != shapes[1].get(k))
  if differ:
    raise ValueError(f"{name} does not fit this run: "
                     + ", ".join(f"{k}: {shapes[1].get(k)} there, {shapes[0].get(k)} here"
                                 for k in differ[:5]))
  return jax.tree.map(lambda new, old: old.astype(new.dtype), fresh, loaded)


def _pretrained_parts(config, mesh) -> dict:
  """{collection: {this network's key: the pre-trained subtree}} from simclrv2.pretrained."""
  workdir = config.simclrv2.pretrained
  saved = runs.load_config(workdir, "simclrv2.pretrained")
  if saved.experiment != "simclr":
    raise ValueError(f"simclrv2.pretrained={workdir!r} is a {saved.experiment!r} run; expected "
                     "a 'simclr' pre-training run (configs/simclrv2.py:pretrain)")
  check_same_fields("simclrv2.pretrained", workdir, {"data": {"name": saved.data.name}},
                    {"data": {"name": config.data.name}}, "")
  check_same_fields("simclrv2.pretrained", workdir, saved.model.to_dict(),
                    config.model.to_dict(), "model")
  # The first layer of the head is what stage 2 takes: its width and norm must be this config's.
  check_same_fields("simclrv2.pretrained", workdir,
                    {"hidden[0]": saved.projector.hidden[0],
                     "norm": saved.projector.get("norm", "batch")},
                    {"hidden[0]": config.projector.hidden[0], "norm": config.projector.norm},
                    "projector")
  state = loop.restore_finished_run(workdir, mesh, name="simclrv2.pretrained", config=saved)
  parts = {}
  for collection, tree in (("params", state.params),
                           ("batch_stats", state.model_state.get("batch_stats", {}))):
    projector = tree.get("projector", {})
    parts[collection] = {"encoder": tree.get("encoder"),
                         "projector_linear": projector.get("hidden_linears", {}).get(0),
                         "projector_norm": projector.get("hidden_norms", {}).get(0)}
  return parts


def get_method(config) -> Method:
  if not config.simclrv2.pretrained:
    raise ValueError("simclrv2.pretrained must be the workdir of the SimCLR pre-training run "
                     "(stage 1: configs/simclrv2.py:pretrain), got ''")
  network = _semisup.classifier(config, FineTunedClassifier)

  def warm_start(variables, mesh):
    parts = _pretrained_parts(config, mesh)
    started = dict(variables)
    for collection, loaded in parts.items():
      tree = {}
      for key, fresh in variables.get(collection, {}).items():
        if key == "head":  # the new classifier
          tree[key] = fresh
          continue
        name = (f"simclrv2.pretrained={config.simclrv2.pretrained!r}: its {collection} of "
                f"{key}")
        if loaded[key] is None:
          raise ValueError(f"{name} are missing")
        tree[key] = loaded_like(name, fresh, loaded[key])
      started[collection] = tree
    started["ema"] = jax.tree.map(jnp.copy, {"params": started["params"],
                                             "batch_stats": started["batch_stats"]})
    return started

  return _semisup.semi_supervised_method(config, network=network, warm_start=warm_start)
