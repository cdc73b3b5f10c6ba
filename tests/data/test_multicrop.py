"""Tests for sslx.data.views: multi-crop (SwAV / DINO) global and local views.

One small jitted config (32 px images, 16 px global and 8 px local crops) serves most tests.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sslx.data import augment as A
from sslx.data import views as V
from tests.data.test_augment import _torchvision_crops

# DINO's recipe shrunk: two global views with their own pipelines, three local views. No
# colour jitter: it is by far the slowest op to compile on CPU and is tested (through the
# same Pipeline code) in test_augment.py; the published recipes are checked by eval_shape.
SMALL = {
  "global": {"number": 2, "size": 16, "scale": (0.4, 1.0),
             "pipeline": ("flip|grayscale(p=0.2)|solarize(p=0.0)",
                          "flip|grayscale(p=0.2)|solarize(p=0.5)")},
  "local": {"number": 3, "size": 8, "scale": (0.05, 0.4),
            "pipeline": "flip|blur(p=0.5)|rotate(20, p=0.5)"},
}
B = 64  # enough boxes per group to see each group's scale range covered


@pytest.fixture(scope="module")
def images():
  return jnp.asarray(np.random.RandomState(0).randint(0, 256, (B, 32, 32, 3)).astype(np.uint8))


@pytest.fixture(scope="module")
def jit_multi_crop():
  return jax.jit(lambda k, x: V.multi_crop(k, x, SMALL, return_params=True))


@pytest.fixture(scope="module")
def sharded_images(images):
  mesh = Mesh(np.array(jax.devices()), ("data",))
  return jax.device_put(images, NamedSharding(mesh, P("data")))


@pytest.fixture(scope="module")
def result(jit_multi_crop, sharded_images):
  # The batch sharded over 8 devices; test_reproducible_sharded_and_params_replay checks
  # it against a view computed by hand on the unsharded batch.
  return jax.tree.map(np.asarray, jit_multi_crop(jax.random.key(0), sharded_images))


def test_published_presets():
  """Shapes of the SwAV and DINO recipes at 224 / 96 px, without compiling."""
  x = jax.ShapeDtypeStruct((4, 256, 256, 3), jnp.uint8)
  key = jax.random.key(0)
  dino = jax.eval_shape(lambda k, x: V.multi_crop(k, x, V.DINO_MULTICROP), key, x)
  assert dino["global"].shape == (2, 4, 224, 224, 3) and dino["local"].shape == (8, 4, 96, 96, 3)
  swav = V.multi_crop_pipelines(V.SWAV_MULTICROP)  # (tracing it too would cost seconds)
  assert [p.out_hw((256, 256)) for p in swav["global"]] == [(224, 224)] * 2
  assert [p.out_hw((256, 256)) for p in swav["local"]] == [(96, 96)] * 6
  assert list(dino) == ["global", "local"] and dino["global"].dtype == jnp.float32
  default = V.multi_crop_pipelines(None)
  assert {g: [p.spec for p in ps] for g, ps in default.items()} == {
    g: [p.spec for p in ps] for g, ps in V.multi_crop_pipelines(V.DINO_MULTICROP).items()}
  # The recipes (Caron et al. 2020, 2021): scales, and DINO's per-view blur / solarize.
  assert (V.SWAV_MULTICROP["global"]["scale"], V.SWAV_MULTICROP["local"]["scale"]) == (
    (0.14, 1.0), (0.05, 0.14))
  assert (V.DINO_MULTICROP["global"]["scale"], V.DINO_MULTICROP["local"]["scale"]) == (
    (0.4, 1.0), (0.05, 0.4))
  pipes = V.multi_crop_pipelines(V.DINO_MULTICROP)
  g1, g2 = pipes["global"]
  blur_p = lambda pipe: [op.p for op in pipe.ops if isinstance(op, A.Blur)]
  sol_p = lambda pipe: [op.p for op in pipe.ops if isinstance(op, A.Solarize)]
  assert (blur_p(g1), sol_p(g1), blur_p(g2), sol_p(g2)) == ([1.0], [0.0], [0.1], [0.2])
  assert all(blur_p(p) == [0.5] and sol_p(p) == [] for p in pipes["local"])
  jitter = [op for op in g1.ops if isinstance(op, A.ColorJitter)][0]
  assert jitter.strengths == (0.4, 0.4, 0.2, 0.1) and jitter.p == 0.8
  swav_jitter = [op for op in V.multi_crop_pipelines(V.SWAV_MULTICROP)["local"][0].ops
                 if isinstance(op, A.ColorJitter)][0]
  assert swav_jitter.strengths == (0.8, 0.8, 0.8, 0.2)


def test_shapes_ranges_and_views_differ(result):
  views, params = result
  assert views["global"].shape == (2, B, 16, 16, 3) and views["local"].shape == (3, B, 8, 8, 3)
  for v in views.values():
    assert v.dtype == np.float32 and np.all(np.isfinite(v)) and v.min() >= 0 and v.max() <= 1
  # Every view of an image differs from every other view of it (and of the same group).
  for group in ("global", "local"):
    v = views[group].reshape(views[group].shape[0], B, -1)
    n = v.shape[0]
    dist = np.abs(v[:, None] - v[None]).max(-1)  # [n, n, B]
    assert np.all(dist[~np.eye(n, dtype=bool)] > 1e-3), group
  # Params: leading [n, B]; the global views' solarize reflects p = 0 / 0.5.
  assert params["global"]["random_resized_crop"]["box"].shape == (2, B, 4)
  assert params["local"]["blur"]["sigma"].shape == (3, B)
  assert not params["global"]["solarize"]["applied"][0].any()
  assert 0 < params["global"]["solarize"]["applied"][1].sum() < B


def test_crop_scales_per_group(result):
  _, params = result
  for group, (lo, hi) in (("global", (0.4, 1.0)), ("local", (0.05, 0.4))):
    box = params[group]["random_resized_crop"]["box"]
    frac = (box[..., 2] * box[..., 3] / (32 * 32)).ravel()
    assert np.all((frac >= lo - 1e-5) & (frac <= hi + 1e-5)), (group, frac.min(), frac.max())
    # The share of each quartile of the range matches torchvision's sampler (NumPy reference;
    # for the global group large crops with extreme aspect ratios are rejected, which thins
    # the top quartile to ~0.09), within 4 binomial standard errors.
    ref = _torchvision_crops(np.random.default_rng(0), 20000, 32, 32, (lo, hi))
    edges = np.linspace(lo, hi, 5)
    want = np.histogram(ref[:, 2] * ref[:, 3] / (32 * 32), edges)[0] / len(ref)
    got = np.histogram(frac, edges)[0] / frac.size
    tol = 4 * np.sqrt(want * (1 - want) / frac.size)
    assert np.all(np.abs(got - want) <= tol), (group, got, want)


def test_reproducible_sharded_and_params_replay(jit_multi_crop, images, sharded_images, result):
  views, params = result
  again = jax.tree.map(np.asarray, jit_multi_crop(jax.random.key(0), sharded_images))
  jax.tree.map(np.testing.assert_array_equal, again, result)
  other = jit_multi_crop(jax.random.key(1), sharded_images)[0]
  assert not np.allclose(other["local"], views["local"], atol=1e-3)
  # View j (of 5) of example i uses u[j, i] of one uniform draw: the second local view
  # (view 3) by hand on the unsharded batch equals the sharded result, and its params
  # replay it.
  pipelines = V.multi_crop_pipelines(SMALL)
  pipe = pipelines["local"][1]
  width = max(p.n_uniforms for group in pipelines.values() for p in group)
  assert width == 22 + 5  # the local views: crop, flip, blur (2), rotate (2)

  def by_hand(k, x, p):
    u = jax.random.uniform(k, (5, B, width))[3, :, :pipe.n_uniforms]
    return jax.vmap(pipe.from_uniforms)(u, x), jax.vmap(pipe.apply)(x, p)

  local_params = jax.tree.map(lambda a: a[1], params["local"])
  ref, replay = jax.jit(by_hand)(jax.random.key(0), images, local_params)
  np.testing.assert_allclose(ref, views["local"][1], atol=1e-6)
  np.testing.assert_allclose(replay, views["local"][1], atol=1e-6)
  assert 0 < params["local"]["rotate"]["applied"][1].sum() < B


def test_config_forms_and_errors():
  ml_collections = pytest.importorskip("ml_collections")
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.uint8)
  key = jax.random.key(0)
  cfg = ml_collections.ConfigDict(SMALL)
  shapes = jax.eval_shape(lambda k, x: V.multi_crop(k, x, cfg), key, x)
  assert shapes["global"].shape == (2, 2, 16, 16, 3) and shapes["local"].shape == (3, 2, 8, 8, 3)
  # A group without a pipeline is crops only; sizes may be (height, width).
  crops = {"g": {"number": 1, "size": (12, 10), "scale": (0.5, 1.0)}}
  assert jax.eval_shape(lambda k, x: V.multi_crop(k, x, crops), key, x)["g"].shape == (
    1, 2, 12, 10, 3)

  def raises(config, *words, return_params=False):
    with pytest.raises(ValueError) as e:
      jax.eval_shape(lambda k, x: V.multi_crop(k, x, config, return_params=return_params), key, x)
    for w in words:
      assert w in str(e.value), (w, str(e.value))

  g = SMALL["global"]
  raises({"g": dict(g, number=0)}, "number", "0")
  raises({"g": dict(g, sizes=3)}, "'sizes'")
  raises({"g": dict(g, scale=(0.5, 0.1))}, "scale")
  raises({"g": dict(g, pipeline=["flip"] * 3)}, "pipeline", "2")
  raises({"g": dict(g, pipeline="random_resized_crop(8)|flip")}, "random_resized_crop")
  raises({"g": dict(g, pipeline="flp")}, "flp", "known ops")
  raises({"g": dict(g, pipeline=["flip", "blur"])}, "same ops", return_params=True)
  raises({}, "config")
  with pytest.raises(ValueError, match="images"):
    V.multi_crop(key, jnp.zeros((32, 32, 3)), SMALL)


# --- PIRL's jigsaw views -----------------------------------------------------------------------


def test_jigsaw_patches_are_shuffled_crops_of_their_cells():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(4, 12, 12, 3), dtype=np.uint8)
  fn = jax.jit(lambda k, x: V.jigsaw(k, x, grid=3, patch=3))
  patches, order = map(np.asarray, fn(jax.random.PRNGKey(1), images))
  assert patches.shape == (4, 9, 3, 3, 3) and patches.dtype == np.float32
  offsets = set()
  for b in range(4):
    assert sorted(order[b]) == list(range(9))
    for j in range(9):
      row, col = divmod(int(order[b, j]), 3)
      cell = images[b, 4 * row:4 * row + 4, 4 * col:4 * col + 4] / 255.0
      found = [(dy, dx) for dy in (0, 1) for dx in (0, 1)
               if np.allclose(cell[dy:dy + 3, dx:dx + 3], patches[b, j])]
      assert found, (b, j)  # the patch lies inside its own cell
      offsets.update(found)
  assert len(offsets) == 4  # every offset a 3-px patch of a 4-px cell can have is drawn
  assert len({tuple(o) for o in order}) > 1  # images shuffled differently

  # The same key gives the same views on 8 devices as on one.
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharded = jax.device_put(np.tile(images, (2, 1, 1, 1)), NamedSharding(mesh, P("data")))
  one = fn(jax.random.PRNGKey(1), np.tile(images, (2, 1, 1, 1)))
  for a, b in zip(fn(jax.random.PRNGKey(1), sharded), one):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_jigsaw_patch_view_and_errors():
  images = np.full((2, 12, 12, 1), 100, np.uint8)
  # The view crops to 10 px (cells of 5), each whole cell is then cropped to 4 px.
  patches, _ = V.jigsaw(jax.random.PRNGKey(0), images, grid=2, patch=5,
                        view="random_resized_crop(10, scale=(0.5, 1.0))",
                        patch_view="random_resized_crop(4, scale=(0.6, 1.0))")
  assert patches.shape == (2, 4, 4, 4, 1)
  np.testing.assert_allclose(np.asarray(patches), 100 / 255, rtol=1e-5)  # a flat image stays flat
  with pytest.raises(ValueError, match=r"patch must be an int in \[1, 5\]"):
    V.jigsaw(jax.random.PRNGKey(0), images, grid=2, patch=6,
             view="random_resized_crop(10, scale=(0.5, 1.0))")
  with pytest.raises(ValueError, match=r"patch must be an int in \[1, 6\]"):
    V.jigsaw(jax.random.PRNGKey(0), images, grid=2, patch=7)
  with pytest.raises(ValueError, match="grid must be an int >= 1"):
    V.jigsaw(jax.random.PRNGKey(0), images, grid=0, patch=2)
