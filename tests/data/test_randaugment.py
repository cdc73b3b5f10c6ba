"""Tests for sslx.data.randaugment: FixMatch / USB's RandAugment, Cutout and weak translation on
device, checked against PIL itself (the library TorchSSL / USB run them with).

XLA on CPU compiles slowly, so everything runs in one jitted call (the `results` fixture): every
op through the vmapped ``lax.switch`` of a pipeline's ``apply`` with chosen params, and the
statistics on params only.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from sslx.data import augment as A
from sslx.data import randaugment as R

N_KEYS = 4000  # draws for the statistical tests (rates checked to 4 standard errors)


def _rate_ok(flags, p):
  rate = float(np.mean(np.asarray(flags)))
  tol = 4 * math.sqrt(p * (1 - p) / len(flags))
  assert abs(rate - p) <= tol, (rate, p, tol)


def _uniform_ok(x, lo, hi):
  """Kolmogorov-Smirnov against uniform(lo, hi): the statistic below its p = 0.001 critical
  value sqrt(ln(2 / 0.001) / 2n) (scipy.stats would add seconds of import to this file)."""
  x = np.sort((np.asarray(x, np.float64) - lo) / (hi - lo))
  n = len(x)
  d = max(np.max(np.arange(1, n + 1) / n - x), np.max(x - np.arange(n) / n))
  assert d < math.sqrt(math.log(2 / 1e-3) / (2 * n)), (d, n, lo, hi)


# ----------------------------------------------------------------------------------
# Every op against PIL.


def _pil_op(name, img, v):
  """TorchSSL / USB's ``augment_list`` operation ``name`` on the PIL image ``img``."""
  if name == "autocontrast":
    return ImageOps.autocontrast(img)
  if name == "brightness":
    return ImageEnhance.Brightness(img).enhance(v)
  if name == "color":
    return ImageEnhance.Color(img).enhance(v)
  if name == "contrast":
    return ImageEnhance.Contrast(img).enhance(v)
  if name == "equalize":
    return ImageOps.equalize(img)
  if name == "identity":
    return img
  if name == "posterize":
    return ImageOps.posterize(img, max(1, int(v)))
  if name == "rotate":
    return img.rotate(v)
  if name == "sharpness":
    return ImageEnhance.Sharpness(img).enhance(v)
  if name == "shear_x":
    return img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0))
  if name == "shear_y":
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0))
  if name == "solarize":
    return ImageOps.solarize(img, v)
  if name == "translate_x":
    return img.transform(img.size, Image.AFFINE, (1, 0, v * img.size[0], 0, 1, 0))
  if name == "translate_y":
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * img.size[1]))
  raise AssertionError(name)


def _pil_cutout(img, cy, cx, v, fill):
  """TorchSSL's CutoutAbs with the centre given (it draws it uniformly)."""
  if v <= 0:
    return img
  w, h = img.size
  x0, y0 = int(max(0, cx - v / 2.0)), int(max(0, cy - v / 2.0))
  x1, y1 = int(min(w, x0 + v)), int(min(h, y0 + v))
  img = img.copy()
  ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), fill if img.mode == "L" else (fill,) * 3)
  return img


def _test_images(h, w, c):
  """Two random images (one of low contrast) and a structured one: gradients, a bright disc
  and, in RGB, a constant channel (autocontrast and equalize must leave it alone)."""
  rng = np.random.RandomState(h * w + c)
  yy, xx = np.mgrid[:h, :w]
  disc = ((yy - h / 3) ** 2 + (xx - w / 2) ** 2 < (h / 4) ** 2) * 100
  structured = np.stack([xx * 255 // (w - 1), np.clip(yy * 6 + disc, 0, 255),
                         np.full((h, w), 77)], -1)[..., :c]
  if c == 1:
    structured = np.clip(structured + disc[..., None] + yy[..., None] * 2, 0, 255)
  images = [rng.randint(30, 221, (h, w, c)), rng.randint(90, 141, (h, w, c)), structured]
  return np.stack(images).astype(np.uint8)


def _magnitudes(name):
  lo, hi = R.RANDAUGMENT_RANGES[name] or (0.0, 0.0)
  mags = {lo, hi, lo + 0.31 * (hi - lo), lo + 0.77 * (hi - lo)}
  if name in ("brightness", "color", "contrast", "sharpness"):
    mags |= {0.0, 1.0, 1.7}  # degenerate image, the image itself, extrapolation (clipped)
  elif name == "posterize":
    mags = {1.0, 4.0, 5.0, 6.0, 7.0, 8.0}
  elif name in ("shear_x", "shear_y"):
    mags |= {0.2}  # ties: x' + 0.2 y' is an integer on some pixel centres
  elif name == "rotate":
    mags |= {0.0, 7.3, 90.0}  # a quarter turn of a non-square image: PIL's affine path
  return sorted(mags)


