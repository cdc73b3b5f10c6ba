"""make_mesh's layouts: mesh_utils' topology-aware device order, multi-slice / multi-node meshes
(mesh.dcn_shape), and the invariant the input pipeline relies on (process i holds the i-th
contiguous block of every global batch), on the 8 CPU devices and on fake multi-host pods."""

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding

from sslx import sharding


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """What mesh_utils and make_mesh read of a jax.Device, so a multi-host pod can be laid out
  here (the 8 CPU devices all belong to process 0)."""
  id: int
  process_index: int
  platform: str = "cpu"
  device_kind: str = "cpu"
  slice_index: int = 0
  coords: tuple = (0, 0, 0)
  core_on_chip: int = 0


def mesh_config(shape, axes, dcn_shape=(), num_devices=-1):
  return ml_collections.ConfigDict({"num_devices": num_devices, "shape": tuple(shape),
                                    "axes": tuple(axes), "dcn_shape": tuple(dcn_shape)})


def block_owners(grid, axes):
  """The processes holding each block of the global batch, blocks in batch order: a device's
  block is its row-major position over the batch axes ("data", then "fsdp"), the order of
  `batch_sharding` (checked against jax in test_block_owners_match_batch_sharding)."""
  batch_dims = [axes.index(a) for a in ("data", "fsdp") if a in axes]
  sizes = [grid.shape[d] for d in batch_dims]
  owners = [set() for _ in range(int(np.prod(sizes)))]
  for index, device in np.ndenumerate(grid):
    owners[np.ravel_multi_index([index[d] for d in batch_dims], sizes)].add(device.process_index)
  return owners


def assert_one_block_per_process(grid, axes):
  owners = block_owners(grid, axes)
  processes = sorted({d.process_index for d in grid.flat})
  per_process = len(owners) // len(processes)
  assert owners == [{p} for p in processes for _ in range(per_process)]


def groups_along(grid, axis):
  """The sets of devices that communicate along mesh axis `axis`."""
  moved = np.moveaxis(grid, axis, -1).reshape(-1, grid.shape[axis])
  return {frozenset(row) for row in moved}


