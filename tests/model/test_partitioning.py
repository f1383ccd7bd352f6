"""Tests for flan_jax/model/partitioning.py: meshes from gin, rules, optimizer-state shardings."""

import glob
import os

import gin
import jax
import pytest

from flan_jax.model import partitioning
from flan_jax.model.transformer import ModelConfig
from flan_jax.training import optimizers, step, trainer
from tests import conftest
from tests.conftest import TINY

GIN_DIR = os.path.join(conftest.ROOT, "gin")
MESH_DIR = os.path.join(GIN_DIR, "mesh")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(MESH_DIR, "*.gin"))))
def test_mesh_files_parse(path):
  gin.clear_config()
  gin.parse_config_file(path)
  size = 1
  for axis in ("data", "fsdp", "tensor", "dcn_data"):
    size *= gin.query_parameter(f"make_mesh.{axis}") if f"make_mesh.{axis}" in gin.config_str() else 1
  assert size >= 4 or os.path.basename(path) == "gpu1.gin"  # every file but one GPU's spans devices
  gin.clear_config()


def test_cpu8_mesh_layout():
  gin.clear_config()
  gin.parse_config_file(os.path.join(MESH_DIR, "cpu8.gin"))
  try:
    mesh = partitioning.make_mesh()
  finally:
    gin.clear_config()
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert partitioning.data_parallel_size(mesh, partitioning.axis_rules()) == 4


def test_wrong_device_count_is_explained():
  with pytest.raises(ValueError, match="needs 16 devices; there are 8"):
    partitioning.make_mesh(data=2, fsdp=8, tensor=1)


def test_adafactor_state_is_sharded_where_it_mirrors_params():
  mesh = partitioning.make_mesh(data=1, fsdp=4, tensor=2)
  tx = optimizers.make_optimizer(optimizers.make_schedule(10), name="adafactor")
  s = trainer.setup(TINY, mesh, partitioning.axis_rules(), tx)
  state = s.init(jax.random.key(0))
  shardings = jax.tree.leaves(s.state_shardings.opt_state)
  assert any(sh.spec != jax.sharding.PartitionSpec() for sh in shardings)  # full-size moments split
  assert len(jax.tree.leaves(state.opt_state)) == len(shardings)


def test_fsdp_splits_params_and_optimizer_state_evenly():
  """On 8 fsdp devices each holds ~1/8 of mini.gin's parameters and AdamW state (what benchmark_train reports)."""
  gin.clear_config()
  gin.parse_config_file(os.path.join(GIN_DIR, "models", "mini.gin"))
  try:
    config = ModelConfig()
  finally:
    gin.clear_config()
  mesh = partitioning.make_mesh(data=1, fsdp=8)
  tx = optimizers.make_optimizer(optimizers.make_schedule(10))
  state = step.setup(config, mesh, partitioning.axis_rules(), tx).init(jax.random.key(0))
  total, per_device = partitioning.sharded_bytes((state.params, state.opt_state))
  assert sorted(d.id for d in per_device) == list(range(8))
  assert total == sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state)))
  assert max(per_device.values()) <= 1.05 * total / 8, (per_device, total)
