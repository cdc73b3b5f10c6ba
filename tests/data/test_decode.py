"""Host decoding with crops from the full image (sslx.data.decode) and its place in the pipeline."""

import functools
import importlib.util
import io
import math
import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from sslx.data import augment, decode, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.cache
def _photo(index: int) -> np.ndarray:
  """scikit-learn's bundled sample photographs (china.jpg, flower.jpg; 427 x 640), read from
  the installed package without importing sklearn (seconds of imports)."""
  import PIL.Image

  package = importlib.util.find_spec("sklearn").submodule_search_locations[0]
  name = ("china.jpg", "flower.jpg")[index]
  return np.asarray(PIL.Image.open(os.path.join(package, "datasets", "images", name)))


def _jpeg(height: int, width: int, seed: int = 0, photo: int = 0, quality: int = 90) -> bytes:
  """A photograph rescaled to height x width (mirrored for odd seeds), as JPEG."""
  import PIL.Image

  image = _photo(photo)
  if seed % 2:
    image = image[:, ::-1]
  buf = io.BytesIO()
  PIL.Image.fromarray(np.ascontiguousarray(image)).resize((width, height), PIL.Image.BICUBIC).save(
      buf, format="JPEG", quality=quality)
  return buf.getvalue()


def _reference_boxes(rng, height, width, scale, ratio, n):
  """torchvision's RandomResizedCrop.get_params, written from its source loop by loop."""
  boxes = []
  for _ in range(n):
    area = height * width
    for _ in range(10):
      target_area = area * rng.uniform(scale[0], scale[1])
      aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
      w = int(round(math.sqrt(target_area * aspect)))
      h = int(round(math.sqrt(target_area / aspect)))
      if 0 < w <= width and 0 < h <= height:
        boxes.append((rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w))
        break
    else:
      in_ratio = width / height
      if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
      elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
      else:
        w, h = width, height
      boxes.append(((height - h) // 2, (width - w) // 2, h, w))
  return np.asarray(boxes, np.float64)


def _ks(a, b) -> float:
  """Two-sample Kolmogorov-Smirnov statistic."""
  grid = np.sort(np.concatenate([a, b]))

  def cdf(x):
    return np.searchsorted(np.sort(x), grid, side="right") / len(x)

  return float(np.max(np.abs(cdf(a) - cdf(b))))


@pytest.mark.parametrize("hw, scale", [((375, 500), (0.08, 1.0)), ((120, 900), (0.4, 1.0))])
def test_crop_box_statistics_match_an_independent_sampler(hw, scale):
  """Area fraction, aspect ratio and the offsets of 4000 boxes on the original image size agree
  with torchvision's algorithm (written independently above) in distribution: two-sample KS
  statistic < 0.05 (the 0.1% critical value for 4000 + 4000 samples is 0.044), and the
  centre-crop fallback (the second, very wide image) is hit equally often (within 2%)."""
  height, width = hw
  ratio = (3 / 4, 4 / 3)
  n = 4000
  rng = np.random.default_rng(0)
  ours = np.asarray([decode.sample_crop_box(rng, height, width, scale, ratio) for _ in range(n)],
                    np.float64)
  ref = _reference_boxes(np.random.default_rng(1), height, width, scale, ratio, n)
  top, left, h, w = ours.T
  assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all()
  assert (left + w <= width).all() and (h >= 1).all() and (w >= 1).all()

  def stats(boxes):
    top, left, h, w = boxes.T
    # Offsets as a fraction of the room the box leaves (0.5 where it leaves none).
    room_y, room_x = np.maximum(height - h, 1), np.maximum(width - w, 1)
    return {"area": h * w / (height * width), "log_aspect": np.log(w / h),
            "top": np.where(height > h, top / room_y, 0.5),
            "left": np.where(width > w, left / room_x, 0.5)}

  a, b = stats(ours), stats(ref)
  for key in a:
    assert _ks(a[key], b[key]) < 0.05, key

  def fallback(boxes):
    return np.mean((boxes[:, 2] == height) | (boxes[:, 3] == width))

  assert abs(fallback(ours) - fallback(ref)) < 0.02


@pytest.mark.parametrize("decoder", decode.DECODERS)
def test_reduced_decoding_then_cropping_equals_full_decoding_then_cropping(decoder):
  """Boxes that leave room for a 1/2-scale decode give, with PIL's antialiased resize, the pixels
  of a full decode within mean |diff| <= 1 and 99th percentile <= 5 (of 255). OpenCV's resize
  (bilinear without antialiasing, as TF's) aliases on this detailed photo: its views stay within
  mean 6 of the full-decode antialiased views (about 4.6 here). Every decoder gives the same
  pixels as PIL (libjpeg-turbo underneath, max diff <= 2)."""
  data = _jpeg(800, 1200)
  boxes = [(50, 100, 700, 900), (0, 0, 800, 1200), (100, 300, 500, 450)]
  sizes = [224, 224, 96]
  assert decode.reduction_factor(boxes, sizes) == 2
  reference = decode.decode_boxes(data, boxes, sizes, decoder="pil", reduce=False)
  reduced = decode.decode_boxes(data, boxes, sizes, decoder=decoder, reduce=True)
  for got, want, size in zip(reduced, reference, sizes):
    assert got.shape == (size, size, 3) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() <= 1.0 and np.percentile(diff, 99) <= 5
  full = decode.decode_boxes(data, boxes, sizes, decoder=decoder, reduce=False)
  for got, want in zip(full, reference):
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2
  fast = decode.decode_boxes(data, boxes, sizes, decoder=decoder, resizer="opencv")
  for got, want in zip(fast, reference):
    assert np.abs(got.astype(int) - want.astype(int)).mean() <= 6.0


def test_reduction_factor_never_upsamples():
  assert decode.reduction_factor([(0, 0, 500, 500)], [224]) == 2
  assert decode.reduction_factor([(0, 0, 500, 500), (0, 0, 100, 100)], [224, 96]) == 1
  assert decode.reduction_factor([(0, 0, 50, 60)], [224]) == 1  # upsampled anyway
  assert decode.reduction_factor([(0, 0, 4000, 4000)], [224]) == 8


def test_unknown_decoder_or_resizer_is_an_error_naming_the_field():
  with pytest.raises(ValueError, match=r"data\.decoder must be one of .*'pil'.*got 'turbo'"):
    decode.HostCrops({"views": [decode.CropSpec(32)]}, decoder="turbo")
  with pytest.raises(ValueError, match=r"data\.resizer must be one of .*got 'cubic'"):
    decode.HostCrops({"views": [decode.CropSpec(32)]}, resizer="cubic")
  config = ml_collections.ConfigDict({"data": {"crop_on_host": False, "decoder": "libjpeg"}})
  with pytest.raises(ValueError, match=r"data\.decoder .*got 'libjpeg'"):
    decode.host_crops_for(config, channels=3)


def _config(**data):
  c = ml_collections.ConfigDict()
  c.data = {"crop_on_host": True, "decoder": "pil", "resizer": "pil", "skip_corrupt": False,
            **data}
  c.augment = {"crop_size": 32, "crop_scale": (0.2, 1.0)}
  c.augment_view2 = {"crop_scale": (0.5, 1.0)}
  return c


def test_host_crops_from_config():
  crops = decode.host_crops_for(_config(), channels=3)
  assert crops.stacked and [(s.size, s.scale) for s in crops.specs] == [(32, (0.2, 1.0)),
                                                                      (32, (0.5, 1.0))]
  config = _config()
  config.multicrop = {"global": {"number": 2, "size": 32, "scale": (0.4, 1.0)},
                      "local": {"number": 3, "size": 16, "scale": (0.05, 0.4)}}
  crops = decode.host_crops_for(config, channels=3)
  assert crops.view_shapes() == {"global": (2, 32, 32, 3), "local": (3, 16, 16, 3)}
  assert decode.host_crops_for(_config(crop_on_host=False), channels=3) is None


class JpegSource:
  """In-memory encoded images as a random-access source (picklable for grain's workers)."""

  def __init__(self, images):
    self.images = images

  def __len__(self):
    return len(self.images)

  def __getitem__(self, index):
    return {"image": self.images[int(index)], "label": int(index)}


def _source(n=12, corrupt=()):
  images = [_jpeg(120 + 9 * i, 160 - 4 * i, seed=i, photo=i % 2, quality=80) for i in range(n)]
  for i in corrupt:
    images[i] = images[i][:len(images[i]) // 2] if i % 2 else b"not an image at all"
  return JpegSource(images)


def _iterator(source, crops, **kw):
  kw = {"global_batch_size": 4, "seed": 3, "process_index": 0, "process_count": 1, **kw}
  return pipeline.train_iterator(source, host_crops=crops, **kw)


def test_host_crops_in_the_pipeline_are_reproducible_and_resume_exactly():
  """The views depend on the seed and the record's position only: the same for any process
  count, different each epoch, and a restored iterator state replays them."""
  source = _source()
  crops = decode.host_crops_for(_config(), channels=3)
  it = _iterator(source, crops)
  batches = [next(it) for _ in range(4)]  # 16 positions: over an epoch boundary (12 records)
  assert batches[0]["image"].shape == (4, 2, 32, 32, 3) and batches[0]["image"].dtype == np.uint8
  assert not np.array_equal(batches[0]["image"][:, 0], batches[0]["image"][:, 1])
  second = _iterator(source, crops, process_index=1, process_count=2, global_batch_size=4)
  for batch in batches:
    local = next(second)
    np.testing.assert_array_equal(local["image"], batch["image"][2:])
    np.testing.assert_array_equal(local["label"], batch["label"][2:])
  labels = np.concatenate([b["label"] for b in batches])
  first, again = labels[:12].tolist().index(labels[12]), 12  # one record in epochs 0 and 1
  views = np.concatenate([b["image"] for b in batches])
  assert not np.array_equal(views[first], views[again])  # new crops every epoch
  it = _iterator(source, crops)
  next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  fresh = _iterator(source, crops)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    np.testing.assert_array_equal(got["image"], want["image"])


@pytest.mark.parametrize("decoder", decode.DECODERS)
def test_a_corrupt_record_is_an_error_naming_it_or_a_counted_skip(decoder, caplog):
  source = _source(corrupt=(5, 6))
  positions = np.arange(12)
  crops = decode.HostCrops({"views": [decode.CropSpec(24)] * 2}, stacked=True, decoder=decoder)
  for index in (5, 6):  # not an image at all; a JPEG cut in half
    with pytest.raises(decode.CorruptImageError, match=fr"record {index}: .*data\.skip_corrupt"):
      crops.batch(source, [index], positions[:1], seed=0)
  skipping = decode.HostCrops({"views": [decode.CropSpec(24)] * 2}, stacked=True,
                              decoder=decoder, resizer="opencv", skip_corrupt=True)
  with caplog.at_level("WARNING"):
    images, labels = skipping.batch(source, [4, 5, 6, 7], positions[:4], seed=0)
  assert images.shape == (4, 2, 24, 24, 3) and labels.tolist() == [4, 7, 7, 7]
  assert skipping.skipped == 2 and "record 6" in caplog.text and "2 records skipped" in caplog.text


_WORKER_SCRIPT = textwrap.dedent("""
  import sys
  from absl import app

  def main(argv):
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_decode import _config, _iterator, _source
    from sslx.data import decode

    crops = decode.host_crops_for(_config(), channels=3)
    ref = _iterator(_source(), crops)
    expected = [next(ref) for _ in range(3)]
    corrupt = int(expected[2]["label"][1])  # a record of the third batch
    it = _iterator(_source(corrupt=(corrupt,)), crops, worker_count=1)
    for step in range(2):
      got = next(it)
      np.testing.assert_array_equal(got["image"], expected[step]["image"])
    try:
      next(it)
    except Exception as e:
      print("RAISED", type(e).__name__, str(e)[:300])
    it.close()

  if __name__ == "__main__":
    app.run(main)
""")


@pytest.mark.slow  # a worker process imports jax and grain: ~10 s alone, a minute under load
def test_worker_processes_crop_the_same_and_report_a_corrupt_record_without_hanging(tmp_path):
  script = tmp_path / "workers.py"
  script.write_text(_WORKER_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=180, env=env, cwd=tmp_path, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "RAISED" in result.stdout and "cannot be decoded" in result.stdout, result.stdout


def test_views_cropped_on_the_host_get_the_rest_of_the_augmentation_on_device():
  """[B, V, h, w, C] views: config i without its crop on view i (a flip here, always)."""
  import jax

  views = np.random.default_rng(0).integers(0, 256, (3, 2, 8, 8, 3), dtype=np.uint8)
  flip = {"crop_size": 8, "flip_prob": 1.0, "jitter_prob": 0.0, "grayscale_prob": 0.0,
          "blur_prob": 0.0}
  out = augment.augment_views(jax.random.PRNGKey(0), views, [flip, {**flip, "flip_prob": 0.0}])
  np.testing.assert_allclose(out[0], views[:, 0, :, ::-1] / 255.0, atol=1e-6)
  np.testing.assert_allclose(out[1], views[:, 1] / 255.0, atol=1e-6)
  with pytest.raises(ValueError, match="2 views per image were cropped on the host"):
    augment.augment_views(jax.random.PRNGKey(0), views, [flip] * 3)
  with pytest.raises(ValueError, match=r"cropped on the host are \(8, 8\).*crop gives \(16, 16\)"):
    augment.augment_views(jax.random.PRNGKey(0), views, [{**flip, "crop_size": 16}])


def test_load_source_keeps_encoded_images_only_for_image_datasets(tmp_path, monkeypatch):
  """tf_flowers as tfds builds it (JPEG Image feature): encoded=True gives the JPEG bytes; sslx's
  raw-tensor datasets refuse, naming data.crop_on_host."""
  import PIL.Image
  import tensorflow_datasets as tfds

  from sslx.data import sources

  def jpeg(self, image):  # encoding an Image needs TF; PIL writes a JPEG the same way
    buf = io.BytesIO()
    PIL.Image.fromarray(np.asarray(image)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()

  monkeypatch.setattr(tfds.features.Image, "encode_example", jpeg)

  class FakeFlowers(tfds.builder_cls("tf_flowers"), skip_registration=True):
    name = "tf_flowers"

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(None)}

    def _generate_examples(self, images_dir_path):
      for i in range(8):
        yield f"img{i}", {"image": np.full((50 + i, 70, 3), 20 * i, np.uint8), "label": i % 5}

  FakeFlowers(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  source = sources.load_source("tf_flowers", "train", data_dir=tmp_path, encoded=True)
  example = source[3]
  assert isinstance(example["image"], bytes) and decode.image_size(example["image"]) in {
      (50 + i, 70) for i in range(8)}
  crops = decode.HostCrops({"views": [decode.CropSpec(16)] * 2}, stacked=True)
  batch = next(_iterator(source, crops))
  assert batch["image"].shape == (4, 2, 16, 16, 3)
  sources.prepare_digits(data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"data\.crop_on_host: dataset 'digits' .*Tensor"):
    sources.load_source("digits", "train", data_dir=tmp_path, encoded=True)


def test_multicrop_views_cropped_on_the_host_get_their_groups_augmentation():
  """``{group: [B, n, s, s, C]}`` host crops: each group's pipeline without its crop (here a
  flip, always), normalised, as ``{group: [n, B, s, s, C]}`` like the device path."""
  import jax
  import jax.numpy as jnp

  from experiments import _multicrop
  from sslx import experiment

  config = ml_collections.ConfigDict({"multicrop": {
    "global": {"number": 2, "size": 8, "scale": (0.4, 1.0), "pipeline": "flip(p=1.0)"},
    "local": {"number": 3, "size": 4, "scale": (0.05, 0.4), "pipeline": "flip(p=0.0)"}}})
  spec = experiment.Images(mean=jnp.full((3,), 0.5), std=jnp.full((3,), 0.25), view_hw=(8, 8),
                           view_shape=(8, 8, 3), num_classes=10)
  rng = np.random.default_rng(0)
  crops = {"global": rng.integers(0, 256, (2, 2, 8, 8, 3), dtype=np.uint8),
           "local": rng.integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8)}
  views, _ = _multicrop.crop_views(jax.random.PRNGKey(0), crops, config, spec)
  expected_global = (np.moveaxis(crops["global"], 1, 0)[:, :, :, ::-1] / 255.0 - 0.5) / 0.25
  np.testing.assert_allclose(views["global"], expected_global, atol=1e-5)
  np.testing.assert_allclose(views["local"],
                             (np.moveaxis(crops["local"], 1, 0) / 255.0 - 0.5) / 0.25, atol=1e-5)
  with pytest.raises(ValueError, match=r"images\['local'\]: 2 host crops per image"):
    _multicrop.crop_views(jax.random.PRNGKey(0), {**crops, "local": crops["local"][:, :2]},
                          config, spec)