CASES = [(i, m) for i, name in enumerate(R.RANDAUGMENT_OPS) for m in _magnitudes(name)]
# (centre y, centre x, size) as fractions of (H, W, W): inside, clipped at the top left, clipped
# at the bottom right, larger than the image, size 0 (no-op), and a fractional size.
CUTOUTS = [(0.4, 0.55, 0.3), (0.02, 0.01, 0.45), (0.99, 0.97, 0.6), (0.5, 0.5, 1.2),
           (0.5, 0.5, 0.0), (0.3, 0.8, 0.137)]
IDENTITY = R.RANDAUGMENT_OPS.index("identity")

# SPEC's apply runs every op on the test images (with chosen params); E2E_SPEC runs on a uint8
# batch from drawn uniforms, with a NumPy / PIL reference for the whole pipeline. Their cutouts
# fill with a level (102), as PIL draws integers.
SPEC = "translate(0.125)|flip(p=0.5)|randaugment(num_ops=2)|cutout(0.5, fill=0.4)"
E2E_SPEC = ("translate(0.125)|flip(p=0.5)|randaugment(3, ops=('solarize', 'posterize', 'rotate'))"
            "|cutout(0.5, fill=0.4)")
CUTOUT_FILL = 102
SHIFTS = np.array([(-4, 3), (4, -4), (0, 0), (2, 1), (-1, -2)], np.int32)
STATS_SPEC = ("translate(0.125)|randaugment(num_ops=3)|cutout(0.5)"
              "|randaugment(1, ops=('solarize', 'identity'))")
RGB, GRAY = (24, 20, 3), (28, 28, 1)


def _case_params(n_images, h, w):
  """SPEC's params that apply, to each of ``n_images`` images, each (op, magnitude) of CASES
  alone (then identity), and then each cutout of CUTOUTS alone: [n_images * k] per leaf."""
  ops = [(op, IDENTITY) for op, _ in CASES] + [(IDENTITY, IDENTITY)] * len(CUTOUTS)
  mags = [(m, 0.0) for _, m in CASES] + [(0.0, 0.0)] * len(CUTOUTS)
  centers = [(0.0, 0.0)] * len(CASES) + [(cy * h, cx * w) for cy, cx, _ in CUTOUTS]
  sizes = [0.0] * len(CASES) + [s * w for _, _, s in CUTOUTS]
  k = len(ops)
  params = {
    "translate": {"shift": np.zeros((k, 2), np.int32)},
    "flip": {"applied": np.zeros(k, bool)},
    "randaugment": {"op": np.array(ops, np.int32), "magnitude": np.array(mags, np.float32)},
    "cutout": {"center": np.array(centers, np.float32), "size": np.array(sizes, np.float32)},
  }
  return jax.tree.map(lambda v: np.concatenate([v] * n_images), params)


@pytest.fixture(scope="module")
def results():
  """Everything this file computes on device, in one jitted call (XLA on CPU compiles slowly,
  and under vmap each instance of RandAugment's switch compiles all of its ops).

  - "rgb", "gray": (test images, outputs [n_images, len(CASES) + len(CUTOUTS), H, W, C]):
    SPEC's ``apply`` with `_case_params` on the RGB 24x20 and grayscale 28x28 test images.
  - "e2e": (output, params, replay of the params) of E2E_SPEC on a uint8 [16, 28, 28, 1]
    batch, from uniforms drawn here as `augment_batch` draws them from its keys (its random
    draw would add seconds of compile time; test_augment_batch_traces_under_jit runs it).
  - "shifted": `Translate` at SHIFTS on the batch's first image.
  - "stats": the params of STATS_SPEC for N_KEYS draws (params only: XLA drops the image work).
  """
  rng = np.random.RandomState(4)
  pipe, e2e, stats_pipe = (A.parse_pipeline(s) for s in (SPEC, E2E_SPEC, STATS_SPEC))
  inputs = {
    "batch": rng.randint(0, 256, (16, *GRAY)).astype(np.uint8),
    "u": rng.uniform(size=(16, e2e.n_uniforms)).astype(np.float32),
    "u_stats": np.random.RandomState(7).uniform(
      size=(N_KEYS, stats_pipe.n_uniforms)).astype(np.float32),
  }
  k = len(CASES) + len(CUTOUTS)
  for name, shape in (("rgb", RGB), ("gray", GRAY)):
    images = _test_images(*shape)
    inputs[name] = images
    inputs[name + "_cases"] = np.repeat(images, k, axis=0)
    inputs[name + "_params"] = _case_params(len(images), *shape[:2])

  @jax.jit
  def run(inp):
    res = {}
    for name in ("rgb", "gray"):
      res[name] = jax.vmap(pipe.apply)(inp[name + "_cases"], inp[name + "_params"])
    out, params = jax.vmap(lambda u, x: e2e.from_uniforms(u, x, return_params=True))(
      inp["u"], inp["batch"])
    res["e2e"] = (out, params, jax.vmap(e2e.apply)(inp["batch"], params))
    x = inp["batch"][0].astype(jnp.float32) / 255.0
    res["shifted"] = jax.vmap(lambda s: pipe.ops[0].apply(x, {"shift": s}))(SHIFTS)
    zeros = jnp.zeros((32, 24, 1), jnp.float32)
    res["stats"] = jax.vmap(
      lambda u: stats_pipe.from_uniforms(u, zeros, return_params=True)[1])(inp["u_stats"])
    return res

  res = jax.tree.map(np.asarray, run(inputs))
  for name, shape in (("rgb", RGB), ("gray", GRAY)):
    res[name] = (inputs[name], res[name].reshape(-1, k, *shape))
  res["images"] = inputs["batch"]
  return res