def fake_hosts(num_processes, interleaved=False):
  """8 fake CPU devices of `num_processes` processes, in blocks of ids or round robin."""
  per = 8 // num_processes
  return [FakeDevice(i, i % num_processes if interleaved else i // per) for i in range(8)]


def fake_v4_slice(slice_index=0, depth=2):
  """A 2x2x`depth` TPU v4 torus with one host per z plane (as on a pod, a host owns a block of
  the torus, so the torus order mesh_utils follows interleaves hosts). Ids run along y first,
  so the torus and the id order pair different chips."""
  return [FakeDevice(slice_index * 4 * depth + i, slice_index * depth + z, platform="tpu",
                     device_kind="TPU v4", slice_index=slice_index, coords=(x, y, z))
          for i, (z, x, y) in enumerate(np.ndindex(depth, 2, 2))]


@pytest.mark.parametrize("shape, axes, full", [
    ((-1,), ("data",), (8,)),
    ((4, 2), ("data", "fsdp"), (4, 2)),
    ((-1, 2), ("data", "model"), (4, 2)),
    ((2, 2, 2), ("data", "fsdp", "model"), (2, 2, 2)),
])
def test_one_process_keeps_the_device_order(shape, axes, full):
  mesh = sharding.make_mesh(mesh_config(shape, axes))
  assert tuple(mesh.devices.shape) == full and mesh.axis_names == axes
  assert list(mesh.devices.flat) == jax.devices()  # CPU: the layout single-host runs had


def test_block_owners_match_batch_sharding():
  mesh = sharding.make_mesh(mesh_config((2, 2, 2), ("data", "fsdp", "model")))
  rows = sharding.batch_sharding(mesh).devices_indices_map((16,))
  blocks = {}
  for index, device in np.ndenumerate(mesh.devices):
    position = [index[0], index[1]]
    blocks[device] = np.ravel_multi_index(position, (2, 2))
  assert all(rows[d][0].start == 4 * blocks[d] for d in jax.devices())
  # ... which is what block_owners computes, with a fake process per block:
  fake = np.vectorize(lambda d: FakeDevice(d.id, blocks[d]), otypes=[object])(mesh.devices)
  assert block_owners(fake, mesh.axis_names) == [{0}, {1}, {2}, {3}]


def test_a_subset_and_explicit_devices():
  assert list(sharding.make_mesh(mesh_config((-1,), ("data",), num_devices=4)).devices.flat) == \
      jax.devices()[:4]
  mesh = sharding.make_mesh(mesh_config((2, -1), ("data", "model")), devices=jax.devices()[4:])
  assert mesh.devices.shape == (2, 2) and set(mesh.devices.flat) == set(jax.devices()[4:])
  assert NamedSharding(mesh, sharding.batch_sharding(mesh).spec).num_devices == 4


@pytest.mark.parametrize("num_processes, interleaved", [(2, False), (2, True), (4, True)])
@pytest.mark.parametrize("shape, axes", [
    ((8,), ("data",)), ((2, 4), ("data", "fsdp")), ((4, 2), ("data", "fsdp")),
    ((1, 8), ("data", "fsdp"))])
def test_each_process_holds_one_block_of_the_batch(num_processes, interleaved, shape, axes):
  devices = fake_hosts(num_processes, interleaved)
  grid = sharding.device_grid(mesh_config(shape, axes), devices)
  assert grid.shape == shape and sorted(d.id for d in grid.flat) == list(range(8))
  assert_one_block_per_process(grid, axes)


def test_a_model_axis_stays_within_a_process():
  grid = sharding.device_grid(mesh_config((4, 2), ("data", "model")), fake_hosts(2))
  assert_one_block_per_process(grid, ("data", "model"))
  assert all(len({d.process_index for d in group}) == 1 for group in groups_along(grid, 1))


def test_tpu_torus_order_is_reordered_into_host_blocks():
  devices = fake_v4_slice()
  torus_order = mesh_utils.create_device_mesh((4, 2), devices)
  # mesh_utils' torus order alone would interleave the two hosts along "data" ...
  assert [d.process_index for d in torus_order[:, 0]] != [0, 0, 1, 1]
  grid = sharding.device_grid(mesh_config((4, 2), ("data", "model")), devices)
  assert_one_block_per_process(grid, ("data", "model"))
  # ... and the reordering keeps its groups: the same pairs talk over "model" and "data",
  # which the devices in id order would not.
  for axis in (0, 1):
    assert groups_along(grid, axis) == groups_along(torus_order, axis)
  by_id = np.asarray(sorted(devices, key=lambda d: d.id)).reshape(4, 2)
  assert groups_along(by_id, 1) != groups_along(torus_order, 1)


def test_an_fsdp_axis_across_hosts_falls_back_to_process_order():
  devices = fake_v4_slice(depth=4)  # a v4-32: 4 hosts of 2x2 chips
  torus_order = mesh_utils.create_device_mesh((2, 8), devices)
  assert len({d.process_index for d in torus_order[0]}) == 4  # each "data" row spans all hosts
  grid = sharding.device_grid(mesh_config((2, 8), ("data", "fsdp")), devices)
  assert_one_block_per_process(grid, ("data", "fsdp"))
  assert list(grid.flat) == sorted(devices, key=lambda d: (d.process_index, d.id))


@pytest.mark.parametrize("shape, axes, dcn_shape", [
    ((4, 2), ("data", "model"), (2, 1)), ((2, 4), ("data", "fsdp"), (2, 1)),
    ((8,), ("data",), (2,))])
def test_dcn_shape_puts_processes_along_the_outer_blocks(shape, axes, dcn_shape):
  grid = sharding.device_grid(mesh_config(shape, axes, dcn_shape), fake_hosts(2))
  assert_one_block_per_process(grid, axes)
  # Each process holds a whole ICI mesh of shape // dcn_shape: its own half along "data".
  half = shape[0] // 2
  assert {d.process_index for d in grid[:half].flat} == {0}


def test_dcn_shape_over_tpu_slices():
  devices = fake_v4_slice(0) + fake_v4_slice(1)
  grid = sharding.device_grid(mesh_config((-1, 2), ("data", "model"), (2, 1)), devices)
  assert grid.shape == (8, 2)
  assert [d.slice_index for d in grid[:, 0]] == [0] * 4 + [1] * 4
  assert_one_block_per_process(grid, ("data", "model"))
  for i in range(2):  # each slice is laid out like one slice alone, over its own torus
    alone = sharding.device_grid(mesh_config((4, 2), ("data", "model")), fake_v4_slice(i))
    assert groups_along(grid[4 * i:4 * (i + 1)], 1) == groups_along(alone, 1)


@pytest.mark.parametrize("devices, shape, axes, dcn_shape, message", [
    (None, (8,), ("data",), (3,), r"mesh.dcn_shape \(3,\) does not divide mesh.shape \(8,\)"),
    (None, (8,), ("data",), (2, 1), r"mesh.dcn_shape must be \(\) or one positive int per"),
    (None, (8,), ("data",), (0,), r"mesh.dcn_shape must be \(\) or one positive int per"),
    (None, (8,), ("data",), (2,), r"mesh.dcn_shape \(2,\) lays out 2 processes .* span 1"),
    (fake_hosts(2), (4, 2), ("data", "model"), (4, 1), r"lays out 4 processes .* span 2"),
    # A model axis across the processes would give one block of the batch to both.
    (fake_hosts(2), (1, 8), ("data", "model"), (), r"into 1 blocks, which 2 processes cannot"),
    (fake_hosts(2), (4, 2), ("data", "model"), (1, 2), r"block 0 .* process\(es\) \[0, 1\]"),
    (fake_v4_slice(0) + fake_v4_slice(1), (16,), ("data",), (),
     r"mesh.dcn_shape \(\) lays out 1 TPU slices .* span 2; e.g. \(2,\)"),
])
def test_bad_layouts_name_the_field(devices, shape, axes, dcn_shape, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(mesh_config(shape, axes, dcn_shape), devices=devices)


def test_check_batch_blocks_refuses_processes_out_of_order():
  grid = np.array([FakeDevice(i, 1 - i // 4) for i in range(8)], dtype=object)
  with pytest.raises(ValueError, match="block 0 .* process 0 alone"):
    sharding.check_batch_blocks(grid, ("data",))
  sharding.check_batch_blocks(grid[::-1], ("data",))
