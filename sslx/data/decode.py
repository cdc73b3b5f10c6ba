"""Host-side image decoding with the train-time crops taken from the full image (as SimCLR, BYOL,
DINO and big_vision's ``decode_jpeg_and_inception_crop`` do), for datasets of encoded images.

Each record's crop boxes are sampled on the image's original size (torchvision's
``RandomResizedCrop.get_params``: area fraction, log-uniform aspect ratio, 10 tries then a
centre crop), the image is decoded at the smallest JPEG scale (1, 1/2, 1/4, 1/8) that still
gives every crop at least its output resolution, and each box is resized bilinearly to its view
size (`RESIZERS`). Everything else of the augmentation (flip, colour jitter, grayscale, blur,
solarize) stays on device. The randomness of a record is a pure function of (seed, position in
the training stream), so batches are the same with any number of worker processes and a resumed
run crops exactly as an uninterrupted one. Decoders and resizers are compared in
benchmarks/input_pipeline.py.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
  "DECODERS",
  "RESIZERS",
  "CorruptImageError",
  "CropSpec",
  "HostCrops",
  "decode_boxes",
  "host_crops_for",
  "image_size",
  "reduction_factor",
  "sample_crop_box",
]

log = logging.getLogger(__name__)

# The decoding libraries (config field data.decoder); benchmarks/input_pipeline.py measures them
# side by side. simplejpeg and opencv come with `pip install sslx[jpeg]`.
DECODERS = ("pil", "simplejpeg", "opencv")
# How a crop box is resized to its view (config field data.resizer): "pil" is bilinear with
# antialiasing (torchvision's RandomResizedCrop on PIL images); "opencv" is bilinear without
# antialiasing (TF's tf.image.resize default, as big_vision's inception crop) after averaging
# whole f x f blocks where it shrinks 2x or more: several times faster, slightly more aliased.
RESIZERS = ("pil", "opencv")
# torchvision's RandomResizedCrop: 10 candidate boxes, then the centre-crop fallback.
CROP_TRIALS = 10
# JPEG decoders scale by 1/2, 1/4, 1/8 in the inverse DCT (nearly free); other factors are slower.
_JPEG_FACTORS = (8, 4, 2, 1)


# What PIL, simplejpeg and OpenCV raise on a broken or truncated file (PIL: OSError and its
# UnidentifiedImageError, SyntaxError / struct.error for mangled headers, EOFError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)


class CorruptImageError(ValueError):
  """A record's image cannot be decoded; the message names the record."""


def _check_library(field: str, value: str, accepted: tuple[str, ...]) -> str:
  """``value`` if it is one of ``accepted`` and its library is installed, else a ValueError
  naming the config field ``data.<field>``."""
  if value not in accepted:
    raise ValueError(f"data.{field} must be one of {list(accepted)}, got {value!r}")
  try:
    if value == "simplejpeg":
      import simplejpeg  # noqa: F401  (fail here, not in a worker)
    elif value == "opencv":
      import cv2

      # One thread per process: the pipeline runs a worker process per core.
      cv2.setNumThreads(1)
  except ImportError as e:
    raise ValueError(f"data.{field}={value!r} needs a library that is not installed ({e});"
                     " `pip install sslx[jpeg]` installs simplejpeg and opencv-python-headless")
  return value


# --------------------------------------------------------------------------------------------
# Crop boxes.


@dataclasses.dataclass(frozen=True)
class CropSpec:
  """One view's crop: output side ``size`` (pixels), area fraction range ``scale``, aspect ratio
  (width / height) range ``ratio``."""

  size: int
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)

  def __post_init__(self):
    if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 1:
      raise ValueError(f"crop size: expected a positive int, got {self.size!r}")
    lo, hi = self.scale
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"crop scale: expected 0 < lo <= hi <= 1, got {self.scale!r}")
    lo, hi = self.ratio
    if not 0 < lo <= hi:
      raise ValueError(f"crop ratio: expected 0 < lo <= hi, got {self.ratio!r}")


