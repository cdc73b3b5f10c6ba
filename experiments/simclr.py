"""SimCLR (Chen et al. 2020): two augmented views per image, an encoder and an MLP projector,
trained with NT-Xent so each view picks out its partner among the 2B-1 others.
"""

from flax import nnx

from experiments._contrastive import two_view_method
from sslx.losses import nt_xent
from sslx.method import Method
from sslx.models import MLP, Backbone


class SimCLRModel(nnx.Module):

  def __init__(self, config, image_shape, *, rngs: nnx.Rngs):
    self.encoder = Backbone(config.model, image_shape, rngs=rngs)
    p = config.projector
    self.projector = MLP(self.encoder.num_features, tuple(p.hidden), p.out_features,
                         norm=p.get("norm", "batch"), norm_last=p.get("norm_last", False),
                         rngs=rngs)


def get_method(config) -> Method:
  def objective(model, z1, z2, batch, variables):
    del model, batch, variables
    return nt_xent(z1, z2, temperature=config.loss.temperature), {}, {}

  return two_view_method(config, SimCLRModel, objective)
