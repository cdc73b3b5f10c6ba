"""data2vec 2.0's experiment module: the inverse block masks, the teacher's per-block outputs,
the loss rebuilt from its parts (multi-mask clones, top-k targets, [CLS] term), the teacher
outside the gradient, and the representation it evaluates. (Learning on a fixed batch is checked
with every other method in test_methods.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import data2vec as data2vec_config
from experiments import data2vec as data2vec_experiment
from sslx.data import augment
from sslx.losses import data2vec, data2vec_targets
from sslx.models.vit import vit as make_vit
from tests.experiments.test_methods import fixed_batch
from tests.train import helpers

BATCH = 4
LOSS_RNG = jax.random.PRNGKey(5)


def smoke_config(**overrides):
  return helpers.smoke_config("", "data2vec", **overrides)  # "" keeps the default data_dir


@pytest.fixture(scope="module")
def setup():
  # Two blocks, so top_k=1 of 2 differs from averaging both.
  config = smoke_config(**{"model.vit.depth": 2})
  method = data2vec_experiment.get_method(config)
  batch = fixed_batch(BATCH)
  variables = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  variables = helpers.with_teacher_moved(variables)
  images, net = data2vec_experiment._network(config)
  return config, method, batch, variables, images, net


def test_inverse_block_masks_keep_exactly_a_fifth_of_the_patches_visible():
  config = smoke_config()
  visible, mask = jax.jit(lambda k: data2vec_experiment.draw_masks(config, k, 64, (7, 7)))(
      jax.random.PRNGKey(2))
  visible, mask = np.asarray(visible), np.asarray(mask)
  assert visible.shape == (64, 10) and mask.shape == (64, 49)  # round(0.2 * 49)
  for row, m in zip(visible, mask):
    assert len(set(row)) == 10 and list(row) == sorted(row)
    assert not m[row].any() and m.sum() == 39
  # Blocks: most visible patches have a visible 4-neighbour (random picks on 7 x 7 would not).
  grid = ~mask.reshape(64, 7, 7)
  padded = np.pad(grid, ((0, 0), (1, 1), (1, 1)))
  neighbour = (padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2]
               | padded[:, 1:-1, 2:])
  assert (neighbour & grid).sum() / grid.sum() > 0.8


def test_return_layers_gives_each_blocks_mlp_output_before_the_residual():
  vit = make_vit(None, image_size=28, in_channels=1, patch_size=4, width=16, depth=2,
                 num_heads=2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 1))
  out = jax.jit(lambda x: vit(x, return_layers=True))(x)  # jitted: eager dispatch is slow
  assert out["layers"].shape == (2, 2, 49, 16)

  @jax.jit
  def by_hand(x):  # tokens -> block 0 -> block 1, each block's MLP branch on LN(x + attention)
    tokens, mlps = vit._tokens(x, None, None, None)[0], []
    for block in vit.blocks:
      h = tokens + block.attn(block.norm1(tokens))
      mlps.append(block.fc2(jax.nn.gelu(block.fc1(block.norm2(h)), approximate=False)))
      tokens = h + mlps[-1]
    return jnp.stack(mlps)[:, :, 1:], vit.norm(tokens)[:, 1:]

  layers, patches = by_hand(x)
  np.testing.assert_allclose(out["layers"], layers, atol=1e-5)
  np.testing.assert_allclose(out["patches"], patches, atol=1e-5)


@pytest.fixture(scope="module")
def loss_and_grads(setup):
  _, method, batch, variables, _, _ = setup

  def value(params, teacher):
    return method.loss(params, {**variables, "teacher": teacher}, batch, LOSS_RNG)

  (loss, aux), grads = jax.jit(jax.value_and_grad(value, argnums=(0, 1), has_aux=True))(
      variables["params"], variables["teacher"])
  return loss, aux, grads


def test_the_loss_is_sslx_data2vec_on_clones_and_targets_rebuilt_here(setup, loss_and_grads):
  config, _, batch, variables, images, net = setup
  value, aux, _ = loss_and_grads
  view_rng, mask_rng, noise_rng, _ = jax.random.split(LOSS_RNG, 4)
  clones = BATCH * config.data2vec.num_masks
  visible, mask = data2vec_experiment.draw_masks(config, mask_rng, clones, (7, 7))

  @jax.jit
  def rebuild(variables):
    (view,) = augment.augment_views(view_rng, batch["image"], [config.augment.to_dict()])
    view = images.normalize(view)
    student = net.merge(variables["params"], {})
    teacher = net.merge({**variables["params"], "encoder": variables["teacher"]["params"]}, {})
    layers = teacher.encoder.net(view, return_layers=True)["layers"]  # [2, B, 49, D]
    # Image-major clones: image b's copies are rows b * M ... b * M + M - 1.
    out = student.encoder.net(jnp.repeat(view, 2, axis=0), patch_indices=visible, train=True)
    noise = 0.01 * jax.random.normal(noise_rng, (clones, 49, config.decoder.width))
    return layers, out["cls"], student.decoder(out["patches"], visible, noise)

  layers, cls, pred = rebuild(variables)
  repeated = jnp.repeat(layers, 2, axis=1)
  patch = data2vec(pred, repeated, mask, top_k=1)
  np.testing.assert_allclose(aux["metrics"]["train/patch_loss"], patch, rtol=1e-5)
  # Top 1 of 2 blocks: the last block's MLP output alone, not the average of both.
  assert not np.isclose(float(patch), float(data2vec(pred, repeated, mask, top_k=2)), rtol=1e-3)
  # [CLS]: squared error to the mean target over patches, summed over features / sqrt(D).
  targets = np.asarray(data2vec_targets(layers, 1))  # [B, 49, D]
  mean_target = np.repeat(targets.mean(1), 2, axis=0)
  cls_term = np.mean(np.sum((np.asarray(cls) - mean_target) ** 2, -1)) / np.sqrt(16)
  np.testing.assert_allclose(aux["metrics"]["train/cls_loss"], cls_term, rtol=1e-4)
  np.testing.assert_allclose(value, patch + 0.01 * cls_term, rtol=1e-5)


def test_the_teacher_gets_no_gradient(setup, loss_and_grads):
  _, _, _, variables, _, _ = setup
  _, aux, (param_grads, teacher_grads) = loss_and_grads
  assert set(variables) == {"params", "teacher"}
  assert set(variables["params"]) == {"encoder", "decoder"}
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(teacher_grads))
  for part in ("encoder", "decoder"):
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(param_grads[part]))
  for a, b in zip(jax.tree.leaves(aux["state"]["teacher"]), jax.tree.leaves(variables["teacher"])):
    np.testing.assert_array_equal(a, b)


def test_after_update_moves_the_teacher_towards_the_student_encoder(setup):
  config, method, _, variables, _, _ = setup
  helpers.assert_teacher_follows_the_encoder(method, variables, config.ema.base)


def test_apply_is_the_student_mean_patch_token_on_all_patches(setup):
  _, method, batch, variables, images, net = setup
  x = batch["image"].astype(jnp.float32) / 255
  out = net.merge(variables["params"], {}).encoder.net(images.normalize(x), train=False)
  np.testing.assert_allclose(method.apply(variables, x), jnp.mean(out["patches"], axis=1),
                             atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    ({"model.name": "resnet"}, "model.name"),
    ({"data2vec.mask_ratio": 1.0}, "mask_ratio"),
    ({"data2vec.top_k": 3}, "top_k"),
    ({"data2vec.num_masks": 0}, "num_masks"),
    ({"model.vit.class_token": False}, "cls_loss"),
])
def test_bad_config_is_refused_by_name(overrides, message):
  with pytest.raises(ValueError, match=message):
    data2vec_experiment.get_method(smoke_config(**overrides))


def test_imagenet_preset_is_the_papers_vit_b16():
  c = data2vec_config.get_config("imagenet")
  assert c.model.vit.variant == "B/16" and c.batch_size == 256
  m = c.data2vec
  assert (m.mask_ratio, m.num_masks, m.top_k, m.cls_loss) == (0.8, 16, 10, 0.01)
  assert (c.decoder.width, c.decoder.depth, c.decoder.kernel, c.decoder.groups) == (768, 6, 3, 16)
  assert c.optim.lr == 1e-3 and (c.optim.b1, c.optim.b2) == (0.9, 0.95)
  assert c.ema.base == 0.9998 and c.ema.final == 0.99999
  with pytest.raises(ValueError, match="cifar10"):
    data2vec_config.get_config("cifar10")