def sample_crop_box(rng: np.random.Generator, height: int, width: int, scale=(0.08, 1.0),
                    ratio=(3.0 / 4.0, 4.0 / 3.0)) -> tuple[int, int, int, int]:
  """``(top, left, h, w)`` in whole pixels of a ``height`` x ``width`` image, as torchvision's
  ``RandomResizedCrop.get_params``: up to 10 candidates with area fraction uniform in ``scale``
  and log aspect ratio uniform in ``log(ratio)`` (sides rounded); the first that fits is placed
  uniformly; if none fits, the centre crop of the whole image with its aspect ratio clamped into
  ``ratio``. One draw of 22 uniforms per box (the same draw sslx's device crop uses)."""
  # Plain Python on the 22 uniforms: numpy's per-call overhead would cost more than the math.
  u = rng.random(2 * CROP_TRIALS + 2).tolist()
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for trial in range(CROP_TRIALS):
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[trial])
    aspect = math.exp(log_lo + (log_hi - log_lo) * u[CROP_TRIALS + trial])
    w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    if 0 < w <= width and 0 < h <= height:
      top = min(int(u[-2] * (height - h + 1)), height - h)
      left = min(int(u[-1] * (width - w + 1)), width - w)
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, round(width / ratio[0])
  elif in_ratio > ratio[1]:
    h, w = height, round(height * ratio[1])
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def reduction_factor(boxes: Sequence[tuple[int, int, int, int]], sizes: Sequence[int]) -> int:
  """The largest JPEG scale denominator (8, 4, 2 or 1) at which every box still holds at least
  its output size in pixels on both sides, so reduced decoding never upsamples a crop."""
  room = min(min(box[2], box[3]) / size for box, size in zip(boxes, sizes))
  return next((k for k in _JPEG_FACTORS if room >= k), 1)


# --------------------------------------------------------------------------------------------
# Decoding.


def image_size(data: bytes) -> tuple[int, int]:
  """(height, width) of an encoded image, from its header only."""
  import PIL.Image

  with PIL.Image.open(io.BytesIO(data)) as image:
    return image.height, image.width


def _header_size(data: bytes, decoder: str) -> tuple[int, int]:
  """`image_size`, through simplejpeg's header parser when that is the decoder (faster)."""
  if decoder == "simplejpeg":
    import simplejpeg

    try:
      return tuple(simplejpeg.decode_jpeg_header(data)[:2])
    except ValueError:  # not a JPEG: PIL reads the header below (or fails on a corrupt file)
      pass
  return image_size(data)


