"""Config pieces shared by the multi-crop methods' configs (swav, dino): the `multicrop` groups
of `sslx.data.views.multi_crop` and their Fashion-MNIST form."""

import ml_collections

# Fashion-MNIST is grey: no saturation / hue / grayscale, no blur at 28 px (the preset's ops).
GREY_VIEW = "flip(p=0.5)|color_jitter(0.4, 0.4, 0.0, 0.0, p=0.8)"


def multicrop(global_crops: dict, local_crops: dict) -> ml_collections.ConfigDict:
  """``{"global": ..., "local": ...}`` groups (number, size, scale, pipeline); a local group
  with number 0 gives a two-crop run."""
  return ml_collections.ConfigDict({"global": dict(global_crops), "local": dict(local_crops)})


def fashion_mnist(global_scale: tuple, local_scale: tuple, local_number: int = 4
                  ) -> ml_collections.ConfigDict:
  """2 global crops of 28 px and `local_number` local crops of 12 px (divisible by the ViT
  preset's 4-px patches); fewer local crops than the papers' 6-8 for the CPU budget."""
  return multicrop({"number": 2, "size": 28, "scale": global_scale, "pipeline": GREY_VIEW},
                   {"number": local_number, "size": 12, "scale": local_scale,
                    "pipeline": GREY_VIEW})


def shrink_for_smoke(c: ml_collections.ConfigDict) -> None:
  """At most 2 local crops in the smoke variant."""
  c.multicrop["local"]["number"] = min(c.multicrop["local"]["number"], 2)