def _pil(image):
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(img, shape):
  return np.asarray(img, np.float64).reshape(shape)


GEOMETRIC = ("identity", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")
EXACT = ("equalize", "posterize", "solarize")
COLOUR = ("brightness", "color", "contrast", "sharpness")


@pytest.mark.parametrize("kind", ["rgb", "gray"])
def test_ops_match_pil(results, kind):
  images, outputs = results[kind]
  shape = images.shape[1:]
  agree = {name: [] for name in GEOMETRIC}
  changed = set()
  for image, outs in zip(images, outputs):
    for (op, mag), out in zip(CASES, outs):
      name = R.RANDAUGMENT_OPS[op]
      want = _from_pil(_pil_op(name, _pil(image), float(mag)), shape)
      got = out.astype(np.float64) * 255.0
      what = f"{name}({mag}) on {shape}"
      if not np.array_equal(want, image):
        changed.add(name)
      if name in GEOMETRIC:
        # Nearest neighbour: exactly the input's levels; on all but a few tie pixels PIL's.
        same = np.abs(got - want) < 1e-3
        assert np.all(np.abs(got - np.round(got)) < 1e-3), what
        assert same.mean() >= 0.98, (what, same.mean())
        agree[name].append(same.mean())
      elif name in EXACT:
        np.testing.assert_allclose(got, want, atol=1e-3, err_msg=what)
      elif name == "autocontrast":
        # PIL stretches in doubles and sometimes lands one level below the exact floor.
        diff = got - want
        assert np.all((diff > -1e-3) & (diff < 1 + 1e-3)), what
        assert np.mean(np.abs(diff) < 1e-3) > 0.95, what
      else:
        # PIL truncates the blend to a level; the op keeps its fraction.
        assert name in COLOUR, name
        diff = got - want
        assert np.all((diff > -1e-3) & (diff < 1 + 1e-3)), (what, diff.min(), diff.max())
  assert np.all(np.array(agree["identity"]) == 1.0)
  for name in GEOMETRIC:
    assert np.mean(agree[name]) >= 0.995, (name, np.mean(agree[name]))
  # The cases are not vacuous: every op but identity (and color on gray) changed some image.
  expected = set(R.RANDAUGMENT_OPS) - {"identity"} - ({"color"} if shape[-1] == 1 else set())
  assert changed == expected, set(R.RANDAUGMENT_OPS) - changed


@pytest.mark.parametrize("kind", ["rgb", "gray"])
def test_cutout_matches_pil(results, kind):
  images, outputs = results[kind]
  h, w, _ = shape = images.shape[1:]
  for image, outs in zip(images, outputs):
    for (cy, cx, size), out in zip(CUTOUTS, outs[len(CASES):]):
      # The params as the op saw them (float32).
      cy, cx, size = (float(np.float32(v)) for v in (cy * h, cx * w, size * w))
      want = _from_pil(_pil_cutout(_pil(image), cy, cx, size, CUTOUT_FILL), shape)
      np.testing.assert_allclose(out * 255.0, want, atol=1e-3,
                                 err_msg=f"cutout({cy}, {cx}, {size}) on {shape}")
      filled = np.all(np.abs(out * 255.0 - CUTOUT_FILL) < 1e-3, -1)
      assert np.any(filled & np.any(image != CUTOUT_FILL, -1)) == (size > 0)


# ----------------------------------------------------------------------------------
# Pipelines: specs, uint8 batches under jit, params replay.


def test_parse_specs():
  spec = "translate(0.125)|flip(p=0.5)|randaugment(num_ops=2)|cutout(0.5)"
  pipe = A.parse_pipeline(spec)
  translate, flip, ra, cut = pipe.ops
  assert isinstance(translate, R.Translate) and isinstance(flip, A.Flip)
  assert isinstance(ra, R.RandAugment) and isinstance(cut, R.Cutout)
  assert translate.fraction == 0.125 and translate.p == 1.0
  assert translate.pads((32, 32, 3)) == (4, 4) and translate.pads((28, 28, 1)) == (4, 4)
  assert translate.pads((32, 24, 1)) == (4, 3)
  assert ra.num_ops == 2 and ra.ops == R.RANDAUGMENT_OPS and ra.n_uniforms == 4
  assert cut.max_fraction == 0.5 and cut.fill == 0.5
  assert A.parse_pipeline(pipe.spec).spec == pipe.spec
  assert A.parse_pipeline(E2E_SPEC).ops[2].ops == ("solarize", "posterize", "rotate")
  assert A.make_op("randaugment", 3).num_ops == 3  # USB's RandAugment(3, 5)
  assert {"translate", "randaugment", "cutout"} <= set(A.AUGMENTATIONS)
  assert len(R.RANDAUGMENT_OPS) == 14 and set(R.RANDAUGMENT_RANGES) == set(R.RANDAUGMENT_OPS)


def _reference(image, params):
  """E2E_SPEC on one uint8 image from its params, in NumPy and PIL: torchvision's reflect pad
  and crop, flip, TorchSSL's solarize / posterize / rotate, CutoutAbs."""
  (dy, dx), h, w = params["translate"]["shift"], image.shape[0], image.shape[1]
  x = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect")[4 + dy:4 + dy + h, 4 + dx:4 + dx + w]
  if params["flip"]["applied"]:
    x = x[:, ::-1]
  img = _pil(np.ascontiguousarray(x))
  for op, mag in zip(params["randaugment"]["op"], params["randaugment"]["magnitude"]):
    img = _pil_op(R.RANDAUGMENT_OPS[op], img, float(mag))
  (cy, cx), size = params["cutout"]["center"], params["cutout"]["size"]
  img = _pil_cutout(img, float(cy), float(cx), float(size), CUTOUT_FILL)
  return _from_pil(img, image.shape)


def test_pipeline_on_uint8_batch_matches_reference_and_replays(results):
  images = results["images"]
  out, params, replay = results["e2e"]
  assert out.shape == images.shape and out.dtype == np.float32
  np.testing.assert_allclose(replay, out, atol=1e-6)
  assert set(params) == {"translate", "flip", "randaugment", "cutout"}
  ra = params["randaugment"]
  assert ra["op"].shape == (16, 3) and ra["op"].dtype == np.int32
  assert ra["magnitude"].dtype == np.float32 and params["translate"]["shift"].dtype == np.int32
  # Every example gets its own draw, and the draws cover the ops and both flips.
  assert len({tuple(o) for o in ra["op"]}) > 8 and len(np.unique(params["cutout"]["size"])) == 16
  assert set(np.unique(ra["op"])) == {R.RANDAUGMENT_OPS.index(n)
                                      for n in ("solarize", "posterize", "rotate")}
  assert 0 < params["flip"]["applied"].sum() < 16
  for i, (image, got) in enumerate(zip(images, out)):
    want = _reference(image, jax.tree.map(lambda v: v[i], params))
    # Exact but for rotation's rare nearest-neighbour ties.
    assert np.mean(np.abs(got * 255.0 - want) < 1e-3) >= 0.98, i


def test_augment_batch_traces_under_jit():
  """A strong-view spec through `augment_batch` on uint8 [4, 28, 28, 1] and [4, 32, 32, 3]
  batches, traced under jit (compiling them would add seconds to this file: the ops run on
  both kinds of image in test_ops_match_pil and through the pipeline in `results`)."""
  spec = "translate(0.125)|flip(p=0.5)|randaugment(num_ops=2)|cutout(0.5)"
  fn = jax.jit(lambda k, x: A.augment_batch(k, x, spec, return_params=True))
  for shape in ((4, 28, 28, 1), (4, 32, 32, 3)):
    out, params = jax.eval_shape(fn, jax.random.key(0), jnp.zeros(shape, jnp.uint8))
    assert out.shape == shape and out.dtype == jnp.float32
    assert params["randaugment"]["op"].shape == (4, 2)
    assert params["randaugment"]["magnitude"].shape == (4, 2)
    assert params["cutout"]["center"].shape == (4, 2) and params["cutout"]["size"].shape == (4,)
    assert params["translate"]["shift"].shape == (4, 2) and params["flip"]["applied"].shape == (4,)


def test_translate_is_reflect_pad_and_crop(results):
  """torchvision's RandomCrop(H, padding=4, padding_mode="reflect") with offset pad + shift."""
  x = results["images"][0].astype(np.float32) / 255.0
  padded = np.pad(x, ((4, 4), (4, 4), (0, 0)), mode="reflect")
  for (dy, dx), got in zip(SHIFTS, results["shifted"]):
    np.testing.assert_allclose(got, padded[4 + dy:4 + dy + 28, 4 + dx:4 + dx + 28], atol=1e-7)


# ----------------------------------------------------------------------------------
# Statistics of the drawn params.


def test_randaugment_op_choice_and_magnitudes(results):
  drawn = results["stats"]
  ops, mags = drawn["randaugment"]["op"], drawn["randaugment"]["magnitude"]
  assert ops.shape == (N_KEYS, 3) and ops.dtype == np.int32
  assert np.all((ops >= 0) & (ops < 14))
  for slot in range(3):
    for i in range(14):
      _rate_ok(ops[:, slot] == i, 1 / 14)
  for i, name in enumerate(R.RANDAUGMENT_OPS):
    m = mags[ops == i]
    rng = R.RANDAUGMENT_RANGES[name]
    if rng is None:
      assert np.all(m == 0), name
    elif name == "posterize":
      assert set(np.unique(m)) == {4.0, 5.0, 6.0, 7.0}
      for bits in (4, 5, 6, 7):
        _rate_ok(m == bits, 0.25)
    else:
      lo, hi = rng
      assert np.all((m >= lo) & (m <= hi)), name
      assert m.min() - lo < 0.02 * (hi - lo) and hi - m.max() < 0.02 * (hi - lo), name
      _uniform_ok(m, lo, hi)
  sub = drawn["randaugment_1"]["op"][:, 0]
  solarize = sub == R.RANDAUGMENT_OPS.index("solarize")
  assert np.all(solarize | (sub == R.RANDAUGMENT_OPS.index("identity")))
  _rate_ok(solarize, 0.5)


def test_cutout_and_translate_distributions(results):
  drawn = results["stats"]
  size, center = drawn["cutout"]["size"], drawn["cutout"]["center"]
  assert np.all((size >= 0) & (size <= 0.5 * 24))  # a fraction of the width, as TorchSSL
  _uniform_ok(size, 0, 12)
  _uniform_ok(center[:, 0], 0, 32)
  _uniform_ok(center[:, 1], 0, 24)
  shift = drawn["translate"]["shift"]
  assert shift.dtype == np.int32
  for axis, pad in ((0, 4), (1, 3)):  # round(0.125 * 32), round(0.125 * 24)
    values = shift[:, axis]
    assert values.min() == -pad and values.max() == pad
    for v in range(-pad, pad + 1):
      _rate_ok(values == v, 1 / (2 * pad + 1))


# ----------------------------------------------------------------------------------
# Bad arguments.


@pytest.mark.parametrize("spec, words", [
  ("randaugment(ops=('rotate', 'blur'))", ["ops", "'blur'", "autocontrast", "translate_y"]),
  ("randaugment(ops='rotate')", ["ops", "'rotate'"]),
  ("randaugment(ops=())", ["ops"]),
  ("randaugment(ops=('rotate', 'rotate'))", ["ops", "once"]),
  ("randaugment(num_ops=0)", ["num_ops", "0", ">= 1"]),
  ("randaugment(num_ops=1.5)", ["num_ops", "1.5"]),
  ("translate(-0.1)", ["fraction", "-0.1", "[0, 1.0]"]),
  ("translate(0.125, p=2)", ["'translate'", "p:", "2"]),
  ("cutout(1.5)", ["max_fraction", "1.5", "[0, 1.0]"]),
  ("cutout(0.5, fill=-1)", ["fill", "-1"]),
])
def test_bad_arguments_raise(spec, words):
  with pytest.raises(ValueError) as e:
    A.parse_pipeline(spec)
  for word in words:
    assert word in str(e.value), (word, str(e.value))