def _decode_pil(data: bytes, factor: int, channels: int):
  import PIL.Image

  image = PIL.Image.open(io.BytesIO(data))
  if factor > 1:  # a no-op for formats other than JPEG
    image.draft("RGB" if channels == 3 else "L", (image.width // factor, image.height // factor))
  mode = "RGB" if channels == 3 else "L"
  return image.convert(mode) if image.mode != mode else image


def _decode_simplejpeg(data: bytes, factor: int, channels: int, height: int, width: int):
  import simplejpeg

  pixels = simplejpeg.decode_jpeg(data, "RGB" if channels == 3 else "GRAY",
                                  min_height=-(-height // factor), min_width=-(-width // factor))
  return pixels if channels == 3 else pixels[..., 0]


def _decode_opencv(data: bytes, factor: int, channels: int):
  import cv2

  if channels == 3:
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
  else:
    flag = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
            4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[factor]
  if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
    # No end-of-image marker: truncated (or trailing bytes). OpenCV would fill the missing rows
    # with grey and only warn; PIL decides (it errors on a truncated file).
    raise ValueError("no JPEG end-of-image marker")
  # PIL and simplejpeg ignore EXIF orientation; so must OpenCV for the same pixels.
  pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
  if pixels is None:
    raise ValueError("OpenCV could not decode the image")
  return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB) if channels == 3 else pixels


def _decode(data: bytes, decoder: str, factor: int, channels: int, height: int, width: int):
  """``data`` decoded at about 1 / ``factor`` of its size: a loaded PIL image or a uint8 array."""
  if decoder == "pil":
    image = _decode_pil(data, factor, channels)
    image.load()
    return image
  try:
    if decoder == "simplejpeg":
      return _decode_simplejpeg(data, factor, channels, height, width)
    return _decode_opencv(data, factor, channels)
  except ValueError:
    # Not a JPEG (ImageNet holds a few PNG and CMYK files) or one the library rejects: PIL
    # reads every format; a really corrupt file fails there too, with PIL's message.
    image = _decode_pil(data, factor, channels)
    image.load()
    return image


def _resize_pil(image, box, size: int) -> np.ndarray:
  import PIL.Image

  if not isinstance(image, PIL.Image.Image):
    image = PIL.Image.fromarray(image)
  return np.asarray(image.resize((size, size), PIL.Image.BILINEAR, box=box))


def _resize_opencv(pixels, box, size: int) -> np.ndarray:
  import cv2

  pixels = np.asarray(pixels)
  # The box to whole pixels of the (possibly reduced) image: off by at most half a pixel there.
  left, top, right, bottom = (round(v) for v in box)
  region = pixels[top:max(bottom, top + 1), left:max(right, left + 1)]
  shrink = min(region.shape[:2]) / size
  if shrink >= 2:
    # Bilinear aliases once it skips source pixels. Average f x f blocks first (OpenCV's fast
    # integer INTER_AREA; a fractional INTER_AREA costs ~7x more), leaving < 2x to bilinear.
    # After reduced decoding this is mostly for small crops beside large ones (multi-crop).
    f = 1 / int(shrink)
    region = cv2.resize(region, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
  return cv2.resize(region, (size, size), interpolation=cv2.INTER_LINEAR)


def decode_boxes(data: bytes, boxes: Sequence[tuple[int, int, int, int]], sizes: Sequence[int],
                 *, decoder: str = "pil", resizer: str = "pil", channels: int = 3,
                 reduce: bool = True, image_hw: tuple[int, int] | None = None
                 ) -> list[np.ndarray]:
  """Decodes ``data`` once and returns, for each ``(top, left, h, w)`` box of the original image,
  uint8 [size, size, channels]: the box resized bilinearly, by ``resizer`` (`RESIZERS`). With
  ``reduce`` the image is decoded at 1/2, 1/4 or 1/8 scale when every box keeps at least its
  output resolution there (`reduction_factor`). ``image_hw``: the original (height, width), if
  already known. Raises whatever the decoder raises on a corrupt image."""
  height, width = image_hw or image_size(data)
  factor = reduction_factor(boxes, sizes) if reduce else 1
  image = _decode(data, decoder, factor, channels, height, width)
  decoded_h, decoded_w = (image.height, image.width) if hasattr(image, "height") else (
      image.shape[:2])
  fy, fx = decoded_h / height, decoded_w / width
  resize = _resize_pil if resizer == "pil" else _resize_opencv
  out = []
  for (top, left, h, w), size in zip(boxes, sizes):
    box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
    out.append(resize(image, box, size).reshape(size, size, channels))
  return out


# --------------------------------------------------------------------------------------------
# The per-record transform of the training pipeline.


def _crop_seed(seed: int) -> int:
  # Its own stream, apart from the shuffle's (pipeline._shuffle_seed hashes the bare seed).
  return int(np.random.SeedSequence([int(seed), 0x5C0B]).generate_state(1, np.uint32)[0])


class HostCrops:
  """Decodes each record's image and crops its views from the full image, for
  `sslx.data.pipeline.train_iterator(host_crops=...)`. Picklable (grain worker processes).

  ``groups``: ``{group: [CropSpec per view]}`` in order. The batch's ``"image"`` is then
  ``{group: uint8 [B, n, size, size, C]}``, or with ``stacked`` (one group, every view of one
  size: two-view methods) the array uint8 [B, V, size, size, C] itself. ``decoder``: one of
  `DECODERS`; ``resizer``: one of `RESIZERS`. ``skip_corrupt``: a record whose image does not
  decode is replaced by the next readable record (logged with a running count per process)
  instead of stopping the run with a `CorruptImageError` naming it.
  """

  def __init__(self, groups: Mapping[str, Sequence[CropSpec]], *, decoder: str = "pil",
               resizer: str = "pil", channels: int = 3, stacked: bool = False,
               skip_corrupt: bool = False):
    self.groups = {name: tuple(specs) for name, specs in groups.items()}
    if not self.groups or any(not specs for specs in self.groups.values()):
      raise ValueError(f"groups: expected at least one group of at least one view, got {groups}")
    self.decoder = _check_library("decoder", decoder, DECODERS)
    self.resizer = _check_library("resizer", resizer, RESIZERS)
    if channels not in (1, 3):
      raise ValueError(f"channels: expected 1 or 3, got {channels!r}")
    self.channels = channels
    self.specs = [spec for specs in self.groups.values() for spec in specs]
    if stacked and (len(self.groups) != 1 or len({s.size for s in self.specs}) != 1):
      sizes = {name: [spec.size for spec in specs] for name, specs in self.groups.items()}
      raise ValueError(f"stacked: needs one group whose views all have one size, got {sizes}")
    self.stacked = stacked
    self.skip_corrupt = bool(skip_corrupt)
    self.skipped = 0

  def __repr__(self) -> str:
    return (f"HostCrops({self.groups}, decoder={self.decoder!r}, resizer={self.resizer!r},"
            f" channels={self.channels}, stacked={self.stacked},"
            f" skip_corrupt={self.skip_corrupt})")

  def view_shapes(self) -> dict[str, tuple[int, ...]]:
    """``{group: (n, size, size, C)}``: one example's crops."""
    return {name: (len(specs), specs[0].size, specs[0].size, self.channels)
            for name, specs in self.groups.items()}

  def crop(self, data: bytes, rng: np.random.Generator) -> list[np.ndarray]:
    """The views of one encoded image, in `specs` order."""
    height, width = _header_size(data, self.decoder)
    boxes = [sample_crop_box(rng, height, width, s.scale, s.ratio) for s in self.specs]
    return decode_boxes(data, boxes, [s.size for s in self.specs], decoder=self.decoder,
                        resizer=self.resizer, channels=self.channels, image_hw=(height, width))

  def _record(self, data, index: int, rng: np.random.Generator) -> list[np.ndarray]:
    if not isinstance(data, (bytes, np.bytes_)):
      raise TypeError(f"record {index}: expected the encoded image (bytes), got"
                      f" {type(data).__name__}; HostCrops needs a source that leaves images"
                      " encoded: sources.load_source(..., encoded=True)")
    try:
      return self.crop(data, rng)
    except _DECODE_ERRORS as e:
      raise CorruptImageError(
        f"record {index}: its image cannot be decoded ({type(e).__name__}: {e}); the dataset"
        " file is corrupt or truncated there. Set data.skip_corrupt=True to skip such records"
        " (each is logged and counted).") from e

  def batch(self, source: Any, indices, positions, seed: int):
    """The views of the records at ``indices`` (their positions in the training stream seed
    the crops): ``{group: [B, n, s, s, C]}`` or, stacked, [B, V, s, s, C]."""
    from sslx.data.pipeline import read_examples

    examples = read_examples(source, indices)
    base = _crop_seed(seed)
    per_record, labels = [], []
    for example, index, position in zip(examples, indices, positions):
      rng = np.random.default_rng([base, int(position)])
      try:
        views = self._record(example["image"], int(index), rng)
      except CorruptImageError:
        if not self.skip_corrupt:
          raise
        example, views = self._replacement(source, int(index), rng)
      per_record.append(views)
      labels.append(example["label"])
    out, first = {}, 0
    for name, specs in self.groups.items():
      out[name] = np.stack([np.stack(views[first:first + len(specs)]) for views in per_record])
      first += len(specs)
    images = out[next(iter(out))] if self.stacked else out
    return images, np.asarray(labels, np.int32)

  def _replacement(self, source: Any, index: int, rng: np.random.Generator):
    """The next readable record after the corrupt one at ``index``, and its views."""
    size = len(source)
    for other in ((index + step) % size for step in range(1, size)):
      example = source[other]
      try:
        views = self._record(example["image"], other, rng)
      except CorruptImageError:
        continue
      self.skipped += 1
      log.warning("record %d: its image cannot be decoded, replaced by record %d (%d records"
                  " skipped so far in this process)", index, other, self.skipped)
      return example, views
    raise CorruptImageError("data.skip_corrupt: no record of the dataset can be decoded")


def _crop_spec(group: Mapping[str, Any], what: str) -> CropSpec:
  try:
    return CropSpec(int(group["size"]), tuple(group["scale"]),
                    tuple(group.get("ratio", (3.0 / 4.0, 4.0 / 3.0))))
  except ValueError as e:
    raise ValueError(f"{what}: {e}") from None


def host_crops_for(config, channels: int) -> HostCrops | None:
  """The `HostCrops` a run's config asks for (``config.data.crop_on_host``), else None.

  Multi-crop methods (the config has ``multicrop``): one group per ``multicrop`` group in use
  (``number`` > 0), as `experiments/_multicrop.py` reads it. Two-view methods: two views
  stacked, cropped with ``config.augment``'s ``crop_size`` / ``crop_scale`` / ``crop_ratio``
  updated by ``augment_view1`` / ``augment_view2`` (as `sslx.experiment.view_configs`).
  """
  data = config.data
  decoder, resizer = data.get("decoder", "pil"), data.get("resizer", "pil")
  # Checked even when unused: a typo should not wait for the first JPEG run to show.
  for field, value, accepted in (("decoder", decoder, DECODERS), ("resizer", resizer, RESIZERS)):
    if value not in accepted:
      raise ValueError(f"data.{field} must be one of {list(accepted)}, got {value!r}")
  if not data.get("crop_on_host", False):
    return None
  kwargs = {"decoder": decoder, "resizer": resizer, "channels": channels,
            "skip_corrupt": data.get("skip_corrupt", False)}
  if "multicrop" in config:
    groups = {name: [_crop_spec(group, f"multicrop.{name}")] * group["number"]
              for name, group in config.multicrop.to_dict().items() if group["number"] > 0}
    return HostCrops(groups, **kwargs)
  from sslx.data import augment  # imports jax: not needed in the worker processes

  base = {**augment.DEFAULT_VIEW, **config.augment.to_dict()}
  specs = []
  for i in (1, 2):
    view = {**base, **config.get(f"augment_view{i}", {})}
    if view.get("crop_size") is None:
      raise ValueError("data.crop_on_host needs augment.crop_size (the view size), got None")
    specs.append(_crop_spec({"size": view["crop_size"], "scale": view["crop_scale"],
                             "ratio": view["crop_ratio"]}, "augment"))
  return HostCrops({"views": specs}, stacked=True, **kwargs)
