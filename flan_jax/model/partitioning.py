"""The device mesh and the logical-axis rules that place parameters, optimizer state and batches.

Mesh axes are `data` (pure data parallelism), `fsdp` (data parallelism with parameters and
optimizer state sharded) and `tensor` (tensor parallelism). Logical names on parameters and
activations map onto them through a table of rules set in gin, so a new layout is a gin change.
"""

import collections
import contextlib
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import gin
import jax
from jax.experimental import mesh_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from flan_jax import settings
from flan_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes or None). Batch splits over every data-like axis; weights
# split their embed dimension over fsdp and their heads / mlp / vocab dimension over tensor.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("lora_rank", None),  # a LoRA adapter's rank dimension (flan_jax/model/lora.py): small, kept whole
)


@gin.configurable
def axis_rules(rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> tuple:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


@gin.configurable
def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, dcn_data: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; -1 for `data` takes every device the others leave.

  `dcn_data` > 1 spreads the data axis over that many slices (TPU multislice) or processes
  (GPU nodes), keeping fsdp and tensor inside a slice where the interconnect is fast.
  """
  devices = list(devices if devices is not None else jax.devices())
  settings.integer("make_mesh.data", data, allow=(-1,))
  for name, size in (("fsdp", fsdp), ("tensor", tensor), ("dcn_data", dcn_data)):
    settings.integer(f"make_mesh.{name}", size)
  if data == -1:
    if len(devices) % (fsdp * tensor * dcn_data):
      raise UserError(f"{len(devices)} devices do not divide into fsdp={fsdp} x tensor={tensor} "
                      f"x dcn_data={dcn_data}; choose make_mesh sizes whose product divides {len(devices)}")
    data = len(devices) // (fsdp * tensor * dcn_data)
  if data * fsdp * tensor * dcn_data != len(devices):
    raise UserError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} x dcn_data={dcn_data} "
                    f"needs {data * fsdp * tensor * dcn_data} devices; there are {len(devices)}: choose sizes whose "
                    "product is that, or make_mesh.data=-1 for every device the others leave")
  if dcn_data > 1:
    # The slow links are between slices (TPU multislice) or, within one slice, between processes.
    one_slice = len({getattr(d, "slice_index", 0) for d in devices}) == 1
    grid = mesh_utils.create_hybrid_device_mesh(
        (data, fsdp, tensor), (dcn_data, 1, 1), devices, process_is_granule=one_slice)
  else:
    grid = mesh_utils.create_device_mesh((data, fsdp, tensor), devices, allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: tuple):
  """Makes the mesh and rules visible to the model's activation constraints while tracing."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: tuple) -> Any:
  """A tree of logical PartitionSpecs -> the matching tree of NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def param_init_fn(model: nn.Module, seq_len: int = 8) -> Callable[[jax.Array], Any]:
  """init_fn(rng) -> the model's parameters, boxed with their logical axis names (from dummy tokens)."""
  return lambda rng: model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]


def param_shapes_and_shardings(init_fn: Callable[[jax.Array], Any], mesh: Mesh,
                               rules: tuple) -> tuple[Any, Any]:
  """(shapes, shardings) of the parameters a Flax init function makes, without allocating them.

  `init_fn(rng)` returns parameters boxed with their logical axis names (see param_init_fn).
  The shapes are plain ShapeDtypeStructs; the shardings a matching tree of NamedShardings.
  """
  with activate(mesh, rules):
    boxed = jax.eval_shape(init_fn, jax.random.key(0))
  return nn.unbox(boxed), logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)


def with_shardings(shapes: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs that carry their shardings: a restore target for orbax."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def sharded_param_structs(model: nn.Module, mesh: Mesh, rules: tuple) -> Any:
  """The model's parameters as ShapeDtypeStructs carrying their shardings, without allocating them."""
  return with_shardings(*param_shapes_and_shardings(param_init_fn(model), mesh, rules))


def batch_sharding(mesh: Mesh, rules: tuple) -> NamedSharding:
  """Batches split their leading dimension over the axes of the `batch` rule."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), rules))


def to_global(local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Host-local rows -> global arrays whose batch dimension is split over the mesh."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def sharded_bytes(tree: Any) -> tuple[int, dict[jax.Device, int]]:
  """(bytes of the tree's arrays, bytes of them on each of this process's devices): the second sums, over
  leaves, the bytes of each leaf's shards on that device (a replicated leaf counts in full on each)."""
  per_device = collections.Counter()
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      per_device[shard.device] += shard.data.nbytes
  return sum(leaf.nbytes for leaf in jax.tree.leaves(tree)), dict(per_device)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh, rules: tuple) -> int:
  spec = batch_sharding(mesh, rules).spec[0]
  axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return int(np.prod([mesh.shape[a] for a in axes]))


def state_shardings_like(abstract_tree: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
  """Shardings for a tree (optimizer state) whose leaves mirror parameters.

  A leaf whose key path ends with a parameter's path and has that parameter's shape takes the
  parameter's sharding (Adam moments, for example); any other leaf (step counts, factored
  second moments) is replicated.
  """
  by_path = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    by_path[_keys(path)] = (leaf.shape, None)
  for path, sharding in jax.tree_util.tree_leaves_with_path(param_shardings):
    key = _keys(path)
    by_path[key] = (by_path[key][0], sharding)

  def pick(path, leaf):
    keys = _keys(path)
    for start in range(len(keys)):
      match = by_path.get(keys[start:])
      if match and match[0] == getattr(leaf, "shape", None):
        return match[1]
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def _keys(path) -> tuple:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
